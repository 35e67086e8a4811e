"""Joint readouts: one row per joint with a limit bar (measured position + commanded target), a slider
for kinesthetic pushes / hold targets and -/+ jog buttons. The widget only emits what the operator did;
the teleop tab turns that into session commands.
"""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import (QGridLayout, QLabel, QPushButton, QSizePolicy, QSlider, QWidget)

SLIDER_STEPS = 1000


class LimitBar(QWidget):
    """Horizontal bar from lower to upper limit; fill to the measured value, a tick at the target.
    Turns amber within 5 % of a limit, red at the limit."""

    def __init__(self, lower: float, upper: float, parent=None):
        super().__init__(parent)
        self.lower, self.upper = float(lower), float(upper)
        self.value: float | None = None
        self.target: float | None = None
        self.limit_warning = True
        self.setMinimumHeight(18)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(160, 18)

    def set_values(self, value: float | None, target: float | None) -> None:
        if value != self.value or target != self.target:
            self.value, self.target = value, target
            self.update()

    def _x(self, v: float, r) -> float:
        f = (v - self.lower) / (self.upper - self.lower)
        return r.x() + max(0.0, min(1.0, f)) * r.width()

    def near_limit(self) -> str:
        if self.value is None or not self.limit_warning:
            return "none"
        f = (self.value - self.lower) / (self.upper - self.lower)
        if f <= 0.005 or f >= 0.995:
            return "at"
        if f < 0.05 or f > 0.95:
            return "near"
        return "ok"

    def paintEvent(self, _ev) -> None:
        p = QPainter(self)
        r = QRectF(self.rect()).adjusted(1, 3, -1, -3)
        p.fillRect(r, QColor("#2b2d31"))
        if self.value is not None and np.isfinite(self.value):
            zero = self._x(min(max(0.0, self.lower), self.upper), r)
            x = self._x(self.value, r)
            col = {"at": "#e74c3c", "near": "#f39c12"}.get(self.near_limit(), "#3498db")
            p.fillRect(QRectF(min(zero, x), r.y(), abs(x - zero) + 1, r.height()), QColor(col))
            p.setPen(QPen(QColor("#ffffff"), 2))
            p.drawLine(int(x), int(r.y()), int(x), int(r.bottom()))
        if self.target is not None and np.isfinite(self.target):
            xt = self._x(self.target, r)
            p.setPen(QPen(QColor("#2ecc71"), 2))
            p.drawLine(int(xt), int(r.y()) - 2, int(xt), int(r.bottom()) + 2)
        p.setPen(QColor("#666"))
        p.drawRect(r)
        p.end()


class JointPanel(QWidget):
    """Rows: name | value | limit bar | slider | - + jog buttons."""
    slider_moved = Signal(int, float)        # joint index, value (robot units)
    slider_released = Signal()
    jog_changed = Signal(int, int)           # joint index, direction -1/0/+1 (0 = released)

    def __init__(self, profile, parent=None):
        super().__init__(parent)
        self.profile = profile
        self.lower, self.upper = profile.lower(), profile.upper()
        self.bars: list[LimitBar] = []
        self.sliders: list[QSlider] = []
        self.values: list[QLabel] = []
        self.dragging = False
        g = QGridLayout(self)
        g.setContentsMargins(4, 4, 4, 4)
        g.setHorizontalSpacing(6)
        g.setVerticalSpacing(2)
        for c, h in enumerate(["joint", "position", "limits (measured / target)", "move", "jog"]):
            lab = QLabel(f"<b>{h}</b>")
            g.addWidget(lab, 0, c if c < 4 else 4, 1, 1 if c < 4 else 2)
        for i, j in enumerate(profile.all_joints):
            unit = "" if i == profile.dof - 1 else " rad"
            name = QLabel(j.name)
            name.setToolTip(f"{j.name}: [{j.lower:.3f}, {j.upper:.3f}]{unit}, home {j.home:.3f}, "
                            f"max speed {j.max_speed:g}/s")
            val = QLabel("-")
            val.setMinimumWidth(64)
            val.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            bar = LimitBar(j.lower, j.upper)
            bar.setToolTip(name.toolTip())
            sl = QSlider(Qt.Orientation.Horizontal)
            sl.setRange(0, SLIDER_STEPS)
            sl.setMinimumWidth(110)
            sl.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            sl.valueChanged.connect(lambda v, i=i: self._on_slider(i, v))
            sl.sliderPressed.connect(self._pressed)
            sl.sliderReleased.connect(self._released)
            minus, plus = QPushButton("-"), QPushButton("+")
            for b, d in ((minus, -1), (plus, 1)):
                b.setFixedWidth(28)
                b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
                b.setToolTip(f"jog {j.name} {'down' if d < 0 else 'up'} while held")
                b.pressed.connect(lambda i=i, d=d: self.jog_changed.emit(i, d))
                b.released.connect(lambda i=i: self.jog_changed.emit(i, 0))
            r = i + 1
            g.addWidget(name, r, 0)
            g.addWidget(val, r, 1)
            g.addWidget(bar, r, 2)
            g.addWidget(sl, r, 3)
            g.addWidget(minus, r, 4)
            g.addWidget(plus, r, 5)
            self.bars.append(bar)
            self.sliders.append(sl)
            self.values.append(val)
        g.setColumnStretch(2, 3)
        g.setColumnStretch(3, 2)
        g.setRowStretch(profile.dof + 1, 1)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._programmatic = False

    def _pressed(self):
        self.dragging = True

    def _released(self):
        self.dragging = False
        self.slider_released.emit()

    def to_slider(self, i: int, v: float) -> int:
        return int(round((v - self.lower[i]) / (self.upper[i] - self.lower[i]) * SLIDER_STEPS))

    def from_slider(self, i: int, s: int) -> float:
        return float(self.lower[i] + s / SLIDER_STEPS * (self.upper[i] - self.lower[i]))

    def _on_slider(self, i: int, s: int) -> None:
        if not self._programmatic:
            self.slider_moved.emit(i, self.from_slider(i, s))

    def slider_values(self) -> np.ndarray:
        return np.array([self.from_slider(i, s.value()) for i, s in enumerate(self.sliders)])

    def update_state(self, qpos, target) -> None:
        if qpos is None:
            return
        for i, bar in enumerate(self.bars):
            t = None if target is None else float(target[i])
            bar.set_values(float(qpos[i]), t)
            txt = f"{qpos[i]:+.3f}"
            if self.values[i].text() != txt:
                self.values[i].setText(txt)
            if not self.dragging:
                self._programmatic = True
                self.sliders[i].setValue(self.to_slider(i, float(qpos[i])))
                self._programmatic = False


class GamepadView(QWidget):
    """Axes as bars, buttons as lit dots, d-pad and the active mapping group. 'No gamepad' is explicit."""
    AXIS_NAMES = ["LX", "LY", "LT", "RX", "RY", "RT"]
    BUTTON_NAMES = ["A", "B", "X", "Y", "LB", "RB", "Back", "Start", "Guide", "LS", "RS"]

    def __init__(self, parent=None):
        super().__init__(parent)
        self.state = None
        self.group = ""
        self.setMinimumSize(220, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        return QSize(260, 190)

    def set_state(self, state, group: str = "") -> None:
        key = (state.connected, tuple(round(a, 2) for a in state.axes), tuple(state.buttons),
               tuple(state.hats), group, state.name)
        if getattr(self, "_key", None) != key:
            self._key = key
            self.state, self.group = state, group
            self.update()

    def paintEvent(self, _ev) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#232428"))
        s = self.state
        fm = p.fontMetrics()
        lh = fm.height() + 4
        if s is None or not s.connected:
            p.setPen(QColor("#e74c3c"))
            f = p.font()
            f.setBold(True)
            f.setPointSize(f.pointSize() + 3)
            p.setFont(f)
            p.drawText(self.rect().adjusted(8, 8, -8, -8), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       "NO GAMEPAD\nplug one in (it is picked up automatically)\n"
                       "or use the sliders / jog buttons")
            p.end()
            return
        p.setPen(QColor("#ffffff"))
        p.drawText(8, lh, f"{s.name}   group: {self.group or '-'}")
        y = lh + 6
        w = self.width() - 60
        for i, a in enumerate(s.axes):
            name = self.AXIS_NAMES[i] if i < len(self.AXIS_NAMES) else f"A{i}"
            p.setPen(QColor("#bbbbbb"))
            p.drawText(8, y + fm.ascent(), name)
            r = QRectF(44, y + 2, w - 44, fm.height() - 4)
            p.fillRect(r, QColor("#3a3c41"))
            mid = r.x() + r.width() / 2
            x = mid + a * r.width() / 2
            p.fillRect(QRectF(min(mid, x), r.y(), abs(x - mid) + 1, r.height()), QColor("#3498db"))
            p.setPen(QColor("#777"))
            p.drawLine(int(mid), int(r.y()), int(mid), int(r.bottom()))
            y += fm.height() + 1
        y += 6
        x = 8
        for i, b in enumerate(s.buttons):
            name = self.BUTTON_NAMES[i] if i < len(self.BUTTON_NAMES) else f"B{i}"
            bw = fm.horizontalAdvance(name) + 12
            if x + bw > self.width() - 4:
                x, y = 8, y + lh + 2
            r = QRectF(x, y, bw, lh)
            p.setBrush(QColor("#2ecc71") if b else QColor("#3a3c41"))
            p.setPen(QColor("#555"))
            p.drawRoundedRect(r, 6, 6)
            p.setPen(QColor("#000") if b else QColor("#ccc"))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, name)
            x += bw + 4
        if s.hats:
            y += lh + 6
            p.setPen(QColor("#bbbbbb"))
            p.drawText(8, y + fm.ascent(), "d-pad: " + "  ".join(f"{h}" for h in s.hats))
        p.end()
