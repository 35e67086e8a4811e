"""Scripted demonstrations: the sim's IK expert records episodes with no human.

Headless and faster than real time: the same ControlPipeline as the live session, on a sim clock (the
sim is stepped once per control tick, timestamps are the simulated clock, attr clock="sim"). For
real-time scripted recording use the session's scripted mode.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from teleop_app import __version__
from teleop_app.profiles import load_profile
from teleop_app.pipeline import ControlPipeline, finish_writer, run_sim_episode
from teleop_app.safety import SafetyLayer
from teleop_app.sources import ScriptedSource


def record_scripted(root, tasks: list[str], episodes_per_task: int, seed: int = 0, fps: float = 10.0,
                    cameras=("front",), image_size: int = 224, progress: Callable[[int, int], None] | None = None,
                    max_steps: int = 200, keep_failures: bool = False, randomize: bool = False,
                    profile: str = "sim7", jpeg: bool = True, physics: bool = False,
                    perturb: float = 0.0) -> list[Path]:
    """Record `episodes_per_task` expert demos of each task into the dataset at `root`.

    Seeds run seed, seed+1, ... across all episodes, so every episode is a new scene. Failed demos are
    dropped unless keep_failures (they are rare: the expert solves >= 98%).

    physics: the MuJoCo workcell (what `teleop record` uses unless --kinematic) or, the default here,
    the kinematic fast mode: seeded recipes that call this (the demo policy's, DAgger's) were made on
    it and must stay reproducible. Each episode records its sim in extra["sim"].

    perturb (physics only): the share of episodes where the expert first drives a deliberate detour beside
    the object and then recovers (DART-style); those steps are recorded with the action source
    "perturbation" and training does not imitate them.
    """
    from drivers.sim import Randomization, SimCamera, SimConfig, SimRobot, Workcell, check_tasks
    from drivers.sim.kinematics import fk
    from recorder.store import EpisodeStore

    prof = load_profile(profile)
    check_tasks(tasks, bool(physics))
    if not 0.0 <= perturb <= 1.0:
        raise ValueError(f"perturb is a share of episodes in [0, 1], got {perturb}")
    if perturb and not physics:
        raise ValueError("perturbed demos need the physics sim (its expert replans from wherever the arm is); "
                         "drop --kinematic")
    period = 1.0 / fps
    rnd = Randomization(light=randomize, colors=randomize, camera_jitter=randomize, noise=randomize)
    wc = Workcell(SimConfig(seed=seed, task=tasks[0], width=image_size, height=image_size, randomization=rnd,
                            physics=bool(physics)))
    robot = SimRobot(wc, period=period, realtime=False)
    robot.connect()
    views = {c.name: c.view for c in prof.cameras}
    cams = {n: SimCamera(wc, name=n, view=views.get(n, n), width=image_size, height=image_size, realtime=False)
            for n in cameras}
    for c in cams.values():
        c.connect()
    root = Path(root)
    store = EpisodeStore.create(root, prof.name, fps, prof.joint_names,
                                {n: (image_size, image_size) for n in cams})
    safety = SafetyLayer.from_profile(prof, period, fk=lambda q: fk(np.asarray(q)[:7]))
    pipe = ControlPipeline(robot, cams, safety, period, profile=prof, workcell=wc, clock="sim")
    total = len(tasks) * episodes_per_task
    done, paths, s = 0, [], seed
    t0 = time.monotonic()
    try:
        for k in range(episodes_per_task):
            for task in tasks:
                path = _one_episode(pipe, wc, store, task, s, fps, prof, max_steps, keep_failures, jpeg,
                                    t0=t0 + done * max_steps * period, perturb=perturb)
                s += 1
                if path is not None:
                    paths.append(path)
                done += 1
                if progress:
                    progress(done, total)
    finally:
        robot.disconnect()
    return paths


def _one_episode(pipe, wc, store, task, seed, fps, prof, max_steps, keep_failures, jpeg, t0, perturb=0.0):
    """Reset the scene, run the expert through the pipeline on the sim clock, keep the episode if solved."""
    from recorder.schema import EpisodeMeta
    from recorder.writer import EpisodeWriter
    with wc.lock:
        wc.reset(seed=seed, task=task)
    pipe.rebase(pipe.robot.get_observation().position)
    pipe.ctx.seed = seed
    meta = EpisodeMeta(instruction=wc.instruction, fps=fps, robot=prof.name, joint_names=prof.joint_names,
                       mode="scripted", operator="scripted-expert", software_version=__version__,
                       extra={"task": task, "seed": int(seed), "clock": "sim", "sim": wc.sim,
                              **({"perturb": float(perturb)} if perturb else {})})
    w = EpisodeWriter(store.new_episode_path(), meta, cameras={n: (c.height, c.width) for n, c in pipe.cameras.items()},
                      dof=prof.dof, jpeg=jpeg)
    pipe.recorder.begin(w)
    src = ScriptedSource(only_recording=False, perturb=perturb)
    run_sim_episode(pipe, src, max_steps=max_steps, t0=t0, done=lambda res: src.done)
    _, left = pipe.recorder.end()
    ok = bool(wc.success())
    if not ok and not keep_failures:
        w.abort()
        return None
    p = finish_writer(w, left, success=1 if ok else 0)
    store.add(p)
    return p
