"""Rebuild an interrupted recording (<name>.h5.partial + <name>.h5.journal) into <name>.h5.

Source of truth is the journal (CRC-checked records, intact up to the crash point). If the journal
is missing or its header is broken, fall back to the .partial HDF5 trimmed to its last flush (read in
a child process, recorder.h5check: a damaged file can make the HDF5 library loop forever).
The result has attrs recovered=True and success=-1.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
from . import schema as S
from .h5check import salvage_partial
from .h5sink import H5Sink
from .journal import Step, is_locked, read_journal

log = logging.getLogger(__name__)


def pending(directory: Path) -> list[Path]:
    """Final paths (<name>.h5) of unfinished recordings in directory that nobody is writing."""
    out = set()
    for p in directory.glob("*.journal.done"):   # finished episodes' journals awaiting deletion
        p.unlink(missing_ok=True)
    for p in directory.iterdir():
        for suf in (S.PARTIAL_SUFFIX, S.JOURNAL_SUFFIX):
            if p.name.endswith(suf):
                out.add(p.with_name(p.name[: -len(suf)] + S.SUFFIX))
    result = []
    for final in sorted(out):
        journal = final.with_name(final.name + ".journal")
        if journal.exists() and is_locked(journal):
            continue  # a live recorder (this or another process) still owns it
        result.append(final)
    return result


def recover_episode(final: Path) -> Path | None:
    """Recover one interrupted episode; returns the new .h5 path, or None if nothing was salvageable
    (then the leftovers are moved aside to <name>.h5.unrecoverable-* so they are kept, not retried)."""
    final = Path(final)
    partial = final.with_name(final.name + ".partial")
    journal = final.with_name(final.name + ".journal")
    tmp = final.with_name(final.name + ".recovering")
    final.with_name(final.name + ".reserve").unlink(missing_ok=True)
    if final.exists():
        # finished file exists: the leftovers are stale (crash between rename and unlink)
        for p in (partial, journal):
            p.unlink(missing_ok=True)
        return None
    n = 0
    try:
        if journal.exists():
            n = _from_journal(journal, tmp)
    except (ValueError, OSError) as e:
        log.warning("journal %s unusable (%s); trying the .partial HDF5", journal, e)
        n = 0
    if n == 0 and partial.exists():
        try:
            n = salvage_partial(partial, tmp)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            log.warning("partial %s unreadable (%s)", partial, e)
            n = 0
    if n == 0:
        tmp.unlink(missing_ok=True)
        for p in (partial, journal):
            if p.exists():
                os.replace(p, p.with_name(p.name + ".unrecoverable"))
        log.warning("nothing recoverable for %s (no complete step); leftovers kept as *.unrecoverable", final)
        return None
    os.replace(tmp, final)
    for p in (partial, journal):
        p.unlink(missing_ok=True)
    log.info("recovered %s with %d steps", final, n)
    return final


def _from_journal(journal: Path, out: Path) -> int:
    header, steps = read_journal(journal)
    attrs = dict(header.attrs)
    sink = H5Sink(out, attrs, header.cameras, header.dof, header.jpeg)
    batch: list[Step] = []
    try:
        for st in steps:
            batch.append(st)
            if len(batch) >= 64:
                sink.append(batch)
                batch = []
        sink.append(batch)
        n = sink.n
        # who drove each step (intervention / action_source runs), as far as the steps reached
        sink.close(success=-1, extra_attrs={"recovered": True, **S.runs_attrs(header.runs, n)})
    except BaseException:
        try:
            sink.f.close()
        finally:
            out.unlink(missing_ok=True)
        raise
    if n == 0:
        out.unlink(missing_ok=True)
    return n


def _from_partial(partial: Path, out: Path, progress=None) -> int:
    """Steps [0, n) of a .partial HDF5 into a new episode out; progress(k) after each batch written."""
    with h5py.File(partial, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs.keys()}
        n = int(attrs.get("flushed_steps", 0))
        lens = [len(f[k]) for k in (S.QPOS, S.ACTION, S.ACTION_RAW, S.TIMESTAMP)]
        cams = {}
        for cam in (f[S.IMAGES].keys() if S.IMAGES in f else []):
            d = f[f"{S.IMAGES}/{cam}"]
            cams[cam] = (int(d.attrs["height"]), int(d.attrs["width"]))
            lens += [len(d), len(f[f"{S.IMAGE_TIMESTAMPS}/{cam}"])]
        n = min([n] + lens)
        if n <= 0:
            return 0
        jpeg = any(S._s(f[f"{S.IMAGES}/{c}"].attrs.get("encoding", "raw")) == "jpeg" for c in cams)
        dof = f[S.QPOS].shape[1]
        for k in ("num_steps", "flushed_steps", "success"):
            attrs.pop(k, None)
        sink = H5Sink(out, attrs, cams, dof, jpeg)
        qvel = f[S.QVEL][:n] if S.QVEL in f else None
        qpos, act, raw, ts = (f[k][:n] for k in (S.QPOS, S.ACTION, S.ACTION_RAW, S.TIMESTAMP))
        for a in range(0, n, 64):
            b = min(n, a + 64)
            batch = []
            for i in range(a, b):
                imgs, its = {}, {}
                for cam in cams:
                    v = f[f"{S.IMAGES}/{cam}"][i]
                    imgs[cam] = v.tobytes() if jpeg else v
                    its[cam] = float(f[f"{S.IMAGE_TIMESTAMPS}/{cam}"][i])
                batch.append(Step(float(ts[i]), qpos[i], act[i], raw[i],
                                  None if qvel is None else qvel[i], imgs, its))
            sink.append(batch)
            if progress is not None:
                progress(b)
        sink.close(success=-1, extra_attrs={"recovered": True})
    return n

