"""Shared helpers for exporters: which episodes to export, progress reporting, and the staging folder
that makes an export appear complete or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from .fsutil import fsync_dir, fsync_tree
from .schema import RecorderError
from .store import EpisodeInfo, EpisodeStore

Progress = Callable[[int, int], None] | None


def open_store(store_or_root: EpisodeStore | str | os.PathLike) -> EpisodeStore:
    if isinstance(store_or_root, EpisodeStore):
        return store_or_root
    return EpisodeStore.open(Path(store_or_root))


def select(store: EpisodeStore, ids: list[int] | None, skip_failed: bool) -> list[EpisodeInfo]:
    """Episodes to export, in id order. skip_failed drops episodes labelled success=0
    (unknown -1 and success 1 are kept)."""
    eps = store.episodes()
    if ids is not None:
        want = set(int(i) for i in ids)
        missing = want - {e.id for e in eps}
        if missing:
            raise RecorderError(f"episodes {sorted(missing)} are not in store {store.root}")
        eps = [e for e in eps if e.id in want]
    broken = [e for e in eps if e.broken]
    if broken:
        raise RecorderError(f"episode(s) {[e.id for e in broken]} of {store.root} are broken "
                            f"({broken[0].file}: {broken[0].broken}); delete them (`teleop datasets delete`) "
                            f"or pass their ids out of the selection, then export again")
    if skip_failed:
        eps = [e for e in eps if e.success != 0]
    eps = [e for e in eps if e.num_steps > 0]
    if not eps:
        raise RecorderError(f"nothing to export from {store.root}: no (successful/unlabelled) non-empty episodes")
    return eps


def report(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite or not out_dir.is_dir():
            raise RecorderError(f"export folder {out_dir} is not empty; choose another or pass overwrite=True")


@contextlib.contextmanager
def staged_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside out_dir to write the export into; on success it is renamed
    to out_dir (one rename: the export appears complete), on any error (or Ctrl-C) it is removed
    and out_dir is left as it was. With overwrite, an old export is replaced only after the new one
    is complete."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    tmp = out_dir.with_name(f".{out_dir.name}.exporting-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise RecorderError(f"cannot create export folder {out_dir}: {e.strerror or e}") from e
    try:
        yield tmp
        fsync_tree(tmp)
        if out_dir.exists():
            os.replace(out_dir, old) if any(out_dir.iterdir()) else out_dir.rmdir()
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)          # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
