"""Policy tab: load a checkpoint or a policy server URL (in a worker; torch is imported only here and only
then), start / stop / single-step it on the robot with the safety counters in view, plot predicted vs
executed actions, judge each run (automatically in the sim), and run N validation rollouts into a report.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QUrl, Qt, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QSpinBox, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from teleop_app.gated import GatedRunner
from ui.util import Worker, dark_plot, run_in_thread

POLICY_MODULES = ("teleop_app.policy", "teleop_app.policy.runner", "teleop_app.policy.rollout",
                  "teleop_app.policy.evaluate", "teleop_app.policy.validate", "teleop_app.policy.report",
                  "teleop_app.policy.base")
SAFETY_NAMES = {"rejected_nonfinite": "NaN/inf rejected", "clamped_limits": "clamped to joint limits",
                "clamped_step": "step-limited", "blocked_workspace": "blocked by workspace",
                "estops": "e-stops", "watchdog_trips": "watchdog trips"}


def policy_api(name: str):
    """Find `name` in the policy package (which module holds it is the policy owner's choice).
    Raises ImportError with a readable message if the package does not provide it."""
    errors = []
    for mod in POLICY_MODULES:
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            errors.append(f"{mod}: {e}")
            continue
        if hasattr(m, name):
            return getattr(m, name)
    raise ImportError(f"the policy package does not provide {name!r} yet ({'; '.join(errors) or 'not found'})")


def make_runner(policy, session):
    """PolicyRunner(policy) from the policy package; a minimal chunk-executing runner if it is absent."""
    try:
        Runner = policy_api("PolicyRunner")
    except ImportError:
        return SimpleRunner(policy)
    return call_flexible(Runner, policy, lower=session.profile.lower(), upper=session.profile.upper())


class SimpleRunner:
    """Fallback runner: executes each predicted chunk open-loop, then asks again."""

    def __init__(self, policy):
        self.policy = policy
        self.meta = getattr(policy, "meta", None)
        self._chunk: list[np.ndarray] = []

    def reset(self) -> None:
        self._chunk = []
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def act(self, obs, now):
        if not self._chunk:
            out = np.asarray(self.policy.predict(obs), float)
            self._chunk = list(out.reshape(-1, out.shape[-1]))
        return self._chunk.pop(0)


@dataclass
class Run:
    n: int
    instruction: str
    t0: float
    steps0: int
    steps: int = 0
    duration: float = 0.0
    result: str = "running"


class PolicyTab(QWidget):
    message = Signal(str)
    loaded = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.session = None
        self.gated: GatedRunner | None = None
        self.policy = None
        self.runs: list[Run] = []
        self.run: Run | None = None
        self._val_worker: Worker | None = None
        self._report: Path | None = None
        self._loader: Worker | None = None

        # --- source
        self.source = QLineEdit()
        self.source.setPlaceholderText("checkpoint file (.pt) or policy server URL (http://host:port)")
        self.remote_mode = QComboBox()
        self.remote_mode.addItem("server sends EE deltas (OpenVLA)", "ee_delta")
        self.remote_mode.addItem("server sends joint targets (teleop serve)", "joint")
        self.remote_mode.setToolTip("only for server URLs: what the policy server's /act returns")
        self.browse_btn = QPushButton("Browse...")
        self.load_btn = QPushButton("Load")
        self.load_btn.setStyleSheet("font-weight: bold")
        src = QHBoxLayout()
        src.addWidget(QLabel("<b>Policy</b>"))
        src.addWidget(self.source, 1)
        src.addWidget(self.remote_mode)
        src.addWidget(self.browse_btn)
        src.addWidget(self.load_btn)
        self.meta_label = QLabel("no policy loaded")
        self.meta_label.setWordWrap(True)
        self.browse_btn.clicked.connect(self.browse)
        self.load_btn.clicked.connect(lambda: self.load(self.source.text().strip()))
        self.source.returnPressed.connect(lambda: self.load(self.source.text().strip()))

        self.instruction = QLineEdit()
        self.instruction.setPlaceholderText("instruction given to the policy")
        self.instruction.returnPressed.connect(self.apply_instruction)
        ins = QHBoxLayout()
        ins.addWidget(QLabel("<b>Instruction</b>"))
        ins.addWidget(self.instruction, 1)

        # --- run controls
        self.start_btn = QPushButton("Start [P]")
        self.stop_btn = QPushButton("Stop [Esc]")
        self.step_btn = QPushButton("Step [.]")
        self.scene_btn = QPushButton("New scene [N]")
        self.succ_btn = QPushButton("Run success [S]")
        self.fail_btn = QPushButton("Run failure [F]")
        self.max_s = QSpinBox()
        self.max_s.setRange(1, 3600)
        self.max_s.setValue(30)
        self.max_s.setSuffix(" s max")
        ctl = QHBoxLayout()
        for b in (self.start_btn, self.stop_btn, self.step_btn, self.scene_btn, self.succ_btn, self.fail_btn):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.setMinimumHeight(30)
            ctl.addWidget(b)
        ctl.addWidget(self.max_s)
        ctl.addStretch(1)
        self.start_btn.setStyleSheet("color: #27ae60; font-weight: bold")
        self.start_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.stop)
        self.step_btn.clicked.connect(self.step)
        self.scene_btn.clicked.connect(self.new_scene)
        self.succ_btn.clicked.connect(lambda: self.end_run("success"))
        self.fail_btn.clicked.connect(lambda: self.end_run("failure"))
        self.run_label = QLabel("")

        # --- safety box
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

        # --- plot
        self.joint_pick = QComboBox()
        self.joint_pick.currentIndexChanged.connect(lambda _i: self._fit_y())
        self.plot = None                 # created on first show (pyqtgraph import is deferred)
        self.pred_curve = self.sent_curve = self.meas_curve = None
        plot_box = QWidget()
        pv = QVBoxLayout(plot_box)
        pv.setContentsMargins(0, 0, 0, 0)
        ph = QHBoxLayout()
        ph.addWidget(QLabel("<b>Predicted vs executed</b> joint:"))
        ph.addWidget(self.joint_pick)
        ph.addStretch(1)
        pv.addLayout(ph)
        self._plot_layout = pv

        # --- runs table + validation
        self.runs_table = QTableWidget(0, 5)
        self.runs_table.setHorizontalHeaderLabels(["run", "instruction", "steps", "duration", "result"])
        self.runs_table.verticalHeader().hide()
        self.runs_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.runs_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.runs_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.summary = QLabel("no runs yet")
        self.n_rollouts = QSpinBox()
        self.n_rollouts.setRange(1, 1000)
        self.n_rollouts.setValue(10)
        self.task_pick = QComboBox()
        self.task_pick.addItem("all tasks", None)
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 10000)
        self.max_steps.setSpecialValueText("task default")
        self.max_steps.setPrefix("max steps ")
        self.val_btn = QPushButton("Run validation rollouts")
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
        val = QGroupBox("Validation (headless sim rollouts, off the live robot)")
        vf = QFormLayout(val)
        row = QHBoxLayout()
        row.addWidget(self.n_rollouts)
        row.addWidget(self.val_btn)
        row.addWidget(self.val_cancel)
        row.addWidget(self.report_btn)
        vf.addRow("rollouts per task", row)
        row2 = QHBoxLayout()
        row2.addWidget(self.task_pick, 1)
        row2.addWidget(self.max_steps)
        vf.addRow("tasks", row2)
        vf.addRow(self.val_progress)
        self.val_result = QLabel("")
        self.val_result.setWordWrap(True)
        vf.addRow(self.val_result)

        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(QLabel("<b>Runs on the robot</b>"))
        rv.addWidget(self.runs_table, 1)
        rv.addWidget(self.summary)
        rv.addWidget(val)
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.safety_box)
        lv.addWidget(plot_box, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)

        lay = QVBoxLayout(self)
        lay.addLayout(src)
        lay.addWidget(self.meta_label)
        lay.addLayout(ins)
        lay.addLayout(ctl)
        lay.addWidget(self.run_label)
        lay.addWidget(split, 1)
        self._update_buttons()

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
        self.plot.setXRange(-20, 0, padding=0.01)
        self.plot.disableAutoRange()             # fixed axes: re-rendering them at every update is costly
        self.plot.setClipToView(True)
        self._plot_layout.addWidget(self.plot, 1)
        self._fit_y()

    def _fit_y(self) -> None:
        j = self.joint_pick.currentIndex()
        if self.plot is None or self.session is None or j < 0:
            return
        lo, hi = float(self.session.profile.lower()[j]), float(self.session.profile.upper()[j])
        self.plot.setYRange(lo, hi, padding=0.05)

    def showEvent(self, ev) -> None:
        self._ensure_plot()
        super().showEvent(ev)

    # ------------------------------------------------------------------ session / loading
    def set_session(self, session) -> None:
        self.session = session
        self.joint_pick.clear()
        if session is not None:
            p = session.profile
            self.joint_pick.addItems(p.joint_names)
            step = p.max_speed() / session.fps
            ws = ", ".join(f"{k} [{v[0]:g}, {v[1]:g}] m" for k, v in p.workspace.items()) or "none"
            self.limits_label.setText(
                f"<small>joint limits from profile '{p.name}'; max step per tick "
                f"{np.min(step):.3f}..{np.max(step):.3f} rad at {session.fps:g} Hz; workspace {ws}; "
                f"NaN/inf actions stop the policy</small>")
            if not self.instruction.text():
                self.instruction.setText(session.workflow.instruction)
            if session.devices is not None and session.devices.workcell is not None and self.task_pick.count() == 1:
                from drivers.sim import TASKS
                for t, ins in TASKS.items():
                    self.task_pick.addItem(f"{t}: {ins}", t)
            if self.policy is not None:
                self.install(self.policy, self.source.text())
        self._update_buttons()

    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Policy checkpoint", "", "Checkpoint (*.pt *.pth *.ckpt);;All (*)")
        if path:
            self.source.setText(path)
            self.load(path)

    def load(self, spec: str) -> Worker | None:
        """Load a policy in a worker (imports torch there), check it fits the robot, install it."""
        if not spec:
            self.message.emit("give a checkpoint file or a server URL")
            return None
        self.meta_label.setText(f"loading {spec} ...")
        self.load_btn.setEnabled(False)
        profile = self.session.profile if self.session is not None else None
        fps = self.session.fps if self.session is not None else None
        remote = spec.startswith(("http://", "https://"))
        mode = self.remote_mode.currentData()

        def job(w: Worker):
            w.report(None, "connecting to the policy server" if remote else "loading checkpoint (torch)")
            try:
                load_policy = policy_api("load_policy")
            except ImportError as e:
                raise RuntimeError(f"policy support is not available: {e}") from e
            if remote:
                check_server(spec)
                policy = load_policy(spec, profile=profile, action_mode=mode)
                if fps:
                    policy.meta.fps = fps      # a server answers at whatever rate we ask: ours
            else:
                if not Path(spec).exists():
                    raise FileNotFoundError(f"checkpoint {spec} not found: pick a .pt file (Browse...) "
                                            "or give a server URL http://host:port")
                policy = load_policy(spec)
            if profile is not None and getattr(policy, "meta", None) is not None:
                check = policy_api("check_compatible")
                check(policy.meta, profile, fps=fps)
            return policy

        def failed(e: str):
            self.load_btn.setEnabled(True)
            self.meta_label.setText(f"<span style='color:#e74c3c'>cannot load {spec}: {e}</span>")
            self.message.emit(f"policy not loaded: {e}")

        def done(policy):
            self.load_btn.setEnabled(True)
            self.install(policy, spec)
        self._loader = run_in_thread(job, on_done=done, on_error=failed)
        return self._loader

    def install(self, policy, name: str = "") -> None:
        """Use `policy` (a Policy with predict(), or already a runner with act()) on the session."""
        self.policy = policy
        meta = getattr(policy, "meta", None)
        if meta is not None:
            self.meta_label.setText(
                f"<b>{Path(name).name if name else 'policy'}</b>: {getattr(meta, 'kind', '?')}, "
                f"{getattr(meta, 'action_dim', '?')}-dim actions at {getattr(meta, 'fps', '?')} Hz, "
                f"cameras {getattr(meta, 'cameras', '?')}, chunk {getattr(meta, 'chunk_size', '?')}")
        else:
            self.meta_label.setText(f"<b>{name or type(policy).__name__}</b> loaded")
        if self.session is None:
            self.message.emit("policy loaded; connect a robot to run it")
            self._update_buttons()
            return
        runner = policy if hasattr(policy, "act") else make_runner(policy, self.session)
        self.gated = GatedRunner(runner)
        self.gated.pause()
        self.session.set_policy(self.gated, name=Path(name).name if name else type(policy).__name__)
        self.message.emit(f"policy ready: {name or type(policy).__name__} (Start [P] or Step [.])")
        self._update_buttons()
        self.loaded.emit(policy)

    def _update_buttons(self) -> None:
        ready = self.session is not None and self.gated is not None
        for b in (self.start_btn, self.step_btn, self.stop_btn):
            b.setEnabled(ready)
        sim = self.session is not None and self.session.devices is not None and \
            self.session.devices.workcell is not None
        self.scene_btn.setEnabled(sim)
        self.succ_btn.setEnabled(self.run is not None)
        self.fail_btn.setEnabled(self.run is not None)
        self.val_btn.setEnabled(self._val_worker is None and (bool(self.source.text().strip()) or
                                                              self.policy is not None))
        self.report_btn.setEnabled(self._report is not None)

    # ------------------------------------------------------------------ running
    def apply_instruction(self) -> None:
        text = self.instruction.text().strip()
        if text and self.session is not None:
            self.session.set_instruction(text)

    def _policy_mode(self) -> bool:
        try:
            if self.session.mode.value != "policy":
                self.session.set_mode("policy")
            return True
        except Exception as e:
            self.message.emit(f"cannot start the policy: {e}")
            return False

    def start(self) -> None:
        if self.session is None or self.gated is None:
            self.message.emit("load a policy and connect first")
            return
        if self.session.status.estopped:
            self.message.emit("E-STOP is latched: release it (Ctrl+R) before running the policy")
            return
        self.apply_instruction()
        if not self._policy_mode():
            return
        self.gated.run_free()
        if self.run is None:
            self._begin_run()
        self.message.emit("policy running")

    def step(self) -> None:
        if self.session is None or self.gated is None:
            return
        self.apply_instruction()
        if self.session.mode.value != "policy":
            self.gated.pause()
            if not self._policy_mode():
                return
        self.gated.step(1)
        if self.run is None:
            self._begin_run()

    def stop(self) -> None:
        """Stop the policy (arm holds); the run ends, judged by the sim when there is one."""
        if self.gated is not None:
            self.gated.pause()
        if self.session is not None and self.session.mode.value == "policy":
            try:
                self.session.set_mode("hold")
            except Exception as e:
                self.message.emit(str(e))
        if self.run is not None:
            st = self.session.status if self.session else None
            self.end_run("success" if st is not None and st.sim_success else
                         "failure" if st is not None and st.sim_success is False else "unjudged")

    def new_scene(self) -> None:
        if self.session is None:
            return
        try:
            self.session.reset_scene()
        except Exception as e:
            self.message.emit(str(e))

    def _begin_run(self) -> None:
        self.run = Run(n=len(self.runs) + 1, instruction=self.session.workflow.instruction, t0=time.monotonic(),
                       steps0=self.gated.steps)
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
        r.steps = (self.gated.steps if self.gated else 0) - r.steps0
        r.result = result
        self.run = None
        if self.gated is not None:
            self.gated.pause()
        if self.session is not None and self.session.mode.value == "policy":
            try:
                self.session.set_mode("hold")
            except Exception:
                pass
        self.message.emit(f"policy run {r.n}: {result} ({r.steps} steps, {r.duration:.1f} s)")
        self._refresh_runs()
        self._update_buttons()

    def _refresh_runs(self) -> None:
        t = self.runs_table
        t.setRowCount(len(self.runs))
        colors = {"success": "#27ae60", "failure": "#c0392b", "running": "#f39c12"}
        for i, r in enumerate(self.runs):
            dur = r.duration if r.result != "running" else time.monotonic() - r.t0
            steps = r.steps if r.result != "running" else (self.gated.steps - r.steps0 if self.gated else 0)
            for c, v in enumerate([str(r.n), r.instruction, str(steps), f"{dur:.1f} s", r.result]):
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
        """N headless sim rollouts per task (a fresh copy of the policy, never the live robot) + a report."""
        spec = self.source.text().strip()
        if not spec and self.policy is None:
            self.message.emit("load a policy (checkpoint or URL) to validate")
            return None
        if self.run is not None:
            self.message.emit("stop the live run before validating")
            return None
        n = self.n_rollouts.value()
        task = self.task_pick.currentData()
        max_steps = self.max_steps.value() or None
        profile_name = self.session.profile.name if self.session else "sim7"
        base = Path(self.session.config.dataset).parent if self.session else Path("reports")
        out_dir = base / "validation" / time.strftime("%Y%m%d-%H%M%S")
        live_policy = None if spec else self.policy
        remote_kw = {"profile": profile_name, "action_mode": self.remote_mode.currentData()} \
            if spec.startswith(("http://", "https://")) else {}

        def job(w: Worker):
            from drivers.sim import TASKS
            run_sim_rollouts = policy_api("run_sim_rollouts")
            w.report(0.0, "loading policy")
            policy = live_policy if live_policy is not None else policy_api("load_policy")(spec, **remote_kw)
            tasks = list(TASKS) if task is None else [task]
            res = call_flexible(run_sim_rollouts, policy, tasks, n, max_steps=max_steps, profile=profile_name,
                                progress=w.callback("rollout"), policy_name=Path(spec).name if spec else "policy")
            info = {"source": spec or "policy object from the GUI", "profile": profile_name,
                    "started_from": "teleop gui"}
            return res, write_validation_report(res, out_dir, info)

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
        self._report = Path(report) if report else None
        self.val_progress.setValue(1000)
        self.val_progress.setFormat("done")
        o = res.overall() if hasattr(res, "overall") else {}
        per = res.per_task() if hasattr(res, "per_task") else {}
        lines = [f"<b>{o.get('success', '?')}/{o.get('n', '?')} succeeded</b> "
                 f"(95% CI {o.get('ci95', [0, 0])[0]:.0%}-{o.get('ci95', [0, 0])[1]:.0%})" if o else ""]
        lines += [f"{t}: {d['success']}/{d['n']}" for t, d in per.items()]
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
        for k, lab in self.safety_labels.items():
            v = str(st.safety.get(k, 0))
            if lab.text() != v:
                lab.setText(v)
                lab.setStyleSheet("color: #e67e22; font-weight: bold" if v != "0" else "")
        self.last_safety.setText(f"last tick: {', '.join(st.last_safety)}" if st.last_safety else "last tick: ok")
        r = self.run
        # Judge only on statuses published after this run began (a scene reset shows up one tick later).
        if r is not None and st.estopped:
            self.end_run("e-stop" + (f": {st.message}" if st.message else ""))
        elif r is not None and st.t > r.t0 + 1.5 / max(1.0, self.session.fps if self.session else 10.0):
            if st.mode != "policy" and r.result == "running" and self.gated is not None and self.gated.budget is None:
                self.end_run("stopped (" + (st.message or st.mode) + ")")    # NaN / e-stop / mode change
            elif st.sim_success and self.gated is not None and self.gated.budget is None:
                self.end_run("success")                                    # the sim judged it
            elif time.monotonic() - r.t0 > self.max_s.value():
                self.end_run("failure" if st.sim_success is False else "timeout")
        pol = st.policy or "-"
        state = "running" if st.mode == "policy" and self.gated is not None and self.gated.budget is None else \
            "paused (stepping)" if st.mode == "policy" else "stopped"
        sim = "" if st.sim_success is None else f"; sim task {'done ✔' if st.sim_success else 'not done'}"
        self.run_label.setText(f"policy <b>{pol}</b>: {state}{sim}")
        if self.run is not None and time.monotonic() - getattr(self, "_runs_t", 0.0) > 0.25:
            self._runs_t = time.monotonic()      # the running row's steps/duration, at 4 Hz
            self._refresh_runs()
        if visible and self.session is not None:
            self._update_plot()

    def _update_plot(self, max_hz: float = 5.0) -> None:
        now_wall = time.monotonic()
        if now_wall - getattr(self, "_last_draw", 0.0) < 1.0 / max_hz:
            return
        self._last_draw = now_wall
        self._ensure_plot()
        j = self.joint_pick.currentIndex()
        if j < 0:
            return
        hist = list(self.session.history)
        if not hist:
            return
        now = hist[-1][0]
        t = np.array([h[0] for h in hist]) - now
        keep = t > -20
        self.sent_curve.setData(t[keep], np.array([h[2][j] for h in hist])[keep], skipFiniteCheck=True)
        self.meas_curve.setData(t[keep], np.array([h[1][j] for h in hist])[keep], skipFiniteCheck=True)
        if self.gated is not None and self.gated.predicted:
            pred = list(self.gated.predicted)
            tp = np.array([p[0] for p in pred]) - now
            k = tp > -20
            self.pred_curve.setData(tp[k], np.array([p[1][j] for p in pred])[k])
        else:
            self.pred_curve.setData([], [])


def check_server(url: str, timeout: float = 2.0) -> None:
    """Fail early, with what to do, if nothing listens at the policy server's address."""
    import socket
    from urllib.parse import urlsplit
    u = urlsplit(url)
    if not u.hostname:
        raise ValueError(f"bad policy server URL {url!r}; expected http://host:port")
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"policy server {url} is not reachable ({e.strerror or e}); start it "
                              "(e.g. `teleop policy serve CHECKPOINT`) or check host and port") from None


def write_validation_report(res, out_dir: Path, info: dict | None = None) -> Path:
    """The policy package's write_report() when it exists; else results JSON + a small HTML summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_report = policy_api("write_report")
    except ImportError:
        write_report = None
    if write_report is not None:
        return Path(write_report(res, None, out_dir, info=info or {}))
    import html
    if hasattr(res, "save"):
        res.save(out_dir / "results.json")
    summary = res.summary() if hasattr(res, "summary") else str(res)
    fails = res.failures() if hasattr(res, "failures") else []
    page = out_dir / "report.html"
    page.write_text("<html><head><meta charset='utf-8'><title>policy validation</title></head><body>"
                    f"<h1>Policy validation</h1><pre>{html.escape(summary)}</pre>"
                    + (f"<h2>Failures</h2><pre>{html.escape(chr(10).join(fails))}</pre>" if fails else "")
                    + "<p>raw results: results.json</p></body></html>")
    return page


def call_flexible(fn, *args, **kwargs):
    """Call fn with only the keyword arguments it accepts (the policy API is being settled concurrently)."""
    import inspect
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn(*args)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        accepted = kwargs
    else:
        accepted = {k: v for k, v in kwargs.items() if k in sig.parameters}
    # drop aliases that name the same thing twice
    return fn(*args, **accepted)
