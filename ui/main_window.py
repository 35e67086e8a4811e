"""The main window: connection panel with status lights, the always-visible E-STOP, live cameras, the
teleop / episodes / policy tabs and a status bar with loop timing and recording state.

The window is a client of the control process (teleop_app.control): connecting starts it (or reconnects to
the one already serving this dataset), commands are messages, and one 30 Hz QTimer reads the typed status
snapshot and hands it to the views. The UI never waits on the control loop; if the UI hangs or dies, the
control process holds the arm and keeps the episode. `attach()` also shows an in-process Session.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QListWidget, QListWidgetItem, QMainWindow, QPlainTextEdit, QProgressBar, QPushButton,
                               QSplitter, QVBoxLayout, QWidget)

from teleop_app.control.client import RemoteSession, connect
from teleop_app.session import Mode
from teleop_app.workflow import State
from ui.episodes_tab import EpisodesTab
from ui.live_view import LiveView
from ui.policy_tab import POLICY_MODES, PolicyTab
from ui.shortcuts import SHORTCUTS, HelpDialog
from ui.teleop_tab import TeleopTab
from ui.util import (GuiGarbageCollector, ScrollTabs, StatusLight, Worker, preload_pyqtgraph, run_in_thread,
                     set_style)

STATUS_HZ = 30
ROBOT_KINDS = ("sim", "sim-serial", "real")
MAX_INSTRUCTIONS = 30
STALE_STATUS_S = 1.0        # no fresh status for this long: the control loop is not running


class MainWindow(QMainWindow):
    connected = Signal(object)        # the session (a RemoteSession, or an attached in-process Session)
    disconnected = Signal()

    def __init__(self, config=None, settings: QSettings | None = None, explicit: set[str] | None = None,
                 grace_s: float = 60.0, hang_s: float = 5.0):
        """`explicit`: config fields the user gave on purpose (CLI flags); they win over remembered settings
        even when equal to the defaults. Other fields: a non-default config value wins, else the last used.
        `grace_s`: how long a control process started here waits for this window to come back if it dies;
        `hang_s`: how long it lets this window be silent (hung) before it holds the arm and closes the episode."""
        super().__init__()
        from teleop_app.session import SessionConfig
        self.base_config = config or SessionConfig()
        self.explicit = set(explicit or ())
        self.settings = settings or QSettings("teleop", "teleop")
        self.grace_s, self.hang_s = grace_s, hang_s
        self.session = None
        self.profile_spec = None            # the RobotProfile of the connected session (for the views)
        self._connecting: Worker | None = None
        self._msg_seq = 0
        self._bar_t = self._fps_t = 0.0
        self._closing = False
        self._gc = GuiGarbageCollector.acquire()     # no Qt object is ever finalized off the GUI thread
        self.setWindowTitle("teleop")
        self._build_connection_panel()
        self._build_estop_bar()
        self._build_views()
        self._build_status_bar()
        self._wire()
        self.actions: dict[str, Callable[[], object]] = self._action_table()
        self._bind_shortcuts()
        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / STATUS_HZ))
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        self._load_settings()
        self._set_connected_ui(False)

    # ================================================================ building
    def _build_connection_panel(self) -> None:
        self.profile = QComboBox()
        self.profile.setEditable(True)
        self.kind = QComboBox()
        self.kind.addItems(ROBOT_KINDS)
        self.port = QLineEdit()
        self.port.setPlaceholderText("/dev/ttyUSB0 (real arms)")
        self.cameras = QListWidget()
        self.cameras.setMaximumHeight(70)
        self.dataset = QLineEdit()
        self.dataset_btn = QPushButton("...")
        self.dataset_btn.setFixedWidth(30)
        self.connect_btn = QPushButton("Connect [Ctrl+L]")
        self.connect_btn.setStyleSheet("font-weight: bold")
        self.disconnect_btn = QPushButton("Disconnect")
        self.conn_busy = QProgressBar()
        self.conn_busy.setRange(0, 0)            # indeterminate: connecting
        self.conn_busy.setMaximumHeight(10)
        self.conn_busy.setTextVisible(False)
        self.conn_busy.hide()
        self.conn_error = QLabel("")
        self.conn_error.setWordWrap(True)
        self.conn_error.setStyleSheet("color: #e74c3c")
        self.light_robot = StatusLight("robot")
        self.light_cams = StatusLight("cameras")
        self.light_pad = StatusLight("gamepad")
        self.light_data = StatusLight("dataset")
        form = QFormLayout()
        form.addRow("profile", self.profile)
        form.addRow("robot", self.kind)
        form.addRow("port", self.port)
        form.addRow("cameras", self.cameras)
        ds = QHBoxLayout()
        ds.addWidget(self.dataset, 1)
        ds.addWidget(self.dataset_btn)
        form.addRow("dataset", ds)
        conn_box = QGroupBox("Connection")
        cl = QVBoxLayout(conn_box)
        cl.addLayout(form)
        btns = QHBoxLayout()
        btns.addWidget(self.connect_btn, 1)
        btns.addWidget(self.disconnect_btn)
        cl.addLayout(btns)
        cl.addWidget(self.conn_busy)
        cl.addWidget(self.conn_error)
        for light in (self.light_robot, self.light_cams, self.light_pad, self.light_data):
            cl.addWidget(light)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setPlaceholderText("session messages")
        log_box = QGroupBox("Messages")
        QVBoxLayout(log_box).addWidget(self.log)
        self.left_panel = QWidget()
        lv = QVBoxLayout(self.left_panel)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(conn_box)
        lv.addWidget(log_box, 1)
        self.left_panel.setMinimumWidth(250)
        self.left_panel.setMaximumWidth(360)

    def _build_estop_bar(self) -> None:
        self.estop_btn = QPushButton("E-STOP\n[Space]")
        self.estop_btn.setMinimumSize(150, 64)
        self.estop_btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.estop_btn.setStyleSheet(
            "QPushButton { background: #d62c1a; color: white; font-size: 20px; font-weight: bold;"
            " border: 3px solid #7b1a0f; border-radius: 10px; }"
            "QPushButton:pressed { background: #a51f12; }")
        self.reset_btn = QPushButton("Release e-stop\n[Ctrl+R]")
        self.reset_btn.setMinimumHeight(64)
        self.reset_btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.banner = QLabel("not connected")
        self.banner.setStyleSheet("font-size: 16px; padding: 6px")
        self.banner.setWordWrap(True)
        self.help_btn = QPushButton("Keys [F1]")
        self.help_btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.bar = QHBoxLayout()
        self.bar.addWidget(self.banner, 1)
        self.bar.addWidget(self.help_btn)
        self.bar.addWidget(self.reset_btn)
        self.bar.addWidget(self.estop_btn)

    def _build_views(self) -> None:
        self.live = LiveView()
        self.teleop = TeleopTab()
        self.episodes = EpisodesTab()
        self.policy = PolicyTab()
        self.tabs = ScrollTabs()
        self.tabs.addTab(self.teleop, "Teleop / record")
        self.tabs.addTab(self.episodes, "Episodes")
        self.tabs.addTab(self.policy, "Policy")
        live_box = QGroupBox("Live cameras")
        QVBoxLayout(live_box).addWidget(self.live)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.addWidget(self.left_panel)
        self.split.addWidget(live_box)
        self.split.addWidget(self.tabs)
        self.split.setStretchFactor(0, 0)
        self.split.setStretchFactor(1, 2)
        self.split.setStretchFactor(2, 5)
        self.split.setSizes([270, 360, 1000])
        central = QWidget()
        cv = QVBoxLayout(central)
        cv.setContentsMargins(6, 6, 6, 6)
        cv.addLayout(self.bar)
        cv.addWidget(self.split, 1)
        self.setCentralWidget(central)

    def _build_status_bar(self) -> None:
        self.loop_label = QLabel("loop: -")
        self.rec_label = QLabel("")
        self.mode_label = QLabel("")
        self.fps_label = QLabel("")
        for w, sample in ((self.mode_label, "mode: kinesthetic"), (self.fps_label, "display front 30 fps, wrist 30 fps"),
                          (self.rec_label, "resetting  kept 000/000"),
                          (self.loop_label, "loop 10.0/10 Hz  p99 0.00 ms  missed 0  tick 0.0 ms")):
            w.setMinimumWidth(w.fontMetrics().horizontalAdvance(sample) + 12)   # stable width: no relayout
            self.statusBar().addPermanentWidget(w)

    def _wire(self) -> None:
        self.connect_btn.clicked.connect(self.connect_session)
        self.disconnect_btn.clicked.connect(self.disconnect_session)
        self.dataset_btn.clicked.connect(self._pick_dataset)
        self.profile.currentTextChanged.connect(self._profile_changed)
        self.kind.currentTextChanged.connect(self._kind_changed)
        self.estop_btn.clicked.connect(self.estop)
        self.reset_btn.clicked.connect(lambda: self.command("reset_estop"))
        self.help_btn.clicked.connect(self.show_help)
        for tab in (self.teleop, self.episodes, self.policy):
            tab.message.connect(self.show_message)
        self.teleop.instruction_used.connect(self._remember_instruction)
        self.episodes.dataset_changed.connect(lambda p: self.settings.setValue("dataset", p))

    def _action_table(self) -> dict[str, Callable[[], object]]:
        """Every operator action by name: the shortcut table (ui/shortcuts.py) and buttons refer to these."""
        c = self.command
        tab = self.tabs.setCurrentWidget
        return {
            "estop": self.estop, "reset_estop": lambda: c("reset_estop"),
            "start_episode": lambda: c("start_episode"), "next_phase": lambda: c("next"),
            "rerecord": lambda: c("rerecord"), "stop_all": self.stop_all,
            "mark_success": lambda: self.mark(True), "mark_failure": lambda: self.mark(False),
            "keep": lambda: c("keep"), "discard": lambda: c("discard"), "go_home": lambda: c("go_home"),
            "new_scene": lambda: c("reset_scene"),
            "mode_hold": lambda: self.teleop.set_mode(Mode.HOLD),
            "mode_gamepad": lambda: self.teleop.set_mode(Mode.GAMEPAD),
            "mode_kinesthetic": lambda: self.teleop.set_mode(Mode.KINESTHETIC),
            "mode_scripted": lambda: self.teleop.set_mode(Mode.SCRIPTED),
            "mode_leader": lambda: self.teleop.set_mode(Mode.LEADER),
            "mode_cartesian": lambda: self.teleop.set_mode(Mode.CARTESIAN),
            "policy_start": self.policy.start, "policy_step": self.policy.step,
            "policy_takeover": self.policy.toggle_takeover,
            "frame_prev": lambda: self.episodes.step_frame(-1), "frame_next": lambda: self.episodes.step_frame(1),
            "delete_episode": lambda: self.tabs.currentWidget() is self.episodes and self.episodes.delete_selected(),
            "undo_edit": self.episodes.undo,
            "export_lerobot": lambda: (tab(self.episodes), self.episodes.export_dialog("lerobot")),
            "connect_session": self.connect_session, "disconnect_session": self.disconnect_session,
            "tab_teleop": lambda: tab(self.teleop), "tab_episodes": lambda: tab(self.episodes),
            "tab_policy": lambda: tab(self.policy), "show_help": self.show_help, "close": self.close,
        }

    def _bind_shortcuts(self) -> None:
        self.shortcuts: dict[str, QShortcut] = {}
        for key, _text, action in SHORTCUTS:
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(self.actions[action])
            self.shortcuts[key] = sc


    # ================================================================ settings
    def _load_settings(self) -> None:
        from teleop_app.profiles import builtin_profiles
        from teleop_app.session import SessionConfig
        s, c, d = self.settings, self.base_config, SessionConfig()

        def pick(key, value, default):      # explicit config (e.g. CLI flags) wins over remembered values
            return s.value(key, value) if value == default and key not in self.explicit else value
        self.profile.blockSignals(True)
        self.profile.addItems(builtin_profiles())
        self.profile.blockSignals(False)
        self.profile.setCurrentText(str(pick("profile", c.profile, d.profile)))
        self._profile_changed(self.profile.currentText())
        self.kind.setCurrentText(str(pick("robot", c.robot, d.robot)))
        self.port.setText(str(pick("port", c.port, d.port) or ""))
        self.dataset.setText(str(pick("dataset", c.dataset, d.dataset)))
        self.teleop.set_instruction_history(self._instructions())
        geo = s.value("geometry")
        want = s.value("window_size")    # the size the window had, before Qt fits it to this screen
        want = (int(want[0]), int(want[1])) if isinstance(want, (list, tuple)) and len(want) == 2 else (1600, 960)
        avail = self.screen().availableGeometry() if self.screen() is not None else None
        fit = (min(want[0], avail.width()), min(want[1], avail.height())) if avail is not None else want
        if geo is None or not self.restoreGeometry(geo):
            self.resize(*fit)
        elif avail is not None and (self.width() < fit[0] or self.height() < fit[1]):
            # remembered on a larger screen: Qt shrinks it to 2/3 of this one; use the free area instead
            self.resize(*fit)
            self.move(avail.topLeft())
        split = s.value("splitter")
        if split is not None:
            self.split.restoreState(split)
        self._kind_changed(self.kind.currentText())

    def _instructions(self) -> list[str]:
        v = self.settings.value("instructions", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])]

    def _remember_instruction(self, text: str) -> None:
        items = [text] + [i for i in self._instructions() if i != text]
        self.settings.setValue("instructions", items[:MAX_INSTRUCTIONS])
        self.teleop.set_instruction_history(items[:MAX_INSTRUCTIONS])

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("profile", self.profile.currentText())
        s.setValue("robot", self.kind.currentText())
        s.setValue("port", self.port.text())
        s.setValue("dataset", self.dataset.text())
        s.setValue("geometry", self.saveGeometry())
        s.setValue("window_size", [self.width(), self.height()])
        s.setValue("splitter", self.split.saveState())
        s.sync()

    def _profile_changed(self, name: str) -> None:
        from teleop_app.profiles import load_profile
        self.cameras.clear()
        try:
            prof = load_profile(name)
        except Exception as e:
            self.conn_error.setText(str(e))
            return
        self.conn_error.setText("")
        wanted = self.base_config.cameras
        for cam in prof.cameras:
            it = QListWidgetItem(f"{cam.name}  ({cam.kind} {cam.width}x{cam.height} @ {cam.fps:g})")
            it.setData(Qt.ItemDataRole.UserRole, cam.name)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Checked if wanted is None or cam.name in wanted
                             else Qt.CheckState.Unchecked)
            self.cameras.addItem(it)

    def _kind_changed(self, kind: str) -> None:
        self.port.setEnabled(kind == "real")

    def _pick_dataset(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Dataset folder", self.dataset.text())
        if d:
            self.dataset.setText(d)

    # ================================================================ connect
    def panel_config(self):
        cams = [self.cameras.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.cameras.count())
                if self.cameras.item(i).checkState() == Qt.CheckState.Checked]
        return replace(self.base_config, profile=self.profile.currentText().strip(), robot=self.kind.currentText(),
                       port=self.port.text().strip() or None, cameras=cams, dataset=self.dataset.text().strip())

    def connect_session(self) -> Worker | None:
        """(Re)connect in a worker: the previous control process is shut down first; then the control
        process already serving the panel's dataset is reused (e.g. after the GUI was restarted), or a new
        one is started with the panel's settings."""
        if self._connecting is not None:
            return None
        cfg = self.panel_config()
        old = self.session
        self._detach()
        self.conn_error.setText("")
        self.light_robot.set("warn", f"connecting to {cfg.profile} via {cfg.robot} ...")
        self.banner.setText(f"connecting to {cfg.profile} via {cfg.robot} ...")
        self.connect_btn.setEnabled(False)
        self.conn_busy.show()
        self.save_settings()
        grace, hang = self.grace_s, self.hang_s

        def job(w: Worker):
            if old is not None:
                w.report(None, "closing the previous session")
                old.close()
            w.report(None, "starting the control process")
            return connect(cfg, heartbeat="manual", grace_s=grace, client_timeout_s=hang)
        self._connecting = run_in_thread(job, on_done=self._on_connected, on_error=self._on_connect_failed,
                                         on_progress=lambda f, t: self.statusBar().showMessage(t, 3000))
        return self._connecting

    def _on_connected(self, session) -> None:
        self._connecting = None
        self.conn_busy.hide()
        self.attach(session)
        if isinstance(session, RemoteSession) and session.process is None:
            self.show_message(f"reconnected to the running control process (pid {session.control_pid}); "
                              "Ctrl+L again restarts it with the panel's settings")

    def attach(self, session) -> None:
        """Show a running session: a RemoteSession, or an in-process Session (tests, scripts)."""
        from teleop_app.profiles import load_profile
        self.session = session
        self.profile_spec = load_profile(session.config.profile)
        self._msg_seq = 0
        self.live.set_session(session)
        self.teleop.set_session(session, self.profile_spec)
        self.episodes.set_session(session)
        self.policy.set_session(session, self.profile_spec)
        self._set_connected_ui(True)
        info = session.info
        self.show_message(f"connected: {info.profile} via {info.robot_kind}"
                          + (f" ({info.sim} sim)" if info.sim else ""))
        self.connected.emit(session)

    def _on_connect_failed(self, err: str) -> None:
        self._connecting = None
        self.conn_busy.hide()
        self.connect_btn.setEnabled(True)
        self.light_robot.set("error", err)
        self.conn_error.setText(f"Could not connect: {err}")
        self.banner.setText("<span style='color:#e74c3c'><b>not connected</b></span> - see the connection panel")
        self.show_message(f"connect failed: {err}")
        # Reviewing, labelling and exporting need no robot: open the dataset anyway if it exists.
        root = Path(self.dataset.text().strip() or ".")
        if self.episodes.store is None and (root / "index.json").exists():
            self.episodes.open_path(str(root))

    def _detach(self) -> None:
        self.session = None
        self.live.set_session(None)
        self.teleop.set_session(None)
        self.episodes.set_session(None)
        self.policy.set_session(None)
        self._set_connected_ui(False)

    def disconnect_session(self) -> Worker | None:
        s = self.session
        if s is None:
            return None
        self._detach()
        self.banner.setText("disconnecting ...")
        return run_in_thread(lambda w: s.close(), on_done=lambda _r: self._disconnected(),
                             on_error=lambda e: (self.show_message(f"disconnect: {e}"), self._disconnected()))

    def _disconnected(self) -> None:
        self.banner.setText("not connected")
        self.light_robot.set("off", "not connected")
        self.disconnected.emit()

    def _control_lost(self, reason: str) -> None:
        """The connection ended without us closing it. If the control process still runs (it dropped this
        window after a hang: it held the arm and kept the episode), connect to it again at once."""
        from teleop_app.control.server import control_answers
        s = self.session
        self._detach()
        s.detach()
        self.show_message(f"connection to the control process lost: {reason}")
        if not self._closing and control_answers(s.path):
            self.show_message("the control process still runs: reconnecting")
            self.connect_session()
            return
        self.light_robot.set("error", f"control process lost: {reason}")
        self.banner.setText("<span style='color:#e74c3c'><b>control process lost</b></span> - Ctrl+L reconnects "
                            "(recordings are in the dataset)")
        self.disconnected.emit()

    def _set_connected_ui(self, on: bool) -> None:
        self.connect_btn.setEnabled(self._connecting is None)
        self.connect_btn.setText("Reconnect [Ctrl+L]" if on else "Connect [Ctrl+L]")
        self.disconnect_btn.setEnabled(on)
        self.estop_btn.setEnabled(on)
        self.reset_btn.setEnabled(on)
        if not on:
            for light in (self.light_cams, self.light_pad, self.light_data):
                light.set("off", "not connected")

    # ================================================================ polling
    def poll(self) -> None:
        s = self.session
        if s is None:
            return
        if isinstance(s, RemoteSession):
            if not s.connected:
                self._control_lost(s.lost_reason)
                return
            s.heartbeat()                # from the UI thread: a hung window counts as a lost client
        st = s.status
        if st is None:
            return
        if self.live.first_frame_time is not None or not self.live.views:
            preload_pyqtgraph()          # plots need it; loading it after the first frame cannot delay that frame
        self._update_lights(s.info, st)
        self._update_bar(st)
        self.live.set_state(st.workflow, st.time_left, st.estopped)
        self._update_log(s, st)
        cur = self.tabs.currentWidget()
        for tab in (self.teleop, self.episodes, self.policy):
            try:
                tab.update_status(st, visible=tab is cur)
            except Exception as e:   # a view bug must not stop the status updates (nor the e-stop)
                self.statusBar().showMessage(f"view error: {e}", 5000)
        if time.monotonic() - self._fps_t < 0.5:
            return
        self._fps_t = time.monotonic()
        store = self.episodes.store
        self.light_data.set("ok", f"{store.root} ({len(store.episodes())} episodes)" if store is not None
                            else s.info.dataset)
        fps = self.live.display_fps()
        self.fps_label.setText("display " + ", ".join(f"{n} {v:.0f} fps" for n, v in fps.items()) if fps else "")

    def _update_lights(self, info, st) -> None:
        if st.estopped:
            held = "" if st.estop_latency_s is None else f", held {st.estop_latency_s * 1e3:.0f} ms after the request"
            self.light_robot.set("error", f"E-STOP latched ({info.profile}{held}); release with Ctrl+R")
        elif time.monotonic() - st.t > STALE_STATUS_S:
            self.light_robot.set("error", "control loop stopped: reconnect (Ctrl+L)")
        else:
            torque = "" if st.torque else ", torque OFF (move by hand)"
            sim = f" ({info.sim} sim)" if info.sim else ""
            self.light_robot.set("ok", f"{info.profile} via {info.robot_kind}{sim}, {st.mode.value}{torque}")
        cams = list(info.cameras)
        stale = self.live.stale()
        if not cams:
            self.light_cams.set("off", "none selected")
        else:
            self.light_cams.set("warn" if stale else "ok",
                                f"no fresh frames: {', '.join(stale)}" if stale else f"{len(cams)} live: {', '.join(cams)}")
        pad = st.gamepad
        if pad.connected:
            self.light_pad.set("ok", f"{pad.name}" + (f" (group {st.group})" if st.group else ""))
        else:
            self.light_pad.set("warn", "no gamepad: plug one in (picked up automatically)")

    def _update_bar(self, st) -> None:
        lp = st.loop
        now = time.monotonic()
        slow = now - self._bar_t >= 0.25     # figures readable at 4 Hz; avoids relayouts
        if slow:
            self._bar_t = now
        if lp is not None and slow:
            warn = lp.missed > 0 or lp.p99_err_ms > 0.2 * 1000 / lp.hz
            self.loop_label.setText(f"loop {lp.achieved_hz:.1f}/{lp.hz:g} Hz  p99 {lp.p99_err_ms:.2f} ms  "
                                    f"missed {lp.missed}  tick {lp.last_tick_ms:.1f} ms")
            set_style(self.loop_label, "color: #e67e22" if warn else "")
        wf = st.workflow
        if wf == State.RECORDING:
            self.rec_label.setText(f"<span style='color:#e74c3c'>&#9679; REC</span> {st.recording_steps} steps")
        else:
            self.rec_label.setText(f"{wf.value}  kept {st.kept}/{st.target_episodes}")
        self.mode_label.setText(f"mode: <b>{st.mode.value}</b>")
        if st.estopped:
            self.banner.setText("<span style='color:white; background:#c0392b; font-weight:bold'>&nbsp;E-STOP "
                                "LATCHED&nbsp;</span> the arm holds its position. Release with Ctrl+R.")
        else:
            ins = st.instruction or "-"
            done, total = st.replay_progress
            extra = f" &nbsp; replay {done}/{total}" if total else ""
            self.banner.setText(f"<b>{st.mode.value.upper()}</b> &nbsp; {wf.value} &nbsp; <i>\"{ins}\"</i>{extra}")

    def _update_log(self, s, st) -> None:
        count = s.messages_seen if isinstance(s, RemoteSession) else st.messages_seq
        new = count - self._msg_seq
        if new <= 0:
            return
        self._msg_seq = count
        msgs = list(s.messages)[-new:]
        for m in msgs:
            self.log.appendPlainText(m)
        if msgs:
            self.statusBar().showMessage(msgs[-1], 8000)

    def show_message(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')} [ui] {text}")
        self.statusBar().showMessage(text, 8000)

    # ================================================================ operator actions
    def command(self, method: str, *args, **kwargs) -> bool:
        """Send a session command; a refusal is shown, never raised into Qt."""
        if self.session is None:
            self.show_message("not connected (Ctrl+L connects)")
            return False
        try:
            getattr(self.session, method)(*args, **kwargs)
            return True
        except Exception as e:
            self.show_message(f"{method.replace('_', ' ')}: {e}")
            return False

    def estop(self) -> None:
        if self.session is not None:
            self.session.estop("gui")     # one message; the control side latches it at its next tick

    def stop_all(self) -> None:
        st = self.session.status if self.session is not None else None
        if st is None:
            return
        if st.workflow in (State.RECORDING, State.COUNTDOWN):
            self.command("stop_episode")
        elif st.mode in (Mode.REPLAY, Mode.HOMING) and st.replay_progress[1]:
            self.command("stop_replay")
        elif st.mode in POLICY_MODES:
            self.policy.stop()

    def mark(self, ok: bool) -> None:
        if self.tabs.currentWidget() is self.policy and (self.policy.run is not None or self.policy.runs):
            self.policy.end_run("success" if ok else "failure")
        else:
            self.teleop.mark(ok)

    def show_help(self) -> None:
        HelpDialog(self).exec()

    # ================================================================ close
    def closeEvent(self, ev) -> None:
        """Clean end: settings saved, workers stopped, the control process told to finish (an episode under
        way is kept, unlabelled; the arm holds; the devices are released)."""
        self._closing = True
        self.save_settings()
        self.timer.stop()
        self.live.timer.stop()
        s = self.session
        self._detach()
        if s is not None:
            s.close()         # first: while this window waits for workers it sends no heartbeat
        connecting = self._connecting
        # Exports / validation stop at their next progress point; a connect in flight is waited for.
        Worker.shutdown_all(timeout_s=10.0)
        if connecting is not None and connecting.result is not None and connecting.result is not s:
            connecting.result.close()
        if self._gc is not None:
            self._gc = None
            GuiGarbageCollector.release()
        super().closeEvent(ev)
