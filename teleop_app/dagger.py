"""A measured HG-DAgger loop in the simulated workcell.

    res = run_dagger("/tmp/dagger", DaggerConfig(tasks=["pick_red"], demos_per_task=5, rounds=2))

Round 0 trains a deliberately weak policy (few scripted demos, short training). Each round then
  1. evaluates the policy on `eval_per_task` unseen scenes per task (seeds from EVAL_SEED0, never
     used for demos or corrections): success with 95 % Wilson intervals, and the policy's
     per-step uncertainty (chunk disagreement), to see whether it predicts failure;
  2. rolls the policy out on fresh training scenes with a simulated operator: the sim's scripted
     expert watches every tick and TAKES OVER (TakeoverSource, the same one the GUI uses) when the
     policy's commanded TCP drifts more than `drift_m` from the expert's for `patience` ticks, drives
     `correction_steps` ticks, and hands back; every rollout is recorded with per-step
     `intervention` flags;
  3. retrains (resuming the checkpoint) on demos + corrections with `intervention_weight`: the
     policy's own actions are dropped, corrections weighted.
Everything runs through the one ControlPipeline on the sim clock, through the safety layer.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from teleop_app.human import TakeoverSource
from teleop_app.policy.uncertainty import auroc
from teleop_app.sources import BaseSource, PolicySource, PolicyStopped

TRAIN_SEED0 = 500_000           # correction scenes: far from demo seeds (0..) and eval seeds (1_000_000..)
MAX_STEPS = {"pick_red": 100, "pick_blue": 100, "red_in_bowl": 160}


@dataclass
class DaggerConfig:
    tasks: list[str] = field(default_factory=lambda: ["pick_red", "pick_blue"])
    demos_per_task: int = 5
    rounds: int = 2                  # DAgger rounds after the initial policy
    rollouts_per_task: int = 10      # correction rollouts per task per round
    eval_per_task: int = 20
    train_steps: int = 400           # initial (weak) training, in optimizer steps (load-independent)
    retrain_steps: int = 300         # added per round (resumed checkpoint)
    max_minutes: float | None = None # optional wall-clock cap per training call
    drift_m: float = 0.02            # TCP distance between policy and expert commands that counts as drift
    patience: int = 3                # ticks of drift before the operator takes over
    correction_steps: int = 12       # ticks the operator drives per takeover
    intervention_weight: float = 2.0
    image_size: int = 64
    cameras: tuple[str, ...] = ("front", "wrist")
    fps: float = 10.0
    threads: int = 2
    batch_size: int = 32
    lr: float = 5e-4
    seed: int = 0
    physics: bool = False            # demos, corrections and evaluation on one sim: the kinematic fast mode
    #                                  (the measured rounds in docs were taken on it); True: MuJoCo


class ExpertOperator(BaseSource):
    """The sim's scripted expert as a simulated operator: one plan per episode, asked exactly once
    per tick (its waypoint progress follows the arm whoever drives), so advice is consistent."""
    name = "expert"

    def __init__(self, workcell, seed: int, period: float):
        from drivers.sim import ScriptedExpert
        self.expert = ScriptedExpert(workcell, seed=seed, dt=period)
        self.expert.reset()
        self._t: float | None = None
        self._a: np.ndarray | None = None

    def replan(self) -> None:
        """Plan afresh from the scene as it is now (the object may have been pushed while the policy
        drove): the physics expert otherwise keeps the plan it made at the episode's start."""
        steps = self.expert.steps
        self.expert.reset()
        self.expert.steps = steps
        self._t = None

    def advise(self, ctx) -> np.ndarray:
        if self._t != ctx.now:
            self._t, self._a = ctx.now, np.asarray(self.expert.act(ctx.q), float)
        return self._a

    def command(self, ctx):
        return self.advise(ctx)


class DriftTrigger:
    """Take over when the policy's command drifts from the expert's (TCP distance, or the gripper
    going the other way) for `patience` ticks; hand back after `correction_steps` ticks."""

    def __init__(self, operator: ExpertOperator, fk: Callable, drift_m: float, patience: int,
                 correction_steps: int, replan: Callable[[], bool] | None = None):
        self.op, self.fk = operator, fk
        self.drift_m, self.patience, self.correction_steps = drift_m, patience, correction_steps
        self.replan = replan          # -> True: the operator replans from the scene as it is when taking over
        self._over = 0
        self._driving = 0
        self.drifts: list[float] = []

    def drift(self, ctx, a) -> float:
        e = self.op.advise(ctx)
        p = ctx.base if a is None else np.asarray(a, float)      # a holding policy is drifting too
        d = float(np.linalg.norm(self.fk(p)[:3, 3] - self.fk(e)[:3, 3]))
        if abs(p[-1] - e[-1]) > 0.5:
            d += self.drift_m                                    # closing when it should open (or not)
        return d

    def trigger(self, ctx, a) -> bool:
        d = self.drift(ctx, a)
        self.drifts.append(d)
        self._over = self._over + 1 if d > self.drift_m else 0
        if self._over >= self.patience:
            self._over, self._driving = 0, 0
            if self.replan is not None and self.replan():
                self.op.replan()
            return True
        return False

    def release(self, ctx, proposal) -> bool:
        self._driving += 1
        return self._driving > self.correction_steps


class SimBench:
    """The sim workcell, cameras and one pipeline, reused for every episode."""

    def __init__(self, cfg: DaggerConfig):
        from drivers.sim import SimCamera, SimConfig, SimRobot, Workcell
        from drivers.sim.kinematics import fk
        from teleop_app.pipeline import ControlPipeline
        from teleop_app.profiles import load_profile
        from teleop_app.safety import SafetyLayer
        self.cfg = cfg
        self.prof = load_profile("sim7")
        self.period = 1.0 / cfg.fps
        s = cfg.image_size
        self.wc = Workcell(SimConfig(seed=cfg.seed, task=cfg.tasks[0], width=s, height=s, physics=cfg.physics))
        self.robot = SimRobot(self.wc, period=self.period, realtime=False)
        self.robot.connect()
        views = {c.name: c.view for c in self.prof.cameras}
        self.cams = {n: SimCamera(self.wc, name=n, view=views.get(n, n), width=s, height=s, realtime=False)
                     for n in cfg.cameras}
        for c in self.cams.values():
            c.connect()
        self.fk = lambda q: fk(np.asarray(q)[:7])
        self.safety = SafetyLayer.from_profile(self.prof, self.period, fk=self.fk)
        self.pipe = ControlPipeline(self.robot, self.cams, self.safety, self.period, profile=self.prof,
                                    workcell=self.wc, clock="sim")

    def close(self) -> None:
        for c in self.cams.values():
            c.disconnect()
        self.robot.disconnect()

    def episode(self, runner, task: str, seed: int, *, operator: bool, writer=None) -> dict:
        """One rollout (the policy, optionally watched by the simulated operator) -> summary."""
        with self.wc.lock:
            self.wc.reset(seed=seed, task=task)
        cfg = self.cfg
        r = takeover_episode(self.pipe, self.wc, runner, list(self.cams), self.fk, self.period, seed,
                             max_steps=MAX_STEPS.get(task, 150), operator=operator, drift_m=cfg.drift_m,
                             patience=cfg.patience, correction_steps=cfg.correction_steps, writer=writer)
        return {"task": task, **r}


def takeover_episode(pipe, wc, runner, cameras: list[str], fk: Callable, period: float, seed: int, *,
                     max_steps: int, operator: bool, drift_m: float = 0.02, patience: int = 3,
                     correction_steps: int = 12, writer=None, replan: bool = False) -> dict:
    """One rollout of `runner` on the workcell's current scene (reset by the caller) through `pipe`,
    optionally watched by the simulated operator (the sim's expert through TakeoverSource, as in the
    GUI); recorded into `writer` (kept whatever the outcome) when given -> summary.
    replan: on each takeover the expert plans afresh from the scene as it is, unless the target is
    already in the gripper (physics scenes, where the policy may have pushed the object)."""
    from teleop_app.pipeline import finish_writer, run_sim_episode
    pipe.ctx.instruction = wc.instruction
    pipe.ctx.seed = seed
    pipe.rebase(pipe.robot.get_observation().position)
    auto = PolicySource(runner, on_error="raise", stall_s=None, strict_cameras=list(cameras))
    if operator:
        op = ExpertOperator(wc, seed, period)
        again = None
        if replan:
            def again() -> bool:
                return wc.grasped() != wc.scene.target.name
        trig = DriftTrigger(op, fk, drift_m, patience, correction_steps, replan=again)
        src = TakeoverSource(auto, op, stick_threshold=None, trigger=trig.trigger, release=trig.release,
                             keep_auto_running=True)
    else:
        src = TakeoverSource(auto, BaseSource(), stick_threshold=None)
    if writer is not None:
        pipe.recorder.begin(writer)
    flags, unc = [], []

    def on_step(k, res):
        flags.append(bool(src.intervention))
        unc.append(float(src.uncertainty))
    reason = "timeout"
    try:
        steps, reason = run_sim_episode(pipe, src, max_steps=max_steps, on_step=on_step,
                                        done=lambda res: bool(wc.success()))
    except PolicyStopped as e:
        steps, reason = len(flags), e.reason
    path = None
    if writer is not None:
        path = finish_writer(*pipe.recorder.end(), success=-1)   # kept whatever the outcome: corrections count
    ok = bool(wc.success())
    u = [x for x, f in zip(unc, flags) if not f and math.isfinite(x)]
    return {"seed": seed, "success": ok, "steps": steps, "reason": "success" if ok else reason,
            "corrected_steps": int(sum(flags)), "takeovers": src.takeovers,
            "uncertainty_mean": float(np.mean(u)) if u else float("nan"),
            "uncertainty_max": float(np.max(u)) if u else float("nan"), "episode": str(path) if path else None}


def _runner(ckpt: Path, prof, threads: int):
    from teleop_app.policy.base import load_policy
    from teleop_app.policy.runner import PolicyRunner
    pol = load_policy(str(ckpt), threads=threads)
    return PolicyRunner(pol, "ensemble", lower=prof.lower(), upper=prof.upper())


def evaluate_round(bench: SimBench, ckpt: Path, cfg: DaggerConfig, progress=None) -> dict:
    from teleop_app.policy.evaluate import EVAL_SEED0
    from teleop_app.policy.metrics import wilson
    runner = _runner(ckpt, bench.prof, cfg.threads)
    eps = []
    try:
        for i in range(cfg.eval_per_task):
            for task in cfg.tasks:
                eps.append(bench.episode(runner, task, EVAL_SEED0 + i, operator=False))
                if progress:
                    progress(f"  eval {len(eps)}/{cfg.eval_per_task * len(cfg.tasks)} {task} "
                             f"{'ok' if eps[-1]['success'] else 'FAIL'}")
    finally:
        runner.close()
    per_task = {}
    for t in cfg.tasks:
        rs = [e for e in eps if e["task"] == t]
        s = sum(e["success"] for e in rs)
        per_task[t] = {"success": s, "n": len(rs), "rate": s / len(rs), "ci95": list(wilson(s, len(rs)))}
    s = sum(e["success"] for e in eps)
    fail_u = [e["uncertainty_mean"] for e in eps if not e["success"] and math.isfinite(e["uncertainty_mean"])]
    ok_u = [e["uncertainty_mean"] for e in eps if e["success"] and math.isfinite(e["uncertainty_mean"])]
    return {"per_task": per_task, "overall": {"success": s, "n": len(eps), "rate": s / len(eps),
                                              "ci95": list(wilson(s, len(eps)))},
            "uncertainty": {"mean_failed": float(np.mean(fail_u)) if fail_u else float("nan"),
                            "mean_succeeded": float(np.mean(ok_u)) if ok_u else float("nan"),
                            "n_failed": len(fail_u), "n_succeeded": len(ok_u),
                            "auroc_failure": auroc(fail_u, ok_u)},
            "episodes": eps}


def collect_round(bench: SimBench, ckpt: Path, store, cfg: DaggerConfig, rnd: int, progress=None) -> dict:
    """Policy rollouts on fresh training scenes with the simulated operator, recorded into `store`."""
    from recorder.schema import EpisodeMeta
    from recorder.writer import EpisodeWriter
    from teleop_app import __version__
    runner = _runner(ckpt, bench.prof, cfg.threads)
    eps = []
    s = cfg.image_size
    try:
        for i in range(cfg.rollouts_per_task):
            for task in cfg.tasks:
                seed = TRAIN_SEED0 + 1000 * rnd + i
                bench.wc.reset(seed=seed, task=task)
                meta = EpisodeMeta(instruction=bench.wc.instruction, fps=cfg.fps, robot=bench.prof.name,
                                   joint_names=bench.prof.joint_names, mode="policy", operator="sim-expert",
                                   software_version=__version__,
                                   extra={"task": task, "seed": int(seed), "dagger_round": rnd, "clock": "sim",
                                          "sim": bench.wc.sim})
                w = EpisodeWriter(store.new_episode_path(), meta, cameras={n: (s, s) for n in bench.cams},
                                  dof=bench.prof.dof, jpeg=False)
                e = bench.episode(runner, task, seed, operator=True, writer=w)
                if e["episode"]:
                    store.add(e["episode"])
                eps.append(e)
                if progress:
                    progress(f"  collect {len(eps)}/{cfg.rollouts_per_task * len(cfg.tasks)} {task}: "
                             f"{e['corrected_steps']} corrected steps, {e['takeovers']} takeovers")
    finally:
        runner.close()
    return correction_totals(eps)


def correction_totals(eps: list[dict]) -> dict:
    """Totals of corrected rollouts (takeover_episode summaries)."""
    return {"rollouts": len(eps), "corrected_steps": sum(e["corrected_steps"] for e in eps),
            "takeovers": sum(e["takeovers"] for e in eps),
            "steps": sum(e["steps"] for e in eps),
            "success_with_help": sum(e["success"] for e in eps)}


def run_dagger(out, cfg: DaggerConfig | None = None, progress: Callable[[str], None] | None = print,
               fresh: bool = False) -> dict:
    """The whole loop; writes OUT/dagger.json and returns it (rounds: eval + collection figures)."""
    from recorder.store import EpisodeStore
    from teleop_app.policy.train import train
    from teleop_app.scripted import record_scripted
    cfg = cfg or DaggerConfig()
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    data = out / "data"
    say = progress or (lambda msg: None)
    t_all = time.monotonic()
    if not (data / "store.json").exists():
        t0 = time.monotonic()
        record_scripted(data, cfg.tasks, cfg.demos_per_task, seed=cfg.seed, fps=cfg.fps, cameras=cfg.cameras,
                        image_size=cfg.image_size, jpeg=False, physics=cfg.physics)
        say(f"recorded {cfg.demos_per_task} demos per task in {time.monotonic() - t0:.0f} s")
    bench = SimBench(cfg)
    result = {"config": asdict(cfg), "rounds": []}
    steps = cfg.train_steps
    ckpt = out / "round0.pt"
    try:
        for rnd in range(cfg.rounds + 1):
            t0 = time.monotonic()
            tr = train(data, ckpt, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, max_minutes=cfg.max_minutes,
                       threads=cfg.threads, cameras=list(cfg.cameras), image_size=(cfg.image_size,) * 2,
                       seed=cfg.seed, intervention_weight=cfg.intervention_weight if rnd else None)
            say(f"round {rnd}: trained to step {tr.step} ({tr.minutes:.1f} min total, {tr.episodes} episodes, "
                f"{tr.samples} samples) in {time.monotonic() - t0:.0f} s")
            ev = evaluate_round(bench, ckpt, cfg, progress=None)
            row = {"round": rnd, "train_steps": tr.step, "train_minutes": round(tr.minutes, 2),
                   "train_episodes": tr.episodes, "eval": {k: v for k, v in ev.items() if k != "episodes"},
                   "eval_episodes": ev["episodes"]}
            o = ev["overall"]
            say(f"round {rnd}: success {o['success']}/{o['n']} ({o['rate']:.0%}, CI {o['ci95'][0]:.0%}-"
                f"{o['ci95'][1]:.0%}) " + ", ".join(f"{t} {d['success']}/{d['n']}" for t, d in ev["per_task"].items()))
            if rnd < cfg.rounds:
                store = EpisodeStore.open(data)
                col = collect_round(bench, ckpt, store, cfg, rnd, progress=None)
                row["collect"] = col
                say(f"round {rnd}: {col['rollouts']} corrected rollouts, {col['corrected_steps']} corrected steps "
                    f"of {col['steps']} ({col['takeovers']} takeovers)")
                nxt = out / f"round{rnd + 1}.pt"
                shutil.copyfile(ckpt, nxt)        # resume from this round's weights and optimizer
                ckpt = nxt
                steps += cfg.retrain_steps
            result["rounds"].append(row)
            (out / "dagger.json").write_text(json.dumps(result, indent=1, default=float))
    finally:
        bench.close()
    result["wall_s"] = round(time.monotonic() - t_all, 1)
    (out / "dagger.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def format_curve(result: dict) -> str:
    """The DAgger curve as a table: success per round (CI), corrected steps, uncertainty vs failure."""
    tasks = result["config"]["tasks"]
    lines = ["round  train_steps  " + "  ".join(f"{t:>16}" for t in tasks) + "   overall (95% CI)      corrected steps"
             "   uncert. failed/succeeded (AUROC)"]
    for r in result["rounds"]:
        ev = r["eval"]
        cells = [f"{ev['per_task'][t]['success']:>2}/{ev['per_task'][t]['n']:<2} "
                 f"({ev['per_task'][t]['ci95'][0]:.0%}-{ev['per_task'][t]['ci95'][1]:.0%})" for t in tasks]
        o, u = ev["overall"], ev["uncertainty"]
        col = r.get("collect")
        corr = f"{col['corrected_steps']:>5} / {col['steps']:<5}" if col else "      -      "
        lines.append(f"{r['round']:>5}  {r['train_steps']:>11d}  " + "  ".join(f"{c:>16}" for c in cells)
                     + f"   {o['success']:>2}/{o['n']:<2} ({o['ci95'][0]:.0%}-{o['ci95'][1]:.0%})   {corr}"
                     + f"   {u['mean_failed']:.4f}/{u['mean_succeeded']:.4f} ({u['auroc_failure']:.2f})")
    return "\n".join(lines)
