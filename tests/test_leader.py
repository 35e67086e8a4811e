"""Leader-arm teleop: the real servo driver reads a simulated leader on its own pty, moved by the
test; the follower (the sim arm) tracks it through the one control pipeline and safety layer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from drivers.bus.arm import Calibration, CalibrationError
from drivers.leader import LeaderCalibration, SimLeaderArm
from drivers.sim import SimConfig, Workcell
from drivers.sim import kinematics as kin
from drivers.sim.robot import SimRobot
from teleop_app.human import LeaderArmSource
from teleop_app.pipeline import ControlPipeline
from teleop_app.profiles import ProfileError, load_profile, parse_profile
from teleop_app.safety import SafetyLayer

PERIOD = 0.1


@pytest.fixture
def rig():
    prof = load_profile("sim7")
    wc = Workcell(SimConfig(seed=0))
    robot = SimRobot(wc, period=PERIOD, realtime=False)
    robot.connect()
    sim = SimLeaderArm(prof.dof, q0=prof.home()).start()
    leader = sim.leader(prof.joint_names, gripper_range=(prof.gripper.lower, prof.gripper.upper))
    leader.connect()
    pipe = ControlPipeline(robot, {}, SafetyLayer.from_profile(prof, PERIOD), PERIOD, profile=prof,
                           workcell=wc, clock="sim")
    said: list[str] = []
    pipe.ctx.say = said.append
    pipe.rebase(robot.get_observation().position)
    yield prof, wc, robot, sim, leader, pipe, said
    leader.disconnect()
    sim.stop()
    robot.disconnect()


def _run(pipe, src, n, t0=0.0, move=None):
    out = []
    for k in range(n):
        if move is not None:
            move(k)
        out.append(pipe.step(t0 + k * PERIOD))
    return out


def test_follower_tracks_leader_within_one_tick(rig):
    prof, wc, robot, sim, leader, pipe, said = rig
    src = LeaderArmSource(leader, prof)
    pipe.set_source(src)
    src.start(pipe.ctx)
    _run(pipe, src, 3)                               # leader == follower: engages at once
    assert src.state == "following", said
    q = prof.home().copy()
    path = []

    def move(k):
        q[0] += 0.05                                 # the operator's hand: 0.5 rad/s on joint1
        q[3] += 0.03
        q[7] = 1.0 - 0.1 * k                         # squeezing the handle
        sim.move(q)
        path.append(q.copy())
    res = _run(pipe, src, 8, t0=1.0, move=move)
    tick = 2 * np.pi / 4096                          # one servo tick
    for k, r in enumerate(res):
        # the command of tick k is the leader pose read in tick k ...
        assert np.allclose(r.sent[:7], path[k][:7], atol=2 * tick), (k, r.sent - path[k])
        assert abs(r.sent[7] - path[k][7]) < 0.01
    # ... and the follower is there one tick later
    assert np.allclose(robot.get_observation().position[:7], path[-1][:7], atol=3 * tick)


def test_start_refused_when_far_names_joint_then_ramps_in(rig):
    prof, wc, robot, sim, leader, pipe, said = rig
    far = prof.home().copy()
    far[3] += 1.2                                    # joint4 1.2 rad away: beyond GELLO's 0.8 rad
    sim.move(far)
    src = LeaderArmSource(leader, prof, far="refuse")
    pipe.set_source(src)
    src.start(pipe.ctx)
    q0 = robot.get_observation().position.copy()
    _run(pipe, src, 5)
    assert src.state == "refused"
    assert np.allclose(robot.get_observation().position, q0, atol=1e-6), "refused start must not move"
    msg = [m for m in said if "joint4" in m]
    assert msg and "1.20 rad" in msg[0] and "0.8" in msg[0], said
    near = prof.home().copy()
    near[3] += 0.6                                   # the operator brings the leader closer
    sim.move(near)
    before = pipe.ctx.target.copy()
    res = _run(pipe, src, 40, t0=1.0)
    steps = np.abs(np.diff(np.array([before] + [r.sent for r in res]), axis=0))
    ramp = prof.max_speed() * PERIOD * src.ramp_speed
    assert np.all(steps <= ramp + 1e-9), "ramp-in faster than the ramp speed"
    assert src.state == "following"
    assert np.allclose(robot.get_observation().position[:7], near[:7], atol=5e-3)


def test_far_start_ramps_when_asked(rig):
    prof, wc, robot, sim, leader, pipe, said = rig
    far = prof.home().copy()
    far[0] += 1.0
    sim.move(far)
    src = LeaderArmSource(leader, prof, far="ramp", ramp_speed=0.5)
    pipe.set_source(src)
    src.start(pipe.ctx)
    prev = robot.get_observation().position.copy()
    for r in _run(pipe, src, 20):
        assert np.all(np.abs(r.sent - prev) <= prof.max_speed() * PERIOD * 0.5 + 1e-9)
        prev = r.sent
    assert src.state == "following"


def test_unplugged_leader_holds_follower_and_recovers(rig):
    prof, wc, robot, sim, leader, pipe, said = rig
    src = LeaderArmSource(leader, prof, retry_s=0.3)
    pipe.set_source(src)
    src.start(pipe.ctx)
    q = prof.home().copy()
    q[0] += 0.1
    sim.move(q)
    before = _run(pipe, src, 3)
    assert src.state == "following"
    held = before[-1].sent.copy()                    # the last command: a servo arm holds its goal
    sim.bus.unplug()                                 # the leader's cable is pulled
    q[0] += 0.1
    res = _run(pipe, src, 3, t0=1.0)
    assert src.state == "lost"
    assert any("unplugged" in m and "holding" in m for m in said), said
    for r in res:
        assert np.allclose(r.sent, held, atol=1e-9)
    # the (physics) servos settle on that goal; they do not follow the leader's last move
    assert np.allclose(robot.get_observation().position, held, atol=2e-3)
    sim.bus.replug()
    sim.move(q)
    _run(pipe, src, 8, t0=2.0)
    assert src.state == "following", said
    assert any("answers again" in m for m in said)


def test_leader_calibration_file_is_validated(tmp_path):
    names = kin.JOINT_NAMES
    cal = LeaderCalibration(Calibration.for_sim(names), handle_open=0.7, handle_closed=0.05)
    p = cal.save(tmp_path / "leader.json")
    back = LeaderCalibration.load(p)
    assert back.handle_open == 0.7 and back.joints.joints["joint3"].scale == 1.0
    assert back.gripper_fraction(0.7) == 1.0 and back.gripper_fraction(0.05) == 0.0
    bad = json.loads(p.read_text())
    bad["joints"]["joint2"]["sign"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CalibrationError, match="joint2.*sign"):
        LeaderCalibration.load(tmp_path / "bad.json")
    del bad["handle"]
    (tmp_path / "nohandle.json").write_text(json.dumps(bad))
    with pytest.raises(CalibrationError, match="handle"):
        LeaderCalibration.load(tmp_path / "nohandle.json")
    with pytest.raises(CalibrationError, match="not found"):
        LeaderCalibration.load(tmp_path / "missing.json")
    with pytest.raises(CalibrationError, match="both"):
        LeaderCalibration(Calibration.for_sim(names), 0.3, 0.3)


def test_leader_calibrate_records_offsets(rig):
    prof, wc, robot, sim, leader, pipe, said = rig
    pose = prof.home().copy()
    pose[1] += 0.4
    sim.move(pose)
    known = prof.home()                               # the operator says: this is the follower's home
    cal = leader.calibrate(known, handle_open=1.0, handle_closed=0.0)
    assert np.allclose(leader.read()[:7], known[:7], atol=2e-3)
    assert cal.joints.joints["joint2"].offset != 2048.0


def test_leader_profiles_and_bad_leader_section():
    for name, follower in (("so101_leader", "so101"), ("koch_leader", "koch")):
        lp, fp = load_profile(name), load_profile(follower)
        assert lp.leader["follower"] == follower and lp.leader["max_start_distance"] == 0.8
        assert lp.joint_names == fp.joint_names
    data = {"name": "x", "joints": [{"name": "a", "lower": -1.0, "upper": 1.0, "home": 0.0, "max_speed": 1.0}],
            "gripper": {"name": "g", "lower": 0.0, "upper": 1.0, "home": 0.0, "max_speed": 1.0},
            "leader": {"follower": "koch", "handle_open": 0.5, "handle_closed": 0.5}}
    with pytest.raises(ProfileError, match="handle_open"):
        parse_profile(data, "x.toml")


def test_leader_for_another_arm_is_refused(rig):
    prof, wc, robot, sim, leader, pipe, said = rig
    with pytest.raises(ValueError, match="follower 'koch'"):
        LeaderArmSource(leader, load_profile("koch"))
