"""Bounded reading of HDF5 files whose integrity is unknown: the reading is done in a child process
that is killed when the HDF5 library makes no progress for a few seconds.

Some damaged files make libhdf5 itself loop forever inside an attribute read (the inputs in
tests/fuzz_corpus/known_hangs/); h5py holds the GIL there and nothing in the reading process can
interrupt it. So wherever the product opens a file it did not just write itself (the store's index
refresh of a new or changed file, `teleop datasets validate`, the salvage of an interrupted
recording's .partial), the reading is first tried here. Files the index already knows (same size
and mtime) are not checked again: listing stays one stat per file. One child reads a whole batch.

Protocol: parent -> child stdin, one JSON object, then EOF:
    {"job": "read", "paths": [...]}               read_episode + read_summary of each, results dropped
    {"job": "salvage", "partial": p, "out": o}    recover's .partial salvage into o
child -> parent stdout, lines: "READY" (imports done), then "DONE <i>" after each file (read) or
"STEP <n>" per written batch and "OK <n>" (salvage), or "ERR <message>". The deadline restarts at
every line, so a long salvage that keeps writing is never cut; a loop is.
This module imports no h5py in the parent.
"""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from . import schema as S

log = logging.getLogger(__name__)

TIMEOUT_ENV = "TELEOP_HDF5_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 5.0
START_TIMEOUT_S = 60.0       # interpreter + numpy + h5py import on a loaded machine


def read_timeout() -> float:
    """Seconds the HDF5 library may take on one file (TELEOP_HDF5_TIMEOUT_S, default 5)."""
    try:
        t = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return t if t > 0 else DEFAULT_TIMEOUT_S


def hang_reason(timeout_s: float) -> str:
    return (f"the HDF5 library did not finish reading it in {timeout_s:g} s (damaged file?); "
            f"skipped, the file is kept")


def crash_reason(code: int | None) -> str:
    return f"the HDF5 library crashed reading it (reader exit code {code}; damaged file?); skipped, the file is kept"


class HangError(S.CorruptEpisodeError):
    """The HDF5 library looped or crashed on a file (its reader process was ended)."""


class _Child:
    """One checker process; line() returns its next line, None on timeout, "" when it exited."""

    def __init__(self, request: dict):
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.p = subprocess.Popen([sys.executable, "-m", "recorder.h5check"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=env, bufsize=0, close_fds=True)
        self._buf = b""
        try:
            self.p.stdin.write(json.dumps(request).encode())
            self.p.stdin.close()
        except OSError:          # it died at once; line() reports the exit
            pass

    def line(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        fd = self.p.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            self._buf += chunk
        out, self._buf = self._buf.split(b"\n", 1)
        return out.decode(errors="replace").strip() or " "

    def end(self) -> int | None:
        if self.p.poll() is None:
            self.p.kill()
        try:
            code = self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self.p.stdout.close()
        return code


def _start(request: dict) -> _Child | None:
    try:
        c = _Child(request)
    except OSError as e:
        log.warning("cannot start the HDF5 checker process (%s); reading without a time bound", e)
        return None
    if c.line(START_TIMEOUT_S) != "READY":
        code = c.end()
        log.warning("the HDF5 checker process did not start (exit code %s); reading without a time bound", code)
        return None
    return c


def iter_readable(paths, timeout_s: float | None = None) -> Iterator[tuple[Path, str]]:
    """Try reading each file (as read_episode and read_summary do) in one child process; yields
    (path, why) in order as soon as the child is past it: why is "" if the file finished (well or with
    an error: reading it in this process is then safe, the same bytes give the same result, and gives
    the real message), else the HDF5 library did not finish within timeout_s (default read_timeout())
    or crashed, and the child is replaced for the files after it. The caller can work on a file while
    the child reads the next. If no checker process starts: a warning, and "" for every file (reading
    as before, without a bound)."""
    todo = [Path(p) for p in paths]
    t = read_timeout() if timeout_s is None else float(timeout_s)
    while todo:
        c = _start({"job": "read", "paths": [str(p) for p in todo]})
        if c is None:
            yield from ((p, "") for p in todo)
            return
        try:
            while todo:
                ln = c.line(t)
                if ln is not None and ln.startswith("DONE "):
                    yield todo.pop(0), ""
                    continue
                yield todo.pop(0), (hang_reason(t) if ln is None else crash_reason(c.end()))
                break
        finally:
            c.end()


def check_readable(paths, timeout_s: float | None = None) -> dict[Path, str]:
    """{path: why} of the files iter_readable finds the HDF5 library does not finish (or crashes on)."""
    return {p: why for p, why in iter_readable(paths, timeout_s) if why}


def salvage_partial(partial: Path, out: Path, timeout_s: float | None = None) -> int:
    """recover's salvage of a .partial HDF5 into out, in a child process (steps written). Raises HangError
    when the HDF5 library stops making progress for timeout_s or crashes (out is then removed), and
    CorruptEpisodeError for an unreadable file. Without a checker process, salvages in this process."""
    t = read_timeout() if timeout_s is None else float(timeout_s)
    c = _start({"job": "salvage", "partial": str(partial), "out": str(out)})
    if c is None:
        from .recover import _from_partial
        return _from_partial(Path(partial), Path(out))
    try:
        while True:
            ln = c.line(t)
            if ln is not None and ln.startswith("STEP "):
                continue
            if ln is not None and ln.startswith("OK "):
                return int(ln.split()[1])
            if ln is not None and ln.startswith("ERR "):
                raise S.CorruptEpisodeError(f"{partial}: {ln[4:]}")
            why = hang_reason(t) if ln is None else crash_reason(c.end())
            Path(out).unlink(missing_ok=True)
            raise HangError(f"{partial}: {why}")
    finally:
        c.end()


# ------------------------------------------------------------------ the child
def _child_main() -> int:
    req = json.loads(sys.stdin.buffer.read())
    from .reader import read_episode, read_summary       # h5py: only the child imports it here

    def say(line: str) -> None:
        sys.stdout.write(line.replace("\n", " ") + "\n")
        sys.stdout.flush()

    say("READY")
    if req["job"] == "read":
        for i, p in enumerate(req["paths"]):
            try:
                read_episode(p).close()
                read_summary(p)
            except Exception:  # noqa: BLE001 - only finishing matters; the parent reads it again for the message
                pass
            say(f"DONE {i}")
        return 0
    from .recover import _from_partial
    try:
        n = _from_partial(Path(req["partial"]), Path(req["out"]), progress=lambda k: say(f"STEP {k}"))
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, MemoryError) as e:
        Path(req["out"]).unlink(missing_ok=True)
        say(f"ERR unreadable ({e!r})")
        return 0
    say(f"OK {n}")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
