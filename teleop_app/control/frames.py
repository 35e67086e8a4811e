"""Latest camera frames from the control process to its client through shared memory.

One buffer per camera: a 64-byte header (sequence counter, frame index, timestamp, shape) and the image.
The writer (control process) bumps the sequence to odd, writes, bumps it to even: a seqlock. A reader copies
the image and accepts it only if the sequence was even and unchanged across the copy, so it never sees a
torn frame; it never blocks the writer.

The control process creates and unlinks the buffers (multiprocessing's resource tracker unlinks them even if
the control process is killed); a client only attaches.
"""
from __future__ import annotations

import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

HEADER = 64
_SEQ, _INDEX, _STAMP, _SHAPE = 0, 1, 2, 3      # uint64 slots; the timestamp slot is read as float64


class FrameBuffer:
    """One camera's buffer. `create=True` in the control process, False in a client."""

    _created: set[str] = set()         # names this process owns (an attach to one of them stays tracked)

    def __init__(self, name: str, shape: tuple[int, int, int] | None = None, create: bool = False):
        if create:
            size = HEADER + int(np.prod(shape))
            self.shm = shared_memory.SharedMemory(name=name, create=True, size=size)   # mode 0600
            FrameBuffer._created.add(self.shm.name)
        else:
            self.shm = shared_memory.SharedMemory(name=name)
            # Python 3.11 registers attached segments too and would unlink the control side's buffer when
            # this client exits: only the creator owns it.
            if self.shm.name not in FrameBuffer._created:
                resource_tracker.unregister(self.shm._name, "shared_memory")
        self.owner = create
        self.name = self.shm.name
        buf = self.shm.buf
        self._u64 = np.ndarray((8,), np.uint64, buffer=buf[:HEADER])
        self._f64 = np.ndarray((8,), np.float64, buffer=buf[:HEADER])
        self._data = np.ndarray((self.shm.size - HEADER,), np.uint8, buffer=buf[HEADER:])
        if create:
            self._u64[:] = 0
        self._last_seq = 0

    # ------------------------------------------------------------------ writer
    def write(self, image: np.ndarray, timestamp: float, index: int) -> None:
        img = np.ascontiguousarray(image, dtype=np.uint8)
        if img.ndim == 2:
            img = img[:, :, None]
        n = img.size
        if n > self._data.size:
            raise ValueError(f"frame {img.shape} does not fit the {self._data.size}-byte buffer {self.name}")
        h, w, c = img.shape
        self._u64[_SEQ] += 1                       # odd: writing
        self._data[:n] = img.reshape(-1)
        self._u64[_INDEX] = index
        self._f64[_STAMP] = timestamp
        self._u64[_SHAPE] = (h << 32) | (w << 8) | c
        self._u64[_SEQ] += 1                       # even: consistent

    # ------------------------------------------------------------------ reader
    @property
    def seq(self) -> int:
        return int(self._u64[_SEQ])

    def read(self, tries: int = 20) -> tuple[np.ndarray, float, int] | None:
        """(image copy, timestamp, index) of the newest complete frame, or None if none was written yet."""
        for _ in range(tries):
            s1 = int(self._u64[_SEQ])
            if s1 == 0:
                return None
            if s1 & 1:
                time.sleep(0)
                continue
            shape = int(self._u64[_SHAPE])
            h, w, c = shape >> 32, (shape >> 8) & 0xFFFFFF, shape & 0xFF
            img = self._data[:h * w * c].copy()
            ts, idx = float(self._f64[_STAMP]), int(self._u64[_INDEX])
            if int(self._u64[_SEQ]) == s1:
                self._last_seq = s1
                return img.reshape(h, w, c), ts, idx
        return None

    def close(self) -> None:
        # numpy views hold exports of the mmap: drop them before closing
        self._u64 = self._f64 = self._data = None
        try:
            self.shm.close()
        except BufferError:
            pass
        if self.owner:
            FrameBuffer._created.discard(self.shm.name)
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
