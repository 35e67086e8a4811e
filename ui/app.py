"""`teleop gui`: the desktop app. `main(config)` is what the CLI calls.

Startup is kept short (target: live sim view within 3 s): no torch import (the policy tab imports it in a
worker when a checkpoint is loaded), the session connects in a worker while the window is already up.

    python -m ui.app --measure-startup     # prints seconds from process start to the first live frame
"""
from __future__ import annotations

import os
import sys
import time

_T_IMPORT = time.monotonic()


def process_age() -> float:
    """Seconds since this process started (Linux /proc; falls back to time since this module loaded)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _T_IMPORT


def explicit_flags(argv: list[str]) -> set[str]:
    """Connection fields named on the command line (`teleop gui --robot sim`): they override what the GUI
    remembered from last time, even when they equal the defaults."""
    names = {"profile", "robot", "port", "dataset"}
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and a[2:].split("=", 1)[0] in names}


def main(session_config=None, *, measure_startup: bool = False) -> int:
    """Run the GUI on `session_config` (a teleop_app.session.SessionConfig). Returns the exit code."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")           # pygame: joystick only, never a window
    # The control loop shares the GIL with the UI thread; a 1 ms switch interval (default 5 ms) bounds how
    # long the loop can wait for it behind Python UI code (measured: loop p99 jitter ~9 -> ~6 ms at 30 Hz).
    sys.setswitchinterval(0.001)
    os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from ui.util import qt_binding_problem
    problem = qt_binding_problem()
    if problem:
        print(f"teleop gui: {problem}", file=sys.stderr)
        return 2
    if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        # Qt would abort with a plugin error; say what to do instead.
        print("teleop gui: no display found (DISPLAY/WAYLAND_DISPLAY unset). Run it from a desktop "
              "session, or headless with `xvfb-run teleop gui` or QT_QPA_PLATFORM=offscreen. On Debian/"
              "Ubuntu desktops Qt also needs `apt install libxcb-cursor0`.", file=sys.stderr)
        return 2
    from ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("teleop")
    app.setOrganizationName("teleop")
    measure = measure_startup or os.environ.get("TELEOP_GUI_MEASURE_STARTUP") == "1"
    settings = None
    if measure:          # a measurement must neither use nor change the operator's remembered settings
        import tempfile
        from PySide6.QtCore import QSettings
        settings = QSettings(os.path.join(tempfile.mkdtemp(prefix="teleop-gui-"), "ui.ini"),
                             QSettings.Format.IniFormat)
    win = MainWindow(session_config, settings=settings, explicit=explicit_flags(sys.argv[1:]))
    win.show()
    if measure:
        t_start = time.monotonic()

        def check():
            if win.live.first_frame_time is not None:
                age = process_age()
                print(f"startup: first live frame {age:.2f} s after process start "
                      f"(window shown + connect {time.monotonic() - t_start:.2f} s); "
                      f"torch imported: {'torch' in sys.modules}", flush=True)
                win.close()
                app.quit()
            elif win.conn_error.text():
                print(f"startup: connect failed: {win.conn_error.text()}", flush=True)
                win.close()
                app.exit(1)
        poll = QTimer(win)
        poll.timeout.connect(check)
        poll.start(10)
        QTimer.singleShot(30000, lambda: (print("startup: no live frame within 30 s", flush=True), app.exit(2)))
    QTimer.singleShot(0, win.connect_session)
    try:
        return int(app.exec())
    finally:
        if win.session is not None:
            win.session.close()


if __name__ == "__main__":
    import argparse

    from teleop_app.session import SessionConfig
    ap = argparse.ArgumentParser(description="teleop desktop GUI (normally started with `teleop gui`)")
    ap.add_argument("--profile", default="sim7")
    ap.add_argument("--robot", default="sim")
    ap.add_argument("--dataset", default="data/default")
    ap.add_argument("--measure-startup", action="store_true",
                    help="print the time from process start to the first live camera frame, then quit")
    a = ap.parse_args()
    sys.exit(main(SessionConfig(profile=a.profile, robot=a.robot, dataset=a.dataset),
                  measure_startup=a.measure_startup))
