"""Control-core figures, measured from what the product itself records.

1. cadence: runs the real CLI, `teleop record --mode scripted --fps 50 --episodes 10` (a real-time
   session, episode boundaries included), then reads the per-tick timestamps back from the recorded
   HDF5 files: period error p50/p99/max, missed ticks, and the worst error of the first 5 ticks of each
   episode (where writer creation/finish used to stall the loop). Target: p99 <= 2 ms and 0 missed
   ticks in EVERY episode.
2. e-stop latency: an in-process session at 50 Hz in policy mode whose policy call takes 500 ms (always
   one in flight), recording, with a disk stall injected in the writer path (every 25th journal append
   sleeps 0.5 s) and in the episode bookkeeping (store.add sleeps 0.5 s). estop() is called from another
   thread at random phases; latency = request -> first held command written by the driver.
   Target: <= one period + 2 ms.
3. --policy: loop cadence (lateness of each tick vs its deadline: p50/p99/max, missed ticks, from the
   loop's own statistics) of a real-time sim session at 10 Hz while the demo policy LOADS (HOLD mode)
   and while it RUNS (POLICY mode, smooth chunks), loaded the old way (in the control process:
   load_policy(in_process=True) = load_policy + set_policy there) vs in a child inference process (the
   default). Each way runs in a fresh process (torch not yet imported).
    nice -n 10 .venv/bin/python benchmarks/bench_control.py --policy [--run-s 20]

    nice -n 10 .venv/bin/python benchmarks/bench_control.py [--episodes 10] [--fps 50] [--estops 20]
    .venv/bin/python benchmarks/bench_control.py --read DATASET     # figures of an existing dataset

0. first, the machine's own wake-up floor (wake_floor): how late a lone real-time process with no GIL
   and no threads wakes from the same kind of sleep. On a VM the host can be late by milliseconds.

`episode_cadence(path)` / `dataset_cadence(root)` are importable (the GUI benchmark reuses them).
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


# ---------------------------------------------------------------- figures from recorded files
def cadence_of(timestamps, fps: float, first: int = 5) -> dict:
    """Per-tick timing of one recorded episode: |period - 1/fps| percentiles (ms), missed ticks,
    longest period, and the worst error among the first `first` periods (episode start)."""
    ts = np.asarray(timestamps, np.float64)
    nominal = 1.0 / float(fps)
    if len(ts) < 2:
        return {"steps": int(len(ts)), "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "missed": 0,
                "longest_ms": 0.0, "first_max_ms": 0.0}
    per = np.diff(ts)
    err = np.abs(per - nominal) * 1e3
    return {"steps": int(len(ts)), "p50_ms": float(np.percentile(err, 50)),
            "p99_ms": float(np.percentile(err, 99)), "max_ms": float(err.max()),
            "missed": int(np.maximum(np.rint(per / nominal) - 1, 0).sum()),
            "longest_ms": float(per.max() * 1e3), "first_max_ms": float(err[:first].max()),
            "errors_ms": err}


def episode_cadence(path, first: int = 5) -> dict:
    """cadence_of() for one episode file (reads its /timestamp and fps attribute)."""
    from recorder.reader import read_episode
    ep = read_episode(path)
    try:
        return cadence_of(ep.timestamp, ep.meta.fps, first)
    finally:
        if hasattr(ep, "close"):
            ep.close()


def dataset_cadence(root, first: int = 5) -> list[tuple[int, dict]]:
    """[(episode id, cadence)] for every episode of a dataset, in id order."""
    from recorder.store import EpisodeStore
    store = EpisodeStore.open(root)
    return [(e.id, episode_cadence(Path(root) / e.file, first)) for e in store.episodes()]


def print_cadence(rows: list[tuple[int, dict]], target_ms: float = 2.0) -> bool:
    print(f"{'episode':>8} {'steps':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'longest':>8} "
          f"{'first5 max':>10} {'missed':>6}")
    ok = True
    for i, c in rows:
        good = c["p99_ms"] <= target_ms and c["missed"] == 0
        ok &= good
        print(f"{i:>8} {c['steps']:>6} {c['p50_ms']:7.2f} {c['p99_ms']:7.2f} {c['max_ms']:7.2f} "
              f"{c['longest_ms']:8.1f} {c['first_max_ms']:10.2f} {c['missed']:>6} {'' if good else '  <- over target'}")
    if rows:
        allerr = np.concatenate([c["errors_ms"] for _, c in rows if "errors_ms" in c])
        print(f"{'overall':>8} {sum(c['steps'] for _, c in rows):>6} {np.percentile(allerr, 50):7.2f} "
              f"{np.percentile(allerr, 99):7.2f} {allerr.max():7.2f} {max(c['longest_ms'] for _, c in rows):8.1f} "
              f"{max(c['first_max_ms'] for _, c in rows):10.2f} {sum(c['missed'] for _, c in rows):>6}")
    print(f"target: p99 <= {target_ms:g} ms and 0 missed ticks in every episode: {'MET' if ok else 'NOT MET'}")
    return ok


def run_cli_recording(dataset: Path, episodes: int, fps: float) -> None:
    cmd = [sys.executable, "-m", "teleop_app.cli", "record", "--mode", "scripted", "--fps", f"{fps:g}",
           "--episodes", str(episodes), "--dataset", str(dataset)]
    print("$", " ".join(cmd[2:]), flush=True)
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:])
        raise SystemExit(f"teleop record failed ({r.returncode})")
    print(f"recorded in {time.monotonic() - t0:.1f} s")


# ---------------------------------------------------------------- the machine's own floor
_FLOOR = r"""
import os, select, sys, time
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    rt = 1
except (AttributeError, PermissionError, OSError):
    rt = 0
period, end, over = float(sys.argv[1]), time.monotonic() + float(sys.argv[2]), []
while time.monotonic() < end:
    t = time.monotonic(); select.select([], [], [], period); over.append(time.monotonic() - t - period)
print(rt, *over)
"""


def wake_floor(seconds: float = 10.0, period: float = 0.0185) -> dict:
    """How late THIS machine wakes a lone single-threaded process (real-time priority where allowed,
    no GIL, no Python threads) from a select() sleep like the loop's: the floor no loop can beat
    without spinning. The loop spins its last 1.5 ms (teleop_app/loop.py SPIN_S), so only wake-ups later
    than that can land on a tick."""
    r = subprocess.run([sys.executable, "-c", _FLOOR, str(period), str(seconds)], capture_output=True,
                       text=True, check=True)
    rt, *xs = r.stdout.split()
    ov = np.array([float(x) for x in xs]) * 1e3
    return {"realtime": rt == "1", "n": len(ov), "p50_ms": float(np.median(ov)),
            "p99_ms": float(np.percentile(ov, 99)), "max_ms": float(ov.max()),
            "over_spin": int((ov > 1.5).sum())}


# ---------------------------------------------------------------- e-stop latency
class SlowPolicy:
    """Holds the pose; every predict() takes `delay` s (so one call is always in flight)."""

    def __init__(self, profile, fps, delay=0.5):
        from teleop_app.policy.base import PolicyMeta
        self.meta = PolicyMeta(joint_names=profile.joint_names, action_dim=profile.dof, fps=fps,
                               cameras=["front"], chunk_size=50)
        self.delay = delay

    def reset(self):
        pass

    def predict(self, obs):
        time.sleep(self.delay)
        return np.tile(np.asarray(obs["qpos"], float), (self.meta.chunk_size, 1))


def estop_latency(fps: float, n: int, disk_stall_s: float = 0.5, add_stall_s: float = 0.5) -> np.ndarray:
    from recorder import journal
    from teleop_app.policy.runner import PolicyRunner
    from teleop_app.session import Mode, Session, SessionConfig
    from teleop_app.workflow import WorkflowConfig

    real_append = journal.JournalWriter.append_raw

    def stalled_append(self, rec):          # the disk stalls under the writer thread
        if getattr(self, "_bench_n", 0) % 25 == 0:
            time.sleep(disk_stall_s)
        self._bench_n = getattr(self, "_bench_n", 0) + 1
        return real_append(self, rec)
    journal.JournalWriter.append_raw = stalled_append
    lat = []
    with tempfile.TemporaryDirectory() as d:
        wf = WorkflowConfig(countdown_s=0, reset_s=0, episode_s=0, target_episodes=10 ** 6)
        s = Session(SessionConfig(dataset=d, fps=fps, use_gamepad=False, workflow=wf,
                                  policy_stall_s=60.0))
        s.open()
        try:
            real_add = s.store.add
            s.store.add = lambda p: (time.sleep(add_stall_s), real_add(p))[1]
            s.set_policy(PolicyRunner(SlowPolicy(s.profile, fps), lower=s.profile.lower(),
                                      upper=s.profile.upper()), "slow-500ms")
            s.set_mode(Mode.POLICY)
            rnd = random.Random(0)
            for k in range(n):
                s.start_episode()
                time.sleep(0.6 + rnd.random() * 0.5)             # recording, a policy call in flight
                before = len(s.pipeline.estop_latencies)
                threading.Thread(target=s.estop, args=("bench",)).start()
                t_end = time.monotonic() + 5
                while len(s.pipeline.estop_latencies) == before and time.monotonic() < t_end:
                    time.sleep(0.001)
                if len(s.pipeline.estop_latencies) > before:
                    lat.append(s.pipeline.estop_latencies[-1])
                s.keep()
                s.reset_estop()
                time.sleep(0.2)
        finally:
            s.close()
            journal.JournalWriter.append_raw = real_append
    return np.array(lat)


# ---------------------------------------------------------------- policy load / run cadence
def _cadence(loop) -> dict:
    st = loop.stats()
    return {"ticks": st.ticks, "p50_ms": st.p50_err_ms, "p99_ms": st.p99_err_ms, "max_ms": st.max_err_ms,
            "missed": st.missed, "realtime": st.realtime}


def policy_way(way: str, run_s: float, fps: float = 10.0) -> dict:
    """One way ('inproc' | 'child') in this process: cadence during the load and during the run."""
    from teleop_app.session import Mode, PolicyState, Session, SessionConfig
    with tempfile.TemporaryDirectory() as d:
        s = Session(SessionConfig(dataset=d, fps=fps, use_gamepad=False)).open()
        try:
            time.sleep(2.0)                                     # warm up
            s.loop.reset_stats()
            t0 = time.monotonic()
            s.load_policy({"source": "demo", "chunk_mode": "smooth", "in_process": way == "inproc"})
            while s.status.policy_state not in (PolicyState.READY, PolicyState.ERROR):
                if time.monotonic() - t0 > 300:
                    raise SystemExit("the demo policy did not load within 300 s")
                time.sleep(0.02)
            load_s = time.monotonic() - t0
            if s.status.policy_state != PolicyState.READY:
                raise SystemExit(f"load failed: {list(s.messages)[-2:]}")
            time.sleep(1.0)
            load = {**_cadence(s.loop), "load_s": load_s}
            s.set_mode(Mode.POLICY)
            time.sleep(0.5)
            s.loop.reset_stats()
            time.sleep(run_s)
            run = _cadence(s.loop)
            r = s.policy_runner.stats
            lat = np.asarray(r.latencies[-200:], float) * 1e3
            run.update(inferences=r.inferences, infer_p50_ms=float(np.median(lat)) if len(lat) else 0.0,
                       holds=r.holds, mode=s.status.mode.value)
            torch_here = "torch" in sys.modules
        finally:
            s.close()
    return {"way": way, "load": load, "run": run, "torch_in_control_process": torch_here}


def bench_policy(run_s: float) -> bool:
    import json
    rows = []
    for way in ("inproc", "child"):
        cmd = [sys.executable, __file__, "--policy-way", way, "--run-s", f"{run_s:g}"]
        env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode != 0 or not line:
            print(r.stdout[-1500:], r.stderr[-1500:])
            raise SystemExit(f"policy way {way} failed ({r.returncode})")
        rows.append(json.loads(line[-1][7:]))
    print(f"{'way':>16} {'phase':>5} {'ticks':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'missed':>6}  notes")
    names = {"inproc": "in-process (old)", "child": "child process"}
    for row in rows:
        for ph in ("load", "run"):
            c = row[ph]
            note = (f"load {c['load_s']:.1f} s" if ph == "load" else
                    f"{c['inferences']} inferences, median {c['infer_p50_ms']:.0f} ms, mode {c['mode']}")
            print(f"{names[row['way']]:>16} {ph:>5} {c['ticks']:>6} {c['p50_ms']:7.2f} {c['p99_ms']:7.2f} "
                  f"{c['max_ms']:7.2f} {c['missed']:>6}  {note}")
        print(f"{'':>16} torch imported in the control process: {row['torch_in_control_process']}; "
              f"loop SCHED_FIFO: {row['run']['realtime']}")
    return not rows[-1]["torch_in_control_process"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--fps", type=float, default=50.0)
    ap.add_argument("--estops", type=int, default=10)
    ap.add_argument("--read", help="only print the cadence of an existing dataset")
    ap.add_argument("--skip-estop", action="store_true")
    ap.add_argument("--skip-cadence", action="store_true")
    ap.add_argument("--floor-s", type=float, default=10.0, help="seconds of the machine wake-up floor (0: skip)")
    ap.add_argument("--policy", action="store_true", help="only the policy load/run cadence (in-process vs "
                    "child inference process)")
    ap.add_argument("--run-s", type=float, default=20.0, help="--policy: seconds of policy run measured")
    ap.add_argument("--policy-way", choices=["inproc", "child"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.policy_way:
        import json
        print("RESULT " + json.dumps(policy_way(a.policy_way, a.run_s)), flush=True)
        return 0
    if a.policy:
        print(f"== 10 Hz loop while the demo policy loads and runs ({a.run_s:g} s): lateness vs deadline ==")
        return 0 if bench_policy(a.run_s) else 1
    if a.read:
        return 0 if print_cadence(dataset_cadence(a.read)) else 1
    ok = True
    if a.floor_s > 0:
        f = wake_floor(a.floor_s)
        print(f"== this machine's wake-up floor: a lone {'SCHED_FIFO ' if f['realtime'] else ''}process sleeping "
              f"18.5 ms in select(), {f['n']} times ==\noversleep p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, "
              f"max {f['max_ms']:.2f} ms; {f['over_spin']} longer than the loop's 1.5 ms spin\n")
    if not a.skip_cadence:
        with tempfile.TemporaryDirectory() as d:
            ds = Path(d) / "ds"
            run_cli_recording(ds, a.episodes, a.fps)
            print("\n== cadence from the recorded files (per-tick timestamps) ==")
            ok &= print_cadence(dataset_cadence(ds))
    if not a.skip_estop:
        print(f"\n== e-stop latency at {a.fps:g} Hz: 500 ms policy call in flight, writer disk stalls 0.5 s, "
              f"store.add stall 0.5 s; {a.estops} e-stops ==")
        lat = estop_latency(a.fps, a.estops) * 1e3
        target = 1e3 / a.fps + 2.0
        if len(lat):
            print(f"request -> first held command: median {np.median(lat):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, "
                  f"max {lat.max():.2f} ms (n={len(lat)}); target <= {target:.1f} ms: "
                  f"{'MET' if lat.max() <= target else 'NOT MET'}")
            ok &= bool(lat.max() <= target)
        else:
            print("no e-stop was observed")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
