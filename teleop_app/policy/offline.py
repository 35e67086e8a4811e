"""Offline validation: replay held-out recorded episodes through the policy and compare actions.

For every recorded step the policy sees the recorded images + joint state + instruction, and its
first predicted action is compared with the recorded one: per-joint MAE / RMSE (rad; gripper in its
own units) and gripper open/closed agreement. Cheap, needs no robot, and catches a broken model
(wrong stats, wrong camera, swapped joints) before anything moves. It does not measure closed-loop
success: small per-step errors can still compound - that is what the sim / hardware rollouts are for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import Policy, PolicyError


@dataclass
class OfflineResults:
    joint_names: list[str]
    mae: list[float]
    rmse: list[float]
    gripper_accuracy: float
    n_steps: int
    episodes: list[str]
    split: str = "val"
    plot: str | None = None
    per_episode: list[dict] = field(default_factory=list)

    @property
    def arm_mae(self) -> float:
        return float(np.mean(self.mae[:-1]))

    def table_rows(self) -> list[tuple[str, float, float]]:
        return list(zip(self.joint_names, self.mae, self.rmse))

    def summary(self) -> str:
        lines = [f"offline: {len(self.episodes)} {self.split} episode(s), {self.n_steps} steps",
                 f"  {'joint':<10} {'MAE':>8} {'RMSE':>8}"]
        lines += [f"  {n:<10} {m:8.4f} {r:8.4f}" for n, m, r in self.table_rows()]
        lines.append(f"  arm mean MAE {self.arm_mae:.4f} rad, gripper open/closed agreement "
                     f"{100 * self.gripper_accuracy:.1f}%")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> "OfflineResults":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def _files_for(policy: Policy, dataset_root, split: str) -> list[Path]:
    from .dataset import episode_files, is_held_out
    files = episode_files(dataset_root)
    if split == "all":
        return files
    info = getattr(policy, "train_info", {}) or {}
    held = set(info.get("held_out", []))
    if held:
        chosen = [f for f in files if f.name in held]
        if chosen:
            return chosen
    vf = float(info.get("val_fraction", 0.1))
    chosen = [f for f in files if is_held_out(f, vf)]
    if not chosen:
        raise PolicyError(f"no held-out episodes in {dataset_root}; use split='all' (note: the policy may "
                          "have been trained on them)")
    return chosen


def evaluate_offline(policy: Policy, dataset_root, split: str = "val", max_episodes: int | None = None,
                     plot_path=None, gripper_threshold: float | None = None,
                     progress=None) -> OfflineResults:
    """Run the policy on recorded episodes (split 'val' = held out from training, or 'all')."""
    from recorder.reader import read_episode
    files = _files_for(policy, dataset_root, split)
    if max_episodes:
        files = files[:max_episodes]
    meta = policy.meta
    preds, recs, per_ep, names = [], [], [], []
    plot_data = None
    for i, f in enumerate(files):
        with read_episode(f) as ep:
            if list(ep.meta.joint_names) != list(meta.joint_names):
                raise PolicyError(f"{f.name}: joints {ep.meta.joint_names} differ from the policy's "
                                  f"{meta.joint_names}")
            missing = [c for c in meta.cameras if c not in ep.cameras]
            if missing:
                raise PolicyError(f"{f.name} lacks camera(s) {missing} the policy needs")
            imgs = {c: ep.images(c) for c in meta.cameras}
            policy.reset()
            p = np.stack([np.asarray(policy.predict({"images": {c: imgs[c][t] for c in meta.cameras},
                                                     "qpos": ep.qpos[t], "instruction": ep.meta.instruction}),
                                     float).reshape(-1, meta.action_dim)[0] for t in range(ep.num_steps)])
            r = np.asarray(ep.action, float)
            preds.append(p)
            recs.append(r)
            names.append(f.name)
            per_ep.append({"episode": f.name, "instruction": ep.meta.instruction, "steps": int(ep.num_steps),
                           "mae": np.abs(p - r).mean(0).tolist()})
            if plot_data is None:
                plot_data = (f.name, ep.meta.instruction, p, r)
        if progress:
            progress(i + 1, len(files))
    if not preds:
        raise PolicyError(f"no episodes to evaluate in {dataset_root}")
    P, R = np.concatenate(preds), np.concatenate(recs)
    err = P - R
    thr = gripper_threshold if gripper_threshold is not None else float(
        np.mean([R[:, -1].min(), R[:, -1].max()])) if np.ptp(R[:, -1]) > 0 else 0.5
    grip_acc = float(np.mean((P[:, -1] > thr) == (R[:, -1] > thr)))
    res = OfflineResults(joint_names=list(meta.joint_names), mae=np.abs(err).mean(0).tolist(),
                         rmse=np.sqrt((err ** 2).mean(0)).tolist(), gripper_accuracy=grip_acc,
                         n_steps=int(len(P)), episodes=names, split=split, per_episode=per_ep)
    if plot_path is not None and plot_data is not None:
        res.plot = str(plot_actions(plot_path, *plot_data, joint_names=list(meta.joint_names)))
    return res


def plot_actions(path, episode: str, instruction: str, pred: np.ndarray, rec: np.ndarray,
                 joint_names: list[str]) -> Path:
    """PNG of predicted vs recorded action per joint over one episode (matplotlib, else OpenCV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_cv2(path, pred, rec, joint_names)
    n = len(joint_names)
    cols = 2
    rows = (n + 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.0 * rows), sharex=True)
    for j, ax in enumerate(np.ravel(axes)):
        if j >= n:
            ax.axis("off")
            continue
        ax.plot(rec[:, j], label="recorded", color="#444444", lw=1.6)
        ax.plot(pred[:, j], label="policy", color="#d9480f", lw=1.2, ls="--")
        ax.set_title(joint_names[j], fontsize=9)
        ax.tick_params(labelsize=7)
    np.ravel(axes)[0].legend(fontsize=7)
    fig.suptitle(f"{episode}: '{instruction}' - predicted vs recorded action", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_cv2(path: Path, pred, rec, joint_names) -> Path:
    import cv2
    n, h, w = len(joint_names), 90, 420
    img = np.full((h * n, w, 3), 255, np.uint8)
    for j in range(n):
        lo = min(pred[:, j].min(), rec[:, j].min())
        hi = max(pred[:, j].max(), rec[:, j].max()) + 1e-9
        for series, col in ((rec[:, j], (60, 60, 60)), (pred[:, j], (15, 72, 217))):
            pts = np.stack([np.linspace(5, w - 5, len(series)),
                            j * h + 5 + (h - 20) * (1 - (series - lo) / (hi - lo))], 1).astype(np.int32)
            cv2.polylines(img, [pts], False, col, 1, cv2.LINE_AA)
        cv2.putText(img, joint_names[j], (5, j * h + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)
    return path
