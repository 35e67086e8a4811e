"""Kinematics of the simulated Panda-like arm, and sim constants vs the sim7 profile."""
import numpy as np
import pytest

from drivers.sim import kinematics as kin
from teleop_app.profiles import load_profile


def test_fk_matches_panda_ready_pose():
    # Franka's "ready" pose: flange at x 0.307, z 0.590; the hand TCP is 0.1034 below it.
    t = kin.fk([0, -np.pi / 4, 0, -3 * np.pi / 4, 0, np.pi / 2, np.pi / 4])
    assert np.allclose(t[:3, 3], [0.307, 0.0, 0.590 - 0.1034], atol=2e-3)
    assert np.allclose(t[:3, 2], [0, 0, -1], atol=1e-3)      # pointing down


def test_home_is_above_table_centre_pointing_down():
    t = kin.fk(kin.HOME)
    assert np.allclose(t[:3, 3], [0.45, 0.0, 0.25], atol=0.01)
    assert np.allclose(t[:3, :3], kin.rot_down(0.0), atol=0.01)
    assert np.all(kin.HOME >= kin.LOWER) and np.all(kin.HOME <= kin.UPPER)


def test_jacobian_matches_finite_differences():
    q = kin.HOME[:7] + np.array([0.1, -0.2, 0.3, 0.1, -0.2, 0.1, 0.3])
    j = kin.jacobian(q)
    eps = 1e-6
    for i in range(7):
        dq = np.zeros(7); dq[i] = eps
        dp = (kin.fk(q + dq)[:3, 3] - kin.fk(q - dq)[:3, 3]) / (2 * eps)
        assert np.allclose(j[:3, i], dp, atol=1e-5)


def test_fk_ik_round_trip_random_reachable_poses():
    rng = np.random.default_rng(0)
    for _ in range(30):
        q = np.clip(kin.HOME[:7] + rng.uniform(-0.5, 0.5, 7), kin.LOWER[:7], kin.UPPER[:7])
        goal = kin.fk(q)
        sol = kin.ik(goal[:3, 3], goal[:3, :3])
        got = kin.fk(sol)
        assert np.linalg.norm(got[:3, 3] - goal[:3, 3]) < 2e-3
        assert np.allclose(got[:3, :3], goal[:3, :3], atol=0.02)
        assert np.all(sol >= kin.LOWER[:7] - 1e-9) and np.all(sol <= kin.UPPER[:7] + 1e-9)


def test_ik_default_orientation_points_down_over_the_placement_area():
    for p in ([0.33, -0.22, 0.02], [0.62, 0.22, 0.02], [0.45, 0.0, 0.3]):
        t = kin.fk(kin.ik(p))
        assert np.linalg.norm(t[:3, 3] - p) < 2e-3
        assert t[2, 2] < -0.99


def test_ik_unreachable_raises_clear_error():
    with pytest.raises(kin.IKError, match="not reachable"):
        kin.ik([2.0, 0.0, 0.3], restarts=1)


def test_sim7_profile_agrees_with_sim_constants():
    p = load_profile("sim7")
    assert p.joint_names == kin.JOINT_NAMES
    assert np.allclose(p.lower(), kin.LOWER)
    assert np.allclose(p.upper(), kin.UPPER)
    assert np.allclose(p.home(), kin.HOME)
    assert np.allclose(p.max_speed(), kin.MAX_SPEED)
