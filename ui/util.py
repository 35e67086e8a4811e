"""Small Qt helpers shared by the views: background workers, numpy -> QImage, image and status widgets.

Nothing here knows about the session; it is plain Qt plumbing.
"""
from __future__ import annotations

import gc
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QObject, QRectF, QSize, Qt, QThread, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QSizePolicy, QTabWidget, QWidget


def qt_binding_problem() -> str | None:
    """None if the Qt binding is sound, else what to do.

    PySide6 6.12.0 on Python < 3.12 drops a reference to None on every call of a method returning void;
    after a few thousand calls the interpreter aborts ("none_dealloc"). Detected in microseconds here so
    the app refuses to start with a clear message instead of crashing minutes into a session.
    """
    if sys.version_info >= (3, 12):          # None is immortal there: the bug is harmless
        return None
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QRectF
    r = QRectF()
    before = sys.getrefcount(None)
    for _ in range(100):
        r.setWidth(1.0)
    lost = before - sys.getrefcount(None)
    if lost >= 50:
        sys.modules.setdefault("_teleop_none_keepalive", [None] * 1000)   # repay what the probe took
        return (f"PySide6 {pyside_version} has a reference-counting bug on Python "
                f"{sys.version_info.major}.{sys.version_info.minor} that crashes the app after a few "
                "thousand Qt calls. Install a working version: .venv/bin/pip install 'PySide6-Essentials==6.11.3'")
    return None


class Cancelled(Exception):
    """Raised inside a worker's progress callback once the user pressed Cancel."""


class Worker(QThread):
    """Runs `fn(worker, *args, **kwargs)` off the UI thread.

    `fn` reports with `worker.report(fraction, text)` (fraction in 0..1, or None if unknown); that call
    raises Cancelled after `cancel()`, so long jobs stop at their next progress point.

    Results never travel through a Qt signal as Python objects: PySide6 miscounts references of Python
    objects (None, True, ...) passed through queued cross-thread `Signal(object)` connections and the
    interpreter later aborts. The worker keeps `result` / `error` itself and emits argument-free (or
    plain float/str) signals; the slots run on the UI thread and read the stored values.
    """
    _progress = Signal(float, str)      # fraction (-1 = unknown), text
    _finished_ok = Signal()
    _failed = Signal(str)
    _cancelled = Signal()

    _alive: set["Worker"] = set()        # keep running workers referenced (no GC of a running QThread)

    def __init__(self, fn: Callable[..., Any], *args, name: str = "", **kwargs):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.setObjectName(name or getattr(fn, "__name__", "worker"))
        self._cancel = False
        self.result: Any = None
        self.error: str | None = None
        self.state = "pending"           # pending / running / done / failed / cancelled
        self._on_done: list[Callable] = []
        self._on_error: list[Callable] = []
        self._on_progress: list[Callable] = []
        self._on_cancel: list[Callable] = []
        self._finished_ok.connect(lambda: [cb(self.result) for cb in self._on_done])
        self._failed.connect(lambda msg: [cb(msg) for cb in self._on_error])
        self._progress.connect(lambda f, t: [cb(None if f < 0 else f, t) for cb in self._on_progress])
        self._cancelled.connect(lambda: [cb() for cb in self._on_cancel])
        self.finished.connect(self._forget)

    def start(self, *a) -> None:  # noqa: D401 - keeps the QThread signature
        Worker._alive.add(self)
        self.state = "running"
        super().start(*a)

    def _forget(self) -> None:
        Worker._alive.discard(self)

    @classmethod
    def shutdown_all(cls, timeout_s: float = 10.0) -> list["Worker"]:
        """Cancel every running worker and wait for them (a QThread destroyed while running aborts the
        process). Returns the workers that finished in time."""
        running = [w for w in list(cls._alive) if w.isRunning()]
        for w in running:
            w.cancel()
        deadline = time.monotonic() + timeout_s
        done = []
        for w in running:
            if w.wait(max(0, int((deadline - time.monotonic()) * 1000))):
                done.append(w)
        return done

    def cancel(self) -> None:
        self._cancel = True

    @property
    def is_cancelled(self) -> bool:
        return self._cancel

    def report(self, fraction: float | None = None, text: str = "") -> None:
        if self._cancel:
            raise Cancelled()
        self._progress.emit(-1.0 if fraction is None else float(fraction), str(text))

    def callback(self, text: str = "") -> Callable:
        """A progress callback for library functions: accepts (done, total, ...), (fraction,) or (fraction, text)."""
        def cb(*a, **_kw):
            frac, msg = None, text
            if len(a) >= 2 and isinstance(a[0], (int, float)) and isinstance(a[1], (int, float)) and a[1]:
                frac, msg = float(a[0]) / float(a[1]), f"{text} {a[0]}/{a[1]}".strip()
            elif len(a) >= 1 and isinstance(a[0], (int, float)):
                frac = float(a[0])
                if len(a) >= 2 and isinstance(a[1], str):
                    msg = a[1]
            elif len(a) >= 1 and isinstance(a[0], str):
                msg = a[0]
            self.report(frac, msg)
        return cb

    def run(self) -> None:
        try:
            self.result = self.fn(self, *self.args, **self.kwargs)
        except Cancelled:
            self.state = "cancelled"
            self._cancelled.emit()
        except Exception as e:  # every failure becomes a readable message in the UI
            traceback.print_exc()
            msg = str(e) or type(e).__name__
            self.error = msg if type(e).__name__ in msg or isinstance(e, (RuntimeError, OSError, ValueError)) \
                else f"{type(e).__name__}: {msg}"
            self.state = "failed"
            self._failed.emit(self.error)
        else:
            self.state = "done"
            self._finished_ok.emit()


def run_in_thread(fn: Callable, *args, on_done=None, on_error=None, on_progress=None, on_cancel=None,
                  **kwargs) -> Worker:
    """Start a Worker with the given callbacks (called on the UI thread) and return it."""
    w = Worker(fn, *args, **kwargs)
    for lst, cb in ((w._on_done, on_done), (w._on_error, on_error), (w._on_progress, on_progress),
                    (w._on_cancel, on_cancel)):
        if cb:
            lst.append(cb)
    w.start()
    return w


class ScrollTabs(QTabWidget):
    """A QTabWidget whose pages scroll when the window is narrower (or lower) than a page's layout,
    so the window fits a 1280x720 screen and the e-stop bar above it stays on screen. It speaks in
    pages: currentWidget() / setCurrentWidget() / widget(i) are the pages, not their scroll areas."""

    def addTab(self, page: QWidget, label: str) -> int:
        area = QScrollArea()
        area.setWidget(page)
        area.setWidgetResizable(True)            # the page fills the area when it fits, scrolls when not
        area.setFrameShape(QFrame.Shape.NoFrame)
        return super().addTab(area, label)

    def widget(self, index: int) -> QWidget | None:
        area = super().widget(index)
        return area.widget() if isinstance(area, QScrollArea) else area

    def currentWidget(self) -> QWidget | None:
        return self.widget(self.currentIndex())

    def setCurrentWidget(self, page: QWidget) -> None:
        for i in range(self.count()):
            if self.widget(i) is page:
                self.setCurrentIndex(i)
                return


_pg_scheduled = False


def preload_pyqtgraph() -> None:
    """Import pyqtgraph once the live view is up (0.15-1 s, once), so app start and the first camera
    frame never wait for it. The import runs on the GUI thread, from the event loop: pyqtgraph's import
    copies every PySide6 attribute, and doing that on a background thread while the GUI thread runs Qt
    segfaulted the app (CI, PySide6 6.11). The control loop lives in the control process; this pause
    is far below the window's hang limit."""
    global _pg_scheduled
    if not _pg_scheduled and "pyqtgraph" not in sys.modules:
        _pg_scheduled = True
        QTimer.singleShot(0, lambda: __import__("pyqtgraph"))


def pyqtgraph_ready() -> bool:
    return "pyqtgraph" in sys.modules


def to_qimage(img: np.ndarray) -> QImage:
    """Wrap an RGB uint8 HxWx3 (or gray HxW) array as a QImage without copying the pixels.

    The QImage points into `img`; the caller keeps `img` alive as long as the QImage (ImageView does).
    """
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        if img.strides[1] != 1:
            img = np.ascontiguousarray(img)
        h, w = img.shape
        return QImage(img.data, w, h, img.strides[0], QImage.Format.Format_Grayscale8)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected HxWx3 RGB image, got shape {img.shape}")
    if img.strides[1] != img.shape[2] or img.strides[2] != 1:
        img = np.ascontiguousarray(img)
    h, w, c = img.shape
    fmt = QImage.Format.Format_RGB888 if c == 3 else QImage.Format.Format_RGBA8888
    return QImage(img.data, w, h, img.strides[0], fmt)


class ImageView(QWidget):
    """Paints the latest image scaled to fit (aspect kept), with a caption and a corner note.

    Painting scales straight from the numpy buffer: no QPixmap conversion, no per-frame copy.
    """

    def __init__(self, title: str = "", parent=None):
        super().__init__(parent)
        self.title = title
        self._img: np.ndarray | None = None
        self._qimg: QImage | None = None
        self.note = ""
        self.note_color = QColor("#dddddd")
        self.placeholder = "no image"
        self.frames_shown = 0
        self.overlay = ""                   # big centred text (countdown, E-STOP)
        self.overlay_color = QColor("#ffffff")
        self.border: QColor | None = None   # e.g. red while recording
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(320, 320)

    def set_image(self, img: np.ndarray | None) -> None:
        if img is None:
            self._img = self._qimg = None
        else:
            self._img = img
            self._qimg = to_qimage(img)
            self.frames_shown += 1
        self.update()

    def set_note(self, text: str, color: str = "#dddddd") -> None:
        if text != self.note:
            self.note, self.note_color = text, QColor(color)
            self.update()

    def set_overlay(self, text: str, color: str = "#ffffff", border: str | None = None) -> None:
        current = (self.overlay, self.overlay_color.name(), self.border.name() if self.border else None)
        if (text, QColor(color).name(), QColor(border).name() if border else None) != current:
            self.overlay, self.overlay_color = text, QColor(color)
            self.border = QColor(border) if border else None
            self.update()

    def has_image(self) -> bool:
        return self._qimg is not None

    def paintEvent(self, _ev) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#1e1f22"))
        r = self.rect().adjusted(2, 2, -2, -2)
        if self._qimg is not None:
            iw, ih = self._qimg.width(), self._qimg.height()
            s = min(r.width() / iw, r.height() / ih)
            w, h = iw * s, ih * s
            target = QRectF(r.x() + (r.width() - w) / 2, r.y() + (r.height() - h) / 2, w, h)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, s < 3)
            p.drawImage(target, self._qimg)
        else:
            p.setPen(QColor("#888888"))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, self.placeholder)
        f = QFont(self.font())
        f.setBold(True)
        p.setFont(f)
        fm = p.fontMetrics()
        for text, color, top in ((self.title, QColor("#ffffff"), True), (self.note, self.note_color, False)):
            if not text:
                continue
            tw = fm.horizontalAdvance(text) + 10
            box = QRectF(r.x() + 4, r.y() + 4 if top else r.bottom() - fm.height() - 8, tw, fm.height() + 4)
            p.fillRect(box, QColor(0, 0, 0, 160))
            p.setPen(color)
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        if self.border is not None:
            p.setPen(QPen(self.border, 4))
            p.drawRect(self.rect().adjusted(2, 2, -2, -2))
        if self.overlay:
            big = QFont(self.font())
            big.setBold(True)
            big.setPixelSize(max(16, min(self.width(), self.height()) // 5))
            p.setFont(big)
            p.setPen(QColor(0, 0, 0, 180))
            p.drawText(self.rect().translated(2, 2), Qt.AlignmentFlag.AlignCenter, self.overlay)
            p.setPen(self.overlay_color)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.overlay)
        p.end()


class StatusLight(QLabel):
    """A coloured dot plus text: ok (green), warn (amber), error (red), off (grey)."""
    COLORS = {"ok": "#2ecc71", "warn": "#f39c12", "error": "#e74c3c", "off": "#7f8c8d"}

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.name = name
        self.state = "off"
        self.detail = ""
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.set("off", "not connected")

    def set(self, state: str, detail: str = "") -> None:
        if (state, detail) == (self.state, self.detail) and self.text():
            return
        self.state, self.detail = state, detail
        c = self.COLORS.get(state, self.COLORS["off"])
        self.setText(f"<span style='color:{c}; font-size:16px'>&#9679;</span> <b>{self.name}</b>: "
                     f"<span style='color:{'#c0392b' if state == 'error' else 'palette(text)'}'>{detail}</span>")
        self.setToolTip(detail)


def set_style(widget, css: str) -> None:
    """setStyleSheet only when it changes: restyling re-polishes the widget, which is not free at 30 Hz."""
    if widget.property("_css") != css:
        widget.setProperty("_css", css)
        widget.setStyleSheet(css)


def sim_verdict(st) -> str:
    """The sim's verdict for a status line: what it judges and whether it is done; in orange when the sim judges
    another instruction than the one given (a wording of another task it does not recognise)."""
    if st.sim_success is None:
        return ""
    def norm(text: str) -> str:
        return " ".join(text.lower().split()).rstrip(".!")
    other = bool(st.instruction.strip()) and norm(st.sim_task) != norm(st.instruction)
    judged = f"sim judges '{st.sim_task}'"
    if other:
        judged = f"<span style='color:#e67e22'>{judged}</span>"
    return f"{judged}: {'done ✔' if st.sim_success else 'not done'}"


def fmt_age(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.1f} s"


class RateMeter:
    """Counts events and reports the rate over the last ~second (for display fps)."""

    def __init__(self, window: float = 1.0):
        self.window = window
        self._times: list[float] = []

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        cut = now - self.window
        while self._times and self._times[0] < cut:
            self._times.pop(0)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        recent = [t for t in self._times if t >= now - self.window]
        return len(recent) / self.window


def dark_plot(bottom: str, left: str | None = None):
    """A pyqtgraph plot in the app's dark style (imported lazily: pyqtgraph loads in the background)."""
    import pyqtgraph as pg
    plot = pg.PlotWidget()
    plot.setBackground("#1e1f22")
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.setLabel("bottom", bottom)
    if left:
        plot.setLabel("left", left)
    return plot


class GuiGarbageCollector(QObject):
    """Python's cyclic garbage collector on the GUI thread only, while a window is open.

    Automatic collection runs in whichever thread allocates: a camera, policy or in-process control
    loop thread could then finalize Qt objects, and PySide deadlocks there (~QObject waits for the GIL
    while the GUI thread holds it and waits for Qt's connection mutex; seen as a hung test run). So,
    as pyqtgraph's GarbageCollector does, automatic collection is off and this timer collects the
    generation CPython would have chosen; control loops in this process leave it alone
    (teleop_app.loop.GarbageCollector.external). Windows share one; the last to close restores things."""

    _users = 0
    _instance: "GuiGarbageCollector | None" = None
    _was_enabled = True

    def __init__(self, interval_ms: int = 200):
        super().__init__()
        self.collections = [0, 0, 0]
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.check)
        self.timer.start(interval_ms)

    @classmethod
    def acquire(cls) -> "GuiGarbageCollector":
        from teleop_app.loop import GarbageCollector
        if cls._users == 0:
            # a running control loop that had turned automatic collection off counts as "on": once it and
            # every window have stopped, automatic collection comes back
            cls._was_enabled = gc.isenabled() or GarbageCollector.owners > 0
            GarbageCollector.external = True
            gc.disable()
            cls._instance = cls()
        cls._users += 1
        return cls._instance

    @classmethod
    def release(cls) -> None:
        from teleop_app.loop import GarbageCollector
        if cls._users == 0:
            return
        cls._users -= 1
        if cls._users == 0:
            cls._instance.timer.stop()
            cls._instance.check()
            cls._instance = None
            GarbageCollector.external = False
            if cls._was_enabled and GarbageCollector.owners == 0:    # (a loop still running keeps owning it)
                gc.enable()

    def check(self) -> None:
        from teleop_app.loop import due_generation
        gen = due_generation()
        if gen >= 0:
            gc.collect(gen)
            self.collections[gen] += 1
