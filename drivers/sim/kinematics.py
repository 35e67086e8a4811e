"""Franka-Panda-like 7-DoF kinematics: forward, Jacobian and damped-least-squares IK.

Uses the Panda's published modified (Craig) DH parameters, the 0.107 m flange and a
parallel-gripper TCP 0.1034 m further along the flange z axis (rotated -45 deg about z like
the Franka Hand, so the finger axis lines up with the tool y axis). World = robot base
frame; the base sits on the table top at z = 0.

Joint limits / home / speeds are the constants below; teleop_app/profiles/sim7.toml must
agree with them (a test checks it, since drivers may not import teleop_app).
"""
from __future__ import annotations

import math

import numpy as np

JOINT_NAMES = [f"joint{i}" for i in range(1, 8)] + ["gripper"]
# Arm joints (rad) then gripper (fraction open, 1 = 8 cm).
LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973, 0.0])
UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973, 1.0])
# Home: TCP ~0.25 m above the table centre (0.45, 0, 0.25), gripper pointing down, yaw 0.
HOME = np.array([0.0, -0.185, 0.0, -2.497, 0.0, 2.312, 0.785, 1.0])
MAX_SPEED = np.array([1.5, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0, 3.0])  # rad/s (gripper: fraction/s)

# Modified DH rows: (a_{i-1}, d_i, alpha_{i-1})
_DH = np.array([
    [0.0, 0.333, 0.0],
    [0.0, 0.0, -math.pi / 2],
    [0.0, 0.316, math.pi / 2],
    [0.0825, 0.0, math.pi / 2],
    [-0.0825, 0.384, -math.pi / 2],
    [0.0, 0.0, math.pi / 2],
    [0.088, 0.0, math.pi / 2],
])
FLANGE_D = 0.107
TCP_D = 0.1034
_HAND_ROT = -math.pi / 4


class IKError(ValueError):
    """No joint configuration within limits reaches the requested TCP pose."""


def _mdh(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array([
        [ct, -st, 0.0, a],
        [st * ca, ct * ca, -sa, -d * sa],
        [st * sa, ct * sa, ca, d * ca],
        [0.0, 0.0, 0.0, 1.0],
    ])


def _tool() -> np.ndarray:
    c, s = math.cos(_HAND_ROT), math.sin(_HAND_ROT)
    t = np.eye(4)
    t[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    t[2, 3] = FLANGE_D + TCP_D
    return t


_TOOL = _tool()


_A, _D, _AL = (np.array([r[i] for r in _DH], float) for i in range(3))
_CA, _SA = np.cos(_AL), np.sin(_AL)


def _links(q: np.ndarray) -> np.ndarray:
    """The 7 modified-DH link transforms at once (7x4x4): one vectorised fill, not 7 small arrays."""
    ct, st = np.cos(q), np.sin(q)
    m = np.zeros((7, 4, 4))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 3] = ct, -st, _A
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2], m[:, 1, 3] = st * _CA, ct * _CA, -_SA, -_D * _SA
    m[:, 2, 0], m[:, 2, 1], m[:, 2, 2], m[:, 2, 3] = st * _SA, ct * _SA, _CA, _D * _CA
    m[:, 3, 3] = 1.0
    return m


def chain(q7) -> list[np.ndarray]:
    """Frames of joints 1..7 (their z axes are the rotation axes), then flange, then TCP."""
    m = _links(np.asarray(q7, dtype=float)[:7])
    t = m[0]
    out = [t]
    for i in range(1, 7):
        t = t @ m[i]
        out.append(t)
    fl = t.copy()
    fl[:3, 3] = t[:3, 3] + t[:3, 2] * FLANGE_D
    out.append(fl)
    out.append(t @ _TOOL)
    return out


def fk(q7) -> np.ndarray:
    """TCP pose (4x4) in the world/base frame for 7 joint angles (extra entries ignored)."""
    return chain(np.asarray(q7, dtype=float)[:7])[-1]


def jacobian(q7) -> np.ndarray:
    """Geometric 6x7 Jacobian of the TCP: rows vx, vy, vz, wx, wy, wz (world frame)."""
    return _jac(chain(np.asarray(q7, dtype=float)[:7]))


def _jac(fr: list[np.ndarray]) -> np.ndarray:
    p = fr[-1][:3, 3]
    z = np.array([f[:3, 2] for f in fr[:7]])
    d = p - np.array([f[:3, 3] for f in fr[:7]])
    j = np.empty((6, 7))
    # z x d, written out: np.cross is slow for small arrays
    j[0] = z[:, 1] * d[:, 2] - z[:, 2] * d[:, 1]
    j[1] = z[:, 2] * d[:, 0] - z[:, 0] * d[:, 2]
    j[2] = z[:, 0] * d[:, 1] - z[:, 1] * d[:, 0]
    j[3:] = z.T
    return j


def rot_down(yaw: float = 0.0) -> np.ndarray:
    """Tool z pointing at the table, tool x at `yaw` in the table plane (fingers close along tool y)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def _rot_err(r_goal: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame) rotating r onto r_goal."""
    re = r_goal @ r.T
    cos = max(-1.0, min(1.0, (np.trace(re) - 1.0) / 2.0))
    ang = math.acos(cos)
    v = np.array([re[2, 1] - re[1, 2], re[0, 2] - re[2, 0], re[1, 0] - re[0, 1]])
    n = np.linalg.norm(v)
    if ang < 1e-9:
        return 0.5 * v
    if n < 1e-9:  # 180 deg: pick the axis from the symmetric part
        m = (re + np.eye(3)) / 2.0
        ax = m[:, int(np.argmax(np.diag(m)))]
        return ax / np.linalg.norm(ax) * ang
    return v / n * ang


def ik(pos, rot=None, q_init=None, *, tol_pos: float = 1e-3, tol_rot: float = 1e-2,
       max_iter: int = 200, damping: float = 0.05, restarts: int = 4, seed: int = 0,
       posture_gain: float = 0.05) -> np.ndarray:
    """Joint angles (7,) putting the TCP at `pos` with orientation `rot` (default: pointing down, yaw 0).

    Damped least squares with joint-limit clipping and a small null-space pull toward HOME
    (keeps the elbow up). Starts from `q_init` (default HOME), then from seeded random
    restarts. Raises IKError if no solution within tolerance is found.
    """
    pos = np.asarray(pos, dtype=float)
    r_goal = rot_down() if rot is None else np.asarray(rot, dtype=float)
    lo, hi = LOWER[:7], UPPER[:7]
    q0 = HOME[:7].copy() if q_init is None else np.clip(np.asarray(q_init, dtype=float)[:7], lo, hi)
    rng = np.random.default_rng(seed)
    best, best_err = q0, math.inf
    for attempt in range(restarts + 1):
        if attempt == 0:
            q = q0.copy()
        else:
            q = np.clip(HOME[:7] + rng.uniform(-1.0, 1.0, 7) * (0.3 * attempt), lo, hi)
        for _ in range(max_iter):
            fr = chain(q)
            t = fr[-1]
            ep = pos - t[:3, 3]
            er = _rot_err(r_goal, t[:3, :3])
            pe, re = float(np.linalg.norm(ep)), float(np.linalg.norm(er))
            if pe < tol_pos and re < tol_rot:
                return q
            err = pe + 0.1 * re
            if err < best_err:
                best, best_err = q.copy(), err
            # limit the step so DLS stays in its linear region
            if pe > 0.1:
                ep = ep * (0.1 / pe)
            if re > 0.5:
                er = er * (0.5 / re)
            j = _jac(fr)
            e = np.concatenate([ep, er])
            # damping fades near the goal (Levenberg-Marquardt style): fast final convergence
            # and the damped null-space projector stops leaking the posture pull into the task
            lam2 = damping ** 2 * min(1.0, err / 0.02) + 1e-6
            jjt = j @ j.T + lam2 * np.eye(6)
            dq = j.T @ np.linalg.solve(jjt, e)
            # null-space posture pull toward HOME
            jp = j.T @ np.linalg.solve(jjt, j)
            dq += (np.eye(7) - jp) @ (posture_gain * (HOME[:7] - q))
            q = np.clip(q + dq, lo, hi)
    t = fk(best)
    raise IKError(f"IK failed: target position {np.round(pos, 3).tolist()} is not reachable "
                  f"with the requested orientation within joint limits "
                  f"(best position error {np.linalg.norm(pos - t[:3, 3]):.3f} m)")
