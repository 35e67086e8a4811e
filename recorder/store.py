"""EpisodeStore: a folder of episode files plus a rebuildable JSON index.

Layout:
    <root>/store.json          robot, fps, joint_names, cameras (fixed for the dataset)
    <root>/index.json          cache of per-episode summaries (atomic temp+rename; rebuilt if bad)
    <root>/episodes/episode_000001.h5 ...
    <root>/.trash/             deleted episodes (undelete moves them back)
    <root>/.backup/            undo records of edits (NNNNNN-<op>.json + the files they replaced)
    <root>/.lock               flock()ed by every change: the GUI, a CLI and the control process
                               can edit the same store; each re-reads the index under the lock
The HDF5 files are the truth; the index only makes listing 1,000 episodes instant. Opening
compares each file's size and mtime with the index and checks its HDF5 superblock (one small
read): an episode that changed or broke since it was indexed is re-read, and shown as broken
(EpisodeInfo.broken) if it no longer reads. Files not indexed or changed since are read first in a
child process with a time bound (recorder.h5check): a damaged file that makes the HDF5 library loop
is listed broken instead of hanging the program. Every change writes the index atomically (temp file,
fsync, rename, fsync of the folder); edits never modify an episode in place except the two
scalar attributes success / instruction, and each edit can be undone (undo()).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from . import schema as S
from .fsutil import fsync_dir
from .h5check import iter_readable
from .reader import quick_check, read_episode, read_summary
from .recover import pending, recover_episode
from .validate import cadence_from, cadence_summary

log = logging.getLogger(__name__)

STORE_FILE = "store.json"
INDEX_FILE = "index.json"
EPISODES_DIR = "episodes"
TRASH_DIR = ".trash"
BACKUP_DIR = ".backup"
LOCK_FILE = ".lock"
INDEX_VERSION = 1
UNDO_KEEP = 200          # undo records kept per store
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
    size: int = 0
    cameras: dict = field(default_factory=dict)      # name -> [height, width]
    broken: str = ""             # why the file no longer reads ("" = fine)

    @classmethod
    def from_dict(cls, d: dict) -> "EpisodeInfo":
        if not isinstance(d, dict):
            raise TypeError(f"index entry is a {type(d).__name__}, not an object")
        info = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        # the index is outside input: refuse entries whose types would break listing later
        if not isinstance(info.id, int) or isinstance(info.id, bool) or info.id < 0:
            raise TypeError(f"bad episode id {info.id!r}")
        if not isinstance(info.file, str) or episode_id(Path(info.file)) != info.id \
                or Path(info.file).parent.name not in (EPISODES_DIR, TRASH_DIR) or ".." in info.file:
            raise ValueError(f"bad file {info.file!r} for episode {info.id}")
        for k, typ in (("instruction", str), ("num_steps", int), ("success", int), ("mode", str),
                       ("duration", (int, float)), ("cadence", dict), ("start_time", str),
                       ("recovered", bool), ("mtime", (int, float)), ("size", int), ("cameras", dict),
                       ("broken", str)):
            if not isinstance(getattr(info, k), typ):
                raise TypeError(f"episode {info.id}: {k} is {getattr(info, k)!r}")
        return info


def episode_id(path: Path) -> int | None:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _cams_text(c: dict) -> str:
    return ", ".join(f"{k} {v[1]}x{v[0]}" if v else k for k, v in sorted(c.items())) or "no cameras"


def cameras_differ(mine: dict, theirs: dict) -> bool:
    """Camera sets (name -> [h, w] or None) that cannot share a dataset: other names, or other sizes
    where both sides know the size."""
    if set(mine) != set(theirs):
        return True
    return any(mine[k] and theirs[k] and list(mine[k]) != list(theirs[k]) for k in mine)


class EpisodeStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.episodes_dir = self.root / EPISODES_DIR
        self.trash_dir = self.root / TRASH_DIR
        self.backup_dir = self.root / BACKUP_DIR
        self._lock = threading.RLock()
        self._flock_fd = -1
        self._flock_depth = 0
        self._index_stamp: tuple | None = None
        self.config: dict = {}
        self._index: dict[int, EpisodeInfo] = {}
        self._trash: dict[int, EpisodeInfo] = {}
        self.last_recovered: list[int] = []

    # ------------------------------------------------------------------ cross-process lock
    @contextlib.contextmanager
    def locked(self, reload: bool = False):
        """Hold the store's lock (threads of this process and other processes); on first entry the
        index is re-read if another process changed it. Every change to the store runs inside."""
        with self._lock:
            if self._flock_depth == 0:
                self._acquire_flock()
            self._flock_depth += 1
            try:
                if self._flock_depth == 1 and (reload or self._stamp() != self._index_stamp):
                    self._load_index()
                yield self
            finally:
                self._flock_depth -= 1
                if self._flock_depth == 0:
                    self._release_flock()

    def _acquire_flock(self) -> None:
        try:
            import fcntl
        except ImportError:      # not POSIX: threads only
            return
        try:
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (30, 13):   # EROFS / EACCES: read-only store, nothing can change it anyway
                return
            raise S.RecorderError(f"cannot lock episode store {self.root}: {e.strerror or e}") from e
        deadline = time.monotonic() + 30.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise S.RecorderError(f"episode store {self.root} is locked by another program for "
                                          f"more than 30 s; try again when it has finished") from None
                time.sleep(0.02)
        self._flock_fd = fd

    def _release_flock(self) -> None:
        if self._flock_fd >= 0:
            os.close(self._flock_fd)      # closing drops the flock
            self._flock_fd = -1

    def _stamp(self) -> tuple | None:
        try:
            st = os.stat(self.root / INDEX_FILE)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def refresh(self) -> None:
        """Pick up changes made by another process (and files that changed or broke)."""
        with self.locked():
            self._sync_with_files()

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, root: str | os.PathLike, robot: str, fps: float, joint_names: list[str],
               cameras: dict[str, tuple[int, int]] | list[str]) -> "EpisodeStore":
        """New store (or reopen an existing one after checking it is compatible)."""
        root = Path(root)
        cams = cameras if isinstance(cameras, dict) else {c: None for c in cameras}
        if (root / STORE_FILE).exists():
            st = cls.open(root)
            st.resume_check(robot, fps, joint_names, cams)
            return st
        try:
            (root / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
            (root / TRASH_DIR).mkdir(exist_ok=True)
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
        with st.locked():
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
        if not isinstance(cfg, dict) or not isinstance(cfg.get("joint_names"), list) \
                or not isinstance(cfg.get("cameras", {}), dict):
            raise S.RecorderError(f"{root / STORE_FILE} is not a store description (robot, fps, joint_names, "
                                  f"cameras); restore it or recreate the store")
        try:
            float(cfg.get("fps"))
        except (TypeError, ValueError):
            raise S.RecorderError(f"{root / STORE_FILE}: fps {cfg.get('fps')!r} is not a number") from None
        st = cls(root)
        st.config = cfg
        try:
            st.episodes_dir.mkdir(exist_ok=True)
            st.trash_dir.mkdir(exist_ok=True)
        except OSError:
            if not st.episodes_dir.is_dir():
                raise S.RecorderError(f"{root}: no episodes folder and cannot create one") from None
        with st.locked(reload=True):
            pass
        if recover:
            st.last_recovered = st.recover()
        return st

    @property
    def cameras(self) -> dict:
        """name -> [height, width] (or None where the size was not given) of this dataset."""
        return dict(self.config.get("cameras") or {})

    def resume_check(self, robot: str, fps: float, joint_names: list[str],
                     cameras: dict | list | None = None) -> None:
        """Raise RecorderError if recording robot/fps/joints/cameras into this store would mix datasets."""
        c = self.config
        diffs = []
        if cameras is not None:
            cams = cameras if isinstance(cameras, dict) else {k: None for k in cameras}
            cams = {k: (list(v) if v else None) for k, v in cams.items()}
            if cameras_differ(self.cameras, cams):
                diffs.append(f"cameras are {_cams_text(self.cameras)}, you are recording {_cams_text(cams)} "
                             f"(exports need the same cameras in every episode)")
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
            try:
                _atomic_write_json(self.root / INDEX_FILE, self._index_data())
            except OSError as e:
                # the files stay the truth: the next open re-syncs the index from them
                log.warning("cannot write the episode index of %s (%s)", self.root, e)
            self._index_stamp = self._stamp()

    def _load_index(self) -> None:
        try:
            data = parse_index(json.loads((self.root / INDEX_FILE).read_text()))
            self._index, self._trash = data
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            log.warning("episode index %s missing or corrupt (%s): rebuilding from the files", self.root, e)
            self.rebuild_index()
            return
        self._index_stamp = self._stamp()
        self._sync_with_files()

    def _sync_with_files(self) -> None:
        """Consistency pass (one directory scan, one stat and one 96-byte read per file): index files
        that appeared, drop vanished ones, re-read files whose size/mtime changed, mark broken ones.
        Never deletes or moves a file."""
        changed = False
        todo: list[tuple[dict, int, Path, EpisodeInfo | None]] = []     # files to (re-)read
        for folder, table in ((self.episodes_dir, self._index), (self.trash_dir, self._trash)):
            on_disk = {}
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        i = episode_id(Path(e.name))
                        if i is not None:
                            on_disk[i] = e
            except OSError as e:
                log.warning("cannot scan %s: %s", folder, e)
                continue
            for i in list(table):
                if i not in on_disk:
                    del table[i]
                    changed = True
            for i, e in on_disk.items():
                try:
                    st = e.stat()
                except OSError:
                    continue
                old = table.get(i)
                stale = old is None or abs(old.mtime - st.st_mtime) > 1e-6 or old.size != st.st_size
                if not stale and not old.broken:
                    why = quick_check(e.path)
                    if why:
                        table[i] = self._broken_info(Path(e.path), why, old)
                        changed = True
                    continue
                if stale:
                    todo.append((table, i, Path(e.path), old))
        if todo:
            for (table, i, _, _), info in zip(todo, self._read_infos([(p, old) for _, _, p, old in todo])):
                table[i] = info
            changed = True
        if changed:
            self._save_index()

    def rebuild_index(self) -> None:
        """Recreate index.json from the episode files (slow path: reads every file)."""
        with self._lock:
            self._index, self._trash = {}, {}
            for folder, table in ((self.episodes_dir, self._index), (self.trash_dir, self._trash)):
                files = [p for p in sorted(folder.glob("episode_*.h5")) if episode_id(p) is not None]
                for p, info in zip(files, self._read_infos([(p, None) for p in files])):
                    table[episode_id(p)] = info
            self._save_index()

    def _read_infos(self, files: list[tuple[Path, EpisodeInfo | None]]) -> list[EpisodeInfo]:
        """_info_for of files this program did not just write: they are read first in one child process
        with a time bound (recorder.h5check); one on which the HDF5 library loops is listed broken."""
        whole = {p for p, _ in files if quick_check(p) is None}       # the others are not read at all
        checked = iter_readable([p for p, _ in files if p in whole])
        out = []
        try:
            for p, old in files:
                why = next(checked)[1] if p in whole else ""
                out.append(self._broken_info(p, why, old) if why else self._info_for(p, old))
        finally:
            checked.close()
        return out

    def verified(self) -> Iterator[EpisodeInfo]:
        """Every episode in id order, each once its file was read again in a child process with a time
        bound (size and mtime not trusted: the deep check of `teleop datasets validate`; the child reads
        the next file while the caller works on this one). One on which the HDF5 library does not
        finish comes out broken, and is marked broken in the index."""
        eps = self.episodes()
        checked = iter_readable([self.root / i.file for i in eps if not i.broken])
        hung: dict[int, EpisodeInfo] = {}
        try:
            for info in eps:
                if not info.broken:
                    why = next(checked)[1]
                    if why:
                        info = hung[info.id] = self._broken_info(self.root / info.file, why, info)
                yield info
        finally:
            checked.close()
            if hung:
                with self.locked():
                    self._index.update({i: v for i, v in hung.items() if i in self._index})
                    self._save_index()

    def _broken_info(self, path: Path, why: str, old: EpisodeInfo | None) -> EpisodeInfo:
        log.warning("episode %s is broken: %s", path, why)
        try:
            st = path.stat()
            mtime, size = st.st_mtime, st.st_size
        except OSError:
            mtime, size = 0.0, 0
        return EpisodeInfo(id=episode_id(path), file=str(path.relative_to(self.root)),
                           instruction=old.instruction if old else "", num_steps=0,
                           success=old.success if old else -1, mode=old.mode if old else "",
                           duration=0.0, start_time=old.start_time if old else "", mtime=mtime, size=size,
                           broken=why)

    def _info_for(self, path: Path, old: EpisodeInfo | None = None) -> EpisodeInfo:
        """Summary of one file; a file that does not read gives a broken entry (never dropped)."""
        why = quick_check(path)
        if why:
            return self._broken_info(path, why, old)
        try:
            st = path.stat()
            s = read_summary(path)
        except S.CorruptEpisodeError as e:
            return self._broken_info(path, str(e).replace(str(path) + ": ", ""), old)
        except OSError as e:
            return self._broken_info(path, f"cannot read the file ({e.strerror or e})", old)
        ts = s["timestamp"]
        try:
            rep = cadence_from(ts, s["fps"], s["image_timestamps"])
            cad = cadence_summary(report=rep)
        except (ValueError, TypeError, ZeroDivisionError, FloatingPointError) as e:
            return self._broken_info(path, f"timestamps unusable ({e})", old)
        return EpisodeInfo(id=episode_id(path), file=str(path.relative_to(self.root)),
                           instruction=s["instruction"], num_steps=s["num_steps"], success=s["success"],
                           mode=s["mode"], duration=float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0,
                           cadence=cad, start_time=s["start_time"], recovered=s["recovered"],
                           mtime=st.st_mtime, size=st.st_size, cameras=s["cameras"])

    # ------------------------------------------------------------------ episodes
    def _next_id(self) -> int:
        used = set(self._index) | set(self._trash)
        for folder in (self.episodes_dir, self.trash_dir):
            for p in folder.iterdir():
                m = re.match(r"^\.?episode_(\d{6,})\.h5", p.name)
                if m:
                    used.add(int(m.group(1)))
        return max(used, default=0) + 1

    def new_episode_path(self) -> Path:
        """Path for the next episode (pass it to EpisodeWriter; call add() after finish())."""
        with self._lock:
            return self.episodes_dir / f"episode_{self._next_id():06d}.h5"

    def add(self, path: str | os.PathLike) -> EpisodeInfo:
        """Index a finished episode file (it must be inside <root>/episodes). Refuses (RecorderError,
        the file stays where it is) an episode of another robot, rate, joints or cameras."""
        path = Path(path)
        if episode_id(path) is None or path.parent.resolve() != self.episodes_dir.resolve():
            raise S.RecorderError(f"{path} is not an episode of store {self.root}; use new_episode_path()")
        ep = read_episode(path)
        try:
            self.resume_check(ep.meta.robot, ep.meta.fps, ep.meta.joint_names,
                              {c: list(ep.image_shapes[c]) for c in ep.cameras})
        finally:
            ep.close()
        with self.locked():
            info = self._info_for(path)
            self._index[info.id] = info
            self._save_index()
        return info

    def episodes(self) -> list[EpisodeInfo]:
        return sorted(self._index.values(), key=lambda i: i.id)

    def broken(self) -> list[EpisodeInfo]:
        return [i for i in self.episodes() if i.broken]

    def trash(self) -> list[EpisodeInfo]:
        return sorted(self._trash.values(), key=lambda i: i.id)

    def path(self, id: int) -> Path:
        return self.root / self._get(id).file

    def _get(self, id: int) -> EpisodeInfo:
        try:
            return self._index[int(id)]
        except (KeyError, ValueError, TypeError):
            raise S.RecorderError(f"no episode {id} in store {self.root}") from None

    def _check_ids(self, ids) -> list[int]:
        """Every id must exist (checked before anything is changed)."""
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise S.RecorderError(f"episode ids must be numbers, got {ids!r}") from None
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise S.RecorderError(f"no episode {', '.join(map(str, missing))} in store {self.root} "
                                  f"(it has {len(self._index)}: see `teleop datasets list`); nothing changed")
        if not ids:
            raise S.RecorderError("no episodes selected; nothing changed")
        return sorted(set(ids))

    def read(self, id: int):
        return read_episode(self.path(id))

    def _write_attr(self, info: EpisodeInfo, key: str, value: Any) -> None:
        """A scalar root attribute rewritten in place (one small write to an existing object header),
        then fsynced. The index follows under the same lock; an interrupted edit is healed on the next
        open (the file's mtime changed, so it is re-read)."""
        p = self.root / info.file
        if info.broken:
            raise S.RecorderError(f"episode {info.id} is broken ({info.broken}); cannot edit it")
        try:
            with h5py.File(p, "r+") as f:
                f.attrs[key] = value
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise S.RecorderError(f"cannot update {p}: {e}") from e
        new = self._info_for(p, info)
        self._index[info.id] = new

    def relabel(self, id: int, success: int) -> EpisodeInfo:
        return self.relabel_many([id], success)[0]

    def relabel_many(self, ids, success: int) -> list[EpisodeInfo]:
        if success not in (1, 0, -1):
            raise S.RecorderError(f"success must be 1, 0 or -1, got {success!r}")
        with self.locked():
            ids = self._check_ids(ids)
            self._push_undo("relabel", {"old": {str(i): self._index[i].success for i in ids}})
            try:
                for i in ids:
                    self._write_attr(self._index[i], "success", int(success))
            finally:
                self._save_index()
            return [self._index[i] for i in ids]

    def rename_instruction(self, id: int, text: str) -> EpisodeInfo:
        return self.set_instruction([id], text)[0]

    def set_instruction(self, ids, text: str) -> list[EpisodeInfo]:
        """Change the instruction of a selection of episodes (undo() puts the old ones back)."""
        text = str(text)
        with self.locked():
            ids = self._check_ids(ids)
            bad = [i for i in ids if self._index[i].broken]
            if bad:
                raise S.RecorderError(f"episode(s) {bad} are broken; deselect them; nothing changed")
            self._push_undo("set_instruction", {"old": {str(i): self._index[i].instruction for i in ids}})
            try:
                for i in ids:
                    self._write_attr(self._index[i], "instruction", text)
            finally:
                self._save_index()
            return [self._index[i] for i in ids]

    def delete(self, id: int) -> None:
        """Move to .trash (undo with undelete or undo())."""
        self.delete_many([id])

    def delete_many(self, ids) -> None:
        with self.locked():
            ids = self._check_ids(ids)
            self._push_undo("delete", {"ids": ids})
            try:
                for i in ids:
                    self._move(self._index, self._trash, i, self.trash_dir)
            finally:
                self._save_index()

    def undelete(self, id: int) -> EpisodeInfo:
        with self.locked():
            if int(id) not in self._trash:
                raise S.RecorderError(f"episode {id} is not in the trash of {self.root}")
            self._move(self._trash, self._index, int(id), self.episodes_dir)
            self._save_index()
            return self._index[int(id)]

    def _move(self, src_t: dict, dst_t: dict, id: int, folder: Path) -> None:
        info = src_t[id]
        src = self.root / info.file
        dst = folder / src.name
        if dst.exists():
            raise S.RecorderError(f"cannot move episode {id}: {dst} already exists")
        os.replace(src, dst)
        fsync_dir(folder)
        info.file = str(dst.relative_to(self.root))
        dst_t[id] = src_t.pop(id)

    def trim(self, id: int, start: int = 0, end: int | None = None) -> EpisodeInfo:
        """Keep steps [start, end) of an episode (end=None: to the last; negative end counts from the
        end). The new file replaces the old one atomically; the old one is kept in .backup (undo())."""
        with self.locked():
            info = self._get(id)
            if info.broken:
                raise S.RecorderError(f"episode {id} is broken ({info.broken}); cannot trim it")
            n = info.num_steps
            e = n if end is None else (int(end) + n if int(end) < 0 else int(end))
            start = int(start)
            if not 0 <= start < e <= n:
                raise S.RecorderError(f"cannot trim episode {id} to steps [{start}, {end}): it has {n} steps "
                                      f"(0 <= start < end <= {n}); nothing changed")
            if (start, e) == (0, n):
                return info
            src = self.root / info.file
            tmp = src.with_name("." + src.name + ".edit-tmp")
            try:
                _write_slice(src, tmp, start, e)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            seq, bdir = self._push_undo("trim", {"id": info.id, "steps": [start, e], "of": n}, with_dir=True)
            _link_or_copy(src, bdir / src.name)
            os.replace(tmp, src)
            fsync_dir(src.parent)
            self._index[info.id] = self._info_for(src, info)
            self._save_index()
            return self._index[info.id]

    # ------------------------------------------------------------------ undo
    def _push_undo(self, op: str, data: dict, with_dir: bool = False) -> tuple[int, Path]:
        self.backup_dir.mkdir(exist_ok=True)
        recs = sorted(self.backup_dir.glob("*.json"), key=_undo_seq)
        for old in recs[:max(0, len(recs) - UNDO_KEEP + 1)]:     # bounded history: oldest go first
            old.unlink(missing_ok=True)
            shutil.rmtree(old.with_suffix(""), ignore_errors=True)
        seq = 1 + max((_undo_seq(p) for p in recs), default=0)
        bdir = self.backup_dir / f"{seq:06d}-{op}"
        if with_dir:
            bdir.mkdir()
        rec = {"op": op, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **data}
        _atomic_write_json(self.backup_dir / f"{seq:06d}-{op}.json", rec)
        return seq, bdir

    def undo_history(self) -> list[dict]:
        out = []
        for p in sorted(self.backup_dir.glob("*.json"), key=_undo_seq) if self.backup_dir.exists() else []:
            try:
                out.append({"seq": _undo_seq(p), **json.loads(p.read_text())})
            except (OSError, ValueError):
                continue
        return out

    def undo(self) -> str:
        """Undo the last edit (relabel, set_instruction, delete, trim). Returns what was undone."""
        with self.locked():
            recs = sorted(self.backup_dir.glob("*.json"), key=_undo_seq) if self.backup_dir.exists() else []
            if not recs:
                raise S.RecorderError(f"nothing to undo in {self.root}")
            p = recs[-1]
            try:
                rec = json.loads(p.read_text())
                op = rec["op"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise S.RecorderError(f"undo record {p} is unreadable ({e}); remove it to undo older edits") from e
            bdir = p.with_suffix("")
            if op in ("relabel", "set_instruction"):
                key = "success" if op == "relabel" else "instruction"
                for i, v in rec["old"].items():
                    if int(i) in self._index:
                        self._write_attr(self._index[int(i)], key, int(v) if op == "relabel" else str(v))
                what = f"{op} of episode(s) {sorted(int(i) for i in rec['old'])}"
            elif op == "delete":
                back = [i for i in rec["ids"] if int(i) in self._trash]
                for i in back:
                    self._move(self._trash, self._index, int(i), self.episodes_dir)
                what = f"delete of episode(s) {back}"
            elif op == "trim":
                i = int(rec["id"])
                name = f"episode_{i:06d}.h5"
                b = bdir / name
                if b.exists():
                    os.replace(b, self.episodes_dir / name)
                    fsync_dir(self.episodes_dir)
                    self._index[i] = self._info_for(self.episodes_dir / name, self._index.get(i))
                what = f"trim of episode {i} (back to {rec.get('of')} steps)"
            else:
                raise S.RecorderError(f"undo record {p.name}: unknown operation {op!r}")
            self._save_index()
            p.unlink()
            shutil.rmtree(bdir, ignore_errors=True)
            return what

    def recover(self) -> list[int]:
        """Rebuild interrupted recordings (see recorder.recover); returns their ids (now indexed)."""
        out = []
        for p in self.episodes_dir.glob(".*.edit-tmp"):   # an edit killed before its atomic rename
            p.unlink(missing_ok=True)
        for final in pending(self.episodes_dir):
            try:
                p = recover_episode(final)
            except Exception as e:  # noqa: BLE001 - one bad leftover must not block opening the store
                log.error("could not recover %s: %s", final, e)
                continue
            if p is not None:
                with self.locked():
                    info = self._info_for(p)
                    self._index[info.id] = info
                out.append(info.id)
        if out:
            with self.locked():
                self._save_index()
        return out

    def stats(self) -> dict:
        """Per-dimension mean/std/min/max of qpos and action over all readable (non-deleted) episodes."""
        acc: dict[str, list[np.ndarray]] = {"qpos": [], "action": []}
        for info in self.episodes():
            if info.broken:
                continue
            ep = read_episode(self.root / info.file)
            acc["qpos"].append(ep.qpos)
            acc["action"].append(ep.action)
            ep.close()
        out: dict = {"num_episodes": len(acc["qpos"]), "joint_names": self.config.get("joint_names", []),
                     "broken_episodes": [i.id for i in self.broken()]}
        for k, arrs in acc.items():
            if not arrs:
                out[k] = None
                continue
            a = np.concatenate(arrs).astype(np.float64)
            out[k] = {"mean": a.mean(0).tolist(), "std": a.std(0).tolist(), "min": a.min(0).tolist(),
                      "max": a.max(0).tolist(), "count": int(len(a))}
        out["num_steps"] = out["qpos"]["count"] if out["qpos"] else 0
        return out


def parse_index(data: Any) -> tuple[dict[int, EpisodeInfo], dict[int, EpisodeInfo]]:
    """index.json contents -> (episodes, trash). Raises ValueError/TypeError/KeyError if malformed."""
    if not isinstance(data, dict):
        raise TypeError("index is not a JSON object")
    if data.get("version") != INDEX_VERSION:
        raise ValueError(f"index version {data.get('version')!r}")
    out = []
    for key in ("episodes", "trash"):
        rows = data.get(key, []) if key == "trash" else data[key]
        if not isinstance(rows, list):
            raise TypeError(f"index {key} is not a list")
        table = {}
        for d in rows:
            info = EpisodeInfo.from_dict(d)
            if info.id in table:
                raise ValueError(f"episode {info.id} listed twice")
            table[info.id] = info
        out.append(table)
    return out[0], out[1]


def _undo_seq(p: Path) -> int:
    m = re.match(r"^(\d+)-", p.name)
    return int(m.group(1)) if m else 0


def _link_or_copy(src: Path, dst: Path) -> None:
    """Keep src's current content at dst (a hard link: instant; src is then replaced, not modified)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_slice(src: Path, dst: Path, start: int, end: int) -> None:
    """Write steps [start, end) of episode src as a new episode file dst (fsynced)."""
    from .h5sink import H5Sink
    from .journal import Step
    ep = read_episode(src)
    try:
        attrs = {k: v for k, v in ep.attrs.items() if k not in ("num_steps", "flushed_steps", "success")}
        attrs["trimmed"] = json.dumps({"start": start, "end": end, "of": ep.num_steps})
        jpeg = any(e == "jpeg" for e in ep.encodings.values())
        cams = {c: tuple(ep.image_shapes[c]) for c in ep.cameras}
        sink = H5Sink(dst, attrs, cams, ep.qpos.shape[1], jpeg)
        try:
            for a in range(start, end, 64):
                b = min(end, a + 64)
                sink.append([Step(float(ep.timestamp[i]), ep.qpos[i], ep.action[i], ep.action_raw[i],
                                  None if ep.qvel is None else ep.qvel[i],
                                  {c: ep.raw_frame(c, i) for c in ep.cameras},
                                  {c: float(ep.image_timestamps[c][i]) for c in ep.cameras})
                             for i in range(a, b)])
            sink.close(success=ep.success)
        except BaseException:
            with contextlib.suppress(Exception):
                sink.f.close()
            raise
    finally:
        ep.close()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
