"""The sim cameras draw in a child process (drivers/sim/render_proc.py): same pixels as in-process,
a failing child falls back to in-process drawing with a message, and the child ends with its camera."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from drivers.sim import SimCamera, SimConfig, SimRobot, Workcell
from drivers.sim.render_proc import RenderProcess, decode, encode, quiet_delay
from drivers.sim.robot import TickGuard
from waiting import wait_for as _wait  # noqa: E402 (tests/waiting.py)




@pytest.mark.parametrize("physics", [False, True])
def test_child_draws_the_same_frame_as_in_process(physics):
    wc = Workcell(SimConfig(seed=4, physics=physics)) if not physics else None
    if physics:
        from drivers.sim.physics import PhysicsWorkcell
        wc = PhysicsWorkcell(SimConfig(seed=4, physics=True))
    rp = RenderProcess(96, 80)
    try:
        for view in ("front", "wrist"):
            renderer, snap, idx = wc.snapshot()
            img = rp.render(renderer, snap, view, idx)
            assert img is not None, rp.error
            assert np.array_equal(img, renderer.render(snap, view, 96, 80, idx))
    finally:
        rp.close()
    assert rp.proc.poll() is not None, "close() ends the child"


def test_a_killed_child_falls_back_to_in_process_drawing_with_a_message():
    wc = Workcell(SimConfig(seed=1))
    cam = SimCamera(wc, "front", "front", width=64, height=64, fps=30, realtime=True)
    cam.connect()
    try:
        assert cam.read_latest() is not None, "a frame at once, before the render process has started"
        assert _wait(lambda: cam.read_latest() is not None and cam.read_latest().index >= 3)
        assert cam._proc is not None and cam._proc.alive
        os.kill(cam._proc.proc.pid, signal.SIGKILL)
        assert _wait(lambda: cam._proc is None), "the dead child is noticed"
        assert "exited" in (cam.render_note or "") and "in-process" in cam.render_note
        n = cam.read_latest().index
        assert _wait(lambda: cam.read_latest().index > n + 3), "frames keep coming, drawn in-process"
    finally:
        cam.disconnect()


def test_child_exits_when_its_camera_goes_away_without_closing():
    rp = RenderProcess(32, 32)
    wc = Workcell(SimConfig(seed=2))
    r, snap, idx = wc.snapshot()
    assert rp.render(r, snap, "front", idx) is not None
    pid = rp.proc.pid
    rp.proc.stdin.close()                 # what the kernel does when the parent dies
    assert _wait(lambda: rp.proc.poll() is not None, 5.0), f"render child {pid} outlived its pipe"


def test_codec_carries_arrays_and_refuses_object_arrays():
    x = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, "x", None], "c": np.float64(2.5)}
    y = decode(encode(x))
    assert y["a"].dtype == np.float32 and np.array_equal(y["a"], x["a"]) and y["b"] == [1, "x", None]
    assert y["c"] == 2.5
    with pytest.raises(TypeError):
        encode({"o": object()})


def test_quiet_window_around_the_ticks():
    period, pre, post = 0.02, 0.0012, 0.0004
    last = 100.0
    assert quiet_delay(100.0 + 0.010, last, period, pre, post) == 0.0          # mid-period: work now
    assert quiet_delay(100.0 + 0.0195, last, period, pre, post) == pytest.approx(0.0009)   # just before
    assert quiet_delay(100.0 + 0.0401, last, period, pre, post) == pytest.approx(0.0003)   # just after
    assert quiet_delay(100.0 + 1.0, last, period, pre, post) == 0.0            # the loop stopped ticking
    assert quiet_delay(100.0, None, period, pre, post) == 0.0


def test_tick_guard_follows_a_rate_change_but_not_one_extra_tick():
    g = TickGuard(0.02)
    for k in range(5):
        g.note(10.0 + 0.1 * k)            # the loop now runs at 10 Hz (a replay at its recorded rate)
    assert g.period == pytest.approx(0.1)
    g.note(10.43)                          # one extra tick off the grid (e-stop wake-up)
    g.note(10.5)
    assert g.period == pytest.approx(0.1)


def test_observation_does_not_wait_for_the_workcell_lock():
    wc = Workcell(SimConfig(seed=3))
    robot = SimRobot(wc, period=0.02, realtime=True)
    robot.connect()
    held, release = threading.Event(), threading.Event()

    def hold():
        with wc.lock:                      # e.g. a slow physics step or scene reset in progress
            held.set()
            release.wait(5)
    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(5)
        t0 = time.monotonic()
        obs = robot.get_observation()
        assert time.monotonic() - t0 < 0.05
        assert obs.position.shape == (8,)
    finally:
        release.set()
        t.join()
        robot.disconnect()


def test_joint_state_follows_steps_pushes_and_resets():
    wc = Workcell(SimConfig(seed=5))
    q0, _ = wc.joint_state()
    wc.set_target(q0 + 0.2)
    wc.step(0.05)
    q1, qd1 = wc.joint_state()
    assert np.allclose(q1, wc.qpos()) and np.any(q1 != q0) and np.any(qd1 != 0)
    wc.set_torque(False)
    wc.push(q1 - 0.1)
    assert np.allclose(wc.joint_state()[0], wc.qpos())
    wc.reset(seed=9)
    assert np.allclose(wc.joint_state()[0], wc.home)
