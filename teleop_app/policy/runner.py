"""Closed-loop policy execution: action chunks -> one safe joint target per control tick.

PolicyRunner turns predicted chunks into per-tick targets, either
  - "ensemble": predict every tick and average all chunks that cover this tick, older ones weighted
    more (ACT's temporal ensembling: smooth, and every tick still sees a fresh observation), or
  - "replan": predict a chunk, play `replan_every` of it open-loop, predict again, or
  - "smooth": for slow policies (a remote VLA at 100-900 ms), the measured equivalent of real-time
    chunking (Black et al. 2025): while one chunk plays the next is inferred; the request goes out
    at the latest `d + margin` ticks before the plan runs out, d = the measured latency in ticks
    (max of an EMA and the p90 of the last 20 calls), and otherwise whenever the worker is idle
    and `replan_every` ticks have passed; the new chunk is indexed by its observation's tick (the
    actions for ticks already played are dropped) and joined onto the current plan: the new
    chunk's offset from the plan at the join tick decays linearly over a ramp of
    max(3, min(overlap, chunk/3)) ticks (the role of RTC's soft mask, without its inpainting), so the
    command stays continuous (no jump) and never stops at a boundary. Nothing is set by the operator.
  - "auto" (default): "ensemble", except "smooth" when asynchronous with a policy other than the
    project's own VLA (a remote server, openpi: 100-900 ms). The project's VLA infers within a tick on
    the CPU, so asynchronous ensembling keeps a fresh observation every tick: measured on the physics
    sim (docs/policy_results.md), async smooth lost 6 of 50 seen and 12 of 50 unseen-object rollouts
    that ensembling won.
With `async_=True` inference runs in a worker thread so a real-time loop never waits for it; a chunk
that arrives late is indexed by the tick its observation was taken at (latency compensation). A late
result means hold only when nothing is left to play.
Watchdog: inference slower than `max_latency` -> act() returns None (= hold position) and counts it.
Every output is validated before use: a NaN/inf or a target far outside the joint limits raises
PolicyOutputError ("policy output NaN at step 12"); the rollout stops and nothing is sent.

`rollout()` runs one episode on any Robot + cameras through the control pipeline (teleop_app.pipeline);
the live session runs a PolicyRunner through the same pipeline; the sim evaluation lives in evaluate.py.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .base import Policy, PolicyError
from .checkpoint import FORMAT as OWN_VLA_KIND


class PolicyOutputError(PolicyError):
    """The policy produced an unusable command (NaN/inf, wrong shape, far out of range)."""


@dataclass
class RunnerStats:
    steps: int = 0
    inferences: int = 0
    holds: int = 0                # act() returned None for any reason
    watchdog_trips: int = 0       # ... because inference was slower than max_latency
    latencies: list[float] = field(default_factory=list)   # seconds per predict()
    waits: int = 0                # holds after the episode's first chunk arrived (nothing left to play)
    stale: int = 0                # chunks that arrived after every action in them was due
    max_step: float = 0.0         # largest per-tick change of the commanded arm target (rad)
    max_accel: float = 0.0        # largest second difference of it / period^2 (rad/s^2)
    delay_ticks: int = 0          # the latest measured inference delay, in ticks (smooth mode)
    episodes: list[dict] = field(default_factory=list)     # per episode: steps, holds, waits, max_*


class PolicyRunner:
    def __init__(self, policy: Policy, chunk_mode: str = "auto", *, replan_every: int | None = None,
                 ensemble_decay: float = 0.01, async_: bool = False, max_latency: float | None = None,
                 lower=None, upper=None, range_margin: float = 0.5, margin_ticks: int = 2,
                 forward_state: bool = False, stats: RunnerStats | None = None):
        if chunk_mode not in ("ensemble", "replan", "smooth", "auto"):
            raise ValueError(f"chunk_mode must be 'ensemble', 'replan', 'smooth' or 'auto', got {chunk_mode!r}")
        self.policy = policy
        self.chunk_mode = chunk_mode
        k = max(1, int(getattr(policy.meta, "chunk_size", 1) or 1))
        self.replan_every = max(1, min(int(replan_every or (1 if chunk_mode in ("smooth", "auto") else k)), k))
        self.ensemble_decay = float(ensemble_decay)
        self.async_ = bool(async_)
        self.max_latency = max_latency
        self.lower = None if lower is None else np.asarray(lower, float)
        self.upper = None if upper is None else np.asarray(upper, float)
        self.range_margin = float(range_margin)
        self.margin_ticks = int(margin_ticks)
        self.forward_state = bool(forward_state)
        self.stats = stats if stats is not None else RunnerStats()
        self._lat_recent: list[float] = []
        self._lat_ema: float | None = None
        self._period: float | None = None
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._closed = False
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The chunk mode in use ("auto" resolved: async with a slow (non-local) policy -> smooth,
        else ensemble)."""
        if self.chunk_mode == "auto":
            local = getattr(self.policy.meta, "kind", "") == OWN_VLA_KIND
            return "smooth" if self.async_ and not local else "ensemble"
        return self.chunk_mode

    def reset(self) -> None:
        """New episode: drop buffered chunks and restart the tick counter (stats are kept; the
        finished episode's smoothness figures are appended to stats.episodes)."""
        with self._lock:
            ep = getattr(self, "_ep", None)
            if ep and ep["steps"]:
                self.stats.episodes.append(dict(ep))
            self._ep = {"steps": 0, "holds": 0, "waits": 0, "max_step": 0.0, "max_accel": 0.0,
                        "first_chunk_tick": None}
            self._prev_cmd: list[np.ndarray] = []       # the last two commanded arm targets
            self._last_cmd: np.ndarray | None = None
            self._plan: np.ndarray | None = None          # smooth mode: targets from tick _plan_start on
            self._plan_start = 0
            self._last_request = -10 ** 9
            self._chunks: list[tuple[int, np.ndarray]] = []     # (tick of the observation, chunk)
            self._step = 0
            # an answer to a request of an earlier episode is dropped when it lands (a slow policy's
            # last chunk of the previous scene would otherwise start this one)
            self._gen = getattr(self, "_gen", 0) + 1
            self._pending: tuple[int, int, dict, int, bool | None] | None = None   # gen, tick, obs, origin, standing
            self._busy_since: float | None = None
            self._result: tuple[int, int, int, bool | None, np.ndarray | None, BaseException | None] | None = None
            self._tripped_for: float | None = None
            self.last_hold_watchdog = False
        self.policy.reset()

    def close(self) -> None:
        with self._cv:
            if self._ep["steps"]:
                self.stats.episodes.append(dict(self._ep))
                self._ep["steps"] = 0
            self._closed = True
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    def __enter__(self) -> "PolicyRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- validation ------------------------------------------------------------------
    def _validate(self, out, step: int) -> np.ndarray:
        a = np.asarray(out, dtype=float)
        if a.ndim == 1:
            a = a[None]
        d = int(self.policy.meta.action_dim)
        if a.ndim != 2 or a.shape[1] != d or a.shape[0] < 1:
            raise PolicyOutputError(f"policy output has shape {np.shape(out)} at step {step}, "
                                    f"expected (chunk, {d}); not sent")
        if not np.all(np.isfinite(a)):
            kind = "NaN" if np.isnan(a).any() else "inf"
            raise PolicyOutputError(f"policy output {kind} at step {step}; stopped, nothing sent")
        if self.lower is not None and self.upper is not None:
            # margin relative to each joint's range: catches unit mix-ups (deg vs rad, mm vs m) and
            # garbage, while a small overshoot is left to the safety layer's clamp (and counted there)
            m = self.range_margin * (self.upper - self.lower)
            bad = (a < self.lower - m) | (a > self.upper + m)
            if bad.any():
                j = int(np.argwhere(bad)[0][1])
                names = list(getattr(self.policy.meta, "joint_names", []))
                name = names[j] if j < len(names) else f"#{j}"
                raise PolicyOutputError(
                    f"policy output out of range at step {step}: {name} = {a[bad][0]:.3f} outside "
                    f"[{self.lower[j]:.3f}, {self.upper[j]:.3f}] by more than {m[j]:.3f}; "
                    "stopped, nothing sent (check the policy was trained for this robot's units)")
        return a

    # ---- sync / async inference -------------------------------------------------------
    def _predict(self, obs: dict) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = self.policy.predict(obs)
        dt = time.perf_counter() - t0
        return out, dt

    # ---- latency measurement (smooth mode) ------------------------------------------------
    def _note_latency(self, dt: float) -> None:
        self._lat_ema = dt if self._lat_ema is None else 0.7 * self._lat_ema + 0.3 * dt
        self._lat_recent = (self._lat_recent + [dt])[-20:]

    def _note_tick(self, now: float) -> None:
        last = getattr(self, "_last_now", None)
        self._last_now = now
        if last is not None and 0 < now - last < 5.0:
            dt = now - last
            self._period = dt if self._period is None else 0.9 * self._period + 0.1 * dt

    def period(self) -> float:
        """Seconds per tick: measured between act() calls, else the policy's fps."""
        if self._period:
            return self._period
        fps = float(getattr(self.policy.meta, "fps", 0) or 0)
        return 1.0 / fps if fps > 0 else 0.1

    def delay_ticks(self) -> int:
        """Measured inference delay in ticks (0 before the first measurement)."""
        if self._lat_ema is None:
            return 0
        lat = max(self._lat_ema, float(np.percentile(self._lat_recent, 90)))
        return int(np.ceil(lat / self.period() - 1e-6))

    # ---- smooth mode: one plan, new chunks joined with a ramp ------------------------------
    def _forward(self, t: int, obs: dict) -> tuple[dict, int, bool]:
        """Smooth mode: the observation to send for a request at tick t, the tick its chunk's first
        action is for, and whether the arm will stand still from then until the chunk is there.

        With `forward_state` the joint state sent is not the one measured now but the one the arm
        will have when the chunk lands, d ticks from now (d = the measured delay): the target the plan
        commands for tick t + d - 1. The chunk is then indexed from t + d, so what is played after a
        slow answer is the start of a chunk predicted for the right state, not its middle (the
        regression-policy counterpart of RTC conditioning the next chunk on the committed actions).
        Off by default: it suits a policy that plans from the state it is given; the demo policy at
        850 ms did no better with it (13/20 vs 15/20, docs/policy_runtime.md), and one trained with
        images older than its state (to match) did much worse even at 0 ms (5/20 vs 16/20)."""
        plan_end = self._plan_start + len(self._plan) if self._plan is not None else -1
        d = self.delay_ticks() if self.forward_state else 0
        if self._plan is None or d <= 0 or "qpos" not in obs:
            return obs, t, plan_end <= t + 1
        f = t + d
        i = min(f, plan_end) - 1 - self._plan_start
        if i < 0 or self._plan.shape[1] != np.size(obs["qpos"]):
            return obs, t, plan_end <= t + 1
        sent = dict(obs)
        sent["qpos"] = self._plan[i].astype(np.asarray(obs["qpos"]).dtype, copy=True)
        if plan_end <= f:              # the plan runs out first: the arm waits at its last target
            return sent, plan_end, True
        return sent, f, False

    def _request(self, t: int, obs: dict) -> tuple[dict, int, bool | None]:
        if self.mode == "smooth":
            return self._forward(t, obs)
        return obs, t, None

    def _join(self, s: int, chunk: np.ndarray, t: int, standing: bool | None = None) -> None:
        """Chunk whose first action is for tick s, arriving at tick t: join it onto the plan.
        `standing`: the arm stands still from tick s until the chunk arrives (so the chunk is played
        from its start whenever it lands); None = infer it from the plan."""
        self._chunks = [(a, c) for a, c in self._chunks if a + len(c) > t][-3:] + [(s, chunk)]
        plan_end = self._plan_start + len(self._plan) if self._plan is not None else -1
        if standing is None:
            standing = plan_end <= s + 1
        if standing:
            # the arm has stood still since this chunk's state (first chunk, or the plan ran out
            # before it): the chunk starts where the arm is, so play it from its start
            s = max(s, t)
        start = max(t, s)
        new = chunk[start - s:]                    # the actions for ticks already played are past
        if len(new) == 0:
            self.stats.stale += 1
            return
        if self._ep["first_chunk_tick"] is None:
            self._ep["first_chunk_tick"] = t
        old = None
        if self._plan is not None and 0 <= t - self._plan_start < len(self._plan):
            old = self._plan[t - self._plan_start:]
        elif self._last_cmd is not None and self._last_cmd.shape == chunk.shape[1:]:
            old = self._last_cmd[None]             # nothing left to play: start from where it stands
        if old is None:
            self._plan, self._plan_start = new.copy(), t
            return
        keep, old = old[:start - t], old[start - t:]    # played until the new chunk's first tick
        if len(old) == 0:
            old = keep[-1:]                 # the plan ends before the chunk starts: ramp from its last target
        # the new chunk's offset from the plan at the join decays linearly over the ramp, so the
        # command is continuous and its rate changes by at most offset/(m+1) per tick
        k = max(1, int(getattr(self.policy.meta, "chunk_size", len(chunk)) or len(chunk)))
        m = min(len(new), max(3, min(len(old), k // 3)))
        e = old[0] - new[0]
        w = 1.0 - np.arange(1, m + 1) / (m + 1)
        out = new.copy()
        out[:m] += w[:, None] * e[None, :]
        self._plan, self._plan_start = np.concatenate([keep, out]) if len(keep) else out, t

    def _plan_action(self, t: int) -> np.ndarray | None:
        if self._plan is None:
            return None
        i = t - self._plan_start
        return self._plan[i] if 0 <= i < len(self._plan) else None

    def _smooth_needs(self, t: int) -> bool:
        if self._plan is None:
            return True
        remaining = self._plan_start + len(self._plan) - t
        return (remaining <= self.delay_ticks() + self.margin_ticks
                or t - self._last_request >= self.replan_every)

    def _track(self, a: np.ndarray | None, obs: dict) -> np.ndarray | None:
        """Per-episode smoothness of what is commanded (a hold = the present joints)."""
        ep = self._ep
        ep["steps"] += 1
        if a is None:
            ep["holds"] += 1
            if ep["first_chunk_tick"] is not None:
                ep["waits"] += 1
                self.stats.waits += 1
        cmd = np.asarray(obs["qpos"] if a is None else a, float).reshape(-1)[:-1]   # arm only
        prev = [p for p in self._prev_cmd if p.shape == cmd.shape]
        if prev:
            step = float(np.max(np.abs(cmd - prev[-1])))
            ep["max_step"] = max(ep["max_step"], step)
            self.stats.max_step = max(self.stats.max_step, step)
        if len(prev) == 2:
            acc = float(np.max(np.abs(cmd - 2 * prev[-1] + prev[-2]))) / self.period() ** 2
            ep["max_accel"] = max(ep["max_accel"], acc)
            self.stats.max_accel = max(self.stats.max_accel, acc)
        self._prev_cmd = (prev + [cmd])[-2:]
        self._last_cmd = np.asarray(obs["qpos"] if a is None else a, float).reshape(-1)
        if self._ep["first_chunk_tick"] is None and a is not None:
            self._ep["first_chunk_tick"] = self._step - 1
        return a

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="policy-inference", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                gen, step, obs, origin, standing = self._pending
                self._pending = None
                self._busy_since = time.monotonic()
            try:
                out, dt = self._predict(obs)
                res = (gen, step, origin, standing, out, None)
            except BaseException as e:  # noqa: BLE001 - reported to the control loop
                res, dt = (gen, step, origin, standing, None, e), None
            with self._cv:
                if dt is not None:
                    self.stats.latencies.append(dt)
                    self._note_latency(dt)
                self.stats.inferences += 1
                self._result = res
                self._busy_since = None

    # ---- chunk bookkeeping -----------------------------------------------------------
    def _add_chunk(self, step: int, chunk: np.ndarray, now_step: int, standing: bool | None = None) -> None:
        if self.mode == "smooth":
            self._join(step, chunk, now_step, standing)
        elif self.mode == "replan":
            self._chunks = [(step, chunk)]
        else:
            self._chunks.append((step, chunk))
            self._chunks = [(s, c) for s, c in self._chunks if s + len(c) > now_step]

    def _action_for(self, t: int) -> np.ndarray | None:
        if self.mode == "smooth":
            return self._plan_action(t)
        cover = [(s, c) for s, c in self._chunks if s <= t < s + len(c)]
        if not cover:
            return None
        if self.mode == "replan":
            s, c = cover[-1]
            return c[t - s]
        acts = np.stack([c[t - s] for s, c in cover])             # oldest first
        w = np.exp(-self.ensemble_decay * np.arange(len(acts)))
        return (w[:, None] * acts).sum(0) / w.sum()

    def _needs_prediction(self, t: int) -> bool:
        if self.mode == "smooth":
            return self._smooth_needs(t)
        if self.mode == "ensemble":
            return True
        if not self._chunks:
            return True
        s, c = self._chunks[-1]
        return t - s >= min(self.replan_every, len(c))

    # ---- the per-tick call -----------------------------------------------------------
    def act(self, obs: dict, now: float | None = None) -> np.ndarray | None:
        """Absolute joint target for this tick, or None = hold position (no usable action yet,
        or the watchdog tripped). Raises PolicyOutputError for NaN / out-of-range output.
        Asynchronous: never waits for inference (only a short lock around the hand-over)."""
        now = time.monotonic() if now is None else now
        t = self._step
        self._step += 1
        self.stats.steps += 1
        self.last_hold_watchdog = False
        self._note_tick(now)
        if not self.async_:
            if self._needs_prediction(t):
                self._last_request = t
                out, dt = self._predict(obs)
                self.stats.latencies.append(dt)
                self._note_latency(dt)
                self.stats.inferences += 1
                chunk = self._validate(out, t)
                self._add_chunk(t, chunk, t)
                if self.max_latency is not None and dt > self.max_latency:
                    # the observation is stale by now: hold this tick, use the chunk from the next
                    self.stats.watchdog_trips += 1
                    self.stats.holds += 1
                    self.last_hold_watchdog = True
                    return self._track(None, obs)
            a = self._action_for(t)
            if a is None:
                self.stats.holds += 1
            return self._track(a, obs)

        self._ensure_worker()
        with self._cv:
            res, self._result = self._result, None
            busy_since = self._busy_since
        if res is not None and res[0] != self._gen:
            res = None                  # asked for in an earlier episode: not this scene's
        if res is not None:
            _, step, origin, standing, out, err = res
            if err is not None:
                raise PolicyError(f"policy inference failed at step {step}: {err}") from err
            self._add_chunk(origin, self._validate(out, step), t, standing)
            # a replan chunk must be requested again once used up
        self.stats.delay_ticks = self.delay_ticks()
        with self._cv:
            if self._busy_since is None and self._pending is None and self._needs_prediction(t):
                self._pending = (self._gen, t, *self._request(t, obs))
                self._last_request = t
                self._cv.notify()
            elif self._pending is not None:
                self._pending = (self._gen, t, *self._request(t, obs))   # newer observation replaces an unstarted one
                self._last_request = t
        late = (self.max_latency is not None and busy_since is not None
                and time.monotonic() - busy_since > self.max_latency)
        if late and self._tripped_for != busy_since:
            self._tripped_for = busy_since
            self.stats.watchdog_trips += 1
        a = self._action_for(t)
        if self.mode == "smooth" and a is not None:
            late = False            # something is left to play: a slow result is no reason to hold
        if a is None or late:
            self.stats.holds += 1
            self.last_hold_watchdog = bool(late)
            return self._track(None, obs)
        return self._track(a, obs)


@dataclass
class RolloutResult:
    task: str
    instruction: str
    seed: int | None
    success: bool | None           # None = not known (hardware: the operator labels it)
    steps: int
    reason: str                    # "success", "timeout", "stopped", or the error message
    safety: dict[str, int] = field(default_factory=dict)
    holds: int = 0
    watchdog_trips: int = 0
    nan_stop: bool = False
    latencies: list[float] = field(default_factory=list)
    episode: str | None = None     # recorded episode file
    commands_sent: int = 0
    notes: dict = field(default_factory=dict)     # e.g. sim: which object ended up lifted

    def to_dict(self) -> dict:
        return dict(vars(self))


def rollout(*args, **kwargs) -> RolloutResult:
    """One policy episode on any Robot + cameras: runs through the one control pipeline
    (teleop_app.pipeline.rollout, same arguments)."""
    from teleop_app.pipeline import rollout as _rollout
    return _rollout(*args, **kwargs)
