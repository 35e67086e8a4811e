"""Time from `./dev app` to the demo policy moving the sim arm, as a newcomer would do it.

    .venv/bin/python benchmarks/bench_first_policy.py --runs 3          # offscreen Qt
    xvfb-run -a .venv/bin/python benchmarks/bench_first_policy.py       # a real X server

Each run starts the real `./dev app` (venv check, then `teleop gui --robot sim`) with
TELEOP_GUI_MEASURE_POLICY=demo: once the window shows a live frame it opens the policy tab, types
"demo", presses Load, presses Start when the control process has the policy ready, and reports when
the arm first moved under it (ui/app.py `_measure_first_policy`). Printed: per run and the median,
from launching `./dev app` (wall clock) to the first frame, the policy ready and the arm moving.
The issue's target: a newcomer sees a policy run within a minute of `./dev app`.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"first live frame ([\d.]+) s, policy ready ([\d.]+) s, arm moving under it ([\d.]+) s")


def one(policy: str) -> tuple[float, float, float, float] | None:
    env = dict(os.environ, TELEOP_GUI_MEASURE_POLICY=policy, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    if not env.get("DISPLAY"):
        env["QT_QPA_PLATFORM"] = "offscreen"
    with tempfile.TemporaryDirectory(prefix="teleop-first-") as d:
        t0 = time.monotonic()
        p = subprocess.run([str(ROOT / "dev"), "app", "--dataset", str(Path(d) / "data")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        wall = time.monotonic() - t0
    m = LINE.search(p.stdout)
    if not m:
        print(f"  run failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-1500:]}")
        return None
    frame, ready, moving = (float(x) for x in m.groups())
    return frame, ready, moving, wall        # the three marks: the GUI process's age; wall: from ./dev app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--policy", default="demo")
    a = ap.parse_args()
    rows = []
    for i in range(a.runs):
        r = one(a.policy)
        if r is None:
            continue
        rows.append(r)
        print(f"run {i + 1}: first frame {r[0]:.2f} s, policy ready {r[1]:.2f} s, arm moving {r[2]:.2f} s "
              f"(GUI process age); ./dev app to exit {r[3]:.2f} s", flush=True)
    if not rows:
        return 1
    med = np.median(np.array(rows), axis=0)
    print(f"median of {len(rows)}: first frame {med[0]:.2f} s, policy ready {med[1]:.2f} s, "
          f"arm moving under the demo policy {med[2]:.2f} s after start; target: within 60 s: "
          f"{'MET' if med[2] <= 60 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
