"""Closed-loop evaluation in the simulated workcell, with automatic success and optional recording.

    res = run_sim_rollouts(load_policy("runs/vla.pt"), ["pick_red", "pick_blue"], n_per_task=20)
    print(res.summary())

Seeds default to 1_000_000 + i: far from the seeds scripted demos use (0, 1, 2, ...), so every
scene is unseen. Each rollout can be recorded as an episode (mode "policy") for review or DAgger.
Each rollout also carries the policy's per-step uncertainty (chunk disagreement, uncertainty.py) in
notes["uncertainty"]; RolloutResults.uncertainty() says whether it predicts failure.

The sim: a policy is rolled out on the sim it was trained on when its checkpoint says which
(trained_sim: the shipped demo policy was trained on the kinematic workcell), else on drivers.sim's
default (MuJoCo physics); physics=True/False overrides. The results say which (config["sim"]).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .base import Policy, check_compatible
from .metrics import fmt_rate, percentiles_ms, wilson
from .runner import PolicyRunner, RolloutResult
from .uncertainty import UncertaintyTrace, failure_prediction

EVAL_SEED0 = 1_000_000
DEFAULT_MAX_STEPS = {"pick_red": 100, "pick_blue": 100, "red_in_bowl": 160}


@dataclass
class RolloutResults:
    rollouts: list[RolloutResult] = field(default_factory=list)
    policy: str = ""
    chunk_mode: str = ""
    config: dict = field(default_factory=dict)
    wall_s: float = 0.0

    # ---- aggregates ------------------------------------------------------------------
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.rollouts))

    def per_task(self) -> dict[str, dict]:
        out = {}
        for t in self.tasks():
            rs = [r for r in self.rollouts if r.task == t]
            labelled = [r for r in rs if r.success is not None]
            s = sum(1 for r in labelled if r.success)
            lo, hi = wilson(s, len(labelled))
            out[t] = {"n": len(labelled), "success": s, "rate": s / len(labelled) if labelled else float("nan"),
                      "ci95": [lo, hi], "instruction": rs[0].instruction,
                      "mean_steps": float(np.mean([r.steps for r in rs]))}
        return out

    def overall(self) -> dict:
        labelled = [r for r in self.rollouts if r.success is not None]
        s = sum(1 for r in labelled if r.success)
        lo, hi = wilson(s, len(labelled))
        return {"n": len(labelled), "success": s, "rate": s / len(labelled) if labelled else float("nan"),
                "ci95": [lo, hi]}

    def latency_ms(self) -> dict:
        return percentiles_ms([x for r in self.rollouts for x in r.latencies])

    def interventions(self) -> dict[str, int]:
        tot: dict[str, int] = {}
        for r in self.rollouts:
            for k, v in r.safety.items():
                tot[k] = tot.get(k, 0) + int(v)
        tot["runner_watchdog_trips"] = sum(r.watchdog_trips for r in self.rollouts)
        tot["nan_or_range_stops"] = sum(1 for r in self.rollouts if r.nan_stop)
        tot["holds"] = sum(r.holds for r in self.rollouts)
        return tot

    def wrong_object(self) -> dict[str, int]:
        """Per pick task: rollouts that lifted the *other* cube (the instruction was not followed)."""
        want = {"pick_red": "red_cube", "pick_blue": "blue_cube"}
        out = {}
        for t in self.tasks():
            if t in want:
                out[t] = sum(1 for r in self.rollouts if r.task == t
                             and r.notes.get("lifted") not in (None, want[t]))
        return out

    def uncertainty(self) -> dict:
        """Does the per-step uncertainty predict failure? (uncertainty.failure_prediction)"""
        return failure_prediction(self.rollouts)

    def failures(self) -> list[str]:
        return [f"{r.task} seed {r.seed}: {r.reason}" for r in self.rollouts
                if r.success is False or r.nan_stop]

    def sim_text(self) -> str:
        """'on the kinematic sim (the one it was trained on)', or '' for results without a recorded sim."""
        sim = self.config.get("sim")
        if not sim:
            return ""
        why = self.config.get("sim_choice", "")
        return f"on the {sim} sim" + (f" ({why})" if why else "")

    def summary(self) -> str:
        lines = [f"policy {self.policy} ({self.chunk_mode})" + (f" {self.sim_text()}" if self.sim_text() else "")]
        for t, d in self.per_task().items():
            lines.append(f"  {t:<12} {fmt_rate(d['success'], d['n'])}  '{d['instruction']}'")
        o = self.overall()
        lines.append(f"  {'overall':<12} {fmt_rate(o['success'], o['n'])}")
        lat = self.latency_ms()
        lines.append(f"  inference latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms (n={lat['n']})")
        wrong = self.wrong_object()
        if wrong:
            lines.append(f"  lifted the wrong cube: {wrong}")
        lines.append(f"  safety/interventions {self.interventions()}")
        lines.append(f"  does uncertainty predict failure? {self.uncertainty()['text']}")
        return "\n".join(lines)

    # ---- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"policy": self.policy, "chunk_mode": self.chunk_mode, "config": self.config,
                "wall_s": self.wall_s, "uncertainty": self.uncertainty(),
                "rollouts": [r.to_dict() for r in self.rollouts]}

    @classmethod
    def from_dict(cls, d: dict) -> "RolloutResults":
        return cls([RolloutResult(**r) for r in d.get("rollouts", [])], d.get("policy", ""),
                   d.get("chunk_mode", ""), d.get("config", {}), float(d.get("wall_s", 0.0)))

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path) -> "RolloutResults":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _lifted(wc) -> str | None:
    """The cube held or resting well above the table at the end, if any."""
    from drivers.sim.render import CUBE
    if wc.grasped():
        return wc.grasped()
    for name, p in wc.objects().items():
        if name != "bowl" and p[2] > CUBE / 2 + 0.03:
            return name
    return None


def trained_sim(policy, source: str | None = None) -> str | None:
    """The sim `policy` was trained on when it records one: "physics" | "kinematic", else None.

    Read from meta.extra["sim"] or, for the shipped demo checkpoint, train["demo"]["sim"]
    ("kinematic workcell (drivers/sim/workcell.py)"); a policy loaded as `source` "demo" whose
    checkpoint info did not travel with it (an inference child) is the demo recipe's."""
    meta_extra = getattr(getattr(policy, "meta", None), "extra", None) or {}
    train = getattr(policy, "train_info", None) or {}
    demo = train.get("demo") if isinstance(train.get("demo"), dict) else {}
    said_all = [meta_extra.get("sim"), train.get("sim"), demo.get("sim")]
    if source == "demo":
        from .demo import RECIPE
        said_all.append(RECIPE.get("sim"))
    for said in said_all:
        if isinstance(said, str):
            low = said.lower()
            if "kinematic" in low:
                return "kinematic"
            if "physics" in low or "mujoco" in low:
                return "physics"
    return None


def choose_sim(policy, physics: bool | None = None) -> tuple[bool, str]:
    """(physics?, why) for evaluating `policy`: as asked, else the sim it was trained on, else the default."""
    from teleop_app.devices import sim_physics
    if physics is not None:
        return bool(physics), "as asked"
    said = trained_sim(policy)
    if said is not None:
        return said == "physics", "the one it was trained on"
    return sim_physics(None), "the default; the policy does not record which sim it was trained on"


def run_sim_rollouts(policy: Policy, tasks: list[str], n_per_task: int, seed0: int = EVAL_SEED0,
                     fps: float | None = None, record_root=None, max_steps: int | dict | None = None,
                     safety: bool = True, chunk_mode: str = "ensemble", async_: bool = False,
                     max_latency: float | None = None, profile: str = "sim7", camera_size: int | None = None,
                     progress: Callable[[int, int, RolloutResult], None] | None = None,
                     policy_name: str = "", physics: bool | None = None, **runner_kw) -> RolloutResults:
    """Roll the policy out n_per_task times per task on seeds seed0, seed0+1, ... (shared across tasks,
    so each task sees the same scenes). With async_ the loop runs in real time (period sleeps), as
    it would on hardware. Every command goes through the profile's SafetyLayer
    (`safety=False` only widens it to the joint limits). Success comes from the sim.
    physics: True MuJoCo, False the kinematic workcell, None the sim the policy was trained on
    (choose_sim)."""
    from drivers.sim import kinematics as kin
    from drivers.sim.robot import SimCamera, SimRobot
    from drivers.sim.tasks import check_tasks
    from drivers.sim.workcell import SimConfig, Workcell
    from teleop_app.pipeline import rollout
    from teleop_app.profiles import load_profile
    from teleop_app.safety import SafetyLayer

    prof = load_profile(profile)
    fps = float(fps or policy.meta.fps or prof.fps)
    period = 1.0 / fps
    check_compatible(policy.meta, prof, fps=fps)
    physics, why = choose_sim(policy, physics)
    check_tasks(tasks, physics)
    h, w = policy.meta.image_size
    if camera_size:
        h = w = int(camera_size)
    wc = Workcell(SimConfig(seed=seed0, task=tasks[0], width=w, height=h, physics=physics))
    robot = SimRobot(wc, period=period, realtime=False)
    robot.connect()
    views = {c.name: c.view for c in prof.cameras}
    cams = {n: SimCamera(wc, name=n, view=views.get(n, n), width=w, height=h) for n in policy.meta.cameras}
    for c in cams.values():
        c.connect()
    fk = (lambda q: kin.fk(np.asarray(q)[:7]))
    if safety:
        layer = SafetyLayer.from_profile(prof, period, fk=fk)
    else:
        layer = SafetyLayer(prof.lower(), prof.upper(), np.full(prof.dof, np.inf))
    runner = PolicyRunner(policy, chunk_mode, async_=async_, max_latency=max_latency,
                          lower=prof.lower(), upper=prof.upper(), **runner_kw)
    store = None
    if record_root is not None:
        from recorder.store import EpisodeStore
        store = EpisodeStore.create(record_root, prof.name, fps, prof.joint_names,
                                    {n: (h, w) for n in cams})
    res = RolloutResults(policy=policy_name or getattr(policy.meta, "kind", ""), chunk_mode=runner.mode,
                         config={"tasks": list(tasks), "n_per_task": n_per_task, "seed0": seed0, "fps": fps,
                                 "safety": safety, "async": async_, "max_latency": max_latency,
                                 "profile": prof.name, "image_size": [h, w],
                                 "runner_mode": runner.mode, "sim": wc.sim, "sim_choice": why})
    total, done = len(tasks) * n_per_task, 0
    t_start = time.monotonic()
    try:
        for i in range(n_per_task):
            for task in tasks:
                seed = seed0 + i
                with wc.lock:
                    wc.reset(seed=seed, task=task)
                steps = (max_steps.get(task, 150) if isinstance(max_steps, dict)
                         else int(max_steps or DEFAULT_MAX_STEPS.get(task, 150)))
                writer = None
                if store is not None:
                    from recorder.schema import EpisodeMeta
                    from recorder.writer import EpisodeWriter
                    meta = EpisodeMeta(instruction=wc.instruction, fps=fps, robot=prof.name,
                                       joint_names=prof.joint_names, mode="policy", operator="policy",
                                       extra={"task": task, "seed": int(seed), "policy": res.policy,
                                              "clock": "sim", "sim": wc.sim})
                    writer = EpisodeWriter(store.new_episode_path(), meta, cameras={n: (h, w) for n in cams},
                                           dof=prof.dof, jpeg=False)
                trace = UncertaintyTrace(runner)
                # async inference only means something against a clock: run those loops in real time
                r = rollout(runner, robot, cams, wc.instruction, layer, max_steps=steps, period=period,
                            success_fn=wc.success, writer=writer, task=task, seed=seed, realtime=async_,
                            workcell=wc, profile=prof, on_step=trace)
                r.notes = {"lifted": _lifted(wc), "uncertainty": trace.summary()}
                if writer is not None:
                    if r.commands_sent == 0:
                        writer.abort()          # stopped before the first command: nothing to keep
                    else:
                        p = writer.finish(success=1 if r.success else 0)
                        store.add(p)
                        r.episode = str(p)
                res.rollouts.append(r)
                done += 1
                if progress:
                    progress(done, total, r)
    finally:
        runner.close()
        robot.disconnect()
    res.wall_s = time.monotonic() - t_start
    return res
