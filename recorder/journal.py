"""Append-only sidecar journal: the crash-safety net next to the .partial HDF5 file.

HDF5 files killed mid-write can be left unreadable (metadata lives in caches), so every step is
also appended here as a self-checking record. A record is

    b"TJ" | kind (1 byte) | 0 | payload length (u32 LE) | crc32(payload) (u32 LE) | payload

A torn tail (process killed mid-record) fails the length or CRC check and reading stops there:
everything before it is intact. Kinds: b"H" header (JSON), b"S" one step (binary, see pack_step),
b"R" a per-step label run starting at a step (JSON [key, start step, value]: schema.INTERVENTION /
ACTION_SOURCE, written just before that step), so a recovered episode keeps who drove each step.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_HEAD = struct.Struct("<2sccII")
_MAGIC = b"TJ"
_STEP = struct.Struct("<IdB")      # index, timestamp, flags
_IMG = struct.Struct("<dI")        # capture timestamp, byte length
F_QVEL = 1


@dataclass
class JournalHeader:
    attrs: dict[str, Any]                  # root attrs (EpisodeMeta.to_attrs() + start_monotonic)
    cameras: dict[str, tuple[int, int]]    # name -> (height, width)
    dof: int
    jpeg: bool
    runs: dict = field(default_factory=dict)   # filled while reading: key -> [[start, value], ...]


@dataclass
class Step:
    """One prepared step, exactly as it goes into the HDF5 file (images already encoded)."""
    timestamp: float
    qpos: np.ndarray
    action: np.ndarray
    action_raw: np.ndarray
    qvel: np.ndarray | None
    images: dict[str, Any] = field(default_factory=dict)      # cam -> JPEG bytes or HxWx3 uint8
    image_ts: dict[str, float] = field(default_factory=dict)


def _record(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(_MAGIC, kind, b"\0", len(payload), zlib.crc32(payload)) + payload


def pack_header(h: JournalHeader) -> bytes:
    body = {"attrs": h.attrs, "cameras": {k: list(v) for k, v in h.cameras.items()},
            "dof": h.dof, "jpeg": h.jpeg}
    return _record(b"H", json.dumps(body).encode())


def pack_run(key: str, start: int, value) -> bytes:
    """A label run (schema.step_runs) that starts at step `start`."""
    return _record(b"R", json.dumps([str(key), int(start), value]).encode())


def pack_step(index: int, s: Step, cams: list[str]) -> bytes:
    parts = [_STEP.pack(index, s.timestamp, F_QVEL if s.qvel is not None else 0),
             s.qpos.astype("<f4").tobytes(), s.action.astype("<f4").tobytes(),
             s.action_raw.astype("<f4").tobytes()]
    if s.qvel is not None:
        parts.append(s.qvel.astype("<f4").tobytes())
    for cam in cams:
        img = s.images[cam]
        data = img if isinstance(img, (bytes, bytearray)) else np.ascontiguousarray(img).tobytes()
        parts.append(_IMG.pack(s.image_ts[cam], len(data)))
        parts.append(data)
    return _record(b"S", b"".join(parts))


def _unpack_step(p: bytes, h: JournalHeader) -> Step:
    _, ts, flags = _STEP.unpack_from(p, 0)
    off = _STEP.size
    d = h.dof * 4

    def vec() -> np.ndarray:
        nonlocal off
        v = np.frombuffer(p, "<f4", h.dof, off).astype(np.float32)
        off += d
        return v

    qpos, action, action_raw = vec(), vec(), vec()
    qvel = vec() if flags & F_QVEL else None
    images, image_ts = {}, {}
    for cam, (hh, ww) in h.cameras.items():
        its, n = _IMG.unpack_from(p, off)
        off += _IMG.size
        data = p[off:off + n]
        off += n
        if len(data) != n:
            raise ValueError("truncated image")
        images[cam] = data if h.jpeg else np.frombuffer(data, np.uint8).reshape(hh, ww, 3)
        image_ts[cam] = its
    return Step(ts, qpos, action, action_raw, qvel, images, image_ts)


class JournalWriter:
    """Appends records with plain os.write (lands in the page cache at once: survives SIGKILL);
    sync() fsyncs (survives power loss up to the last sync)."""

    def __init__(self, path: Path, header: JournalHeader):
        self.path = Path(path)
        self.cams = list(header.cameras)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            import fcntl
            # Held while recording: recovery skips journals locked by a live recorder.
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (ImportError, OSError):
            pass
        self.bytes_written = 0
        self._write(pack_header(header))

    def _write(self, data: bytes) -> None:
        self.bytes_written += len(data)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def append(self, index: int, step: Step) -> None:
        self._write(pack_step(index, step, self.cams))

    def append_raw(self, record: bytes) -> None:
        """Append an already packed step record (pack_step)."""
        self._write(record)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def is_locked(path: Path) -> bool:
    """True if a live recorder holds this journal (so it must not be 'recovered' under it)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def read_journal(path: Path) -> tuple[JournalHeader, Iterator[Step]]:
    """Parse the header (ValueError if missing/corrupt) and return an iterator over intact steps.

    Iteration stops silently at the first torn or corrupt record (the crash point)."""
    f = open(path, "rb")
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        f.close()
        raise ValueError(f"journal {path} has no header (recording died before its first write)")
    magic, kind, _, n, crc = _HEAD.unpack(head)
    payload = f.read(n)
    if magic != _MAGIC or kind != b"H" or len(payload) != n or zlib.crc32(payload) != crc:
        f.close()
        raise ValueError(f"journal {path} header is corrupt")
    body = json.loads(payload)
    header = JournalHeader(body["attrs"], {k: (int(v[0]), int(v[1])) for k, v in body["cameras"].items()},
                           int(body["dof"]), bool(body["jpeg"]))

    def steps() -> Iterator[Step]:
        with f:
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return
                magic, kind, _, n, crc = _HEAD.unpack(head)
                if magic != _MAGIC:
                    return
                payload = f.read(n)
                if len(payload) != n or zlib.crc32(payload) != crc:
                    return
                if kind == b"R":
                    try:
                        key, start, value = json.loads(payload)
                        header.runs.setdefault(str(key), []).append([int(start), value])
                    except (ValueError, TypeError):
                        pass
                    continue
                if kind != b"S":
                    continue
                try:
                    yield _unpack_step(payload, header)
                except (ValueError, struct.error):
                    return

    return header, steps()
