"""Cameras: OpenCV devices (V4L2 on Linux) and video files / image sequences.

Every camera runs one grabber thread that keeps ONLY the newest frame (RGB uint8) with the
`time.monotonic()` taken right after the grab and a running frame index, so a slow
consumer skips frames (visible as index jumps) instead of reading stale ones or growing a
queue. A device that stops delivering for longer than `lost_after_ms` goes to status
"lost" (with `last_error`), and the thread keeps trying to reopen it with backoff; when it
comes back, status returns to "connected" by itself.
"""
from __future__ import annotations

import glob as _glob
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from drivers.interfaces import DeviceError, DeviceNotConnected, Frame

try:  # OpenCV prints a WARN line per failed open; our errors say it better.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:
    pass

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class _GrabberCamera:
    """Shared latest-frame grabber thread, lost-device detection and reconnect."""

    name: str
    width: int
    height: int
    fps: float

    def __init__(self, name: str, lost_after_ms: float, backoff: tuple[float, float]):
        self.name = name
        self.lost_after_ms = lost_after_ms
        self.backoff = backoff
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._count = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._status = "disconnected"
        self.last_error: str | None = None

    # -- subclass hooks (called on the grabber thread after connect) ---------------
    def _open(self) -> None:
        """Open the source; raise DeviceError with a useful message on failure."""
        raise NotImplementedError

    def _read(self) -> tuple[np.ndarray | None, float]:
        """Next frame as (RGB image or None on failure, capture time)."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _what(self) -> str:
        return f"camera '{self.name}'"

    # -- public ---------------------------------------------------------------------
    @property
    def status(self) -> str:
        """"connected", "lost" (device vanished; reconnecting) or "disconnected"."""
        return self._status

    @property
    def is_connected(self) -> bool:
        return self._status == "connected"

    @property
    def frame_count(self) -> int:
        """Frames captured since connect()."""
        return self._count

    def _start(self) -> None:
        self._stop.clear()
        self._status = "connected"
        self.last_error = None
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        try:
            self._close()
        except Exception:
            pass
        self._status = "disconnected"
        with self._cond:
            self._cond.notify_all()

    def read_latest(self) -> Frame | None:
        """Newest frame (never queued); None before the first one arrives."""
        if self._status == "disconnected" and self._latest is None:
            raise DeviceNotConnected(f"{self._what()} is not connected: call connect() first")
        return self._latest

    def wait_for_frame(self, after_index: int = -1, timeout: float = 1.0) -> Frame | None:
        """Block until a frame with index > after_index exists; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.index <= after_index:
                left = deadline - time.monotonic()
                if left <= 0 or self._status == "disconnected":
                    return None
                self._cond.wait(left)
            return self._latest

    def _publish(self, image: np.ndarray, ts: float) -> None:
        frame = Frame(image=image, timestamp=ts, index=self._count)
        with self._cond:
            self._latest = frame            # replaces; the old frame is dropped
            self._count += 1
            self._cond.notify_all()

    def _run(self) -> None:
        fail_since: float | None = None
        while not self._stop.is_set():
            if self._status == "lost":
                self._reconnect_loop()
                fail_since = None
                continue
            try:
                img, ts = self._read()
            except Exception as e:          # decoder hiccup etc.: treat as a failed read
                img, ts = None, time.monotonic()
                self.last_error = f"{self._what()}: read error: {e}"
            if img is not None:
                fail_since = None
                self._publish(img, ts)
                continue
            if self._stop.is_set():
                break
            if self._handle_end():
                continue
            now = time.monotonic()
            fail_since = fail_since or now
            if (now - fail_since) * 1000.0 > self.lost_after_ms:
                self._status = "lost"
                self.last_error = (f"{self._what()} stopped delivering frames for "
                                   f"{self.lost_after_ms:.0f} ms: unplugged? reconnecting...")
                try:
                    self._close()
                except Exception:
                    pass
            else:
                self._stop.wait(0.005)

    def _handle_end(self) -> bool:
        """Subclasses (files) may treat a failed read as end-of-stream. True = handled."""
        return False

    def _reconnect_loop(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                self._open()
            except Exception as e:
                self.last_error = f"{self._what()} lost; reconnect failed ({e}); retrying in {delay:.1f} s"
                self._stop.wait(delay)
                delay = min(delay * 2.0, self.backoff[1])
                continue
            self._status = "connected"
            self.last_error = None
            return


# ================================================================== OpenCV devices
@dataclass
class OpenCVCameraConfig:
    name: str
    device: int | str                   # index (V4L2 on Linux), /dev/videoN, or URL
    width: int = 640
    height: int = 480
    fps: float = 30.0
    fourcc: str | None = "MJPG"         # None = leave the camera's format alone
    lost_after_ms: float = 500.0
    reconnect_backoff: tuple[float, float] = (0.2, 5.0)
    first_frame_timeout: float = 3.0


def _fourcc_str(v: float) -> str:
    i = int(v)
    return "".join(chr((i >> (8 * k)) & 0xFF) for k in range(4)).strip("\x00")


class OpenCVCamera(_GrabberCamera):
    """A UVC/V4L2 camera through cv2.VideoCapture, settings verified at connect()."""

    def __init__(self, config: OpenCVCameraConfig | None = None, **kwargs):
        """OpenCVCamera(OpenCVCameraConfig(...)) or OpenCVCamera(name=..., device=..., ...)."""
        config = config or OpenCVCameraConfig(**kwargs)
        super().__init__(config.name, config.lost_after_ms, config.reconnect_backoff)
        self.config = config
        self.width, self.height, self.fps = config.width, config.height, float(config.fps)
        self._cap: cv2.VideoCapture | None = None

    def _what(self) -> str:
        return f"camera '{self.name}' (device {self.config.device})"

    def connect(self) -> None:
        """Open, apply format/size/fps, verify them and the first frame; start grabbing."""
        if self.is_connected:
            return
        self._open()
        self._start()
        if self.wait_for_frame(timeout=self.config.first_frame_timeout) is None:
            err = self.last_error
            self.disconnect()
            raise DeviceError(f"{self._what()} opened but sent no frame within "
                              f"{self.config.first_frame_timeout:.0f} s ({err or 'no error'}); "
                              "is another program using it?")

    def _open(self) -> None:
        cfg = self.config
        dev = cfg.device
        if isinstance(dev, str) and dev.startswith("/dev/") and not os.path.exists(dev):
            raise DeviceError(f"{self._what()} not found: plugged in? `teleop devices` lists cameras")
        if isinstance(dev, int) and sys.platform.startswith("linux"):
            if not os.path.exists(f"/dev/video{dev}"):
                raise DeviceError(f"{self._what()} not found: plugged in? `teleop devices` lists cameras")
            cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(dev)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"{self._what()} not found or busy: plugged in? used by another "
                              "program? `teleop devices` lists cameras")
        if cfg.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)        # do not let the driver queue old frames
        got_w, got_h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        got_fps = float(cap.get(cv2.CAP_PROP_FPS))
        got_cc = _fourcc_str(cap.get(cv2.CAP_PROP_FOURCC))
        problems = []
        if (got_w, got_h) != (cfg.width, cfg.height):
            problems.append(f"size {got_w}x{got_h} instead of {cfg.width}x{cfg.height}")
        if got_fps > 0 and abs(got_fps - cfg.fps) > 0.5:   # 0 = driver cannot tell
            problems.append(f"{got_fps:g} fps instead of {cfg.fps:g}")
        if cfg.fourcc and got_cc and got_cc != cfg.fourcc:
            problems.append(f"format {got_cc!r} instead of {cfg.fourcc!r}")
        if problems:
            cap.release()
            raise DeviceError(f"{self._what()} does not support the requested mode: got "
                              + ", ".join(problems)
                              + "; pick a mode it supports (`teleop devices` lists them)")
        self._cap = cap

    def _read(self) -> tuple[np.ndarray | None, float]:
        cap = self._cap
        if cap is None or not cap.grab():
            return None, time.monotonic()
        ts = time.monotonic()                      # right after the sensor frame arrived
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
            return None, ts
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ts

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


# ================================================================== files
@dataclass
class FileCameraConfig:
    name: str
    path: str                   # video file, folder of images, or glob ("frames/*.png")
    fps: float | None = None    # None: the video's own fps (images: 30)
    loop: bool = False
    width: int | None = None    # resize frames to width x height (None: keep the file's size)
    height: int | None = None
    lost_after_ms: float = 500.0
    reconnect_backoff: tuple[float, float] = (0.2, 5.0)


class FileCamera(_GrabberCamera):
    """Plays a video file or an image sequence in real time, like a camera.

    At the end without `loop`, the last frame stays available and `ended` becomes True.
    """

    def __init__(self, config: FileCameraConfig | None = None, **kwargs):
        """FileCamera(FileCameraConfig(...)) or FileCamera(name=..., path=..., fps=...)."""
        config = config or FileCameraConfig(**kwargs)
        super().__init__(config.name, config.lost_after_ms, config.reconnect_backoff)
        self.config = config
        self.width = self.height = 0
        self.fps = float(config.fps or 0.0)
        self._cap: cv2.VideoCapture | None = None
        self._files: list[str] | None = None
        self._pos = 0
        self._t0 = 0.0
        self._n = 0                              # frames delivered since (re)open
        self._ended = threading.Event()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def _what(self) -> str:
        return f"camera '{self.name}' (file {self.config.path})"

    def connect(self) -> None:
        if self.is_connected:
            return
        self._open()
        self._start()

    def _list_images(self, path: str) -> list[str] | None:
        p = Path(path)
        if p.is_dir():
            return sorted(str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if any(c in path for c in "*?["):
            return sorted(f for f in _glob.glob(path) if Path(f).suffix.lower() in IMAGE_EXTS)
        return None

    def _open(self) -> None:
        path = self.config.path
        files = self._list_images(path)
        if files is not None:
            if not files:
                raise DeviceError(f"{self._what()}: no images ({', '.join(IMAGE_EXTS)}) found there")
            first = cv2.imread(files[0], cv2.IMREAD_COLOR)
            if first is None:
                raise DeviceError(f"{self._what()}: cannot read image {files[0]}")
            self._files, self._cap = files, None
            self.height, self.width = first.shape[:2]
            self._src_size = (self.width, self.height)
            self.fps = float(self.config.fps or 30.0)
        else:
            if not os.path.exists(path):
                raise DeviceError(f"{self._what()} not found: check the path")
            cap = cv2.VideoCapture(path)
            if not cap.isOpened():
                cap.release()
                raise DeviceError(f"{self._what()}: OpenCV cannot open it as a video "
                                  "(unsupported or corrupt file)")
            self._cap, self._files = cap, None
            self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            self._src_size = (self.width, self.height)
            self.fps = float(self.config.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0)
        if self.config.width and self.config.height:
            self.width, self.height = self.config.width, self.config.height
        self._pos = 0
        self._n = 0
        self._t0 = time.monotonic()
        self._ended.clear()

    def _read(self) -> tuple[np.ndarray | None, float]:
        if self._ended.is_set():
            self._stop.wait(0.05)
            return None, time.monotonic()
        # Pace to real time: frame n is due at t0 + n / fps.
        due = self._t0 + self._n / self.fps
        delay = due - time.monotonic()
        if delay > 0 and self._stop.wait(delay):
            return None, time.monotonic()
        if self._files is not None:
            if self._pos >= len(self._files):
                return None, time.monotonic()
            bgr = cv2.imread(self._files[self._pos], cv2.IMREAD_COLOR)
            ts = time.monotonic()
            if bgr is None:
                return None, ts
        else:
            if self._cap is None:
                return None, time.monotonic()
            ok, bgr = self._cap.read()
            ts = time.monotonic()
            if not ok:
                return None, ts
        self._pos += 1
        self._n += 1
        if (bgr.shape[1], bgr.shape[0]) != (self.width, self.height):
            bgr = cv2.resize(bgr, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ts

    def _at_end(self) -> bool:
        if self._files is not None:
            return self._pos >= len(self._files)
        # A video read that fails while the file is still there is its end (frame counts
        # in containers are often approximate, so they are not trusted).
        return self._cap is not None and os.path.exists(self.config.path)

    def _handle_end(self) -> bool:
        if self._ended.is_set():
            return True
        if not self._at_end():
            return False                         # a real read failure (file vanished...)
        if self.config.loop and self._pos > 0:
            self._pos = 0
            if self._cap is not None:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            return True
        self._ended.set()
        return True

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


# ================================================================== from a profile
def parse_device(device: int | str) -> int | str:
    """"0" -> 0 (an index); "/dev/video2", paths and URLs stay strings."""
    if isinstance(device, int):
        return device
    d = str(device).strip()
    return int(d) if d.isdigit() else d


def camera_from_spec(spec, **overrides) -> "OpenCVCamera | FileCamera":
    """Build a camera from anything with name/kind/device/width/height/fps attributes
    (teleop_app.profiles.CameraSpec); kind "opencv" or "file". Extra keyword arguments
    go to the config (e.g. loop=True, fourcc=None)."""
    kind = getattr(spec, "kind", "opencv")
    if kind == "opencv":
        if spec.device == "":
            raise DeviceError(f"camera '{spec.name}': no device set in the profile "
                              "(an index like 0 or /dev/videoN; `teleop devices` lists cameras)")
        return OpenCVCamera(OpenCVCameraConfig(name=spec.name, device=parse_device(spec.device),
                                               width=spec.width, height=spec.height,
                                               fps=float(spec.fps), **overrides))
    if kind == "file":
        return FileCamera(FileCameraConfig(name=spec.name, path=str(spec.device),
                                           fps=float(spec.fps) if spec.fps else None,
                                           width=spec.width, height=spec.height, **overrides))
    raise DeviceError(f"camera '{spec.name}': kind {kind!r} is not an OpenCV/file camera "
                      "(sim cameras come from the simulated workcell)")


# ================================================================== listing
def _v4l2_name(index: int) -> str:
    try:
        return Path(f"/sys/class/video4linux/video{index}/name").read_text().strip()
    except OSError:
        return ""


def list_cameras(max_index: int = 10) -> list[dict]:
    """Cameras that can capture, for the UI: [{index, path, name, width, height, fps}].

    Linux probes /dev/video* (metadata-only nodes that cannot capture are skipped);
    elsewhere indices 0..max_index-1 are tried. Returns [] when there is none.
    """
    if sys.platform.startswith("linux"):
        nodes = [_video_index(p) for p in _glob.glob("/dev/video*")]
        candidates = sorted(i for i in nodes if i is not None and i < max_index)
        api = cv2.CAP_V4L2
    else:
        candidates, api = list(range(max_index)), cv2.CAP_ANY
    out = []
    for i in candidates:
        cap = cv2.VideoCapture(i, api)
        try:
            if not cap.isOpened() or not cap.grab():
                continue
            out.append({"index": i, "path": f"/dev/video{i}" if api == cv2.CAP_V4L2 else str(i),
                        "name": _v4l2_name(i) or f"camera {i}",
                        "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                        "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                        "fps": float(cap.get(cv2.CAP_PROP_FPS))})
        finally:
            cap.release()
    return out


def _video_index(path: str) -> int | None:
    digits = path.rsplit("video", 1)[-1]
    return int(digits) if digits.isdigit() else None
