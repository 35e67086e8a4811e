"""Record a tiny sim dataset -> train a tiny VLA -> checkpoint -> offline + closed-loop eval -> report.

Real parts throughout: the sim workcell and its scripted expert, the crash-safe recorder, torch on
the CPU, the safety layer, HDF5 files read back. Sizes are tiny so the file runs in well under a minute.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from drivers.sim import kinematics as kin  # noqa: E402
from drivers.sim.expert import ScriptedExpert  # noqa: E402
from drivers.sim.workcell import SimConfig, Workcell  # noqa: E402
from recorder.reader import read_episode  # noqa: E402
from recorder.schema import EpisodeMeta  # noqa: E402
from recorder.store import EpisodeStore  # noqa: E402
from recorder.writer import EpisodeWriter  # noqa: E402
from teleop_app.policy.base import PolicyMeta, PolicyMismatchError, check_compatible, load_policy  # noqa: E402
from teleop_app.policy.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from teleop_app.policy.evaluate import RolloutResults, run_sim_rollouts  # noqa: E402
from teleop_app.policy.offline import evaluate_offline  # noqa: E402
from teleop_app.policy.report import write_report  # noqa: E402
from teleop_app.policy.train import train  # noqa: E402
from teleop_app.profiles import load_profile  # noqa: E402

SIZE = 32
TINY = dict(channels=(8, 16, 16), d_model=32, n_layers=1, n_heads=2, grid=2)
EPISODES = [("pick_red", 11), ("pick_blue", 12), ("pick_red", 13), ("pick_blue", 14)]


def record(root, episodes=EPISODES, max_steps=45):
    wc = Workcell(SimConfig(seed=0, width=SIZE, height=SIZE))
    store = EpisodeStore.create(root, "sim7", 10.0, kin.JOINT_NAMES, {"front": (SIZE, SIZE)})
    paths = []
    for task, seed in episodes:
        wc.reset(seed=seed, task=task)
        ex = ScriptedExpert(wc, seed=seed, dt=0.1)
        w = EpisodeWriter(store.new_episode_path(),
                          EpisodeMeta(wc.instruction, 10.0, "sim7", kin.JOINT_NAMES, "scripted",
                                      extra={"task": task, "seed": seed, "sim": wc.sim}),
                          cameras={"front": (SIZE, SIZE)}, dof=8, jpeg=False)
        for k in range(max_steps):
            q = wc.qpos()
            a = ex.act(q)
            w.add_step(q, a, a, timestamp=0.1 * k, images={"front": wc.render("front", SIZE, SIZE)},
                       image_timestamps={"front": 0.1 * k})
            wc.set_target(a)
            wc.step(0.1)
            if ex.done:
                break
        paths.append(store.add(w.finish(success=1 if wc.success() else 0)))
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    data = root / "data"
    record(data)
    ckpt = root / "vla.pt"
    seen = []
    r = train(data, ckpt, steps=60, batch_size=16, lr=2e-3, image_size=(SIZE, SIZE), chunk=4,
              val_fraction=0.25, checkpoint_every=30, model=TINY, warmup=5, threads=2,
              progress=seen.append, resume=False)
    return root, data, ckpt, r, seen


class ReplayPolicy:
    """Plays recorded actions back by tick (open loop): with the same seed the scene is identical."""

    def __init__(self, actions, meta):
        self.actions, self.meta, self.t = np.asarray(actions), meta, 0

    def reset(self):
        self.t = 0

    def predict(self, obs):
        a = self.actions[min(self.t, len(self.actions) - 1)]
        self.t += 1
        return a[None]


def test_training_lowers_loss_and_checkpoints(trained):
    root, data, ckpt, r, seen = trained
    losses = [p["loss"] for p in seen if p.get("phase") == "training"]
    assert r.step == 60 and len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    assert seen[0]["phase"] == "loading" and seen[-1]["phase"] == "done"
    assert any(p.get("phase") == "training" and p["step"] == 30 for p in seen)
    blob = read_checkpoint(ckpt)
    assert blob["train"]["step"] == 60 and blob["meta"]["joint_names"] == kin.JOINT_NAMES
    assert blob["train"]["held_out"], "a quarter of the episodes is held out"
    # the sim it learnt on travels with it, so `teleop eval` rolls it out there
    assert blob["meta"]["extra"]["sim"] == Workcell(SimConfig(width=SIZE, height=SIZE)).sim == "physics"


def test_resume_continues_from_checkpoint(trained, tmp_path):
    root, data, ckpt, r, _ = trained
    copy = tmp_path / "vla.pt"
    copy.write_bytes(ckpt.read_bytes())
    r2 = train(data, copy, steps=70, batch_size=8, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.25,
               model=TINY, threads=2)
    assert r2.step == 70 and read_checkpoint(copy)["train"]["step"] == 70
    assert len(r2.history) == 1 and r2.history[0][0] == 70     # only steps 61..70 were run


def test_checkpoint_roundtrip_and_errors(trained, tmp_path):
    root, data, ckpt, r, _ = trained
    pol = load_policy(str(ckpt))
    pol2 = load_policy(str(ckpt))
    o = {"images": {"front": np.full((48, 48, 3), 120, np.uint8)}, "qpos": kin.HOME.copy(),
         "instruction": "pick up the red cube"}
    a, b = pol.predict(o), pol2.predict(o)
    assert a.shape == (4, 8) and np.array_equal(a, b) and np.all(np.isfinite(a))
    assert pol.meta.fps == 10.0 and pol.meta.cameras == ["front"] and pol.meta.image_size == (SIZE, SIZE)
    check_compatible(pol.meta, load_profile("sim7"))
    # mismatches are caught before anything moves
    for change, msg in [({"joint_names": list(reversed(kin.JOINT_NAMES))}, "joint order"),
                        ({"action_dim": 6}, "action dimension"), ({"fps": 30.0}, "control rate")]:
        m = PolicyMeta.from_dict({**pol.meta.to_dict(), **change})
        with pytest.raises(PolicyMismatchError, match=msg):
            check_compatible(m, load_profile("sim7"))
    # corrupt / truncated / foreign files
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(ckpt.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_policy(str(bad))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a teleop VLA checkpoint"):
        load_policy(str(foreign))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "teleop-vla", "x": PolicyMeta(["a"], 1, 10.0)}, evil)   # an arbitrary object
    with pytest.raises(CheckpointError, match="objects other than tensors are refused"):
        load_policy(str(evil))
    with pytest.raises(CheckpointError, match="not found"):
        load_policy(str(tmp_path / "missing.pt"))


def test_closed_loop_sim_through_safety_with_recording(trained, tmp_path):
    root, data, ckpt, r, _ = trained
    # 1) replaying a recorded expert episode on its own seed succeeds: success detection works
    ep = read_episode(root / "data" / EpisodeStore.open(data).episodes()[0].file)
    assert ep.success == 1
    replay = ReplayPolicy(ep.action, PolicyMeta(kin.JOINT_NAMES, 8, 10.0, (SIZE, SIZE), ["front"], 1, kind="replay"))
    res = run_sim_rollouts(replay, ["pick_red"], 1, seed0=11, record_root=tmp_path / "rec", max_steps=60)
    r0 = res.rollouts[0]
    assert r0.success is True and r0.reason == "success" and r0.commands_sent == r0.steps
    rec = read_episode(r0.episode)
    assert rec.meta.mode == "policy" and rec.success == 1 and rec.num_steps == r0.steps
    # 2) the trained tiny policy, all commands through the safety layer, results reported
    pol = load_policy(str(ckpt))
    res2 = run_sim_rollouts(pol, ["pick_red", "pick_blue"], 1, max_steps=8, record_root=tmp_path / "rec2")
    assert [x.task for x in res2.rollouts] == ["pick_red", "pick_blue"]
    for x in res2.rollouts:
        assert x.commands_sent == 8 and x.success is False and x.reason == "timeout"
        e = read_episode(x.episode)
        step = np.abs(np.diff(np.vstack([kin.HOME, e.action]), axis=0))
        assert np.all(step <= kin.MAX_SPEED * 0.1 + 1e-6)          # the safety step limit held
        assert np.all(e.action >= kin.LOWER - 1e-9) and np.all(e.action <= kin.UPPER + 1e-9)
    lat = res2.latency_ms()
    assert lat["n"] == 16 and lat["p50"] > 0
    assert "pick_red" in res2.summary() and res2.per_task()["pick_blue"]["n"] == 1
    back = RolloutResults.load(res2.save(tmp_path / "r.json"))
    assert back.overall() == res2.overall()


def test_offline_and_report(trained, tmp_path):
    root, data, ckpt, r, _ = trained
    pol = load_policy(str(ckpt))
    off = evaluate_offline(pol, data, split="val", plot_path=tmp_path / "plot.png")
    assert off.episodes and set(off.episodes) <= set(read_checkpoint(ckpt)["train"]["held_out"])
    assert len(off.mae) == 8 and all(np.isfinite(off.mae)) and 0 <= off.gripper_accuracy <= 1
    assert (tmp_path / "plot.png").stat().st_size > 1000
    # a report from known numbers: 3/4 and 1/2 successes
    from teleop_app.policy.runner import RolloutResult
    rs = [RolloutResult("pick_red", "pick up the red cube", s, s != 2, 30, "success" if s != 2 else "timeout",
                        safety={"clamped_step": 2, "estops": 0}, latencies=[0.010, 0.012], nan_stop=False)
          for s in range(4)]
    rs += [RolloutResult("pick_blue", "pick up the blue cube", 9, True, 30, "success", latencies=[0.02]),
           RolloutResult("pick_blue", "pick up the blue cube", 10, False, 3, "policy output NaN at step 3",
                         nan_stop=True)]
    page = write_report(RolloutResults(rs, policy="tiny", chunk_mode="ensemble"), off, tmp_path / "rep",
                        info={"training minutes": 0.5})
    html = page.read_text()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "data:image/png;base64," in html and "offline_actions.png" in md
    assert "| pick_red | pick up the red cube | 3/4 | 75% | 30-95% |" in md
    assert "| pick_blue | pick up the blue cube | 1/2 | 50% | 9-91% |" in md
    assert "4/6 = 67% (95% CI 30-90%)" in md
    assert "| rollouts stopped for NaN / out-of-range output | 1 |" in md
    assert "| commands slowed by the step (speed) limit | 8 |" in md
    assert "policy output NaN at step 3" in html
    blob = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert blob["offline"]["episodes"] == off.episodes


def test_cancel_stops_and_saves(trained, tmp_path):
    import threading
    root, data, ckpt, r, _ = trained
    cancel = threading.Event()

    def progress(p):
        if p.get("step", 0) >= 20:
            cancel.set()
    out = tmp_path / "c.pt"
    rc = train(data, out, steps=1000, batch_size=8, image_size=(SIZE, SIZE), chunk=4, model=TINY,
               progress=progress, cancel=cancel, val_fraction=0.25)
    assert rc.cancelled and rc.step == 20 and read_checkpoint(out)["train"]["step"] == 20
