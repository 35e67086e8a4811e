"""Does the policy's uncertainty predict failure? Recorded per rollout by the sim evaluation, judged in
the validation report (teleop eval / the policy tab): real rollouts on the sim with the shipped demo
checkpoint and with a small policy that is uncertain exactly on the scenes it fails."""
from __future__ import annotations

import json

import numpy as np
import pytest

import drivers.sim.workcell as workcell_mod
from drivers.sim import kinematics as kin
from teleop_app.policy import load_policy
from teleop_app.policy.base import PolicyMeta
from teleop_app.policy.evaluate import RolloutResults, run_sim_rollouts
from teleop_app.policy.report import write_report
from teleop_app.policy.runner import PolicyRunner, RolloutResult
from teleop_app.policy.uncertainty import UncertaintyTrace, failure_prediction

SECTION = "## Does uncertainty predict failure?"


def _roll(success: bool | None, mean: float | None, task: str = "pick_red") -> RolloutResult:
    u = {"mean": mean, "max": mean, "last": mean, "n": 0 if mean is None else 5, "ticks": 5}
    return RolloutResult(task=task, instruction="pick up the red cube", seed=0, success=success,
                         steps=5, reason="success" if success else "timeout", notes={"uncertainty": u})


def _results(fails: list, oks: list, chunk_mode: str = "ensemble") -> RolloutResults:
    return RolloutResults([_roll(False, u) for u in fails] + [_roll(True, u) for u in oks], policy="t",
                          chunk_mode=chunk_mode)


def test_verdicts_cover_every_case_and_stay_json_safe():
    sep = failure_prediction(_results([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], [0.1, 0.12, 0.14, 0.16, 0.18, 0.2]).rollouts)
    assert sep["verdict"] == "predicts" and sep["auroc"] == 1.0 and sep["text"].startswith("Yes")
    assert sep["n_failed"] == sep["n_succeeded"] == 6 and 0.5 < sep["auroc_ci95"][0] < 1.0 == sep["auroc_ci95"][1]
    assert sep["stats"]["mean"]["failed_median"] == pytest.approx(0.75)
    inv = failure_prediction(_results([0.1] * 3 + [0.11] * 3, [0.5] * 3 + [0.6] * 3).rollouts)
    assert inv["verdict"] == "inverted" and inv["auroc"] == 0.0
    same = failure_prediction(_results([0.1, 0.2, 0.3, 0.4, 0.5], [0.15, 0.25, 0.35, 0.45, 0.55]).rollouts)
    assert same["verdict"] == "no_signal" and 0.3 < same["auroc"] < 0.7
    few = failure_prediction(_results([0.9, 0.8], [0.1] * 10).rollouts)
    assert few["verdict"] == "too_few" and "Too few failures" in few["text"] and few["auroc"] == 1.0
    nan = failure_prediction(_results([None] * 6, [None] * 6).rollouts)
    assert nan["verdict"] == "not_measured" and nan["auroc"] is None and "replan" in nan["text"]
    part = failure_prediction(_results([0.9] * 5 + [None], [0.1] * 5).rollouts)
    assert part["verdict"] == "predicts" and part["n_undefined"] == 1 and "left out" in part["text"]
    old = RolloutResults([RolloutResult("pick_red", "x", 0, False, 3, "timeout")])
    assert failure_prediction(old.rollouts)["verdict"] == "not_recorded"
    unlabelled = RolloutResults([_roll(None, 0.3)])
    assert failure_prediction(unlabelled.rollouts)["verdict"] == "not_recorded"
    assert "Caveat" not in sep["text"] and "Within a task" not in sep["text"]
    # failures from one task, successes from another: the difference may be the task
    other = RolloutResults([_roll(False, 0.5 + i / 100, "red_in_bowl") for i in range(5)]
                           + [_roll(True, 0.1 + i / 100) for i in range(5)])
    conf = failure_prediction(other.rollouts)
    assert conf["verdict"] == "predicts" and conf["auroc_within_task"] is None
    assert "come from different tasks" in conf["text"] and conf["tasks_failed"] == ["red_in_bowl"]
    mixed = RolloutResults(other.rollouts + [_roll(False, 0.05), _roll(True, 0.9, "red_in_bowl")])
    fm = failure_prediction(mixed.rollouts)
    assert fm["auroc_within_task"] == 0.0 and "Within a task" in fm["text"] and "AUROC 0.00" in fm["text"]
    for fp in (sep, nan, few, part, conf):
        json.dumps(fp, allow_nan=False)          # undefined numbers are None, never NaN


def test_report_says_too_few_failures(tmp_path):
    res = _results([0.3], [0.1, 0.1, 0.12, 0.2])
    page = write_report(res, None, tmp_path)
    md = (tmp_path / "report.md").read_text()
    sec = md[md.index(SECTION):].split("\n## ")[0]
    assert "Too few failures to tell: 1 failed and 4 successful" in sec
    assert "| per-rollout mean | 0.3000 | 0.3000 | 0.1300 | 0.1100 | 1.00 |" in sec
    assert "Does uncertainty predict failure?" in page.read_text()
    blob = json.loads((tmp_path / "results.json").read_text())
    assert blob["results"]["uncertainty"]["verdict"] == "too_few"
    assert blob["results"]["uncertainty"]["n_failed"] == 1
    # a saved rollouts.json loads back and gives the same verdict (`teleop report --results`)
    res.save(tmp_path / "rollouts.json")
    assert RolloutResults.load(tmp_path / "rollouts.json").uncertainty()["verdict"] == "too_few"


def test_trace_is_nan_until_chunks_overlap():
    class Fixed:
        meta = PolicyMeta(joint_names=kin.JOINT_NAMES, action_dim=8, fps=10.0, cameras=[], chunk_size=4)
        rng = np.random.default_rng(1)

        def reset(self):
            pass

        def predict(self, obs):
            return np.zeros((4, 8)) + self.rng.normal(0, 0.1, (4, 8))

    obs = {"qpos": np.zeros(8), "images": {}, "instruction": ""}
    for mode, defined in (("ensemble", [False, True, True, True]), ("replan", [False] * 4)):
        runner = PolicyRunner(Fixed(), mode)
        tr = UncertaintyTrace(runner)
        for _ in range(4):
            runner.act(obs)
            tr()
        assert [np.isfinite(v) for v in tr.values] == defined, mode
        s = tr.summary()
        assert s["ticks"] == 4 and s["n"] == sum(defined) and s["trace"][0] is None


class ExpertOrLost:
    """A small real policy on the sim: on even seeds it follows the sim's scripted expert (one target
    repeated over the chunk: overlapping chunks nearly agree, and it lifts the cube); on odd seeds it is
    'lost': chunks jitter around where the arm stands (they disagree) and it never grasps."""

    def __init__(self, cells: list, chunk: int = 2):
        self.meta = PolicyMeta(joint_names=kin.JOINT_NAMES, action_dim=8, fps=10.0, cameras=[],
                               chunk_size=chunk, kind="test-expert-or-lost")
        self.cells = cells
        self.expert = None
        self.rng = np.random.default_rng(0)

    def reset(self):
        pass

    def predict(self, obs):
        from drivers.sim import ScriptedExpert
        wc = self.cells[-1]
        q = np.asarray(obs["qpos"], float)
        k = self.meta.chunk_size
        if wc.seed % 2:
            out = np.repeat(q[None], k, 0)
            out[:, :7] += self.rng.normal(0, 0.05, (k, 7))
            out[:, 7] = q[7]
            return out
        if self.expert is None or self.expert.workcell is not wc:
            self.expert = ScriptedExpert(wc, seed=0, dt=0.1)
        return np.repeat(np.asarray(self.expert.act(q), float)[None], k, 0)


def test_sim_rollouts_uncertain_exactly_where_they_fail(monkeypatch, tmp_path):
    cells = []

    from drivers.sim.physics import PhysicsWorkcell

    class Recorded(PhysicsWorkcell):             # the default sim: the policy records no other
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            cells.append(self)

    monkeypatch.setattr(workcell_mod, "Workcell", Recorded)
    res = run_sim_rollouts(ExpertOrLost(cells), ["pick_red"], 12, seed0=1_000_000, chunk_mode="ensemble",
                           max_steps=80)
    assert len(cells) == 1 and res.config["sim"] == "physics"
    by_seed = {r.seed: r for r in res.rollouts}
    assert all(r.success is (s % 2 == 0) for s, r in by_seed.items()), [(s, r.reason) for s, r in by_seed.items()]
    for r in res.rollouts:
        u = r.notes["uncertainty"]
        assert u["ticks"] == r.steps and u["n"] == r.steps - 1     # the first tick has one chunk: NaN
        assert u["mean"] is not None and len(u["trace"]) == r.steps
    fp = res.uncertainty()
    assert fp["verdict"] == "predicts" and fp["auroc"] == 1.0
    assert fp["n_failed"] == fp["n_succeeded"] == 6
    assert fp["stats"]["last"]["failed_mean"] > fp["stats"]["last"]["succeeded_mean"]
    assert "does uncertainty predict failure? Yes" in res.summary()
    write_report(res, None, tmp_path)
    md = (tmp_path / "report.md").read_text()
    sec = md[md.index(SECTION):].split("\n## ")[0]
    assert "Yes: failed rollouts were more uncertain" in sec and "6 failed, 6 succeeded" in sec
    assert "| per-rollout mean |" in sec and sec.count("| 1.00 |") == 3


def test_demo_checkpoint_rollouts_record_uncertainty_by_chunk_mode():
    policy = load_policy("demo")
    assert policy.meta.chunk_size > 1
    for mode in ("ensemble", "smooth", "replan"):
        res = run_sim_rollouts(policy, ["pick_red", "pick_blue"], 1, chunk_mode=mode, max_steps=40)
        assert len(res.rollouts) == 2
        # evaluated on the sim it was trained on (its checkpoint: train["demo"]["sim"]), and says so
        assert res.config["sim"] == "kinematic" and "on the kinematic sim (the one it was trained on)" in res.summary()
        fp = res.uncertainty()
        for r in res.rollouts:
            u = r.notes["uncertainty"]
            assert u["ticks"] == r.steps and len(u["trace"]) == r.steps
            if mode == "replan":        # one chunk at a time: never two overlapping, so undefined
                assert u["n"] == 0 and u["mean"] is None and set(u["trace"]) == {None}
            else:
                assert u["n"] >= r.steps - 2 and 0 < u["mean"] <= u["max"] < 1.0
        if mode == "replan":
            assert fp["verdict"] == "not_measured"
        else:
            assert fp["verdict"] == "too_few" and fp["n_failed"] + fp["n_succeeded"] == 2


def test_policy_tab_shows_the_verdict(qtbot, tmp_path):
    from ui.policy_tab import PolicyTab
    tab = PolicyTab()
    qtbot.addWidget(tab)
    res = _results([0.3], [0.1, 0.1])
    tab._val_done((res, write_report(res, None, tmp_path)))
    text = tab.val_result.text()
    assert "2/3 succeeded" in text
    assert "does uncertainty predict failure?" in text and "Too few failures to tell" in text
