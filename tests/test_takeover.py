"""Takeover during a policy rollout: a real PolicyRunner drives the sim arm through the pipeline, the
operator takes over with the virtual SDL pad and hands back; both handovers are bumpless, the
recorded episode's per-step `intervention` flags and `action_source` match the takeover window, and
the LeRobot export carries the column. Uncertainty (chunk disagreement) can pause and ask for help."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from drivers.sim import SimConfig, Workcell
from drivers.sim import kinematics as kin
from drivers.sim.robot import SimRobot
from recorder.export_lerobot import export_lerobot
from recorder.reader import read_episode
from recorder.schema import EpisodeMeta
from recorder.store import EpisodeStore
from recorder.writer import EpisodeWriter
from teleop_app.human import TakeoverSource
from teleop_app.mapping import LSTICK, LX, MappingState, default_mapping
from teleop_app.pipeline import ControlPipeline, finish_writer
from teleop_app.policy.base import PolicyMeta
from teleop_app.policy.runner import PolicyRunner
from teleop_app.policy.uncertainty import chunk_disagreement
from teleop_app.profiles import load_profile
from teleop_app.safety import SafetyLayer
from teleop_app.sources import GamepadSource, PolicySource

PERIOD = 0.1


class DriftPolicy:
    """A tiny real Policy: a chunk of targets moving joint1 forward from the observed state
    (plus optional noise, so overlapping chunks disagree)."""

    def __init__(self, chunk: int = 5, step: float = 0.04, noise: float = 0.0):
        self.meta = PolicyMeta(joint_names=kin.JOINT_NAMES, action_dim=8, fps=1 / PERIOD, cameras=[],
                               chunk_size=chunk, kind="test-drift")
        self.step, self.noise = step, noise
        self.rng = np.random.default_rng(0)

    def reset(self):
        pass

    def predict(self, obs):
        q = np.asarray(obs["qpos"], float)
        out = np.repeat(q[None], self.meta.chunk_size, 0)
        out[:, 0] += self.step * np.arange(1, self.meta.chunk_size + 1)
        if self.noise:
            out[:, :7] += self.rng.normal(0, self.noise, (self.meta.chunk_size, 7))
        return out


@pytest.fixture
def rig(attached_pad, tmp_path):
    from drivers.gamepad import Gamepad, GamepadConfig
    prof = load_profile("sim7")
    wc = Workcell(SimConfig(seed=0))
    robot = SimRobot(wc, period=PERIOD, realtime=False)
    robot.connect()
    pad = Gamepad(GamepadConfig())
    pad.connect()
    mapping = default_mapping(prof.dof)
    ms = MappingState(mapping)
    pipe = ControlPipeline(robot, {}, SafetyLayer.from_profile(prof, PERIOD), PERIOD, profile=prof,
                           workcell=wc, clock="sim")
    said: list[str] = []
    pipe.ctx.say = said.append

    def before(ctx):
        ctx.pad = pad.read()
        ctx.pad_cmd = ms.update(ctx.pad, prof.max_speed(), prof.dof - 1)
    pipe.before = before
    pipe.rebase(robot.get_observation().position)
    yield prof, robot, attached_pad, pipe, said, tmp_path
    pad.disconnect()
    robot.disconnect()


def test_takeover_mid_rollout_is_bumpless_and_recorded(rig):
    prof, robot, vpad, pipe, said, tmp = rig
    runner = PolicyRunner(DriftPolicy(), "ensemble", lower=prof.lower(), upper=prof.upper())
    src = TakeoverSource(PolicySource(runner, stall_s=None), GamepadSource())
    store = EpisodeStore.create(tmp / "ds", prof.name, 1 / PERIOD, prof.joint_names, {})
    meta = EpisodeMeta(instruction="drift", fps=1 / PERIOD, robot=prof.name, joint_names=prof.joint_names,
                       mode="policy")
    writer = EpisodeWriter(store.new_episode_path(), meta, cameras={}, dof=prof.dof, jpeg=False)
    pipe.recorder.begin(writer)
    pipe.set_source(src)
    src.start(pipe.ctx)
    sent, reps, who = [pipe.ctx.target.copy()], [], []
    for k in range(30):
        if k == 10:
            vpad.set_button(LSTICK, True)            # take over ...
            vpad.set_axis(LX, -1.0)                  # ... and drive joint1 back
        if k == 11:
            vpad.set_button(LSTICK, False)
        if k == 19:
            vpad.set_axis(LX, 0.0)
        if k == 20:
            vpad.set_button(LSTICK, True)            # hand back
        if k == 21:
            vpad.set_button(LSTICK, False)
        r = pipe.step(k * PERIOD)
        sent.append(r.sent)
        reps.append(r.report)
        who.append((src.active, src.intervention))
    path = finish_writer(*pipe.recorder.end(), success=1)
    assert [w for w, _ in who] == ["policy"] * 10 + ["gamepad"] * 10 + ["policy"] * 10, who
    sent = np.array(sent)
    dq = np.diff(sent, axis=0)
    max_step = prof.max_speed() * PERIOD
    assert np.all(np.abs(dq) <= max_step + 1e-9)
    # bumpless: the handover ticks move no more than the ticks around them, nothing was clamped
    for k in (10, 20):
        assert not reps[k].clamped_step, k
        assert np.max(np.abs(dq[k])) <= max(np.max(np.abs(dq[k - 1])), np.max(np.abs(dq[k + 1]))) + 1e-6, k
    assert dq[5, 0] > 0.02 and dq[15, 0] < -0.02 and dq[25, 0] > 0.02    # policy, human, policy again
    # neither hand moves the gripper: it stays open, up to the physics fingers' sway under the arm's
    # acceleration (the policy echoes the measured opening), and does not step at a handover
    assert np.all(np.abs(sent[:, 7] - sent[0, 7]) < 0.01), "gripper must not move at a handover"
    assert all(abs(dq[k, 7]) <= 1e-3 for k in (10, 20)), "gripper must not move at a handover"
    assert any("took over" in m for m in said) and any("handed back" in m for m in said)

    ep = read_episode(path)
    flags = ep.intervention
    assert flags is not None and flags.tolist() == [False] * 10 + [True] * 10 + [False] * 10
    assert ep.action_source == ["policy"] * 10 + ["gamepad"] * 10 + ["policy"] * 10
    ep.close()

    store.add(path)
    out = export_lerobot(store, tmp / "lerobot", "test/takeover")
    table = pq.read_table(next((out / "data").rglob("*.parquet")))
    assert table.column("intervention").to_pylist() == flags.tolist()
    import json
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["intervention"]["dtype"] == "bool"


def test_stick_past_threshold_takes_over_and_api_hands_back(rig):
    prof, robot, vpad, pipe, said, tmp = rig
    runner = PolicyRunner(DriftPolicy(), "ensemble")
    src = TakeoverSource(PolicySource(runner, stall_s=None), GamepadSource(), stick_threshold=0.5)
    pipe.set_source(src)
    src.start(pipe.ctx)
    vpad.set_axis(LX, 0.3)                           # below the threshold: the policy keeps driving
    for k in range(3):
        pipe.step(k * PERIOD)
    assert not src.intervention
    vpad.set_axis(LX, 0.8)
    pipe.step(0.3)
    assert src.intervention and src.active == "gamepad"
    vpad.set_axis(LX, 0.0)
    src.hand_back()
    steps_before = runner._step
    pipe.step(0.4)
    assert not src.intervention and src.active == "policy"
    assert runner._step == 1 and steps_before > 0, "handing back restarts the runner (reset)"


def test_uncertainty_is_measured_and_asks_for_help(rig):
    prof, robot, vpad, pipe, said, tmp = rig
    calm = PolicyRunner(DriftPolicy(), "ensemble")
    src = TakeoverSource(PolicySource(calm, stall_s=None), GamepadSource(), ask_threshold=0.01)
    pipe.set_source(src)
    src.start(pipe.ctx)
    for k in range(6):
        pipe.step(k * PERIOD)
    calm_u = src.uncertainty
    assert not src.asking
    noisy = PolicyRunner(DriftPolicy(noise=0.05), "ensemble")
    src = TakeoverSource(PolicySource(noisy, stall_s=None), GamepadSource(), ask_threshold=0.01, ask_ticks=2)
    pipe.set_source(src)
    src.start(pipe.ctx)
    us = []
    for k in range(8):
        r = pipe.step(1 + k * PERIOD)
        us.append(src.uncertainty)
    assert np.nanmean(us) > 0.01 > calm_u + 0.005
    assert src.asking and src.active == "hold" and r.raw is None
    assert any("uncertain" in m for m in said)
    assert np.isnan(chunk_disagreement(PolicyRunner(DriftPolicy(), "ensemble")))
    src.take_over()
    pipe.step(2.0)
    assert src.intervention and not src.asking
    st = src.status()
    assert st["intervention"] and st["source"] == "gamepad" and st["takeovers"] == 1


def test_session_takeover_mode_status_and_api(tmp_path):
    """The registered takeover mode in a live session: Status.human carries the state for the GUI."""
    import time

    from teleop_app.session import Mode, Session, SessionConfig
    s = Session(SessionConfig(robot="sim", dataset=str(tmp_path / "ds"), use_gamepad=False))
    s.connect()
    try:
        s.set_policy(PolicyRunner(DriftPolicy(), "ensemble", async_=True), "drift")
        s.start()
        s.set_mode(Mode.TAKEOVER)
        time.sleep(0.8)
        st = s.status.human
        assert st["source"] == "policy" and not st["intervention"] and st["uncertainty"] >= 0
        s.take_over()
        time.sleep(0.4)
        assert s.status.human["intervention"] and s.status.human["source"] == "gamepad"
        q = s.status.sent.copy()
        time.sleep(0.3)
        assert np.allclose(s.status.sent, q), "the operator (no pad input) holds the arm"
        s.hand_back()
        time.sleep(0.4)
        assert not s.status.human["intervention"] and s.status.human["source"] == "policy"
    finally:
        s.close()


def test_leader_arm_takes_over_by_moving_it(tmp_path):
    """Moving the leader during a rollout takes over; the follower ramps in to the leader (no jump)."""
    from drivers.leader import SimLeaderArm
    from teleop_app.human import LeaderArmSource
    prof = load_profile("sim7")
    wc = Workcell(SimConfig(seed=0))
    robot = SimRobot(wc, period=PERIOD, realtime=False)
    robot.connect()
    sim = SimLeaderArm(prof.dof, q0=prof.home()).start()
    leader = sim.leader(prof.joint_names, gripper_range=(0.0, 1.0))
    leader.connect()
    try:
        pipe = ControlPipeline(robot, {}, SafetyLayer.from_profile(prof, PERIOD), PERIOD, profile=prof,
                               workcell=wc, clock="sim")
        pipe.rebase(robot.get_observation().position)
        human = LeaderArmSource(leader, prof)
        src = TakeoverSource(PolicySource(PolicyRunner(DriftPolicy(), "ensemble"), stall_s=None), human)
        pipe.set_source(src)
        src.start(pipe.ctx)
        sent = [pipe.ctx.target.copy()]
        for k in range(5):
            sent.append(pipe.step(k * PERIOD).sent)
        assert not src.intervention
        q = prof.home().copy()
        q[1] += 0.3                                    # the operator grabs the leader and moves joint2
        sim.move(q)
        for k in range(5, 30):
            sent.append(pipe.step(k * PERIOD).sent)
        assert src.intervention and src.active == "leader" and human.state == "following"
        d = np.abs(np.diff(np.array(sent), axis=0))
        assert np.all(d <= prof.max_speed() * PERIOD + 1e-9)
        assert np.allclose(robot.get_observation().position[1], q[1], atol=5e-3)
    finally:
        leader.disconnect()
        sim.stop()
        robot.disconnect()


def test_take_over_outside_takeover_mode_says_why(tmp_path):
    from teleop_app.session import Mode, Session, SessionConfig, SessionError
    with Session(SessionConfig(robot="sim", dataset=str(tmp_path / "ds"), use_gamepad=False)) as s:
        assert s.mode == Mode.HOLD
        with pytest.raises(SessionError, match="takeover mode"):
            s.take_over()
        with pytest.raises(SessionError, match="takeover mode"):
            s.hand_back()
