"""Policy runtime pieces without training: tokenizer, compatibility, checkpoints, runner, NaN guard."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from teleop_app.policy.base import PolicyMeta, PolicyMismatchError, check_compatible
from teleop_app.policy.metrics import wilson
from teleop_app.policy.runner import PolicyOutputError, PolicyRunner, rollout
from teleop_app.policy.tokenizer import Tokenizer
from teleop_app.profiles import load_profile
from teleop_app.safety import SafetyLayer

PROF = load_profile("sim7")
NAMES = PROF.joint_names


def meta(**kw):
    d = dict(joint_names=list(NAMES), action_dim=8, fps=10.0, cameras=["front"], chunk_size=4, kind="test")
    d.update(kw)
    return PolicyMeta(**d)


class FnPolicy:
    """predict(obs) = fn(step, obs)."""

    def __init__(self, fn, chunk=4, delay=0.0):
        self.meta = meta(chunk_size=chunk)
        self.fn, self.delay, self.calls = fn, delay, 0

    def reset(self):
        self.calls = 0

    def predict(self, obs):
        if self.delay:
            time.sleep(self.delay)
        out = self.fn(self.calls, obs)
        self.calls += 1
        return out


def obs(q=None):
    return {"images": {"front": np.zeros((16, 16, 3), np.uint8)},
            "qpos": PROF.home() if q is None else q, "instruction": "pick up the red cube"}


# ---- tokenizer -------------------------------------------------------------------------
def test_tokenizer_deterministic_and_unknown_words():
    a = Tokenizer.build(["put the red cube in the bowl", "pick up the blue cube"])
    b = Tokenizer.build(["pick up the blue cube", "put the red cube in the bowl"])
    assert a.vocab == b.vocab                      # order of instructions does not matter
    ids = a.encode("Pick up the RED cube!")
    assert ids == b.encode("pick up the red cube") and len(ids) == a.max_len
    assert a.decode(ids) == "pick up the red cube"
    unk = a.encode("grasp the zorblax")
    assert unk[0] == a.unk_id and unk[2] == a.unk_id and unk[1] == a.vocab.index("the")
    assert a.unknown_words("grasp the zorblax") == ["grasp", "zorblax"]
    assert Tokenizer.from_dict(a.to_dict()).encode("pick up the red cube") == ids
    long = a.encode(" ".join(["red"] * 50))
    assert len(long) == a.max_len


# ---- compatibility ---------------------------------------------------------------------
def test_check_compatible_ok_and_mismatches():
    check_compatible(meta(), PROF)
    with pytest.raises(PolicyMismatchError, match="joint order differs"):
        check_compatible(meta(joint_names=[NAMES[1], NAMES[0], *NAMES[2:]]), PROF)
    with pytest.raises(PolicyMismatchError, match="joint names differ"):
        check_compatible(meta(joint_names=["a"] * 8), PROF)
    with pytest.raises(PolicyMismatchError, match="action dimension differs: policy outputs 7"):
        check_compatible(meta(action_dim=7), PROF)
    with pytest.raises(PolicyMismatchError, match="control rate differs: policy trained at 30 Hz"):
        check_compatible(meta(fps=30.0), PROF)
    with pytest.raises(PolicyMismatchError, match=r"cameras missing on the robot: \['top'\]"):
        check_compatible(meta(cameras=["front", "top"]), PROF)


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


# ---- runner ----------------------------------------------------------------------------
def ramp(step, o):
    """Chunk k = value (step + k) on every joint: makes the per-tick choice visible."""
    return np.stack([np.full(8, 0.1 * (step + k)) for k in range(4)])


def test_replan_plays_chunk_then_predicts_again():
    pol = FnPolicy(ramp)
    r = PolicyRunner(pol, "replan", replan_every=2)
    outs = [r.act(obs())[0] for _ in range(4)]
    # predict at tick 0 (chunk 0,.1,..), play 2, predict at tick 2 (call #1: values .1,.2..)
    assert np.allclose(outs, [0.0, 0.1, 0.1, 0.2]) and pol.calls == 2


def test_ensemble_averages_overlapping_chunks():
    pol = FnPolicy(lambda s, o: np.stack([np.full(8, float(s))] * 4))   # chunk = call index everywhere
    r = PolicyRunner(pol, "ensemble", ensemble_decay=0.0)
    outs = [r.act(obs())[0] for _ in range(6)]
    # tick t averages calls max(0,t-3)..t equally
    assert np.allclose(outs, [0, 0.5, 1.0, 1.5, 2.5, 3.5]) and pol.calls == 6


def test_nan_output_raises_with_step():
    pol = FnPolicy(lambda s, o: np.full((4, 8), np.nan) if s == 2 else np.tile(PROF.home(), (4, 1)))
    r = PolicyRunner(pol, "ensemble")
    r.act(obs())
    r.act(obs())
    with pytest.raises(PolicyOutputError, match="policy output NaN at step 2"):
        r.act(obs())


def test_out_of_range_output_raises():
    far = PROF.home().copy()
    far[3] = 5.0
    r = PolicyRunner(FnPolicy(lambda s, o: np.tile(far, (4, 1))), "ensemble", lower=PROF.lower(), upper=PROF.upper())
    with pytest.raises(PolicyOutputError, match="out of range at step 0: joint4 = 5.000"):
        r.act(obs())


def test_sync_watchdog_holds_when_inference_slow():
    r = PolicyRunner(FnPolicy(ramp, delay=0.05), "ensemble", max_latency=0.01)
    assert r.act(obs()) is None and r.last_hold_watchdog
    assert r.stats.watchdog_trips == 1 and r.stats.holds == 1


def test_async_never_blocks_and_counts_watchdog():
    gate = threading.Event()

    def slow(step, o):
        if step == 1:
            gate.wait(2.0)          # the second inference hangs until released
        return ramp(step, o)
    r = PolicyRunner(FnPolicy(slow), "ensemble", async_=True, max_latency=0.05)
    try:
        assert r.act(obs()) is None             # nothing predicted yet: hold
        deadline = time.monotonic() + 2
        a = None
        while a is None and time.monotonic() < deadline:
            time.sleep(0.01)
            a = r.act(obs())
        assert a is not None                    # first chunk arrived and is used (latency compensated)
        t0 = time.monotonic()
        held = [r.act(obs()) for _ in range(3) if time.sleep(0.03) is None]
        assert time.monotonic() - t0 < 0.5      # act() never waited for the hung inference
        assert any(h is None for h in held) and r.stats.watchdog_trips >= 1
    finally:
        gate.set()
        r.close()


# ---- rollout through the safety layer on the sim robot ----------------------------------
class CountingRobot:
    def __init__(self, robot):
        self.robot, self.sent = robot, []

    def get_observation(self):
        return self.robot.get_observation()

    def send_action(self, t):
        self.sent.append(np.array(t))
        return self.robot.send_action(t)


def _sim():
    from drivers.sim.robot import SimCamera, SimRobot
    from drivers.sim.workcell import SimConfig, Workcell
    wc = Workcell(SimConfig(seed=3, width=32, height=32))
    rob = SimRobot(wc, period=0.1)
    rob.connect()
    cam = SimCamera(wc, "front", "front", 32, 32)
    cam.connect()
    return wc, CountingRobot(rob), {"front": cam}


def test_nan_policy_blocked_nothing_sent_after_nan():
    wc, robot, cams = _sim()
    home = wc.qpos()
    pol = FnPolicy(lambda s, o: np.full((4, 8), np.nan) if s >= 3 else np.tile(o["qpos"], (4, 1)))
    safety = SafetyLayer.from_profile(PROF, 0.1)
    res = rollout(PolicyRunner(pol, "replan", replan_every=1), robot, cams, "pick up the red cube", safety,
                  max_steps=20, period=0.1, success_fn=wc.success)
    assert res.nan_stop and "policy output NaN at step 3" in res.reason
    assert len(robot.sent) == 3 and res.commands_sent == 3
    assert all(np.all(np.isfinite(s)) for s in robot.sent)
    assert np.allclose(wc.qpos(), home, atol=1e-6) and res.success is False


def test_far_target_is_step_limited_by_safety():
    wc, robot, cams = _sim()
    far = wc.qpos()
    far[0] += 1.0
    safety = SafetyLayer.from_profile(PROF, 0.1)
    res = rollout(PolicyRunner(FnPolicy(lambda s, o: np.tile(far, (4, 1))), "ensemble"), robot, cams, "x",
                  safety, max_steps=3, period=0.1)
    steps = np.diff(np.stack([PROF.home(), *robot.sent]), axis=0)
    assert np.all(np.abs(steps[:, 0]) <= PROF.max_speed()[0] * 0.1 + 1e-9)
    assert res.safety["clamped_step"] == 3 and res.commands_sent == 3


# ---- augmentation switches ---------------------------------------------------------------
def test_augment_presets_shape_range_and_strength():
    torch = pytest.importorskip("torch")
    from teleop_app.policy.train import augment_images
    rng = np.random.default_rng(0)
    x = torch.rand(4, 2, 3, 16, 16)
    assert augment_images(x, rng, "none") is x
    diffs = {}
    for mode in ("basic", "strong"):
        y = augment_images(x.clone(), np.random.default_rng(1), mode, pad=2)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        diffs[mode] = float((y - x).abs().mean())
    assert 0 < diffs["basic"] < diffs["strong"]
    # strong changes colour balance per image (white balance / saturation), basic only brightness
    flat = torch.full((64, 1, 3, 8, 8), 0.5)
    ys = augment_images(flat.clone(), rng, "strong", pad=0)
    chan = ys.mean((3, 4))[:, 0]                       # (64, 3) per-image channel means
    assert float((chan.max(1).values - chan.min(1).values).mean()) > 0.02
    yb = augment_images(flat.clone(), rng, "basic", pad=0).mean((3, 4))[:, 0]
    assert float((yb.max(1).values - yb.min(1).values).max()) < 1e-6
    with pytest.raises(ValueError, match="augment must be one of"):
        augment_images(x, rng, "extreme")


def test_augment_pixel_noise_is_gaussian_fresh_each_batch_and_follows_the_seed():
    """The strong augmentation's pixel noise comes from windows of a bank drawn once (gaussian_noise): standard
    normal, different in every batch, and the same for the same training seed (a run stays reproducible)."""
    torch = pytest.importorskip("torch")
    from teleop_app.policy.train import NOISE_BANK, gaussian_noise
    rng = np.random.default_rng(3)
    a, b = gaussian_noise((64, 3, 96, 96), rng), gaussian_noise((64, 3, 96, 96), rng)
    assert abs(float(a.mean())) < 0.01 and abs(float(a.std()) - 1) < 0.01 and a.dtype == torch.float32
    assert float((a - b).abs().mean()) > 0.5                       # not the same window twice
    assert torch.equal(gaussian_noise((64, 3, 96, 96), np.random.default_rng(3)), a)
    big = gaussian_noise((NOISE_BANK,), rng)                       # too big for a window: fresh noise
    assert big.shape == (NOISE_BANK,) and abs(float(big.std()) - 1) < 0.01


def test_a_policy_is_evaluated_on_the_sim_it_was_trained_on():
    from teleop_app.policy.evaluate import choose_sim, trained_sim

    class Pol:
        def __init__(self, train_info=None, extra=None):
            self.meta = PolicyMeta(joint_names=["a"], action_dim=1, fps=10, extra=extra or {})
            self.train_info = train_info or {}
    demo = Pol({"demo": {"sim": "kinematic workcell (drivers/sim/workcell.py)"}})
    assert trained_sim(demo) == "kinematic" and choose_sim(demo) == (False, "the one it was trained on")
    assert choose_sim(demo, physics=True) == (True, "as asked")
    assert trained_sim(Pol(extra={"sim": "physics"})) == "physics"
    unknown = Pol()
    assert trained_sim(unknown) is None and trained_sim(unknown, "demo") == "kinematic"   # an inference child
    on, why = choose_sim(unknown)
    assert on is True and why.startswith("the default")
