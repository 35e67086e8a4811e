"""SimRobot / SimCamera: the simulated workcell behind the drivers.interfaces Robot and Camera APIs.

realtime=False (headless, fast): every send_action steps the world by `period` of virtual
time and read_latest renders synchronously. realtime=True: a background thread steps the world
by wall-clock time (~200 Hz) and a grabber thread takes a scene snapshot at the camera fps, has it drawn
by a render process (render_proc.py: drawing would otherwise hold the control process's GIL) and keeps
only the newest frame, like real hardware. TELEOP_SIM_RENDER_PROCESS=0 draws in the grabber thread.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from ..interfaces import DeviceNotConnected, Frame, JointState
from .workcell import Workcell

_PHYSICS_HZ = 200.0


class TickGuard:
    """Keeps the sim's helper threads out of the control loop's way at its tick.

    The sim's physics steps and camera snapshots are Python, holding the control process's GIL; one
    running when the control loop wakes delays its observation (measured, 50 Hz: single ticks 2-3 ms
    late). Real devices have no such cost. The loop's ticks come every `period` (SimRobot knows it and
    when get_observation was last called), so the helpers wait out [tick - pre, tick + post] before
    working. Their work just shifts by up to ~1.5 ms: a physics step integrates the measured dt.
    """

    def __init__(self, period: float, pre: float = 0.0012, post: float = 0.0004):
        self.period, self.pre, self.post = float(period), float(pre), float(post)
        self.last: float | None = None          # time of the last observation
        self._dt = 0.0

    def note(self, t: float) -> None:
        """An observation at t. Two equal intervals that differ from `period` are the loop's new rate
        (a replay at its recorded fps); an extra e-stop tick off the grid changes nothing."""
        if self.last is not None:
            dt = t - self.last
            if abs(dt - self._dt) < 0.1 * dt and abs(dt - self.period) > 0.05 * self.period and dt > 0.002:
                self.period = dt
            self._dt = dt
        self.last = t

    @property
    def window(self) -> tuple:
        """(last tick, period, pre, post): what a render process needs to answer outside the window."""
        return (self.last, self.period, self.pre, self.post)

    def delay(self, now: float | None = None) -> float:
        """Seconds to wait before working now (0 outside the window around the next tick)."""
        from .render_proc import quiet_delay     # not at import: `python -m drivers.sim.render_proc`
        return quiet_delay(time.monotonic() if now is None else now, self.last, self.period, self.pre,
                           self.post)

    def wait(self, stop: threading.Event) -> None:
        d = self.delay()
        if d > 0:
            stop.wait(d)


class _Realtime:
    """connect()/disconnect() with an optional background thread running `self._run` (realtime mode)."""
    realtime: bool
    _thread_name: str

    def _init_thread(self) -> None:
        self._connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            return
        self._connected = True
        if self.realtime:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._connected = False


class SimRobot(_Realtime):
    """drivers.interfaces.Robot for the simulated 7-joint arm + gripper."""

    def __init__(self, workcell: Workcell, period: float = 0.1, realtime: bool = False):
        if period <= 0:
            raise ValueError(f"period must be > 0 s, got {period}")
        self.workcell = workcell
        self.period = float(period)
        self.realtime = bool(realtime)
        self.joint_names = list(workcell.joint_names)
        self._thread_name = "sim-physics"
        self.guard = TickGuard(period)
        workcell.tick_guard = self.guard        # the sim cameras keep out of the tick too
        self._init_thread()

    def disconnect(self) -> None:
        self._stop_thread()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(1.0 / _PHYSICS_HZ):
            self.guard.wait(self._stop)
            now = time.monotonic()
            # cap a long stall (debugger, overloaded machine) so the arm never teleports
            self.workcell.step(min(now - last, 0.05))
            last = now

    def _check(self) -> None:
        if not self._connected:
            raise DeviceNotConnected("simulated robot is not connected: call connect() first")

    def get_observation(self) -> JointState:
        self._check()
        # lock-free: a physics step or a camera snapshot holding the workcell lock must not delay the
        # observation (nor its timestamp) of a real-time tick
        ts = time.monotonic()
        pos, vel = self.workcell.joint_state()
        if self.realtime:
            self.guard.note(ts)
        return JointState(position=pos, timestamp=ts, velocity=vel)

    def send_action(self, target: np.ndarray) -> np.ndarray:
        """Set position goals (clipped to limits); steps the world by `period` unless realtime."""
        self._check()
        t = np.asarray(target, dtype=float).reshape(-1)
        if t.shape != (len(self.joint_names),) or not np.all(np.isfinite(t)):
            raise ValueError(f"action must be {len(self.joint_names)} finite numbers "
                             f"({', '.join(self.joint_names)}), got {target!r}")
        wc = self.workcell
        written = np.clip(t, wc.lower, wc.upper)
        wc.set_target(written)
        if not self.realtime:
            wc.step(self.period)
        return written

    def set_torque(self, enabled: bool) -> None:
        self._check()
        self.workcell.set_torque(enabled)

    @property
    def torque_enabled(self) -> bool:
        return bool(self.workcell.torque)

    def push(self, q8) -> None:
        """Kinesthetic teaching in the sim: the operator's hand moves the arm (torque off only)."""
        self._check()
        self.workcell.push(q8)


class SimCamera(_Realtime):
    """drivers.interfaces.Camera rendering a workcell view ('front' or 'wrist')."""

    def __init__(self, workcell: Workcell, name: str = "front", view: str = "front",
                 width: int = 224, height: int = 224, fps: float = 30, realtime: bool = False,
                 render_process: bool | None = None):
        if view not in ("front", "wrist"):
            raise ValueError(f"unknown sim camera view {view!r}; use 'front' or 'wrist'")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.workcell = workcell
        self.name, self.view = name, view
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.realtime = bool(realtime)
        self._index = 0
        self._latest: Frame | None = None
        self._lock = threading.Lock()
        if render_process is None:
            render_process = os.environ.get("TELEOP_SIM_RENDER_PROCESS", "1") != "0"
        self.render_process = bool(render_process) and self.realtime
        self._proc = None
        self.render_note: str | None = None     # why the render process is not used (logged once)
        self._thread_name = f"sim-cam-{name}"
        self._init_thread()

    def connect(self) -> None:
        if self._connected:
            return
        if self.render_process:
            from .render_proc import RenderProcess
            try:
                self._proc = RenderProcess(self.width, self.height)
            except OSError as e:
                self._proc, self.render_note = None, f"no render process ({e}); drawing in-process"
        if self.realtime:
            # the first frame now, drawn here: the render process takes ~0.4 s to start, and a
            # recording begun meanwhile must not start with blank frames
            renderer, snap, idx = self.workcell.snapshot()
            with self._lock:
                self._index += 1
                self._latest = Frame(image=renderer.render(snap, self.view, self.width, self.height, idx),
                                     timestamp=time.monotonic(), index=self._index)
        super().connect()

    def disconnect(self) -> None:
        self._stop_thread()
        if self._proc is not None:
            self._proc.close()
            self._proc = None
        with self._lock:
            self._latest = None

    def _draw(self) -> np.ndarray:
        renderer, snap, idx = self.workcell.snapshot()
        proc = self._proc
        if proc is not None and not proc.is_ready() and proc.error is None:
            proc = None                     # still starting: draw this frame here
        if proc is not None:
            guard = getattr(self.workcell, "tick_guard", None)
            img = proc.render(renderer, snap, self.view, idx, guard.window if guard is not None else None)
            if img is not None:
                return img
            self.render_note = f"{proc.error}; drawing in-process from now on"
            logging.getLogger(__name__).warning("sim camera '%s': %s", self.name, self.render_note)
            self._proc = None
            proc.close()
        return renderer.render(snap, self.view, self.width, self.height, idx)

    def _grab(self) -> Frame:
        ts = time.monotonic()          # the state snapshot is taken right now
        img = self._draw() if self.realtime else self.workcell.render(self.view, self.width, self.height)
        with self._lock:
            self._index += 1
            return Frame(image=img, timestamp=ts, index=self._index)

    def _run(self) -> None:
        period = 1.0 / self.fps
        nxt = time.monotonic()
        while not self._stop.is_set():
            guard = getattr(self.workcell, "tick_guard", None)
            if guard is not None:
                guard.wait(self._stop)
            f = self._grab()
            with self._lock:
                self._latest = f
            nxt += period
            delay = nxt - time.monotonic()
            if delay < 0:               # fell behind: skip, never queue
                nxt = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    def read_latest(self) -> Frame | None:
        if not self._connected:
            raise DeviceNotConnected(f"simulated camera '{self.name}' is not connected: call connect() first")
        if self.realtime:
            with self._lock:
                return self._latest
        return self._grab()
