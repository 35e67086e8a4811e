"""Policy tab: ask the control side to load a checkpoint or a policy server URL (it loads in the background
there; torch is never imported in the GUI for that), start / stop it on the robot with the safety counters
in view, plot predicted (the policy's raw command) vs executed actions, judge each run (automatically in
the sim), and run N validation rollouts in the sim into a report. Validation runs in this process in a
worker: it builds its own sim and never touches the live robot.
"""
from __future__ import annotations

import html
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QUrl, Qt, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QSpinBox, QSplitter, QTableWidget, QCheckBox, QTableWidgetItem, QVBoxLayout, QWidget)

from teleop_app.policy.base import policy_source
from teleop_app.session import Mode, PolicyState

POLICY_MODES = (Mode.POLICY, Mode.TAKEOVER)   # the policy drives (TAKEOVER: the operator may take over)
from ui.util import Worker, dark_plot, run_in_thread, sim_verdict

SAFETY_NAMES = {"rejected_nonfinite": "NaN/inf rejected", "clamped_limits": "clamped to joint limits",
                "clamped_step": "step-limited", "blocked_workspace": "blocked by workspace",
                "estops": "e-stops", "watchdog_trips": "watchdog trips"}
PLOT_SECONDS = 20.0
UNCERTAINTY_YMAX = 0.05       # rad: the uncertainty plot's fixed range


def openvla_server(spec: str) -> bool:
    """An OpenVLA-style policy server URL (http/https): the only source whose reply format is a choice."""
    return policy_source(spec) == "openvla"


@dataclass
class Run:
    n: int
    instruction: str
    t0: float
    seq0: int               # control tick counter when the run began
    steps: int = 0
    duration: float = 0.0
    result: str = "running"


class PolicyTab(QWidget):
    message = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.session = None
        self.profile = None
        self.runs: list[Run] = []
        self.run: Run | None = None
        self._val_worker: Worker | None = None
        self._report: Path | None = None
        self._loaded_source = ""
        self._load_msg_seq = 0
        self._last_seq = -1
        self._seq = 0
        self._runs_t = self._last_draw = 0.0
        # (t, measured, sent, policy's raw command or None) per status snapshot
        self.history: deque[tuple] = deque(maxlen=int(PLOT_SECONDS * 60))
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_left())
        split.addWidget(self._build_right())
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.addLayout(self._build_source_row())
        lay.addWidget(self.meta_label)
        lay.addLayout(self._build_instruction_row())
        lay.addLayout(self._build_controls())
        lay.addWidget(self.run_label)
        lay.addWidget(self.human_label)
        lay.addWidget(split, 1)
        self._update_buttons()

    # ------------------------------------------------------------------ building
    def _build_source_row(self) -> QHBoxLayout:
        self.source = QLineEdit()
        self.source.setPlaceholderText("checkpoint file (.pt), policy server URL (http://host:port, ws://...) or demo")
        self.remote_mode = QComboBox()
        self.remote_mode.addItem("server sends EE deltas (OpenVLA)", "eef")
        self.remote_mode.addItem("server sends joint targets (teleop serve)", "joint")
        self.remote_mode.setToolTip("only for OpenVLA-style server URLs (http://...): what the policy server's "
                                    "/act returns")
        self.remote_mode.setEnabled(False)          # a checkpoint, the demo or an openpi server (ws://) has no choice
        self.browse_btn = QPushButton("Browse...")
        self.load_btn = QPushButton("Load")
        self.load_btn.setStyleSheet("font-weight: bold")
        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Policy</b>"))
        row.addWidget(self.source, 1)
        row.addWidget(self.remote_mode)
        row.addWidget(self.browse_btn)
        row.addWidget(self.load_btn)
        self.meta_label = QLabel("no policy loaded")
        self.meta_label.setWordWrap(True)
        self.browse_btn.clicked.connect(self.browse)
        self.load_btn.clicked.connect(lambda: self.load(self.source.text().strip()))
        self.source.returnPressed.connect(lambda: self.load(self.source.text().strip()))
        self.source.textChanged.connect(lambda t: self.remote_mode.setEnabled(openvla_server(t)))
        return row

    def _build_instruction_row(self) -> QHBoxLayout:
        self.instruction = QLineEdit()
        self.instruction.setPlaceholderText("instruction given to the policy")
        self.instruction.returnPressed.connect(self.apply_instruction)
        row = QHBoxLayout()
        row.addWidget(QLabel("<b>Instruction</b>"))
        row.addWidget(self.instruction, 1)
        return row

    def _build_controls(self) -> QVBoxLayout:
        self.start_btn = QPushButton("Start [P]")
        self.stop_btn = QPushButton("Stop [Esc]")
        self.step_btn = QPushButton("Step [.]")
        self.scene_btn = QPushButton("New scene [N]")
        self.succ_btn = QPushButton("Run success [S]")
        self.fail_btn = QPushButton("Run failure [F]")
        self.takeover_btn = QPushButton("Take over [T]")
        self.takeover_btn.setToolTip("The operator drives (pad or leader arm) through the same safety layer; "
                                     "press again to hand back to the policy. Moving a stick past half way "
                                     "also takes over. Recorded steps carry an intervention flag.")
        self.allow_takeover = QCheckBox("operator can take over")
        self.allow_takeover.setChecked(True)
        self.max_s = QSpinBox()
        self.max_s.setRange(1, 3600)
        self.max_s.setValue(30)
        self.max_s.setSuffix(" s max")
        # two rows (driving the run; judging it): in one row the tab was wider than a 1280-px window's share
        run_row, judge_row = QHBoxLayout(), QHBoxLayout()
        for b in (self.start_btn, self.stop_btn, self.step_btn, self.takeover_btn, self.scene_btn, self.succ_btn,
                  self.fail_btn):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.setMinimumHeight(30)
            (judge_row if b in (self.succ_btn, self.fail_btn) else run_row).addWidget(b)
        run_row.addStretch(1)
        judge_row.addWidget(self.allow_takeover)
        judge_row.addWidget(self.max_s)
        judge_row.addStretch(1)
        row = QVBoxLayout()
        row.addLayout(run_row)
        row.addLayout(judge_row)
        self.start_btn.setStyleSheet("color: #27ae60; font-weight: bold")
        self.start_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.stop)
        self.step_btn.clicked.connect(self.step)
        self.takeover_btn.clicked.connect(self.toggle_takeover)
        self.scene_btn.clicked.connect(self.new_scene)
        self.succ_btn.clicked.connect(lambda: self.end_run("success"))
        self.fail_btn.clicked.connect(lambda: self.end_run("failure"))
        self.run_label = QLabel("")
        self.human_label = QLabel("")
        return row

    def _build_left(self) -> QWidget:
        self.safety_box = QGroupBox("Safety (every policy command passes through it)")
        sg = QGridLayout(self.safety_box)
        self.safety_labels: dict[str, QLabel] = {}
        for i, (k, name) in enumerate(SAFETY_NAMES.items()):
            lab = QLabel("0")
            lab.setAlignment(Qt.AlignmentFlag.AlignRight)
            self.safety_labels[k] = lab
            sg.addWidget(QLabel(name), i // 2, (i % 2) * 2)
            sg.addWidget(lab, i // 2, (i % 2) * 2 + 1)
        self.limits_label = QLabel("")
        self.limits_label.setWordWrap(True)
        self.last_safety = QLabel("")
        sg.addWidget(self.limits_label, 3, 0, 1, 4)
        sg.addWidget(self.last_safety, 4, 0, 1, 4)
        self.joint_pick = QComboBox()
        self.joint_pick.currentIndexChanged.connect(lambda _i: self._fit_y())
        self.plot = None                 # created on first show (pyqtgraph import is deferred)
        self.pred_curve = self.sent_curve = self.meas_curve = self.unc_curve = None
        plot_box = QWidget()
        pv = QVBoxLayout(plot_box)
        pv.setContentsMargins(0, 0, 0, 0)
        ph = QHBoxLayout()
        ph.addWidget(QLabel("<b>Predicted vs executed</b> joint:"))
        ph.addWidget(self.joint_pick)
        ph.addStretch(1)
        pv.addLayout(ph)
        self._plot_layout = pv
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.safety_box)
        lv.addWidget(plot_box, 1)
        return left

    def _build_right(self) -> QWidget:
        self.runs_table = QTableWidget(0, 5)
        self.runs_table.setHorizontalHeaderLabels(["run", "instruction", "steps", "duration", "result"])
        self.runs_table.verticalHeader().hide()
        self.runs_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.runs_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.runs_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.summary = QLabel("no runs yet")
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        # validation first: it is what a policy gets before it runs on the robot, and at a laptop's height
        # (1280x760) a box below the runs table was below the fold of the scrolled tab
        rv.addWidget(self._build_validation())
        rv.addWidget(QLabel("<b>Runs on the robot</b>"))
        rv.addWidget(self.runs_table, 1)
        rv.addWidget(self.summary)
        return right

    def _build_validation(self) -> QGroupBox:
        self.n_rollouts = QSpinBox()
        self.n_rollouts.setRange(1, 1000)
        self.n_rollouts.setValue(10)
        self.task_pick = QComboBox()
        self.task_pick.addItem("all tasks", None)
        # the entries are longer than the box is wide: the whole one shows on hover
        self.task_pick.currentIndexChanged.connect(lambda _i: self.task_pick.setToolTip(self.task_pick.currentText()))
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 10000)
        self.max_steps.setSpecialValueText("task default")
        self.max_steps.setSuffix(" per rollout")
        self.val_btn = QPushButton("Validate")
        self.val_cancel = QPushButton("Cancel")
        self.val_cancel.setEnabled(False)
        self.val_progress = QProgressBar()
        self.val_progress.setRange(0, 1000)
        self.val_progress.setFormat("")
        self.report_btn = QPushButton("Open report")
        self.report_btn.setEnabled(False)
        self.val_btn.clicked.connect(self.validate)
        self.val_cancel.clicked.connect(self.cancel_validation)
        self.report_btn.clicked.connect(self.open_report)
        val = QGroupBox("Validation (sim rollouts, off the robot)")
        val.setToolTip("Closed-loop rollouts on the simulated workcell, in this window's process: the live robot "
                       "does not move. A task runs the policy on that task's scenes; a held-out-splits entry "
                       "runs it on unseen physics scenes of each split (as teleop eval --splits).")
        vf = QFormLayout(val)
        self.n_rollouts.setSuffix(" per task or split")
        row1 = QHBoxLayout()          # (in a layout, the box may be narrower than its longest entry)
        row1.addWidget(self.task_pick, 1)
        vf.addRow("tasks", row1)
        vf.addRow("rollouts", self.n_rollouts)
        vf.addRow("max steps", self.max_steps)
        row = QHBoxLayout()
        row.addWidget(self.val_btn)
        row.addWidget(self.val_cancel)
        row.addWidget(self.report_btn)
        row.addStretch(1)
        vf.addRow(row)
        vf.addRow(self.val_progress)
        self.val_result = QLabel("")
        self.val_result.setWordWrap(True)
        vf.addRow(self.val_result)
        return val

    def _ensure_plot(self) -> None:
        if self.plot is not None:
            return
        import pyqtgraph as pg
        self.plot = dark_plot("time (s, 0 = now)")
        self.plot.addLegend(offset=(5, 5))
        self.meas_curve = self.plot.plot([], [], pen=pg.mkPen("#2ecc71", width=1), name="measured")
        self.sent_curve = self.plot.plot([], [], pen=pg.mkPen("#3498db", width=3), name="executed (after safety)")
        self.pred_curve = self.plot.plot([], [], pen=pg.mkPen("#f39c12", width=2, style=Qt.PenStyle.DashLine),
                                         name="predicted (policy)")
        self.plot.setMinimumHeight(160)
        self.plot.setXRange(-PLOT_SECONDS, 0, padding=0.01)
        self.plot.disableAutoRange()             # fixed axes: re-rendering them at every update is costly
        self.plot.setClipToView(True)
        self._plot_layout.addWidget(self.plot, 1)
        # The policy's own uncertainty (disagreement of overlapping chunks, rad): high = it may need help.
        self.unc_plot = dark_plot("time (s, 0 = now)")
        self.unc_plot.setMaximumHeight(110)
        self.unc_plot.setLabel("left", "uncertainty (rad)")
        self.unc_plot.setXRange(-PLOT_SECONDS, 0, padding=0.01)
        self.unc_plot.setYRange(0.0, UNCERTAINTY_YMAX, padding=0.0)
        self.unc_plot.disableAutoRange()
        self.unc_curve = self.unc_plot.plot([], [], pen=pg.mkPen("#e74c3c", width=2))
        self._plot_layout.addWidget(self.unc_plot)
        self._fit_y()

    def _fit_y(self) -> None:
        j = self.joint_pick.currentIndex()
        if self.plot is None or self.session is None or j < 0:
            return
        info = self.session.info
        self.plot.setYRange(float(info.lower[j]), float(info.upper[j]), padding=0.05)

    def showEvent(self, ev) -> None:
        self._ensure_plot()
        super().showEvent(ev)

    # ------------------------------------------------------------------ session / loading
    def set_session(self, session, profile=None) -> None:
        self.session, self.profile = session, profile
        self.joint_pick.clear()
        self.history.clear()
        if session is not None:
            info = session.info
            self.joint_pick.addItems(list(info.joint_names))
            if profile is not None:
                step = profile.max_speed() / info.fps
                ws = ", ".join(f"{k} [{v[0]:g}, {v[1]:g}] m" for k, v in profile.workspace.items()) or "none"
                self.limits_label.setText(
                    f"<small>joint limits from profile '{info.profile}'; max step per tick "
                    f"{np.min(step):.3f}..{np.max(step):.3f} rad at {info.fps:g} Hz; workspace {ws}; "
                    f"NaN/inf actions stop the policy</small>")
            st = session.status
            if not self.instruction.text() and st is not None:
                self.instruction.setText(st.instruction)
            if info.is_sim and info.profile == "sim7" and not self.source.text():
                self.source.setText("demo")      # the shipped demo policy: Load, then Start
            if info.is_sim and self.task_pick.count() == 1:
                from drivers.sim import TASKS
                from drivers.sim.tasks import KINDS
                for t in info.tasks:
                    self.task_pick.addItem(f"{t}: {TASKS.get(t, t)}", t)
                for k in KINDS:     # teleop eval --splits: N unseen scenes per split, success per split vs RT-2
                    self.task_pick.addItem(f"held-out splits, {k}: seen / unseen objects / novel instructions / "
                                           "reasoning (physics sim)", f"splits:{k}")
        self._update_buttons()

    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Policy checkpoint", "", "Checkpoint (*.pt *.pth *.ckpt);;All (*)")
        if path:
            self.source.setText(path)
            self.load(path)

    def load(self, spec: str) -> Worker | None:
        """Ask the control side to load `spec` (it loads in its background; status.policy_state follows).
        A server URL is checked for reachability here first, in a worker, for a quick readable error."""
        if not spec:
            self.message.emit("give a checkpoint file, a server URL or 'demo'")
            return None
        if self.session is None:
            self.message.emit("connect first: the policy is loaded by the control process")
            return None
        remote = policy_source(spec) != "checkpoint"
        if not remote and spec != "demo" and not Path(spec).exists():
            self._load_failed(spec, f"checkpoint {spec} not found: pick a .pt file (Browse...) or give a "
                                    "server URL http://host:port")
            return None
        self.meta_label.setText(f"loading {spec} ...")
        self.load_btn.setEnabled(False)
        self._loaded_source = spec
        self._load_msg_seq = self.session.status.messages_seq
        session = self.session
        pol_spec = {"source": spec if remote or spec == "demo" else str(Path(spec).resolve())}
        if remote:
            pol_spec["remote_action"] = self.remote_mode.currentData()

        def job(w: Worker):
            if remote:
                check_server(spec)
            session.load_policy(pol_spec)
        return run_in_thread(job, on_error=lambda e: self._load_failed(spec, e))

    def _load_failed(self, spec: str, e: str) -> None:
        self.load_btn.setEnabled(True)
        self.meta_label.setText(f"<span style='color:#e74c3c'>cannot load {spec}: {e}</span>")
        self.message.emit(f"policy not loaded: {e}")

    def _show_policy_state(self, st) -> None:
        """While a load is under way: its outcome is the control side's message about it (the state alone
        could still be the previous policy's)."""
        new = st.messages_seq - self._load_msg_seq
        if self.load_btn.isEnabled() or new <= 0:
            return
        said = [m for m in list(self.session.messages)[-new:] if "policy loaded" in m or "cannot load" in m]
        if not said:
            return
        self.load_btn.setEnabled(True)
        if "cannot load" in said[-1]:
            self._load_failed(self._loaded_source, said[-1].split(": ", 1)[-1])
        else:
            self.meta_label.setText(f"<b>{Path(self._loaded_source).name}</b> loaded by the control process "
                                    "(Start [P] or Step [.])")
            self.message.emit(f"policy ready: {self._loaded_source}")
        self._update_buttons()

    def _update_buttons(self) -> None:
        st = self.session.status if self.session is not None else None
        ready = st is not None and st.policy_state in (PolicyState.READY, PolicyState.RUNNING)
        for b in (self.start_btn, self.step_btn, self.stop_btn):
            b.setEnabled(ready)
        self.takeover_btn.setEnabled(st is not None and st.mode == Mode.TAKEOVER)
        self.scene_btn.setEnabled(self.session is not None and self.session.info.is_sim)
        self.succ_btn.setEnabled(self.run is not None)
        self.fail_btn.setEnabled(self.run is not None)
        self.val_btn.setEnabled(self._val_worker is None and bool(self.source.text().strip()))
        self.report_btn.setEnabled(self._report is not None)

    # ------------------------------------------------------------------ running
    def _cmd(self, method: str, *args) -> bool:
        if self.session is None:
            self.message.emit("not connected")
            return False
        try:
            getattr(self.session, method)(*args)
            return True
        except Exception as e:
            self.message.emit(f"policy: {e}")
            return False

    def apply_instruction(self) -> None:
        text = self.instruction.text().strip()
        if text and self.session is not None:
            self._cmd("set_instruction", text)

    def start(self) -> None:
        st = self.session.status if self.session is not None else None
        if st is None or st.policy_state not in (PolicyState.READY, PolicyState.RUNNING):
            self.message.emit("load a policy and connect first")
            return
        if st.estopped:
            self.message.emit("E-STOP is latched: release it (Ctrl+R) before running the policy")
            return
        self.apply_instruction()
        mode = Mode.TAKEOVER if self.allow_takeover.isChecked() else Mode.POLICY
        if st.mode != mode and not self._cmd("set_mode", mode):
            return
        if self.run is None:
            self._begin_run()
        self.message.emit("policy running")

    def step(self) -> None:
        """One policy action, then hold: the control side runs the policy for a single tick."""
        if self.session is None:
            return
        self.apply_instruction()
        if self._cmd("step_policy", 1) and self.run is None:
            self._begin_run()

    def stop(self) -> None:
        """Stop the policy (arm holds); the run ends, judged by the sim when there is one."""
        st = self.session.status if self.session is not None else None
        if st is not None and st.mode in POLICY_MODES:
            self._cmd("set_mode", Mode.HOLD)
        if self.run is not None:
            self.end_run("success" if st is not None and st.sim_success else
                         "failure" if st is not None and st.sim_success is False else "unjudged")

    def new_scene(self) -> None:
        self._cmd("reset_scene")

    def _begin_run(self) -> None:
        st = self.session.status
        # the instruction just applied: the status snapshot still holds the one before it until the control
        # side's next update
        text = self.instruction.text().strip() or st.instruction
        self.run = Run(n=len(self.runs) + 1, instruction=text, t0=time.monotonic(), seq0=st.seq)
        self.runs.append(self.run)
        self._refresh_runs()
        self._update_buttons()

    def end_run(self, result: str) -> None:
        r = self.run
        if r is None:
            if self.runs and self.runs[-1].result == "unjudged" and result in ("success", "failure"):
                self.runs[-1].result = result       # operator judges the last run afterwards
                self._refresh_runs()
            return
        r.duration = time.monotonic() - r.t0
        r.steps = self._run_steps(r)
        r.result = result
        self.run = None
        st = self.session.status if self.session is not None else None
        if st is not None and st.mode in POLICY_MODES:
            self._cmd("set_mode", Mode.HOLD)
        self.message.emit(f"policy run {r.n}: {result} ({r.steps} steps, {r.duration:.1f} s)")
        self._refresh_runs()
        self._update_buttons()

    def _run_steps(self, r: Run) -> int:
        return max(0, self._seq - r.seq0) if r.result == "running" else r.steps

    def _refresh_runs(self) -> None:
        t = self.runs_table
        t.setRowCount(len(self.runs))
        colors = {"success": "#27ae60", "failure": "#c0392b", "running": "#f39c12"}
        for i, r in enumerate(self.runs):
            dur = r.duration if r.result != "running" else time.monotonic() - r.t0
            for c, v in enumerate([str(r.n), r.instruction, str(self._run_steps(r)), f"{dur:.1f} s", r.result]):
                it = t.item(i, c)
                if it is None:
                    it = QTableWidgetItem()
                    t.setItem(i, c, it)
                it.setText(v)
                if c == 4:
                    it.setForeground(QColor(colors.get(r.result, "#888888")))
        done = [r for r in self.runs if r.result in ("success", "failure")]
        ok = sum(r.result == "success" for r in done)
        self.summary.setText(f"{ok}/{len(done)} judged runs succeeded" if done else "no judged runs yet")

    # ------------------------------------------------------------------ validation
    def validate(self) -> Worker | None:
        """N sim rollouts per task, or per held-out split (a "held-out splits" entry: the physics workcell's
        unseen scenes, as `teleop eval --splits`), in a worker of this process (its own sim and policy copy,
        never the live robot), then a report."""
        spec = self.source.text().strip()
        if not spec:
            self.message.emit("give a policy (checkpoint or URL) to validate")
            return None
        if self.run is not None:
            self.message.emit("stop the live run before validating")
            return None
        n = self.n_rollouts.value()
        task = self.task_pick.currentData()
        max_steps = self.max_steps.value() or None
        info = self.session.info if self.session is not None else None
        profile_name = info.profile if info is not None else "sim7"
        base = Path(info.dataset).parent if info is not None else Path("reports")
        out_dir = base / "validation" / time.strftime("%Y%m%d-%H%M%S")
        remote_kw = {"profile": self.profile, "action_mode": {"eef": "ee_delta"}.get(
            self.remote_mode.currentData(), self.remote_mode.currentData())} \
            if openvla_server(spec) and self.profile is not None else {}

        def job(w: Worker):
            from drivers.sim import TASKS
            from teleop_app.policy.base import load_policy
            from teleop_app.policy.evaluate import run_sim_rollouts
            from teleop_app.policy.report import write_report
            w.report(0.0, "loading policy")
            policy = load_policy(spec, **remote_kw)
            if isinstance(task, str) and task.startswith("splits:"):
                # the generalization table: n unseen scenes of each declared split (as teleop eval --splits)
                from teleop_app.policy.generalization import EVAL_SPLITS, run_scene_rollouts, split_scenes
                scenes = split_scenes(EVAL_SPLITS, n, (task.split(":", 1)[1],))
                res = run_scene_rollouts(policy, scenes, profile=profile_name, max_steps=max_steps,
                                         progress=w.callback("rollout"), policy_name=Path(spec).name)
            else:
                tasks = list(TASKS) if task is None else [task]
                res = run_sim_rollouts(policy, tasks, n, max_steps=max_steps, profile=profile_name,
                                       progress=w.callback("rollout"), policy_name=Path(spec).name)
            meta = {"source": spec, "profile": profile_name, "started_from": "teleop gui"}
            return res, write_report(res, None, out_dir, info=meta)

        self.val_progress.setValue(0)
        self.val_progress.setFormat("starting...")
        self.val_result.setText("")
        self.val_cancel.setEnabled(True)
        self._val_worker = run_in_thread(job, on_done=self._val_done, on_error=self._val_failed,
                                         on_progress=self._val_prog, on_cancel=lambda: self._val_failed("cancelled"))
        self._update_buttons()
        return self._val_worker

    def _val_prog(self, frac, text) -> None:
        if frac is not None:
            self.val_progress.setValue(int(frac * 1000))
        self.val_progress.setFormat(text or "%p%")

    def _val_done(self, result) -> None:
        res, report = result
        self._val_worker = None
        self.val_cancel.setEnabled(False)
        self._report = Path(report)
        self.val_progress.setValue(1000)
        self.val_progress.setFormat("done")
        o = res.overall()
        lines = [f"<b>{o['success']}/{o['n']} succeeded</b> (95% CI {o['ci95'][0]:.0%}-{o['ci95'][1]:.0%})"
                 + (f" {html.escape(res.sim_text())}" if res.sim_text() else "")]
        from teleop_app.policy.generalization import SPLIT_LABELS, per_split
        splits = per_split(res)
        if splits:
            lines += [f"{SPLIT_LABELS.get(sp, sp)}: {d['success']}/{d['n']} (95% CI {d['ci95'][0]:.0%}-"
                      f"{d['ci95'][1]:.0%}" + (f"; RT-2 {d['rt2']:.0%}" if d["rt2"] is not None else "") + ")"
                      for sp, d in splits.items()]
        else:
            lines += [f"{t}: {d['success']}/{d['n']}" for t, d in res.per_task().items()]
        fp = res.uncertainty()
        lines.append(f"<b>does uncertainty predict failure?</b> {html.escape(fp['text'])}")
        self.val_result.setText("<br>".join(lines) + f"<br>report: {report}")
        self.message.emit(f"validation done: report {report}")
        self._update_buttons()

    def _val_failed(self, e: str) -> None:
        self._val_worker = None
        self.val_cancel.setEnabled(False)
        self.val_progress.setFormat(f"validation: {e}")
        self.val_result.setText(f"<span style='color:#e74c3c'>validation: {e}</span>")
        self.message.emit(f"validation: {e}")
        self._update_buttons()

    def cancel_validation(self) -> None:
        if self._val_worker is not None:
            self._val_worker.cancel()

    def open_report(self) -> None:
        if self._report is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._report.resolve())))

    # ------------------------------------------------------------------ status
    def update_status(self, st, visible: bool = True) -> None:
        self._seq = st.seq
        if st.seq != self._last_seq and st.qpos is not None:
            self._last_seq = st.seq
            self.history.append((st.t, st.qpos, st.sent if st.sent is not None else st.qpos,
                                 st.target if st.mode in POLICY_MODES else None,
                                 st.human.get("uncertainty") if st.mode == Mode.TAKEOVER else None))
        self._show_policy_state(st)
        for k, lab in self.safety_labels.items():
            v = str(st.safety.get(k, 0))
            if lab.text() != v:
                lab.setText(v)
                lab.setStyleSheet("color: #e67e22; font-weight: bold" if v != "0" else "")
        self.last_safety.setText(f"last tick: {', '.join(st.last_safety)}" if st.last_safety else "last tick: ok")
        self._judge(st)
        self._show_human(st)
        state = {PolicyState.RUNNING: "running", PolicyState.READY: "stopped", PolicyState.LOADING: "loading",
                 PolicyState.ERROR: "stopped (error)", PolicyState.NONE: "none loaded"}[st.policy_state]
        sim = f"; {verdict}" if (verdict := sim_verdict(st)) else ""
        self.run_label.setText(f"policy <b>{st.policy or '-'}</b>: {state}{sim}")
        if self.run is not None and time.monotonic() - self._runs_t > 0.25:
            self._runs_t = time.monotonic()      # the running row's steps/duration, at 4 Hz
            self._refresh_runs()
        if visible and self.session is not None:
            self._update_plot()

    def toggle_takeover(self) -> None:
        """Take over from the policy, or hand back to it (resumes from the present state)."""
        st = self.session.status if self.session is not None else None
        if st is None or st.mode != Mode.TAKEOVER:
            self.message.emit("start the policy with 'operator can take over' ticked first")
            return
        self._cmd("hand_back" if st.human.get("intervention") else "take_over")

    def _show_human(self, st) -> None:
        h = st.human if st.mode == Mode.TAKEOVER else {}
        text = ""
        if h:
            who = "OPERATOR" if h.get("intervention") else "policy"
            text = (f"driving: <b>{who}</b> ({h.get('source', '')}) · uncertainty "
                    f"{h.get('uncertainty', float('nan')):.4f} rad · takeovers {h.get('takeovers', 0)}")
            if h.get("asking"):
                text += " · <b style='color:#e74c3c'>the policy is unsure: take over [T]</b>"
        if self.human_label.text() != text:
            self.human_label.setText(text)
        label = "Hand back [T]" if h.get("intervention") else "Take over [T]"
        if self.takeover_btn.text() != label:
            self.takeover_btn.setText(label)
        if self.takeover_btn.isEnabled() != (st.mode == Mode.TAKEOVER):
            self.takeover_btn.setEnabled(st.mode == Mode.TAKEOVER)

    def _judge(self, st) -> None:
        """End the live run from what the control side reports: e-stop, policy stopped, sim success, time."""
        r = self.run
        if r is None:
            return
        if st.estopped:
            self.end_run("e-stop" + (f": {st.message}" if st.message else ""))
        elif st.seq > r.seq0 + 1:        # judge only statuses published after the run began
            if st.mode not in POLICY_MODES and st.policy_state != PolicyState.RUNNING:
                self.end_run("stopped (" + (st.message or st.mode.value) + ")")    # NaN / stall / mode change
            elif st.sim_success:
                self.end_run("success")                                           # the sim judged it
            elif time.monotonic() - r.t0 > self.max_s.value():
                self.end_run("failure" if st.sim_success is False else "timeout")

    def _update_plot(self, max_hz: float = 5.0) -> None:
        now_wall = time.monotonic()
        if now_wall - self._last_draw < 1.0 / max_hz:
            return
        self._last_draw = now_wall
        self._ensure_plot()
        j = self.joint_pick.currentIndex()
        hist = list(self.history)
        if j < 0 or not hist:
            return
        now = hist[-1][0]
        t = np.array([h[0] for h in hist]) - now
        self.meas_curve.setData(t, np.array([h[1][j] for h in hist]), skipFiniteCheck=True)
        self.sent_curve.setData(t, np.array([h[2][j] for h in hist]), skipFiniteCheck=True)
        pred = [(ti, h[3][j]) for ti, h in zip(t, hist) if h[3] is not None]
        unc = [(ti, h[4]) for ti, h in zip(t, hist) if h[4] is not None and np.isfinite(h[4])]
        self.unc_curve.setData([u[0] for u in unc], [min(u[1], UNCERTAINTY_YMAX) for u in unc])
        self.pred_curve.setData([p[0] for p in pred], [p[1] for p in pred])


def check_server(url: str, timeout: float = 2.0) -> None:
    """Fail early, with what to do, if nothing listens at the policy server's address."""
    import socket
    from urllib.parse import urlsplit
    u = urlsplit(url)
    if not u.hostname:
        raise ValueError(f"bad policy server URL {url!r}; expected http://host:port")
    port = u.port or (443 if u.scheme in ("https", "wss") else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"policy server {url} is not reachable ({e.strerror or e}); start it "
                              "(e.g. `teleop serve CHECKPOINT`) or check host and port") from None
