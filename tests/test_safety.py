import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from teleop_app.profiles import load_profile
from teleop_app.safety import SafetyLayer

PROF = load_profile("sim7")
PERIOD = 0.1


def layer():
    return SafetyLayer.from_profile(PROF, PERIOD)


def mid():
    """Home pose with the gripper half open, so small moves stay inside every limit."""
    q = PROF.home()
    q[-1] = 0.5
    return q


def test_passes_small_valid_moves_unchanged():
    s = layer()
    q = mid()
    t = q + 0.01
    sent, rep = s.filter(t, q)
    assert rep.ok and np.allclose(sent, t)


def test_nan_rejected_and_holds():
    s = layer()
    q = PROF.home()
    t = q.copy()
    t[2] = np.nan
    sent, rep = s.filter(t, q)
    assert rep.rejected_nonfinite and np.array_equal(sent, q)
    assert s.counters.rejected_nonfinite == 1
    sent, rep = s.filter(np.full(3, 0.0), q)    # wrong shape is rejected too
    assert rep.rejected_nonfinite and np.array_equal(sent, q)


def test_limits_and_step():
    s = layer()
    q = PROF.home()
    sent, rep = s.filter(PROF.upper() + 10, q)
    assert rep.clamped_limits and rep.clamped_step
    assert np.all(np.abs(sent - q) <= PROF.max_speed() * PERIOD + 1e-12)


def test_estop_latches_until_reset():
    s = layer()
    q = mid()
    s.estop(q)
    for _ in range(3):
        sent, rep = s.filter(q + 0.05, q)
        assert rep.estopped and np.array_equal(sent, q)
    s.reset_estop(q)
    sent, rep = s.filter(q + 0.01, q)
    assert not rep.estopped and np.allclose(sent, q + 0.01)


def test_workspace_blocks_arm_but_not_gripper():
    # A fake "fk": TCP x = joint1; workspace x in [-0.1, 0.1].
    def fk(qa):
        m = np.eye(4)
        m[0, 3] = qa[0]
        return m
    s = SafetyLayer.from_profile(PROF, PERIOD, fk=fk)
    s.workspace = {"x": [-0.1, 0.1]}
    q = PROF.home()
    q[0] = 0.09
    t = q.copy()
    t[0] = 0.2
    t[-1] = 0.5
    sent, rep = s.filter(t, q)
    assert rep.blocked_workspace and sent[0] == q[0] and sent[-1] < q[-1]


@settings(max_examples=300, deadline=None)
@given(cmds=st.lists(arrays(np.float64, 8, elements=st.floats(allow_nan=True, allow_infinity=True,
                                                          width=64)), min_size=1, max_size=30))
def test_random_and_adversarial_commands_never_escape(cmds):
    s = layer()
    q = PROF.home()
    prev = q
    for c in cmds:
        sent, _ = s.filter(c, q)
        assert np.all(np.isfinite(sent))
        assert np.all(sent >= PROF.lower()) and np.all(sent <= PROF.upper())
        assert np.all(np.abs(sent - prev) <= PROF.max_speed() * PERIOD + 1e-9)
        prev = sent



def test_rounding_never_lands_outside_a_limit():
    # Found by hypothesis: ref + (limit - ref) can be one ulp below the limit (joint6 lower = -0.0175).
    s = layer()
    ref = PROF.home()
    ref[5] = 0.04500425                   # 0.04500425 + (-0.0175 - 0.04500425) < -0.0175 in float64
    assert ref[5] + (PROF.lower()[5] - ref[5]) < PROF.lower()[5]
    s.reset(ref)
    t = ref.copy()
    t[5] = -1.0
    sent, rep = s.filter(t, ref)
    assert rep.clamped_limits and sent[5] >= PROF.lower()[5]
