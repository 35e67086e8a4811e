"""Episode file schema: names, metadata dataclass, errors.

One episode = one HDF5 file (see docs/recorder_schema.md). Everything the trainers need
lives in the file itself; the store index is only a cache of it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = "1.0"

MODES = ("teleop", "kinesthetic", "scripted", "policy")

# Dataset paths inside the file (other modules code against these names).
QPOS = "observations/qpos"
QVEL = "observations/qvel"
IMAGES = "observations/images"
IMAGE_TIMESTAMPS = "observations/timestamps"
ACTION = "action"
ACTION_RAW = "action_raw"
TIMESTAMP = "timestamp"

# Per-step human-in-the-loop record (root attrs, run-length JSON; see step_runs/expand_runs):
# `intervention` = steps where the operator overrode an autonomous source, `action_source` = which
# source produced each action ("policy", "gamepad", "leader", ...). Absent = not recorded.
INTERVENTION = "intervention"
ACTION_SOURCE = "action_source"
# the action source of a deliberate mistake injected into a scripted demo (DART-style): recorded, as
# every step is, but not an action to imitate; training keeps the recovery that follows it
PERTURBATION = "perturbation"

SUFFIX = ".h5"
PARTIAL_SUFFIX = ".h5.partial"
JOURNAL_SUFFIX = ".h5.journal"

# attrs written by the recorder itself (everything else is free-form in "extra")
_CORE_ATTRS = ("schema_version", "instruction", "fps", "robot", "joint_names", "mode", "operator",
               "start_time", "start_monotonic", "success", "software_version", "num_steps",
               "extra", "recovered")


class RecorderError(RuntimeError):
    """Recording/storing failed; the message says what happened and what to do."""


class CorruptEpisodeError(RecorderError):
    """An episode file is unreadable, truncated or not in this schema. Names the file."""


@dataclass
class EpisodeMeta:
    """Per-episode metadata stored as HDF5 root attributes."""
    instruction: str
    fps: float
    robot: str
    joint_names: list[str]
    mode: str
    operator: str = ""
    start_time: str | None = None          # ISO-8601 wall clock; filled by the writer if None
    software_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # free-form JSON-able (task, seed, ...)

    def check(self) -> None:
        """Raise RecorderError if the metadata cannot describe a valid episode."""
        if self.mode not in MODES:
            raise RecorderError(f"episode mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.fps or float(self.fps) <= 0:
            raise RecorderError(f"episode fps must be > 0, got {self.fps!r}")
        if not self.joint_names:
            raise RecorderError("episode joint_names is empty: pass the robot profile's joint names")
        try:
            json.dumps(self.extra)
        except (TypeError, ValueError) as e:
            raise RecorderError(f"episode extra metadata must be JSON-serialisable: {e}") from e

    def to_attrs(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "instruction": self.instruction,
            "fps": float(self.fps),
            "robot": self.robot,
            "joint_names": json.dumps(list(self.joint_names)),
            "mode": self.mode,
            "operator": self.operator,
            "start_time": self.start_time or "",
            "software_version": self.software_version,
            "extra": json.dumps(self.extra),
        }

    @classmethod
    def from_attrs(cls, attrs: Any) -> "EpisodeMeta":
        """Build from h5py attrs (or a plain dict). Raises KeyError/ValueError if malformed."""
        extra = json.loads(_s(attrs.get("extra", "{}")) or "{}")
        return cls(
            instruction=_s(attrs["instruction"]),
            fps=float(attrs["fps"]),
            robot=_s(attrs["robot"]),
            joint_names=list(json.loads(_s(attrs["joint_names"]))),
            mode=_s(attrs["mode"]),
            operator=_s(attrs.get("operator", "")),
            start_time=_s(attrs.get("start_time", "")) or None,
            software_version=_s(attrs.get("software_version", "")),
            extra=extra if isinstance(extra, dict) else {"value": extra},
        )


def _s(v: Any) -> str:
    """h5py returns str or bytes depending on how the attr was written."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def software_version() -> str:
    try:
        from importlib.metadata import version
        return "teleop " + version("teleop")
    except Exception:  # not installed (running from a checkout)
        return "teleop (unknown version)"


def step_runs(runs: list, value, step: int) -> None:
    """Append per-step `value` at `step` to runs [[start, value], ...] (a new run only on change)."""
    if not runs or runs[-1][1] != value:
        runs.append([int(step), value])


def runs_attrs(runs: dict, n: int | None = None) -> dict:
    """{key: runs JSON} root attrs for step_runs lists; runs starting at or after step n are dropped."""
    return {k: json.dumps([r for r in v if n is None or r[0] < n]) for k, v in runs.items() if v}


def expand_runs(text, n: int, default=None) -> list | None:
    """Runs JSON (as written by step_runs) -> n per-step values, or None if absent/malformed."""
    if text is None:
        return None
    try:
        runs = json.loads(_s(text))
        out = [default] * n
        for k, (start, value) in enumerate(runs):
            end = runs[k + 1][0] if k + 1 < len(runs) else n
            for i in range(max(0, int(start)), min(n, int(end))):
                out[i] = value
        return out
    except (ValueError, TypeError, KeyError, IndexError):
        return None
