"""Dataset-level edits that make new datasets: merge two stores, split off a validation set.

Both leave their sources untouched and build the result in a temporary folder that is renamed into
place when complete (recorder.export_common.staged_dir): the new dataset appears whole or not at all.
Per-episode edits (trim, relabel, instruction, delete, undo) are EpisodeStore methods.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .export_common import open_store, staged_dir
from .schema import RecorderError
from .store import EPISODES_DIR, STORE_FILE, EpisodeStore, _atomic_write_json, cameras_differ


def _same_setup(a: EpisodeStore, b: EpisodeStore) -> None:
    ca, cb = a.config, b.config
    diffs = []
    if ca.get("robot") != cb.get("robot"):
        diffs.append(f"robot {ca.get('robot')!r} vs {cb.get('robot')!r}")
    if abs(float(ca.get("fps", 0)) - float(cb.get("fps", 0))) > 1e-9:
        diffs.append(f"fps {ca.get('fps')} vs {cb.get('fps')}")
    if list(ca.get("joint_names", [])) != list(cb.get("joint_names", [])):
        diffs.append(f"joints {ca.get('joint_names')} vs {cb.get('joint_names')}")
    if cameras_differ(a.cameras, b.cameras):
        diffs.append(f"cameras {a.cameras} vs {b.cameras}")
    if diffs:
        raise RecorderError(f"cannot merge {a.root} and {b.root}: they differ in " + "; ".join(diffs) +
                            ". Only datasets of the same robot, rate, joints and cameras can be merged.")


def _readable(st: EpisodeStore):
    bad = st.broken()
    if bad:
        raise RecorderError(f"{st.root}: episode(s) {[i.id for i in bad]} are broken ({bad[0].broken}); "
                            f"delete them first (`teleop datasets delete`); nothing was written")
    return st.episodes()


def _new_store_in(folder: Path, cfg: dict, files: list[tuple[Path, int]], note: dict) -> int:
    """Create a store in folder holding copies of files (src path, new id). Returns the count."""
    (folder / EPISODES_DIR).mkdir(parents=True)
    (folder / ".trash").mkdir()
    _atomic_write_json(folder / STORE_FILE, {**cfg, **note})
    for src, new_id in files:
        shutil.copy2(src, folder / EPISODES_DIR / f"episode_{new_id:06d}.h5")
    st = EpisodeStore(folder)
    st.config = json.loads((folder / STORE_FILE).read_text())
    st.rebuild_index()
    return len(files)


def merge_stores(sources: list, out_dir: str | os.PathLike) -> dict:
    """Copy the episodes of several stores (same robot, fps, joints, cameras) into a new store at
    out_dir, renumbered 1..N in source order; store.json records where each came from."""
    stores = [open_store(s) for s in sources]
    if len(stores) < 2:
        raise RecorderError("merge needs at least two datasets")
    for other in stores[1:]:
        _same_setup(stores[0], other)
    files, origin = [], {}
    for st in stores:
        for info in _readable(st):
            new_id = len(files) + 1
            files.append((st.root / info.file, new_id))
            origin[str(new_id)] = f"{st.root}:{info.id}"
    if not files:
        raise RecorderError("nothing to merge: the datasets have no episodes")
    out = Path(out_dir)
    with staged_dir(out, overwrite=False) as tmp:
        _new_store_in(tmp, stores[0].config, files, {"merged_from": origin})
    return {"episodes": len(files), "origin": origin}


def split_store(store_or_root, out_dir: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """Split off a validation set: out_dir/train and out_dir/val, two stores with copies of the
    episodes (ids kept). Seeded random choice; at least one validation episode when there are two
    or more. Returns {"train": [ids], "val": [ids]}."""
    st = open_store(store_or_root)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise RecorderError(f"validation fraction must be in [0, 1), got {val_fraction!r}")
    eps = _readable(st)
    if len(eps) < 2:
        raise RecorderError(f"{st.root} has {len(eps)} episode(s): a split needs at least two")
    n_val = 0 if val_fraction <= 0 else max(1, int(round(len(eps) * float(val_fraction))))
    order = np.random.default_rng(seed).permutation(len(eps))
    val = sorted(eps[int(i)].id for i in order[:n_val])
    train = sorted(e.id for e in eps if e.id not in set(val))
    out = Path(out_dir)
    with staged_dir(out, overwrite=False) as tmp:
        for name, ids in (("train", train), ("val", val)):
            _new_store_in(tmp / name, st.config, [(st.path(i), i) for i in ids],
                          {"split_from": str(st.root), "split": name, "split_seed": int(seed)})
    return {"train": train, "val": val}
