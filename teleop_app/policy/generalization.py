"""Generalization of a policy, measured as VLAs are judged: success per held-out split, per task.

    scenes = split_scenes(["seen", "unseen_objects", "novel_instructions"], n=50, kinds=("pick",))
    res = run_scene_rollouts(load_policy("runs/vla.pt"), scenes)
    print(format_split_table(res))            # success per split with 95% Wilson CI, next to RT-2

Scenes come from the physics workcell's declared splits (drivers/sim/tasks.py: seen objects on new
placements, objects of unseen colour/shape, phrasings never trained, objects named indirectly);
every evaluation scene seed is >= tasks.EVAL_SEED0, so none repeats a training scene. Demos for
training come from the same place (`record_scenes(root, split_scenes(["train"], ...))`), driven by
the sim's expert through the one control pipeline (teleop_app.pipeline), as `teleop record` does.

The held-out visual domain (held_out_style(), domain="held_out") is a renderer style no training run ever draws from:
a dark blue-grey table, an ochre floor, a beige arm and a paler bowl under low, dim, warm side light (domain
randomisation picks tables from wood, grey and dark-bench tones, drivers.sim.render.TABLE_TONES, each draw over 15
levels off this blue-grey in some channel; light from above; the arm's colour never). It stands in for "the real world"
when measuring the gap with and without randomisation/augmentation.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .evaluate import RolloutResults
from .metrics import wilson

# RT-2 (PaLI-X) success rates as quoted in issue 13 (Brohan et al. 2023, real robot)
RT2 = {"seen": 0.97, "unseen_objects": 0.62, "novel_instructions": 0.81, "reasoning": 0.74}
SPLIT_LABELS = {"seen": "seen objects", "unseen_objects": "unseen objects",
                "novel_instructions": "novel instructions", "reasoning": "reasoning",
                "train": "training scenes"}
EVAL_SPLITS = ("seen", "unseen_objects", "novel_instructions", "reasoning")
MAX_STEPS = {"pick": 100, "place_bowl": 160, "place_plate": 160, "push": 160, "stack": 180}
DOMAINS = ("default", "held_out")


def held_out_style():
    """The held-out visual domain (see the module docstring)."""
    from drivers.sim.render import Style, _unit
    return Style(light_dir=_unit([-0.9, 0.7, 0.35]), ambient=0.28, diffuse=0.55, brightness=0.72,
                 table_rgb=(58, 66, 92), floor_rgb=(120, 96, 60), bowl_rgb=(95, 185, 120),
                 arm_rgb=(200, 190, 150))


def split_scenes(splits: Iterable[str], n: int, kinds: tuple[str, ...] = ("pick",), seed: int = 0,
                 confuser: float = 0.0, bowl_near: float = 0.0) -> list:
    """n scenes per split (cycling through kinds), from drivers/sim/tasks.py; confuser: the share of scenes
    given a distractor of the target's colour and another shape, bowl_near: the share with the bowl right
    beside the target (tasks.make_scene)."""
    from drivers.sim.tasks import episodes
    out = []
    for s in splits:
        out += list(episodes(s, n, seed=seed, kinds=tuple(kinds), confuser=confuser, bowl_near=bowl_near))
    return out


def _sim(image_size: int, cameras, fps: float, randomize: bool, profile: str):
    from drivers.sim import Randomization, SimCamera, SimConfig, SimRobot, Workcell
    from drivers.sim.kinematics import fk
    from teleop_app.profiles import load_profile
    from teleop_app.safety import SafetyLayer
    prof = load_profile(profile)
    rnd = Randomization(light=randomize, colors=randomize, camera_jitter=randomize, noise=randomize)
    wc = Workcell(SimConfig(physics=True, width=image_size, height=image_size, randomization=rnd))
    period = 1.0 / fps
    robot = SimRobot(wc, period=period, realtime=False)
    robot.connect()
    views = {c.name: c.view for c in prof.cameras}
    cams = {n: SimCamera(wc, name=n, view=views.get(n, n), width=image_size, height=image_size, realtime=False)
            for n in cameras}
    for c in cams.values():
        c.connect()
    safety = SafetyLayer.from_profile(prof, period, fk=lambda q: fk(np.asarray(q)[:7]))
    return prof, wc, robot, cams, safety, period


def _reset(wc, scene, domain: str) -> None:
    with wc.lock:
        wc.reset(scene=scene)
        if domain == "held_out":
            from drivers.sim.render import Renderer
            wc.renderer = Renderer(held_out_style())


def record_scenes(root, scenes, *, image_size: int = 64, cameras=("front", "wrist"), fps: float = 10.0,
                  randomize: bool = False, jpeg: bool = False, profile: str = "sim7", max_steps: int = 200,
                  perturb: float = 0.0, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Expert demos of the given scenes (physics workcell) into the dataset at root; failed demos dropped.
    randomize: sim domain randomisation (light, colours, camera jitter, noise), as `teleop record --randomize`.
    perturb: the share of scenes whose demo starts with a deliberate detour beside the object and then
    recovers (recorded with the action source "perturbation"; training imitates only the recovery)."""
    from recorder.schema import EpisodeMeta
    from recorder.store import EpisodeStore
    from recorder.writer import EpisodeWriter
    from teleop_app import __version__
    from teleop_app.pipeline import ControlPipeline, finish_writer, run_sim_episode
    from teleop_app.sources import ScriptedSource
    prof, wc, robot, cams, safety, period = _sim(image_size, cameras, fps, randomize, profile)
    root = Path(root)
    store = EpisodeStore.create(root, prof.name, fps, prof.joint_names, {n: (image_size, image_size) for n in cams})
    pipe = ControlPipeline(robot, cams, safety, period, profile=prof, workcell=wc, clock="sim")
    paths, t0 = [], time.monotonic()
    try:
        for i, sc in enumerate(scenes):
            _reset(wc, sc, "default")
            pipe.rebase(robot.get_observation().position)
            pipe.ctx.seed = sc.seed
            meta = EpisodeMeta(instruction=sc.instruction, fps=fps, robot=prof.name, joint_names=prof.joint_names,
                               mode="scripted", operator="scripted-expert", software_version=__version__,
                               extra={"task": sc.kind, "seed": int(sc.seed), "clock": "sim", "split": sc.split,
                                      "target": sc.target.name, "randomized": bool(randomize), "physics": True,
                                      "sim": wc.sim, "perturb": float(perturb)})
            w = EpisodeWriter(store.new_episode_path(), meta, cameras={n: (image_size, image_size) for n in cams},
                              dof=prof.dof, jpeg=jpeg)
            pipe.recorder.begin(w)
            src = ScriptedSource(only_recording=False, perturb=perturb)
            run_sim_episode(pipe, src, max_steps=max_steps, t0=t0 + i * max_steps * period,
                            done=lambda res: src.done)
            _, left = pipe.recorder.end()
            if wc.success():
                p = finish_writer(w, left, success=1)
                if p is not None:
                    store.add(p)
                    paths.append(p)
            else:
                w.abort()
            if progress:
                progress(i + 1, len(scenes))
    finally:
        robot.disconnect()
    return paths


def collect_corrections(policy, scenes, root, *, randomize: bool = True, drift_m: float = 0.02,
                        patience: int = 3, correction_steps: int = 12, profile: str = "sim7",
                        dagger_round: int = 1, progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """HG-DAgger on physics scenes: roll `policy` out on `scenes` (training-split scenes the demos never
    used) with the sim's expert as the operator who takes over when the policy drifts (teleop_app.dagger,
    replanning from the scene as it is), and record every rollout, with its per-step intervention flags,
    into the dataset at root (its store must exist: the demos'). `teleop train --intervention-weight W`
    then trains on demos + corrections. -> totals (rollouts, corrected steps, takeovers, success with help)."""
    from recorder.schema import EpisodeMeta
    from recorder.store import EpisodeStore
    from recorder.writer import EpisodeWriter
    from teleop_app import __version__
    from teleop_app.dagger import correction_totals, takeover_episode
    from teleop_app.pipeline import ControlPipeline
    from .runner import PolicyRunner
    from drivers.sim.kinematics import fk
    h = policy.meta.image_size[0]
    fps = float(policy.meta.fps or 10.0)
    prof, wc, robot, cams, safety, period = _sim(h, policy.meta.cameras, fps, randomize, profile)
    store = EpisodeStore.open(Path(root))
    pipe = ControlPipeline(robot, cams, safety, period, profile=prof, workcell=wc, clock="sim")
    runner = PolicyRunner(policy, "ensemble", lower=prof.lower(), upper=prof.upper())
    eps = []
    try:
        for i, sc in enumerate(scenes):
            _reset(wc, sc, "default")
            meta = EpisodeMeta(instruction=sc.instruction, fps=fps, robot=prof.name, joint_names=prof.joint_names,
                               mode="policy", operator="sim-expert", software_version=__version__,
                               extra={"task": sc.kind, "seed": int(sc.seed), "clock": "sim", "split": sc.split,
                                      "target": sc.target.name, "randomized": bool(randomize), "physics": True,
                                      "sim": wc.sim, "dagger_round": int(dagger_round)})
            w = EpisodeWriter(store.new_episode_path(), meta, cameras={n: (h, h) for n in cams},
                              dof=prof.dof, jpeg=False)
            e = takeover_episode(pipe, wc, runner, list(cams), lambda q: fk(np.asarray(q)[:7]), period, sc.seed,
                                 max_steps=MAX_STEPS.get(sc.kind, 160), operator=True, drift_m=drift_m,
                                 patience=patience, correction_steps=correction_steps, writer=w, replan=True)
            if e["episode"]:
                store.add(e["episode"])
            eps.append(e)
            if progress:
                progress(i + 1, len(scenes), e)
    finally:
        runner.close()
        robot.disconnect()
    return correction_totals(eps)


def _sim_choice(policy) -> str:
    """Why the physics sim: its splits exist only there; says so when the policy was trained elsewhere."""
    from .evaluate import trained_sim
    said = trained_sim(policy)
    if said in (None, "physics"):
        return "the splits are physics scenes"
    return f"the splits are physics scenes; the policy was trained on the {said} sim"


def run_scene_rollouts(policy, scenes, *, domain: str = "default", chunk_mode: str = "ensemble",
                       profile: str = "sim7", policy_name: str = "", max_steps: int | None = None,
                       progress: Callable[[int, int, object], None] | None = None) -> RolloutResults:
    """Closed-loop rollouts of `policy` on physics scenes (every command through the profile's safety
    layer); each RolloutResult carries notes {"split", "target", "domain", "outcome", "colour_twin",
    "uncertainty" (the per-tick chunk disagreement, as evaluate.py's rollouts: does it predict failure?),
    "neighbour_turn" (the expert's grasp turns away from the bowl or another object: expert.grasp_turned_by_neighbours)};
    task = the scene's kind. max_steps: per rollout (default MAX_STEPS of the scene's kind)."""
    from drivers.sim.expert import grasp_turned_by_neighbours
    from teleop_app.pipeline import rollout
    from .base import check_compatible
    from .runner import PolicyRunner
    from .uncertainty import UncertaintyTrace
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    h, w = policy.meta.image_size
    fps = float(policy.meta.fps or 10.0)
    prof, wc, robot, cams, safety, period = _sim(h, policy.meta.cameras, fps, False, profile)
    check_compatible(policy.meta, prof, fps=fps)
    runner = PolicyRunner(policy, chunk_mode, lower=prof.lower(), upper=prof.upper())
    res = RolloutResults(policy=policy_name or getattr(policy.meta, "kind", ""), chunk_mode=chunk_mode,
                         config={"scenes": len(scenes), "domain": domain, "physics": True, "sim": wc.sim,
                                 "sim_choice": _sim_choice(policy), "fps": fps,
                                 "profile": prof.name, "image_size": [h, w],
                                 "splits": sorted({s.split for s in scenes})})
    t0 = time.monotonic()
    try:
        for i, sc in enumerate(scenes):
            _reset(wc, sc, domain)
            turn = grasp_turned_by_neighbours(wc)
            trace, unc = wc.trace(), UncertaintyTrace(runner)

            def on_step(k, sent, trace=trace, unc=unc):
                trace.observe()
                unc(k, sent)
            r = rollout(runner, robot, cams, sc.instruction, safety, max_steps=max_steps or MAX_STEPS.get(sc.kind, 160),
                        period=period, success_fn=wc.success, task=sc.kind, seed=sc.seed, workcell=wc,
                        profile=prof, on_step=on_step)
            r.notes = {"split": sc.split, "target": sc.target.name, "domain": domain,
                       "outcome": trace.verdict(r.success), "colour_twin": sc.colour_twin is not None,
                       "neighbour_turn": turn, "uncertainty": unc.summary()}
            res.rollouts.append(r)
            if progress:
                progress(i + 1, len(scenes), r)
    finally:
        runner.close()
        robot.disconnect()
    res.wall_s = time.monotonic() - t0
    return res


def _first_frames(policy, scenes, domain: str, profile: str):
    """Yields (workcell, scene, observation) for each scene as reset, the observation as the policy gets it."""
    h = policy.meta.image_size[0]
    _prof, wc, robot, cams, _safety, _period = _sim(h, policy.meta.cameras, 10.0, False, profile)
    try:
        for sc in scenes:
            _reset(wc, sc, domain)
            yield wc, sc, {"images": {n: c.read_latest().image for n, c in cams.items()}, "qpos": wc.qpos(),
                           "instruction": sc.instruction}
    finally:
        robot.disconnect()


def first_observations(policy, scenes, *, domain: str = "default", profile: str = "sim7") -> list[dict]:
    """Each scene's first observation (camera images at the policy's size, joints, instruction)."""
    return [obs for _wc, _sc, obs in _first_frames(policy, scenes, domain, profile)]


def _first_frame_check(policy, scenes, locate, domain: str, profile: str) -> dict[str, list[tuple[bool, float]]]:
    """split -> [(the object nearest where the policy points is the target, its distance from the target)]
    over each scene's first frame; locate(wc, obs) -> {object name: distance} for the scene as reset."""
    per: dict[str, list[tuple[bool, float]]] = {}
    for wc, sc, obs in _first_frames(policy, scenes, domain, profile):
        d = locate(wc, obs)
        per.setdefault(sc.split, []).append((min(d, key=d.get) == sc.target.name, d[sc.target.name]))
    return per


def keypose_check(policy, scenes, *, domain: str = "default", profile: str = "sim7") -> dict[str, dict]:
    """Where a policy with a keypose head (`teleop train --keypose-weight`) thinks the grasp is, from each
    scene's first frame, against where the target really is: split -> {n, nearest_right (the object nearest
    the predicted point is the target), median_mm / within_15mm / within_30mm (horizontal distance to the
    target's centre)}. Separates "looked at the wrong object" from "found it, then failed to grasp it"."""
    def locate(wc, obs):
        p = policy.predict_keypose(obs)
        if p is None:
            raise ValueError("this policy has no keypose head (train it with --keypose-weight)")
        obj = wc.objects()
        return {n: float(np.linalg.norm(obj[n][:2] - p[:2])) for n in wc.object_specs()}

    out = {}
    for sp, rows in _first_frame_check(policy, scenes, locate, domain, profile).items():
        e = np.array([r[1] for r in rows])
        out[sp] = {"n": len(rows), "nearest_right": sum(r[0] for r in rows),
                   "median_mm": round(1000 * float(np.median(e)), 1),
                   "within_15mm": int((e <= 0.015).sum()), "within_30mm": int((e <= 0.03).sum())}
    return out


def target_check(policy, scenes, *, domain: str = "default", profile: str = "sim7") -> dict[str, dict]:
    """Where a policy trained with the target loss (`teleop train --target-weight`) sees the named object in
    the front camera, from each scene's first frame, against where it is: split -> {n, nearest_right (the
    object whose image position is nearest the predicted point is the target), median_px / within_2px
    (image distance to the target's centre at the model's image size)}."""
    from drivers.sim.render import front_camera
    if "front" not in policy.meta.cameras:
        raise ValueError("target_check reads the front camera; this policy has none")
    h = policy.meta.image_size[0]

    def locate(wc, obs):
        seen = policy.predict_target(obs)
        if seen is None:
            raise ValueError("this policy has no target keypoint (train it with --target-weight)")
        names = list(wc.object_specs())
        uv = front_camera(wc.renderer.style, h, h).project(np.array([wc.objects()[n][:3] for n in names]))[0]
        return {n: float(np.linalg.norm(p - seen["front"])) for n, p in zip(names, uv)}

    out = {}
    for sp, rows in _first_frame_check(policy, scenes, locate, domain, profile).items():
        e = np.array([r[1] for r in rows])
        out[sp] = {"n": len(rows), "nearest_right": sum(r[0] for r in rows),
                   "median_px": round(float(np.median(e)), 2), "within_2px": int((e <= 2.0).sum())}
    return out


def _rate(rs) -> dict:
    labelled = [r for r in rs if r.success is not None]
    s = sum(1 for r in labelled if r.success)
    lo, hi = wilson(s, len(labelled))
    return {"n": len(labelled), "success": s, "rate": s / len(labelled) if labelled else float("nan"),
            "ci95": [lo, hi]}


def per_split(results: RolloutResults) -> dict[str, dict]:
    """split -> {n, success, rate, ci95, rt2, per_task: {kind: {...}}}, for rollouts that carry a split."""
    out: dict[str, dict] = {}
    splits = list(dict.fromkeys((r.notes or {}).get("split") for r in results.rollouts))
    for sp in [s for s in splits if s]:
        rs = [r for r in results.rollouts if (r.notes or {}).get("split") == sp]
        d = _rate(rs)
        d["rt2"] = RT2.get(sp)
        d["per_task"] = {k: _rate([r for r in rs if r.task == k]) for k in dict.fromkeys(r.task for r in rs)}
        out[sp] = d
    return out


def _pct(d) -> str:
    return f"{d['success']}/{d['n']} = {100 * d['rate']:.0f}%" if d["n"] else "-"


def _ci(d) -> str:
    return f"{100 * d['ci95'][0]:.0f}-{100 * d['ci95'][1]:.0f}%" if d["n"] else "-"


def split_rows(results: RolloutResults) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per split and one per (split, task), RT-2's figure beside each split."""
    head = ["split", "task", "success", "95% CI (Wilson)", "RT-2"]
    rows = []
    for sp, d in per_split(results).items():
        rt2 = f"{100 * d['rt2']:.0f}%" if d["rt2"] is not None else ""
        rows.append([SPLIT_LABELS.get(sp, sp), "all", _pct(d), _ci(d), rt2])
        if len(d["per_task"]) > 1:
            for k, t in d["per_task"].items():
                rows.append(["", k, _pct(t), _ci(t), ""])
    return head, rows


def outcome_counts(results: RolloutResults) -> dict[str, dict[str, int]]:
    """split label -> {outcome: count} (drivers.sim.physics.OUTCOMES, in that order, the ones that occurred),
    for the rollouts that carry an outcome."""
    rs = [r for r in results.rollouts if (r.notes or {}).get("outcome")]
    if not rs:
        return {}
    from drivers.sim.physics import OUTCOMES
    cols = [o for o in OUTCOMES if any(r.notes["outcome"] == o for r in rs)]
    out = {}
    for sp in dict.fromkeys(r.notes.get("split") for r in rs):
        mine = [r.notes["outcome"] for r in rs if r.notes.get("split") == sp]
        out[SPLIT_LABELS.get(sp, sp or "-")] = {"episodes": len(mine), **{o: mine.count(o) for o in cols}}
    return out


TWIN_COLUMN = "success beside a same-colour twin"
TURN_COLUMN = "success where a neighbour turns the grasp"


def success_where(results: RolloutResults, note: str = "colour_twin") -> dict[str, tuple[int, int]]:
    """split label -> (successes, rollouts) over the scenes with an object of the target's colour and another
    shape on the table (Scene.colour_twin: the red cylinder beside the red cube), for rollouts that say;
    note="neighbour_turn": over the scenes whose expert grasp turns away from a neighbour."""
    out: dict[str, tuple[int, int]] = {}
    for r in results.rollouts:
        n = r.notes or {}
        if n.get("outcome") and n.get(note):
            sp = SPLIT_LABELS.get(n.get("split"), n.get("split") or "-")
            s, k = out.get(sp, (0, 0))
            out[sp] = (s + bool(r.success), k + 1)
    return out


def outcome_rows(results: RolloutResults) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of outcome_counts: one row per split; then TWIN_COLUMN when any scene had a
    same-colour twin, and TURN_COLUMN when any scene's grasp had to turn away from a neighbour (success_where)."""
    counts = outcome_counts(results)
    head = ["split", *next(iter(counts.values()), {"episodes": 0})]
    rows = [[sp, *(str(n) for n in c.values())] for sp, c in counts.items()]
    for column, note in ((TWIN_COLUMN, "colour_twin"), (TURN_COLUMN, "neighbour_turn")):
        got = success_where(results, note)
        if got:
            head.append(column)
            for row in rows:
                s, k = got.get(row[0], (0, 0))
                row.append(f"{s}/{k}" if k else "-")
    return head, rows


def format_outcome_table(results: RolloutResults) -> str:
    head, rows = outcome_rows(results)
    return _text_table(head, rows) if rows else "(no rollouts with an outcome)"


def format_split_table(results: RolloutResults) -> str:
    head, rows = split_rows(results)
    return _text_table(head, rows) if rows else "(no rollouts with a split)"


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])
