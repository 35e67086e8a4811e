"""Simulated workcell: tasks, reset, servo limits, torque/push, grasp model, success, rendering,
and the SimRobot / SimCamera device interfaces.

These test the kinematic model (workcell.py: attach-on-close grasps, goal reached within a tick), so
every workcell here is SimConfig(physics=False); the MuJoCo default is tests/test_physics.py's."""
import threading
import time
from functools import partial

import numpy as np
import pytest

from drivers.interfaces import Camera, DeviceNotConnected, Robot
from drivers.sim import (TASKS, Randomization, SimCamera, SimConfig, SimRobot, Workcell,
                         task_from_instruction)
from drivers.sim import kinematics as kin
from drivers.sim.render import Style, front_camera
from drivers.sim.workcell import TCP_MIN_Z

KinConfig = partial(SimConfig, physics=False)


def move_to(wc: Workcell, pos, grip: float, max_steps: int = 100, dt: float = 0.05):
    """Drive the TCP to pos (pointing down) with a fixed gripper target; returns final TCP."""
    q7 = kin.ik(pos, q_init=wc.qpos()[:7])
    goal = np.r_[q7, grip]
    wc.set_target(goal)
    for _ in range(max_steps):
        wc.step(dt)
        if np.allclose(wc.qpos(), np.clip(goal, wc.lower, wc.upper), atol=1e-6):
            break
    return wc.ee_pose()[:3, 3]


def grasp(wc: Workcell, name: str, lift: float = 0.12):
    c = wc.objects()[name]
    move_to(wc, c + [0, 0, 0.1], 1.0)
    move_to(wc, c, 1.0)
    move_to(wc, c, 0.0)
    return move_to(wc, c + [0, 0, lift], 0.0)


# ---- tasks / reset ------------------------------------------------------------------------
def test_task_from_instruction_is_tolerant_and_rejects_unknown():
    assert task_from_instruction("  Pick up the RED cube ") == "pick_red"
    assert task_from_instruction("pick_blue") == "pick_blue"
    assert task_from_instruction("put the red cube in the bowl.") == "red_in_bowl"
    with pytest.raises(KeyError, match="pick_red"):
        task_from_instruction("stack the green cube")
    assert set(TASKS) == {"pick_red", "pick_blue", "red_in_bowl"}


def test_reset_is_seeded_and_places_everything():
    a, b = Workcell(KinConfig(seed=5)), Workcell(KinConfig())
    b.reset(seed=5)
    for k in ("red_cube", "blue_cube", "bowl"):
        assert np.array_equal(a.objects()[k], b.objects()[k])
    b.reset(seed=6)
    assert not np.allclose(a.objects()["red_cube"], b.objects()["red_cube"])
    for s in range(50):
        b.reset(seed=s)
        o = b.objects()
        assert set(o) == {"red_cube", "blue_cube", "bowl"}
        assert np.linalg.norm(o["red_cube"][:2] - o["blue_cube"][:2]) > 0.09
        for c in ("red_cube", "blue_cube"):
            assert o[c][2] == pytest.approx(0.02)
            assert np.linalg.norm(o[c][:2] - o["bowl"][:2]) > 0.12
        assert np.array_equal(b.qpos(), b.home) and b.qpos()[7] == 1.0
        assert b.grasped() is None and not b.success()


def test_reset_none_advances_seed_and_task_sets_instruction():
    wc = Workcell(KinConfig(seed=3))
    wc.reset()
    assert wc.seed == 4
    wc.reset(task="put the red cube in the bowl")
    assert wc.task == "red_in_bowl" and wc.instruction == TASKS["red_in_bowl"]
    before = wc.objects()["red_cube"]
    wc.task = "Pick up the blue cube"
    assert wc.task == "pick_blue" and wc.instruction == "pick up the blue cube"
    assert np.array_equal(wc.objects()["red_cube"], before)
    with pytest.raises(KeyError):
        wc.task = "juggle"
    with pytest.raises(KeyError, match="known"):
        Workcell(KinConfig(task="nope"))


# ---- servo model --------------------------------------------------------------------------
def test_targets_clipped_and_speed_capped_per_step():
    wc = Workcell(KinConfig())
    wc.set_target(wc.upper + 10)
    assert np.array_equal(wc.goal(), wc.upper)
    q0 = wc.qpos()
    wc.step(0.1)
    dq = wc.qpos() - q0
    assert np.all(np.abs(dq) <= wc.max_speed * 0.1 + 1e-9)
    assert np.allclose(wc.qvel(), dq / 0.1)
    for _ in range(100):
        wc.step(0.1)
    q = wc.qpos()
    assert np.all(q <= wc.upper + 1e-9) and np.all(q >= wc.lower - 1e-9)
    with pytest.raises(ValueError):
        wc.set_target([0.0] * 7)
    with pytest.raises(ValueError):
        wc.set_target([np.nan] * 8)


def test_torque_off_is_back_drivable_and_push_ignored_with_torque_on():
    wc = Workcell(KinConfig())
    wc.set_torque(False)
    assert wc.torque is False
    goal = wc.home.copy(); goal[0] += 0.5
    wc.set_target(goal)
    wc.step(0.5)
    assert np.array_equal(wc.qpos(), wc.home)           # goals ignored
    pushed = wc.home.copy(); pushed[0] += 0.3
    wc.push(pushed)
    wc.step(0.5)
    assert wc.qpos()[0] == pytest.approx(0.3)           # stays where pushed
    assert wc.qvel()[0] == pytest.approx(0.3 / 0.5)     # hand motion shows up as velocity
    wc.step(0.5)
    assert wc.qvel()[0] == 0.0
    wc.set_torque(True)
    wc.step(0.5)
    assert wc.qpos()[0] == pytest.approx(0.3)           # re-enabling holds, no jump
    wc.push(wc.home)
    assert wc.qpos()[0] == pytest.approx(0.3)           # hand cannot move a stiff arm


def test_tcp_never_goes_through_the_table():
    wc = Workcell(KinConfig())
    # a joint goal that would put the TCP 5 cm below the table top
    q_low = kin.ik([0.45, 0.0, 0.10])
    q_low[1] += 0.5
    assert kin.fk(q_low)[2, 3] < 0
    wc.set_target(np.r_[q_low, 1.0])
    for _ in range(50):
        wc.step(0.05)
        assert wc.ee_pose()[2, 3] >= TCP_MIN_Z - 1e-4
    assert wc.ee_pose()[2, 3] < 0.03                       # it did go down to the table


# ---- grasp model and success tests ----------------------------------------------------------
def test_grasp_lift_success_only_for_the_named_cube():
    red, blue = Workcell(KinConfig(seed=1, task="pick_red")), Workcell(KinConfig(seed=1, task="pick_blue"))
    for wc in (red, blue):
        grasp(wc, "red_cube", lift=0.03)
        assert wc.grasped() == "red_cube"
        assert not wc.success()                          # lifted only 3 cm
        c = wc.objects()["red_cube"]
        move_to(wc, c + [0, 0, 0.06], 0.0)
        assert wc.objects()["red_cube"][2] - 0.02 >= 0.05
    assert red.success()
    assert not blue.success()                            # wrong cube does not count
    assert 0.3 < red.qpos()[7] < 0.5                     # fingers stop on the 4 cm cube


def test_closing_away_from_a_cube_grasps_nothing_and_closes_fully():
    wc = Workcell(KinConfig(seed=2))
    c = wc.objects()["red_cube"]
    move_to(wc, c + [0.06, 0.0, 0.0] if c[0] < 0.55 else c - [0.06, 0, 0], 0.0)
    assert wc.grasped() is None and wc.qpos()[7] == 0.0
    # a closed gripper lowered onto a cube does not pick it up either
    move_to(wc, c + [0, 0, 0.05], 0.0)
    move_to(wc, c, 0.0)
    assert wc.grasped() is None


def test_release_above_bowl_puts_red_in_bowl_and_elsewhere_drops_to_table():
    wc = Workcell(KinConfig(seed=4, task="red_in_bowl"))
    bowl = wc.objects()["bowl"]
    grasp(wc, "red_cube")
    move_to(wc, bowl + [0, 0, 0.15], 0.0)
    assert not wc.success()                              # still held
    move_to(wc, bowl + [0, 0, 0.09], 1.0)
    assert wc.grasped() is None
    for _ in range(20):
        wc.step(0.05)
    r = wc.objects()["red_cube"]
    assert np.linalg.norm(r[:2] - bowl[:2]) < 0.075 and r[2] < 0.06
    assert wc.success()

    wc.reset(seed=4, task="red_in_bowl")
    grasp(wc, "red_cube")
    far = wc.objects()["red_cube"] + [0.0, 0.0, 0.05]
    move_to(wc, far, 1.0)
    for _ in range(20):
        wc.step(0.05)
    assert wc.objects()["red_cube"][2] == pytest.approx(0.02)    # fell back onto the table
    assert not wc.success()


def test_blue_in_bowl_does_not_solve_red_in_bowl():
    wc = Workcell(KinConfig(seed=4, task="red_in_bowl"))
    bowl = wc.objects()["bowl"]
    grasp(wc, "blue_cube")
    move_to(wc, bowl + [0, 0, 0.15], 0.0)
    move_to(wc, bowl + [0, 0, 0.09], 1.0)
    for _ in range(20):
        wc.step(0.05)
    assert np.linalg.norm(wc.objects()["blue_cube"][:2] - bowl[:2]) < 0.075
    assert not wc.success()


# ---- rendering ----------------------------------------------------------------------------
def _color_near(img, uv, rgb_pred, r=4):
    u, v = int(round(uv[0])), int(round(uv[1]))
    patch = img[max(v - r, 0):v + r + 1, max(u - r, 0):u + r + 1].reshape(-1, 3).astype(int)
    return any(rgb_pred(p) for p in patch)


def test_render_shapes_views_and_visible_objects():
    wc = Workcell(KinConfig(seed=0))
    f, w = wc.render("front"), wc.render("wrist")
    assert f.shape == (224, 224, 3) and f.dtype == np.uint8 and w.shape == (224, 224, 3)
    assert wc.render("front", 320, 240).shape == (240, 320, 3)
    assert np.mean(np.abs(f.astype(int) - w.astype(int))) > 10
    with pytest.raises(ValueError, match="front"):
        wc.render("top")
    cam = front_camera(wc.renderer.style, 224, 224)
    uv, _ = cam.project(np.array([wc.objects()["red_cube"], wc.objects()["blue_cube"]]))
    assert _color_near(f, uv[0], lambda p: p[0] > 120 and p[1] < 80 and p[2] < 80)
    assert _color_near(f, uv[1], lambda p: p[2] > 120 and p[0] < 80)
    assert not _color_near(f, uv[1], lambda p: p[0] > 120 and p[1] < 80 and p[2] < 80)


def test_gripper_opening_is_visible_and_render_is_deterministic():
    wc = Workcell(KinConfig())
    a = wc.render("wrist")
    assert np.array_equal(a, wc.render("wrist"))
    wc.set_target(np.r_[wc.home[:7], 0.0])
    wc.step(1.0)
    b = wc.render("wrist")
    assert np.mean(np.any(a != b, axis=2)) > 0.01


def test_randomization_changes_images():
    plain = Workcell(KinConfig(seed=0))
    rnd = Workcell(KinConfig(seed=0, randomization=Randomization(light=True, colors=True,
                                                                 camera_jitter=True, noise=True)))
    img0 = rnd.render("front")
    assert np.mean(np.abs(img0.astype(int) - plain.render("front").astype(int))) > 5
    assert not np.array_equal(img0, rnd.render("front"))            # per-frame noise
    rnd.reset(seed=1)
    plain.reset(seed=1)
    assert np.mean(np.abs(rnd.render("front").astype(int) - plain.render("front").astype(int))) > 5
    for flag in ("light", "colors", "camera_jitter"):
        one = Workcell(KinConfig(seed=3, randomization=Randomization(**{flag: True})))
        ref = Workcell(KinConfig(seed=3))
        assert not np.array_equal(one.render("front"), ref.render("front")), flag


def test_randomised_tables_include_dark_benches_but_never_the_held_out_table():
    """A policy lost the held-out look through its dark table alone (docs/policy_results.md, "A dark table"):
    randomisation draws dark benches as well as wood and grey; the held-out look's blue-grey table stays undrawn."""
    from drivers.sim.render import make_style, style_rng
    from teleop_app.policy.generalization import held_out_style
    tables = np.array([make_style(style_rng(seed), light=True, colors=True, camera_jitter=True, noise=True).table_rgb
                       for seed in range(2000)])
    luminance = tables @ [0.299, 0.587, 0.114]
    assert (luminance < 70).mean() > 0.2 and (luminance > 150).mean() > 0.2
    held = np.array(held_out_style().table_rgb)
    assert np.abs(tables - held).max(axis=1).min() > 15       # each draw is over 15 levels off it on some channel
    assert Style().table_rgb == make_style(style_rng(0), False, False, False, False).table_rgb


def test_render_from_another_thread_while_stepping():
    wc = Workcell(KinConfig())
    errors, frames = [], []

    def cam():
        try:
            for _ in range(20):
                frames.append(wc.render("front"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    t = threading.Thread(target=cam)
    t.start()
    wc.set_target(np.r_[wc.home[:7] + 0.3, 0.0])
    for _ in range(50):
        wc.step(0.02)
    t.join()
    assert not errors and len(frames) == 20


# ---- device interfaces --------------------------------------------------------------------
def test_sim_robot_virtual_time():
    wc = Workcell(KinConfig())
    r = SimRobot(wc, period=0.1)
    assert isinstance(r, Robot) and r.joint_names == wc.joint_names
    with pytest.raises(DeviceNotConnected, match="connect"):
        r.get_observation()
    with pytest.raises(DeviceNotConnected):
        r.send_action(wc.home)
    r.connect()
    assert r.is_connected
    o1 = r.get_observation()
    target = wc.home.copy(); target[0] = 9.0
    written = r.send_action(target)
    assert written[0] == pytest.approx(wc.upper[0])
    o2 = r.get_observation()
    assert o2.timestamp > o1.timestamp
    assert o2.position[0] == pytest.approx(wc.max_speed[0] * 0.1)
    assert o2.velocity[0] == pytest.approx(wc.max_speed[0])
    with pytest.raises(ValueError, match="8 finite"):
        r.send_action([0.0, 1.0])
    r.set_torque(False)
    assert not r.torque_enabled
    p = o2.position.copy(); p[2] = 0.4
    r.push(p)
    assert r.get_observation().position[2] == pytest.approx(0.4)
    r.disconnect()
    assert not r.is_connected


def test_sim_robot_realtime_moves_with_wall_time():
    wc = Workcell(KinConfig())
    r = SimRobot(wc, realtime=True)
    r.connect()
    try:
        t = wc.home.copy(); t[0] = 0.2
        r.send_action(t)
        assert r.get_observation().position[0] < 0.2       # not stepped synchronously
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and r.get_observation().position[0] < 0.2 - 1e-9:
            time.sleep(0.02)
        assert r.get_observation().position[0] == pytest.approx(0.2)
    finally:
        r.disconnect()
    q = wc.qpos().copy()
    wc.set_target(wc.home)
    time.sleep(0.05)
    assert np.array_equal(wc.qpos(), q)                    # thread stopped


def test_sim_camera_sync_and_realtime():
    wc = Workcell(KinConfig())
    c = SimCamera(wc, name="wrist", view="wrist")
    assert isinstance(c, Camera)
    with pytest.raises(DeviceNotConnected, match="wrist"):
        c.read_latest()
    c.connect()
    f1, f2 = c.read_latest(), c.read_latest()
    assert f1.image.shape == (224, 224, 3) and f2.index == f1.index + 1
    assert f2.timestamp >= f1.timestamp
    c.disconnect()
    with pytest.raises(ValueError):
        SimCamera(wc, view="side")

    rt = SimCamera(wc, fps=50, width=96, height=64, realtime=True)
    rt.connect()
    try:
        deadline = time.monotonic() + 3.0
        f = None
        while f is None and time.monotonic() < deadline:
            f = rt.read_latest()
            time.sleep(0.01)
        assert f is not None and f.image.shape == (64, 96, 3)
        time.sleep(0.2)
        g = rt.read_latest()
        assert g.index > f.index and g.timestamp > f.timestamp
        assert rt.read_latest() is g or rt.read_latest().index >= g.index  # newest only, never queued
    finally:
        rt.disconnect()
