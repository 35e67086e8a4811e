"""Incremental HDF5 episode file (resizable datasets), shared by the live writer and recovery."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import schema as S
from .journal import Step

_VLEN_U8 = h5py.vlen_dtype(np.dtype("uint8"))


class H5Sink:
    """Creates the episode layout and appends batches of prepared steps."""

    def __init__(self, path: Path, attrs: dict[str, Any], cameras: dict[str, tuple[int, int]],
                 dof: int, jpeg: bool):
        self.path = Path(path)
        self.cams = list(cameras)
        self.dof = dof
        self.n = 0
        # Default (earliest) file format on purpose: "latest" marks the file open-for-write in its
        # superblock, and a crashed file then needs h5clear before it can be opened at all.
        # Small raw-data chunk cache: image chunks (bigger than it) go straight to the OS, so little
        # data sits in HDF5's memory where a crash or a full disk would strand it.
        self.f = h5py.File(self.path, "w", rdcc_nbytes=256 * 1024)
        f = self.f
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["num_steps"] = 0
        f.attrs["flushed_steps"] = 0
        f.attrs["success"] = -1
        rows = 256
        vec = dict(shape=(0, dof), maxshape=(None, dof), dtype="f4", chunks=(rows, dof))
        self.qpos = f.create_dataset(S.QPOS, **vec)
        self.action = f.create_dataset(S.ACTION, **vec)
        self.action_raw = f.create_dataset(S.ACTION_RAW, **vec)
        self.ts = f.create_dataset(S.TIMESTAMP, shape=(0,), maxshape=(None,), dtype="f8", chunks=(rows,))
        self.qvel = None
        self.img: dict[str, h5py.Dataset] = {}
        self.img_ts: dict[str, h5py.Dataset] = {}
        f.require_group(S.IMAGES)
        f.require_group(S.IMAGE_TIMESTAMPS)
        for cam, (h, w) in cameras.items():
            if jpeg:
                d = f.create_dataset(f"{S.IMAGES}/{cam}", shape=(0,), maxshape=(None,), dtype=_VLEN_U8,
                                     chunks=(64,))
                d.attrs["encoding"] = "jpeg"
            else:
                d = f.create_dataset(f"{S.IMAGES}/{cam}", shape=(0, h, w, 3), maxshape=(None, h, w, 3),
                                     dtype="u1", chunks=(1, h, w, 3))
                d.attrs["encoding"] = "raw"
            d.attrs["height"] = h
            d.attrs["width"] = w
            self.img[cam] = d
            self.img_ts[cam] = f.create_dataset(f"{S.IMAGE_TIMESTAMPS}/{cam}", shape=(0,), maxshape=(None,),
                                                dtype="f8", chunks=(rows,))

    def append(self, steps: list[Step], records: list[bytes] | None = None) -> None:
        """Append prepared steps (records: their packed form, unused in-process)."""
        if not steps:
            return
        n0, k = self.n, len(steps)
        n1 = n0 + k

        def put(ds: h5py.Dataset, arr: np.ndarray) -> None:
            ds.resize(n1, axis=0)
            ds[n0:n1] = arr

        put(self.qpos, np.stack([s.qpos for s in steps]))
        put(self.action, np.stack([s.action for s in steps]))
        put(self.action_raw, np.stack([s.action_raw for s in steps]))
        put(self.ts, np.array([s.timestamp for s in steps], dtype="f8"))
        if self.qvel is None and any(s.qvel is not None for s in steps):
            self.qvel = self.f.create_dataset(S.QVEL, shape=(n0, self.dof), maxshape=(None, self.dof),
                                              dtype="f4", chunks=(256, self.dof), fillvalue=np.nan)
        if self.qvel is not None:
            nan = np.full(self.dof, np.nan, np.float32)
            put(self.qvel, np.stack([s.qvel if s.qvel is not None else nan for s in steps]))
        for cam in self.cams:
            d = self.img[cam]
            if d.attrs["encoding"] == "jpeg":
                d.resize(n1, axis=0)
                for i, s in enumerate(steps):   # element-wise: h5py mis-broadcasts 1-row vlen arrays
                    d[n0 + i] = np.frombuffer(s.images[cam], np.uint8)
            else:
                put(d, np.stack([s.images[cam] for s in steps]))
            put(self.img_ts[cam], np.array([s.image_ts[cam] for s in steps], dtype="f8"))
        self.n = n1
        self.f.attrs["num_steps"] = n1

    def flush(self, fsync: bool = True) -> None:
        """Push HDF5 caches to the OS (and to disk if fsync): a later crash keeps these steps."""
        self.f.attrs["flushed_steps"] = self.n
        self.f.flush()
        if fsync:
            try:
                os.fsync(self.f.id.get_vfd_handle())
            except (OSError, TypeError, ValueError):
                pass

    def trim(self) -> None:
        """Cut every dataset back to the last fully appended step (after a failed append)."""
        dsets = [self.qpos, self.action, self.action_raw, self.ts, self.qvel,
                 *self.img.values(), *self.img_ts.values()]
        for d in dsets:
            if d is not None and d.shape[0] != self.n:
                d.resize(self.n, axis=0)

    def close(self, success: int | None = None, extra_attrs: dict[str, Any] | None = None) -> int:
        if success is not None:
            self.f.attrs["success"] = int(success)
        for k, v in (extra_attrs or {}).items():
            self.f.attrs[k] = v
        self.f.attrs["num_steps"] = self.n
        self.f.attrs["flushed_steps"] = self.n
        self.f.close()
        return self.n
