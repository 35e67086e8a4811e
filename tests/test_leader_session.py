"""The human-in-the-loop modes inside a live Session (real-time loop): leader arm on its own pty,
Cartesian mode and the policy-takeover mode are registered modes; Status carries their state."""
from __future__ import annotations

import time

import numpy as np

from teleop_app.human import attach_leader
from teleop_app.session import Mode, Session, SessionConfig
import waiting  # noqa: E402 (tests/waiting.py)


def _wait(pred, timeout=5.0):
    return waiting.wait_for(pred, timeout, 0.02) or pred()


def test_session_leader_mode_follows_sim_leader(tmp_path):
    s = Session(SessionConfig(robot="sim", dataset=str(tmp_path / "ds"), use_gamepad=False))
    s.connect()
    try:
        attach_leader(s, "sim")
        s.start()
        s.set_mode(Mode.LEADER)
        assert _wait(lambda: s.status.human.get("leader") == "following")
        q = s.status.qpos.copy()
        q[0] += 0.3
        s.move_leader(q)
        assert _wait(lambda: abs(s.status.qpos[0] - q[0]) < 5e-3), s.status.qpos[0] - q[0]
        s.sim_leader.bus.unplug()
        assert _wait(lambda: s.status.human.get("leader") == "lost")
        held = s.status.qpos.copy()
        time.sleep(0.3)
        assert np.allclose(s.status.qpos, held, atol=1e-3)
        assert any("unplugged" in m for m in s.messages)
        s.set_mode(Mode.CARTESIAN)
        assert _wait(lambda: s.status.mode == Mode.CARTESIAN and s.status.human.get("frame") == "base")
    finally:
        s.close()
