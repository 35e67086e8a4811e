"""Export an episode store as input for the RLDS dataset builder used by OpenVLA.

The public template (kpertsch/rlds_dataset_builder, example_dataset) reads
data/train/episode_*.npy and data/val/episode_*.npy, each an np.save'd list of step dicts:

    {"image": HxWx3 uint8, "wrist_image": HxWx3 uint8, "state": float32 (D,),
     "action": float32 (D,), "language_instruction": str}

This writes exactly that (train/ and val/ folders) plus dataset_info.json with the shapes to put
into the builder's _info(). Remaining steps (tfds build) are in docs/recorder_schema.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from .export_common import Progress, open_store, report, select, staged_dir
from .reader import read_episode
from .schema import RecorderError
from .store import EpisodeStore


def _pick_cameras(cams: list[str], image_cam: str | None, wrist_cam: str | None) -> tuple[str, str | None]:
    if not cams:
        raise RecorderError("RLDS export needs at least one camera in the episodes")
    if image_cam is None:
        others = [c for c in cams if "wrist" not in c.lower()]
        image_cam = others[0] if others else cams[0]
    if wrist_cam is None:
        wrists = [c for c in cams if "wrist" in c.lower() and c != image_cam]
        wrist_cam = wrists[0] if wrists else None
    for c in (image_cam, wrist_cam):
        if c is not None and c not in cams:
            raise RecorderError(f"camera {c!r} not in the episodes' cameras {cams}")
    return image_cam, wrist_cam


def export_rlds(store_or_root: EpisodeStore | str | os.PathLike, out_dir: str | os.PathLike,
                progress: Progress = None, *, ids: list[int] | None = None, skip_failed: bool = True,
                val_fraction: float = 0.1, seed: int = 0, image_size: tuple[int, int] | None = None,
                image_cam: str | None = None, wrist_cam: str | None = None, overwrite: bool = False) -> Path:
    """Write <out_dir>/train/episode_<n>.npy and <out_dir>/val/episode_<n>.npy.

    image_size=(height, width) resizes frames (OpenVLA commonly uses 224x224 or 256x256).
    Without a wrist camera, wrist_image is a black frame of the same size (the template expects
    the key; drop it from the builder if unused). Split is a seeded random permutation, at least
    one val episode when there are >= 2 episodes (none for val_fraction=0)."""
    store = open_store(store_or_root)
    eps = select(store, ids, skip_failed)
    final = Path(out_dir)
    with staged_dir(final, overwrite) as out:
        _export(store, eps, out, progress, val_fraction, seed, image_size, image_cam, wrist_cam)
    return final


def _export(store, eps, out: Path, progress, val_fraction, seed, image_size, image_cam, wrist_cam) -> None:
    n_val = 0 if val_fraction <= 0 or len(eps) < 2 else max(1, int(round(len(eps) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(eps))
    val = {int(i) for i in order[:n_val]}
    (out / "train").mkdir()
    (out / "val").mkdir()
    total = len(eps)
    report(progress, 0, total)
    info: dict = {}
    split_files: dict[str, list[str]] = {"train": [], "val": []}
    for k, e in enumerate(eps):
        ep = read_episode(store.root / e.file)
        try:
            icam, wcam = _pick_cameras(ep.cameras, image_cam, wrist_cam)
            steps = []
            for i in range(ep.num_steps):
                img = ep.image(icam, i)
                if image_size is not None:
                    img = cv2.resize(img, (image_size[1], image_size[0]), interpolation=cv2.INTER_AREA)
                if wcam is not None:
                    wimg = ep.image(wcam, i)
                    if image_size is not None:
                        wimg = cv2.resize(wimg, (image_size[1], image_size[0]), interpolation=cv2.INTER_AREA)
                else:
                    wimg = np.zeros_like(img)
                steps.append({"image": img, "wrist_image": wimg,
                              "state": ep.qpos[i].astype(np.float32),
                              "action": ep.action[i].astype(np.float32),
                              "language_instruction": ep.meta.instruction})
            split = "val" if k in val else "train"
            name = f"episode_{e.id}.npy"
            arr = np.empty(len(steps), dtype=object)
            arr[:] = steps
            np.save(out / split / name, arr, allow_pickle=True)
            split_files[split].append(name)
            if not info:
                info = {"image": {"camera": icam, "shape": list(steps[0]["image"].shape)},
                        "wrist_image": {"camera": wcam, "shape": list(steps[0]["wrist_image"].shape),
                                        "black_placeholder": wcam is None},
                        "state": {"shape": [int(ep.qpos.shape[1])], "names": ep.meta.joint_names},
                        "action": {"shape": [int(ep.action.shape[1])], "names": ep.meta.joint_names,
                                   "meaning": "absolute joint targets actually sent (rad; gripper last)"},
                        "fps": ep.meta.fps, "robot": ep.meta.robot}
        finally:
            ep.close()
        report(progress, k + 1, total)
    info["splits"] = {s: sorted(v) for s, v in split_files.items()}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
