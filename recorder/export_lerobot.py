"""Export an episode store as a LeRobot dataset, codebase v3.0 (lerobot >= 0.4).

Written with pyarrow + PyAV only (the lerobot package itself is not needed):

    meta/info.json                                   schema, fps, path templates, features
    meta/stats.json                                  dataset statistics per feature
    meta/tasks.parquet                               task string (index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, tasks, data/video
                                                     file pointers, video from/to timestamps, stats
    data/chunk-XXX/file-YYY.parquet                  one row per frame (many episodes per file)
    videos/observation.images.<cam>/chunk-XXX/file-YYY.mp4   episodes concatenated

Mapping from our schema: observation.state = /observations/qpos, action = /action (the action
actually sent), task = the episode instruction. LeRobot's `timestamp` is the nominal
frame_index / fps (it locates video frames by it); the measured times stay in the HDF5 files.
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .export_common import Progress, open_store, report, select, staged_dir
from .reader import read_episode
from .schema import RecorderError
from .store import EpisodeStore

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _next(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


def _stats(a: np.ndarray, with_quantiles: bool = True) -> dict:
    """LeRobot-style stats over axis 0 (a is (N, D))."""
    a = a.astype(np.float64)
    out = {"min": a.min(0), "max": a.max(0), "mean": a.mean(0), "std": a.std(0), "count": np.array([len(a)])}
    if with_quantiles:
        for q in QUANTILES:
            out[f"q{int(round(q * 100)):02d}"] = np.quantile(a, q, axis=0)
    return out


def _image_stats(frames: list[np.ndarray]) -> dict:
    """Per-channel stats in [0, 1], shaped (3, 1, 1) like LeRobot's."""
    px = np.concatenate([f.reshape(-1, 3) for f in frames]).astype(np.float64) / 255.0
    s = _stats(px, with_quantiles=True)
    out = {k: v.reshape(3, 1, 1) for k, v in s.items() if k != "count"}
    out["count"] = np.array([len(frames)])   # LeRobot counts sampled frames, not pixels
    return out


def _merge(parts: list[dict]) -> dict:
    """Combine per-episode stats (exact for min/max/mean/std, count-weighted)."""
    n = np.array([p["count"][0] for p in parts], np.float64)
    tot = n.sum()
    shape = (len(parts),) + (1,) * parts[0]["mean"].ndim
    w = (n / tot).reshape(shape)
    mean = (np.stack([p["mean"] for p in parts]) * w).sum(0)
    var = ((np.stack([p["std"] for p in parts]) ** 2 + (np.stack([p["mean"] for p in parts]) - mean) ** 2) * w).sum(0)
    out = {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(tot)])}
    for k in parts[0]:
        if k.startswith("q"):   # quantiles do not merge exactly: count-weighted mean (as LeRobot does)
            out[k] = (np.stack([p[k] for p in parts]) * w).sum(0)
    return out


def _jsonable(stats: dict) -> dict:
    return {feat: {k: np.asarray(v).tolist() for k, v in s.items()} for feat, s in stats.items()}


class _VideoFile:
    """One mp4 being written: episodes appended back to back, pts = global frame number."""

    def __init__(self, path: Path, fps: int, h: int, w: int, codec: str, crf: int, gop: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.c = av.open(str(path), "w")
        self.s = self.c.add_stream(codec, rate=fps)
        self.s.width, self.s.height, self.s.pix_fmt = w, h, "yuv420p"
        opts = {"g": str(gop)}
        if codec == "libx264":
            opts.update(crf=str(crf), preset="veryfast")
        elif codec == "libsvtav1":
            opts.update(crf=str(crf), preset="10")
        self.s.options = opts
        self.tb = Fraction(1, fps)
        self.s.codec_context.time_base = self.tb
        self.frames = 0
        self.bytes = 0

    def add(self, rgb: np.ndarray) -> None:
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        f.pts = self.frames
        f.time_base = self.tb
        for p in self.s.encode(f):
            self.bytes += p.size
            self.c.mux(p)
        self.frames += 1

    def close(self) -> dict:
        for p in self.s.encode():
            self.c.mux(p)
        self.c.close()
        with av.open(str(self.path)) as c:
            cc = c.streams.video[0].codec_context
            return {"codec": cc.name, "pix_fmt": cc.format.name if cc.format else "yuv420p"}


def export_lerobot(store_or_root: EpisodeStore | str | os.PathLike, out_dir: str | os.PathLike, repo_id: str,
                   progress: Progress = None, *, ids: list[int] | None = None, skip_failed: bool = True,
                   codec: str = "libx264", crf: int = 18, gop: int = 2, overwrite: bool = False) -> Path:
    """Write a LeRobot v3.0 dataset to out_dir (load it with LeRobotDataset(repo_id, root=out_dir)).

    progress(done, total) is called after each episode. Episodes labelled failed (success=0) are
    skipped unless skip_failed=False. The export is written to a temporary folder beside out_dir
    and renamed into place when complete: on any error out_dir is left as it was. Returns out_dir."""
    store = open_store(store_or_root)
    eps = select(store, ids, skip_failed)
    final = Path(out_dir)
    with staged_dir(final, overwrite) as tmp:
        _export(store, eps, tmp, final, repo_id, progress, codec, crf, gop)
    return final


def _export(store: EpisodeStore, eps: list, out: Path, final: Path, repo_id: str, progress: Progress,
            codec: str, crf: int, gop: int) -> None:
    cfg = store.config
    fps_f = float(cfg["fps"])
    fps = int(round(fps_f))
    if abs(fps - fps_f) > 1e-6:
        raise RecorderError(f"LeRobot needs an integer fps; this store records at {fps_f:g} Hz")
    joints = list(cfg["joint_names"])
    dof = len(joints)
    total = len(eps)
    report(progress, 0, total)

    tasks: dict[str, int] = {}
    ep_rows: list[dict] = []
    ep_stats: list[dict] = []
    cams: list[str] | None = None
    shapes: dict[str, tuple[int, int]] = {}
    videos: dict[str, _VideoFile] = {}
    vid_idx: dict[str, tuple[int, int]] = {}
    video_info: dict[str, dict] = {}
    data_idx = (0, 0)
    data_writer: pq.ParquetWriter | None = None
    data_bytes = 0
    schema = pa.schema([("observation.state", pa.list_(pa.float32(), dof)),
                        ("action", pa.list_(pa.float32(), dof)),
                        ("timestamp", pa.float32()), ("frame_index", pa.int64()),
                        ("episode_index", pa.int64()), ("index", pa.int64()), ("task_index", pa.int64()),
                        ("intervention", pa.bool_())])
    global_index = 0
    try:
        for k, info in enumerate(eps):
            ep = read_episode(store.root / info.file)
            try:
                if cams is None:
                    cams = list(ep.cameras)
                    shapes = dict(ep.image_shapes)
                if list(ep.cameras) != cams or any(ep.image_shapes[c] != shapes[c] for c in cams):
                    raise RecorderError(f"{ep.path.name}: cameras {ep.image_shapes} differ from the first "
                                        f"exported episode {shapes}; LeRobot needs identical cameras")
                if ep.qpos.shape[1] != dof:
                    raise RecorderError(f"{ep.path.name}: {ep.qpos.shape[1]} joints, store has {dof}")
                n = ep.num_steps
                task = ep.meta.instruction or "(no instruction)"
                t_idx = tasks.setdefault(task, len(tasks))
                frame_index = np.arange(n, dtype=np.int64)
                ts = (frame_index / fps).astype(np.float32)
                index = np.arange(global_index, global_index + n, dtype=np.int64)
                flags = ep.intervention if ep.intervention is not None else np.zeros(n, bool)
                table = pa.table({
                    "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(ep.qpos.astype(np.float32).ravel()), dof),
                    "action": pa.FixedSizeListArray.from_arrays(pa.array(ep.action.astype(np.float32).ravel()), dof),
                    "timestamp": ts, "frame_index": frame_index,
                    "episode_index": np.full(n, k, np.int64), "index": index,
                    "task_index": np.full(n, t_idx, np.int64),
                    # the operator overrode the policy on this step (HG-DAgger corrections); False if not recorded
                    "intervention": flags}, schema=schema)
                if data_writer is not None and data_bytes > DATA_FILE_MB * 1024 * 1024:
                    data_writer.close()
                    data_writer = None
                    data_idx = _next(*data_idx)
                if data_writer is None:
                    p = out / DATA_PATH.format(chunk_index=data_idx[0], file_index=data_idx[1])
                    p.parent.mkdir(parents=True, exist_ok=True)
                    data_writer = pq.ParquetWriter(p, schema)
                    data_bytes = 0
                data_writer.write_table(table)
                data_bytes += table.nbytes
                row = {"episode_index": k, "tasks": [task], "length": n,
                       "data/chunk_index": data_idx[0], "data/file_index": data_idx[1],
                       "dataset_from_index": global_index, "dataset_to_index": global_index + n}
                st = {"observation.state": _stats(ep.qpos), "action": _stats(ep.action),
                      "timestamp": _stats(ts[:, None]), "frame_index": _stats(frame_index[:, None]),
                      "episode_index": _stats(np.full((n, 1), k)), "index": _stats(index[:, None]),
                      "task_index": _stats(np.full((n, 1), t_idx)),
                      "intervention": _stats(flags[:, None].astype(np.float64))}
                for cam in cams:
                    key = f"observation.images.{cam}"
                    h, w = shapes[cam]
                    vf = videos.get(key)
                    if vf is not None and vf.bytes > VIDEO_FILE_MB * 1024 * 1024:
                        video_info[key] = vf.close()
                        vid_idx[key] = _next(*vid_idx[key])
                        vf = None
                    if vf is None:
                        vid_idx.setdefault(key, (0, 0))
                        c_i, f_i = vid_idx[key]
                        vf = videos[key] = _VideoFile(out / VIDEO_PATH.format(video_key=key, chunk_index=c_i, file_index=f_i),
                                                      fps, h, w, codec, crf, gop)
                    start = vf.frames
                    sample = []
                    step = max(1, n // 50)      # image stats from <= ~50 frames per episode
                    for i in range(n):
                        img = ep.image(cam, i)
                        vf.add(img)
                        if i % step == 0:
                            sample.append(img[::4, ::4])
                    row[f"videos/{key}/chunk_index"] = vid_idx[key][0]
                    row[f"videos/{key}/file_index"] = vid_idx[key][1]
                    row[f"videos/{key}/from_timestamp"] = start / fps
                    row[f"videos/{key}/to_timestamp"] = vf.frames / fps
                    st[key] = _image_stats(sample)
                row["meta/episodes/chunk_index"] = 0
                row["meta/episodes/file_index"] = 0
                for feat, s in st.items():
                    for name, v in s.items():
                        row[f"stats/{feat}/{name}"] = np.asarray(v).tolist()
                ep_rows.append(row)
                ep_stats.append(st)
                global_index += n
            finally:
                ep.close()
            report(progress, k + 1, total)
    finally:
        if data_writer is not None:
            data_writer.close()
        for key, vf in videos.items():
            video_info[key] = vf.close()

    # ---- metadata
    ep_dir = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_dir.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), ep_dir)
    _write_tasks(out / "meta/tasks.parquet", tasks)
    stats = {feat: _merge([s[feat] for s in ep_stats]) for feat in ep_stats[0]}
    (out / "meta/stats.json").write_text(json.dumps(_jsonable(stats), indent=4))
    features: dict = {
        "observation.state": {"dtype": "float32", "shape": [dof], "names": joints},
        "action": {"dtype": "float32", "shape": [dof], "names": joints},
    }
    for cam in cams or []:
        key = f"observation.images.{cam}"
        h, w = shapes[cam]
        features[key] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                         "info": {"video.height": h, "video.width": w,
                                  "video.codec": video_info[key]["codec"], "video.pix_fmt": video_info[key]["pix_fmt"],
                                  "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
                                  "has_audio": False}}
    for name in _INDEX_FEATURES:
        features[name] = {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
    features["intervention"] = {"dtype": "bool", "shape": [1], "names": None}
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": cfg.get("robot"),
            "total_episodes": len(ep_rows), "total_frames": global_index, "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB,
            "video_files_size_in_mb": VIDEO_FILE_MB, "fps": fps, "splits": {"train": f"0:{len(ep_rows)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if cams else None, "features": features}
    (out / "meta/info.json").write_text(json.dumps(info, indent=4))
    (out / "README.md").write_text(
        f"# {repo_id}\n\nLeRobot dataset (codebase v3.0) exported by teleop from {store.root}.\n"
        f"{len(ep_rows)} episodes, {global_index} frames at {fps} fps, {len(tasks)} task(s).\n\n"
        f"```python\nfrom lerobot.datasets.lerobot_dataset import LeRobotDataset\n"
        f"ds = LeRobotDataset({repo_id!r}, root={str(final)!r})\n```\n")


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """tasks.parquet as pandas writes DataFrame({'task_index': ...}, index=Index(tasks, name='task')),
    without needing pandas: the 'pandas' schema metadata makes 'task' the index on read."""
    names = list(tasks)
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()),
                      "task": pa.array(names, pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, path)
