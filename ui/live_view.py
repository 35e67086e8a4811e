"""Live camera grid: a QTimer pulls each camera's newest frame (`session.live_frames()` in process; shared
memory, which the control process fills the same way, when the session is remote: `latest_frames()`) and
paints each new one with its capture age and the display rate.
Latest-only, never queued: nothing here can slow the control loop.
"""
from __future__ import annotations

import math
import time

from PySide6.QtCore import QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from teleop_app.workflow import State
from ui.util import ImageView, RateMeter, fmt_age

STALE_S = 0.5          # a frame older than this is flagged: the camera stalled or vanished


class LiveView(QWidget):
    """Every camera of the session in a grid, polled at `hz` (default 66 Hz: twice a 30 fps camera, so no frame is skipped by aliasing)."""

    def __init__(self, parent=None, hz: float = 66.0):
        super().__init__(parent)
        self.session = None
        self.views: dict[str, ImageView] = {}
        self._last_index: dict[str, tuple] = {}
        self._meters: dict[str, RateMeter] = {}
        self.first_frame_time: float | None = None   # monotonic time the first image was painted
        self._cols = 0
        self._aspect = 1.0
        self._grid = QGridLayout()
        self._grid.setSpacing(4)
        self._empty = QLabel("Not connected.\nPick a profile and press Connect (Ctrl+L).")
        self._empty.setStyleSheet("color: #888; font-size: 14px")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self._grid, 1)
        self._grid.addWidget(self._empty, 0, 0)
        self.timer = QTimer(self)
        self.timer.setInterval(max(5, int(1000 / hz)))
        self.timer.timeout.connect(self.refresh)

    def set_session(self, session) -> None:
        for v in self.views.values():
            v.setParent(None)
            v.deleteLater()
        self.views.clear()
        self._last_index.clear()
        self._meters.clear()
        self.session = session
        cams = dict(session.info.cameras) if session is not None else {}
        self._aspect = 1.0
        if cams:
            h, w = next(iter(cams.values()))[:2]
            self._aspect = w / h if h else 1.0
        self._empty.setVisible(not cams)
        if session is not None and not cams:
            self._empty.setText("This profile has no cameras.")
        elif session is None:
            self._empty.setText("Not connected.\nPick a profile and press Connect (Ctrl+L).")
        for name in cams:
            v = ImageView(name)
            v.placeholder = "waiting for the first frame..."
            self.views[name] = v
            self._meters[name] = RateMeter()
        self._cols = 0
        self._relayout()
        if cams:
            self.timer.start()
        else:
            self.timer.stop()

    def best_columns(self, n: int, w: float, h: float, aspect: float = 1.0) -> int:
        """Columns that make the (aspect-kept) images largest in a w x h area."""
        best, best_side = 1, -1.0
        for cols in range(1, n + 1):
            rows = math.ceil(n / cols)
            cell_w, cell_h = w / cols, h / rows
            side = min(cell_w, cell_h * aspect)
            if side > best_side + 1e-6:
                best, best_side = cols, side
        return best

    def _relayout(self) -> None:
        n = len(self.views)
        if not n:
            return
        cols = self.best_columns(n, max(1, self.width()), max(1, self.height()), self._aspect)
        if cols == self._cols:
            return
        self._cols = cols
        for v in self.views.values():
            self._grid.removeWidget(v)
        for i, v in enumerate(self.views.values()):
            self._grid.addWidget(v, i // cols, i % cols)

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        self._relayout()

    def refresh(self) -> None:
        s = self.session
        if s is None:
            return
        now = time.monotonic()
        try:
            frames = (s.live_frames if hasattr(s, "live_frames") else s.latest_frames)()
        except Exception as e:   # a camera or channel problem must not take the window with it
            for v in self.views.values():
                v.set_note(f"error: {e}", "#e74c3c")
            return
        for name, v in self.views.items():
            got = frames.get(name)
            if got is None:
                v.placeholder = "waiting for the first frame (camera unavailable?)"
                v.set_note("no frame", "#e74c3c")
                continue
            image, stamp = got
            age = now - stamp
            new = self._last_index.get(name) != stamp
            if new:
                self._last_index[name] = stamp
                self._meters[name].tick(now)
                if self.first_frame_time is None:
                    self.first_frame_time = now
            if new or age > 0.1:      # a stalled camera's growing age is shown even without new frames
                color = "#e74c3c" if age > STALE_S else "#f1c40f" if age > 0.1 else "#2ecc71"
                v.note, v.note_color = f"age {fmt_age(age)}  {self._meters[name].rate(now):.0f} fps", QColor(color)
                if new:
                    v.set_image(image)      # one repaint for image and note
                else:
                    v.update()

    def stale(self) -> list[str]:
        """Cameras whose newest frame is older than STALE_S (or that showed none yet)."""
        now = time.monotonic()
        return [n for n in self.views if now - self._last_index.get(n, -1e9) > STALE_S]

    def set_state(self, workflow: State, time_left: float, estopped: bool) -> None:
        """Operator cues on every camera: E-STOP, the countdown digits, a red frame while recording."""
        if estopped:
            text, color, border = "E-STOP", "#ff4d4d", "#ff0000"
        elif workflow == State.COUNTDOWN:
            text, color, border = str(max(1, math.ceil(time_left))), "#f1c40f", "#f39c12"
        elif workflow == State.RECORDING:
            text, color, border = "", "#ffffff", "#e74c3c"
        else:
            text, color, border = "", "#ffffff", None
        for v in self.views.values():
            v.set_overlay(text, color, border)

    def display_fps(self) -> dict[str, float]:
        return {n: m.rate() for n, m in self._meters.items()}
