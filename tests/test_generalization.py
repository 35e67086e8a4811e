"""Generalization report: physics scenes of the declared splits, expert demos recorded through the
pipeline, closed-loop rollouts per split with Wilson intervals beside RT-2, the held-out visual domain."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

from recorder.reader import read_episode  # noqa: E402
from teleop_app.policy.base import PolicyMeta  # noqa: E402
from teleop_app.policy.evaluate import RolloutResults  # noqa: E402
from teleop_app.policy.generalization import (RT2, format_outcome_table, format_split_table,  # noqa: E402
                                              per_split, record_scenes, run_scene_rollouts, split_rows,
                                              split_scenes)
from teleop_app.policy.report import write_report  # noqa: E402
from teleop_app.policy.runner import RolloutResult  # noqa: E402
from teleop_app.profiles import load_profile  # noqa: E402

PROF = load_profile("sim7")


class HoldPolicy:
    """Holds the current joints (never solves a task); remembers the instructions and images it saw."""

    def __init__(self):
        self.meta = PolicyMeta(joint_names=list(PROF.joint_names), action_dim=8, fps=10.0, image_size=(32, 32),
                               cameras=["front"], chunk_size=2, kind="hold")
        self.seen, self.frames = [], []

    def reset(self):
        pass

    def predict(self, obs):
        self.seen.append(obs["instruction"])
        self.frames.append(np.asarray(obs["images"]["front"]).mean(axis=(0, 1)))
        return np.tile(np.asarray(obs["qpos"], float), (2, 1))


def test_split_scenes_are_unseen_and_labelled():
    sc = split_scenes(["seen", "unseen_objects", "novel_instructions"], 3, ("pick", "place_bowl"))
    assert [s.split for s in sc] == ["seen"] * 3 + ["unseen_objects"] * 3 + ["novel_instructions"] * 3
    assert all(s.seed >= 1_000_000 for s in sc)
    assert all(not s.target.seen for s in sc if s.split == "unseen_objects")
    train = split_scenes(["train"], 3, ("pick",))
    assert all(s.target.seen and s.seed < 1_000_000 for s in train)
    from drivers.sim.tasks import KINDS as SIM_KINDS
    from teleop_app.policy.generalization import MAX_STEPS
    assert set(MAX_STEPS) == set(SIM_KINDS)          # a rollout length for every task kind the splits hold


def test_record_scenes_keeps_expert_demos_with_split(tmp_path):
    scenes = split_scenes(["train"], 1, ("pick",))
    paths = record_scenes(tmp_path / "d", scenes, image_size=32, cameras=("front",))
    assert len(paths) == 1
    with read_episode(paths[0]) as ep:
        assert ep.meta.instruction == scenes[0].instruction
        assert ep.meta.extra["split"] == "train" and ep.meta.extra["physics"] is True
        assert ep.success == 1 and ep.num_steps > 10


def test_rollouts_per_split_and_held_out_domain():
    scenes = split_scenes(["seen", "novel_instructions"], 1, ("pick",))
    pol = HoldPolicy()
    res = run_scene_rollouts(pol, scenes)
    assert [r.notes["split"] for r in res.rollouts] == ["seen", "novel_instructions"]
    assert pol.seen[0] == scenes[0].instruction and scenes[1].instruction in pol.seen  # the split's phrasing
    assert all(r.success is False for r in res.rollouts)                              # holding never lifts
    assert [r.notes["outcome"] for r in res.rollouts] == ["no attempt", "no attempt"]
    assert [r.notes["colour_twin"] for r in res.rollouts] == [sc.colour_twin is not None for sc in scenes]
    assert all(isinstance(r.notes["neighbour_turn"], bool) for r in res.rollouts)
    # the per-tick uncertainty, as the task rollouts carry it: the validation report's "does it predict failure?"
    assert [r.notes["uncertainty"]["ticks"] for r in res.rollouts] == [r.steps for r in res.rollouts]
    assert all(r.notes["uncertainty"]["n"] > 0 for r in res.rollouts)
    assert res.uncertainty()["text"] and "carry no uncertainty record" not in res.uncertainty()["text"]
    assert "no attempt" in format_outcome_table(res)
    default_colour = pol.frames[0]
    pol2 = HoldPolicy()
    run_scene_rollouts(pol2, scenes[:1], domain="held_out")
    assert np.abs(pol2.frames[0] - default_colour).max() > 10        # the held-out look differs
    with pytest.raises(ValueError, match="domain must be"):
        run_scene_rollouts(pol2, scenes[:1], domain="mars")


def test_split_table_wilson_rt2_and_report(tmp_path):
    rs = []
    for i in range(10):
        rs.append(RolloutResult("pick", "pick up the red cube", i, i < 9, 30, "x",
                                notes={"split": "seen", "outcome": "success" if i < 9 else "dropped",
                                       "colour_twin": i >= 6, "neighbour_turn": i >= 8}))
        rs.append(RolloutResult("pick" if i < 5 else "place_bowl", "lift it", i, i < 4, 30, "x",
                                notes={"split": "unseen_objects"}))
    res = RolloutResults(rs, policy="p", chunk_mode="ensemble")
    t = per_split(res)
    assert t["seen"]["success"] == 9 and t["seen"]["n"] == 10 and t["seen"]["rt2"] == RT2["seen"]
    assert 0.59 < t["seen"]["ci95"][0] < 0.6
    assert t["unseen_objects"]["per_task"]["pick"]["success"] == 4
    head, rows = split_rows(res)
    assert rows[0] == ["seen objects", "all", "9/10 = 90%", "60-98%", "97%"]
    assert ["", "place_bowl", "0/5 = 0%", "0-43%", ""] in rows
    assert "unseen objects" in format_split_table(res)
    write_report(res, None, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Generalization (per split)" in md and "| seen objects | all | 9/10 = 90% | 60-98% | 97% |" in md
    # success, dropped; then the successes over the 4 scenes with a same-colour twin (one of them dropped)
    # and over the 2 whose grasp turns away from a neighbour (one dropped)
    assert "## How the rollouts ended" in md and "| seen objects | 10 | 9 | 1 | 3/4 | 1/2 |" in md
    assert "success beside a same-colour twin" in format_outcome_table(res)
    assert "success where a neighbour turns the grasp" in format_outcome_table(res)
    assert "turns the wrist away from the bowl" in md
    # a plain sim run (no splits) gets no generalization section
    write_report(RolloutResults([RolloutResult("pick_red", "p", 1, True, 3, "x")]), None, tmp_path / "rep2")
    assert "Generalization" not in (tmp_path / "rep2" / "report.md").read_text()


def test_eval_cli_splits(tmp_path, capsys):
    import argparse
    from teleop_app.policy.cli import add_commands
    ap = argparse.ArgumentParser(prog="teleop")
    add_commands(ap.add_subparsers(dest="cmd"))
    a = ap.parse_args(["eval", "x.pt", "--splits", "seen,bogus"])
    assert a.splits == "seen,bogus" and a.kinds == "pick" and a.domain == "default"
    a = ap.parse_args(["train", "d", "o.pt", "--full"])
    assert a.fn(a) == 1 and "--full fine-tunes every weight of a base" in capsys.readouterr().err


def test_instruction_augmentation_never_reaches_an_evaluation_split():
    from drivers.sim.objects import SEEN_COLOURS, UNSEEN_COLOURS
    from drivers.sim.tasks import COLOUR_RIDDLES, NOVEL_PHRASES, SPLITS, episodes
    from teleop_app.policy.instruction_aug import COLOUR_SYNONYMS, instruction_variants

    assert set(SEEN_COLOURS) <= set(COLOUR_SYNONYMS)          # every training colour has other words
    v = instruction_variants("pick up the red cube")
    assert v == ["pick up the red cube", "pick up the crimson cube", "pick up the scarlet cube"]
    assert instruction_variants("open the drawer") == ["open the drawer"]
    assert instruction_variants("put the pink cube on the black cylinder")[1:] == [
        "put the rose cube on the black cylinder", "put the blush cube on the black cylinder",
        "put the pink cube on the ebony cylinder", "put the pink cube on the jet black cylinder"]
    riddle_words = {w for things in COLOUR_RIDDLES.values() for t in things for w in t.split()} - {"a", "the"}
    held_out = set(UNSEEN_COLOURS) | {"violet", "lilac", "amber", "ivory", "magenta"} | riddle_words
    syn_words = {w for ss in COLOUR_SYNONYMS.values() for s in ss for w in s.split()}
    assert not syn_words & held_out, syn_words & held_out
    evaluation = {sc.instruction for split in SPLITS[1:] for sc in episodes(split, 300)}
    train = {sc.instruction for sc in episodes("train", 600)}
    wordings = {w for t in train for w in instruction_variants(t)}
    assert len(wordings) >= 2.5 * len(train)
    novel_templates = {t.split("{obj}")[0] for ts in NOVEL_PHRASES.values() for t in ts}
    for w in wordings - train:
        assert w not in evaluation, w
        assert not any(w.startswith(t) for t in novel_templates), w


def test_training_with_instruction_augmentation_draws_wordings(tmp_path):
    import torch  # noqa: F401
    from teleop_app.policy.checkpoint import read_checkpoint
    from teleop_app.policy.dataset import load_dataset
    from teleop_app.policy.tokenizer import Tokenizer
    from teleop_app.policy.train import _Batcher, target_stats, train

    scenes = split_scenes(["train"], 1, ("pick",))
    data = tmp_path / "d"
    record_scenes(data, scenes, image_size=32, cameras=("front",))
    r = train(data, tmp_path / "a.pt", steps=4, batch_size=4, image_size=(32, 32), cameras=["front"], chunk=2,
              val_fraction=0.0, model=dict(channels=(8, 16, 16), d_model=32, n_layers=1, n_heads=2),
              warmup=1, resume=False, instruction_augment=True)
    blob = read_checkpoint(r.path)
    assert blob["train"]["instruction_augment"] is True
    from teleop_app.policy.instruction_aug import instruction_variants
    wordings = instruction_variants(scenes[0].instruction)
    assert len(wordings) == 3
    tok = Tokenizer.from_dict(blob["tokenizer"])          # every wording's words are in the vocabulary
    assert not [w for t in wordings for w in tok.unknown_words(t)]
    ds = load_dataset(data, ["front"], (32, 32), "train", 0.0)
    b = _Batcher(ds, tok, 2, target_stats(ds, 2, "delta_arm"), "delta_arm",
                 variants=[wordings])
    idx = np.zeros(300, int)
    drawn = {tuple(row) for row in b.batch(idx, np.random.default_rng(0))[1]}
    assert drawn == {tuple(tok.encode(t)) for t in wordings}            # every wording is drawn
    assert {tuple(row) for row in b.batch(idx)[1]} == {tuple(tok.encode(wordings[0]))}   # none: the recorded one
