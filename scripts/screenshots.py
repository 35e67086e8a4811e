"""Open the real GUI on the sim, record a short scripted episode, run a demo policy, visit every tab and
save docs/screenshot_<tab>.png.   Run:  .venv/bin/python scripts/screenshots.py [--out docs]

Headless by default (QT_QPA_PLATFORM=offscreen); pass --show to watch it on a desktop.
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


class ExpertPolicy:
    """The sim's scripted IK expert dressed as a policy (predict -> a short chunk), so the policy tab can
    be shown doing something sensible without trained weights."""

    def __init__(self, workcell, profile, fps: float):
        from drivers.sim import ScriptedExpert
        from teleop_app.policy.base import PolicyMeta
        self.wc, self.fps = workcell, fps
        self.meta = PolicyMeta(joint_names=profile.joint_names, action_dim=profile.dof, fps=fps,
                               cameras=["front"], chunk_size=2, kind="scripted-expert-demo")
        self.expert = ScriptedExpert(workcell, seed=0, dt=1.0 / fps)

    def reset(self) -> None:
        self.expert.reset()

    def predict(self, obs):
        import numpy as np
        a = np.asarray(self.expert.act(obs["qpos"]), float)
        return np.stack([a, a])


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

    from teleop_app.session import SessionConfig
    from teleop_app.workflow import WorkflowConfig
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
    cfg = SessionConfig(robot="sim", dataset=str(tmp / "dataset"), workflow=wf)
    settings = QSettings(str(tmp / "ui.ini"), QSettings.Format.IniFormat)
    win = MainWindow(cfg, settings=settings)
    win.resize(1680, 1000)
    win.show()
    win.connect_session()
    wait(lambda: win.session is not None and win.live.first_frame_time is not None, 20, "the live view")
    s = win.session

    # --- record one scripted episode (the IK expert picks the red cube), keep it as a success
    win.teleop.set_mode("scripted")
    s.start_episode()
    wait(lambda: s.status.workflow == "recording", 5, "recording")
    wait(lambda: s.status.workflow == "review", 60, "the scripted episode to finish")
    s.keep(True)
    wait(lambda: s.status.kept == 1, 5, "the episode to be kept")
    # --- a second, short gamepad-mode episode under way for the teleop screenshot
    win.teleop.set_mode("hold")
    s.reset_scene()
    win.teleop.instruction.setCurrentText("pick up the red cube")
    win.teleop.apply_instruction()
    s.start_episode()
    wait(lambda: s.status.workflow == "recording", 5, "recording")
    import numpy as np
    jog = np.zeros(s.profile.dof)
    jog[0] = 0.4
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        s.jog(jog)
        pump(0.1)
    win.tabs.setCurrentWidget(win.teleop)
    win.teleop.lower_tabs.setCurrentIndex(0)
    wait(lambda: win.teleop.plot is not None, 15, "the joint plot")
    pump(1.0)
    shot("teleop")
    win.teleop.lower_tabs.setCurrentIndex(1)
    shot("mapping")
    win.teleop.lower_tabs.setCurrentIndex(0)
    s.stop_episode()
    wait(lambda: s.status.workflow == "review", 5, "review")
    s.discard()

    # --- episodes: select the scripted episode, scrub to the middle
    win.tabs.setCurrentWidget(win.episodes)
    wait(lambda: win.episodes.table.rowCount() >= 1, 5, "the episodes table")
    win.episodes.table.selectRow(0)
    wait(lambda: win.episodes.episode is not None, 10, "the episode to load")
    win.episodes.show_frame(win.episodes.episode.num_steps * 2 // 3)
    shot("episodes")

    # --- policy: the expert as a demo policy, one run judged by the sim
    win.tabs.setCurrentWidget(win.policy)
    s.reset_scene()
    pol = ExpertPolicy(s.devices.workcell, s.profile, s.fps)
    win.policy.install(pol, "scripted-expert-demo")
    win.policy.start()
    wait(lambda: win.policy.run is None and win.policy.runs, 60, "the policy run to be judged")
    s.reset_scene()
    pol.reset()
    win.policy.start()
    pump(3.0)
    shot("policy")
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
