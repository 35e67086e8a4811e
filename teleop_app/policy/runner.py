"""Closed-loop policy execution: action chunks -> one safe joint target per control tick.

PolicyRunner turns predicted chunks into per-tick targets, either
  - "ensemble": predict every tick and average all chunks that cover this tick, older ones weighted
    more (ACT's temporal ensembling: smooth, and every tick still sees a fresh observation), or
  - "replan": predict a chunk, play `replan_every` of it open-loop, predict again.
With `async_=True` inference runs in a worker thread so a real-time loop never waits for it; a chunk
that arrives late is indexed by the tick its observation was taken at (latency compensation).
Watchdog: inference slower than `max_latency` -> act() returns None (= hold position) and counts it.
Every output is validated before use: a NaN/inf or a target far outside the joint limits raises
PolicyOutputError ("policy output NaN at step 12"); the rollout stops and nothing is sent.

`rollout()` runs one episode on any Robot + cameras through a SafetyLayer (the hardware session can
call it or use PolicyRunner inside its own loop); the sim evaluation lives in evaluate.py.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .base import Policy, PolicyError


class PolicyOutputError(PolicyError):
    """The policy produced an unusable command (NaN/inf, wrong shape, far out of range)."""


@dataclass
class RunnerStats:
    steps: int = 0
    inferences: int = 0
    holds: int = 0                # act() returned None for any reason
    watchdog_trips: int = 0       # ... because inference was slower than max_latency
    latencies: list[float] = field(default_factory=list)   # seconds per predict()


class PolicyRunner:
    def __init__(self, policy: Policy, chunk_mode: str = "ensemble", *, replan_every: int | None = None,
                 ensemble_decay: float = 0.01, async_: bool = False, max_latency: float | None = None,
                 lower=None, upper=None, range_margin: float = 0.5):
        if chunk_mode not in ("ensemble", "replan"):
            raise ValueError(f"chunk_mode must be 'ensemble' or 'replan', got {chunk_mode!r}")
        self.policy = policy
        self.chunk_mode = chunk_mode
        k = max(1, int(getattr(policy.meta, "chunk_size", 1) or 1))
        self.replan_every = max(1, min(int(replan_every or k), k))
        self.ensemble_decay = float(ensemble_decay)
        self.async_ = bool(async_)
        self.max_latency = max_latency
        self.lower = None if lower is None else np.asarray(lower, float)
        self.upper = None if upper is None else np.asarray(upper, float)
        self.range_margin = float(range_margin)
        self.stats = RunnerStats()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._closed = False
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        """New episode: drop buffered chunks and restart the tick counter (stats are kept)."""
        with self._lock:
            self._chunks: list[tuple[int, np.ndarray]] = []     # (tick of the observation, chunk)
            self._step = 0
            self._pending: tuple[int, dict] | None = None
            self._busy_since: float | None = None
            self._result: tuple[int, np.ndarray | None, BaseException | None] | None = None
            self._tripped_for: float | None = None
            self.last_hold_watchdog = False
        self.policy.reset()

    def close(self) -> None:
        with self._cv:
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
                step, obs = self._pending
                self._pending = None
                self._busy_since = time.monotonic()
            try:
                out, dt = self._predict(obs)
                res = (step, out, None)
            except BaseException as e:  # noqa: BLE001 - reported to the control loop
                res, dt = (step, None, e), None
            with self._cv:
                if dt is not None:
                    self.stats.latencies.append(dt)
                self.stats.inferences += 1
                self._result = res
                self._busy_since = None

    # ---- chunk bookkeeping -----------------------------------------------------------
    def _add_chunk(self, step: int, chunk: np.ndarray, now_step: int) -> None:
        if self.chunk_mode == "replan":
            self._chunks = [(step, chunk)]
        else:
            self._chunks.append((step, chunk))
            self._chunks = [(s, c) for s, c in self._chunks if s + len(c) > now_step]

    def _action_for(self, t: int) -> np.ndarray | None:
        cover = [(s, c) for s, c in self._chunks if s <= t < s + len(c)]
        if not cover:
            return None
        if self.chunk_mode == "replan":
            s, c = cover[-1]
            return c[t - s]
        acts = np.stack([c[t - s] for s, c in cover])             # oldest first
        w = np.exp(-self.ensemble_decay * np.arange(len(acts)))
        return (w[:, None] * acts).sum(0) / w.sum()

    def _needs_prediction(self, t: int) -> bool:
        if self.chunk_mode == "ensemble":
            return True
        if not self._chunks:
            return True
        s, c = self._chunks[-1]
        return t - s >= min(self.replan_every, len(c))

    # ---- the per-tick call -----------------------------------------------------------
    def act(self, obs: dict, now: float | None = None) -> np.ndarray | None:
        """Absolute joint target for this tick, or None = hold position (no usable action yet,
        or the watchdog tripped). Raises PolicyOutputError for NaN / out-of-range output."""
        now = time.monotonic() if now is None else now
        t = self._step
        self._step += 1
        self.stats.steps += 1
        self.last_hold_watchdog = False
        if not self.async_:
            if self._needs_prediction(t):
                out, dt = self._predict(obs)
                self.stats.latencies.append(dt)
                self.stats.inferences += 1
                chunk = self._validate(out, t)
                self._add_chunk(t, chunk, t)
                if self.max_latency is not None and dt > self.max_latency:
                    # the observation is stale by now: hold this tick, use the chunk from the next
                    self.stats.watchdog_trips += 1
                    self.stats.holds += 1
                    self.last_hold_watchdog = True
                    return None
            a = self._action_for(t)
            if a is None:
                self.stats.holds += 1
            return a

        self._ensure_worker()
        with self._cv:
            res, self._result = self._result, None
            busy_since = self._busy_since
            if self._busy_since is None and self._pending is None and self._needs_prediction(t):
                self._pending = (t, obs)
                self._cv.notify()
            elif self._pending is not None:
                self._pending = (t, obs)        # newer observation replaces an unstarted one
        if res is not None:
            step, out, err = res
            if err is not None:
                raise PolicyError(f"policy inference failed at step {step}: {err}") from err
            self._add_chunk(step, self._validate(out, step), t)
            # a replan chunk must be requested again once used up
        late = (self.max_latency is not None and busy_since is not None
                and time.monotonic() - busy_since > self.max_latency)
        if late and self._tripped_for != busy_since:
            self._tripped_for = busy_since
            self.stats.watchdog_trips += 1
        a = self._action_for(t)
        if a is None or late:
            self.stats.holds += 1
            self.last_hold_watchdog = bool(late)
            return None
        return a


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


def build_obs(q: np.ndarray, cameras: dict, instruction: str) -> tuple[dict, dict]:
    """Read every camera (newest frame) -> (obs, frames)."""
    frames = {}
    for name, cam in cameras.items():
        f = cam.read_latest()
        if f is None:
            raise PolicyError(f"camera '{name}' has no frame yet; check it is connected and streaming")
        frames[name] = f
    return {"images": {n: f.image for n, f in frames.items()}, "qpos": np.asarray(q, float),
            "instruction": instruction}, frames


def rollout(runner: PolicyRunner, robot, cameras: dict, instruction: str, safety, *, max_steps: int,
            period: float, success_fn: Callable[[], bool] | None = None, writer=None,
            realtime: bool = False, stop: threading.Event | None = None, task: str = "",
            seed: int | None = None, on_step: Callable[[int, np.ndarray], None] | None = None,
            stop_on_success: bool = True) -> RolloutResult:
    """One episode: observe -> runner.act -> SafetyLayer -> robot.send_action, every `period` s.

    A None from the runner becomes safety.hold() (watchdog trips counted in the safety counters).
    A PolicyOutputError ends the episode before anything is sent. `writer` (EpisodeWriter) gets
    every step with action = what was sent and action_raw = what the policy asked for.
    """
    runner.reset()
    q0 = robot.get_observation().position
    safety.reset(q0)
    before = safety.counters.as_dict()
    lat0, holds0, wd0 = len(runner.stats.latencies), runner.stats.holds, runner.stats.watchdog_trips
    reason, success, sent, k = "timeout", None, 0, 0
    nan_stop = False
    next_t = time.monotonic()
    for k in range(max_steps):
        if stop is not None and stop.is_set():
            reason = "stopped"
            break
        js = robot.get_observation()
        q = np.asarray(js.position, float)
        obs, frames = build_obs(q, cameras, instruction)
        try:
            target = runner.act(obs, time.monotonic())
        except PolicyOutputError as e:
            reason, nan_stop = str(e), True
            break
        except PolicyError as e:
            reason = str(e)
            break
        if target is None:
            cmd, _ = safety.hold(q, watchdog=runner.last_hold_watchdog)
            raw = cmd
        else:
            cmd, _ = safety.filter(target, q)
            raw = target
        robot.send_action(cmd)
        sent += 1
        if on_step:
            on_step(k, cmd)
        if writer is not None:
            while writer.queue_depth > 8:       # headless sim runs faster than real time
                time.sleep(0.002)
            writer.add_step(q, cmd, raw, timestamp=js.timestamp, images={n: f.image for n, f in frames.items()},
                            image_timestamps={n: f.timestamp for n, f in frames.items()})
        if success_fn is not None and success_fn():
            success = True
            if stop_on_success:
                reason = "success"
                break
        if realtime:
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
    if success_fn is not None and success is None:
        success = bool(success_fn())
        if success:
            reason = "success"
    after = safety.counters.as_dict()
    return RolloutResult(task=task, instruction=instruction, seed=seed, success=success,
                         steps=k + 1 if sent else k, reason=reason,
                         safety={key: after[key] - before[key] for key in after},
                         holds=runner.stats.holds - holds0, watchdog_trips=runner.stats.watchdog_trips - wd0,
                         nan_stop=nan_stop, latencies=list(runner.stats.latencies[lat0:]), commands_sent=sent)
