"""Simulated workcell figures: render frames/s at 224x224 on one core, physics steps/s,
scripted-expert success per task on the kinematic and the MuJoCo physics backend, and per
held-out split on physics scenes.

    .venv/bin/python benchmarks/bench_sim.py                   # all figures
    .venv/bin/python benchmarks/bench_sim.py --seeds 50        # quicker expert figures
    .venv/bin/python benchmarks/bench_sim.py --only physics    # physics figures only
    nice -n 10 .venv/bin/python benchmarks/bench_sim.py --only physics --phys-seeds 100 --split-scenes 50
    .venv/bin/python benchmarks/bench_sim.py --screenshots     # also write docs/sim_*.png
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from drivers.sim import Randomization, ScriptedExpert, SimConfig, Workcell, run_episode  # noqa: E402
from drivers.sim.tasks import KINDS, PHYSICS_TASKS, SPLITS, episodes  # noqa: E402

TASKS = ["pick_red", "pick_blue", "red_in_bowl"]
PHYS_TASKS = TASKS + list(PHYSICS_TASKS)
TARGET_FPS = 200.0


def one_core() -> None:
    cv2.setNumThreads(1)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass


def render_fps(view: str, rand: bool, n: int = 600, physics: bool = False,
               scene=None) -> tuple[float, float]:
    """(wall-clock frames/s, frames per CPU-second) rendering a moving scene; only render() is timed.

    Kinematic: replays pre-recorded arm states. Physics: the expert's episode runs first and
    its world states (qpos/qvel of every body) are restored before each timed render."""
    r = Randomization(True, True, True, True) if rand else Randomization()
    wc = Workcell(SimConfig(seed=1, task="red_in_bowl", randomization=r, physics=physics))
    if scene is not None:
        wc.reset(seed=1, scene=scene)
    ex = ScriptedExpert(wc, dt=0.1)
    states = []                      # pre-record moving states so only rendering is timed
    for _ in range(60):
        wc.set_target(ex.act(wc.qpos())); wc.step(0.1)
        states.append(wc._sim.data.qpos.copy() if physics else wc.qpos())
    if physics:
        import mujoco
        def restore(x):
            wc._sim.data.qpos[:] = x
            mujoco.mj_kinematics(wc._sim.model, wc._sim.data)
    else:
        wc.reset(seed=1)
        wc.set_torque(False)
        restore = wc.push
    for st in states[:5]:
        restore(st); wc.render(view)  # warm-up (caches, texture)
    wall = cpu = 0.0
    for i in range(n):
        restore(states[i % len(states)])
        t0, c0 = time.perf_counter(), time.process_time()
        wc.render(view, 224, 224)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return n / wall, n / max(cpu, 1e-9)


def physics_steps() -> tuple[float, float]:
    """(physics steps per CPU-second with the arm moving and a cube held, control ticks/s at 10 Hz)."""
    wc = Workcell(SimConfig(seed=1, task="pick_red", physics=True))
    ex = ScriptedExpert(wc, dt=0.1)
    cpu = 0.0
    n = 0
    for _ in range(60):
        a = ex.act(wc.qpos())
        wc.set_target(a)
        c0 = time.process_time()
        wc.step(0.1)
        cpu += time.process_time() - c0
        n += 1
    from drivers.sim.physics import TIMESTEP
    return n * round(0.1 / TIMESTEP) / cpu, n / cpu


def expert_rate(task: str, seeds: int, dt: float, physics: bool = False) -> tuple[float, float, float, list]:
    wc = Workcell(SimConfig(physics=physics))
    ex = ScriptedExpert(wc, dt=dt)
    res = [run_episode(wc, ex, seed=s, task=task, max_steps=int(25 / dt)) for s in range(seeds)]
    t = np.array([n for _, n in res], float)
    fails = [s for s, (ok, _) in enumerate(res) if not ok]
    return float(np.mean([ok for ok, _ in res])), float(t.mean()), float(t.max()), fails


def split_rate(split: str, n: int) -> dict[str, tuple[int, int]]:
    """Expert successes per task kind over n physics scenes of a split: kind -> (ok, total)."""
    wc = Workcell(SimConfig(physics=True))
    ex = ScriptedExpert(wc, dt=0.1)
    out = {k: [0, 0] for k in KINDS}
    for sc in episodes(split, n):
        wc.reset(scene=sc)
        ex.reset()
        for _ in range(250):
            wc.set_target(ex.act(wc.qpos())); wc.step(0.1)
            if ex.done:
                break
        out[sc.kind][0] += int(wc.success())
        out[sc.kind][1] += 1
    return {k: (a, b) for k, (a, b) in out.items()}


def _montage(wc, task_label: str, dt: float = 0.1) -> np.ndarray:
    """2x2: top = mid-task, bottom = end; left front camera, right wrist camera."""
    ex = ScriptedExpert(wc, dt=dt)
    mid = None
    for _ in range(250):
        wc.set_target(ex.act(wc.qpos())); wc.step(dt)
        if mid is None and ex.phase in ("close", "carry", "push"):
            mid = (wc.render("front"), wc.render("wrist"), ex.phase)
        if ex.done:
            break
    end = (wc.render("front"), wc.render("wrist"), "success" if wc.success() else "FAILED")
    rows = []
    for f, w, label in (mid, end):
        row = np.hstack([f, w]).copy()
        cv2.rectangle(row, (0, 0), (447, 22), (0, 0, 0), -1)
        cv2.putText(row, f"{task_label}: {label}", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    return np.vstack(rows)


def screenshots(out_dir: Path, physics_only: bool = False) -> list[Path]:
    """docs/sim_<task>.png (kinematic), docs/sim_physics_<kind>.png and docs/sim_splits.png."""
    paths = []
    save = lambda p, img: (cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)), paths.append(p))
    if not physics_only:
        for task in TASKS:
            save(out_dir / f"sim_{task}.png", _montage(Workcell(SimConfig(seed=3, task=task)), task))
    for kind, scene in zip(KINDS, episodes("train", len(KINDS), seed=3)):
        wc = Workcell(SimConfig(physics=True))
        wc.reset(scene=scene)
        save(out_dir / f"sim_physics_{kind}.png", _montage(wc, scene.instruction))
    tiles = []                       # one front view per evaluation split, with its instruction
    for split in SPLITS[1:]:
        for scene in list(episodes(split, 2, seed=7))[:2]:
            wc = Workcell(SimConfig(physics=True))
            wc.reset(scene=scene)
            img = cv2.resize(wc.render("front", 320, 320), (320, 320)).copy()
            cv2.rectangle(img, (0, 0), (319, 36), (0, 0, 0), -1)
            cv2.putText(img, split, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
            cv2.putText(img, scene.instruction[:52], (4, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                        (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(img)
    grid = np.vstack([np.hstack(tiles[i:i + 4]) for i in range(0, len(tiles), 4)])
    save(out_dir / "sim_splits.png", grid)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=200, help="kinematic expert seeds per task at 10 Hz")
    ap.add_argument("--seeds50", type=int, default=10, help="kinematic expert seeds per task at 50 Hz")
    ap.add_argument("--phys-seeds", type=int, default=100, help="physics expert seeds per task at 10 Hz")
    ap.add_argument("--phys-seeds50", type=int, default=10, help="physics expert seeds per task at 50 Hz")
    ap.add_argument("--split-scenes", type=int, default=50, help="physics scenes per held-out split")
    ap.add_argument("--only", choices=["kinematic", "physics"], help="one backend's figures only")
    ap.add_argument("--tasks", help="comma-separated physics tasks (default: all)")
    ap.add_argument("--screenshots", action="store_true", help="write docs/sim_*.png")
    a = ap.parse_args()
    one_core()
    backends = [b for b in ("kinematic", "physics") if a.only in (None, b)]
    print("== render, 224x224, one core (target >= %.0f frames/s); load average %.1f"
          % (TARGET_FPS, os.getloadavg()[0]))
    for backend in backends:
        for view in ("front", "wrist"):
            for rand in (False, True):
                scene = next(episodes("train", 1, seed=2, kinds=("stack",))) if backend == "physics" else None
                fps, cpu_fps = render_fps(view, rand, physics=backend == "physics", scene=scene)
                print(f"render {backend:9s} {view:5s} randomisation={'on ' if rand else 'off'}: {fps:6.0f} "
                      f"frames/s wall, {cpu_fps:6.0f} frames per CPU-second "
                      f"({cpu_fps / TARGET_FPS:.1f}x target per CPU-second)")
    if "physics" in backends:
        sps, ticks = physics_steps()
        print(f"== physics: {sps:7.0f} MuJoCo steps per CPU-second (500 Hz steps, arm moving, cube held) "
              f"= {sps * 0.002:.1f}x real time; {ticks:.0f} control ticks (0.1 s) per CPU-second")
    print("== scripted expert")
    if "kinematic" in backends:
        for dt, seeds in ((0.1, a.seeds), (0.02, a.seeds50)):
            for task in TASKS:
                t0 = time.perf_counter()
                rate, mean_len, max_len, _ = expert_rate(task, seeds, dt)
                print(f"expert kinematic {task:17s} @ {1 / dt:3.0f} Hz: success {rate * 100:5.1f}% over "
                      f"{seeds} seeds, episode length mean {mean_len:5.1f} max {max_len:3.0f} steps "
                      f"({time.perf_counter() - t0:.1f} s)")
    if "physics" in backends:
        for dt, seeds in ((0.1, a.phys_seeds), (0.02, a.phys_seeds50)):
            for task in (a.tasks.split(",") if a.tasks else PHYS_TASKS) if seeds > 0 else []:
                t0 = time.perf_counter()
                rate, mean_len, max_len, fails = expert_rate(task, seeds, dt, physics=True)
                print(f"expert physics   {task:17s} @ {1 / dt:3.0f} Hz: success {rate * 100:5.1f}% over "
                      f"{seeds} seeds, episode length mean {mean_len:5.1f} max {max_len:3.0f} steps "
                      f"({time.perf_counter() - t0:.1f} s){'  failed seeds ' + str(fails[:10]) if fails else ''}")
        for split in SPLITS if a.split_scenes > 0 else []:
            t0 = time.perf_counter()
            res = split_rate(split, a.split_scenes)
            ok, n = sum(v[0] for v in res.values()), sum(v[1] for v in res.values())
            per = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in res.items())
            print(f"expert physics split {split:18s}: {ok}/{n} ({per}) ({time.perf_counter() - t0:.1f} s)")
    if a.screenshots:
        out = Path(__file__).resolve().parents[1] / "docs"
        out.mkdir(exist_ok=True)
        for p in screenshots(out, physics_only=a.only == "physics"):
            print("wrote", p)


if __name__ == "__main__":
    main()
