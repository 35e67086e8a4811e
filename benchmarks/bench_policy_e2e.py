"""End-to-end proof for the project's VLA: record scripted sim demos -> train on the CPU -> closed-loop
evaluation on unseen scenes, per language-conditioned task, with 95% Wilson intervals.

    .venv/bin/python benchmarks/bench_policy_e2e.py --out /tmp/vla_e2e            # full run (~35-45 min)
    .venv/bin/python benchmarks/bench_policy_e2e.py --out /tmp/vla_quick --episodes 10 --minutes 2 --eval 3

Prints: recording time, training minutes/steps, success per task (+CI), wrong-cube lifts on the pick
tasks (does the instruction matter?), inference latency p50/p99 (2 threads, and inside the rollouts),
and writes OUT/report.html + report.md. Re-running with the same --out reuses the recorded data and
resumes / reuses the checkpoint (pass --fresh to start over).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ["pick_red", "pick_blue", "red_in_bowl"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/vla_e2e")
    ap.add_argument("--episodes", type=int, default=100, help="demos per task")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--cameras", default="front,wrist")
    ap.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--eval", type=int, default=20, help="closed-loop rollouts per task")
    ap.add_argument("--chunk-mode", default="ensemble", choices=["ensemble", "replan"])
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args()

    import torch
    from teleop_app.policy.base import load_policy
    from teleop_app.policy.evaluate import EVAL_SEED0, run_sim_rollouts
    from teleop_app.policy.offline import evaluate_offline
    from teleop_app.policy.report import write_report
    from teleop_app.policy.train import train
    from teleop_app.scripted import record_scripted

    out = Path(a.out)
    if a.fresh and out.exists():
        shutil.rmtree(out)
    data, ckpt = out / "data", out / "vla.pt"
    cams = tuple(c.strip() for c in a.cameras.split(","))
    info: dict = {"command": " ".join(sys.argv), "torch": str(torch.__version__)}

    # 1) demos
    if not (data / "store.json").exists():
        t0 = time.monotonic()
        paths = record_scripted(data, TASKS, a.episodes, seed=0, fps=10, cameras=cams, image_size=a.image_size,
                                jpeg=False, progress=lambda i, n: print(f"\rrecording {i}/{n}", end="", flush=True))
        print()
        info["record_s"] = round(time.monotonic() - t0, 1)
        info["demos"] = len(paths)
        print(f"recorded {len(paths)} demos in {info['record_s']:.0f} s")

    # 2) training (time-boxed; resumes if interrupted)
    t0 = time.monotonic()
    last = [0.0]

    def prog(p):
        if p["phase"] == "training" and time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(f"  step {p['step']}  loss {p['loss']:.4f}  {p['elapsed_s'] / 60:.1f} min", flush=True)
    r = train(data, ckpt, steps=a.steps, batch_size=a.batch_size, lr=a.lr, max_minutes=a.minutes,
              threads=a.threads, cameras=list(cams), image_size=(a.image_size, a.image_size), progress=prog,
              model=None)        # ModelConfig defaults: CNN (16, 32, 64), d_model 128, 2x2 grid + 32 keypoints
    info.update({"train_minutes": round(r.minutes, 2), "train_steps": r.step, "train_loss": round(r.loss, 4),
                 "heldout_loss": None if r.val_loss is None else round(r.val_loss, 4),
                 "train_episodes": r.episodes, "train_samples": r.samples,
                 "train_wall_s_this_run": round(time.monotonic() - t0, 1)})
    print(f"trained {r.step} steps in {r.minutes:.1f} min (loss {r.loss:.4f}, held-out {r.val_loss})")

    # 3) inference latency on 2 threads (single observation, as in the control loop)
    pol = load_policy(str(ckpt), threads=2)
    h, w = pol.meta.image_size
    obs = {"images": {c: np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8) for c in cams},
           "qpos": np.asarray(pol.meta.stats["state"]["mean"]), "instruction": "pick up the red cube"}
    for _ in range(10):
        pol.predict(obs)
    lat = []
    for _ in range(200):
        t1 = time.perf_counter()
        pol.predict(obs)
        lat.append(time.perf_counter() - t1)
    lat_ms = np.percentile(np.array(lat) * 1000, [50, 99])
    info.update({"inference_ms_p50": round(float(lat_ms[0]), 2), "inference_ms_p99": round(float(lat_ms[1]), 2)})
    print(f"inference (2 threads, batch 1): p50 {lat_ms[0]:.1f} ms, p99 {lat_ms[1]:.1f} ms")

    # 4) closed loop on unseen seeds
    def rp(i, n, rr):
        print(f"  [{i}/{n}] {'ok  ' if rr.success else 'FAIL'} {rr.task:<12} seed {rr.seed} {rr.steps:3d} steps "
              f"{rr.reason if not rr.success else ''} lifted={rr.notes.get('lifted')}", flush=True)
    t0 = time.monotonic()
    res = run_sim_rollouts(pol, TASKS, a.eval, seed0=EVAL_SEED0, chunk_mode=a.chunk_mode, progress=rp,
                           policy_name=str(ckpt))
    info["eval_wall_s"] = round(time.monotonic() - t0, 1)
    info["wrong_cube_lifted"] = res.wrong_object()
    print(res.summary())
    res.save(out / "rollouts.json")

    # 5) offline on held-out episodes + report
    from teleop_app.policy.base import PolicyError
    try:
        off = evaluate_offline(pol, data, split="val", max_episodes=9, plot_path=out / "offline_actions.png")
    except PolicyError:      # tiny runs may hold out nothing
        off = evaluate_offline(pol, data, split="all", max_episodes=3, plot_path=out / "offline_actions.png")
    print(off.summary())
    off.save(out / "offline.json")
    page = write_report(res, off, out, title="VLA end-to-end (sim)", info=info)
    print(f"report: {page}")
    print(json.dumps({"per_task": {t: {"success": d["success"], "n": d["n"], "ci95": [round(x, 3) for x in d["ci95"]]}
                                   for t, d in res.per_task().items()}, **info}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
