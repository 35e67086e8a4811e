"""Recorded episodes -> in-memory training arrays (numpy only; torch stays in train.py).

Images are resized once to the model input size, so an epoch costs no decoding. Episodes are
split into train / held-out deterministically by episode file name, so offline validation
later uses exactly the episodes training never saw.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import PolicyError


@dataclass
class EpisodeArrays:
    file: str
    instruction: str
    qpos: np.ndarray                 # (T, D) float32
    action: np.ndarray               # (T, D) float32
    images: dict[str, np.ndarray]    # cam -> (T, H, W, 3) uint8 at model size
    success: int
    intervention: np.ndarray | None = None   # (T,) bool: the operator overrode the policy (recorded)
    autonomous: np.ndarray | None = None     # (T,) bool: the policy itself produced the action
    perturbed: np.ndarray | None = None      # (T,) bool: a deliberate mistake of a scripted demo (not imitated)
    sim: str | None = None                   # "physics" | "kinematic" for sim recordings (extra["sim"])
    extra: dict = field(default_factory=dict)   # the episode's free-form metadata (task, seed, randomized, ...)


@dataclass
class Dataset:
    episodes: list[EpisodeArrays]
    joint_names: list[str]
    fps: float
    cameras: list[str]
    image_size: tuple[int, int]
    skipped: list[str] = field(default_factory=list)
    robot: str = ""                  # the robot profile the episodes were recorded with (meta.robot)

    @property
    def sims(self) -> list[str]:
        """The sims the episodes were recorded on (empty for hardware or older recordings)."""
        return sorted({e.sim for e in self.episodes if isinstance(e.sim, str)})

    @property
    def num_steps(self) -> int:
        return sum(len(e.qpos) for e in self.episodes)

    @property
    def has_perturbations(self) -> bool:
        return any(e.perturbed is not None and e.perturbed.any() for e in self.episodes)

    def step_weights(self, intervention_weight: float | None) -> np.ndarray:
        """Sampling weight per step, episodes concatenated. A scripted demo's deliberate mistakes get 0.
        With intervention_weight (HG-DAgger): actions the policy produced on its own get 0, operator
        interventions `intervention_weight`; every other step 1."""
        out = []
        for e in self.episodes:
            w = np.ones(len(e.qpos))
            if intervention_weight is not None:
                if e.autonomous is not None:
                    w[e.autonomous] = 0.0
                if e.intervention is not None:
                    w[e.intervention] = float(intervention_weight)
            if e.perturbed is not None:
                w[e.perturbed] = 0.0
            out.append(w)
        return np.concatenate(out)

    def stats(self) -> dict:
        q = np.concatenate([e.qpos for e in self.episodes])
        a = np.concatenate([e.action for e in self.episodes])
        # floor the std so a joint that never moved does not blow up after normalisation
        return {"state": {"mean": q.mean(0).tolist(), "std": np.maximum(q.std(0), 1e-2).tolist()},
                "action": {"mean": a.mean(0).tolist(), "std": np.maximum(a.std(0), 1e-2).tolist()}}


def episode_files(root) -> list[Path]:
    """Episode files of a dataset: the store's index when there is one, else every *.h5 below root."""
    root = Path(root)
    if not root.exists():
        raise PolicyError(f"dataset folder not found: {root}")
    if root.is_file():
        return [root]
    if (root / "store.json").exists():
        from recorder.store import EpisodeStore
        st = EpisodeStore.open(root, recover=False)
        if st.broken():     # listed by the store (never dropped) but unreadable: train on the rest
            import logging
            logging.getLogger(__name__).warning(
                "skipping broken episode(s) %s of %s (see `teleop datasets list`)", [e.id for e in st.broken()], root)
        files = [root / e.file for e in st.episodes() if not e.broken]
    else:
        files = sorted(p for p in root.rglob("*.h5") if ".trash" not in p.parts)
    if not files:
        raise PolicyError(f"no episodes in {root}; record some first (teleop record / scripted)")
    return files


def is_held_out(path, val_fraction: float) -> bool:
    """Deterministic split by file name (stable when episodes are added later)."""
    if val_fraction <= 0:
        return False
    h = int(hashlib.sha1(Path(path).name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < val_fraction


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2
    h, w = size
    if images.shape[1:3] == (h, w):
        return np.ascontiguousarray(images)
    return np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images])


def load_dataset(root, cameras: list[str] | None = None, image_size: tuple[int, int] = (64, 64),
                 split: str = "train", val_fraction: float = 0.1, only_success: bool = True,
                 files: list[Path] | None = None, progress=None) -> Dataset:
    """Load episodes (split 'train', 'val' or 'all'). Failed episodes (success == 0) are skipped
    when only_success; unlabelled ones (-1) are kept. Corrupt files are skipped and listed."""
    from recorder.reader import read_episode
    from recorder.schema import PERTURBATION, CorruptEpisodeError
    files = files if files is not None else episode_files(root)
    if split == "train":
        files = [f for f in files if not is_held_out(f, val_fraction)]
    elif split == "val":
        files = [f for f in files if is_held_out(f, val_fraction)]
    eps, skipped = [], []
    joint_names, fps, robot = None, None, ""
    for i, f in enumerate(files):
        try:
            ep = read_episode(f)
        except CorruptEpisodeError as e:
            skipped.append(f"{f.name}: {e}")
            continue
        with ep:
            if only_success and ep.success == 0:
                skipped.append(f"{f.name}: failed episode")
                continue
            if ep.num_steps < 2:
                skipped.append(f"{f.name}: fewer than 2 steps")
                continue
            cams = cameras if cameras is not None else list(ep.cameras)
            missing = [c for c in cams if c not in ep.cameras]
            if missing:
                skipped.append(f"{f.name}: lacks camera(s) {missing}")
                continue
            if joint_names is None:
                joint_names, fps, cameras = list(ep.meta.joint_names), float(ep.meta.fps), list(cams)
                robot = str(ep.meta.robot or "")
            elif list(ep.meta.joint_names) != joint_names:
                raise PolicyError(f"{f}: joint names {ep.meta.joint_names} differ from the rest of the "
                                  f"dataset {joint_names}; train on one robot's data at a time")
            elif abs(float(ep.meta.fps) - fps) > 1e-6:
                raise PolicyError(f"{f}: recorded at {ep.meta.fps} Hz, the rest at {fps} Hz; "
                                  "train on one control rate at a time")
            imgs = {c: resize(ep.images(c), image_size) for c in cameras}
            src = ep.action_source
            eps.append(EpisodeArrays(f.name, ep.meta.instruction, ep.qpos.astype(np.float32),
                                     ep.action.astype(np.float32), imgs, ep.success, ep.intervention,
                                     None if src is None else np.array([x == "policy" for x in src]),
                                     None if src is None else np.array([x == PERTURBATION for x in src]),
                                     (ep.meta.extra or {}).get("sim"), dict(ep.meta.extra or {})))
        if progress:
            progress(i + 1, len(files))
    if not eps:
        why = "; ".join(skipped[:5])
        raise PolicyError(f"no usable episodes for split '{split}' in {root}" + (f" ({why})" if why else ""))
    return Dataset(eps, joint_names, fps, list(cameras), tuple(image_size), skipped, robot)
