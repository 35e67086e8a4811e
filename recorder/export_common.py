"""Shared helpers for exporters: which episodes to export, progress reporting."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

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
    if skip_failed:
        eps = [e for e in eps if e.success != 0]
    eps = [e for e in eps if e.num_steps > 0]
    if not eps:
        raise RecorderError(f"nothing to export from {store.root}: no (successful/unlabelled) non-empty episodes")
    return eps


def report(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise RecorderError(f"export folder {out_dir} is not empty; choose another or pass overwrite=True")
        import shutil
        shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecorderError(f"cannot create export folder {out_dir}: {e.strerror or e}") from e
