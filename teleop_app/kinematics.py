"""A serial chain from a profile's [kinematics] section: forward kinematics, the geometric
Jacobian and damped-least-squares (DLS) velocity IK, for Cartesian teleop of any arm.

The chain is written URDF-style, one entry per arm joint (the gripper is not part of it):

    [kinematics]
    tool = [0.0, 0.0, 0.2104]          # TCP in the last joint's frame (m), optional tool_rpy
    [[kinematics.joints]]
    origin = [0.0, 0.0, 0.333]          # joint frame in the previous one: translation (m) ...
    rpy = [0.0, 0.0, 0.0]               # ... and fixed rotation (roll, pitch, yaw; rad)
    axis = [0.0, 0.0, 1.0]              # rotation axis in the joint frame

drivers/sim/kinematics.py stays the sim arm's own model (drivers may not import teleop_app);
sim7.toml's chain reproduces it and a test checks the two agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class KinematicsError(ValueError):
    """A [kinematics] section is malformed; the message names the file and the field."""


def rpy_matrix(rpy) -> np.ndarray:
    """URDF convention: R = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def matrix_rpy(r: np.ndarray) -> np.ndarray:
    """Inverse of rpy_matrix: (roll, pitch, yaw) of a rotation matrix."""
    pitch = math.asin(max(-1.0, min(1.0, -float(r[2, 0]))))
    if abs(math.cos(pitch)) < 1e-9:                 # gimbal lock: put it all in yaw
        return np.array([0.0, pitch, math.atan2(-float(r[0, 1]), float(r[1, 1]))])
    return np.array([math.atan2(float(r[2, 1]), float(r[2, 2])), pitch, math.atan2(float(r[1, 0]), float(r[0, 0]))])


def axis_angle_matrix(axis, angle: float) -> np.ndarray:
    """Rodrigues: rotation by `angle` about the unit vector `axis`."""
    k = np.asarray(axis, float)
    kx, ky, kz = k
    km = np.array([[0, -kz, ky], [kz, 0, -kx], [-ky, kx, 0]])
    return np.eye(3) + math.sin(angle) * km + (1 - math.cos(angle)) * km @ km


def rotvec_matrix(v) -> np.ndarray:
    """Rotation matrix of a rotation vector (axis * angle, rad); the inverse of rotation_error(r, I)."""
    v = np.asarray(v, float)
    ang = float(np.linalg.norm(v))
    return np.eye(3) if ang < 1e-12 else axis_angle_matrix(v / ang, ang)


def _transform(rot: np.ndarray, pos) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rot
    t[:3, 3] = pos
    return t


@dataclass
class ChainJoint:
    origin: np.ndarray
    rpy: np.ndarray
    axis: np.ndarray

    def __post_init__(self):
        self.fixed = _transform(rpy_matrix(self.rpy), self.origin)


@dataclass
class SerialChain:
    """Revolute joints in series; q has one entry per chain joint (extra entries ignored)."""
    joints: list[ChainJoint]
    tool: np.ndarray = field(default_factory=lambda: np.eye(4))

    @property
    def n(self) -> int:
        return len(self.joints)

    def frames(self, q) -> tuple[list[np.ndarray], np.ndarray]:
        """World frames of every joint (after its fixed transform, before its rotation) and the TCP."""
        q = np.asarray(q, float)
        t = np.eye(4)
        out = []
        for j, a in zip(self.joints, q[:self.n]):
            t = t @ j.fixed
            out.append(t)
            t = t @ _transform(axis_angle_matrix(j.axis, float(a)), (0.0, 0.0, 0.0))
        return out, t @ self.tool

    def fk(self, q) -> np.ndarray:
        """TCP pose (4x4) in the base frame."""
        return self.frames(q)[1]

    def fk_jacobian(self, q) -> tuple[np.ndarray, np.ndarray]:
        """(TCP pose 4x4, geometric 6 x n Jacobian of the TCP), base frame, from one pass over the chain."""
        fr, tcp = self.frames(q)
        p = tcp[:3, 3]
        jac = np.empty((6, self.n))
        for i, (f, j) in enumerate(zip(fr, self.joints)):
            z = f[:3, :3] @ j.axis
            jac[:3, i] = np.cross(z, p - f[:3, 3])
            jac[3:, i] = z
        return tcp, jac

    def jacobian(self, q) -> np.ndarray:
        """Geometric 6 x n Jacobian of the TCP, base frame: rows vx, vy, vz, wx, wy, wz."""
        return self.fk_jacobian(q)[1]

    def dls_step(self, q, twist, *, damping: float = 0.05, weights=None, jac=None) -> np.ndarray:
        """Joint step dq that moves the TCP by `twist` (6: dx dy dz in m, rotation vector in rad,
        base frame) in the damped-least-squares sense. `weights` (6) scale each task row: 0 drops
        an axis the arm cannot do (a 5-joint arm cannot hold every orientation). `jac`: the Jacobian
        at q when the caller has it already."""
        jac = self.jacobian(q) if jac is None else jac
        e = np.asarray(twist, float)
        if weights is not None:
            w = np.asarray(weights, float)
            jac, e = jac * w[:, None], e * w
        jjt = jac @ jac.T + damping ** 2 * np.eye(6)
        return jac.T @ np.linalg.solve(jjt, e)


def chain_to_dict(chain: "SerialChain") -> dict:
    """A [kinematics] table (plain lists) that chain_from_dict reads back into the same chain."""
    return {"joints": [{"origin": [float(v) for v in j.origin], "rpy": [float(v) for v in j.rpy],
                        "axis": [float(v) for v in j.axis]} for j in chain.joints],
            "tool": [float(v) for v in chain.tool[:3, 3]],
            "tool_rpy": [float(v) for v in matrix_rpy(chain.tool[:3, :3])]}


def rotation_error(r_goal: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Rotation vector (base frame) turning r onto r_goal."""
    re = r_goal @ r.T
    cos = max(-1.0, min(1.0, (np.trace(re) - 1.0) / 2.0))
    ang = math.acos(cos)
    v = np.array([re[2, 1] - re[1, 2], re[0, 2] - re[2, 0], re[1, 0] - re[0, 1]])
    n = np.linalg.norm(v)
    if ang < 1e-9 or n < 1e-12:
        return 0.5 * v
    return v / n * ang


def _vec3(d: dict, key: str, where: str, default=None) -> np.ndarray:
    if key not in d:
        if default is None:
            raise KinematicsError(f"{where}: missing field '{key}' (3 numbers)")
        return np.asarray(default, float)
    v = d[key]
    if (not isinstance(v, list) or len(v) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
        raise KinematicsError(f"{where}: field '{key}' must be 3 finite numbers, got {v!r}")
    return np.asarray(v, float)


def chain_from_dict(data: dict, n_arm: int, where: str = "<kinematics>") -> SerialChain:
    """Parse a [kinematics] table; `n_arm` = the profile's arm joints (the chain must cover them)."""
    if not isinstance(data, dict):
        raise KinematicsError(f"{where}: must be a table")
    extra = set(data) - {"joints", "tool", "tool_rpy"}
    if extra:
        raise KinematicsError(f"{where}: unknown field(s) {sorted(extra)}; known: joints, tool, tool_rpy")
    rows = data.get("joints")
    if not isinstance(rows, list) or len(rows) != n_arm:
        got = len(rows) if isinstance(rows, list) else rows
        raise KinematicsError(f"{where}: 'joints' must list one entry per arm joint ({n_arm}), got {got!r}")
    joints = []
    for i, r in enumerate(rows):
        w = f"{where}: joints[{i}]"
        if not isinstance(r, dict):
            raise KinematicsError(f"{w}: must be a table with origin/rpy/axis")
        bad = set(r) - {"origin", "rpy", "axis"}
        if bad:
            raise KinematicsError(f"{w}: unknown field(s) {sorted(bad)}; known: origin, rpy, axis")
        axis = _vec3(r, "axis", w, (0.0, 0.0, 1.0))
        norm = float(np.linalg.norm(axis))
        if norm < 1e-9:
            raise KinematicsError(f"{w}: 'axis' must not be zero")
        joints.append(ChainJoint(_vec3(r, "origin", w), _vec3(r, "rpy", w, (0.0, 0.0, 0.0)), axis / norm))
    tool = _transform(rpy_matrix(_vec3(data, "tool_rpy", where, (0.0, 0.0, 0.0))),
                      _vec3(data, "tool", where, (0.0, 0.0, 0.0)))
    return SerialChain(joints, tool)
