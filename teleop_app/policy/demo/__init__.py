"""The demo policy shipped with the app: a small checkpoint for the sim tasks, loadable as "demo".

    teleop eval demo --episodes 10            # or "demo" in the policy tab / Session.load_policy
    teleop train-demo                         # rebuilds it: seeded scripted demos + a short CPU training

`train_demo()` is the one reproducible recipe (seeded recording, seeded training for a fixed number of
optimizer steps, not a time budget, so the same machine gives the same steps). The file written is
stripped of optimizer state (small) and records how it was made (`train["demo"]`), including which
simulator it was trained on (the kinematic workcell of drivers/sim).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

DEMO_NAME = "demo"
DEMO_PATH = Path(__file__).resolve().parent / "demo.pt"
TASKS = ("pick_red", "pick_blue", "red_in_bowl")
RECIPE = {"episodes_per_task": 40, "record_seed": 0, "cameras": ["front", "wrist"], "image_size": 64,
          "chunk": 30, "steps": 8000, "batch_size": 32, "lr": 1e-3, "train_seed": 0, "fps": 10,
          "sim": "kinematic workcell (drivers/sim/workcell.py)"}


def demo_path() -> Path:
    """The shipped checkpoint; a clear error if it is missing (rebuild with `teleop train-demo`)."""
    from ..base import PolicyError
    if not DEMO_PATH.exists():
        raise PolicyError(f"the demo policy {DEMO_PATH} is missing; rebuild it with `teleop train-demo` "
                          "(a few minutes on the CPU)")
    return DEMO_PATH


def train_demo(out=DEMO_PATH, *, work=None, threads: int = 1, steps: int | None = None,
               episodes_per_task: int | None = None, log: Callable[[str], None] = print) -> Path:
    """Record seeded scripted demos, train the built-in VLA on them, write the stripped checkpoint."""
    import tempfile

    import torch

    from ...scripted import record_scripted
    from ..checkpoint import read_checkpoint
    from ..train import train

    r = dict(RECIPE)
    if steps:
        r["steps"] = int(steps)
    if episodes_per_task:
        r["episodes_per_task"] = int(episodes_per_task)
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="teleop-demo-"))
    data, ckpt = work / "data", work / "demo_full.pt"
    t0 = time.monotonic()
    if not (data / "store.json").exists():
        record_scripted(data, list(TASKS), r["episodes_per_task"], seed=r["record_seed"], fps=r["fps"],
                        cameras=tuple(r["cameras"]), image_size=r["image_size"], jpeg=False, physics=False,
                        progress=lambda i, n: log(f"recording demo {i}/{n}") if i % 20 == 0 or i == n else None)
    rec_s = time.monotonic() - t0
    last = [0.0]

    def prog(p):
        if p["phase"] == "training" and (time.monotonic() - last[0] > 15 or p["step"] == p["steps"]):
            last[0] = time.monotonic()
            log(f"step {p['step']}/{p['steps']}  loss {p['loss']:.4f}  {p['elapsed_s'] / 60:.1f} min")
    t1 = time.monotonic()
    res = train(data, ckpt, steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], resume=False,
                progress=prog, cameras=list(r["cameras"]), image_size=(r["image_size"],) * 2, chunk=r["chunk"],
                max_minutes=None, seed=r["train_seed"], threads=threads, checkpoint_every=10 ** 9)
    blob = read_checkpoint(ckpt)
    blob.pop("optimizer", None)
    blob.pop("train_state_dict", None)      # the weights to resume from, were training averaged (--ema)
    blob["train"] = {**blob.get("train", {}), "demo": {
        **r, "record_s": round(rec_s, 1), "train_minutes": round((time.monotonic() - t1) / 60, 2),
        "loss": round(float(res.loss), 4), "val_loss": None if res.val_loss is None else round(float(res.val_loss), 4),
        "command": "teleop train-demo"}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(out)
    if work.name.startswith("teleop-demo-"):
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {res.step} steps, loss {res.loss:.4f}")
    return out
