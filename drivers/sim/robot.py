"""SimRobot / SimCamera: the simulated workcell behind the drivers.interfaces Robot and Camera APIs.

realtime=False (headless, fast): every send_action steps the world by `period` of virtual
time and read_latest renders synchronously. realtime=True: a background thread steps the world
by wall-clock time (~200 Hz) and a grabber thread renders at the camera fps, keeping only
the newest frame, like real hardware.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from ..interfaces import DeviceNotConnected, Frame, JointState
from .workcell import Workcell

_PHYSICS_HZ = 200.0


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
        self._init_thread()

    def disconnect(self) -> None:
        self._stop_thread()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(1.0 / _PHYSICS_HZ):
            now = time.monotonic()
            # cap a long stall (debugger, overloaded machine) so the arm never teleports
            self.workcell.step(min(now - last, 0.05))
            last = now

    def _check(self) -> None:
        if not self._connected:
            raise DeviceNotConnected("simulated robot is not connected: call connect() first")

    def get_observation(self) -> JointState:
        self._check()
        with self.workcell.lock:
            pos = self.workcell.qpos()
            vel = self.workcell.qvel()
            ts = time.monotonic()
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
                 width: int = 224, height: int = 224, fps: float = 30, realtime: bool = False):
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
        self._thread_name = f"sim-cam-{name}"
        self._init_thread()

    def disconnect(self) -> None:
        self._stop_thread()
        with self._lock:
            self._latest = None

    def _grab(self) -> Frame:
        ts = time.monotonic()          # the state snapshot is taken right now
        img = self.workcell.render(self.view, self.width, self.height)
        with self._lock:
            self._index += 1
            return Frame(image=img, timestamp=ts, index=self._index)

    def _run(self) -> None:
        period = 1.0 / self.fps
        nxt = time.monotonic()
        while not self._stop.is_set():
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
