"""End-effector action space for the project's VLA: the network predicts where the gripper goes, the
robot's own chain turns that into joint targets.

RT-2, OpenVLA and most VLAs act in end-effector space: "move the gripper 4 cm towards the cube the
wrist camera sees" is nearly linear in what the cameras show, while the same move written as 7 joint
deltas depends on the whole arm's pose. Measured on the physics workcell (docs/policy_results.md, run
E7 vs E6): at 120 demos and 6 CPU minutes it did no better than joint deltas (7/50 vs 10/50, intervals
overlapping); what made the policy pick at all was noise on the joint state (train's state_noise).

One target row, relative to the TCP pose at the observation (base frame):
    [dx, dy, dz (m), rx, ry, rz (rotation vector, rad), gripper (absolute, the robot's units)]
`ee_targets` makes them from recorded joint actions (forward kinematics of the action), `ee_to_joints`
turns a predicted chunk back into absolute joint targets: damped-least-squares steps along the chunk,
each starting from the previous element's solution, so the arm's redundancy is resolved continuously.
Numpy only (no torch).
"""
from __future__ import annotations

import numpy as np

from teleop_app.kinematics import SerialChain, chain_from_dict, rotation_error, rotvec_matrix

EE_DIM = 7          # dx dy dz rx ry rz gripper


def chain_for(meta_extra: dict, n_arm: int) -> SerialChain:
    """The chain a checkpoint stored (meta.extra["kinematics"], the profile's [kinematics] table)."""
    return chain_from_dict(meta_extra["kinematics"], n_arm, "checkpoint kinematics")


def ee_targets(chain: SerialChain, qpos: np.ndarray, action: np.ndarray, chunk: int) -> np.ndarray:
    """(T, chunk, 7) end-effector targets of one episode: for each step t and k < chunk, the pose of
    action[min(t+k, T-1)] relative to the TCP at qpos[t], and that action's gripper."""
    qpos, action = np.asarray(qpos, float), np.asarray(action, float)
    n = len(qpos)
    obs = [chain.fk(q) for q in qpos]
    act = [chain.fk(a) for a in action]
    out = np.empty((n, chunk, EE_DIM), np.float32)
    for t in range(n):
        p0, r0 = obs[t][:3, 3], obs[t][:3, :3]
        for k in range(chunk):
            j = min(t + k, n - 1)
            out[t, k, :3] = act[j][:3, 3] - p0
            out[t, k, 3:6] = rotation_error(act[j][:3, :3], r0)
            out[t, k, 6] = action[j, -1]
    return out


def ee_to_joints(chain: SerialChain, q: np.ndarray, ee: np.ndarray, *, iters: int = 1,
                 damping: float = 0.02) -> np.ndarray:
    """(k, 7) end-effector targets relative to the TCP at q -> (k, len(q)) absolute joint targets."""
    q = np.asarray(q, float)
    ee = np.asarray(ee, float)
    n = chain.n
    base = chain.fk(q)
    p0, r0 = base[:3, 3], base[:3, :3]
    out = np.empty((len(ee), len(q)))
    cur = q[:n].copy()
    for k, row in enumerate(ee):
        goal_p = p0 + row[:3]
        goal_r = rotvec_matrix(row[3:6]) @ r0
        for _ in range(iters):
            t, jac = chain.fk_jacobian(cur)
            e = np.concatenate([goal_p - t[:3, 3], rotation_error(goal_r, t[:3, :3])])
            cur = cur + chain.dls_step(cur, e, damping=damping, jac=jac)
        out[k, :n] = cur
        out[k, n:] = q[n:]
        out[k, -1] = row[6]
    return out
