"""The one control pipeline: what is recorded is what the driver wrote and what the policy saw; episode
file work happens off the tick. Real sim, real writer, real HDF5 files read back."""
import threading
import time

import numpy as np
import pytest

from recorder.reader import read_episode
from recorder.store import EpisodeStore
from teleop_app.session import Mode, Session, SessionConfig
from teleop_app.workflow import WorkflowConfig
from waiting import wait_for  # noqa: E402 (tests/waiting.py)




def _sim(size=32):
    from drivers.sim.robot import SimCamera, SimRobot
    from drivers.sim.workcell import SimConfig, Workcell
    wc = Workcell(SimConfig(seed=3, width=size, height=size))
    rob = SimRobot(wc, period=0.1)
    rob.connect()
    cam = SimCamera(wc, "front", "front", size, size)
    cam.connect()
    return wc, rob, {"front": cam}


def test_recorded_action_is_what_the_driver_wrote_when_it_clamps(tmp_path):
    """A safety layer wider than the arm: the SimRobot driver clamps to its own limits and returns
    that; the episode's `action` is the driver's value, `action_raw` the request."""
    from recorder.schema import EpisodeMeta
    from recorder.writer import EpisodeWriter
    from teleop_app.pipeline import ControlPipeline, run_sim_episode
    from teleop_app.profiles import load_profile
    from teleop_app.safety import SafetyLayer
    from teleop_app.sources import BaseSource
    prof = load_profile("sim7")
    wc, rob, cams = _sim()
    wide = SafetyLayer(prof.lower() - 1.0, prof.upper() + 1.0, np.full(prof.dof, np.inf))
    pipe = ControlPipeline(rob, cams, wide, 0.1, profile=prof, workcell=wc, clock="sim")
    beyond = wc.upper + 0.5

    class Beyond(BaseSource):
        def command(self, ctx):
            return beyond.copy()
    w = EpisodeWriter(tmp_path / "episode_000001.h5",
                      EpisodeMeta("x", 10.0, "sim7", prof.joint_names, "scripted"),
                      cameras={"front": (32, 32)}, dof=prof.dof, jpeg=False)
    pipe.recorder.begin(w)
    run_sim_episode(pipe, Beyond(), max_steps=5)
    _, left = pipe.recorder.end()
    assert not left
    ep = read_episode(w.finish())
    assert np.allclose(ep.action_raw, beyond, atol=1e-5)
    assert np.allclose(ep.action, np.clip(beyond, wc.lower, wc.upper), atol=1e-5)
    assert np.all(ep.action < ep.action_raw - 0.4)       # the driver's clamp, not the request


def test_headless_scripted_recording_runs_through_the_pipeline(tmp_path, monkeypatch):
    from teleop_app import pipeline
    from teleop_app.scripted import record_scripted
    steps = []
    real = pipeline.ControlPipeline.step

    def counting(self, now):
        r = real(self, now)
        steps.append(r)
        return r
    monkeypatch.setattr(pipeline.ControlPipeline, "step", counting)
    (p,) = record_scripted(tmp_path / "ds", ["pick_red"], 1, seed=5, fps=10, image_size=48)
    ep = read_episode(p)
    assert ep.num_steps == len(steps) > 10 and ep.success == 1
    assert np.allclose(np.diff(ep.timestamp), 0.1, atol=1e-6)          # the sim clock
    assert np.allclose(ep.action, np.stack([r.written for r in steps]), atol=1e-5)
    assert ep.images("front").shape == (ep.num_steps, 48, 48, 3)


class _SeeingPolicy:
    """Remembers every observation it was given (image copies) and moves joint 0 a little."""

    def __init__(self, profile, chunk=4):
        from teleop_app.policy.base import PolicyMeta
        self.meta = PolicyMeta(joint_names=profile.joint_names, action_dim=profile.dof, fps=20,
                               cameras=["front"], chunk_size=chunk)
        self.seen = []

    def reset(self):
        pass

    def predict(self, obs):
        self.seen.append((obs["timestamp"], obs["images"]["front"].copy()))
        q = np.asarray(obs["qpos"], float).copy()
        q[0] += 0.01
        return np.tile(q, (self.meta.chunk_size, 1))


def test_policy_mode_recording_stores_exactly_the_frame_the_policy_saw(tmp_path):
    from teleop_app.policy.runner import PolicyRunner
    wf = WorkflowConfig(countdown_s=0, reset_s=0, episode_s=0, target_episodes=5)
    cfg = SessionConfig(dataset=str(tmp_path / "ds"), fps=20, workflow=wf, use_gamepad=False, jpeg=False)
    with Session(cfg) as s:
        pol = _SeeingPolicy(s.profile)
        s.set_policy(PolicyRunner(pol, lower=s.profile.lower(), upper=s.profile.upper()), "seeing")
        s.set_mode(Mode.POLICY)
        s.start_episode()
        assert wait_for(lambda: s.status.recording_steps > 30)
        s.stop_episode()
        s.keep(success=True)
        s.set_mode(Mode.HOLD)
    (info,) = EpisodeStore.open(tmp_path / "ds").episodes()
    ep = read_episode(tmp_path / "ds" / info.file)
    assert ep.meta.mode == "policy"
    ts = {round(float(t), 6): i for i, t in enumerate(ep.timestamp)}
    imgs = ep.images("front")
    matched = 0
    for t, img in pol.seen:
        i = ts.get(round(float(t), 6))
        if i is None:
            continue                      # observed before the recording started / after it stopped
        assert np.array_equal(imgs[i], img), f"step {i}: the recorded frame is not the one the policy saw"
        matched += 1
    assert matched >= 10, matched


def test_slow_store_add_does_not_delay_ticks(tmp_path):
    """Episode bookkeeping (finish, store.add, relabel) runs on the housekeeping thread: a store.add
    that takes 300 ms leaves the 20 Hz loop on time."""
    wf = WorkflowConfig(countdown_s=0, reset_s=0, episode_s=0, target_episodes=5)
    cfg = SessionConfig(dataset=str(tmp_path / "ds"), fps=20, workflow=wf, use_gamepad=False)
    with Session(cfg) as s:
        real_add = s.store.add
        entered = threading.Event()

        def slow_add(p):
            entered.set()
            time.sleep(0.3)
            return real_add(p)
        s.store.add = slow_add
        s.start_episode()
        assert wait_for(lambda: s.status.recording_steps > 10)
        s.stop_episode()
        s.keep(success=True)
        assert entered.wait(5)
        ticks0, missed0, t0 = s.loop.ticks, s.loop.missed, time.monotonic()
        time.sleep(0.3)
        dt = time.monotonic() - t0
        assert s.loop.missed - missed0 <= 2      # a loop waiting for the 0.3 s add would miss 6; noise <= 2
        assert s.loop.ticks - ticks0 >= int(dt * 20) - 2       # the loop kept ticking meanwhile
    (info,) = EpisodeStore.open(tmp_path / "ds").episodes()
    assert info.success == 1


def test_a_robot_that_stops_answering_is_held_from_that_tick_and_escalates_once(tmp_path):
    """Real ServoArm over a pty against the simulated bus: servo 3 goes silent. The first tick without an
    observation runs no source and writes the last goal again (said once); after fault_s the pipeline
    raises one stable RobotNotAnswering; when the servo is back the arm answers again (said)."""
    from drivers.bus.arm import Calibration, ServoArm, ServoArmConfig
    from drivers.bus.simbus import IdealServos, SimServoBus
    from teleop_app.pipeline import ControlPipeline, RobotNotAnswering
    from teleop_app.safety import SafetyLayer
    from teleop_app.sources import BaseSource
    names = [f"joint{i}" for i in range(1, 8)] + ["gripper"]
    backend = IdealServos(8, max_speed=20.0)
    bus = SimServoBus(backend, protocol="dynamixel", step_backend=True)
    port = bus.start()
    arm = ServoArm(ServoArmConfig("dynamixel", port, list(range(1, 9)), names,
                                  calibration=Calibration.for_sim(names), timeout_s=0.2, min_timeout_s=0.02))
    arm.connect()
    arm.set_period(0.1)
    writes, said = [], []
    real_send = arm.send_action
    arm.send_action = lambda q: (writes.append(np.array(q, float)), real_send(q))[1]
    calls = []

    class Drift(BaseSource):
        def command(self, ctx):
            calls.append(1)
            return np.asarray(ctx.obs.position, float) + 0.01
    try:
        pipe = ControlPipeline(arm, {}, SafetyLayer(np.full(8, -3.0), np.full(8, 3.0), np.full(8, 10.0)), 0.1)
        pipe.ctx.say = said.append
        pipe.fault_s = 0.3
        pipe.set_source(Drift())
        for k in range(3):
            assert pipe.step(time.monotonic()) is not None
        last_goal = writes[-1].copy()
        n_calls = len(calls)
        bus.drop_replies([3])
        assert pipe.step(time.monotonic()) is None                   # held this very tick
        assert len(calls) == n_calls, "no source runs without an observation"
        assert np.allclose(writes[-1], last_goal), "the last goal is written again"
        assert sum("did not answer" in m and "servo 3" in m for m in said) == 1
        t_end = time.monotonic() + 3
        with pytest.raises(RobotNotAnswering) as ei:
            while time.monotonic() < t_end:
                pipe.step(time.monotonic())
        assert "0.3 s" in str(ei.value) and isinstance(ei.value.__cause__, Exception)
        assert sum("did not answer" in m for m in said) == 1, said
        bus.clear_faults()
        assert pipe.step(time.monotonic()) is not None
        assert said[-1] == "the robot answers again"
    finally:
        arm.disconnect()
        bus.stop()


def test_live_view_frames_come_at_the_camera_rate_not_the_loop_rate(tmp_path):
    """At a 5 Hz loop, the 30 fps sim cameras still give the live view new frames between ticks;
    latest_frames() stays exactly what the tick read (recorded, shown to the policy)."""
    wf = WorkflowConfig(countdown_s=0, reset_s=0, episode_s=0, target_episodes=3)
    with Session(SessionConfig(dataset=str(tmp_path / "ds"), fps=5, use_gamepad=False, workflow=wf)) as s:
        assert wait_for(lambda: "front" in s.latest_frames())
        seen_live, seen_tick = set(), set()
        t_end = time.monotonic() + 1.2
        while time.monotonic() < t_end:
            seen_live.add(s.live_frames()["front"][1])
            seen_tick.add(s.latest_frames()["front"][1])
            time.sleep(0.01)
        assert len(seen_tick) <= 8                   # ~6 ticks in 1.2 s
        assert len(seen_live) >= 2 * len(seen_tick), (len(seen_live), len(seen_tick))
