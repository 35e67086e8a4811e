"""Episode quality checks: cadence (was the loop on time?) and data problems."""
from __future__ import annotations

import hashlib

import numpy as np

from .reader import Episode

FROZEN_S = 1.0            # identical consecutive frames for longer than this = frozen camera...
FROZEN_MOTION = 1e-3      # ...while some joint moved more than this (rad)
STUCK_CMD_RANGE = 1e-3    # a joint commanded over more than this range...
STUCK_POS_RANGE = 1e-6    # ...whose measured position moved less than this is "stuck"


def cadence_report(ep: Episode) -> dict:
    """See cadence_from (this takes a read Episode)."""
    return cadence_from(ep.timestamp, ep.meta.fps, ep.image_timestamps)


def cadence_from(timestamp: np.ndarray, fps: float, image_timestamps: dict[str, np.ndarray]) -> dict:
    """Timing of the recorded loop.

    achieved_hz: mean step rate; p99_period_error_ms: 99th percentile of |period - 1/fps|;
    missed_ticks: ticks that should have happened in the gaps (period rounded to whole ticks - 1);
    max_frame_age_ms[cam]: worst (tick time - frame capture time); repeated_frames[cam]: steps whose
    camera frame was not new (same capture time as the step before); camera_hz[cam]: the camera's
    own rate (median interval of its distinct capture times); dropped_frames[cam]: frames the
    camera missed *at its own rate* (gaps between distinct capture times, in whole camera periods,
    minus one). A 30 fps camera in a 50 Hz loop repeats ~2 frames in 5 ticks and drops none."""
    ts = np.asarray(timestamp, np.float64)
    fps = float(fps)
    nominal = 1.0 / fps
    rep: dict = {"fps": fps, "num_steps": int(len(ts)), "duration_s": 0.0, "achieved_hz": 0.0,
                 "p99_period_error_ms": 0.0, "max_period_ms": 0.0, "missed_ticks": 0,
                 "max_frame_age_ms": {}, "repeated_frames": {}, "camera_hz": {}, "dropped_frames": {}}
    if len(ts) >= 2:
        per = np.diff(ts)
        good = per[np.isfinite(per)]
        dur = float(ts[-1] - ts[0])
        rep["duration_s"] = dur
        rep["achieved_hz"] = (len(ts) - 1) / dur if dur > 0 else 0.0
        if len(good):
            rep["p99_period_error_ms"] = float(np.percentile(np.abs(good - nominal), 99) * 1e3)
            rep["max_period_ms"] = float(good.max() * 1e3)
            rep["missed_ticks"] = int(np.maximum(np.rint(good / nominal) - 1, 0).sum())
    for cam, its in image_timestamps.items():
        its = np.asarray(its, np.float64)
        age = (ts - its)[np.isfinite(its)]
        rep["max_frame_age_ms"][cam] = float(age.max() * 1e3) if len(age) else float("nan")
        rep["repeated_frames"][cam] = int((np.diff(its) == 0).sum()) if len(its) > 1 else 0
        hz, dropped = _camera_rate(its, nominal)
        rep["camera_hz"][cam] = hz
        rep["dropped_frames"][cam] = dropped
    return rep


def _camera_rate(its: np.ndarray, loop_period: float) -> tuple[float, int]:
    """(camera rate in Hz, frames missed at that rate) from the per-step capture times."""
    u = its[np.isfinite(its)]
    if len(u) < 2:
        return 0.0, 0
    u = u[np.concatenate(([True], np.diff(u) != 0))]        # distinct frames, in recorded order
    gaps = np.diff(u)
    gaps = gaps[gaps > 0]
    if not len(gaps):
        return 0.0, 0
    # the camera cannot be seen faster than the loop samples it
    period = max(float(np.median(gaps)), loop_period * 0.999)
    dropped = int(np.maximum(np.rint(gaps / period) - 1, 0).sum())
    return 1.0 / period, dropped


def cadence_summary(ep: Episode | None = None, *, report: dict | None = None) -> dict:
    """Compact, JSON-able subset for the store index."""
    r = report if report is not None else cadence_report(ep)
    return {"achieved_hz": round(r["achieved_hz"], 3), "p99_period_error_ms": round(r["p99_period_error_ms"], 3),
            "missed_ticks": r["missed_ticks"],
            "max_frame_age_ms": {k: (round(v, 2) if np.isfinite(v) else None) for k, v in r["max_frame_age_ms"].items()}}


def _frame_keys(ep: Episode, cam: str) -> list[bytes]:
    """A cheap identity per stored frame (the JPEG bytes are deterministic per image)."""
    keys = []
    for i in range(ep.num_steps):
        v = ep.raw_frame(cam, i)
        b = v if isinstance(v, bytes) else np.ascontiguousarray(v).tobytes()
        keys.append(hashlib.blake2b(b, digest_size=16).digest())
    return keys


def validate_episode(ep: Episode, check_images: bool = True) -> list[str]:
    """Human-readable problems; empty list = looks fine."""
    problems: list[str] = []
    n = ep.num_steps
    if n == 0:
        return ["episode has no steps"]
    names = ep.meta.joint_names
    arrays = {"qpos": ep.qpos, "action": ep.action, "action_raw": ep.action_raw, "timestamp": ep.timestamp}
    if ep.qvel is not None:
        arrays["qvel"] = ep.qvel
    for name, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            rows = np.nonzero(bad.reshape(len(a), -1).any(axis=1))[0]
            problems.append(f"{name}: {int(bad.sum())} NaN/inf value(s) in {len(rows)} step(s), first at step {rows[0]}")
    ts = ep.timestamp
    d = np.diff(ts)
    if (d <= 0).any():
        i = int(np.nonzero(d <= 0)[0][0])
        problems.append(f"timestamps not increasing: {int((d <= 0).sum())} time(s), first at step {i + 1}")
    rep = cadence_report(ep)
    if rep["missed_ticks"]:
        problems.append(f"dropped steps: {rep['missed_ticks']} missed tick(s) at {ep.meta.fps:g} Hz "
                        f"(longest period {rep['max_period_ms']:.1f} ms)")
    for cam, its in ep.image_timestamps.items():
        nan = ~np.isfinite(its)
        if nan.any():
            problems.append(f"camera {cam}: no frame for {int(nan.sum())} step(s) (blank images)")
        di = np.diff(its[~nan])
        if (di < 0).any():
            problems.append(f"camera {cam}: frame timestamps go backwards {int((di < 0).sum())} time(s)")
        if rep["dropped_frames"].get(cam):
            problems.append(f"camera {cam}: {rep['dropped_frames'][cam]} dropped frame(s) at its own "
                            f"{rep['camera_hz'][cam]:.1f} Hz (no new frame when one was due)")
        if check_images and n > 1:
            keys = _frame_keys(ep, cam)
            run_start = 0
            worst = 0.0
            q = np.nan_to_num(ep.qpos)
            for i in range(1, n + 1):
                if i == n or keys[i] != keys[run_start]:
                    # frozen only if the arm moved meanwhile: a still scene (e.g. the simulated
                    # camera with the arm at rest) legitimately gives identical frames
                    if i - 1 > run_start and np.ptp(q[run_start:i], axis=0).max() > FROZEN_MOTION:
                        worst = max(worst, float(ts[i - 1] - ts[run_start]))
                    run_start = i
            if worst > FROZEN_S:
                problems.append(f"camera {cam}: frozen, identical frames for {worst:.1f} s")
    if n > 1:
        pos_range = np.ptp(ep.qpos, axis=0)
        cmd_range = np.ptp(ep.action, axis=0)
        for j in np.nonzero((pos_range < STUCK_POS_RANGE) & (cmd_range > STUCK_CMD_RANGE))[0]:
            nm = names[j] if j < len(names) else f"joint {j}"
            problems.append(f"joint {nm} stuck: commanded over {cmd_range[j]:.3g} but measured position never moved")
    return problems
