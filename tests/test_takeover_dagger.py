"""DAgger's simulated operator: the sim expert watches a policy through the real TakeoverSource,
takes over when the policy drifts, hands back; the recorded corrections are what training selects."""
from __future__ import annotations

import numpy as np

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
