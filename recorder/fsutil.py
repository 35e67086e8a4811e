"""Durability helpers shared by the writer, the store and the exporters (one place for fsync rules)."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(p) -> None:
    """fsync a file or a folder (a folder: makes renames inside it durable); best effort, never raises."""
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(d: Path) -> None:
    """Make renames in folder d durable."""
    fsync_path(d)


def fsync_tree(root: Path) -> None:
    """Every file and folder below root on disk (before the tree is renamed into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)
