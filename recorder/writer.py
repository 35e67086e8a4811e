"""Crash-safe episode writer: the control loop hands steps over, a background thread writes them.

Files while recording:  <name>.h5.partial  (HDF5, flushed + fsynced every flush_interval_s)
                        <name>.h5.journal  (append-only log of the same steps, fsynced likewise)
finish():  final attrs -> close -> fsync -> atomic rename to <name>.h5 -> delete the journal.
A crash leaves .partial + .journal; EpisodeStore.open()/recover() rebuilds <name>.h5 from them.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from . import schema as S
from .fsutil import fsync_dir
from .h5sink import H5Sink
from .h5proc import SinkProcess
from .journal import JournalHeader, JournalWriter, Step, pack_run, pack_step

log = logging.getLogger(__name__)

_STOP = object()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 HxWx3 -> JPEG bytes (OpenCV wants BGR; cv2 releases the GIL while encoding)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise S.RecorderError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes | np.ndarray) -> np.ndarray:
    arr = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    bgr = cv2.imdecode(arr, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("undecodable JPEG frame")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _disk_message(e: OSError, path: Path, step: int) -> str:
    if e.errno == errno.EROFS or "Read-only file system" in str(e) or "errno = 30" in str(e):
        what = "destination became read-only"      # (checked first: a read-only disk may also be nearly full)
    elif e.errno == errno.ENOSPC or "No space" in str(e) or "errno = 28" in str(e) or _nearly_full(path):
        what = "disk full"
    else:
        what = f"write failed ({e})"
    return f"{what} while recording {path.name} (at step {step}): recording stopped."


class EpisodeWriter:
    """Write one episode. add_step() never waits on the disk; finish() makes the file final.

    cameras maps camera name -> (height, width). Images passed to add_step must be RGB uint8
    (height, width, 3) and must not be modified by the caller afterwards (they are queued by
    reference, not copied, to keep add_step cheap).
    """

    def __init__(self, path: str | os.PathLike, meta: S.EpisodeMeta, cameras: dict[str, tuple[int, int]],
                 dof: int, jpeg: bool = True, jpeg_quality: int = 90, flush_interval_s: float = 0.5,
                 max_queue_s: float = 3.0, hdf5_process: bool = True,
                 thread_init: Callable[[], None] | None = None):
        meta.check()
        self.path = Path(path)
        if self.path.suffix != S.SUFFIX:
            raise S.RecorderError(f"episode path must end in {S.SUFFIX}: {self.path}")
        if len(meta.joint_names) != dof:
            raise S.RecorderError(f"joint_names has {len(meta.joint_names)} names but dof={dof}")
        for cam, hw in cameras.items():
            if "/" in cam or not cam:
                raise S.RecorderError(f"bad camera name {cam!r} (no '/' allowed)")
            if len(hw) != 2 or min(hw) <= 0:
                raise S.RecorderError(f"camera {cam}: size must be (height, width), got {hw!r}")
        self.meta = meta
        self.cameras = {k: (int(v[0]), int(v[1])) for k, v in cameras.items()}
        self.dof = int(dof)
        self.jpeg = bool(jpeg)
        self.jpeg_quality = int(jpeg_quality)
        self.flush_interval_s = float(flush_interval_s)
        # Runs first in the writer thread and in every JPEG encoder thread, as each starts (encoders
        # start lazily, at the first frames). Default: nice +10. A control process passes its helper
        # scheduling class instead, so no encoder ever holds the GIL at nice +10 next to its loop
        # (faulthandler caught one, started mid-episode and not yet promoted, beside a 20 ms late tick).
        self._thread_init = thread_init or _lower_priority
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.journal_path = self.path.with_name(self.path.name + ".journal")

        self.error: str | None = None
        self.warning: str | None = None
        self.dropped = 0          # steps refused because the writer fell behind (reported, counted)
        self.num_steps = 0        # steps accepted by add_step
        self.written_steps = 0    # steps durably handed to the OS by the writer thread
        self.max_lag_s = 0.0      # worst age of a step when the writer picked it up
        self._finished = False
        self._last_images: dict[str, Any] = {}
        self._last_image_ts: dict[str, float] = {}
        self._warned_at = 0.0
        self._cam_order = list(self.cameras)
        self._salvaged = False
        self._runs: dict[str, list] = {}   # per-step intervention / source, run-length

        if self.path.exists():
            raise S.RecorderError(f"episode file already exists, refusing to overwrite: {self.path}")
        attrs = meta.to_attrs()
        if not attrs["start_time"]:
            attrs["start_time"] = datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")
        if not attrs["software_version"]:
            attrs["software_version"] = S.software_version()
        attrs["start_monotonic"] = time.monotonic()
        self.attrs = attrs
        # Create both files now, synchronously: a read-only or missing destination fails here
        # with a clear message instead of after the operator has demonstrated a whole episode.
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self._sink = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = JournalHeader(attrs, self.cameras, self.dof, self.jpeg)
            self._journal = JournalWriter(self.journal_path, header)
            self._make_reserve()
            self._sink = self._start_sink(header, hdf5_process)
        except OSError as e:
            self._emergency_close()
            self._cleanup_files()
            if getattr(e, "errno", None) == errno.EROFS:
                reason = "read-only file system"
            elif getattr(e, "errno", None) == errno.ENOSPC:
                reason = "disk full (not enough free space to start an episode)"
            else:
                reason = str(e)
            raise S.RecorderError(f"cannot create episode file in {self.path.parent}: {reason}. "
                                  f"Choose a writable data folder.") from e

        qsize = max(16, int(math.ceil(float(meta.fps) * max_queue_s)))
        self._q: queue.Queue = queue.Queue(maxsize=qsize)
        workers = max(1, min(len(self.cameras), max(2, (os.cpu_count() or 2) - 1), 4))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jpeg",
                                        initializer=self._thread_init) if self.jpeg and self.cameras else None
        self._thread = threading.Thread(target=self._run, name=f"EpisodeWriter-{self.path.stem}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control-loop side
    def add_step(self, qpos, action, action_raw=None, *, timestamp: float,
                 images: dict[str, np.ndarray] | None = None,
                 image_timestamps: dict[str, float] | None = None, qvel=None,
                 intervention: bool | None = None, source: str | None = None) -> None:
        """Queue one step (observation t and the action sent from it). Never blocks.
        `intervention` / `source` (optional): the operator overrode an autonomous source on this step /
        which command source produced the action; stored as run-length attrs (schema.INTERVENTION).

        If the writer is more than ~max_queue_s behind, the step is refused, counted in .dropped
        and .warning is set (never silent). After a disk error (.error set) steps are ignored.
        """
        if self._finished:
            raise S.RecorderError("add_step after finish()/abort()")
        if self.error is not None:
            return
        qpos = np.asarray(qpos, dtype=np.float32).reshape(-1).copy()
        action = np.asarray(action, dtype=np.float32).reshape(-1).copy()
        action_raw = action.copy() if action_raw is None else np.asarray(action_raw, np.float32).reshape(-1).copy()
        qv = None if qvel is None else np.asarray(qvel, np.float32).reshape(-1).copy()
        for name, v in (("qpos", qpos), ("action", action), ("action_raw", action_raw), ("qvel", qv)):
            if v is not None and v.shape[0] != self.dof:
                raise S.RecorderError(f"{name} has {v.shape[0]} values, episode dof is {self.dof}")
        images = images or {}
        image_timestamps = image_timestamps or {}
        for cam, img in images.items():
            if cam not in self.cameras:
                raise S.RecorderError(f"unknown camera {cam!r}; episode cameras: {list(self.cameras)}")
            h, w = self.cameras[cam]
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise S.RecorderError(f"camera {cam}: image {img.shape} {img.dtype}, expected ({h}, {w}, 3) uint8 RGB")
        runs = []               # label runs that start at this step (journaled with it)
        for key, value in ((S.INTERVENTION, None if intervention is None else bool(intervention)),
                           (S.ACTION_SOURCE, None if source is None else str(source))):
            if value is not None:
                r = self._runs.get(key)
                if not r or r[-1][1] != value:
                    runs.append((key, value))
        item = (time.monotonic(), float(timestamp), qpos, action, action_raw, qv, dict(images),
                {c: float(image_timestamps.get(c, timestamp)) for c in images}, runs)
        try:
            self._q.put_nowait(item)
            for key, value in runs:
                S.step_runs(self._runs.setdefault(key, []), value, self.num_steps)
            self.num_steps += 1
        except queue.Full:
            self.dropped += 1
            self.warning = (f"recorder is falling behind the disk: {self.dropped} step(s) dropped so far "
                            f"(queue of {self._q.maxsize} steps full). Use fewer/smaller cameras or a faster disk.")
            now = time.monotonic()
            if now - self._warned_at > 1.0:
                self._warned_at = now
                log.warning(self.warning)

    @property
    def queue_depth(self) -> int:
        return self._q.qsize()

    @property
    def lag_s(self) -> float:
        """Age of the oldest step still waiting for the writer (0 if none)."""
        try:
            return max(0.0, time.monotonic() - self._q.queue[0][0])
        except (IndexError, AttributeError):
            return 0.0

    def finish(self, success: int = -1) -> Path:
        """Drain, close and atomically publish <name>.h5. Returns its path.

        After a disk error (.error set) the steps written so far were already published as a
        truncated episode (attr truncated=True, success=-1): finish() returns that path and .error
        keeps the message. Only if nothing could be published does it raise RecorderError (the
        written part then stays in .partial/.journal for EpisodeStore.recover())."""
        if self._finished:
            raise S.RecorderError("finish() called twice")
        if success not in (1, 0, -1):
            raise S.RecorderError(f"success must be 1, 0 or -1 (unknown), got {success!r}")
        self._finished = True
        self._success = int(success)
        self._q.put(_STOP)
        self._thread.join()
        if self._pool:
            self._pool.shutdown(wait=False)
        if self.error:
            if self._salvaged:
                return self.path        # truncated episode was published; .error says why
            raise S.RecorderError(self.error)
        return self.path

    def abort(self, keep: bool = False) -> Path | None:
        """Stop recording. keep=False deletes everything; keep=True publishes the partial episode
        (success=-1, attr aborted=true) and returns its path."""
        if self._finished:
            return None
        self._finished = True
        self._success = -1
        self._abort_keep = keep
        if not keep:
            self._discard = True
        self._q.put(_STOP)
        self._thread.join()
        if self._pool:
            self._pool.shutdown(wait=False)
        if keep and not self.error and self.path.exists():
            return self.path
        return None

    def _start_sink(self, header: JournalHeader, hdf5_process: bool):
        """HDF5 writer: a child process (keeps h5py off this process's GIL), else in-thread."""
        if hdf5_process:
            try:
                return SinkProcess(self.partial_path, self.reserve_path, header, self.flush_interval_s)
            except OSError as e:   # cannot spawn (fd/process limits): degrade, but keep recording
                log.warning("HDF5 writer process unavailable (%s); writing HDF5 in-process", e)
        sink = H5Sink(self.partial_path, header.attrs, self.cameras, self.dof, self.jpeg)
        sink.flush(fsync=False)
        return sink

    def _make_reserve(self) -> None:
        """Pre-allocate some disk space that is released when the disk fills up, so the HDF5 library
        can still flush its caches and close the file cleanly (a failed HDF5 close can crash the
        process at exit). Size: 1 MB of metadata + per camera one raw frame (chunk cache), or for JPEG
        one flush interval of frames (JPEG bytes live in HDF5's metadata cache until the next flush),
        estimated at half the raw size per frame."""
        size = 1 << 20
        per_flush = max(1, int(math.ceil(float(self.meta.fps) * self.flush_interval_s)))
        for h, w in self.cameras.values():
            size += (h * w * 3 // 2) * per_flush if self.jpeg else h * w * 3
        fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except (AttributeError, OSError) as e:
                if getattr(e, "errno", None) == errno.ENOSPC:
                    raise
                os.write(fd, b"\0" * size)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writer thread
    def _prepare(self, items: list) -> list[Step]:
        """Encode images (in parallel) and fill missing camera frames with the previous one."""
        steps = []
        futures = []
        for (_, ts, qpos, action, raw, qv, images, img_ts, _runs) in items:
            st = Step(ts, qpos, action, raw, qv, {}, {})
            for cam in self.cameras:
                if cam in images:
                    img = images[cam]
                    st.image_ts[cam] = img_ts[cam]
                    if self._pool:
                        futures.append((st, cam, self._pool.submit(encode_jpeg, img, self.jpeg_quality)))
                    else:
                        st.images[cam] = img
                else:
                    st.images[cam] = None       # filled below: camera gave no new frame this tick
                    st.image_ts[cam] = None
            steps.append(st)
        for st, cam, fut in futures:
            st.images[cam] = fut.result()
        for st in steps:
            for cam, (h, w) in self.cameras.items():
                if st.images[cam] is None:
                    # Repeat the last frame with its OLD capture time, so the gap stays visible
                    # (validate reports it as a dropped frame) and no shape is ever missing.
                    if cam in self._last_images:
                        st.images[cam] = self._last_images[cam]
                        st.image_ts[cam] = self._last_image_ts[cam]
                    else:
                        blank = np.zeros((h, w, 3), np.uint8)
                        st.images[cam] = encode_jpeg(blank, self.jpeg_quality) if self.jpeg else blank
                        st.image_ts[cam] = float("nan")
                self._last_images[cam] = st.images[cam]
                self._last_image_ts[cam] = st.image_ts[cam]
        return steps

    def _run(self) -> None:
        self._thread_init()
        last_flush = time.monotonic()
        stop = False
        try:
            while not stop:
                items = []
                try:
                    timeout = max(0.0, self.flush_interval_s - (time.monotonic() - last_flush))
                    items.append(self._q.get(timeout=timeout))
                    # take whatever else is already waiting: one batch = one resize per dataset
                    while len(items) < 64:
                        items.append(self._q.get_nowait())
                except queue.Empty:
                    pass
                if items and items[-1] is _STOP:
                    items.pop()
                    stop = True
                if items and self.error is None and not getattr(self, "_discard", False):
                    now = time.monotonic()
                    self.max_lag_s = max(self.max_lag_s, now - items[0][0])
                    steps = self._prepare(items)
                    # journal first: if HDF5 then fails, the journal still has the batch
                    records = [pack_step(self.written_steps + k, st, self._cam_order)
                               for k, st in enumerate(steps)]
                    # a writer that fell behind takes a big batch: write the steps that fit, then stop
                    # (all-or-nothing would lose the whole batch to a disk that had room for part of it)
                    fit = self._steps_that_fit(records)
                    full = fit < len(records)
                    items, steps, records = items[:fit], steps[:fit], records[:fit]
                    for k, (item, rec) in enumerate(zip(items, records)):
                        for key, value in item[8]:      # who drives from this step on, then the step
                            self._journal.append_raw(pack_run(key, self.written_steps + k, value))
                        self._journal.append_raw(rec)
                    if steps:
                        self._sink.append(steps, records)
                    self.written_steps += len(steps)
                    self._check_space(full)
                if time.monotonic() - last_flush >= self.flush_interval_s and not stop:
                    self._sink.flush()
                    self._journal.sync()
                    last_flush = time.monotonic()
            self._close()
        except Exception as e:  # noqa: BLE001 - any failure must end the episode cleanly, with a message
            text = str(e).lower()
            if isinstance(e, OSError) or "errno" in text or "write" in text or "flush" in text:
                # h5py reports some disk failures as RuntimeError("Unable to flush raw data ...")
                self.error = _disk_message(e if isinstance(e, OSError) else OSError(str(e)),
                                           self.path, self.written_steps)
            else:
                self.error = f"recorder failed while writing {self.path.name}: {e!r}"
            log.error(self.error)
            # publish every complete step (or leave the files for recover()); after the writer's own early
            # stop the disk has room for every step already sent, so none is skipped
            self._salvage(budgeted=isinstance(e, _OutOfSpace))
            # keep draining so add_step never sees a full queue after the failure
            while True:
                try:
                    if self._q.get(timeout=0.2) is _STOP:
                        break
                except queue.Empty:
                    if self._finished:
                        break

    def _close(self) -> None:
        if getattr(self, "_discard", False):
            self._emergency_close()
            self._cleanup_files()
            return
        extra = {"aborted": True} if getattr(self, "_abort_keep", False) else None
        if self._runs:
            extra = dict(extra or {}, **S.runs_attrs(self._runs))
        self._sink.close(success=self._success, extra_attrs=extra)
        if isinstance(self._sink, H5Sink):      # (the child process fsyncs its own file)
            fd = os.open(self.partial_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(self.partial_path, self.path)
        fsync_dir(self.path.parent)
        self._journal.close()
        self.reserve_path.unlink(missing_ok=True)
        # Deleting a big journal can take ~0.2 s on ext4: rename it out of the way (instant) and
        # unlink in the background. A leftover *.journal.done is removed by EpisodeStore.recover().
        done = self.journal_path.with_name(self.journal_path.name + ".done")
        os.replace(self.journal_path, done)
        threading.Thread(target=done.unlink, kwargs={"missing_ok": True}, daemon=True,
                         name="journal-unlink").start()

    _CLOSE_MARGIN = 2 << 20     # bytes kept free to close an episode cleanly (besides the reserve file)

    def _steps_that_fit(self, records: list[bytes]) -> int:
        """How many of this batch's steps fit on the disk, each written twice (journal + HDF5), keeping
        the closing margin free."""
        room = shutil.disk_usage(self.path.parent).free - self._CLOSE_MARGIN
        for k, rec in enumerate(records):
            room -= 2 * len(rec)
            if room < 0:
                return k
        return len(records)

    def _check_space(self, full: bool = False) -> None:
        """Stop *before* the disk is full: keep room for one more batch (<= 0.5 s) of recording (journal + HDF5) plus 2 MB free, so
        the episode can always be closed cleanly. Raises OSError(ENOSPC) to end the episode; `full`: the
        last batch did not fit whole (its first steps were written)."""
        per_step = self._journal.bytes_written / max(1, self.written_steps)
        margin = self._CLOSE_MARGIN + int(2 * per_step * min(64.0, 0.5 * float(self.meta.fps)))
        free = shutil.disk_usage(self.path.parent).free
        if full or free < margin:
            raise _OutOfSpace(errno.ENOSPC, f"No space left on device (only {free / 1e6:.1f} MB free, "
                                        f"keeping {margin / 1e6:.1f} MB to close the episode)")

    def _salvage(self, budgeted: bool = False) -> None:
        """After a disk error: free the reserve, close the HDF5 cleanly with every step that reached
        the journal, publish it as <name>.h5 (attr truncated=True) and drop the journal. budgeted: the
        writer stopped itself with room left for every step it sent (a writer child still writes the
        steps queued in its pipe; after a real write error it skips them)."""
        if not isinstance(self._sink, SinkProcess):
            self.reserve_path.unlink(missing_ok=True)
        # (a writer child process frees the reserve itself, once nobody is writing any more)
        try:
            # steps only in the journal are not appended: that would eat the space just freed
            self._sink.trim()
            attrs = {"truncated": True, **S.runs_attrs(self._runs)}
            if isinstance(self._sink, SinkProcess):
                n = self._sink.close(success=-1, extra_attrs=attrs, skip_queued=not budgeted)
            else:
                n = self._sink.close(success=-1, extra_attrs=attrs)
            os.replace(self.partial_path, self.path)
            self._journal.close()
            self.journal_path.unlink(missing_ok=True)
            self.reserve_path.unlink(missing_ok=True)
            self.written_steps = n
            self._salvaged = True
            self.error += f" The first {n} steps were saved as {self.path.name} (success unknown)."
        except Exception as e2:  # noqa: BLE001 - leave partial+journal for EpisodeStore.recover()
            log.error("could not finalize %s after the disk error: %s", self.partial_path, e2, exc_info=True)
            fix = ("make the folder writable again" if "read-only" in (self.error or "") else "free space")
            self.error += (f" Steps written so far are kept in {self.path.name}.partial/.journal; {fix}, "
                           f"then reopen the episode store to recover them.")
            self._emergency_close()

    def _emergency_close(self) -> None:
        sink = self._sink
        closers = [getattr(self, "_journal", None) and self._journal.close]
        if isinstance(sink, SinkProcess):
            closers.append(sink.kill)
        elif sink is not None:
            closers.append(lambda: sink.f.close())
        for closer in closers:
            if not closer:
                continue
            try:
                closer()
            except Exception:  # noqa: BLE001 - best effort, the journal is the fallback
                pass

    def _cleanup_files(self) -> None:
        for p in (self.partial_path, self.journal_path, self.reserve_path):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass


class _OutOfSpace(OSError):
    """The writer stops itself before the disk is full (_check_space): the steps it sent have room."""


def _lower_priority() -> None:
    """Run this (writer/encoder) thread at nice +10: on a busy machine the control loop thread of
    the same process must win the CPU, the writer has seconds of queue to catch up."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _nearly_full(path: Path) -> bool:
    """h5py often reports ENOSPC as a generic 'can't write' error: check the free space instead."""
    try:
        return shutil.disk_usage(path.parent).free < 1024 * 1024
    except OSError:
        return False
