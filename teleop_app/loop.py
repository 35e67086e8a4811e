"""Fixed-rate control loop with absolute deadlines and measured cadence.

Deadlines are t0 + k*period (never "sleep period after work"), so timing does not drift. A tick that
starts later than one full period past its deadline counts as missed and the loop realigns to the grid.
`wake()` (lock-free: one byte into a pipe, safe from any thread or a signal handler) runs one extra tick
right away, off the grid, e.g. so an e-stop does not wait for the next deadline.
"""
from __future__ import annotations

import gc
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

SPIN_S = 0.0015  # sleep until this close to the deadline, then spin: time.sleep alone overshoots
# The spin holds the GIL (a plain busy loop, no time.sleep(0)): yielding it there let a helper thread
# take it and the tick then waited out Python's switch interval (measured, 50 Hz, 10 episodes x 2 runs:
# 2 episodes over p99 2 ms with the yielding spin, 0 with this one). A longer or self-tuned spin window
# made it worse (more time for helpers to be mid-work at the deadline).


# Threads of the control process that take the GIL while the loop waits for it (sim physics and
# renderers, camera grabbers, the episode writer, housekeeping). Descheduled by the OS while holding the
# GIL, any of them delays the real-time loop by a whole scheduler slice (measured: a 5 ms sleep in a
# SCHED_FIFO thread woke up to 88 ms late next to two sim renderers on a loaded 2-core machine; 2.4 ms
# with the renderers at a lower real-time priority). Their work is rate-bounded; policy inference (long
# CPU bursts) and the main/GUI thread are not promoted.
HELPER_PREFIXES = ("sim-physics", "sim-cam-", "simbus-", "camera-", "EpisodeWriter-", "jpeg", "h5proc-", "journal-",
                   "session-housekeeping")
HELPER_PRIORITY = 5        # below the control thread's 10


def realtime_helper() -> None:
    """Give the calling thread the helpers' real-time class (SCHED_FIFO `HELPER_PRIORITY`, below the
    loop's) where the OS allows it; without permission nothing changes. An ordinary thread can be
    preempted by any busy process while it holds the GIL, and the loop thread then waits for it."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(HELPER_PRIORITY))
    except (AttributeError, PermissionError, OSError):
        pass


def promote_threads(prefixes=HELPER_PREFIXES, priority: int = HELPER_PRIORITY, done: set | None = None) -> int:
    """Give the named helper threads of this process SCHED_FIFO `priority` (where allowed). Returns how
    many were promoted now; `done` ((native id, name) pairs) avoids repeating the system call."""
    n = 0
    for t in threading.enumerate():
        tid = getattr(t, "native_id", None)
        key = (tid, t.name)              # thread ids are reused: the name tells a new thread apart
        if tid is None or not t.name.startswith(tuple(prefixes)) or (done is not None and key in done):
            continue
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
            n += 1
        except (AttributeError, PermissionError, OSError, ProcessLookupError):
            pass
        if done is not None:
            done.add(key)
    return n


def due_generation() -> int:
    """The generation CPython's automatic collector would collect now (-1: none is due)."""
    t0, t1, t2 = gc.get_threshold()
    c0, c1, c2 = gc.get_count()
    return 2 if c2 >= t2 else 1 if c1 >= t1 else 0 if c0 >= t0 else -1


class GarbageCollector:
    """Runs Python's cyclic garbage collector in the loop's slack instead of wherever it triggers.

    Automatic collection stops every thread of the process, at an allocation anywhere (measured on the
    sim at 50 Hz: gen-0 pauses up to 1.2 ms, gen-1 5-8 ms, landing on ticks). While a loop owns it,
    automatic collection is off and the loop thread collects right after a tick, with the generation
    CPython would have chosen, only when the next deadline leaves room (`need` seconds per generation).
    Objects alive at start are frozen (gc.freeze) so the full collections stay short.
    """

    NEED = (0.002, 0.004, 0.008)      # slack needed before collecting generation 0 / 1 / 2

    def __init__(self):
        self.owned = False
        self.collections = [0, 0, 0]
        self._due_since: dict[int, float] = {}        # generation -> when it first had to wait for room

    # True while a GUI in this process collects on its own thread (ui.util.GuiGarbageCollector): Qt
    # objects finalized on a loop thread deadlock PySide (~QObject waits for the GIL while the GUI
    # thread, holding it, waits for Qt's connection mutex: a hung test run, stacks read with gdb),
    # so loops then never collect and leave automatic collection to that thread.
    external = False
    owners = 0                        # loops that own collection now (automatic collection off for them)

    def start(self) -> None:
        if gc.isenabled() and not GarbageCollector.external:
            gc.collect()
            gc.freeze()
            gc.disable()
            self.owned = True
            GarbageCollector.owners += 1

    def stop(self) -> None:
        if self.owned:
            self.owned = False
            GarbageCollector.owners -= 1
            gc.unfreeze()
            if not GarbageCollector.external:
                gc.enable()

    OVERDUE_S = 60.0                  # a due collection never waits longer than this for room

    def maybe_collect(self, slack: float) -> None:
        if not self.owned or GarbageCollector.external:
            return
        want = due_generation()
        if want < 0:
            return
        now = time.monotonic()
        gen = want
        while gen >= 0 and slack < self.NEED[gen]:
            gen -= 1                  # not enough room now: a younger generation, the rest later
        if gen < want:
            since = self._due_since.setdefault(want, now)
            if now - since > self.OVERDUE_S:
                gen = want            # ticks never leave room (a slow policy at 50 Hz): memory first
        if gen >= 0:
            gc.collect(gen)
            self.collections[gen] += 1
            for g in range(gen + 1):
                self._due_since.pop(g, None)


@dataclass
class LoopStats:
    hz: float
    achieved_hz: float
    p50_err_ms: float
    p99_err_ms: float
    max_err_ms: float
    missed: int
    overruns: int
    ticks: int
    last_tick_ms: float   # duration of the work in the last tick
    realtime: bool = False  # the loop thread got real-time (SCHED_FIFO) scheduling


class RateLoop:
    """Calls `tick(t_deadline, t_start)` at `hz` from its own thread until stop()."""

    def __init__(self, hz: float, tick: Callable[[float, float], None], name: str = "control",
                 on_error: Callable[[BaseException], None] | None = None, window: int = 3000):
        self.tick = tick
        self.name = name
        self.on_error = on_error
        self._set_hz(hz)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._starts: deque[float] = deque(maxlen=window)
        self.missed = 0
        self.overruns = 0
        self.ticks = 0
        self._last_work = 0.0
        self._lock = threading.Lock()
        self.realtime_priority = False
        self.priority_set = threading.Event()     # the loop thread has asked for real-time priority
        self.extra_ticks = 0
        self.gc = GarbageCollector()
        self.next_deadline: float | None = None        # of the tick the loop is waiting for (None: stopped)
        self.last_start: float = 0.0

        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)

    def wake(self) -> None:
        """Run an extra tick now (if the loop is sleeping). No lock: safe in signal handlers."""
        try:
            os.write(self._wfd, b"!")
        except OSError:          # pipe full: a wake-up is already pending
            pass

    def _sleep(self, timeout: float) -> bool:
        """Sleep up to timeout; True if woken."""
        r, _, _ = select.select([self._rfd], [], [], max(0.0, timeout))
        if r:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except OSError:
                pass
            return True
        return False

    def __del__(self):
        for fd in (getattr(self, "_rfd", None), getattr(self, "_wfd", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _set_hz(self, hz: float):
        if not 0.5 <= hz <= 200:
            raise ValueError(f"loop rate must be within 0.5..200 Hz, got {hz}")
        self.hz = float(hz)
        self.period = 1.0 / hz

    def set_rate(self, hz: float) -> None:
        """Change the rate; takes effect at the next tick and restarts the statistics."""
        with self._lock:
            self._set_hz(hz)
            self._rate_changed = True
            self._starts.clear()

    def reset_stats(self, window: int | None = None) -> None:
        """Start the statistics afresh (e.g. after warm-up); `window` = ticks kept for percentiles."""
        with self._lock:
            self._starts = deque(maxlen=window or self._starts.maxlen)
            self.missed = self.overruns = self.ticks = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._rate_changed = False
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        self.next_deadline = None
        self.gc.stop()

    def _raise_priority(self) -> None:
        """Ask the OS for real-time scheduling of this thread only; needs CAP_SYS_NICE (or root).

        Without it the loop still runs, but another busy process can delay a tick by a scheduler slice.
        """
        self.realtime_priority = False
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))   # 0 = the calling thread
            self.realtime_priority = True
        except (AttributeError, PermissionError, OSError):
            pass
        self.priority_set.set()

    def _run(self) -> None:
        self._raise_priority()
        self.gc.start()
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            with self._lock:
                if self._rate_changed:
                    t0, k, self._rate_changed = time.monotonic(), 0, False
                period = self.period
            deadline = t0 + k * period
            self.next_deadline = deadline
            now = time.monotonic()
            if now < deadline:
                if deadline - now > SPIN_S:
                    woke = self._sleep(deadline - now - SPIN_S)
                    if self._stop.is_set():
                        break
                    if woke:
                        self._extra_tick()
                        continue
                while time.monotonic() < deadline:
                    pass
            elif now - deadline > period:
                # Too late for this slot: skip to the next grid point instead of bursting.
                skip = int((now - deadline) / period)
                self.missed += skip
                k += skip
                deadline = t0 + k * period
            start = time.monotonic()
            self.last_start = start
            self._starts.append(start - deadline)
            try:
                self.tick(deadline, start)
            except BaseException as e:  # the loop must report, not die silently
                if self.on_error:
                    self.on_error(e)
                else:
                    raise
            end = time.monotonic()
            self._last_work = end - start
            if end > deadline + period:
                self.overruns += 1
            self.ticks += 1
            k += 1
            self.gc.maybe_collect(t0 + k * period - time.monotonic())

    def quiet_delay(self, pre: float = 0.0012, post: float = 0.0004, now: float | None = None) -> float:
        """Seconds a helper thread of this process should wait before taking the GIL for a burst of work:
        non-zero within `pre` before the next tick and `post` after a tick started (the tick's observation
        and its timestamp come first). 0 when the loop is not running."""
        nxt = self.next_deadline
        if nxt is None or not self.running:
            return 0.0
        now = time.monotonic() if now is None else now
        since = now - self.last_start
        if 0.0 <= since < post:
            return post - since
        ahead = nxt - now
        if 0.0 < ahead < pre:
            return ahead + post
        return 0.0

    def wait_quiet(self, stop: threading.Event | None = None) -> None:
        """Sleep out quiet_delay() (on `stop`, so a shutdown does not wait)."""
        d = self.quiet_delay()
        if d > 0:
            (stop.wait if stop is not None else time.sleep)(d)

    def _extra_tick(self) -> None:
        start = time.monotonic()
        try:
            self.tick(start, start)
        except BaseException as e:  # noqa: BLE001
            if self.on_error:
                self.on_error(e)
            else:
                raise
        self.extra_ticks += 1

    def stats(self) -> LoopStats:
        errs = np.abs(np.array(self._starts)) * 1e3 if self._starts else np.zeros(1)
        # Period error = difference between consecutive start offsets (jitter of the period itself).
        offs = np.array(self._starts)
        perr = np.abs(np.diff(offs)) * 1e3 if len(offs) > 1 else np.zeros(1)
        achieved = self.hz / (1 + np.mean(np.diff(offs)) * self.hz) if len(offs) > 1 else 0.0
        return LoopStats(hz=self.hz, achieved_hz=float(achieved),
                         p50_err_ms=float(np.percentile(perr, 50)), p99_err_ms=float(np.percentile(perr, 99)),
                         max_err_ms=float(max(perr.max(), errs.max())), missed=self.missed,
                         overruns=self.overruns, ticks=self.ticks, last_tick_ms=self._last_work * 1e3,
                         realtime=self.realtime_priority)
