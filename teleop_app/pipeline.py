"""The one control pipeline: live sessions, headless recording, replay and sim evaluation all tick here.

One `ControlPipeline.step(now)` per tick:
    e-stop flag (checked first, latched into the safety layer)
 -> one observation: joints + each camera read ONCE (the frames serve the policy AND the recording);
    no observation (DeviceError: a servo timeout, a lost port) -> hold: the last goal written again, no
    source, nothing recorded, said once; RobotNotAnswering raised once it lasts fault_s (real clock)
 -> `before(ctx)` hook (the session: queued commands, pad, workflow clock)
 -> source.command(ctx) -> SafetyLayer -> e-stop flag again -> robot.send_action (returns what was written)
 -> the step is handed to the episode writer (never blocks: steps wait in memory until a writer is ready)
 -> `after(ctx, result)` hook (publish status)

Clock: "real" (RateLoop, timestamps measured) or "sim" (the caller steps `now` by one period; timestamps
are the sim clock, and the recorder hand-off applies back-pressure since it runs faster than real time).
Recorded `action` = what the driver reports it wrote (its own clamps included), `action_raw` = the
request. Episode start/finish/keep/discard and store updates belong on a `Housekeeper` thread.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from drivers.interfaces import DeviceError
from teleop_app.sources import OperatorInputs, TickContext

log = logging.getLogger("teleop")


class RobotNotAnswering(DeviceError):
    """The robot has given no observation for ControlPipeline.fault_s (the arm was held meanwhile)."""


@dataclass
class StepResult:
    obs: object
    frames: dict
    raw: np.ndarray | None
    sent: np.ndarray
    written: np.ndarray | None          # None: nothing commanded (torque off)
    report: object | None


class Housekeeper:
    """One background thread running episode operations in order (create writer, finish, store.add,
    relabel, discard, index writes): the tick only submits, never waits."""

    def __init__(self, name: str = "housekeeping"):
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args, **kw) -> Future:
        fut: Future = Future()
        self._q.put((fut, fn, args, kw))
        return fut

    def _run(self) -> None:
        try:
            os.nice(2)          # Linux: nice applies to this thread only, below the control thread
        except (AttributeError, OSError):
            pass
        while True:
            item = self._q.get()
            if item is None:
                return
            fut, fn, args, kw = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kw))
            except BaseException as e:  # noqa: BLE001 - reported through the future
                log.exception("housekeeping job failed")
                fut.set_exception(e)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every job submitted so far has run."""
        self.submit(lambda: None).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)


class EpisodeHandoff:
    """Tick side of recording. `begin(writer or Future[writer])`; `add(step)` gives the step to the writer
    when it is ready, else keeps it in memory (no step is lost while a writer is still being created);
    `end()` detaches and returns (writer-or-future, steps still waiting) for the housekeeper to finish."""

    def __init__(self, backpressure: bool = False, max_depth: int = 8, max_buffer: int = 250):
        self._w = None
        self._writer = None
        self._buffer: list[dict] = []
        self._pending_kin: dict | None = None
        self.backpressure = backpressure
        self.max_depth = max_depth
        self.max_buffer = max_buffer        # steps kept in memory while the writer is being made
        self.dropped = 0
        self.steps = 0
        self.error: str | None = None

    @property
    def active(self) -> bool:
        return self._w is not None

    def begin(self, writer) -> None:
        self._w = writer
        self._writer = None if isinstance(writer, Future) else writer
        self._buffer, self._pending_kin, self.steps, self.error, self.dropped = [], None, 0, None, 0

    def _ready(self):
        if self._writer is None and isinstance(self._w, Future) and self._w.done():
            if self._w.exception() is not None:
                self.error = f"cannot record: {self._w.exception()}"
                self._w = None
                self._buffer = []
                return None
            self._writer = self._w.result()
        return self._writer

    def add(self, step: dict, torque_off: bool = False) -> None:
        if self._w is None:
            return
        if torque_off:
            # Kinesthetic: action t = measured position t+1 (gripper from the button): write the previous step.
            prev, self._pending_kin = self._pending_kin, step
            step["action"] = step["action_raw"].copy()
            if prev is None:
                return
            act = step["qpos"].copy()
            act[-1] = prev["action_raw"][-1]
            prev["action"], prev["action_raw"] = act, act.copy()
            step = prev
        self.steps += 1
        w = self._ready()
        if w is None:
            if self._w is not None:
                if len(self._buffer) < self.max_buffer:
                    self._buffer.append(step)
                else:
                    self.dropped += 1
                    if self.dropped == 1:
                        self.error = (f"the episode file was not ready after {self.max_buffer} steps (disk "
                                      "stalled?): recording stopped, the steps so far are kept")
            return
        if self._buffer:
            buf, self._buffer = self._buffer, []
            for s in buf:
                w.add_step(**s)
        if self.backpressure:
            while w.queue_depth > self.max_depth:       # sim clock: faster than real time
                time.sleep(0.002)
        w.add_step(**step)
        if getattr(w, "error", None):
            self.error = f"recording stopped: {w.error}"

    def end(self):
        """Detach: -> (writer or Future, leftover steps) or (None, [])."""
        w, left = self._w, list(self._buffer)
        if self._pending_kin is not None:       # last kinesthetic step: action = hold its own position
            left.append(self._pending_kin)
            self.steps += 1
        self._w, self._writer, self._buffer, self._pending_kin = None, None, [], None
        return w, left


def finish_writer(w, leftover: list[dict], success: int = -1):
    """Housekeeping: wait for the writer (if it was still being made), give it the steps that waited, finish."""
    w = w.result() if isinstance(w, Future) else w
    if w is None:
        return None
    for s in leftover:
        w.add_step(**s)
    if w.num_steps == 0:
        w.abort()
        return None
    return w.finish(success=success)


class ControlPipeline:
    def __init__(self, robot, cameras: dict, safety, period: float, *, profile=None, workcell=None,
                 clock: str = "real", camera_errors: dict | None = None, inputs: OperatorInputs | None = None,
                 before: Callable[[TickContext], None] | None = None,
                 after: Callable[[TickContext, StepResult], None] | None = None,
                 on_estop: Callable[[str], None] | None = None):
        if clock not in ("real", "sim"):
            raise ValueError(f"clock must be 'real' or 'sim', got {clock!r}")
        self.robot, self.cameras, self.safety, self.period = robot, cameras, safety, float(period)
        self.clock = clock
        self.camera_errors = camera_errors if camera_errors is not None else {}
        self.before, self.after, self.on_estop = before, after, on_estop
        self.source = None
        self.recorder = EpisodeHandoff(backpressure=clock == "sim")
        self.ctx = TickContext(period=self.period, profile=profile, workcell=workcell, robot=robot,
                               inputs=inputs or OperatorInputs(), rebase=self.rebase)
        self.estop_request: tuple[float, str] | None = None     # set by any thread, no lock
        self._estop_since: float | None = None
        self.estop_latencies: list[float] = []                   # request -> first held command sent (s)
        self.last_q: np.ndarray | None = None
        self.frames: dict = {}
        # A robot that does not answer (a servo timeout, a lost port): held from that very tick; a fault
        # lasting fault_s is raised to the owner (the session e-stops and says it). Sim clock: at once.
        self.fault_s = 0.25 if clock == "real" else 0.0
        self.robot_faults = 0                                    # ticks without an observation
        self._fault_since: float | None = None
        self.last_fault_at: float | None = None                  # monotonic time of the last fault's first held tick

    # ---- e-stop: lock-free ---------------------------------------------------------------
    def request_estop(self, source: str = "api") -> None:
        """From any thread or signal handler: one attribute store; the tick latches it."""
        self.estop_request = (time.monotonic(), source)

    def _latch_estop(self) -> None:
        req = self.estop_request
        if req is None:
            return
        self.estop_request = None
        q = self.last_q if self.last_q is not None else self.ctx.target
        if q is not None:
            self.safety.estop(q)
        if self._estop_since is None:
            self._estop_since = req[0]
        if self.on_estop:
            self.on_estop(req[1])

    # ---- helpers -------------------------------------------------------------------------
    def rebase(self, q) -> None:
        """Forget the last command and hold `q` from here (after torque-off, a scene reset, e-stop release)."""
        q = np.asarray(q, float)
        self.ctx.target = q.copy()
        self.safety.reset(q)

    def set_source(self, source) -> None:
        """Swap the source (the caller stops the old one / starts the new one with the ctx of this tick)."""
        self.source = source

    def observe(self):
        obs = self.robot.get_observation()
        frames = {}
        for name, cam in self.cameras.items():
            # A camera that fails or vanishes (unplugged, "lost" while it reconnects) is said once,
            # the recording goes on (the writer repeats its last frame), and it is read again every
            # tick so that it comes back by itself, said once too.
            err = None
            try:
                f = cam.read_latest() if cam.is_connected else None
                if f is None and not cam.is_connected:
                    err = getattr(cam, "last_error", None) or "not connected"
            except Exception as e:  # noqa: BLE001 - a camera failing must not stop the arm
                f, err = None, str(e)
            if err is not None:
                if name not in self.camera_errors:
                    self.camera_errors[name] = err
                    self.ctx.say(f"camera '{name}' failed: {err}; recording goes on with its last frame "
                                 "repeated until it is back")
            elif f is not None:
                if self.camera_errors.pop(name, None) is not None:
                    self.ctx.say(f"camera '{name}' is back")
                frames[name] = f
        return obs, frames

    def _no_observation(self, e: Exception) -> None:
        """The robot gave no observation this tick: hold. Position servos keep their last goal; it is
        written again (a broadcast sync write needs no reply), no source runs, nothing is recorded for
        this tick. Said once; raised once it has lasted fault_s (and again every tick while it lasts)."""
        t = time.monotonic()
        self.robot_faults += 1
        first = self._fault_since is None
        if first:
            self._fault_since = self.last_fault_at = t
        if t - self._fault_since >= self.fault_s:
            if self.fault_s <= 0:
                raise e
            # one stable text while it lasts (the owner says it once, not per tick with new CRC values)
            raise RobotNotAnswering(f"no answer from the robot for {self.fault_s:g} s (why: said above); "
                                    "check power and cable, then release the e-stop") from e
        if first:
            self.ctx.say(f"the robot did not answer ({e}); holding the arm at its last goal")
        target = self.ctx.target
        if target is not None and not getattr(self.source, "torque_off", False):
            try:
                self.robot.send_action(target)
            except (DeviceError, ValueError):
                pass
        return None

    # ---- the tick ------------------------------------------------------------------------
    def step(self, now: float) -> StepResult | None:
        self._latch_estop()                             # FIRST, whatever else happens in this tick
        ctx = self.ctx
        try:
            obs, frames = self.observe()
        except DeviceError as e:
            return self._no_observation(e)
        if self._fault_since is not None:
            self._fault_since = None
            ctx.say("the robot answers again")
        q = np.asarray(obs.position, float)
        self.last_q = q
        self.frames = frames
        ctx.obs, ctx.frames, ctx.now = obs, frames, now
        if ctx.target is None:
            ctx.target = q.copy()
        if self.before:
            self.before(ctx)
        src = self.source
        raw = None
        if src is not None and not self.safety.estopped and self.estop_request is None:
            raw = src.command(ctx)
        src = self.source                               # the source may have asked for another mode
        self._latch_estop()                             # an e-stop raised while the source ran
        torque_off = bool(getattr(src, "torque_off", False))
        written = None
        if torque_off:
            sent, rep = q.copy(), None                  # torque off: nothing is commanded
        elif raw is None:
            sent, rep = self.safety.hold(q, watchdog=ctx.inputs.watchdog_tripped(now))
        else:
            sent, rep = self.safety.filter(raw, q)
        if not torque_off:
            written = self.robot.send_action(sent)
            written = sent.copy() if written is None else np.asarray(written, float)
            ctx.target = sent.copy()
            if self._estop_since is not None and self.safety.estopped:
                self.estop_latencies.append(time.monotonic() - self._estop_since)
                self._estop_since = None
        if self.recorder.active:
            raw_a = written if raw is None else raw
            ts = now if self.clock == "sim" else obs.timestamp
            self.recorder.add(dict(
                qpos=q.copy(), action=(sent if written is None else written).copy(),
                action_raw=np.asarray(raw_a, float).copy(), timestamp=ts, qvel=obs.velocity,
                images={n: f.image for n, f in frames.items()},
                image_timestamps={n: (now if self.clock == "sim" else f.timestamp) for n, f in frames.items()},
                # human in the loop (teleop_app/human.py): who produced this action, and was it an override
                intervention=bool(getattr(src, "intervention", False)),
                source=str(getattr(src, "active", None) or getattr(src, "name", "") or "")),
                torque_off=torque_off)
        res = StepResult(obs, frames, raw, sent, written, rep)
        if self.after:
            self.after(ctx, res)
        return res


# ==================================================================== sim-clock episodes
def run_sim_episode(pipe: ControlPipeline, source, *, max_steps: int, t0: float | None = None,
                    realtime: bool = False, stop: threading.Event | None = None,
                    done: Callable[[StepResult], bool] | None = None,
                    on_step: Callable[[int, StepResult], None] | None = None) -> tuple[int, str]:
    """Tick `pipe` up to max_steps times with `source` on a sim clock (or sleeping to real time).
    -> (steps taken, reason: "done" | "timeout" | "stopped"). Exceptions from the source propagate."""
    t0 = time.monotonic() if t0 is None else t0
    ctx = pipe.ctx
    ctx.now = t0
    pipe.set_source(source)
    source.start(ctx)
    k, reason = 0, "timeout"
    nxt = time.monotonic()
    for k in range(max_steps):
        if stop is not None and stop.is_set():
            return k, "stopped"
        res = pipe.step(t0 + k * pipe.period)
        if on_step:
            on_step(k, res)
        if done is not None and done(res):
            return k + 1, "done"
        if realtime:
            nxt += pipe.period
            time.sleep(max(0.0, nxt - time.monotonic()))
    return (k + 1 if max_steps else 0), reason


def rollout(runner, robot, cameras: dict, instruction: str, safety, *, max_steps: int, period: float,
            success_fn: Callable[[], bool] | None = None, writer=None, realtime: bool = False,
            stop: threading.Event | None = None, task: str = "", seed: int | None = None,
            on_step: Callable[[int, np.ndarray], None] | None = None, stop_on_success: bool = True,
            workcell=None, profile=None):
    """One policy episode through the pipeline: observe -> runner.act -> SafetyLayer -> send_action.

    A None from the runner becomes a hold. A PolicyOutputError/PolicyError ends the episode before
    anything is sent. `writer` (EpisodeWriter) gets every step: action = what the driver wrote,
    action_raw = what the policy asked for, images = exactly what the policy saw."""
    from teleop_app.policy.runner import RolloutResult
    from teleop_app.sources import PolicySource, PolicyStopped
    pipe = ControlPipeline(robot, cameras, safety, period, profile=profile, workcell=workcell,
                           clock="real" if realtime else "sim")
    pipe.ctx.instruction = instruction
    q0 = robot.get_observation().position
    pipe.rebase(q0)
    src = PolicySource(runner, on_error="raise", stall_s=None, strict_cameras=list(cameras))
    before = safety.counters.as_dict()
    lat0, holds0, wd0 = len(runner.stats.latencies), runner.stats.holds, runner.stats.watchdog_trips
    if writer is not None:
        pipe.recorder.backpressure = True
        pipe.recorder.begin(writer)
    state = {"success": None, "sent": 0}
    ok_fn = success_fn

    def stepped(k, res):
        state["sent"] += 1
        if on_step:
            on_step(k, res.sent)
        if ok_fn is not None and ok_fn():
            state["success"] = True

    def done(res):
        return stop_on_success and state["success"] is True

    nan_stop = False
    try:
        steps, reason = run_sim_episode(pipe, src, max_steps=max_steps, realtime=realtime, stop=stop,
                                        done=done, on_step=stepped)
        if reason == "done":
            reason = "success"
    except PolicyStopped as e:
        steps, reason, nan_stop = state["sent"], e.reason, e.nan
    if writer is not None:
        _, left = pipe.recorder.end()
        for s in left:
            writer.add_step(**s)
    success = state["success"]
    if success_fn is not None and success is None:
        success = bool(success_fn())
        if success and reason == "timeout":
            reason = "success"
    after = safety.counters.as_dict()
    return RolloutResult(task=task, instruction=instruction, seed=seed, success=success,
                         steps=steps, reason=reason,
                         safety={key: after[key] - before[key] for key in after},
                         holds=runner.stats.holds - holds0, watchdog_trips=runner.stats.watchdog_trips - wd0,
                         nan_stop=nan_stop, latencies=list(runner.stats.latencies[lat0:]),
                         commands_sent=state["sent"])
