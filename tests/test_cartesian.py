"""Cartesian gamepad mode: real pygame over the virtual SDL pad -> mapping -> CartesianPadSource ->
DLS IK on the profile's chain -> the one pipeline + safety -> the sim arm; the motion is checked
with forward kinematics."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.sim import SimConfig, Workcell
from drivers.sim import kinematics as kin
from drivers.sim.robot import SimRobot
from teleop_app.human import CartesianPadSource
from teleop_app.kinematics import KinematicsError, chain_from_dict
from teleop_app.mapping import LSTICK, LY, RX, RY, MappingState, default_mapping, mapping_from_dict, \
    mapping_to_dict
from teleop_app.pipeline import ControlPipeline
from teleop_app.profiles import ProfileError, load_profile, parse_profile
from teleop_app.safety import SafetyLayer

PERIOD = 0.1


def test_sim7_chain_matches_the_sim_arm():
    chain = load_profile("sim7").kinematics
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.uniform(kin.LOWER[:7], kin.UPPER[:7])
        assert np.allclose(chain.fk(q), kin.fk(q), atol=1e-12)
        assert np.allclose(chain.jacobian(q), kin.jacobian(q), atol=1e-12)


@pytest.mark.parametrize("name", ["koch", "so101", "sim7"])
def test_jacobian_matches_finite_differences(name):
    prof = load_profile(name)
    chain = prof.kinematics
    q = prof.home()[:-1] + 0.1
    jac = chain.jacobian(q)
    eps = 1e-6
    for i in range(chain.n):
        dq = np.zeros(chain.n)
        dq[i] = eps
        dp = (chain.fk(q + dq)[:3, 3] - chain.fk(q - dq)[:3, 3]) / (2 * eps)
        assert np.allclose(jac[:3, i], dp, atol=1e-6), (name, i)


def test_five_joint_chain_moves_up_through_dls():
    prof = load_profile("so101")
    chain = prof.kinematics
    q = np.array([0.0, 0.3, -0.5, 0.4, 0.0])
    p0 = chain.fk(q)[:3, 3]
    goal = p0.copy()
    for _ in range(20):
        goal[2] += 0.002                             # 2 mm up per step, orientation rows dropped
        e = np.zeros(6)
        e[:3] = goal - chain.fk(q)[:3, 3]
        q = q + chain.dls_step(q, e, weights=[1, 1, 1, 0, 0, 0])
    d = chain.fk(q)[:3, 3] - p0
    assert d[2] == pytest.approx(0.04, abs=2e-3) and abs(d[0]) < 2e-3 and abs(d[1]) < 2e-3


def test_bad_kinematics_section_is_named():
    with pytest.raises(KinematicsError, match="one entry per arm joint"):
        chain_from_dict({"joints": [{"origin": [0, 0, 0]}]}, 2, "arm.toml: kinematics")
    with pytest.raises(KinematicsError, match=r"joints\[0\].*'origin'"):
        chain_from_dict({"joints": [{"origin": [0, 0]}]}, 1, "arm.toml: kinematics")
    data = {"name": "x", "joints": [{"name": "a", "lower": -1.0, "upper": 1.0, "home": 0.0, "max_speed": 1.0}],
            "gripper": {"name": "g", "lower": 0.0, "upper": 1.0, "home": 0.0, "max_speed": 1.0},
            "kinematics": {"joints": [{"origin": [0, 0, 0.1], "axis": [0, 0, 0]}]}}
    with pytest.raises(ProfileError, match="axis"):
        parse_profile(data, "x.toml")


def test_cartesian_mapping_round_trip_and_validation():
    m = default_mapping(8)
    assert {c.direction for c in m.cartesian} >= {"x", "y", "z", "yaw"}
    back = mapping_from_dict(mapping_to_dict(m))
    assert back.cartesian == m.cartesian and back.linear_speed == m.linear_speed
    d = mapping_to_dict(m)
    d["cartesian"][0]["direction"] = "sideways"
    with pytest.raises(Exception, match="cartesian\\[0\\].direction"):
        mapping_from_dict(d)


@pytest.fixture
def cart_rig(attached_pad):
    from drivers.gamepad import Gamepad, GamepadConfig
    prof = load_profile("sim7")
    wc = Workcell(SimConfig(seed=0))
    robot = SimRobot(wc, period=PERIOD, realtime=False)
    robot.connect()
    pad = Gamepad(GamepadConfig())
    pad.connect()
    mapping = default_mapping(prof.dof)
    ms = MappingState(mapping)
    pipe = ControlPipeline(robot, {}, SafetyLayer.from_profile(prof, PERIOD, fk=lambda q: kin.fk(q[:7])),
                           PERIOD, profile=prof, workcell=wc, clock="sim")
    events: list[str] = []

    def before(ctx):                                 # what the session does each tick
        ctx.pad = pad.read()
        ctx.pad_cmd = ms.update(ctx.pad, prof.max_speed(), prof.dof - 1)
        events.extend(ctx.pad_cmd.events)
    pipe.before = before
    pipe.rebase(robot.get_observation().position)
    yield prof, robot, attached_pad, pipe, mapping, events
    pad.disconnect()
    robot.disconnect()


def _tcp(robot):
    return kin.fk(robot.get_observation().position[:7])


def test_stick_moves_end_effector_along_commanded_axis(cart_rig):
    prof, robot, vpad, pipe, mapping, events = cart_rig
    src = CartesianPadSource(prof, mapping, frame="base")
    pipe.set_source(src)
    src.start(pipe.ctx)
    t0 = _tcp(robot)
    vpad.set_axis(LY, -1.0)                          # left stick fully up: +x (forward)
    for k in range(10):
        pipe.step(k * PERIOD)
    vpad.set_axis(LY, 0.0)
    pipe.step(1.0)
    t1 = _tcp(robot)
    d = t1[:3, 3] - t0[:3, 3]
    want = mapping.linear_speed * mapping.speed_scale * 1.0          # 10 ticks at full speed
    assert d[0] == pytest.approx(want, rel=0.15), d
    assert abs(d[1]) < 3e-3 and abs(d[2]) < 3e-3, d
    rot = np.linalg.norm(np.array([t1[:3, :3] @ t0[:3, :3].T]).reshape(3, 3) - np.eye(3))
    assert rot < 0.02, "orientation must be held while translating"

    vpad.set_axis(RY, -1.0)                          # right stick up: +z
    for k in range(6):
        pipe.step(2.0 + k * PERIOD)
    vpad.set_axis(RY, 0.0)
    pipe.step(3.0)
    d = _tcp(robot)[:3, 3] - t1[:3, 3]
    assert d[2] == pytest.approx(want * 0.6, rel=0.15) and abs(d[0]) < 3e-3 and abs(d[1]) < 3e-3, d

    t2 = _tcp(robot)
    vpad.set_axis(RX, 1.0)                           # right stick right: yaw clockwise
    for k in range(5):
        pipe.step(4.0 + k * PERIOD)
    vpad.set_axis(RX, 0.0)
    pipe.step(5.0)
    t3 = _tcp(robot)
    assert np.linalg.norm(t3[:3, 3] - t2[:3, 3]) < 3e-3
    yaw = np.arctan2((t3[:3, :3] @ t2[:3, :3].T)[1, 0], (t3[:3, :3] @ t2[:3, :3].T)[0, 0])
    assert yaw == pytest.approx(-mapping.angular_speed * mapping.speed_scale * 0.5, rel=0.2)


def test_tool_frame_and_workspace_bound(cart_rig):
    prof, robot, vpad, pipe, mapping, events = cart_rig
    src = CartesianPadSource(prof, mapping, frame="tool")
    pipe.set_source(src)
    src.start(pipe.ctx)
    t0 = _tcp(robot)
    vpad.set_axis(RY, -1.0)                          # "up" in the tool frame: tool z points at the table
    for k in range(5):
        pipe.step(k * PERIOD)
    vpad.set_axis(RY, 0.0)
    pipe.step(1.0)
    d = _tcp(robot)[:3, 3] - t0[:3, 3]
    assert d[2] < -0.02 and abs(d[0]) < 3e-3, d     # tool +z = world -z at home (pointing down)

    src.frame = "base"
    src.bounds = {"z": [0.2, 0.9]}
    vpad.set_axis(RY, 1.0)                           # down, toward the bound
    for k in range(20):
        pipe.step(2.0 + k * PERIOD)
    vpad.set_axis(RY, 0.0)
    pipe.step(5.0)
    assert _tcp(robot)[2, 3] == pytest.approx(0.2, abs=3e-3)


def test_one_button_toggles_joint_and_cartesian(cart_rig):
    prof, robot, vpad, pipe, mapping, events = cart_rig
    pipe.set_source(CartesianPadSource(prof, mapping))
    vpad.set_button(LSTICK, True)
    pipe.step(0.0)
    vpad.set_button(LSTICK, False)
    pipe.step(0.1)
    assert events.count("toggle_cartesian") == 1


def test_cartesian_needs_a_chain():
    prof = load_profile("sim7")
    prof.kinematics = None
    with pytest.raises(ValueError, match="no \\[kinematics\\]"):
        CartesianPadSource(prof, default_mapping(8))
