"""Scripted demonstrations: the sim's IK expert records episodes with no human.

Headless and faster than real time: the sim is stepped once per control tick, so timestamps are the
simulated clock (attr clock="sim"). For real-time scripted recording use the session's scripted mode.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from teleop_app import __version__
from teleop_app.profiles import load_profile
from teleop_app.safety import SafetyLayer


def record_scripted(root, tasks: list[str], episodes_per_task: int, seed: int = 0, fps: float = 10.0,
                    cameras=("front",), image_size: int = 224, progress: Callable[[int, int], None] | None = None,
                    max_steps: int = 200, keep_failures: bool = False, randomize: bool = False,
                    profile: str = "sim7", jpeg: bool = True) -> list[Path]:
    """Record `episodes_per_task` expert demos of each task into the dataset at `root`.

    Seeds run seed, seed+1, ... across all episodes, so every episode is a new scene. Failed demos are
    dropped unless keep_failures (they are rare: the expert solves >= 98%).
    """
    from drivers.sim import TASKS, Randomization, ScriptedExpert, SimCamera, SimConfig, SimRobot, Workcell
    from drivers.sim.kinematics import fk
    from recorder.schema import EpisodeMeta
    from recorder.store import EpisodeStore
    from recorder.writer import EpisodeWriter

    prof = load_profile(profile)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    period = 1.0 / fps
    rnd = Randomization(light=randomize, colors=randomize, camera_jitter=randomize, noise=randomize)
    wc = Workcell(SimConfig(seed=seed, task=tasks[0], width=image_size, height=image_size, randomization=rnd))
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
    total = len(tasks) * episodes_per_task
    done, paths, s = 0, [], seed
    for k in range(episodes_per_task):
        for task in tasks:
            path = _one_episode(wc, robot, cams, store, task, s, period, fps, prof, max_steps, keep_failures,
                                jpeg, fk, ScriptedExpert, EpisodeMeta, EpisodeWriter)
            s += 1
            if path is not None:
                paths.append(path)
            done += 1
            if progress:
                progress(done, total)
    robot.disconnect()
    return paths


def _one_episode(wc, robot, cams, store, task, seed, period, fps, prof, max_steps, keep_failures, jpeg,
                 fk, ScriptedExpert, EpisodeMeta, EpisodeWriter):
    with wc.lock:
        wc.reset(seed=seed, task=task)
    expert = ScriptedExpert(wc, seed=seed, dt=period)
    expert.reset()
    safety = SafetyLayer.from_profile(prof, period, fk=lambda q: fk(np.asarray(q)[:7]))
    meta = EpisodeMeta(instruction=wc.instruction, fps=fps, robot=prof.name, joint_names=prof.joint_names,
                       mode="scripted", operator="scripted-expert", software_version=__version__,
                       extra={"task": task, "seed": int(seed), "clock": "sim"})
    path = store.new_episode_path()
    w = EpisodeWriter(path, meta, cameras={n: (c.height, c.width) for n, c in cams.items()},
                      dof=prof.dof, jpeg=jpeg)
    t0 = time.monotonic()
    safety.reset(robot.get_observation().position)
    for k in range(max_steps):
        t = t0 + k * period
        q = robot.get_observation().position
        frames = {n: c.read_latest() for n, c in cams.items()}
        raw = np.asarray(expert.act(q), float)
        sent, _ = safety.filter(raw, q)
        w.add_step(qpos=q, action=sent, action_raw=raw, timestamp=t,
                   images={n: f.image for n, f in frames.items()},
                   image_timestamps={n: t for n in frames})
        robot.send_action(sent)
        if expert.done:
            break
    ok = bool(wc.success())
    if not ok and not keep_failures:
        w.abort()
        return None
    p = w.finish(success=1 if ok else 0)
    store.add(p)
    return p
