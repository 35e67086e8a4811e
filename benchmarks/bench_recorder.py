"""Recorder benchmarks: finalize time, sustained 3-camera throughput, index open time.

    .venv/bin/python benchmarks/bench_recorder.py [--quick]

Prints figures; no pass/fail. Paced at the real rate (the control loop calls add_step once per tick).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter  # noqa: E402

JOINTS = [f"j{i}" for i in range(7)] + ["gripper"]


def camera_frames(h: int, w: int, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Camera-like frames: smooth scene + sensor noise (JPEG cost similar to real images)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for k in range(n):
        base = np.stack([128 + 80 * np.sin(x / 37 + k * 0.3), 128 + 80 * np.cos(y / 23 - k * 0.2),
                         (x + y + 10 * k) % 256], -1)
        out.append(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    return out


def run_episode(path: Path, cams: dict[str, tuple[int, int]], hz: float, steps: int, jpeg: bool = True,
                hdf5_process: bool = True) -> dict:
    frames = {c: camera_frames(h, w, seed=i) for i, (c, (h, w)) in enumerate(cams.items())}
    w = EpisodeWriter(path, EpisodeMeta("bench", hz, "sim", JOINTS, "scripted"), cams, dof=8, jpeg=jpeg,
                      hdf5_process=hdf5_process)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    late = 0
    depth = []
    add_cost = []
    wake = []
    for i in range(steps):
        tick = t0 + i / hz
        dt = tick - time.monotonic()
        if dt > 0:
            time.sleep(dt)
        else:
            late += 1
        now = time.monotonic()
        wake.append(now - tick)
        a = time.perf_counter()
        w.add_step(np.zeros(8), np.zeros(8), timestamp=now,
                   images={c: f[i % len(f)] for c, f in frames.items()},
                   image_timestamps={c: now for c in cams})
        add_cost.append(time.perf_counter() - a)
        depth.append(w.queue_depth)
    t_stop = time.perf_counter()
    p = w.finish(success=1)
    fin = time.perf_counter() - t_stop
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"finalize_s": fin, "dropped": w.dropped, "max_lag_s": w.max_lag_s, "mean_queue": float(np.mean(depth)),
            "max_queue": int(np.max(depth)), "late_ticks": late, "steps": w.num_steps, "wall_s": wall,
            "cpu_s": cpu, "size_mb": p.stat().st_size / 1e6, "add_step_p99_ms": float(np.percentile(add_cost, 99) * 1e3),
            "tick_late_p99_ms": float(np.percentile(wake, 99) * 1e3), "tick_late_max_ms": float(np.max(wake) * 1e3)}


def bench_finalize(tmp: Path, quick: bool) -> None:
    print("== finalize time (stop -> final .h5), JPEG q90, 300 frames paced at 30 Hz")
    n = 90 if quick else 300
    for size in (224, 480):
        for ncam in (1, 3):
            cams = {f"cam{i}": (size, size) for i in range(ncam)}
            r = run_episode(tmp / f"fin_{size}_{ncam}.h5", cams, 30.0, n)
            print(f"  {ncam} cam x {size}x{size}: finalize {r['finalize_s'] * 1e3:7.1f} ms   "
                  f"(dropped {r['dropped']}, max writer lag {r['max_lag_s'] * 1e3:.0f} ms, {r['size_mb']:.1f} MB)")


def bench_throughput(tmp: Path, quick: bool, hdf5_process: bool = True) -> dict:
    secs = 5 if quick else 20
    where = "HDF5 in a child process" if hdf5_process else "HDF5 in-process (hdf5_process=False)"
    print(f"== sustained: 3 cameras x 640x480 x 50 Hz for {secs} s, JPEG q90, {where}")
    cams = {"top": (480, 640), "front": (480, 640), "wrist": (480, 640)}
    r = run_episode(tmp / f"thr{int(hdf5_process)}.h5", cams, 50.0, int(50 * secs), hdf5_process=hdf5_process)
    print(f"  steps {r['steps']}  dropped {r['dropped']}  max writer lag {r['max_lag_s'] * 1e3:.0f} ms  "
          f"queue mean/max {r['mean_queue']:.1f}/{r['max_queue']}  late ticks {r['late_ticks']}")
    print(f"  loop wake-up lateness p99 {r['tick_late_p99_ms']:.2f} ms, max {r['tick_late_max_ms']:.1f} ms "
          f"(sleep-paced 50 Hz loop in the same process as the writer)")
    print(f"  add_step p99 {r['add_step_p99_ms']:.2f} ms  finalize {r['finalize_s'] * 1e3:.0f} ms  "
          f"file {r['size_mb']:.0f} MB  recording-process CPU {r['cpu_s'] / r['wall_s'] * 100:.0f}% of one core (HDF5 child not included)")
    return r


def bench_lerobot(tmp: Path, quick: bool, ours: dict) -> None:
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError:
        print("== LeRobot writer, same workload: lerobot not installed: ratio n/a")
        return
    secs = 5 if quick else 20
    cams = ("top", "front", "wrist")
    feats = {"observation.state": {"dtype": "float32", "shape": (8,), "names": JOINTS},
             "action": {"dtype": "float32", "shape": (8,), "names": JOINTS}}
    for c in cams:
        feats[f"observation.images.{c}"] = {"dtype": "video", "shape": (480, 640, 3),
                                            "names": ["height", "width", "channels"]}
    ds = LeRobotDataset.create("bench/rec", fps=50, root=tmp / "lr", features=feats, use_videos=True)
    frames = camera_frames(480, 640)
    t0 = time.monotonic()
    late = 0
    for i in range(int(50 * secs)):
        dt = t0 + i / 50 - time.monotonic()
        if dt > 0:
            time.sleep(dt)
        else:
            late += 1
        fr = {"observation.state": np.zeros(8, np.float32), "action": np.zeros(8, np.float32), "task": "bench"}
        for c in cams:
            fr[f"observation.images.{c}"] = frames[i % len(frames)]
        ds.add_frame(fr)
    t = time.perf_counter()
    ds.save_episode()
    fin = time.perf_counter() - t
    print(f"== LeRobot writer: late ticks {late}, save_episode {fin:.2f} s; "
          f"finalize ratio lerobot/ours = {fin / max(ours['finalize_s'], 1e-6):.1f}")


def bench_index(tmp: Path) -> None:
    print("== store index with 1,000 episodes")
    root = tmp / "ds1000"
    st = EpisodeStore.create(root, robot="sim", fps=30, joint_names=JOINTS, cameras={})
    w = EpisodeWriter(tmp / "proto.h5", EpisodeMeta("x", 30, "sim", JOINTS, "teleop"), {}, dof=8)
    for i in range(30):
        w.add_step(np.zeros(8), np.zeros(8), timestamp=i / 30)
    data = w.finish().read_bytes()
    for i in range(1, 1001):
        (st.episodes_dir / f"episode_{i:06d}.h5").write_bytes(data)
    t = time.perf_counter()
    st.rebuild_index()
    print(f"  rebuild from files: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    st2 = EpisodeStore.open(root)
    print(f"  open (index.json + directory scan + recovery scan): {(time.perf_counter() - t) * 1e3:.0f} ms "
          f"for {len(st2.episodes())} episodes")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: a temp dir)")
    ap.add_argument("--compare-inprocess", action="store_true",
                    help="also run the sustained test with HDF5 written in-process")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_rec_", dir=a.dir))
    try:
        print(f"disk: {tmp}  cpus: {os.cpu_count()}")
        bench_finalize(tmp, a.quick)
        ours = bench_throughput(tmp, a.quick)
        if a.compare_inprocess:
            bench_throughput(tmp, a.quick, hdf5_process=False)
        bench_lerobot(tmp, a.quick, ours)
        bench_index(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
