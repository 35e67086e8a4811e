"""Open the real GUI on the sim (the window as a client of its control process, as `teleop gui` runs),
record a short scripted episode, drive the arm with a (simulated) leader arm, switch to Cartesian pad mode,
run the shipped demo policy, visit every tab and save
docs/screenshot_<tab>.png.   Run:  .venv/bin/python scripts/screenshots.py [--out docs]

Headless by default (QT_QPA_PLATFORM=offscreen); pass --show to use the real display (e.g. Xvfb's).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--show", action="store_true", help="use the real display instead of offscreen")
    a = ap.parse_args()
    if not a.show:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from PySide6.QtCore import QEventLoop, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from teleop_app.session import Mode, PolicyState, SessionConfig
    from teleop_app.workflow import State, WorkflowConfig
    from ui.main_window import MainWindow

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="teleop-shots-"))
    app = QApplication.instance() or QApplication(sys.argv[:1])

    def pump(seconds: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    def wait(cond, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"screenshots: timed out waiting for {what}")
            pump(0.05)

    def shot(name: str) -> None:
        pump(0.4)
        path = out / f"screenshot_{name}.png"
        win.grab().save(str(path))
        print(f"saved {path}")

    wf = WorkflowConfig(countdown_s=0, reset_s=0, episode_s=0, target_episodes=20,
                        instructions=["pick up the red cube"])
    cfg = SessionConfig(robot="sim", dataset=str(tmp / "dataset"), workflow=wf, leader="sim")
    settings = QSettings(str(tmp / "ui.ini"), QSettings.Format.IniFormat)
    win = MainWindow(cfg, settings=settings)
    win.resize(1680, 1000)
    win.show()
    win.connect_session()
    wait(lambda: win.session is not None and win.live.first_frame_time is not None, 60, "the live view")
    s = win.session

    # --- record one scripted episode (the IK expert picks the red cube), keep it as a success
    win.teleop.set_mode(Mode.SCRIPTED)
    s.start_episode()
    wait(lambda: s.status.workflow == State.RECORDING, 5, "recording")
    wait(lambda: s.status.workflow == State.REVIEW, 60, "the scripted episode to finish")
    s.keep(True)
    wait(lambda: s.status.kept == 1, 5, "the episode to be kept")
    # --- a second, short episode under way (jogging joint 1) for the teleop screenshot
    win.teleop.set_mode(Mode.HOLD)
    s.reset_scene()
    win.teleop.instruction.setCurrentText("pick up the red cube")
    win.teleop.apply_instruction()
    s.start_episode()
    wait(lambda: s.status.workflow == State.RECORDING, 5, "recording")
    import numpy as np
    jog = np.zeros(s.info.dof)
    jog[0] = 0.4
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        s.jog(jog)
        pump(0.1)
    win.tabs.setCurrentWidget(win.teleop)
    win.teleop.lower_tabs.setCurrentIndex(0)
    wait(lambda: win.teleop.plot is not None, 30, "the joint plot")
    pump(1.0)
    shot("teleop")
    win.teleop.lower_tabs.setCurrentIndex(1)
    shot("mapping")
    win.teleop.lower_tabs.setCurrentIndex(0)
    s.stop_episode()
    wait(lambda: s.status.workflow == State.REVIEW, 5, "review")
    s.discard()

    # --- leader arm (a simulated leader on its own pty): the operator's hand moves it, the arm follows
    win.teleop.set_mode(Mode.LEADER)
    wait(lambda: s.status.human.get("leader") in ("refused", "following"), 5, "the leader mode")
    s.move_leader(s.status.qpos)      # the arm was jogged away from the leader: bring the leader to it
    wait(lambda: s.status.human.get("leader") == "following", 15, "the follower to track the leader")
    q = np.array(s.status.qpos, float)
    for k in range(45):                # the hand on the leader: ~4.5 s of sweeping joints 1, 2 and 4
        p = q.copy()
        p[0] -= 0.6 * np.sin(k / 7)
        p[1] += 0.3 * np.sin(k / 5)
        p[3] += 0.4 * np.sin(k / 9)
        s.move_leader(p)
        pump(0.1)
    shot("leader")
    # --- Cartesian pad mode: the sticks move the gripper along the base frame's axes
    win.teleop.set_mode(Mode.CARTESIAN)
    wait(lambda: s.status.human.get("frame") == "base", 5, "Cartesian mode")
    pump(1.0)
    shot("cartesian")
    win.teleop.set_mode(Mode.HOLD)

    # --- episodes: select the scripted episode, scrub to the middle
    win.tabs.setCurrentWidget(win.episodes)
    win.episodes.reload()
    wait(lambda: win.episodes.table.rowCount() >= 1, 10, "the episodes table")
    win.episodes.table.selectRow(0)
    wait(lambda: win.episodes.episode is not None, 10, "the episode to load")
    win.episodes.show_frame(win.episodes.episode.num_steps * 2 // 3)
    shot("episodes")

    # --- policy: the shipped demo checkpoint, loaded by the control process, one run judged by the sim
    win.tabs.setCurrentWidget(win.policy)
    s.reset_scene()
    win.policy.source.setText("demo")
    win.policy.load("demo")
    wait(lambda: win.policy.load_btn.isEnabled() and s.status.policy_state == PolicyState.READY, 120,
         "the demo policy to load")
    win.policy.start()
    wait(lambda: win.policy.run is None and win.policy.runs, 60, "the policy run to be judged")
    s.reset_scene()
    win.policy.start()
    pump(3.0)
    shot("policy")
    win.policy.stop()
    wait(lambda: s.status.mode == Mode.HOLD, 5, "the policy to stop")

    # --- takeover: the operator takes the arm from the running policy (the pad or leader would drive it)
    s.reset_scene()
    win.policy.allow_takeover.setChecked(True)
    win.policy.start()
    wait(lambda: s.status.mode == Mode.TAKEOVER, 5, "the policy with takeover")
    pump(2.5)
    win.policy.toggle_takeover()
    wait(lambda: s.status.human.get("intervention") is True, 5, "the takeover")
    pump(1.5)
    shot("takeover")
    win.policy.toggle_takeover()
    win.policy.stop()

    # --- keyboard help (F1)
    from ui.shortcuts import HelpDialog
    dlg = HelpDialog(win)
    dlg.show()
    pump(0.4)
    path = out / "screenshot_help.png"
    dlg.grab().save(str(path))
    print(f"saved {path}")
    dlg.close()

    win.close()
    print(f"done; dataset used: {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
