"""DAgger's simulated operator: the sim expert watches a policy through the real TakeoverSource,
takes over when the policy drifts, hands back; the recorded corrections are what training selects."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.sim import kinematics as kin
from recorder.reader import read_episode
from recorder.schema import EpisodeMeta
from recorder.store import EpisodeStore
from recorder.writer import EpisodeWriter
from teleop_app.dagger import DaggerConfig, SimBench
from teleop_app.policy.base import PolicyMeta
from teleop_app.policy.dataset import load_dataset
from teleop_app.policy.runner import PolicyRunner
from teleop_app.policy.uncertainty import auroc


class HoldPolicy:
    """A policy that never moves: the operator must correct it."""
    meta = PolicyMeta(joint_names=kin.JOINT_NAMES, action_dim=8, fps=10.0, cameras=[], chunk_size=4, kind="hold")

    def reset(self):
        pass

    def predict(self, obs):
        return np.repeat(np.asarray(obs["qpos"], float)[None], 4, 0)


def test_simulated_operator_corrects_a_stuck_policy_and_training_selects_it(tmp_path):
    cfg = DaggerConfig(tasks=["pick_red"], cameras=(), drift_m=0.01, patience=3, correction_steps=10)
    bench = SimBench(cfg)
    store = EpisodeStore.create(tmp_path / "ds", "sim7", 10.0, kin.JOINT_NAMES, {})
    try:
        bench.wc.reset(seed=7, task="pick_red")
        meta = EpisodeMeta(instruction=bench.wc.instruction, fps=10.0, robot="sim7", joint_names=kin.JOINT_NAMES,
                           mode="policy")
        w = EpisodeWriter(store.new_episode_path(), meta, cameras={}, dof=8, jpeg=False)
        runner = PolicyRunner(HoldPolicy(), "ensemble")
        e = bench.episode(runner, "pick_red", 7, operator=True, writer=w)
    finally:
        bench.close()
    assert e["takeovers"] >= 2 and e["corrected_steps"] > 0
    assert e["success"], e            # the expert's corrections alone finish the task
    ep = read_episode(e["episode"])
    flags, src = ep.intervention, ep.action_source
    assert flags.sum() == e["corrected_steps"]
    assert set(src) == {"policy", "expert"} and all((s == "expert") == f for s, f in zip(src, flags))
    # the first takeover comes after `patience` ticks of a policy that holds while the expert moves
    first = int(np.argmax(flags))
    assert cfg.patience - 1 <= first <= cfg.patience + 2, first
    runs = np.flatnonzero(np.diff(flags.astype(int)) == -1)     # hand-backs
    assert len(runs) >= 1
    ep.close()
    store.add(e["episode"])
    ds = load_dataset(tmp_path / "ds", split="all")
    wts = ds.step_weights(3.0)
    assert np.all(wts[flags] == 3.0) and np.all(wts[~flags] == 0.0)


def test_auroc():
    assert auroc([0.3, 0.4], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.1]) == 0.5
    assert np.isnan(auroc([], [0.1]))


class ShovePolicy(HoldPolicy):
    """Holds, but on its first step knocks the target 6 cm towards the robot (a push the expert's plan,
    made at the episode's start, did not see)."""

    def __init__(self, wc, shift):
        self.wc, self.shift, self.done = wc, np.asarray(shift, float), False

    def predict(self, obs):
        if not self.done:
            import mujoco
            s = self.wc._sim
            with self.wc.lock:
                adr = s.model.jnt_qposadr[s.model.body_jntadr[s.body[self.wc.scene.target.name]]]
                s.data.qpos[adr:adr + 2] += self.shift
                mujoco.mj_forward(s.model, s.data)
            self.done = True
        return super().predict(obs)


@pytest.mark.parametrize("replan", [True, False])
def test_operator_on_physics_replans_from_the_pushed_object(tmp_path, replan):
    """Physics scenes (HG-DAgger in the generalization benchmark): when the operator takes over it plans
    from where the object is now, so the first grasp closes on the pushed object, not where it was."""
    from teleop_app.dagger import takeover_episode
    from teleop_app.pipeline import ControlPipeline
    from teleop_app.policy.generalization import _reset, _sim, split_scenes
    prof, wc, robot, cams, safety, period = _sim(64, (), 10.0, False, "sim7")
    pipe = ControlPipeline(robot, cams, safety, period, profile=prof, workcell=wc, clock="sim")
    store = EpisodeStore.create(tmp_path / "ds", "sim7", 10.0, kin.JOINT_NAMES, {})
    sc = split_scenes(["train"], 1, seed=500_003)[0]
    try:
        _reset(wc, sc, "default")
        name = sc.target.name
        before = wc.objects()[name][:2].copy()
        shift = -0.06 * before / np.linalg.norm(before)            # towards the base: stays reachable
        meta = EpisodeMeta(instruction=sc.instruction, fps=10.0, robot="sim7", joint_names=kin.JOINT_NAMES,
                           mode="policy")
        w = EpisodeWriter(store.new_episode_path(), meta, cameras={}, dof=8, jpeg=False)
        runner = PolicyRunner(ShovePolicy(wc, shift), "ensemble")
        e = takeover_episode(pipe, wc, runner, [], lambda q: kin.fk(np.asarray(q)[:7]), period, sc.seed,
                             max_steps=100, operator=True, drift_m=0.01, patience=3, correction_steps=200,
                             writer=w, replan=replan)
    finally:
        robot.disconnect()
    after = before + shift
    ep = read_episode(e["episode"])
    close = int(np.argmax(ep.action[:, 7] < 0.5))               # the first tick the gripper is told to close
    assert ep.action[close, 7] < 0.5
    tcp = kin.fk(ep.qpos[close, :7])[:2, 3]
    ep.close()
    if replan:
        assert np.linalg.norm(tcp - after) < 0.015 and e["success"], (tcp, after, e)
    else:
        assert np.linalg.norm(tcp - before) < 0.015, (tcp, before)
