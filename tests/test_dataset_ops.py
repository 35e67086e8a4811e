"""Issue 14 defects and the dataset editing operations: broken files are noticed and reported, exports
appear complete or not at all, a dataset refuses other cameras, the validator judges each camera at
its own rate, edits (trim, merge, split, instruction, delete) are atomic, undoable and locked."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter, RecorderError, read_episode, validate_episode
from recorder.edit import merge_stores, split_store
from recorder.export_lerobot import export_lerobot
from recorder.export_rlds import export_rlds
from recorder.validate import cadence_report

JOINTS = [f"j{i}" for i in range(7)] + ["gripper"]
CAMS = {"front": (24, 32), "wrist": (16, 20)}
FPS = 20
TELEOP = [sys.executable, "-m", "teleop_app.cli"]


def img(h, w, i):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 5 + i * 7) % 256, (y * 3) % 256, np.full_like(x, i % 200)], -1).astype(np.uint8)


def add_episode(st: EpisodeStore, n=10, text="pick the cube", cams=CAMS, ok=1, robot="sim") -> int:
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta(text, FPS, robot, JOINTS, "teleop"), cams, dof=8,
                      hdf5_process=False)
    for i in range(n):
        q = np.full(8, i * 0.01, np.float32)
        w.add_step(q, q + 0.1, timestamp=5 + i / FPS, images={c: img(*hw, i) for c, hw in cams.items()})
    return st.add(w.finish(success=ok)).id


def make(root: Path, n_eps=3, cams=CAMS) -> EpisodeStore:
    st = EpisodeStore.create(root, robot="sim", fps=FPS, joint_names=JOINTS, cameras=cams)
    for k in range(n_eps):
        add_episode(st, n=10 + k, text=f"task {k % 2}", cams=cams)
    return st


def cli(*args):
    return subprocess.run([*TELEOP, *map(str, args)], capture_output=True, text=True, timeout=300)


def truncate(p: Path, keep: float = 0.6) -> None:
    os.truncate(p, int(p.stat().st_size * keep))


# ------------------------------------------------------------------ broken files
def test_truncated_episode_is_listed_broken_and_validate_reports_every_episode(tmp_path):
    st = make(tmp_path / "ds")
    truncate(st.path(2))
    r = cli("datasets", "list", tmp_path / "ds")
    assert r.returncode == 0, r.stderr
    assert "1 BROKEN" in r.stdout and "    2  BROKEN" in r.stdout and "truncated" in r.stdout
    assert "    1     10 steps" in r.stdout and "    3     12 steps" in r.stdout
    v = cli("datasets", "validate", tmp_path / "ds")
    assert v.returncode == 1 and "Traceback" not in v.stderr
    lines = [ln for ln in v.stdout.splitlines() if ln[:3] in ("OK ", "BAD")]
    assert [ln.split()[1] for ln in lines] == ["1", "2", "3"], v.stdout     # every episode, in order
    assert lines[1].startswith("BAD") and lines[2].startswith("OK ")
    assert "2 of 3 episode(s) OK, 1 BAD" in v.stdout


def test_store_notices_a_file_that_changed_since_indexing(tmp_path):
    st = make(tmp_path / "ds")
    assert not st.broken()
    p = st.path(3)
    st_before = p.stat()
    truncate(p, 0.5)
    os.utime(p, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))      # same mtime: size differs
    st2 = EpisodeStore.open(tmp_path / "ds")
    assert [i.id for i in st2.broken()] == [3] and st2.episodes()[2].num_steps == 0
    # a broken file is kept (never deleted), and stays listed across opens
    assert p.exists() and [i.id for i in EpisodeStore.open(tmp_path / "ds").broken()] == [3]
    assert EpisodeStore.open(tmp_path / "ds").stats()["broken_episodes"] == [3]


def test_export_of_a_broken_dataset_leaves_nothing_behind(tmp_path):
    st = make(tmp_path / "ds")
    truncate(st.path(2))
    r = cli("datasets", "export", tmp_path / "ds", tmp_path / "lr", "--format", "lerobot")
    assert r.returncode == 1 and "broken" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "lr").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]          # no temporary folder left either


@pytest.mark.parametrize("fmt", ["lerobot", "rlds"])
def test_export_failing_midway_is_complete_or_absent(tmp_path, monkeypatch, fmt):
    st = make(tmp_path / "ds")
    import recorder.export_lerobot as el
    import recorder.export_rlds as er
    mod = el if fmt == "lerobot" else er
    real, calls = mod.read_episode, []

    def flaky(path):
        calls.append(path)
        if len(calls) == 3:
            raise RecorderError("disk went away")
        return real(path)
    monkeypatch.setattr(mod, "read_episode", flaky)
    run = (lambda out, **kw: export_lerobot(st, out, "t/t", skip_failed=False, **kw)) if fmt == "lerobot" \
        else (lambda out, **kw: export_rlds(st, out, skip_failed=False, **kw))
    with pytest.raises(RecorderError, match="disk went away"):
        run(tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # overwrite keeps the old export until the new one is complete
    monkeypatch.setattr(mod, "read_episode", real)
    run(tmp_path / "out")
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*"))
    calls.clear()
    monkeypatch.setattr(mod, "read_episode", flaky)
    with pytest.raises(RecorderError):
        run(tmp_path / "out", overwrite=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "out"]


# ------------------------------------------------------------------ cameras
def test_dataset_refuses_other_cameras(tmp_path):
    st = make(tmp_path / "ds", n_eps=1)
    with pytest.raises(RecorderError, match=r"cameras are front 32x24, wrist 20x16, you are recording front 32x24"):
        EpisodeStore.create(tmp_path / "ds", robot="sim", fps=FPS, joint_names=JOINTS, cameras={"front": (24, 32)})
    with pytest.raises(RecorderError, match="cameras are"):
        EpisodeStore.create(tmp_path / "ds", robot="sim", fps=FPS, joint_names=JOINTS,
                            cameras={"front": (48, 64), "wrist": (16, 20)})
    with pytest.raises(RecorderError, match="cameras are"):     # a file written behind the store's back
        add_episode(st, cams={"front": (24, 32)})
    assert [e.id for e in st.episodes()] == [1]


def test_record_fast_into_a_dataset_of_other_cameras_is_refused(tmp_path):
    from teleop_app.profiles import load_profile
    prof = load_profile("sim7")
    EpisodeStore.create(tmp_path / "ds", prof.name, 10.0, prof.joint_names, {"front": (96, 96), "wrist": (96, 96)})
    r = cli("record", "--mode", "scripted", "--fast", "--episodes", "1", "--tasks", "pick_red",
            "--image-size", "96", "--dataset", tmp_path / "ds")
    assert r.returncode == 1 and "cameras are front 96x96, wrist 96x96, you are recording front 96x96" in r.stderr
    assert not list((tmp_path / "ds/episodes").iterdir())


# ------------------------------------------------------------------ validator: each camera at its own rate
def _record_rates(path: Path, loop_hz: float, cam_hz: float, n: int, drop: set[int] = frozenset()) -> Path:
    cams = {"front": (16, 16)}
    w = EpisodeWriter(path, EpisodeMeta("x", loop_hz, "sim", JOINTS, "teleop"), cams, dof=8, hdf5_process=False)
    last = -1
    for i in range(n):
        t = i / loop_hz
        k = int(t * cam_hz)                       # the newest camera frame at this tick
        frames = {}
        if k != last and k not in drop:
            frames = {"front": img(16, 16, k)}
            last = k
        w.add_step(np.zeros(8), np.zeros(8), timestamp=t, images=frames,
                   image_timestamps={"front": k / cam_hz})
    return w.finish()


def test_a_30fps_camera_in_a_50hz_loop_is_not_dropping_frames(tmp_path):
    ep = read_episode(_record_rates(tmp_path / "a.h5", 50, 30, 150))
    rep = cadence_report(ep)
    assert rep["repeated_frames"]["front"] > 40                 # repeats are expected at 30 fps...
    assert rep["dropped_frames"]["front"] == 0 and abs(rep["camera_hz"]["front"] - 30) < 1
    assert validate_episode(ep) == []                             # ...and are not a problem
    ep2 = read_episode(_record_rates(tmp_path / "b.h5", 50, 30, 150, drop={20, 21}))
    assert cadence_report(ep2)["dropped_frames"]["front"] == 2
    assert any("front: 2 dropped frame(s) at its own 30.0 Hz" in p for p in validate_episode(ep2))


# ------------------------------------------------------------------ edits
def test_trim_is_atomic_and_undoable(tmp_path):
    st = make(tmp_path / "ds")
    before = read_episode(st.path(2))
    frames = before.images("front")
    before.close()
    with pytest.raises(RecorderError, match="nothing changed"):
        st.trim(2, 5, 50)
    with pytest.raises(RecorderError, match="no episode 9"):
        st.trim(9, 1)
    info = st.trim(2, 2, -3)
    assert info.num_steps == 6
    ep = read_episode(st.path(2))
    np.testing.assert_array_equal(ep.qpos, before.qpos[2:8])
    np.testing.assert_array_equal(ep.timestamp, before.timestamp[2:8])
    np.testing.assert_array_equal(ep.images("front"), frames[2:8])      # the same JPEG bytes
    assert ep.success == 1 and json.loads(ep.attrs["trimmed"]) == {"start": 2, "end": 8, "of": 11}
    assert EpisodeStore.open(tmp_path / "ds").episodes()[1].num_steps == 6
    assert "trim of episode 2" in st.undo()
    np.testing.assert_array_equal(read_episode(st.path(2)).qpos, before.qpos)
    assert st.episodes()[1].num_steps == 11 and not list((tmp_path / "ds/.backup").iterdir())


def test_set_instruction_of_a_selection_and_undo(tmp_path):
    st = make(tmp_path / "ds", n_eps=4)
    with pytest.raises(RecorderError, match="no episode 7"):
        st.set_instruction([1, 7], "new")
    assert [e.instruction for e in st.episodes()] == ["task 0", "task 1", "task 0", "task 1"]
    r = cli("datasets", "set-instruction", tmp_path / "ds", "pick the red cube", "--where", "task 0")
    assert r.returncode == 0, r.stderr
    st.refresh()
    assert [e.instruction for e in st.episodes()] == ["pick the red cube", "task 1", "pick the red cube", "task 1"]
    assert read_episode(st.path(3)).meta.instruction == "pick the red cube"
    st.relabel_many([2, 4], 0)
    assert "relabel" in cli("datasets", "undo", tmp_path / "ds").stdout
    assert "set_instruction" in cli("datasets", "undo", tmp_path / "ds").stdout
    st.refresh()
    assert [(e.instruction, e.success) for e in st.episodes()] == [("task 0", 1), ("task 1", 1)] * 2
    assert read_episode(st.path(1)).meta.instruction == "task 0"
    r = cli("datasets", "undo", tmp_path / "ds")
    assert r.returncode == 1 and "nothing to undo" in r.stderr


def test_a_bad_index_never_deletes_anything(tmp_path):
    st = make(tmp_path / "ds")
    r = cli("datasets", "delete", tmp_path / "ds", "2,9")
    assert r.returncode == 1 and "no episode 9" in r.stderr and "nothing changed" in r.stderr
    r = cli("datasets", "delete", tmp_path / "ds", "two")
    assert r.returncode == 1 and "ids must look like" in r.stderr
    assert len(list((tmp_path / "ds/episodes").glob("*.h5"))) == 3
    # a garbage index: rebuilt from the files, nothing deleted
    (tmp_path / "ds/index.json").write_text(json.dumps({"version": 1, "episodes": [{"id": 1, "file": "../x.h5"}]}))
    assert [e.id for e in EpisodeStore.open(tmp_path / "ds").episodes()] == [1, 2, 3]
    assert cli("datasets", "delete", tmp_path / "ds", "1-2").returncode == 0
    assert [e.id for e in EpisodeStore.open(tmp_path / "ds").episodes()] == [3]
    assert "delete of episode(s) [1, 2]" in cli("datasets", "undo", tmp_path / "ds").stdout
    assert [e.id for e in EpisodeStore.open(tmp_path / "ds").episodes()] == [1, 2, 3]


def test_merge_same_setup_and_refuse_otherwise(tmp_path):
    a = make(tmp_path / "a", n_eps=2)
    b = make(tmp_path / "b", n_eps=3)
    c = make(tmp_path / "c", n_eps=1, cams={"front": (24, 32)})
    r = cli("datasets", "merge", tmp_path / "a", tmp_path / "c", tmp_path / "m")
    assert r.returncode == 1 and "cameras" in r.stderr and "same robot" in r.stderr
    assert not (tmp_path / "m").exists()
    r = cli("datasets", "merge", tmp_path / "a", tmp_path / "b", tmp_path / "m")
    assert r.returncode == 0 and "merged 5 episode(s)" in r.stdout, r.stderr
    m = EpisodeStore.open(tmp_path / "m")
    assert [e.num_steps for e in m.episodes()] == [10, 11, 10, 11, 12]
    assert m.config["merged_from"]["3"].endswith("b:1")
    np.testing.assert_array_equal(read_episode(m.path(4)).qpos, read_episode(b.path(2)).qpos)
    assert len(a.episodes()) == 2 and len(b.episodes()) == 3          # sources unchanged
    with pytest.raises(RecorderError, match="not empty"):
        merge_stores([a, b], tmp_path / "m")
    del c


def test_split_off_validation(tmp_path):
    st = make(tmp_path / "ds", n_eps=10)
    r = split_store(st, tmp_path / "sp", val_fraction=0.2, seed=3)
    assert len(r["val"]) == 2 and sorted(r["train"] + r["val"]) == list(range(1, 11))
    tr, va = EpisodeStore.open(tmp_path / "sp/train"), EpisodeStore.open(tmp_path / "sp/val")
    assert [e.id for e in va.episodes()] == r["val"] and [e.id for e in tr.episodes()] == r["train"]
    assert split_store(st, tmp_path / "sp2", val_fraction=0.2, seed=3) == r      # seeded
    assert len(st.episodes()) == 10
    export_lerobot(va, tmp_path / "va_lr", "t/val")                                # each half is a dataset


def _editor(root: str, which: int, n: int) -> None:
    st = EpisodeStore.open(root)
    for k in range(n):
        if which == 0:
            st.relabel(1 + k % 4, k % 2)
        else:
            st.set_instruction([1 + (k + 1) % 4], f"text {k}")


def test_two_processes_editing_keep_store_and_files_agreeing(tmp_path):
    make(tmp_path / "ds", n_eps=4)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_editor, args=(str(tmp_path / "ds"), w, 12)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    st = EpisodeStore.open(tmp_path / "ds")
    idx = json.loads((tmp_path / "ds/index.json").read_text())["episodes"]
    assert len(idx) == 4
    for row in idx:
        ep = read_episode(tmp_path / "ds" / row["file"])
        assert (row["instruction"], row["success"]) == (ep.meta.instruction, ep.success)
    assert len(st.undo_history()) == 24
