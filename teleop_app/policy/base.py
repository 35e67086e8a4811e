"""What every policy looks like to the rest of the app, and the compatibility check run before anything moves.

A policy maps one observation
    {"images": {cam: HxWx3 uint8}, "qpos": (D,) float, "instruction": str}
to a chunk of absolute joint targets, shape (chunk, action_dim), in the robot's units
(arm joints in rad, gripper last). Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class PolicyError(RuntimeError):
    """A policy could not be loaded or run; the message says what to do."""


class PolicyMismatchError(PolicyError):
    """The policy was trained for a different robot / camera setup than the one connected."""


@dataclass
class PolicyMeta:
    """What a policy expects and produces. `stats` holds mean/std lists for 'state' and 'action'."""
    joint_names: list[str]
    action_dim: int
    fps: float
    image_size: tuple[int, int] = (64, 64)          # (h, w) the model sees; camera frames are resized
    cameras: list[str] = field(default_factory=lambda: ["front"])
    chunk_size: int = 1
    stats: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    kind: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyMeta":
        d = dict(d)
        d["image_size"] = tuple(int(x) for x in d.get("image_size", (64, 64)))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@runtime_checkable
class Policy(Protocol):
    meta: PolicyMeta

    def reset(self) -> None:
        """Forget any internal state (call between rollouts)."""

    def predict(self, obs: dict) -> np.ndarray:
        """(chunk, action_dim) absolute joint targets for this observation."""


def check_compatible(meta: PolicyMeta, profile, *, fps: float | None = None,
                     fps_tolerance: float = 0.05, require_cameras: bool = True) -> None:
    """Raise PolicyMismatchError unless `meta` fits the robot `profile` (a RobotProfile).

    Checked before the first command: joint names and order, action dimension, control rate,
    and that every camera the policy needs exists on the robot. Image size is not a mismatch
    (frames are resized), but a camera the profile lacks is.
    """
    problems: list[str] = []
    names = list(profile.joint_names)
    if list(meta.joint_names) != names:
        if sorted(meta.joint_names) == sorted(names):
            problems.append(f"joint order differs: policy {meta.joint_names}, robot {names} "
                            "(re-record or retrain with the robot's joint order)")
        else:
            problems.append(f"joint names differ: policy {meta.joint_names}, robot {names}")
    if int(meta.action_dim) != int(profile.dof):
        problems.append(f"action dimension differs: policy outputs {meta.action_dim}, "
                        f"robot '{profile.name}' has {profile.dof} (arm joints + gripper)")
    rate = float(fps if fps is not None else profile.fps)
    if meta.fps and abs(float(meta.fps) - rate) > fps_tolerance * rate:
        problems.append(f"control rate differs: policy trained at {meta.fps:g} Hz, robot runs at "
                        f"{rate:g} Hz (set the profile/loop fps to {meta.fps:g})")
    if require_cameras:
        have = {c.name for c in getattr(profile, "cameras", [])}
        missing = [c for c in meta.cameras if c not in have]
        if missing:
            problems.append(f"cameras missing on the robot: {missing} (profile has {sorted(have)}; "
                            "add them to the profile or use a policy trained without them)")
    if problems:
        raise PolicyMismatchError(f"policy ({meta.kind}) does not fit robot '{profile.name}': "
                                  + "; ".join(problems))


def policy_source(spec) -> str:
    """What a policy spec names: "openvla" (an http(s) URL: an OpenVLA deploy.py-style server), "openpi"
    (a ws(s) URL: an openpi policy server) or "checkpoint" (a file of the project's own VLA, or "demo")."""
    s = str(spec).strip()
    if s.startswith(("http://", "https://")):
        return "openvla"
    if s.startswith(("ws://", "wss://")):
        return "openpi"
    return "checkpoint"


def load_policy(spec: str, **kwargs) -> Policy:
    """A checkpoint file path -> the project's own VLA; "demo" -> the shipped demo checkpoint;
    an http(s) URL -> an OpenVLA deploy.py server; a ws(s) URL -> an openpi policy server.

    Remote kwargs: see remote.RemotePolicy (ik, meta, timeout, unnorm_key, camera, ...) and
    openpi.OpenPIPolicy (layout, profile, timeout, api_key, ...).
    """
    s, source = str(spec).strip(), policy_source(spec)
    if source == "openvla":
        from .remote import RemotePolicy
        return RemotePolicy(s, **kwargs)
    if source == "openpi":
        from .openpi import OpenPIPolicy
        return OpenPIPolicy(s, **kwargs)
    if s == "demo":
        from .demo import demo_path
        s = str(demo_path())
    from .checkpoint import load_checkpoint_policy
    return load_checkpoint_policy(s, **kwargs)
