"""Sim camera drawing in a child process, so it never holds the control process's GIL.

A real camera's frames arrive from a device (OpenCV's read releases the GIL while it waits). The sim's
NumPy/OpenCV renderer instead draws in Python, ~1.5 ms of GIL per 224x224 frame, and two 30 fps sim
cameras drawing in threads of the control process delayed its real-time ticks by up to ~3 ms (50 Hz:
p99 period error 2.5 ms with them, 0.2 ms without; benchmarks/bench_control.py). So a real-time
SimCamera takes only the scene snapshot in the control process (Workcell.snapshot(): a few copies under
the lock) and has it drawn here:

    python -m drivers.sim.render_proc SHM_PATH WIDTH HEIGHT

says b"R" once it is ready (imports done), then reads requests from stdin (4-byte length + msgpack: view, frame index, the snapshot, and the Style when
it changed; arrays as raw bytes, nothing unpickled), draws into the shared-memory image at SHM_PATH
(HxWx3 uint8) and answers each request with one byte (b"+" drawn, b"-" failed, then a line saying why).
It exits at EOF on stdin, i.e. when the camera closes it or its parent dies whatever way.

`RenderProcess.render()` returns None when the process is gone or does not answer within `timeout`;
SimCamera then draws in-process (said once) so a sim camera never stops because of its helper.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from .render import Renderer, Snapshot, Style

_ND = 1     # msgpack ext type: ndarray (dtype str, shape, raw bytes)


def _default(o):
    if isinstance(o, np.ndarray):
        a = np.ascontiguousarray(o)
        return msgpack.ExtType(_ND, msgpack.packb((a.dtype.str, list(a.shape), a.tobytes())))
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot send {type(o).__name__} to the render process")


def _ext(code, data):
    if code != _ND:
        raise ValueError(f"unknown msgpack ext type {code}")
    dt, shape, raw = msgpack.unpackb(data)
    dtype = np.dtype(dt)
    if dtype.hasobject:
        raise ValueError("object arrays are refused")
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def encode(obj) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def decode(data: bytes):
    return msgpack.unpackb(data, ext_hook=_ext, raw=False, strict_map_key=False)


def quiet_delay(now: float, last: float | None, period: float, pre: float, post: float) -> float:
    """Seconds until `now` leaves the window [tick - pre, tick + post] around the control loop's ticks
    (every `period` from `last`, CLOCK_MONOTONIC: the same in every process); 0 outside it, and when the
    loop has not ticked for 4 periods. See robot.TickGuard."""
    if last is None or now - last > 4 * period:
        return 0.0
    phase = (now - last) % period
    if phase < post:
        return post - phase
    if phase > period - pre:
        return period - phase + post
    return 0.0


def _style_dict(style: Style) -> dict:
    return {f.name: getattr(style, f.name) for f in dataclasses.fields(style)}


def _snap_dict(snap: Snapshot) -> dict:
    return {f.name: getattr(snap, f.name) for f in dataclasses.fields(snap)}


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class RenderProcess:
    """One child process drawing one camera's frames (width x height) into shared memory."""

    def __init__(self, width: int, height: int, timeout: float = 2.0, python: str | None = None):
        self.width, self.height, self.timeout = int(width), int(height), float(timeout)
        self.error: str | None = None
        self._style_of: int | None = None       # id() of the Renderer whose Style the child has
        fd, path = tempfile.mkstemp(prefix="teleop-render-", dir=_shm_dir())
        try:
            os.ftruncate(fd, self.width * self.height * 3)
            self._mm = mmap.mmap(fd, self.width * self.height * 3)
        finally:
            os.close(fd)
        self.image = np.ndarray((self.height, self.width, 3), np.uint8, buffer=self._mm)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        try:
            self.proc = subprocess.Popen([python or sys.executable, "-m", "drivers.sim.render_proc", path,
                                          str(self.width), str(self.height)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        finally:
            self._path = path              # unlinked once the child has it open (first answer)
        self._out = self.proc.stdout.fileno()
        self._ready = False
        self._t_start = time.monotonic()
        self.start_timeout = 20.0

    def is_ready(self) -> bool:
        """The child has started (its b"R" arrived); never blocks. Until then the camera draws
        in-process (a child takes ~0.4 s to import, more on a loaded machine)."""
        if self._ready:
            return True
        if not self.alive:
            if self.error is None:
                self._fail(f"render process exited ({self.proc.poll()})")
            return False
        r, _, _ = select.select([self._out], [], [], 0)
        if r:
            b = os.read(self._out, 1)
            if b == b"R":
                self._ready = True
            else:
                self._fail(f"render process did not start ({self.proc.poll() if not b else b!r})")
        elif time.monotonic() - self._t_start > self.start_timeout:
            self._fail(f"render process did not start within {self.start_timeout:g} s")
        return self._ready

    @property
    def alive(self) -> bool:
        return self.error is None and self.proc.poll() is None

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self.close()

    def render(self, renderer: Renderer, snap: Snapshot, view: str, frame_index: int,
               quiet: tuple | None = None) -> np.ndarray | None:
        """The frame drawn by the child (a copy), or None if the child failed (see `error`). `quiet`
        (last tick, period, pre, post): the child answers outside that window around the control
        loop's ticks, so this thread wakes up (and takes the GIL) when the loop is not starting a tick."""
        if not self.alive:
            if self.error is None:
                self.error = f"render process exited ({self.proc.poll()})"
            return None
        if not self._ready:
            deadline = time.monotonic() + self.start_timeout
            while not self.is_ready() and self.alive and time.monotonic() < deadline:
                select.select([self._out], [], [], 0.05)
            if not self._ready:
                self._fail(self.error or "render process did not start")
                return None
        req = {"view": view, "index": int(frame_index), "snap": _snap_dict(snap)}
        if quiet is not None:
            req["quiet"] = list(quiet)
        if id(renderer) != self._style_of:
            req["style"] = _style_dict(renderer.style)
        data = encode(req)
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
            ans = self._read(1)
        except (OSError, ValueError) as e:
            self._fail(f"render process pipe: {e}")
            return None
        if ans is None:
            return None
        if ans != b"+":
            line = self._readline()
            self._fail(f"render process: {line or 'no answer'}")
            return None
        self._style_of = id(renderer)
        if self._path is not None:
            self._unlink()
        return self.image.copy()

    def _read(self, n: int) -> bytes | None:
        deadline = time.monotonic() + self.timeout
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self._out], [], [], max(0.0, left))
            if not r:
                self._fail(f"render process gave no frame within {self.timeout:g} s")
                return None
            chunk = os.read(self._out, n - len(buf))
            if not chunk:
                code = self.proc.poll()
                self._fail(f"render process exited ({code})")
                return None
            buf += chunk
        return buf

    def _readline(self) -> str:
        out = b""
        while not out.endswith(b"\n"):
            c = self._read(1)
            if c is None:
                break
            out += c
        return out.decode(errors="replace").strip()

    def _unlink(self) -> None:
        path, self._path = self._path, None
        try:
            os.unlink(path)
        except (OSError, TypeError):
            pass

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()            # EOF: the child exits
            except OSError:
                pass
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=1.0)
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
        if getattr(self, "_path", None) is not None:
            self._unlink()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _serve(path: str, width: int, height: int) -> int:
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, width * height * 3)
    os.close(fd)
    image = np.ndarray((height, width, 3), np.uint8, buffer=mm)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    renderer = Renderer()
    out.write(b"R")
    out.flush()
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return 0                                   # EOF: the camera closed us or its process died
        (n,) = struct.unpack("<I", head)
        data = inp.read(n)
        if len(data) < n:
            return 0
        try:
            req = decode(data)
            if "style" in req:
                st = req["style"]
                renderer = Renderer(Style(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in st.items()}))
            image[:] = renderer.render(Snapshot(**req["snap"]), req["view"], width, height, int(req["index"]))
            if req.get("quiet"):
                d = quiet_delay(time.monotonic(), *req["quiet"])
                if d > 0:
                    time.sleep(d)
            out.write(b"+")
        except Exception as e:  # noqa: BLE001 - say why, the camera draws in-process from then on
            out.write(b"-" + f"{type(e).__name__}: {e}".replace("\n", " ").encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
