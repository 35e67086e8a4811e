"""The main window: connection panel with status lights, the always-visible E-STOP, live cameras, the
teleop / episodes / policy tabs and a status bar with loop timing and recording state.

Threading: connect / disconnect run in workers; one 30 Hz QTimer reads `session.status` (an immutable
snapshot the control loop swaps each tick) and hands it to the views. The UI never waits on the loop.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QListWidget, QListWidgetItem, QMainWindow, QPlainTextEdit, QProgressBar, QPushButton,
                               QSplitter,
                               QTabWidget, QVBoxLayout, QWidget)

from ui.episodes_tab import EpisodesTab
from ui.live_view import LiveView
from ui.policy_tab import PolicyTab

from ui.shortcuts import SHORTCUTS, HelpDialog
from ui.teleop_tab import TeleopTab
from ui.util import StatusLight, Worker, preload_pyqtgraph, run_in_thread, set_style

STATUS_HZ = 30
ROBOT_KINDS = ("sim", "sim-serial", "real")
MAX_INSTRUCTIONS = 30


class MainWindow(QMainWindow):
    connected = Signal(object)        # the Session, once its loop runs
    disconnected = Signal()

    def __init__(self, config=None, settings: QSettings | None = None, explicit: set[str] | None = None):
        """`explicit`: config fields the user gave on purpose (CLI flags); they win over remembered settings
        even when equal to the defaults. Other fields: a non-default config value wins, else the last used."""
        super().__init__()
        from teleop_app.session import SessionConfig
        self.base_config = config or SessionConfig()
        self.explicit = set(explicit or ())
        self.settings = settings or QSettings("teleop", "teleop")
        self.session = None
        self._connecting: Worker | None = None
        self._msg_count = 0
        self._last_msg = ""
        self.setWindowTitle("teleop")

        # ---------------- connection panel
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
        for l in (self.light_robot, self.light_cams, self.light_pad, self.light_data):
            cl.addWidget(l)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setPlaceholderText("session messages")
        log_box = QGroupBox("Messages")
        QVBoxLayout(log_box).addWidget(self.log)
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(conn_box)
        lv.addWidget(log_box, 1)
        left.setMinimumWidth(250)
        left.setMaximumWidth(360)

        # ---------------- e-stop bar
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
        bar = QHBoxLayout()
        bar.addWidget(self.banner, 1)
        bar.addWidget(self.help_btn)
        bar.addWidget(self.reset_btn)
        bar.addWidget(self.estop_btn)

        # ---------------- live view + tabs
        self.live = LiveView()
        self.teleop = TeleopTab()
        self.episodes = EpisodesTab()
        self.policy = PolicyTab()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.teleop, "Teleop / record")
        self.tabs.addTab(self.episodes, "Episodes")
        self.tabs.addTab(self.policy, "Policy")
        live_box = QGroupBox("Live cameras")
        QVBoxLayout(live_box).addWidget(self.live)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.addWidget(left)
        self.split.addWidget(live_box)
        self.split.addWidget(self.tabs)
        self.split.setStretchFactor(0, 0)
        self.split.setStretchFactor(1, 2)
        self.split.setStretchFactor(2, 5)
        self.split.setSizes([270, 360, 1000])

        central = QWidget()
        cv = QVBoxLayout(central)
        cv.setContentsMargins(6, 6, 6, 6)
        cv.addLayout(bar)
        cv.addWidget(self.split, 1)
        self.setCentralWidget(central)

        # ---------------- status bar
        self.loop_label = QLabel("loop: -")
        self.rec_label = QLabel("")
        self.mode_label = QLabel("")
        self.fps_label = QLabel("")
        for w, sample in ((self.mode_label, "mode: kinesthetic"), (self.fps_label, "display front 30 fps, wrist 30 fps"),
                          (self.rec_label, "resetting  kept 000/000"),
                          (self.loop_label, "loop 10.0/10 Hz  p99 0.00 ms  missed 0  tick 0.0 ms")):
            w.setMinimumWidth(w.fontMetrics().horizontalAdvance(sample) + 12)   # stable width: no relayout
            self.statusBar().addPermanentWidget(w)

        # ---------------- wiring
        self.connect_btn.clicked.connect(self.connect_session)
        self.disconnect_btn.clicked.connect(self.disconnect_session)
        self.dataset_btn.clicked.connect(self._pick_dataset)
        self.profile.currentTextChanged.connect(self._profile_changed)
        self.kind.currentTextChanged.connect(self._kind_changed)
        self.estop_btn.clicked.connect(self.estop)
        self.reset_btn.clicked.connect(self.reset_estop)
        self.help_btn.clicked.connect(self.show_help)
        for tab in (self.teleop, self.episodes, self.policy):
            tab.message.connect(self.show_message)
        self.teleop.instruction_used.connect(self._remember_instruction)
        self.episodes.dataset_changed.connect(lambda p: self.settings.setValue("dataset", p))
        self.shortcuts: dict[str, QShortcut] = {}
        for key, _text, method in SHORTCUTS:
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(getattr(self, method))
            self.shortcuts[key] = sc
        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / STATUS_HZ))
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        self._load_settings()
        self._set_connected_ui(False)

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
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1600, 960)
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
        """(Re)connect with the panel's settings in a worker; the old session is closed first."""
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

        def job(w: Worker):
            from teleop_app.session import Session
            if old is not None:
                w.report(None, "closing the previous session")
                old.close()
            w.report(None, "opening devices")
            s = Session(cfg)
            try:
                s.start()
            except Exception:
                try:
                    s.close()
                except Exception:
                    pass
                raise
            return s
        self._connecting = run_in_thread(job, on_done=self._on_connected, on_error=self._on_connect_failed,
                                         on_progress=lambda f, t: self.statusBar().showMessage(t, 3000))
        return self._connecting

    def _on_connected(self, session) -> None:
        self._connecting = None
        self.conn_busy.hide()
        self.attach(session)

    def attach(self, session) -> None:
        """Show a running session (also used by tests and scripts that build the Session themselves)."""
        self.session = session
        self.live.set_session(session)
        self.teleop.set_session(session)
        self.episodes.set_session(session)
        self.policy.set_session(session)
        self._set_connected_ui(True)
        self.light_data.set("ok", f"{session.store.root} ({len(session.store.episodes())} episodes)"
                            if session.store is not None else "none")
        self.show_message(f"connected: {session.profile.name} via {session.config.robot}")
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

    def _set_connected_ui(self, on: bool) -> None:
        self.connect_btn.setEnabled(self._connecting is None)
        self.connect_btn.setText("Reconnect [Ctrl+L]" if on else "Connect [Ctrl+L]")
        self.disconnect_btn.setEnabled(on)
        self.estop_btn.setEnabled(on)
        self.reset_btn.setEnabled(on)
        if not on:
            for l in (self.light_cams, self.light_pad, self.light_data):
                l.set("off", "not connected")

    # ================================================================ polling
    def poll(self) -> None:
        s = self.session
        if s is None:
            return
        st = s.status
        if self.live.first_frame_time is not None or not self.live.views:
            preload_pyqtgraph()          # plots need it; loading it now cannot delay the first frame
        self._update_lights(s, st)
        self._update_bar(st)
        self.live.set_state(st.workflow, st.time_left, st.estopped)
        self._update_log(s)
        cur = self.tabs.currentWidget()
        for tab in (self.teleop, self.episodes, self.policy):
            try:
                tab.update_status(st, visible=tab is cur)
            except Exception as e:   # a view bug must not stop the status updates (nor the e-stop)
                self.statusBar().showMessage(f"view error: {e}", 5000)
        if time.monotonic() - getattr(self, "_fps_t", 0.0) < 0.5:
            return
        self._fps_t = time.monotonic()
        if s.store is not None:
            self.light_data.set("ok", f"{s.store.root} ({len(s.store.episodes())} episodes)")
        fps = self.live.display_fps()
        self.fps_label.setText("display " + ", ".join(f"{n} {v:.0f} fps" for n, v in fps.items()) if fps else "")

    def _update_lights(self, s, st) -> None:
        if st.estopped:
            self.light_robot.set("error", f"E-STOP latched ({s.profile.name}); release with Ctrl+R")
        elif not s.loop.running:
            self.light_robot.set("error", "control loop stopped: reconnect (Ctrl+L)")
        else:
            torque = "" if st.torque else ", torque OFF (move by hand)"
            self.light_robot.set("ok", f"{s.profile.name} via {s.config.robot}, {st.mode}{torque}")
        cams = s.devices.cameras if s.devices else {}
        errs = dict(s.camera_errors)
        if not cams:
            self.light_cams.set("off", "none selected")
        elif errs:
            self.light_cams.set("error", "; ".join(f"{n}: {e}" for n, e in errs.items()))
        else:
            bad = [n for n, c in cams.items() if not c.is_connected]
            self.light_cams.set("warn" if bad else "ok",
                                f"lost: {', '.join(bad)}" if bad else f"{len(cams)} live: {', '.join(cams)}")
        pad = st.gamepad
        if pad.connected:
            self.light_pad.set("ok", f"{pad.name}" + (f" (group {st.group})" if st.group else ""))
        elif s.gamepad is None:
            self.light_pad.set("error", "gamepad support unavailable (see messages); use sliders / jog")
        else:
            self.light_pad.set("warn", "no gamepad: plug one in (picked up automatically)")

    def _update_bar(self, st) -> None:
        lp = st.loop
        now = time.monotonic()
        slow = now - getattr(self, "_bar_t", 0.0) >= 0.25     # figures readable at 4 Hz; avoids relayouts
        if slow:
            self._bar_t = now
        if lp is not None and slow:
            warn = lp.missed > 0 or lp.p99_err_ms > 0.2 * 1000 / lp.hz
            self.loop_label.setText(f"loop {lp.achieved_hz:.1f}/{lp.hz:g} Hz  p99 {lp.p99_err_ms:.2f} ms  "
                                    f"missed {lp.missed}  tick {lp.last_tick_ms:.1f} ms")
            set_style(self.loop_label, "color: #e67e22" if warn else "")
        wf = st.workflow
        if wf == "recording":
            self.rec_label.setText(f"<span style='color:#e74c3c'>&#9679; REC</span> {st.recording_steps} steps")
        else:
            self.rec_label.setText(f"{wf}  kept {st.kept}/{st.target_episodes}")
        self.mode_label.setText(f"mode: <b>{st.mode}</b>")
        if st.estopped:
            self.banner.setText("<span style='color:white; background:#c0392b; font-weight:bold'>&nbsp;E-STOP "
                                "LATCHED&nbsp;</span> the arm holds its position. Release with Ctrl+R.")
        else:
            ins = st.instruction or "-"
            rp = st.replay_progress
            extra = f" &nbsp; replay {rp[0]}/{rp[1]}" if rp[1] else ""
            self.banner.setText(f"<b>{st.mode.upper()}</b> &nbsp; {wf} &nbsp; <i>\"{ins}\"</i>{extra}")

    def _update_log(self, s) -> None:
        msgs = list(s.messages)
        last = msgs[-1] if msgs else ""
        if last == self._last_msg:
            return
        try:
            start = len(msgs) - 1 - msgs[::-1].index(self._last_msg) + 1 if self._last_msg in msgs else 0
        except ValueError:
            start = 0
        for m in msgs[start:]:
            self.log.appendPlainText(m)
        self._last_msg = last
        self.statusBar().showMessage(last, 8000)

    def show_message(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')} [ui] {text}")
        self.statusBar().showMessage(text, 8000)

    # ================================================================ operator actions (shortcuts)
    def _cmd(self, method: str, *args) -> bool:
        if self.session is None:
            self.show_message("not connected (Ctrl+L connects)")
            return False
        try:
            getattr(self.session, method)(*args)
            return True
        except Exception as e:
            self.show_message(f"{method.replace('_', ' ')}: {e}")
            return False

    def estop(self) -> None:
        if self.session is not None:
            self.session.estop()     # never refused: the safety layer latches inside one tick
            self.policy.stop() if self.policy.run is not None else None

    def reset_estop(self) -> None:
        self._cmd("reset_estop")

    def start_episode(self) -> None:
        self._cmd("start_episode")

    def next_phase(self) -> None:
        self._cmd("next")

    def rerecord(self) -> None:
        self._cmd("rerecord")

    def stop_all(self) -> None:
        s = self.session
        if s is None:
            return
        st = s.status
        if st.workflow in ("recording", "countdown"):
            self._cmd("stop_episode")
        elif st.mode in ("replay", "homing") and st.replay_progress[1]:
            self._cmd("stop_replay")
        elif st.mode == "policy":
            self.policy.stop()

    def mark_success(self) -> None:
        self._mark(True)

    def mark_failure(self) -> None:
        self._mark(False)

    def _mark(self, ok: bool) -> None:
        if self.tabs.currentWidget() is self.policy and (self.policy.run is not None or self.policy.runs):
            self.policy.end_run("success" if ok else "failure")
        else:
            self.teleop.mark(ok)

    def keep(self) -> None:
        self._cmd("keep")

    def discard(self) -> None:
        self._cmd("discard")

    def go_home(self) -> None:
        self._cmd("go_home")

    def new_scene(self) -> None:
        self._cmd("reset_scene")

    def mode_hold(self) -> None:
        self.teleop.set_mode("hold")

    def mode_gamepad(self) -> None:
        self.teleop.set_mode("gamepad")

    def mode_kinesthetic(self) -> None:
        self.teleop.set_mode("kinesthetic")

    def mode_scripted(self) -> None:
        self.teleop.set_mode("scripted")

    def policy_start(self) -> None:
        self.policy.start()

    def policy_step(self) -> None:
        self.policy.step()

    def frame_prev(self) -> None:
        self.episodes.step_frame(-1)

    def frame_next(self) -> None:
        self.episodes.step_frame(1)

    def delete_episode(self) -> None:
        if self.tabs.currentWidget() is self.episodes:
            self.episodes.delete_selected()

    def undo_delete(self) -> None:
        self.episodes.undo_delete()

    def export_lerobot(self) -> None:
        self.tabs.setCurrentWidget(self.episodes)
        self.episodes.export_dialog("lerobot")

    def tab_teleop(self) -> None:
        self.tabs.setCurrentWidget(self.teleop)

    def tab_episodes(self) -> None:
        self.tabs.setCurrentWidget(self.episodes)

    def tab_policy(self) -> None:
        self.tabs.setCurrentWidget(self.policy)

    def show_help(self) -> None:
        HelpDialog(self).exec()

    # ================================================================ close
    def closeEvent(self, ev) -> None:
        self.save_settings()
        self.timer.stop()
        self.live.timer.stop()
        s = self.session
        self._detach()
        connecting = self._connecting
        # Exports / validation stop at their next progress point; a connect in flight is waited for.
        Worker.shutdown_all(timeout_s=10.0)
        if connecting is not None and connecting.result is not None and connecting.result is not s:
            connecting.result.close()
        if s is not None:
            s.close()     # keeps any recording (unlabelled); bounded by the loop's 2 s join
        super().closeEvent(ev)
