"""Read an episode file back (numeric data eagerly, images lazily)."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import schema as S
from .writer import decode_jpeg


@dataclass
class Episode:
    path: Path
    meta: S.EpisodeMeta
    qpos: np.ndarray
    qvel: np.ndarray | None
    action: np.ndarray
    action_raw: np.ndarray
    timestamp: np.ndarray
    success: int
    cameras: list[str]
    num_steps: int
    image_timestamps: dict[str, np.ndarray]
    recovered: bool = False
    attrs: dict = field(default_factory=dict)          # all root attrs, raw
    encodings: dict[str, str] = field(default_factory=dict)
    image_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # cam -> (height, width)
    _h5: h5py.File | None = field(default=None, repr=False)

    # -- images ----------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None or not self._h5.id.valid:
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:
                raise S.CorruptEpisodeError(f"{self.path}: cannot reopen for images: {e}") from e
        return self._h5

    def _ds(self, cam: str) -> h5py.Dataset:
        if cam not in self.cameras:
            raise KeyError(f"{self.path.name} has no camera {cam!r}; cameras: {self.cameras}")
        try:
            return self._file()[f"{S.IMAGES}/{cam}"]
        except (KeyError, OSError, RuntimeError, ValueError) as e:
            raise S.CorruptEpisodeError(f"{self.path}: camera {cam} is unreadable: {e}") from e

    def raw_frame(self, cam: str, i: int) -> bytes | np.ndarray:
        """Stored frame i as is: JPEG bytes or HxWx3 uint8."""
        d = self._ds(cam)
        try:
            v = d[i]
        except (OSError, RuntimeError, ValueError, MemoryError) as e:
            raise S.CorruptEpisodeError(f"{self.path}: camera {cam} frame {i} is unreadable: {e}") from e
        return v.tobytes() if self.encodings[cam] == "jpeg" else v

    def image(self, cam: str, i: int) -> np.ndarray:
        """Frame i of camera cam, decoded: HxWx3 uint8 RGB."""
        if not -self.num_steps <= i < self.num_steps:
            raise IndexError(f"frame {i} out of range for {self.num_steps} steps")
        d = self._ds(cam)
        try:
            return decode_jpeg(d[i]) if self.encodings[cam] == "jpeg" else d[i]
        except (OSError, ValueError) as e:
            raise S.CorruptEpisodeError(f"{self.path}: camera {cam} frame {i} is unreadable: {e}") from e

    def images(self, cam: str) -> np.ndarray:
        """All frames of camera cam: (T, H, W, 3) uint8 RGB."""
        d = self._ds(cam)
        try:
            if self.encodings[cam] != "jpeg":
                return d[: self.num_steps]
            h, w = self.image_shapes[cam]
            out = np.empty((self.num_steps, h, w, 3), np.uint8)
            for i, buf in enumerate(d[: self.num_steps]):
                out[i] = decode_jpeg(buf)
            return out
        except (OSError, ValueError) as e:
            raise S.CorruptEpisodeError(f"{self.path}: camera {cam} frames are unreadable: {e}") from e

    @property
    def intervention(self) -> np.ndarray | None:
        """Per step: the operator overrode an autonomous source (bool), or None if not recorded."""
        v = S.expand_runs(self.attrs.get(S.INTERVENTION), self.num_steps, False)
        return None if v is None else np.asarray(v, bool)

    @property
    def action_source(self) -> list[str] | None:
        """Per step: which command source produced the action, or None if not recorded."""
        return S.expand_runs(self.attrs.get(S.ACTION_SOURCE), self.num_steps, "")

    @property
    def duration(self) -> float:
        return float(self.timestamp[-1] - self.timestamp[0]) if self.num_steps > 1 else 0.0

    def close(self) -> None:
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:  # noqa: BLE001
                pass
            self._h5 = None

    def __enter__(self) -> "Episode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


_REQUIRED = (S.QPOS, S.ACTION, S.TIMESTAMP)


def read_episode(path: str | os.PathLike) -> Episode:
    """Load an episode. Unreadable, truncated, non-HDF5 or wrong-schema files raise
    CorruptEpisodeError naming the file and saying what to do."""
    path = Path(path)
    if not path.exists():
        raise S.CorruptEpisodeError(f"{path}: episode file not found")
    if path.name.endswith((".partial", ".journal")):
        raise S.CorruptEpisodeError(f"{path}: this is an unfinished recording; open the episode store "
                                    f"(EpisodeStore.open) to recover it into a .h5 episode")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        size = path.stat().st_size
        raise S.CorruptEpisodeError(
            f"{path}: not a readable HDF5 episode ({size} bytes; {e}). The file is truncated or "
            f"corrupt; if it came from an interrupted recording, its .journal may allow recovery.") from e
    with f:
        try:
            attrs = {k: f.attrs[k] for k in f.attrs.keys()}
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            raise S.CorruptEpisodeError(f"{path}: attributes unreadable ({e})") from e
        version = attrs.get("schema_version")
        if version is None:
            raise S.CorruptEpisodeError(f"{path}: HDF5 file but not a teleop episode (no schema_version attr)")
        version = S._s(version)
        if version.split(".")[0] != S.SCHEMA_VERSION.split(".")[0]:
            raise S.CorruptEpisodeError(f"{path}: schema_version {version} is not supported "
                                        f"(this software reads {S.SCHEMA_VERSION}); upgrade teleop")
        try:
            missing = [k for k in _REQUIRED if k not in f]
        except (OSError, RuntimeError) as e:
            raise S.CorruptEpisodeError(f"{path}: data unreadable, file truncated or corrupt ({e})") from e
        if missing:
            raise S.CorruptEpisodeError(f"{path}: missing dataset(s) {', '.join('/' + m for m in missing)}")
        try:
            _check_sizes(f, path)
            meta = S.EpisodeMeta.from_attrs(attrs)
            qpos = f[S.QPOS][()]
            action = f[S.ACTION][()]
            action_raw = f[S.ACTION_RAW][()] if S.ACTION_RAW in f else action.copy()
            qvel = f[S.QVEL][()] if S.QVEL in f else None
            ts = f[S.TIMESTAMP][()]
            cams = sorted(f[S.IMAGES].keys()) if S.IMAGES in f else []
            img_ts, enc, shapes = {}, {}, {}
            for cam in cams:
                d = f[f"{S.IMAGES}/{cam}"]
                enc[cam] = S._s(d.attrs.get("encoding", "raw"))
                if enc[cam] == "jpeg":
                    shapes[cam] = (int(d.attrs["height"]), int(d.attrs["width"]))
                else:
                    shapes[cam] = (int(d.shape[1]), int(d.shape[2]))
                img_ts[cam] = f[f"{S.IMAGE_TIMESTAMPS}/{cam}"][()]
        except (KeyError, ValueError, TypeError) as e:
            raise S.CorruptEpisodeError(f"{path}: wrong schema ({e!r})") from e
        except (OSError, RuntimeError, MemoryError) as e:
            raise S.CorruptEpisodeError(f"{path}: data unreadable, file truncated or corrupt ({e})") from e
    n = len(ts)
    lengths = {"qpos": len(qpos), "action": len(action), "action_raw": len(action_raw)}
    if qvel is not None:
        lengths["qvel"] = len(qvel)
    lengths.update({f"timestamps/{c}": len(v) for c, v in img_ts.items()})
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise S.CorruptEpisodeError(f"{path}: dataset lengths disagree with /timestamp ({n}): {bad}")
    d = qpos.shape[1] if qpos.ndim == 2 else -1
    if d != len(meta.joint_names) or action.shape[1:] != (d,):
        raise S.CorruptEpisodeError(f"{path}: qpos/action width does not match {len(meta.joint_names)} joint_names")
    return Episode(path=path, meta=meta, qpos=qpos, qvel=qvel, action=action, action_raw=action_raw,
                   timestamp=ts, success=int(attrs.get("success", -1)), cameras=cams, num_steps=n,
                   image_timestamps=img_ts, recovered=bool(attrs.get("recovered", False)), attrs=attrs,
                   encodings=enc, image_shapes=shapes)


def read_summary(path: str | os.PathLike) -> dict:
    """Fast index read: attrs, /timestamp and camera timestamps only (no joint arrays, no images).
    Checks the schema version and dataset lengths; raises CorruptEpisodeError like read_episode."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise S.CorruptEpisodeError(f"{path}: not a readable HDF5 episode ({e})") from e
    with f:
        try:
            a = f.attrs
            version = a.get("schema_version")
            if version is None or S._s(version).split(".")[0] != S.SCHEMA_VERSION.split(".")[0]:
                raise S.CorruptEpisodeError(f"{path}: not a teleop episode of schema {S.SCHEMA_VERSION}")
            out = {k: (S._s(a[k]) if k in a else "") for k in ("instruction", "mode", "start_time")}
            out["fps"] = float(a["fps"])
            out["success"] = int(a.get("success", -1))
            out["recovered"] = bool(a.get("recovered", False))
            _check_sizes(f, path)
            ts = f[S.TIMESTAMP][()]
            img_ts = {c: d[()] for c, d in f[S.IMAGE_TIMESTAMPS].items()} if S.IMAGE_TIMESTAMPS in f else {}
            lens = {k: f[k].shape[0] for k in (S.QPOS, S.ACTION)}
            shapes = {}
            for c in (f[S.IMAGES].keys() if S.IMAGES in f else []):
                d = f[f"{S.IMAGES}/{c}"]
                shapes[c] = [int(d.attrs["height"]), int(d.attrs["width"])]
            cams_missing = sorted(set(img_ts) ^ set(shapes))
            if cams_missing:
                raise KeyError(f"camera(s) {cams_missing} lack images or timestamps")
            lens.update({f"timestamps/{c}": len(v) for c, v in img_ts.items()})
        except (KeyError, ValueError, TypeError) as e:
            raise S.CorruptEpisodeError(f"{path}: wrong schema ({e!r})") from e
        except (OSError, RuntimeError, MemoryError) as e:
            raise S.CorruptEpisodeError(f"{path}: data unreadable, file truncated or corrupt ({e})") from e
    bad = {k: v for k, v in lens.items() if v != len(ts)}
    if bad:
        raise S.CorruptEpisodeError(f"{path}: dataset lengths disagree with /timestamp ({len(ts)}): {bad}")
    out.update(timestamp=ts, image_timestamps=img_ts, num_steps=len(ts), cameras=shapes)
    return out


def _check_sizes(f: h5py.File, path: Path) -> None:
    """Refuse numeric datasets that claim more bytes than the file could hold (a damaged header would
    otherwise make h5py allocate terabytes). Uncompressed, so a real one is at most the file size."""
    limit = max(1 << 26, 2 * path.stat().st_size)
    for k in (S.QPOS, S.QVEL, S.ACTION, S.ACTION_RAW, S.TIMESTAMP):
        if k in f:
            d = f[k]
            if not isinstance(d, h5py.Dataset):
                raise TypeError(f"/{k} is not a dataset")
            if d.size * d.dtype.itemsize > limit:
                raise ValueError(f"/{k} claims shape {d.shape}: more data than the file holds")
    if S.IMAGE_TIMESTAMPS in f:
        for c, d in f[S.IMAGE_TIMESTAMPS].items():
            if not isinstance(d, h5py.Dataset) or d.size * d.dtype.itemsize > limit:
                raise ValueError(f"/{S.IMAGE_TIMESTAMPS}/{c} is not a plausible timestamp dataset")


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def quick_check(path: str | os.PathLike) -> str | None:
    """Cheap integrity check without HDF5 (one small read): None if the file looks whole, else why not.

    Reads the superblock and compares its end-of-file address with the file's size, which catches a
    truncated copy, a file cut by a full disk or a torn download; a file that is not HDF5 at all is
    caught by the signature. (Deeper damage shows when the file is read: read_summary / read_episode.)"""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(96)
    except OSError as e:
        return f"cannot read the file ({e.strerror or e})"
    if len(head) < 8 or head[:8] != _HDF5_SIGNATURE:
        return f"not an HDF5 file ({size} bytes)"
    try:
        version = head[8]
        if version in (0, 1):
            so = head[13]
            off = 24 + (4 if version == 1 else 0)        # base address follows the fixed fields
            fmt = {4: "<I", 8: "<Q"}[so]
            base = struct.unpack_from(fmt, head, off)[0]
            eof = struct.unpack_from(fmt, head, off + 2 * so)[0]
        elif version in (2, 3):
            so = head[9]
            fmt = {4: "<I", 8: "<Q"}[so]
            base = struct.unpack_from(fmt, head, 12)[0]
            eof = struct.unpack_from(fmt, head, 12 + 2 * so)[0]
        else:
            return f"unknown HDF5 superblock version {version}"
    except (KeyError, struct.error, IndexError):
        return "HDF5 superblock is damaged"
    if base + eof > size:
        return f"truncated: {size} bytes on disk, the file says {base + eof}"
    return None
