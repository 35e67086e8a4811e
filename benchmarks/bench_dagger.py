"""HG-DAgger in the sim, measured: a deliberately weak policy, a simulated operator (the scripted
expert) that takes over when the policy drifts, retraining on demos + corrections, repeated.

    nice -n 10 .venv/bin/python benchmarks/bench_dagger.py --out /tmp/dagger            # default pass
    .venv/bin/python benchmarks/bench_dagger.py --out /tmp/dagger_tiny --demos 3 --rounds 1 \
        --eval 2 --rollouts 2 --steps 30 --retrain 20 --tasks pick_red                    # smoke run

Prints per round: training minutes, success per task on unseen scenes (eval seeds 1_000_000+, never
used for demos or corrections) with 95 % Wilson intervals, overall success, corrected steps / all
steps in that round's collection rollouts, and the policy's mean per-step uncertainty (chunk
disagreement) in failed vs successful rollouts with its AUROC for predicting failure. Writes
OUT/dagger.json (every rollout). Training budgets are optimizer steps, so figures do not depend on how
loaded the machine is. Note: each round also trains longer (resumed checkpoint), so the curve mixes
the effect of the corrections with that of the extra training.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/dagger")
    ap.add_argument("--tasks", default="pick_red,pick_blue")
    ap.add_argument("--demos", type=int, default=10, help="scripted demos per task for the weak start")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=10, help="corrected rollouts per task per round")
    ap.add_argument("--eval", type=int, default=20, help="unseen eval scenes per task per round")
    ap.add_argument("--steps", type=int, default=400, help="initial training (optimizer steps)")
    ap.add_argument("--retrain", type=int, default=300, help="extra training steps per round")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--cameras", default="front,wrist")
    ap.add_argument("--drift", type=float, default=0.02, help="takeover threshold: TCP distance (m)")
    ap.add_argument("--weight", type=float, default=2.0, help="intervention_weight for retraining")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    from teleop_app.dagger import DaggerConfig, format_curve, run_dagger
    cfg = DaggerConfig(tasks=[t.strip() for t in a.tasks.split(",")], demos_per_task=a.demos, rounds=a.rounds,
                       rollouts_per_task=a.rollouts, eval_per_task=a.eval, train_steps=a.steps,
                       retrain_steps=a.retrain, drift_m=a.drift, intervention_weight=a.weight, threads=a.threads,
                       batch_size=a.batch_size, image_size=a.image_size,
                       cameras=tuple(c.strip() for c in a.cameras.split(",")))
    t0 = time.monotonic()
    res = run_dagger(a.out, cfg, progress=lambda m: print(m, flush=True), fresh=a.fresh)
    print()
    print(format_curve(res))
    print(f"\nwall {time.monotonic() - t0:.0f} s; every rollout in {Path(a.out) / 'dagger.json'}")
    print(json.dumps({"command": " ".join(sys.argv), "config": res["config"]}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
