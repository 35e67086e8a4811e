"""HDF5 writing in a child process, so h5py never holds the recording process's GIL.

h5py keeps the GIL while HDF5 writes to disk (metadata flushes, heap writes of JPEG frames):
measured stalls of 50-100 ms of a 50 Hz control loop in the same process. Here the parent only
packs steps (the journal's record format) and os.write()s them to a pipe (GIL released while
blocked); this child parses them and appends to the .partial HDF5 file.

Protocol, parent -> child on stdin: journal records (see journal.py):
    b"H" JSON {attrs, cameras, dof, jpeg, partial, reserve, flush_interval_s}
    b"S" step (exact journal payload)
    b"F" JSON {success, extra}            -> close cleanly, fsync, answer, exit
    EOF without F (parent died)           -> flush + close the partial as is, exit
child -> parent on stdout, one line:  "OK <n>" | "ERR <n> <message>"  (n = steps in the closed
file, -1 if it could not be closed; on ERR the file was trimmed, closed with truncated=True).
"""
from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

from .journal import _HEAD, _MAGIC, JournalHeader, Step, _unpack_step


def _read_exact(fd: int, n: int) -> bytes | None:
    parts = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            return None
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def _read_record(fd: int) -> tuple[bytes, bytes] | None:
    head = _read_exact(fd, _HEAD.size)
    if head is None:
        return None
    magic, kind, _, n, crc = _HEAD.unpack(head)
    payload = _read_exact(fd, n)
    if magic != _MAGIC or payload is None or zlib.crc32(payload) != crc:
        raise ValueError("corrupt record from the recorder process")
    return kind, payload


def main() -> int:
    stop = []    # SIGUSR1 from the parent: it is salvaging after a disk error, stop appending now
    try:
        import signal
        signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))
    except (ImportError, ValueError, AttributeError):
        pass
    from .h5sink import H5Sink  # imported here: the parent never needs h5py for this module

    fd = sys.stdin.fileno()
    out = sys.stdout
    try:
        os.nice(10)     # background work: the recording process's control loop comes first
    except OSError:
        pass

    def answer(line: str) -> None:
        try:
            out.write(line.replace("\n", " ") + "\n")
            out.flush()
        except (BrokenPipeError, OSError):
            pass    # parent gone; the files speak for themselves

    rec = _read_record(fd)
    if rec is None:          # an unused spare: the parent exited
        return 0
    if rec[0] != b"H":
        answer("ERR -1 no header")
        return 2
    cfg = json.loads(rec[1])
    header = JournalHeader(cfg["attrs"], {k: (int(v[0]), int(v[1])) for k, v in cfg["cameras"].items()},
                           int(cfg["dof"]), bool(cfg["jpeg"]))
    flush_s = float(cfg["flush_interval_s"])
    sink = None
    fin = None
    try:
        sink = H5Sink(Path(cfg["partial"]), header.attrs, header.cameras, header.dof, header.jpeg)
        sink.flush(fsync=False)
        answer("READY 0")
        batch: list[Step] = []
        last_flush = time.monotonic()
        while True:
            wait = max(0.0, flush_s - (time.monotonic() - last_flush))
            ready, _, _ = select.select([fd], [], [], wait)
            if ready:
                rec = _read_record(fd)
                if rec is None:              # parent gone without finishing: keep what we have
                    sink.append(batch)
                    sink.close()
                    return 0
                kind, payload = rec
                if kind == b"S" and stop:
                    batch = []          # truncating: the journal had these, the disk has no room
                    continue
                if kind == b"S":
                    batch.append(_unpack_step(payload, header))
                    more, _, _ = select.select([fd], [], [], 0)
                    if more and len(batch) < 64:
                        continue
                    sink.append(batch)
                    batch = []
                elif kind == b"F":
                    fin = json.loads(payload)
                    if stop or ((fin.get("extra") or {}).get("truncated") and fin.get("skip_queued", True)):
                        if cfg.get("reserve"):
                            Path(cfg["reserve"]).unlink(missing_ok=True)
                        batch = []
                        sink.trim()
                    sink.append(batch)
                    n = sink.close(success=int(fin["success"]), extra_attrs=fin.get("extra") or None)
                    _fsync_file(Path(cfg["partial"]))
                    answer(f"OK {n}")
                    return 0
            if time.monotonic() - last_flush >= flush_s:
                sink.flush()
                last_flush = time.monotonic()
    except Exception as e:  # noqa: BLE001 - report, then save what is complete
        no_space = getattr(e, "errno", None) == errno.ENOSPC or "No space" in str(e) or "errno = 28" in str(e)
        msg = f"{'ENOSPC ' if no_space else ''}{e}"
        answer(f"FAIL {msg}")
        # The parent stops sending steps when it reads FAIL and then sends F (or dies: EOF).
        # Until then discard its steps, so nothing else competes for the space freed below.
        while fin is None:
            try:
                rec = _read_record(fd)
            except (ValueError, OSError):
                rec = None
            if rec is None or rec[0] == b"F":
                break
        if cfg.get("reserve"):
            Path(cfg["reserve"]).unlink(missing_ok=True)
        n = -1
        if sink is not None:
            try:
                sink.trim()
                n = sink.close(success=-1, extra_attrs={"truncated": True})
                _fsync_file(Path(cfg["partial"]))
            except Exception:  # noqa: BLE001
                n = -1
        answer(f"ERR {n} {msg}")
        return 2


def _fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SinkProcess:
    """Parent-side proxy with the H5Sink interface the writer thread uses."""

    def __init__(self, partial: Path, reserve: Path, header: JournalHeader, flush_interval_s: float):
        self.proc = _take_process()
        self.fd = self.proc.stdin.fileno()
        try:
            import fcntl
            fcntl.fcntl(self.fd, 1031, 1 << 20)   # F_SETPIPE_SZ: 1 MB of slack before os.write blocks
        except (ImportError, OSError):
            pass
        self.n = 0
        self.closed_n: int | None = None
        self.failure: str | None = None    # the child reported FAIL (it is waiting for F)
        self.dead = False                  # the child has exited
        self.ready = False                 # the child has its SIGUSR1 handler and the file open
        body = {"attrs": header.attrs, "cameras": {k: list(v) for k, v in header.cameras.items()},
                "dof": header.dof, "jpeg": header.jpeg, "partial": str(partial), "reserve": str(reserve),
                "flush_interval_s": flush_interval_s}
        self._send(_record(b"H", json.dumps(body).encode()))

    def _error(self) -> OSError:
        msg = self.failure or "HDF5 writer process died"
        return OSError(errno.ENOSPC if msg.startswith("ENOSPC") else errno.EIO, msg)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                k = os.write(self.fd, view)       # releases the GIL while the pipe is full
                view = view[k:]
        except OSError:                           # EPIPE: the child exited
            self._finish_reply(self._reply(timeout=10.0))
            raise self._error() from None

    def _reply(self, timeout: float = 30.0) -> str | None:
        """Next final status line (OK/ERR); records a FAIL notice on the way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                return None
            line = self.proc.stdout.readline().decode("utf-8", "replace").strip()
            if not line:
                return None
            if line.startswith("FAIL"):
                self.failure = self.failure or line[5:]
                continue
            if line.startswith("READY"):
                self.ready = True
                continue
            if line.startswith(("OK", "ERR")):
                return line
        return None

    def _finish_reply(self, line: str | None) -> None:
        parts = (line or "ERR -1 no answer from the HDF5 writer process").split(" ", 2)
        self.closed_n = int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else -1
        if parts[0] != "OK":
            self.failure = self.failure or (parts[2] if len(parts) > 2 else line)
        self.dead = True
        threading.Thread(target=self._reap, daemon=True, name="h5proc-reap").start()

    def poll(self) -> None:
        """Raise OSError if the child reported a failure (non-blocking)."""
        if self.failure is None and not self.dead:
            r, _, _ = select.select([self.proc.stdout], [], [], 0)
            while r:
                line = self.proc.stdout.readline().decode("utf-8", "replace").strip()
                if line.startswith("FAIL"):
                    self.failure = line[5:]
                elif line.startswith("READY"):
                    self.ready = True
                elif line.startswith(("OK", "ERR")) or not line:
                    self._finish_reply(line or None)
                    break
                r, _, _ = select.select([self.proc.stdout], [], [], 0)
        if self.failure is not None or self.dead:
            raise self._error()

    def append(self, steps: list[Step], records: list[bytes] | None = None) -> None:
        if records:
            self._send(b"".join(records))
            self.n += len(records)
        self.poll()

    def flush(self, fsync: bool = True) -> None:
        """The child flushes on its own clock (every flush_interval_s); here only a health check."""
        self.poll()

    def trim(self) -> None:
        """The child trims itself when closing."""

    def close(self, success: int | None = None, extra_attrs: dict | None = None,
              skip_queued: bool = True) -> int:
        """Ask the child to close the file; returns the number of steps in it. A truncated close (a disk
        error) skips the steps still queued in the pipe, unless skip_queued=False (the writer stopped
        early and had kept room for every step it sent)."""
        truncated = bool((extra_attrs or {}).get("truncated"))
        if truncated and not self.dead:
            try:
                self.poll()          # collect READY / FAIL / an exit already reported
            except OSError:
                pass
        if not self.dead:
            if truncated and skip_queued and self.ready:
                try:   # skip the steps still queued in the pipe (they would eat the freed space)
                    import signal
                    self.proc.send_signal(signal.SIGUSR1)
                except (ImportError, AttributeError, OSError):
                    pass
            fin = {"success": -1 if success is None else int(success), "extra": extra_attrs or {},
                   "skip_queued": bool(skip_queued)}
            self._send(_record(b"F", json.dumps(fin).encode()))
            self._finish_reply(self._reply())
        if self.closed_n is not None and self.closed_n >= 0:
            return self.closed_n
        raise self._error()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.dead = True
        self._reap()

    def _reap(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            self.proc.stdout.close()
        except (OSError, ValueError):
            pass


def _record(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(_MAGIC, kind, b"\0", len(payload), zlib.crc32(payload)) + payload


# A spare child, already started (python + h5py import take ~0.3-0.5 s), so that even a very
# short episode finishes quickly. It idles blocked on stdin; it exits when this process exits.
_spare: subprocess.Popen | None = None
_spare_lock = threading.Lock()


def _spawn() -> subprocess.Popen:
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-m", "recorder._h5child"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, bufsize=0, close_fds=True)


def _make_spare() -> None:
    global _spare
    with _spare_lock:
        if _spare is None or _spare.poll() is not None:
            try:
                _spare = _spawn()
            except OSError:
                _spare = None


def _take_process() -> subprocess.Popen:
    global _spare
    with _spare_lock:
        p, _spare = _spare, None
    if p is None or p.poll() is not None:
        p = _spawn()
    threading.Thread(target=_make_spare, daemon=True, name="h5proc-spare").start()
    return p


def prestart() -> None:
    """Start the spare writer process now (e.g. when the app opens a dataset)."""
    _make_spare()

