"""Teleop / record tab: mode switch, instruction, the episode workflow buttons and timers, joint bars with
sliders and jog, the gamepad state, live joint plots and the mapping editor.

All actions are session commands; the tab reads the typed status snapshots the main window pushes in at
~30 Hz (and keeps its own plot history from them) and the static `session.info`.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QSpinBox,
                               QSplitter, QTabWidget, QVBoxLayout, QWidget)

from teleop_app.session import Mode
from teleop_app.workflow import State
from ui.joints import GamepadView, JointPanel
from ui.mapping_editor import MappingEditor

from ui.util import dark_plot, pyqtgraph_ready, set_style, sim_verdict

MODES = [(Mode.HOLD, "Hold", "0"), (Mode.GAMEPAD, "Gamepad", "1"), (Mode.KINESTHETIC, "Kinesthetic", "2"),
         (Mode.SCRIPTED, "Scripted", "3"), (Mode.LEADER, "Leader", "4"), (Mode.CARTESIAN, "Cartesian", "5")]
LEADER_STATES = {"following": ("#27ae60", "following the leader"),
                 "ramping": ("#f39c12", "ramping to the leader's pose"),
                 "refused": ("#c0392b", "refused: the leader is too far from the arm, move it closer"),
                 "lost": ("#c0392b", "leader lost: the arm is held"), "idle": ("#7f8c8d", "idle")}
STATE_COLORS = {State.IDLE: "#7f8c8d", State.COUNTDOWN: "#f39c12", State.RECORDING: "#e74c3c",
                State.REVIEW: "#3498db", State.RESETTING: "#9b59b6", State.DONE: "#27ae60"}
JOG_FRACTION = 0.3          # jog buttons move a joint at this fraction of its max speed
PLOT_SECONDS = 20.0


def plot_colors(n: int) -> list:
    import pyqtgraph as pg
    return [pg.intColor(i, hues=max(n, 2), values=1, maxValue=255, minValue=150) for i in range(n)]


class JointPlot(QWidget):
    """Measured (solid) and commanded (dashed) joint positions over the last PLOT_SECONDS, from a history of
    (t, measured, sent) samples."""

    def __init__(self, joint_names: list[str], parent=None, y_range: tuple[float, float] | None = None):
        super().__init__(parent)
        import pyqtgraph as pg
        self.names = joint_names
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.plot = dark_plot("time (s, 0 = now)", "rad  (gripper: open fraction)")
        self.plot.addLegend(offset=(5, 5), labelTextSize="8pt", colCount=4)
        cols = plot_colors(len(joint_names))
        self.measured = [self.plot.plot([], [], pen=pg.mkPen(c, width=2), name=n) for n, c in zip(joint_names, cols)]
        self.sent = [self.plot.plot([], [], pen=pg.mkPen(c, width=1, style=Qt.PenStyle.DashLine)) for c in cols]
        self.plot.setXRange(-PLOT_SECONDS, 0, padding=0.01)
        if y_range is not None:        # fixed axes: a moving auto-range re-renders the axes on every update
            self.plot.setYRange(*y_range, padding=0.02)
        self.plot.disableAutoRange()
        self.plot.setClipToView(True)
        lay.addWidget(self.plot)
        self._last_len = -1
        self._last_t = None
        self._last_draw = 0.0

    def update_from(self, history, max_hz: float = 5.0) -> None:
        now_wall = time.monotonic()
        if now_wall - self._last_draw < 1.0 / max_hz:
            return
        self._last_draw = now_wall
        items = list(history)
        if not items:
            return
        if items[-1][0] == self._last_t:
            return
        self._last_t = items[-1][0]
        now = items[-1][0]
        items = [it for it in items if it[0] >= now - PLOT_SECONDS]
        t = np.array([it[0] for it in items]) - now
        q = np.array([it[1] for it in items])
        s = np.array([it[2] for it in items])
        for j in range(min(len(self.measured), q.shape[1])):
            self.measured[j].setData(t, q[:, j], skipFiniteCheck=True)
            self.sent[j].setData(t, s[:, j], skipFiniteCheck=True)


class TeleopTab(QWidget):
    message = Signal(str)
    instruction_used = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.session = None
        self.profile = None
        self.joints: JointPanel | None = None
        self._jog_vel: np.ndarray | None = None
        self._hold_target: np.ndarray | None = None
        self._hold_until = 0.0
        self._plot_due = 0.0
        self._mode = Mode.HOLD
        self._last_seq = -1
        self.history: deque[tuple[float, np.ndarray, np.ndarray]] = deque(maxlen=int(PLOT_SECONDS * 60))
        lay = QVBoxLayout(self)
        lay.addLayout(self._build_mode_row())
        lay.addLayout(self._build_arm_row())
        lay.addLayout(self._build_instruction_row())
        lay.addWidget(self._build_episode_box())
        lay.addWidget(self._build_lower(), 1)
        self.jog_timer = QTimer(self)
        self.jog_timer.setInterval(100)      # well inside the session's 0.5 s command watchdog
        self.jog_timer.timeout.connect(self._jog_tick)
        self.hold_timer = QTimer(self)
        self.hold_timer.setInterval(100)
        self.hold_timer.timeout.connect(self._hold_tick)
        self.set_session(None)

    # ------------------------------------------------------------------ building
    def _build_mode_row(self) -> QHBoxLayout:
        self.mode_group = QButtonGroup(self)
        self.mode_group.setExclusive(True)
        self.mode_buttons: dict[Mode, QPushButton] = {}
        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Mode</b>"))
        for mode, label, sc in MODES:
            b = QPushButton(f"{label}  [{sc}]")
            b.setCheckable(True)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.clicked.connect(lambda _=False, m=mode: self.set_mode(m))
            self.mode_group.addButton(b)
            self.mode_buttons[mode] = b
            row.addWidget(b)
        self.mode_label = QLabel("")
        row.addWidget(self.mode_label)
        row.addStretch(1)
        return row

    def _build_arm_row(self) -> QHBoxLayout:
        """Second line: what the human-in-the-loop mode does (leader state, Cartesian frame), then the
        arm buttons. (On the mode line they made the panel so wide that the live views shrank.)"""
        row = QHBoxLayout()
        self.human_label = QLabel("")          # leader arm state / Cartesian frame and goal
        self.human_label.setVisible(False)
        row.addWidget(self.human_label)
        row.addStretch(1)
        self.home_btn = QPushButton("Home [H]")
        self.reset_scene_btn = QPushButton("New scene [N]")
        self.reset_scene_btn.setToolTip("sim only: new object placement, arm at home")
        self.grip_open = QPushButton("Open gripper")
        self.grip_close = QPushButton("Close gripper")
        for b in (self.home_btn, self.reset_scene_btn, self.grip_open, self.grip_close):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            row.addWidget(b)
        self.home_btn.clicked.connect(lambda: self._call("go_home"))
        self.reset_scene_btn.clicked.connect(lambda: self._call("reset_scene"))
        self.grip_open.clicked.connect(lambda: self._call("set_gripper", 1.0))
        self.grip_close.clicked.connect(lambda: self._call("set_gripper", 0.0))
        return row

    def _build_instruction_row(self) -> QHBoxLayout:
        self.instruction = QComboBox()
        self.instruction.setEditable(True)
        self.instruction.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.instruction.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.instruction.lineEdit().setPlaceholderText("language instruction for the next episodes")
        self.instruction.lineEdit().returnPressed.connect(self.apply_instruction)
        self.set_instr_btn = QPushButton("Set")
        self.set_instr_btn.clicked.connect(self.apply_instruction)
        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Instruction</b>"))
        row.addWidget(self.instruction, 1)
        row.addWidget(self.set_instr_btn)
        return row

    def _build_episode_box(self) -> QGroupBox:
        self.state_label = QLabel("IDLE")
        self.state_label.setMinimumWidth(260)
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.counter = QProgressBar()
        self.counter.setFormat("%v / %m episodes kept")
        self.counter.setMinimumWidth(200)
        self.label_label = QLabel("")
        self.label_label.setTextFormat(Qt.TextFormat.RichText)
        self.target_spin = QSpinBox()
        self.target_spin.setRange(1, 100000)
        self.target_spin.setValue(50)
        self.countdown_spin = QDoubleSpinBox()
        self.episode_spin = QDoubleSpinBox()
        self.reset_spin = QDoubleSpinBox()
        for sp, hi in ((self.countdown_spin, 30), (self.episode_spin, 3600), (self.reset_spin, 600)):
            sp.setRange(0, hi)
            sp.setDecimals(1)
            sp.setSuffix(" s")
        for sp in (self.target_spin, self.countdown_spin, self.episode_spin, self.reset_spin):
            sp.valueChanged.connect(self._workflow_params_changed)
        params = QFormLayout()
        params.addRow("target episodes", self.target_spin)
        params.addRow("countdown", self.countdown_spin)
        params.addRow("episode limit (0 = none)", self.episode_spin)
        params.addRow("reset time", self.reset_spin)
        self.wf_buttons: dict[str, QPushButton] = {}
        grid = QGridLayout()
        specs = [("start", "Start  [Enter]", "start_episode"), ("next", "Next  [→]", "next"),
                 ("stop", "Stop  [Esc]", "stop_episode"), ("rerecord", "Re-record  [←]", "rerecord"),
                 ("keep", "Keep  [K]", "keep"), ("discard", "Discard  [D]", "discard"),
                 ("success", "Success  [S]", None), ("failure", "Failure  [F]", None)]
        for i, (key, text, method) in enumerate(specs):
            b = QPushButton(text)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.setMinimumHeight(30)
            if method:
                b.clicked.connect(lambda _=False, m=method: self._call(m))
            self.wf_buttons[key] = b
            grid.addWidget(b, i // 4, i % 4)
        self.wf_buttons["success"].clicked.connect(lambda: self.mark(True))
        self.wf_buttons["failure"].clicked.connect(lambda: self.mark(False))
        self.wf_buttons["success"].setStyleSheet("color: #27ae60; font-weight: bold")
        self.wf_buttons["failure"].setStyleSheet("color: #c0392b; font-weight: bold")
        box = QGroupBox("Episode")
        wl = QHBoxLayout(box)
        left = QVBoxLayout()
        left.addWidget(self.state_label)
        left.addWidget(self.label_label)
        left.addWidget(self.counter)
        wl.addLayout(left)
        wl.addLayout(grid, 1)
        wl.addLayout(params)
        return box

    def _build_lower(self) -> QSplitter:
        self.joint_box = QGroupBox("Joints (white: measured, green: commanded; sliders: Hold = go to, "
                                   "Kinesthetic = push the arm)")
        self.joint_box_lay = QVBoxLayout(self.joint_box)
        self.joint_placeholder = QLabel("connect to see the joints")
        self.joint_box_lay.addWidget(self.joint_placeholder)
        self.pad_box = QGroupBox("Gamepad")
        pl = QVBoxLayout(self.pad_box)
        self.pad_view = GamepadView()
        pl.addWidget(self.pad_view)
        upper = QSplitter(Qt.Orientation.Horizontal)
        upper.addWidget(self.joint_box)
        upper.addWidget(self.pad_box)
        upper.setStretchFactor(0, 3)
        upper.setStretchFactor(1, 1)
        self.lower_tabs = QTabWidget()
        self.plot_holder = QWidget()
        QVBoxLayout(self.plot_holder).setContentsMargins(0, 0, 0, 0)
        self.plot: JointPlot | None = None
        self.mapping_holder = QWidget()
        QVBoxLayout(self.mapping_holder).setContentsMargins(0, 0, 0, 0)
        self.mapping_editor: MappingEditor | None = None
        self.lower_tabs.addTab(self.plot_holder, "Live joint plot")
        self.lower_tabs.addTab(self.mapping_holder, "Gamepad mapping")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(upper)
        split.addWidget(self.lower_tabs)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([300, 500])
        self.pad_box.setMaximumWidth(340)
        self.split = split
        return split

    # ------------------------------------------------------------------ session
    def set_session(self, session, profile=None) -> None:
        """`profile`: the RobotProfile of the session (limits, speeds and names for the joint rows)."""
        self.session, self.profile = session, profile
        enabled = session is not None
        for w in [*self.mode_buttons.values(), *self.wf_buttons.values(), self.home_btn, self.reset_scene_btn,
                  self.grip_open, self.grip_close, self.set_instr_btn]:
            w.setEnabled(enabled)
        self.history.clear()
        self._last_seq = -1
        if session is None:
            self.pad_view.set_state(type("S", (), {"connected": False, "axes": [], "buttons": [], "hats": [],
                                                   "name": ""})())
            return
        info = session.info
        self.reset_scene_btn.setEnabled(info.is_sim)
        self.mode_buttons[Mode.SCRIPTED].setEnabled(info.is_sim)
        self._build_joints(profile)
        self._build_mapping_editor(session, info)
        wc = info.workflow
        for sp, key in ((self.target_spin, "target_episodes"), (self.countdown_spin, "countdown_s"),
                        (self.episode_spin, "episode_s"), (self.reset_spin, "reset_s")):
            sp.blockSignals(True)
            sp.setValue(wc.get(key, sp.value()))
            sp.blockSignals(False)
        st = session.status
        cur = st.instruction if st is not None else ""
        if cur and self.instruction.findText(cur) < 0:
            self.instruction.insertItem(0, cur)
        self.instruction.setCurrentText(cur)

    def _build_joints(self, profile) -> None:
        if self.joints is not None:
            self.joints.setParent(None)
            self.joints.deleteLater()
        self.joint_placeholder.hide()
        self.joints = JointPanel(profile)
        self.joints.bars[-1].limit_warning = False      # an open or closed gripper is not "at a limit"
        self.joints.slider_moved.connect(self._slider_moved)
        self.joints.jog_changed.connect(self._jog_changed)
        self.joint_box_lay.addWidget(self.joints)
        if self.plot is not None and self.plot.names != profile.joint_names:
            self.plot.setParent(None)
            self.plot = None
        # The plot (pyqtgraph import) is built shortly after connecting, once the live view is up.
        self._plot_due = time.monotonic() + 0.5

    def _build_mapping_editor(self, session, info) -> None:
        from teleop_app.mapping import mapping_from_dict
        names = list(info.joint_names)
        if self.mapping_editor is None or self.mapping_editor.joint_names != names:
            if self.mapping_editor is not None:
                self.mapping_editor.setParent(None)
            self.mapping_editor = MappingEditor(names)
            self.mapping_editor.message.connect(self.message)
            self.mapping_holder.layout().addWidget(self.mapping_editor)
        self.mapping_editor.session = session
        if info.mapping:
            self.mapping_editor.set_mapping(mapping_from_dict(info.mapping, "the session's mapping"))

    def set_instruction_history(self, items: list[str]) -> None:
        cur = self.instruction.currentText()
        self.instruction.clear()
        self.instruction.addItems([i for i in items if i])
        self.instruction.setCurrentText(cur)

    def _call(self, method: str, *args) -> bool:
        """Run a session command; any refusal is shown, never raised into Qt."""
        if self.session is None:
            self.message.emit("not connected")
            return False
        try:
            getattr(self.session, method)(*args)
            return True
        except Exception as e:
            self.message.emit(f"{method.replace('_', ' ')}: {e}")
            return False

    def set_mode(self, mode: Mode) -> bool:
        ok = self._call("set_mode", Mode(mode))
        if ok:
            self._mode = Mode(mode)
        self._sync_mode()
        return ok

    def _sync_mode(self) -> None:
        mode = self._mode
        b = self.mode_buttons.get(mode)
        if b is not None and not b.isChecked():
            b.setChecked(True)
        elif b is None:
            checked = self.mode_group.checkedButton()
            if checked is not None:           # policy / replay / homing: no manual mode is active
                self.mode_group.setExclusive(False)
                checked.setChecked(False)
                self.mode_group.setExclusive(True)
        self.mode_label.setText(f"active: <b>{mode.value}</b>")

    def mark(self, success: bool) -> None:
        """S/F: in review, label and keep; otherwise set the label for the episode under way."""
        st = self.session.status if self.session is not None else None
        if st is None:
            return
        if st.workflow == State.REVIEW:
            self._call("keep", success)
        else:
            self._call("label", success)

    def apply_instruction(self) -> None:
        text = self.instruction.currentText().strip()
        if not text:
            self.message.emit("instruction is empty: type what the robot should do")
            return
        if self._call("set_instruction", text):
            self.instruction_used.emit(text)
            self.message.emit(f"instruction: {text}")

    def _workflow_params_changed(self) -> None:
        if self.session is None:
            return
        try:
            self.session.set_workflow(target_episodes=self.target_spin.value(),
                                      countdown_s=self.countdown_spin.value(), episode_s=self.episode_spin.value(),
                                      reset_s=self.reset_spin.value())
        except Exception as e:
            self.message.emit(f"episode settings: {e}")

    # ------------------------------------------------------------------ sliders and jog
    def _slider_moved(self, i: int, v: float) -> None:
        s = self.session
        st = s.status if s is not None else None
        if st is None or st.qpos is None:
            return
        if st.mode == Mode.KINESTHETIC:
            if not s.info.is_sim:
                self.message.emit("kinesthetic on a real arm: torque is off, move the arm by hand")
                return
            q = st.qpos.copy()
            q[i] = v
            self._call("push", q)
        elif st.mode == Mode.HOLD:
            base = self._hold_target if self._hold_target is not None and self.hold_timer.isActive() \
                else st.qpos.copy()
            base[i] = v
            self._hold_target = base
            self._hold_until = time.monotonic() + 3.0
            self._call("command", base)
            self.hold_timer.start()
        else:
            self.message.emit(f"sliders move the arm in Hold [0] or Kinesthetic [2] mode (now: {st.mode.value})")

    def _hold_tick(self) -> None:
        s = self.session
        st = s.status if s is not None else None
        if st is None or self._hold_target is None:
            self.hold_timer.stop()
            return
        dragging = self.joints is not None and self.joints.dragging
        reached = st.qpos is not None and np.allclose(st.qpos, self._hold_target, atol=5e-3)
        if st.mode != Mode.HOLD or (not dragging and (reached or time.monotonic() > self._hold_until)):
            self.hold_timer.stop()
            self._hold_target = None
            return
        if dragging:
            self._hold_until = time.monotonic() + 3.0
        self._call("command", self._hold_target)

    def _jog_changed(self, i: int, d: int) -> None:
        s = self.session
        if s is None or self.profile is None:
            return
        if d == 0:
            self.jog_timer.stop()
            self._jog_vel = None
            if s.status is not None and s.status.mode != Mode.KINESTHETIC:
                self._call("jog", np.zeros(self.profile.dof))
            return
        vel = np.zeros(self.profile.dof)
        vel[i] = d * self.profile.max_speed()[i] * JOG_FRACTION
        self._jog_vel = vel
        self._jog_tick()
        self.jog_timer.start()

    def _jog_tick(self) -> None:
        s = self.session
        st = s.status if s is not None else None
        if st is None or self._jog_vel is None:
            self.jog_timer.stop()
            return
        if st.mode == Mode.KINESTHETIC:
            if st.qpos is not None:
                self._call("push", st.qpos + self._jog_vel * self.jog_timer.interval() / 1000)
        else:
            self._call("jog", self._jog_vel)

    # ------------------------------------------------------------------ status
    def _show_human(self, st) -> None:
        h = getattr(st, "human", None) or {}
        text = ""
        if st.mode == Mode.LEADER and "leader" in h:
            color, what = LEADER_STATES.get(h["leader"], ("#7f8c8d", h["leader"]))
            text = f"leader arm: <b style='color:{color}'>{what}</b>"
        elif st.mode == Mode.CARTESIAN and "frame" in h:
            text = f"Cartesian: sticks move the gripper in the <b>{h['frame']}</b> frame"
            g = h.get("goal_xyz")
            if g is not None and len(g) == 3:
                text += f" · goal x {g[0] * 1e3:.0f} y {g[1] * 1e3:.0f} z {g[2] * 1e3:.0f} mm"
        if self.human_label.text() != text:
            self.human_label.setText(text)
            self.human_label.setVisible(bool(text))

    def update_status(self, st, visible: bool = True) -> None:
        if self.session is None or not st.connected:
            return
        if st.seq != self._last_seq and st.qpos is not None:
            self._last_seq = st.seq
            self.history.append((st.t, st.qpos, st.sent if st.sent is not None else st.qpos))
        self._mode = st.mode
        self._sync_mode()
        self._show_human(st)
        wf = st.workflow
        color = STATE_COLORS.get(wf, "#7f8c8d")
        txt = "REC" if wf == State.RECORDING else wf.value.upper()     # short: the label must fit at 260 px
        if wf in (State.COUNTDOWN, State.RESETTING):
            txt += f"  {st.time_left:.1f} s"
        elif wf == State.RECORDING and st.time_left > 0:      # the episode limit: time LEFT, said so
            txt += f"  {st.time_left:.0f} s left"
        if wf == State.RECORDING:
            txt += f" · {st.recording_steps} steps"
        self.state_label.setText(f"<span style='font-size:20px; font-weight:bold; color:white'>{txt}</span>")
        set_style(self.state_label, f"background:{color}; border-radius:6px; padding:6px")
        lab = {1: "<span style='color:#27ae60'><b>success</b></span>",
               0: "<span style='color:#c0392b'><b>failure</b></span>"}.get(st.label, "unlabelled")
        if wf != State.REVIEW:        # the label belongs to the episode under review only
            lab = "set in review with S / F"
        sim = f" &nbsp; {verdict}" if (verdict := sim_verdict(st)) else ""
        self.label_label.setText(f"label: {lab}{sim}")
        if self.counter.maximum() != max(1, st.target_episodes):
            self.counter.setMaximum(max(1, st.target_episodes))
        self.counter.setValue(min(st.kept, self.counter.maximum()))
        self.wf_buttons["keep"].setEnabled(wf == State.REVIEW)
        self.wf_buttons["discard"].setEnabled(wf == State.REVIEW)
        self.wf_buttons["stop"].setEnabled(wf in (State.RECORDING, State.COUNTDOWN))
        self.wf_buttons["start"].setEnabled(wf in (State.IDLE, State.RESETTING, State.DONE))
        if not visible:
            return
        if self.joints is not None:
            self.joints.update_state(st.qpos, st.sent)
        self.pad_view.set_state(st.gamepad, st.group)
        if self.lower_tabs.currentWidget() is self.plot_holder:
            if self.plot is None and time.monotonic() >= self._plot_due and pyqtgraph_ready():
                prof = self.profile
                self.plot = JointPlot(prof.joint_names, y_range=(float(prof.lower().min()),
                                                                 float(prof.upper().max())))
                self.plot_holder.layout().addWidget(self.plot)
            if self.plot is not None:
                self.plot.update_from(self.history)
