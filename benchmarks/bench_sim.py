"""Simulated workcell figures: render frames/s at 224x224 on one core, scripted-expert success.

    .venv/bin/python benchmarks/bench_sim.py                 # all figures
    .venv/bin/python benchmarks/bench_sim.py --seeds 50      # quicker expert figure
    .venv/bin/python benchmarks/bench_sim.py --screenshots   # also write docs/sim_<task>.png
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

TASKS = ["pick_red", "pick_blue", "red_in_bowl"]
TARGET_FPS = 200.0


def one_core() -> None:
    cv2.setNumThreads(1)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass


def render_fps(view: str, rand: bool, n: int = 600) -> tuple[float, float]:
    """(wall-clock frames/s, frames per CPU-second) rendering a moving arm; only render() is timed."""
    r = Randomization(True, True, True, True) if rand else Randomization()
    wc = Workcell(SimConfig(seed=1, task="red_in_bowl", randomization=r))
    ex = ScriptedExpert(wc, dt=0.1)
    states = []                      # pre-record moving states so only rendering is timed
    for _ in range(60):
        wc.set_target(ex.act(wc.qpos())); wc.step(0.1); states.append(wc.qpos())
    wc.reset(seed=1)
    wc.set_torque(False)
    for s in states[:5]:
        wc.push(s); wc.render(view)  # warm-up (caches, texture)
    wall = cpu = 0.0
    for i in range(n):
        wc.push(states[i % len(states)])
        t0, c0 = time.perf_counter(), time.process_time()
        wc.render(view, 224, 224)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return n / wall, n / max(cpu, 1e-9)


def expert_rate(task: str, seeds: int, dt: float) -> tuple[float, float, float]:
    wc = Workcell()
    ex = ScriptedExpert(wc, dt=dt)
    res = [run_episode(wc, ex, seed=s, task=task, max_steps=int(20 / dt)) for s in range(seeds)]
    t = np.array([n for _, n in res], float)
    return float(np.mean([ok for ok, _ in res])), float(t.mean()), float(t.max())


def screenshots(out_dir: Path) -> list[Path]:
    """docs/sim_<task>.png: 2x2 montage, top = mid-task, bottom = success; left front, right wrist."""
    paths = []
    for task in TASKS:
        wc = Workcell(SimConfig(seed=3, task=task))
        ex = ScriptedExpert(wc, dt=0.1)
        mid = None
        for _ in range(120):
            wc.set_target(ex.act(wc.qpos())); wc.step(0.1)
            if mid is None and ex.phase in ("close", "carry"):
                mid = (wc.render("front"), wc.render("wrist"), ex.phase)
            if ex.done:
                break
        end = (wc.render("front"), wc.render("wrist"), "success" if wc.success() else "FAILED")
        rows = []
        for f, w, label in (mid, end):
            row = np.hstack([f, w]).copy()
            cv2.rectangle(row, (0, 0), (200, 22), (0, 0, 0), -1)
            cv2.putText(row, f"{task}: {label}", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1, cv2.LINE_AA)
            rows.append(row)
        img = np.vstack(rows)
        p = out_dir / f"sim_{task}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=200, help="expert seeds per task at 10 Hz")
    ap.add_argument("--seeds50", type=int, default=10, help="expert seeds per task at 50 Hz")
    ap.add_argument("--screenshots", action="store_true", help="write docs/sim_<task>.png")
    a = ap.parse_args()
    one_core()
    print("== render, 224x224, one core (target >= %.0f frames/s); load average %.1f"
          % (TARGET_FPS, os.getloadavg()[0]))
    for view in ("front", "wrist"):
        for rand in (False, True):
            fps, cpu_fps = render_fps(view, rand)
            print(f"render {view:5s} randomisation={'on ' if rand else 'off'}: {fps:6.0f} frames/s wall, "
                  f"{cpu_fps:6.0f} frames per CPU-second  ({cpu_fps / TARGET_FPS:.1f}x target per CPU-second)")
    print("== scripted expert")
    for dt, seeds in ((0.1, a.seeds), (0.02, a.seeds50)):
        for task in TASKS:
            t0 = time.perf_counter()
            rate, mean_len, max_len = expert_rate(task, seeds, dt)
            print(f"expert {task:11s} @ {1 / dt:3.0f} Hz: success {rate * 100:5.1f}% over {seeds} seeds, "
                  f"episode length mean {mean_len:5.1f} max {max_len:3.0f} steps "
                  f"({time.perf_counter() - t0:.1f} s)")
    if a.screenshots:
        out = Path(__file__).resolve().parents[1] / "docs"
        out.mkdir(exist_ok=True)
        for p in screenshots(out):
            print("wrote", p)


if __name__ == "__main__":
    main()
