"""The VLA's end-effector action space (teleop_app/policy/ee.py): targets made from recorded joint
actions through the profile's chain, turned back into joint targets at inference, a checkpoint that
carries its chain, and a clear refusal where the robot has no chain.

Real parts: the sim's scripted expert on the kinematic workcell, the crash-safe recorder, HDF5 files
read back, torch training on the CPU, the checkpoint loader.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from drivers.sim import kinematics as kin  # noqa: E402
from drivers.sim.expert import ScriptedExpert  # noqa: E402
from drivers.sim.workcell import SimConfig, Workcell  # noqa: E402
from recorder.schema import EpisodeMeta  # noqa: E402
from recorder.store import EpisodeStore  # noqa: E402
from recorder.writer import EpisodeWriter  # noqa: E402
from teleop_app.kinematics import chain_from_dict, chain_to_dict  # noqa: E402
from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from teleop_app.policy.ee import EE_DIM, ee_targets, ee_to_joints  # noqa: E402
from teleop_app.policy.train import train  # noqa: E402
from teleop_app.profiles import load_profile  # noqa: E402

SIZE = 32
TINY = dict(channels=(8, 16, 16), d_model=32, n_layers=1, n_heads=2, grid=2)


def expert_episode(task="pick_red", seed=3, steps=45):
    wc = Workcell(SimConfig(seed=0, width=SIZE, height=SIZE, physics=False))
    wc.reset(seed=seed, task=task)
    ex = ScriptedExpert(wc, seed=seed, dt=0.1)
    qs, acts, imgs = [], [], []
    for _ in range(steps):
        q = wc.qpos()
        a = ex.act(q)
        qs.append(q), acts.append(a), imgs.append(wc.render("front", SIZE, SIZE))
        wc.set_target(a)
        wc.step(0.1)
        if ex.done:
            break
    return wc, np.array(qs), np.array(acts), imgs


def record(root, robot="sim7", episodes=(("pick_red", 11), ("pick_blue", 12), ("pick_red", 13))):
    store = EpisodeStore.create(root, robot, 10.0, kin.JOINT_NAMES, {"front": (SIZE, SIZE)})
    for task, seed in episodes:
        wc, qs, acts, imgs = expert_episode(task, seed)
        w = EpisodeWriter(store.new_episode_path(),
                          EpisodeMeta(wc.instruction, 10.0, robot, kin.JOINT_NAMES, "scripted"),
                          cameras={"front": (SIZE, SIZE)}, dof=8, jpeg=False)
        for k, (q, a, im) in enumerate(zip(qs, acts, imgs)):
            w.add_step(q, a, a, timestamp=0.1 * k, images={"front": im}, image_timestamps={"front": 0.1 * k})
        store.add(w.finish(success=1))


def test_chain_round_trips_through_its_table():
    chain = load_profile("sim7").kinematics
    again = chain_from_dict(chain_to_dict(chain), chain.n)
    for q in np.random.default_rng(0).uniform(-1.5, 1.5, (5, 7)):
        assert np.allclose(again.fk(q), chain.fk(q), atol=1e-12)


def test_ee_targets_turn_back_into_the_recorded_joint_actions():
    chain = load_profile("sim7").kinematics
    _, qs, acts, _ = expert_episode()
    chunk = 10
    tg = ee_targets(chain, qs, acts, chunk)
    assert tg.shape == (len(qs), chunk, EE_DIM) and np.isfinite(tg).all()
    # the first target of a step is the action's TCP relative to the measured TCP
    p = chain.fk(acts[0])[:3, 3] - chain.fk(qs[0])[:3, 3]
    assert np.allclose(tg[0, 0, :3], p, atol=1e-6) and tg[0, 0, 6] == acts[0, -1]
    worst = 0.0
    for t in range(0, len(qs), 4):
        joints = ee_to_joints(chain, qs[t], tg[t])
        assert joints.shape == (chunk, 8)
        for k in range(chunk):
            want = chain.fk(acts[min(t + k, len(qs) - 1)])[:3, 3]
            worst = max(worst, float(np.linalg.norm(chain.fk(joints[k])[:3, 3] - want)))
        assert np.array_equal(joints[:, -1], tg[t, :, 6])          # gripper passes through
    assert worst < 0.003, f"TCP of the reconstructed joint targets off by {worst * 1000:.1f} mm"


def test_train_ee_checkpoint_predicts_joint_targets(tmp_path):
    data = tmp_path / "data"
    record(data)
    ckpt = tmp_path / "ee.pt"
    r = train(data, ckpt, steps=40, batch_size=8, lr=2e-3, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
              model=TINY, warmup=5, threads=1, resume=False, action_space="ee", state_noise=1.0)
    assert r.step == 40 and r.history[-1][1] < r.history[0][1] * 1.5
    blob = read_checkpoint(ckpt)
    assert blob["meta"]["extra"]["action_space"] == "ee" and "kinematics" in blob["meta"]["extra"]
    assert blob["model_config"]["action_dim"] == EE_DIM and blob["meta"]["action_dim"] == 8
    assert blob["train"]["state_noise"] == 1.0
    pol = load_policy(str(ckpt))
    q = kin.HOME.copy()
    a = pol.predict({"images": {"front": np.full((SIZE, SIZE, 3), 120, np.uint8)}, "qpos": q,
                     "instruction": "pick up the red cube"})
    assert a.shape == (4, 8) and np.isfinite(a).all()
    # a small move from home, in joint space: the chain turned metres into radians
    assert np.abs(a[0, :7] - q[:7]).max() < 0.5
    # a checkpoint whose chain is damaged is refused with a message, not run
    blob["meta"]["extra"]["kinematics"]["joints"] = blob["meta"]["extra"]["kinematics"]["joints"][:3]
    bad = tmp_path / "bad.pt"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="kinematics"):
        load_policy(str(bad))


def test_ee_needs_a_robot_with_a_chain(tmp_path):
    data = tmp_path / "data"
    record(data, robot="koch_leader", episodes=(("pick_red", 11),))
    assert load_profile("koch_leader").kinematics is None
    with pytest.raises(PolicyError, match="kinematics"):
        train(data, tmp_path / "x.pt", steps=2, batch_size=4, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
              model=TINY, threads=1, resume=False, action_space="ee")


def test_teleop_train_flags_reach_the_checkpoint(tmp_path, capsys):
    import argparse
    from teleop_app.policy.cli import add_commands
    data = tmp_path / "data"
    record(data, episodes=(("pick_red", 11), ("pick_blue", 12)))
    ap = argparse.ArgumentParser(prog="teleop")
    add_commands(ap.add_subparsers(dest="cmd"))
    out = tmp_path / "cli.pt"
    a = ap.parse_args(["train", str(data), str(out), "--steps", "3", "--image-size", str(SIZE), "--chunk", "4",
                       "--val-fraction", "0", "--threads", "1", "--state-noise", "1.5", "--action-space", "ee"])
    assert a.fn(a) == 0, capsys.readouterr().err
    blob = read_checkpoint(out)
    assert blob["train"]["state_noise"] == 1.5 and blob["meta"]["extra"]["action_space"] == "ee"
    a = ap.parse_args(["train", str(data), str(tmp_path / "d.pt"), "--steps", "1"])
    assert a.state_noise == 0.05 and a.action_space == "delta_arm"      # the defaults
