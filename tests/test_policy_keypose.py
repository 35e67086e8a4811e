"""The VLA's auxiliary next-keypose loss (train.keypose_targets, `teleop train --keypose-weight`): labels read
off the demo itself (where the arm is when the gripper next closes or opens), a model with the extra head
trained and loaded, the CLI flag, fine-tuning a base that has the head, and a clear refusal where the robot
has no kinematic chain.

Real parts: the sim's scripted expert on the kinematic workcell, the crash-safe recorder, HDF5 files read
back, torch training on the CPU, peft adapters, the checkpoint loader.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from drivers.sim import kinematics as kin  # noqa: E402
from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.checkpoint import read_checkpoint  # noqa: E402
from teleop_app.policy.dataset import Dataset, EpisodeArrays  # noqa: E402
from teleop_app.policy.train import keypose_targets, robot_chain, train  # noqa: E402
from test_policy_ee import SIZE, TINY, expert_episode, record  # noqa: E402


def test_keypose_labels_are_where_the_expert_closes_then_where_it_ends():
    wc, qs, acts, _ = expert_episode("pick_red", seed=11)
    ep = EpisodeArrays("mem", wc.instruction, qs.astype(np.float32), acts.astype(np.float32), {}, 1)
    ds = Dataset([ep], list(kin.JOINT_NAMES), 10.0, [], (SIZE, SIZE), robot="sim7")
    kp = keypose_targets(ds, robot_chain(ds, "keypose"))
    assert kp.shape == (len(qs), 3)
    close = int(np.flatnonzero(acts[:, -1] < 0.5)[0])           # the step the expert commands the grasp
    assert 5 < close < len(qs) - 3
    grasp = kin.fk(qs[close][:7])[:3, 3]
    np.testing.assert_allclose(kp[:close + 1], np.tile(grasp, (close + 1, 1)), atol=1e-5)
    # the grasp is down at the cube (the expert closes around it), not where the arm started
    start = kin.fk(qs[0][:7])[:3, 3]
    assert grasp[2] < start[2] - 0.1
    # no gripper event after the close: the label is the last pose (the cube lifted)
    np.testing.assert_allclose(kp[close + 1:], np.tile(kin.fk(qs[-1][:7])[:3, 3], (len(qs) - close - 1, 1)),
                               atol=1e-5)
    assert kp[-1][2] > grasp[2] + 0.05
    # the held cube is where the labels said the grasp would be
    assert np.linalg.norm(wc.objects()["red_cube"][:2] - grasp[:2]) < 0.01


def test_train_with_keypose_head_loads_predicts_and_fine_tunes(tmp_path):
    data = tmp_path / "data"
    record(data)
    ckpt = tmp_path / "kp.pt"
    r = train(data, ckpt, steps=40, batch_size=8, lr=2e-3, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
              model=TINY, warmup=5, threads=1, resume=False, keypose_weight=1.0)
    assert r.step == 40
    blob = read_checkpoint(ckpt)
    assert blob["model_config"]["keypose"] is True
    assert len(blob["meta"]["stats"]["keypose"]["mean"]) == 3
    assert blob["train"]["keypose_weight"] == 1.0 and np.isfinite(blob["train"]["keypose_loss"])
    assert any(k.startswith("keypose_head") for k in blob["state_dict"])
    pol = load_policy(str(ckpt))
    a = pol.predict({"images": {"front": np.full((SIZE, SIZE, 3), 120, np.uint8)}, "qpos": kin.HOME.copy(),
                     "instruction": "pick up the red cube"})
    assert a.shape == (4, 8) and np.isfinite(a).all()
    kp = pol.predict_keypose({"images": {"front": np.full((SIZE, SIZE, 3), 120, np.uint8)}, "qpos": kin.HOME.copy(),
                              "instruction": "pick up the red cube"})
    assert kp.shape == (3,) and np.isfinite(kp).all() and -1 < kp[2] < 1      # metres, in the base frame
    # the head learns: its loss falls when trained longer on the same demos
    r2 = train(data, tmp_path / "kp2.pt", steps=300, batch_size=8, lr=2e-3, image_size=(SIZE, SIZE), chunk=4,
               val_fraction=0.0, model=TINY, warmup=5, threads=1, resume=False, keypose_weight=1.0, augment="none")
    assert read_checkpoint(tmp_path / "kp2.pt")["train"]["keypose_loss"] < 0.5 * blob["train"]["keypose_loss"]
    # LoRA fine-tuning of a base with the head keeps training it through the adapters
    ft = tmp_path / "ft.pt"
    train(data, ft, steps=5, batch_size=4, image_size=(SIZE, SIZE), val_fraction=0.0, threads=1, resume=False,
          init=ckpt, keypose_weight=1.0)
    fb = read_checkpoint(ft)
    assert fb["model_config"]["keypose"] is True and fb["finetune"]["method"] == "lora"
    assert np.isfinite(fb["train"]["keypose_loss"])
    # off by default: no head, no extra token
    plain = tmp_path / "plain.pt"
    train(data, plain, steps=2, batch_size=4, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0, model=TINY,
          threads=1, resume=False)
    pb = read_checkpoint(plain)
    assert pb["model_config"]["keypose"] is False and "keypose" not in pb["meta"]["stats"]
    assert load_policy(str(plain)).predict_keypose({"images": {}, "qpos": kin.HOME.copy()}) is None


def test_keypose_needs_a_robot_with_a_chain(tmp_path):
    data = tmp_path / "data"
    record(data, robot="koch_leader", episodes=(("pick_red", 11),))
    with pytest.raises(PolicyError, match="keypose_weight > 0 needs a \\[kinematics\\] chain"):
        train(data, tmp_path / "x.pt", steps=2, batch_size=4, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
              model=TINY, threads=1, resume=False, keypose_weight=1.0)


def test_teleop_train_keypose_flag_reaches_the_checkpoint(tmp_path, capsys):
    import argparse
    from teleop_app.policy.cli import add_commands
    data = tmp_path / "data"
    record(data, episodes=(("pick_red", 11),))
    ap = argparse.ArgumentParser(prog="teleop")
    add_commands(ap.add_subparsers(dest="cmd"))
    out = tmp_path / "cli.pt"
    a = ap.parse_args(["train", str(data), str(out), "--steps", "3", "--image-size", str(SIZE), "--chunk", "4",
                       "--val-fraction", "0", "--threads", "1", "--keypose-weight", "0.5"])
    assert a.fn(a) == 0, capsys.readouterr().err
    assert "keypose " in capsys.readouterr().out          # the progress line shows the head's loss
    blob = read_checkpoint(out)
    assert blob["train"]["keypose_weight"] == 0.5 and blob["model_config"]["keypose"] is True


class AnswerPolicy:
    """predict_keypose answers from a list made beforehand (one per scene, in order)."""

    def __init__(self, meta, answers):
        self.meta, self.answers, self.instructions = meta, list(answers), []

    def predict_keypose(self, obs):
        assert obs["images"]["front"].shape == (32, 32, 3)
        self.instructions.append(obs["instruction"])
        return self.answers.pop(0)


def test_keypose_check_scores_where_the_model_points_against_the_physics_scene():
    pytest.importorskip("mujoco")
    from drivers.sim import SimConfig, Workcell
    from teleop_app.policy.base import PolicyMeta
    from teleop_app.policy.generalization import keypose_check, split_scenes
    scenes = split_scenes(["seen", "unseen_objects"], 2, ("pick",))
    wc = Workcell(SimConfig(physics=True, width=32, height=32))
    right, other = [], []
    for sc in scenes:
        wc.reset(scene=sc)
        obj = wc.objects()
        t = obj[sc.target.name]
        right.append(t + np.array([0.01, 0.0, 0.0]))                 # 10 mm beside the target
        o = next(n for n in wc.object_specs() if n != sc.target.name)
        other.append(obj[o])                                         # dead on another object
    meta = PolicyMeta(joint_names=list(kin.JOINT_NAMES), action_dim=8, fps=10.0, image_size=(32, 32),
                      cameras=["front"], chunk_size=1)
    pol = AnswerPolicy(meta, right)
    got = keypose_check(pol, scenes)
    assert pol.instructions == [s.instruction for s in scenes]
    assert got == {sp: {"n": 2, "nearest_right": 2, "median_mm": 10.0, "within_15mm": 2, "within_30mm": 2}
                   for sp in ("seen", "unseen_objects")}
    got = keypose_check(AnswerPolicy(meta, other), scenes)
    assert all(d["nearest_right"] == 0 and d["within_15mm"] == 0 and d["median_mm"] > 40 for d in got.values())
    with pytest.raises(ValueError, match="no keypose head"):
        keypose_check(AnswerPolicy(meta, [None] * 4), scenes)
