"""EpisodeStore: a folder of episode files plus a rebuildable JSON index.

Layout:
    <root>/store.json          robot, fps, joint_names, cameras (fixed for the dataset)
    <root>/index.json          cache of per-episode summaries (atomic temp+rename; rebuilt if bad)
    <root>/episodes/episode_000001.h5 ...
    <root>/.trash/             deleted episodes (undelete moves them back)
The HDF5 files are the truth; the index only makes listing 1,000 episodes instant.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import schema as S
from .reader import read_episode, read_summary
from .recover import pending, recover_episode
from .validate import cadence_from, cadence_summary

log = logging.getLogger(__name__)

STORE_FILE = "store.json"
INDEX_FILE = "index.json"
EPISODES_DIR = "episodes"
TRASH_DIR = ".trash"
INDEX_VERSION = 1
_NAME = re.compile(r"^episode_(\d{6,})\.h5$")


@dataclass
class EpisodeInfo:
    id: int
    file: str                    # relative to root
    instruction: str
    num_steps: int
    success: int
    mode: str
    duration: float
    cadence: dict = field(default_factory=dict)
    start_time: str = ""
    recovered: bool = False
    mtime: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "EpisodeInfo":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def episode_id(path: Path) -> int | None:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EpisodeStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.episodes_dir = self.root / EPISODES_DIR
        self.trash_dir = self.root / TRASH_DIR
        self._lock = threading.RLock()
        self.config: dict = {}
        self._index: dict[int, EpisodeInfo] = {}
        self._trash: dict[int, EpisodeInfo] = {}
        self.last_recovered: list[int] = []

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, root: str | os.PathLike, robot: str, fps: float, joint_names: list[str],
               cameras: dict[str, tuple[int, int]] | list[str]) -> "EpisodeStore":
        """New store (or reopen an existing one after checking it is compatible)."""
        root = Path(root)
        if (root / STORE_FILE).exists():
            st = cls.open(root)
            st.resume_check(robot, fps, joint_names)
            return st
        try:
            (root / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
            (root / TRASH_DIR).mkdir(exist_ok=True)
            cams = cameras if isinstance(cameras, dict) else {c: None for c in cameras}
            cfg = {"robot": robot, "fps": float(fps), "joint_names": list(joint_names),
                   "cameras": {k: (list(v) if v else None) for k, v in cams.items()},
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "schema_version": S.SCHEMA_VERSION}
            _atomic_write_json(root / STORE_FILE, cfg)
        except OSError as e:
            raise S.RecorderError(f"cannot create episode store in {root}: {e.strerror or e}. "
                                  f"Choose a writable data folder.") from e
        st = cls(root)
        st.config = cfg
        st._save_index()
        return st

    @classmethod
    def open(cls, root: str | os.PathLike, recover: bool = True) -> "EpisodeStore":
        """Open an existing store: load (or rebuild) the index, then recover interrupted episodes."""
        root = Path(root)
        try:
            cfg = json.loads((root / STORE_FILE).read_text())
        except FileNotFoundError:
            raise S.RecorderError(f"{root} is not an episode store (no {STORE_FILE}); "
                                  f"create one with EpisodeStore.create") from None
        except (OSError, ValueError) as e:
            raise S.RecorderError(f"{root / STORE_FILE} is unreadable ({e}); restore it or recreate the store") from e
        st = cls(root)
        st.config = cfg
        st.episodes_dir.mkdir(exist_ok=True)
        st.trash_dir.mkdir(exist_ok=True)
        st._load_index()
        if recover:
            st.last_recovered = st.recover()
        return st

    def resume_check(self, robot: str, fps: float, joint_names: list[str]) -> None:
        """Raise RecorderError if recording robot/fps/joints into this store would mix datasets."""
        c = self.config
        diffs = []
        if c.get("robot") != robot:
            diffs.append(f"robot is {c.get('robot')!r}, you are recording {robot!r}")
        if abs(float(c.get("fps", 0)) - float(fps)) > 1e-9:
            diffs.append(f"fps is {c.get('fps'):g}, you are recording at {float(fps):g}")
        if list(c.get("joint_names", [])) != list(joint_names):
            diffs.append(f"joint_names are {c.get('joint_names')}, you have {list(joint_names)}")
        if diffs:
            raise S.RecorderError(f"cannot add to store {self.root}: " + "; ".join(diffs) +
                                  ". Use a new data folder for this setup.")

    # ------------------------------------------------------------------ index
    def _index_data(self) -> dict:
        return {"version": INDEX_VERSION,
                "episodes": [asdict(i) for i in sorted(self._index.values(), key=lambda x: x.id)],
                "trash": [asdict(i) for i in sorted(self._trash.values(), key=lambda x: x.id)]}

    def _save_index(self) -> None:
        with self._lock:
            _atomic_write_json(self.root / INDEX_FILE, self._index_data())

    def _load_index(self) -> None:
        try:
            data = json.loads((self.root / INDEX_FILE).read_text())
            if data.get("version") != INDEX_VERSION:
                raise ValueError(f"index version {data.get('version')}")
            self._index = {int(d["id"]): EpisodeInfo.from_dict(d) for d in data["episodes"]}
            self._trash = {int(d["id"]): EpisodeInfo.from_dict(d) for d in data.get("trash", [])}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("episode index %s missing or corrupt (%s): rebuilding from the files", self.root, e)
            self.rebuild_index()
            return
        self._sync_with_files()

    def _sync_with_files(self) -> None:
        """Cheap consistency pass (one directory scan): index files that appeared, drop vanished ones."""
        changed = False
        for folder, table in ((self.episodes_dir, self._index), (self.trash_dir, self._trash)):
            on_disk = {}
            with os.scandir(folder) as it:
                for e in it:
                    i = episode_id(Path(e.name))
                    if i is not None:
                        on_disk[i] = e
            for i in list(table):
                if i not in on_disk:
                    del table[i]
                    changed = True
            for i, e in on_disk.items():
                if i not in table or abs(table[i].mtime - e.stat().st_mtime) > 1e-6:
                    info = self._info_for(Path(e.path))
                    if info is not None:
                        table[i] = info
                        changed = True
        if changed:
            self._save_index()

    def rebuild_index(self) -> None:
        """Recreate index.json from the episode files (slow path: reads every file)."""
        with self._lock:
            self._index, self._trash = {}, {}
            for folder, table in ((self.episodes_dir, self._index), (self.trash_dir, self._trash)):
                for p in sorted(folder.glob("episode_*.h5")):
                    info = self._info_for(p)
                    if info is not None:
                        table[info.id] = info
            self._save_index()

    def _info_for(self, path: Path) -> EpisodeInfo | None:
        try:
            s = read_summary(path)
        except S.CorruptEpisodeError as e:
            log.warning("skipping unreadable episode: %s", e)
            return None
        ts = s["timestamp"]
        rep = cadence_from(ts, s["fps"], s["image_timestamps"])
        return EpisodeInfo(id=episode_id(path), file=str(path.relative_to(self.root)),
                           instruction=s["instruction"], num_steps=s["num_steps"], success=s["success"],
                           mode=s["mode"], duration=float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0,
                           cadence=cadence_summary(report=rep), start_time=s["start_time"],
                           recovered=s["recovered"], mtime=path.stat().st_mtime)

    # ------------------------------------------------------------------ episodes
    def _next_id(self) -> int:
        used = set(self._index) | set(self._trash)
        for folder in (self.episodes_dir, self.trash_dir):
            for p in folder.iterdir():
                m = re.match(r"^episode_(\d{6,})\.h5", p.name)
                if m:
                    used.add(int(m.group(1)))
        return max(used, default=0) + 1

    def new_episode_path(self) -> Path:
        """Path for the next episode (pass it to EpisodeWriter; call add() after finish())."""
        with self._lock:
            return self.episodes_dir / f"episode_{self._next_id():06d}.h5"

    def add(self, path: str | os.PathLike) -> EpisodeInfo:
        """Index a finished episode file (it must be inside <root>/episodes)."""
        path = Path(path)
        if episode_id(path) is None or path.parent.resolve() != self.episodes_dir.resolve():
            raise S.RecorderError(f"{path} is not an episode of store {self.root}; use new_episode_path()")
        ep = read_episode(path)
        try:
            self.resume_check(ep.meta.robot, ep.meta.fps, ep.meta.joint_names)
        finally:
            ep.close()
        info = self._info_for(path)
        with self._lock:
            self._index[info.id] = info
            self._save_index()
        return info

    def episodes(self) -> list[EpisodeInfo]:
        return sorted(self._index.values(), key=lambda i: i.id)

    def trash(self) -> list[EpisodeInfo]:
        return sorted(self._trash.values(), key=lambda i: i.id)

    def path(self, id: int) -> Path:
        return self.root / self._get(id).file

    def _get(self, id: int) -> EpisodeInfo:
        try:
            return self._index[int(id)]
        except KeyError:
            raise S.RecorderError(f"no episode {id} in store {self.root}") from None

    def read(self, id: int):
        return read_episode(self.path(id))

    def _set_attr(self, id: int, key: str, value: Any) -> EpisodeInfo:
        info = self._get(id)
        p = self.root / info.file
        try:
            with h5py.File(p, "r+") as f:
                f.attrs[key] = value
        except OSError as e:
            raise S.RecorderError(f"cannot update {p}: {e}") from e
        with self._lock:
            new = self._info_for(p)
            self._index[info.id] = new
            self._save_index()
        return new

    def relabel(self, id: int, success: int) -> EpisodeInfo:
        if success not in (1, 0, -1):
            raise S.RecorderError(f"success must be 1, 0 or -1, got {success!r}")
        return self._set_attr(id, "success", int(success))

    def rename_instruction(self, id: int, text: str) -> EpisodeInfo:
        return self._set_attr(id, "instruction", str(text))

    def delete(self, id: int) -> None:
        """Move to .trash (undo with undelete)."""
        with self._lock:
            info = self._get(id)
            src = self.root / info.file
            dst = self.trash_dir / src.name
            os.replace(src, dst)
            info.file = str(dst.relative_to(self.root))
            self._trash[info.id] = self._index.pop(info.id)
            self._save_index()

    def undelete(self, id: int) -> EpisodeInfo:
        with self._lock:
            try:
                info = self._trash[int(id)]
            except KeyError:
                raise S.RecorderError(f"episode {id} is not in the trash of {self.root}") from None
            src = self.root / info.file
            dst = self.episodes_dir / src.name
            if dst.exists():
                raise S.RecorderError(f"cannot undelete {id}: {dst} already exists")
            os.replace(src, dst)
            info.file = str(dst.relative_to(self.root))
            self._index[info.id] = self._trash.pop(info.id)
            self._save_index()
            return info

    def recover(self) -> list[int]:
        """Rebuild interrupted recordings (see recorder.recover); returns their ids (now indexed)."""
        out = []
        for final in pending(self.episodes_dir):
            try:
                p = recover_episode(final)
            except Exception as e:  # noqa: BLE001 - one bad leftover must not block opening the store
                log.error("could not recover %s: %s", final, e)
                continue
            if p is not None:
                info = self._info_for(p)
                if info is not None:
                    with self._lock:
                        self._index[info.id] = info
                    out.append(info.id)
        if out:
            self._save_index()
        return out

    def stats(self) -> dict:
        """Per-dimension mean/std/min/max of qpos and action over all (non-deleted) episodes."""
        acc: dict[str, list[np.ndarray]] = {"qpos": [], "action": []}
        for info in self.episodes():
            ep = read_episode(self.root / info.file)
            acc["qpos"].append(ep.qpos)
            acc["action"].append(ep.action)
            ep.close()
        out: dict = {"num_episodes": len(acc["qpos"]), "joint_names": self.config.get("joint_names", [])}
        for k, arrs in acc.items():
            if not arrs:
                out[k] = None
                continue
            a = np.concatenate(arrs).astype(np.float64)
            out[k] = {"mean": a.mean(0).tolist(), "std": a.std(0).tolist(), "min": a.min(0).tolist(),
                      "max": a.max(0).tolist(), "count": int(len(a))}
        out["num_steps"] = out["qpos"]["count"] if out["qpos"] else 0
        return out
