"""Episodes tab: the dataset's episodes (instruction, length, label, cadence health), a frame scrubber with
camera images and joint/action plots, relabel, delete, trim, change the instruction of a selection, split
off a validation set, merge with another dataset (each edit atomic and undoable, Ctrl+Z), replay on the
robot, and LeRobot / RLDS export in a cancellable background worker.

The tab reads the dataset's files itself (its own EpisodeStore on `session.info.dataset`, re-read when the
control side keeps an episode); the session is only asked to replay."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QHBoxLayout, QHeaderView, QInputDialog, QLabel,
                               QProgressBar,
                               QPushButton, QSlider, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout,
                               QWidget)

from ui.teleop_tab import plot_colors
from ui.util import Cancelled, ImageView, Worker, dark_plot, run_in_thread

COLS = ["id", "instruction", "steps", "duration", "label", "mode", "cadence"]


def cadence_health(c: dict, fps: float | None = None) -> tuple[str, str]:
    """('ok'|'warn'|'bad', text) from a store cadence summary."""
    if not c:
        return "warn", "unknown"
    hz, p99, missed = c.get("achieved_hz", 0.0), c.get("p99_period_error_ms", 0.0), c.get("missed_ticks", 0)
    text = f"{hz:.1f} Hz, p99 {p99:.1f} ms, missed {missed}"
    period_ms = 1000.0 / fps if fps else 100.0
    if missed > 0 or p99 > 0.5 * period_ms:
        return "bad", text
    if p99 > 0.1 * period_ms:
        return "warn", text
    return "ok", text


def export_target(parent: Path, name: str, kind: str) -> Path:
    """An empty folder to export into: `parent` itself if empty, else parent/<name>_<kind>[_N]."""
    if parent.is_dir() and not any(parent.iterdir()):
        return parent
    out = parent / f"{name}_{kind}"
    n = 2
    while out.exists() and any(out.iterdir()):
        out = parent / f"{name}_{kind}_{n}"
        n += 1
    return out


def cadence_text(ep, rep: dict) -> str:
    """One line about how the episode was recorded (timing and camera freshness)."""
    if "error" in rep:
        return f"cadence: unavailable ({rep['error']})"
    ages = ", ".join(f"{c} {v:.0f} ms" for c, v in rep.get("max_frame_age_ms", {}).items() if v == v)
    rep_fr = ", ".join(f"{c} {n}" for c, n in rep.get("repeated_frames", {}).items())
    return (f"<small>recorded {ep.meta.start_time or '?'} by {ep.meta.operator or '-'} ({ep.meta.mode}); "
            f"{rep['achieved_hz']:.2f} Hz of {rep['fps']:g}, p99 period error {rep['p99_period_error_ms']:.1f} ms, "
            f"missed ticks {rep['missed_ticks']}; worst frame age: {ages or '-'}; repeated frames: {rep_fr or '-'}"
            f"{'; RECOVERED after a crash' if ep.recovered else ''}</small>")


class EpisodesTab(QWidget):
    message = Signal(str)
    dataset_changed = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.session = None
        self.store = None
        self.episode = None             # recorder.reader.Episode being scrubbed
        self.episode_id: int | None = None
        self._export: Worker | None = None
        self._loading: Worker | None = None
        self._loads: list[Worker] = []       # every episode load whose file handle may still be open
        self._known_kept = -1

        # --- top bar
        self.root_label = QLabel("no dataset")
        self.open_btn = QPushButton("Open dataset...")
        self.refresh_btn = QPushButton("Refresh")
        top = QHBoxLayout()
        top.addWidget(QLabel("<b>Dataset</b>"))
        top.addWidget(self.root_label, 1)
        top.addWidget(self.open_btn)
        top.addWidget(self.refresh_btn)

        # --- table
        self.table = QTableWidget(0, len(COLS))
        self.table.setHorizontalHeaderLabels(COLS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)   # edits of a selection
        # only the instruction cell is editable (double-click / F2): fixes a typo'd instruction in the file
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked |
                                   QAbstractItemView.EditTrigger.EditKeyPressed)
        self.table.itemChanged.connect(self._item_edited)
        self._refreshing = False
        self.table.verticalHeader().hide()
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._selected)

        # --- per-episode actions
        self.success_btn = QPushButton("Success")
        self.failure_btn = QPushButton("Failure")
        self.unlabel_btn = QPushButton("Unlabel")
        self.delete_btn = QPushButton("Delete [Del]")
        self.undo_btn = QPushButton("Undo last edit [Ctrl+Z]")
        self.replay_btn = QPushButton("Replay on robot")
        self.stop_replay_btn = QPushButton("Stop replay")
        acts = QHBoxLayout()
        for b in (self.success_btn, self.failure_btn, self.unlabel_btn, self.delete_btn, self.undo_btn,
                  self.replay_btn, self.stop_replay_btn):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            acts.addWidget(b)
        acts.addStretch(1)
        self.success_btn.clicked.connect(lambda: self.relabel(1))
        self.failure_btn.clicked.connect(lambda: self.relabel(0))
        self.unlabel_btn.clicked.connect(lambda: self.relabel(-1))
        self.delete_btn.clicked.connect(self.delete_selected)
        self.undo_btn.clicked.connect(self.undo)
        self.replay_btn.clicked.connect(self.replay_selected)
        self.stop_replay_btn.clicked.connect(self.stop_replay)

        # --- edits (atomic; undo with Ctrl+Z; split/merge write new datasets and leave this one as it is)
        self.trim_start_btn = QPushButton("Trim start to frame")
        self.trim_end_btn = QPushButton("Trim end after frame")
        self.instr_btn = QPushButton("Set instruction of selection...")
        self.split_btn = QPushButton("Split off validation...")
        self.merge_btn = QPushButton("Merge with...")
        self.trim_start_btn.setToolTip("drop the frames before the scrubber's frame (idle start)")
        self.trim_end_btn.setToolTip("drop the frames after the scrubber's frame (idle end)")
        edits = QHBoxLayout()
        for b in (self.trim_start_btn, self.trim_end_btn, self.instr_btn, self.split_btn, self.merge_btn):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            edits.addWidget(b)
        edits.addStretch(1)
        self.trim_start_btn.clicked.connect(lambda: self.trim_at_frame("start"))
        self.trim_end_btn.clicked.connect(lambda: self.trim_at_frame("end"))
        self.instr_btn.clicked.connect(self.instruction_dialog)
        self.split_btn.clicked.connect(self.split_dialog)
        self.merge_btn.clicked.connect(self.merge_dialog)

        # --- export
        self.export_lerobot_btn = QPushButton("Export LeRobot... [Ctrl+E]")
        self.export_rlds_btn = QPushButton("Export RLDS...")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress.setTextVisible(True)
        exp = QHBoxLayout()
        for w in (self.export_lerobot_btn, self.export_rlds_btn):
            exp.addWidget(w)
        exp.addWidget(self.progress, 1)
        exp.addWidget(self.cancel_btn)
        self.export_lerobot_btn.clicked.connect(lambda: self.export_dialog("lerobot"))
        self.export_rlds_btn.clicked.connect(lambda: self.export_dialog("rlds"))
        self.cancel_btn.clicked.connect(self.cancel_export)

        # --- scrubber
        self.images_row = QHBoxLayout()
        self.image_views: dict[str, ImageView] = {}
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._frame_changed)
        self.frame_label = QLabel("select an episode")
        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.play_btn = QPushButton("Play")
        self.play_btn.setCheckable(True)
        self.play_btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.play_btn.toggled.connect(self._play_toggled)
        self.play_timer = QTimer(self)
        self.play_timer.timeout.connect(self._play_tick)
        scrub = QHBoxLayout()
        scrub.addWidget(self.play_btn)
        scrub.addWidget(self.slider, 1)
        scrub.addWidget(self.frame_label)
        self.plot = None                 # pyqtgraph is imported on first use: keeps app start fast
        self.cursor = None
        self._curves: list = []
        # table on top (full width: every column readable), below it the viewer: images | plot, scrub bar
        images = QWidget()
        images.setLayout(self.images_row)
        self.images_row.setContentsMargins(0, 0, 0, 0)
        self.view_split = QSplitter(Qt.Orientation.Horizontal)
        self.view_split.addWidget(images)
        self.plot_holder = QWidget()
        self._viewer_layout = QVBoxLayout(self.plot_holder)
        self._viewer_layout.setContentsMargins(0, 0, 0, 0)
        self.view_split.addWidget(self.plot_holder)
        self.view_split.setStretchFactor(0, 1)
        self.view_split.setStretchFactor(1, 1)
        viewer = QWidget()
        vl = QVBoxLayout(viewer)
        vl.setContentsMargins(0, 0, 0, 0)
        vl.addWidget(self.view_split, 1)
        vl.addLayout(scrub)
        vl.addWidget(self.details)
        table_box = QWidget()
        tl = QVBoxLayout(table_box)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.table, 1)
        self.summary = QLabel("")
        tl.addWidget(self.summary)
        tl.addLayout(acts)
        tl.addLayout(edits)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(table_box)
        split.addWidget(viewer)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([300, 500])

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(split, 1)
        lay.addLayout(exp)
        self.open_btn.clicked.connect(self.open_dialog)
        self.refresh_btn.clicked.connect(self.reload)
        self._update_buttons()

    def _ensure_plot(self) -> None:
        if self.plot is not None:
            return
        import pyqtgraph as pg
        self.plot = dark_plot("step", "qpos (solid) / action (dashed)")
        self.plot.setMinimumHeight(160)
        self.cursor = pg.InfiniteLine(pos=0, angle=90, movable=True, pen=pg.mkPen("#f1c40f", width=2))
        self.cursor.sigPositionChanged.connect(self._cursor_moved)
        self.plot.addItem(self.cursor)
        self._viewer_layout.addWidget(self.plot, 1)

    def showEvent(self, ev) -> None:
        self._ensure_plot()
        super().showEvent(ev)

    # ------------------------------------------------------------------ store
    def set_session(self, session) -> None:
        self.session = session
        if session is not None:
            self.open_path(session.info.dataset)
        self._update_buttons()

    def set_store(self, store) -> None:
        self.store = store
        self.root_label.setText(str(store.root) if store is not None else "no dataset")
        if store is not None:
            self.dataset_changed.emit(str(store.root))
        self.refresh()

    def _live_dataset(self, root) -> bool:
        """The connected session records into `root`: its control side owns recovery there."""
        return self.session is not None and Path(root).resolve() == Path(self.session.info.dataset).resolve()

    def open_path(self, root: str) -> None:
        """Open a dataset folder (in a worker: opening may recover interrupted recordings, except in the
        dataset the control process is recording into)."""
        from recorder.store import EpisodeStore
        recover = not self._live_dataset(root)
        run_in_thread(lambda w: EpisodeStore.open(root, recover=recover), on_done=self.set_store,
                      on_error=lambda e: self.message.emit(f"cannot open dataset {root}: {e}"))

    def open_dialog(self) -> None:
        root = QFileDialog.getExistingDirectory(self, "Open dataset folder")
        if root:
            self.open_path(root)

    def reload(self) -> None:
        """Re-read the index and the folder (episodes the control process added since)."""
        from recorder.store import EpisodeStore
        if self.store is not None:
            try:
                self.store = EpisodeStore.open(self.store.root, recover=not self._live_dataset(self.store.root))
            except Exception as e:
                self.message.emit(f"cannot re-read dataset {self.store.root}: {e}")
        self.refresh()

    def refresh(self) -> None:
        sel = self.selected_id()
        self._refreshing = True
        try:
            self._fill_table()
        finally:
            self._refreshing = False
        if sel is not None:
            self.select_id(sel)
        self._update_buttons()

    def _fill_table(self) -> None:
        self.table.setRowCount(0)
        self.summary.setText("")
        if self.store is None:
            return
        fps = getattr(self.store, "config", {}).get("fps") if isinstance(getattr(self.store, "config", None),
                                                                           dict) else None
        infos = self.store.episodes()
        ok = sum(i.success == 1 for i in infos)
        bad = sum(i.success == 0 for i in infos)
        total = sum(i.duration for i in infos)
        self.summary.setText(f"{len(infos)} episodes ({ok} success, {bad} failure, {len(infos) - ok - bad} "
                             f"unlabelled), {total / 60:.1f} min, {sum(i.num_steps for i in infos)} steps; "
                             f"{len(getattr(self.store, 'trash', lambda: [])())} in the trash")
        self.table.setRowCount(len(infos))
        for r, info in enumerate(infos):
            label = {1: "success", 0: "failure"}.get(info.success, "unlabelled")
            health, ctext = cadence_health(info.cadence, fps)
            vals = [str(info.id), info.instruction, str(info.num_steps), f"{info.duration:.1f} s", label,
                    info.mode, ctext + (" (recovered)" if info.recovered else "")]
            for c, v in enumerate(vals):
                it = QTableWidgetItem(v)
                if c != 1:
                    it.setFlags(it.flags() & ~Qt.ItemFlag.ItemIsEditable)
                else:
                    it.setToolTip("double-click to correct the instruction (written into the episode file)")
                if c == 0:
                    it.setData(Qt.ItemDataRole.UserRole, info.id)
                if c == 4:
                    it.setForeground(QColor({"success": "#27ae60", "failure": "#c0392b"}.get(label, "#888")))
                if c == 6:
                    it.setForeground(QColor({"ok": "#27ae60", "warn": "#e67e22", "bad": "#c0392b"}[health]))
                    it.setToolTip(str(info.cadence))
                self.table.setItem(r, c, it)

    def _item_edited(self, item) -> None:
        if self._refreshing or item.column() != 1 or self.store is None:
            return
        ep_id = int(self.table.item(item.row(), 0).data(Qt.ItemDataRole.UserRole))
        # not from inside the item's own change signal
        QTimer.singleShot(0, lambda: self.set_instruction_of([ep_id], item.text()))

    def selected_id(self) -> int | None:
        ids = self.selected_ids()
        return ids[0] if ids else None

    def selected_ids(self) -> list[int]:
        rows = sorted(r.row() for r in self.table.selectionModel().selectedRows())
        items = [self.table.item(r, 0) for r in rows]
        return [int(it.data(Qt.ItemDataRole.UserRole)) for it in items if it is not None]

    def select_id(self, ep_id: int) -> bool:
        for r in range(self.table.rowCount()):
            it = self.table.item(r, 0)
            if it is not None and int(it.data(Qt.ItemDataRole.UserRole)) == ep_id:
                self.table.selectRow(r)
                return True
        return False

    def _update_buttons(self) -> None:
        has = self.selected_id() is not None
        for b in (self.success_btn, self.failure_btn, self.unlabel_btn, self.delete_btn):
            b.setEnabled(has)
        self.replay_btn.setEnabled(has and self.session is not None)
        self.stop_replay_btn.setEnabled(self.session is not None)
        self.undo_btn.setEnabled(self.store is not None and bool(self.store.undo_history()))
        one = has and len(self.selected_ids()) == 1 and self.episode is not None
        self.trim_start_btn.setEnabled(one)
        self.trim_end_btn.setEnabled(one)
        self.instr_btn.setEnabled(has)
        self.split_btn.setEnabled(self.store is not None)
        self.merge_btn.setEnabled(self.store is not None)
        busy = self._export is not None
        self.export_lerobot_btn.setEnabled(self.store is not None and not busy)
        self.export_rlds_btn.setEnabled(self.store is not None and not busy)

    # ------------------------------------------------------------------ scrubber
    def _selected(self) -> None:
        self._update_buttons()
        ep_id = self.selected_id()
        if ep_id is None or ep_id == self.episode_id:
            return
        self.load_episode(ep_id)

    def load_episode(self, ep_id: int) -> None:
        from recorder.reader import read_episode
        try:
            path = self.store.path(ep_id)
        except Exception as e:
            self.message.emit(str(e))
            return
        broken = next((i.broken for i in self.store.episodes() if i.id == ep_id), "")
        if broken:      # not opened: it may be a file the HDF5 library loops on (recorder.h5check)
            self.frame_label.setText("unreadable")
            self.message.emit(f"episode {ep_id} is broken: {broken}")
            return
        self.frame_label.setText("loading...")

        def job(w):
            ep = read_episode(path)
            try:
                from recorder.validate import cadence_report
                rep = cadence_report(ep)
            except Exception as e:  # a report problem must not hide the episode
                rep = {"error": str(e)}
            return ep, rep

        me: list[Worker] = []

        def done(result, ep_id=ep_id):
            ep, rep = result
            if me and me[0] in self._loads:
                self._loads.remove(me[0])
            if me and me[0] is not self._loading:    # a newer selection's load replaced this one
                ep.close()
                return
            self._show_episode(ep_id, ep)
            self.details.setText(cadence_text(ep, rep))
        self._loading = run_in_thread(job, on_done=done,
                                      on_error=lambda e: (self.frame_label.setText("unreadable"),
                                                          self.message.emit(f"episode {ep_id}: {e}")))
        me.append(self._loading)
        self._loads.append(self._loading)

    def _show_episode(self, ep_id: int, ep) -> None:
        import pyqtgraph as pg
        self._ensure_plot()
        if self.episode is not None:
            self.episode.close()
        self.play_btn.setChecked(False)
        self.episode, self.episode_id = ep, ep_id
        for v in self.image_views.values():
            v.setParent(None)
            v.deleteLater()
        self.image_views.clear()
        for cam in ep.cameras:
            v = ImageView(cam)
            self.image_views[cam] = v
            self.images_row.addWidget(v)
        for c in self._curves:
            self.plot.removeItem(c)
        self._curves = []
        steps = np.arange(ep.num_steps)
        cols = plot_colors(ep.qpos.shape[1] if ep.num_steps else 1)
        for j in range(ep.qpos.shape[1] if ep.num_steps else 0):
            self._curves.append(self.plot.plot(steps, ep.qpos[:, j], pen=pg.mkPen(cols[j], width=2)))
            self._curves.append(self.plot.plot(steps, ep.action[:, j],
                                               pen=pg.mkPen(cols[j], width=1, style=Qt.PenStyle.DashLine)))
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, ep.num_steps - 1))
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self.slider.setEnabled(ep.num_steps > 0)
        self.plot.setXRange(0, max(1, ep.num_steps - 1))
        self.show_frame(0)
        self._update_buttons()

    def show_frame(self, i: int) -> None:
        ep = self.episode
        if ep is None or ep.num_steps == 0:
            return
        i = int(max(0, min(i, ep.num_steps - 1)))
        for cam, v in self.image_views.items():
            try:
                v.set_image(ep.image(cam, i))
                v.set_note("")
            except Exception as e:
                v.set_image(None)
                v.placeholder = f"unreadable frame: {e}"
        t = ep.timestamp[i] - ep.timestamp[0]
        lab = {1: "success", 0: "failure"}.get(ep.success, "unlabelled")
        self.frame_label.setText(f"ep {self.episode_id}  frame {i + 1}/{ep.num_steps}  t={t:.2f} s  "
                                 f"'{ep.meta.instruction}'  {lab}")
        self.cursor.blockSignals(True)
        self.cursor.setValue(i)
        self.cursor.blockSignals(False)
        if self.slider.value() != i:
            self.slider.blockSignals(True)
            self.slider.setValue(i)
            self.slider.blockSignals(False)

    def _frame_changed(self, i: int) -> None:
        self.show_frame(i)

    def _cursor_moved(self) -> None:
        self.show_frame(int(round(self.cursor.value())))

    def step_frame(self, d: int) -> None:
        self.show_frame(self.slider.value() + d)

    def _play_toggled(self, on: bool) -> None:
        if on and self.episode is not None:
            self.play_timer.start(int(1000 / max(1.0, self.episode.meta.fps)))
            if self.slider.value() >= self.slider.maximum():
                self.show_frame(0)
        else:
            self.play_timer.stop()
        self.play_btn.setText("Pause" if on else "Play")

    def _play_tick(self) -> None:
        if self.episode is None or self.slider.value() >= self.slider.maximum():
            self.play_btn.setChecked(False)
            return
        self.show_frame(self.slider.value() + 1)

    # ------------------------------------------------------------------ edits
    def _release_file(self, ep_id: int) -> None:
        """Close our read handle on an episode file before it is modified or moved (HDF5 refuses to open a
        file for writing that this process has open for reading); images reopen it lazily."""
        for w in list(self._loads):     # every load in flight or not yet shown holds a file open
            if w.isRunning():
                w.wait(10000)
            if w.result is not None:
                w.result[0].close()
            elif not w.isRunning():
                self._loads.remove(w)   # it failed: nothing open
        if self.episode is not None:
            self.episode.close()

    def relabel(self, success: int) -> None:
        """Write the label into the episode file (a few ms: one attribute) and refresh the table."""
        ep_id = self.selected_id()
        if ep_id is None or self.store is None:
            return
        self._release_file(ep_id)
        try:
            self.store.relabel(ep_id, success)
        except Exception as e:
            self.message.emit(f"relabel failed: {e}")
            return
        if self.episode is not None and self.episode_id == ep_id:
            self.episode.success = success
            self.show_frame(self.slider.value())
        self.refresh()
        self.message.emit(f"episode {ep_id} labelled {({1: 'success', 0: 'failure'}.get(success, 'unlabelled'))}")

    def delete_selected(self) -> None:
        ep_id = self.selected_id()
        if ep_id is None or self.store is None:
            return
        self._release_file(ep_id)
        if self.episode_id == ep_id and self.episode is not None:
            self.episode, self.episode_id = None, None
            for v in self.image_views.values():
                v.set_image(None)
            self.frame_label.setText("deleted")
        try:
            self.store.delete(ep_id)
        except Exception as e:
            self.message.emit(f"delete failed: {e}")
            return
        self.message.emit(f"episode {ep_id} moved to the trash (Ctrl+Z to undo)")
        self.refresh()

    def undo(self) -> None:
        """Undo the dataset's last edit (delete, relabel, instruction, trim), whoever made it."""
        if self.store is None:
            return
        for ep_id in self.selected_ids():
            self._release_file(ep_id)
        try:
            what = self.store.undo()
        except Exception as e:
            self.message.emit(f"undo failed: {e}")
        else:
            self.message.emit(f"undone: {what}")
            self.episode_id = None          # the file may have changed (trim): load it again when selected
        keep = self.selected_id()
        self.refresh()
        if keep is not None:
            self.select_id(keep)

    # ------------------------------------------------------------------ edits
    def trim_at_frame(self, which: str) -> None:
        """Trim the selected episode at the scrubber's frame: 'start' drops the frames before it, 'end'
        drops the frames after it. Atomic (a new file replaces the old one); Ctrl+Z brings it back."""
        ep_id = self.selected_id()
        if ep_id is None or self.store is None or self.episode is None or self.episode_id != ep_id:
            self.message.emit("select one episode (and a frame with the scrubber) to trim")
            return
        i, n = self.slider.value(), self.episode.num_steps
        start, end = (i, None) if which == "start" else (0, i + 1)
        if (end or n) - start < 2:
            self.message.emit("trimming there would leave fewer than 2 frames; nothing changed")
            return
        self._release_file(ep_id)
        self.episode, self.episode_id = None, None
        try:
            info = self.store.trim(ep_id, start, end)
        except Exception as e:
            self.message.emit(f"trim failed: {e}")
        else:
            self.message.emit(f"episode {ep_id} trimmed to {info.num_steps} of {n} steps (Ctrl+Z to undo)")
        self.refresh()
        self.select_id(ep_id)

    def set_instruction_selected(self, text: str) -> None:
        self.set_instruction_of(self.selected_ids(), text)

    def set_instruction_of(self, ids: list[int], text: str) -> None:
        """The one path for an instruction edit (a cell edited in place, or the selection's dialog)."""
        text = text.strip()
        if not ids or self.store is None or not text:
            self.message.emit("select episodes and type an instruction" if not text or not ids
                              else "open a dataset first")
            self.refresh()                        # an emptied cell shows its instruction again
            return
        for ep_id in ids:
            self._release_file(ep_id)
        try:
            self.store.set_instruction(ids, text)
        except Exception as e:
            self.message.emit(f"instruction not changed: {e}")
        else:
            self.message.emit(f"instruction of episode(s) {ids} set to '{text}' (Ctrl+Z to undo)")
        self.refresh()

    def instruction_dialog(self) -> None:
        ids = self.selected_ids()
        if not ids:
            return
        cur = self.table.item(self.table.selectionModel().selectedRows()[0].row(), 1).text()
        text, ok = QInputDialog.getText(self, "Set instruction", f"instruction for {len(ids)} episode(s):",
                                        text=cur)
        if ok:
            self.set_instruction_selected(text)

    def split_off(self, out_dir, val_fraction: float = 0.1, seed: int = 0) -> dict | None:
        """out_dir/train and out_dir/val as two new datasets (copies; this one is left as it is)."""
        from recorder.edit import split_store
        try:
            res = split_store(self.store, out_dir, val_fraction=val_fraction, seed=seed)
        except Exception as e:
            self.message.emit(f"split failed: {e}")
            return None
        self.message.emit(f"split into {out_dir}: {len(res['train'])} train, {len(res['val'])} validation "
                          f"episode(s) (validation: {res['val']})")
        return res

    def merge_with(self, other_root, out_dir) -> dict | None:
        """A new dataset at out_dir with this dataset's and other_root's episodes (same robot/cameras)."""
        from recorder.edit import merge_stores
        try:
            res = merge_stores([self.store, other_root], out_dir)
        except Exception as e:
            self.message.emit(f"merge failed: {e}")
            return None
        self.message.emit(f"merged {res['episodes']} episode(s) into {out_dir}")
        return res

    def split_dialog(self) -> None:
        if self.store is None:
            return
        frac, ok = QInputDialog.getDouble(self, "Split off validation", "validation fraction:", 0.1, 0.01, 0.9, 2)
        if not ok:
            return
        out = QFileDialog.getExistingDirectory(self, "Folder for train/ and val/", str(Path(self.store.root).parent))
        if out:
            self.split_off(Path(out) / f"{Path(self.store.root).name}_split", frac)

    def merge_dialog(self) -> None:
        if self.store is None:
            return
        other = QFileDialog.getExistingDirectory(self, "Dataset to merge with", str(Path(self.store.root).parent))
        if not other:
            return
        out = QFileDialog.getExistingDirectory(self, "Folder for the merged dataset", str(Path(other).parent))
        if out:
            self.merge_with(other, Path(out) / f"{Path(self.store.root).name}+{Path(other).name}")

    def replay_selected(self) -> None:
        ep_id = self.selected_id()
        if ep_id is None or self.session is None:
            self.message.emit("select an episode and connect a robot to replay")
            return
        path = str(self.store.path(ep_id))
        session = self.session
        # start_replay reads the file: do it off the UI thread.
        run_in_thread(lambda w: session.start_replay(path),
                      on_done=lambda _r: self.message.emit(f"replaying episode {ep_id}"),
                      on_error=lambda e: self.message.emit(f"replay: {e}"))

    def stop_replay(self) -> None:
        if self.session is not None:
            self.session.stop_replay()

    # ------------------------------------------------------------------ export
    def export_dialog(self, kind: str) -> None:
        if self.store is None:
            self.message.emit("open a dataset first")
            return
        parent = QFileDialog.getExistingDirectory(self, f"Export {kind}: choose the folder to export into")
        if parent:
            self.export(kind, export_target(Path(parent), Path(self.store.root).name, kind))

    def export(self, kind: str, out: str | Path, repo_id: str | None = None) -> Worker | None:
        """Export the dataset (episodes labelled failed are skipped) in a worker; returns it.
        Cancel stops after the current episode and removes the partial export."""
        if self._export is not None:
            self.message.emit("an export is already running")
            return None
        if self.store is None:
            self.message.emit("open a dataset first")
            return None
        store = self.store          # the live store object: never re-open (and "recover") a store in use
        out = Path(out)
        repo_id = repo_id or f"local/{Path(store.root).name}"

        def job(w: Worker):
            import shutil
            created = not out.exists()
            try:
                if kind == "lerobot":
                    from recorder.export_lerobot import export_lerobot
                    return export_lerobot(store, out, repo_id, progress=w.callback("episode"))
                from recorder.export_rlds import export_rlds
                return export_rlds(store, out, progress=w.callback("episode"))
            except Cancelled:
                if created and out.exists():
                    shutil.rmtree(out, ignore_errors=True)
                raise

        self.progress.setValue(0)
        self.progress.setFormat(f"{kind}: starting...")
        self.cancel_btn.setEnabled(True)
        self._export = run_in_thread(job, on_done=lambda r: self._export_end(f"{kind} export done: {r or out}"),
                                     on_error=lambda e: self._export_end(f"{kind} export failed: {e}", True),
                                     on_progress=self._export_progress,
                                     on_cancel=lambda: self._export_end(f"{kind} export cancelled (partial output "
                                                                        "removed)", True))
        self._update_buttons()
        return self._export

    def _export_progress(self, frac, text: str) -> None:
        if frac is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(frac * 1000))
        self.progress.setFormat(text or "%p%")

    def _export_end(self, text: str, failed: bool = False) -> None:
        self._export = None
        self.cancel_btn.setEnabled(False)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0 if failed else 1000)
        self.progress.setFormat(text)
        self.message.emit(text)
        self._update_buttons()

    def cancel_export(self) -> None:
        if self._export is not None:
            self._export.cancel()
            self.progress.setFormat("cancelling...")

    # ------------------------------------------------------------------ status
    def update_status(self, st, visible: bool = True) -> None:
        if st.kept != self._known_kept:
            self._known_kept = st.kept
            if self.store is not None:
                self.reload()
                QTimer.singleShot(1500, self.reload)    # the file is finalized off the control tick
