"""The safety layer every command passes through, whatever its source (gamepad, replay, policy, expert).

Order matters: reject non-finite input first (never clip a NaN into a "valid" number), then joint
limits, then the per-tick step limit (so a far target becomes a bounded move), then workspace bounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class SafetyReport:
    """What the layer changed on one command. `ok` means it went out unchanged."""
    rejected_nonfinite: bool = False
    clamped_limits: bool = False
    clamped_step: bool = False
    blocked_workspace: bool = False
    estopped: bool = False
    watchdog: bool = False

    @property
    def ok(self) -> bool:
        return not (self.rejected_nonfinite or self.clamped_limits or self.clamped_step
                    or self.blocked_workspace or self.estopped or self.watchdog)

    def reasons(self) -> list[str]:
        return [k for k, v in vars(self).items() if v]


@dataclass
class SafetyCounters:
    rejected_nonfinite: int = 0
    clamped_limits: int = 0
    clamped_step: int = 0
    blocked_workspace: int = 0
    estops: int = 0
    watchdog_trips: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class SafetyLayer:
    """Filters absolute joint targets (arm joints + gripper last).

    `max_step` is per tick: max_speed * period. `fk` (q -> 4x4 TCP pose) plus `workspace`
    ({"x": [lo, hi], ...}) enables Cartesian bounds; a target outside them keeps the arm where it is.
    """
    lower: np.ndarray
    upper: np.ndarray
    max_step: np.ndarray
    fk: Callable[[np.ndarray], np.ndarray] | None = None
    workspace: dict[str, list[float]] = field(default_factory=dict)
    counters: SafetyCounters = field(default_factory=SafetyCounters)

    def __post_init__(self):
        self.lower = np.asarray(self.lower, float)
        self.upper = np.asarray(self.upper, float)
        self.max_step = np.asarray(self.max_step, float)
        self._last_sent: np.ndarray | None = None
        self._estop_hold: np.ndarray | None = None

    @classmethod
    def from_profile(cls, profile, period: float, fk=None, speed_fraction: float = 1.0) -> "SafetyLayer":
        return cls(profile.lower(), profile.upper(), profile.max_speed() * period * speed_fraction,
                   fk=fk, workspace=dict(profile.workspace))

    # --- e-stop -------------------------------------------------------------------------
    @property
    def estopped(self) -> bool:
        return self._estop_hold is not None

    def estop(self, current: np.ndarray) -> None:
        """Latch: every later command holds `current` until reset_estop()."""
        if self._estop_hold is None:
            self.counters.estops += 1
            self._estop_hold = np.clip(np.asarray(current, float), self.lower, self.upper)

    def reset_estop(self, current: np.ndarray | None = None) -> None:
        self._estop_hold = None
        # Restart step limiting from where the arm is, so release causes no jump.
        self._last_sent = None if current is None else np.asarray(current, float).copy()

    def reset(self, current: np.ndarray | None = None) -> None:
        """Forget the last command (e.g. after torque was off and the arm moved by hand, or the sim
        scene was reset). A latched e-stop stays latched, holding the new position."""
        self._last_sent = None if current is None else np.asarray(current, float).copy()
        if self._estop_hold is not None and current is not None:
            self._estop_hold = np.clip(np.asarray(current, float), self.lower, self.upper)

    # --- filtering ----------------------------------------------------------------------
    def hold(self, current: np.ndarray, watchdog: bool = False) -> tuple[np.ndarray, SafetyReport]:
        """Command that keeps the arm where it was last sent (or where it is)."""
        rep = SafetyReport(watchdog=watchdog, estopped=self.estopped)
        if watchdog:
            self.counters.watchdog_trips += 1
        ref = self._reference(current)
        self._last_sent = ref.copy()
        return ref, rep

    def filter(self, target: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, SafetyReport]:
        """Return (the command to send, what was changed). Never returns a non-finite value."""
        rep = SafetyReport()
        current = np.asarray(current, float)
        if self._estop_hold is not None:
            rep.estopped = True
            self._last_sent = self._estop_hold.copy()
            return self._estop_hold.copy(), rep
        ref = self._reference(current)
        t = np.asarray(target, float)
        if t.shape != self.lower.shape or not np.all(np.isfinite(t)):
            rep.rejected_nonfinite = True
            self.counters.rejected_nonfinite += 1
            self._last_sent = ref.copy()
            return ref.copy(), rep
        c = np.clip(t, self.lower, self.upper)
        if not np.array_equal(c, t):
            rep.clamped_limits = True
            self.counters.clamped_limits += 1
        step = np.clip(c - ref, -self.max_step, self.max_step)
        if not np.allclose(step, c - ref, atol=1e-9):
            rep.clamped_step = True
            self.counters.clamped_step += 1
        # ref + (c - ref) can land one ulp outside a limit: clip again so the bound is exact.
        out = np.clip(ref + step, self.lower, self.upper)
        if self.fk is not None and self.workspace and not self.in_workspace(out[:-1]):
            rep.blocked_workspace = True
            self.counters.blocked_workspace += 1
            out[:-1] = ref[:-1]          # arm stays; the gripper may still move
        self._last_sent = out.copy()
        return out, rep

    def in_workspace(self, q_arm: np.ndarray) -> bool:
        p = np.asarray(self.fk(q_arm))[:3, 3]
        for i, axis in enumerate("xyz"):
            lo_hi = self.workspace.get(axis)
            if lo_hi and not lo_hi[0] <= p[i] <= lo_hi[1]:
                return False
        return True

    def _reference(self, current: np.ndarray) -> np.ndarray:
        if self._last_sent is not None:
            return self._last_sent.copy()
        return np.clip(np.asarray(current, float), self.lower, self.upper)
