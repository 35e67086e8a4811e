"""`teleop gui`: the desktop app. `main(config)` is what the CLI calls.

The window is a client: connecting starts the control process (teleop_app.control.server) that owns the
devices and the loop, so nothing the UI does can slow the loop. Startup is kept short (target: live sim view
within 3 s): no torch import in the GUI, the control process starts in a worker while the window is up.

    python -m ui.app --measure-startup     # prints seconds from process start to the first live frame

`--unattended N` (scripted mode in the sim): N episodes recorded, kept and judged by the sim without an
operator, in the real window; exits 0 when done (1 if an e-stop or a lost control process ended it early).
SIGTERM / SIGINT: a clean end (episode kept, arm held, control process told to finish, devices released).
"""
from __future__ import annotations

import os
import signal
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


class Unattended:
    """Drives the window's session through N scripted episodes (the workflow auto-keeps, the sim labels),
    then quits the app. The episodes are recorded by the control process; this only starts and watches."""

    def __init__(self, win, app, episodes: int):
        from PySide6.QtCore import QTimer
        self.win, self.app, self.episodes = win, app, episodes
        self.started = False
        self.timer = QTimer(win)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self._check)
        win.connected.connect(self._start)

    def _start(self, session) -> None:
        """On connect, and again after a reconnect (the control side ends the cycle when it loses us)."""
        from teleop_app.session import Mode
        if not session.info.is_sim:
            self._quit(2, "--unattended needs the simulated workcell (--robot sim or sim-serial)")
            return
        self.timer.stop()
        print(f"unattended: connected to control process {session.control_pid}, starting "
              f"(episodes kept so far: {session.status.kept})", flush=True)
        self.win.command("set_workflow", auto_keep=True)
        self.win.teleop.set_mode(Mode.SCRIPTED)
        self.win.command("start_episode")
        self.started = True
        self.timer.start()

    def _check(self) -> None:
        from teleop_app.workflow import State
        s = self.win.session
        if s is None:
            if self.win._connecting is None:       # not reconnecting either
                self._quit(1, "unattended: the control process was lost")
            return
        st = s.status
        if st.estopped:
            self._quit(1, f"unattended: e-stop after {st.kept} episode(s)")
        elif st.workflow == State.DONE or st.kept >= self.episodes:
            self._quit(0, f"unattended: {st.kept} episode(s) recorded")

    def _quit(self, code: int, text: str) -> None:
        self.timer.stop()
        print(text, flush=True)
        self.win.close()
        self.app.exit(code)


# What Qt's xcb platform plugin loads beyond Qt itself (Debian/Ubuntu package names): without one of
# them Qt aborts with "could not load the Qt platform plugin" and no hint.
XCB_LIBS = {"libxcb-icccm.so.4": "libxcb-icccm4", "libxcb-keysyms.so.1": "libxcb-keysyms1",
            "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-image.so.0": "libxcb-image0",
            "libxcb-render-util.so.0": "libxcb-render-util0", "libxcb-xkb.so.1": "libxcb-xkb1",
            "libxkbcommon-x11.so.0": "libxkbcommon-x11-0", "libxcb-shape.so.0": "libxcb-shape0"}


def missing_xcb_packages(libs: dict[str, str] = XCB_LIBS) -> list[str]:
    """The packages whose shared library the xcb plugin needs and the dynamic loader cannot find."""
    import ctypes
    missing = []
    for lib, pkg in libs.items():
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append(pkg)
    return missing


def main(session_config=None, *, measure_startup: bool = False, unattended: int = 0,
         grace_s: float = 60.0, hang_s: float = 5.0) -> int:
    """Run the GUI on `session_config` (a teleop_app.session.SessionConfig). Returns the exit code."""
    import faulthandler
    # a crash inside Qt (a segfault) prints every thread's Python stack to stderr: the GUI log then says where
    faulthandler.enable()
    # This process opens no joystick (the control process does); SDL must still never own our signals.
    os.environ["SDL_NO_SIGNAL_HANDLERS"] = "1"
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
    if (sys.platform.startswith("linux") and os.environ.get("QT_QPA_PLATFORM", "xcb") == "xcb"
            and os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        missing = missing_xcb_packages()
        if missing:
            print("teleop gui: Qt's X11 (xcb) plugin needs libraries this machine lacks. Install them with\n"
                  f"    sudo apt-get install -y {' '.join(missing)}\n"
                  "or run headless with QT_QPA_PLATFORM=offscreen.", file=sys.stderr)
            return 2
    from ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("teleop")
    app.setOrganizationName("teleop")
    measure = measure_startup or os.environ.get("TELEOP_GUI_MEASURE_STARTUP") == "1"
    settings = None
    if measure or unattended:   # a measurement / scripted run must neither use nor change remembered settings
        import tempfile
        from PySide6.QtCore import QSettings
        settings = QSettings(os.path.join(tempfile.mkdtemp(prefix="teleop-gui-"), "ui.ini"),
                             QSettings.Format.IniFormat)
    win = MainWindow(session_config, settings=settings, explicit=explicit_flags(sys.argv[1:]), grace_s=grace_s,
                     hang_s=hang_s)
    win.show()
    _end_on_signals(app, win)
    runner = Unattended(win, app, unattended) if unattended else None
    if measure:
        _measure_startup(app, win)
    first_policy = os.environ.get("TELEOP_GUI_MEASURE_POLICY")
    if first_policy:
        _measure_first_policy(app, win, first_policy)
    QTimer.singleShot(0, win.connect_session)
    try:
        return int(app.exec())
    finally:
        del runner
        if win.session is not None:
            win.session.close()


def _end_on_signals(app, win) -> None:
    """SIGTERM / SIGINT close the window like Ctrl+Q. Python runs signal handlers between bytecodes only,
    so a short timer lets them in while Qt's event loop waits in C++."""
    from PySide6.QtCore import QTimer

    def handler(signum, _frame):
        print(f"teleop gui: {signal.Signals(signum).name}: closing (episode kept, control process ended)",
              file=sys.stderr, flush=True)
        QTimer.singleShot(0, lambda: (win.close(), app.exit(0)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    tick = QTimer(win)
    tick.timeout.connect(lambda: None)
    tick.start(100)


def _measure_first_policy(app, win, spec: str, limit_s: float = 180.0) -> None:
    """What a newcomer does after `./dev app`: the policy tab, `spec` (e.g. "demo") in the source field,
    Load, then Start once it is ready. Prints when the window showed a frame, when the control process
    had the policy ready, and when the arm first moved under it (seconds after process start); quits."""
    from PySide6.QtCore import QTimer
    marks: dict[str, float] = {}
    q0: list = []

    def check():
        st = win.session.status if win.session is not None else None
        tab = win.policy
        if "frame" not in marks and win.live.first_frame_time is not None:
            marks["frame"] = process_age()
            win.tabs.setCurrentWidget(tab)
            tab.source.setText(spec)
            tab.load_btn.click()
        elif "frame" in marks and "ready" not in marks and st is not None and tab.start_btn.isEnabled():
            marks["ready"] = process_age()
            q0.append(None if st.qpos is None else st.qpos.copy())
            tab.start_btn.click()
        elif "ready" in marks and st is not None and st.qpos is not None and q0 and q0[0] is not None:
            import numpy as np
            if float(np.max(np.abs(st.qpos[:-1] - q0[0][:-1]))) > 0.01:
                marks["moving"] = process_age()
                print(f"first policy ({spec}): first live frame {marks['frame']:.2f} s, policy ready "
                      f"{marks['ready']:.2f} s, arm moving under it {marks['moving']:.2f} s after process start",
                      flush=True)
                win.close()
                app.quit()
    poll = QTimer(win)
    poll.timeout.connect(check)
    poll.start(20)
    QTimer.singleShot(int(limit_s * 1000), lambda: (print(f"first policy: not moving within {limit_s:.0f} s "
                                                          f"({marks}); messages:\n" + win.log.toPlainText()[-2000:],
                                                          flush=True), app.exit(2)))


def _measure_startup(app, win) -> None:
    from PySide6.QtCore import QTimer
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
    QTimer.singleShot(30000, lambda: (print("startup: no live frame within 30 s; messages:\n"
                                            + win.log.toPlainText()[-2000:], flush=True), app.exit(2)))


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
