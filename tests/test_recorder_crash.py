"""Crash safety with real processes and real filesystems: SIGKILL mid-episode, disk full, read-only."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter, RecorderError, read_episode
from recorder.recover import recover_episode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_faults  # noqa: E402

JOINTS = [f"j{i}" for i in range(7)] + ["gripper"]
ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter
    root, hz, jpeg = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
    joints = [f"j{i}" for i in range(7)] + ["gripper"]
    cams = {"top": (120, 160), "wrist": (96, 128)}
    st = EpisodeStore.create(root, robot="sim", fps=hz, joint_names=joints, cameras=cams)
    rng = np.random.default_rng(0)
    def run(n_steps, instruction):
        w = EpisodeWriter(st.new_episode_path(), EpisodeMeta(instruction, hz, "sim", joints, "scripted"),
                          cams, dof=8, jpeg=jpeg)
        t0 = time.monotonic()
        i = 0
        while n_steps is None or i < n_steps:
            tick = t0 + i / hz
            time.sleep(max(0.0, tick - time.monotonic()))
            now = time.monotonic()
            imgs = {c: rng.integers(0, 255, (h, w_, 3), dtype=np.uint8) for c, (h, w_) in cams.items()}
            took_over = (i // 7) % 2 == 1          # the operator takes over for 7 steps, hands back, ...
            w.add_step(np.full(8, i, np.float32), np.full(8, i + 0.5, np.float32), timestamp=now,
                       images=imgs, image_timestamps={c: now - 0.005 for c in cams},
                       intervention=took_over, source="operator" if took_over else "policy")
            i += 1
            if n_steps is None:
                print("step", i, flush=True)
        return st.add(w.finish(success=1))
    for k in range(2):
        run(int(hz), f"done {k}")
    print("finished-2", flush=True)
    run(None, "interrupted")
""")


def start_child(tmp_path: Path, root: Path, hz: float, jpeg: bool) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script), str(root), str(hz), "1" if jpeg else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_after(proc: subprocess.Popen, steps: int) -> int:
    last = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("child died: " + proc.stderr.read())
        if line.startswith("step"):
            last = int(line.split()[1])
            if last >= steps:
                break
    time.sleep(0.13)            # land somewhere between flushes
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout.read().splitlines():   # steps printed before the kill landed
        if line.startswith("step"):
            last = int(line.split()[1])
    return last


@pytest.mark.parametrize("hz,jpeg", [(30.0, True), (50.0, False)], ids=["30Hz-jpeg", "50Hz-raw"])
def test_sigkill_mid_episode_recovers(tmp_path, hz, jpeg):
    root = tmp_path / "ds"
    proc = start_child(tmp_path, root, hz, jpeg)
    written = kill_after(proc, steps=int(2.2 * hz))
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in (root / "episodes").iterdir())
    assert "episode_000003.h5.journal" in leftovers and "episode_000003.h5" not in leftovers

    st = EpisodeStore.open(root)          # recover() runs automatically
    assert st.last_recovered == [3]
    eps = st.episodes()
    assert [e.id for e in eps] == [1, 2, 3]
    for e in eps[:2]:                     # earlier episodes intact
        ep = read_episode(st.path(e.id))
        assert ep.num_steps == int(hz) and ep.success == 1 and not ep.recovered
        np.testing.assert_array_equal(ep.qpos[:, 0], np.arange(int(hz)))
    ep = read_episode(st.path(3))
    assert ep.recovered and ep.success == -1 and ep.meta.instruction == "interrupted"
    assert ep.num_steps >= written - hz, (ep.num_steps, written)     # lost at most 1 s
    assert ep.num_steps <= written
    np.testing.assert_array_equal(ep.qpos[:, 0], np.arange(ep.num_steps))   # in order, no gaps
    assert ep.images("top").shape == (ep.num_steps, 120, 160, 3)
    assert np.all(np.diff(ep.timestamp) > 0)
    assert not [p for p in (root / "episodes").iterdir() if p.name.endswith((".partial", ".journal"))]
    # who drove each step survives the crash (journaled label runs), not only finished episodes' attrs
    want = (np.arange(ep.num_steps) // 7) % 2 == 1
    assert ep.intervention is not None and ep.intervention.tolist() == want.tolist()
    assert ep.action_source == ["operator" if w else "policy" for w in want]
    print(f"written={written} recovered={ep.num_steps}")


def test_recover_falls_back_to_partial_and_survives_torn_journal(tmp_path):
    root = tmp_path / "ds"
    proc = start_child(tmp_path, root, 30.0, True)
    written = kill_after(proc, steps=60)
    epdir = root / "episodes"
    j = epdir / "episode_000003.h5.journal"
    part = epdir / "episode_000003.h5.partial"
    # 1) torn/garbage tail on the journal: recovery stops at the last intact record
    keep_j, keep_p = j.read_bytes(), part.read_bytes()
    with open(j, "ab") as f:
        f.write(b"TJS\0" + os.urandom(40))
    st = EpisodeStore.open(root)
    n_journal = read_episode(st.path(3)).num_steps
    assert written - 30 <= n_journal <= written
    # 2) no journal at all: rebuild from the .partial HDF5 (up to its last flush), if it is readable
    st.path(3).unlink()
    part.write_bytes(keep_p)
    assert not j.exists()
    st = EpisodeStore.open(root)
    print("partial-only recovery:", st.last_recovered)
    if st.last_recovered:
        ep = read_episode(st.path(3))
        assert ep.recovered and 0 < ep.num_steps <= n_journal
        np.testing.assert_array_equal(ep.qpos[:, 0], np.arange(ep.num_steps))
    else:   # HDF5 killed mid-write may be unreadable: then it must be kept aside, not deleted
        assert (epdir / "episode_000003.h5.partial.unrecoverable").exists()
    assert keep_j  # the journal was the primary path above


def test_live_recording_is_not_recovered_under_the_writer(tmp_path):
    st = EpisodeStore.create(tmp_path / "ds", robot="sim", fps=30, joint_names=JOINTS, cameras={})
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta("x", 30, "sim", JOINTS, "teleop"), {}, dof=8)
    w.add_step(np.zeros(8), np.zeros(8), timestamp=0.0)
    time.sleep(0.1)
    assert EpisodeStore.open(tmp_path / "ds").last_recovered == []   # journal is locked by the writer
    st.add(w.finish())
    assert [e.num_steps for e in st.episodes()] == [1]


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _tmpfs(tmp_path, size: str):
    mnt = tmp_path / f"fs{size}-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(mnt, f"size={size}"):
        pytest.skip("cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): disk-full test skipped")
    yield mnt
    _umount(mnt)


@pytest.fixture
def small_fs(tmp_path):
    yield from _tmpfs(tmp_path, "32m")


@pytest.fixture
def tiny_fs(tmp_path):
    yield from _tmpfs(tmp_path, "16m")


@pytest.mark.parametrize("hdf5_process", [True, False], ids=["writer-process", "in-thread"])
def test_disk_full_behind_a_late_writer_keeps_the_steps_that_fit(tiny_fs, hdf5_process):
    """A writer that fell behind (a loaded machine; here held at its start) takes its queue as one
    big batch. When that batch is bigger than the free space, the steps that fit are saved and the
    rest are reported, where writing all-or-nothing published an empty episode (seen in a loaded run)."""
    st = EpisodeStore.create(tiny_fs / "ds", robot="sim", fps=50, joint_names=JOINTS, cameras={"top": (240, 320)})
    gate = threading.Event()
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta("late writer", 50, "sim", JOINTS, "teleop"),
                      {"top": (240, 320)}, dof=8, jpeg=False, thread_init=gate.wait, hdf5_process=hdf5_process)
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(64)]
    for i, f in enumerate(frames):     # 64 x 230 KB, written twice (journal + HDF5): 29 MB vs a 16 MB disk
        w.add_step(np.full(8, i, np.float32), np.zeros(8), timestamp=i / 50, images={"top": f})
    assert w.num_steps == 64 and w.dropped == 0
    gate.set()
    t0 = time.monotonic()
    while w.error is None and time.monotonic() - t0 < 20:
        time.sleep(0.01)
    assert w.error is not None and "disk full" in w.error, w.error
    assert w.finish() == st.episodes_dir / "episode_000001.h5"
    ep = read_episode(w.path)
    assert ep.attrs["truncated"] and 10 <= ep.num_steps < 64, ep.num_steps     # ~27 fit
    assert f"The first {ep.num_steps} steps were saved" in w.error
    k = ep.num_steps - 1                                   # the last saved step is the one that was sent
    assert ep.qpos[k, 0] == k and np.array_equal(ep.images("top")[k], frames[k])
    assert [p.name for p in st.episodes_dir.iterdir() if not p.name.endswith(".h5")] == []


def test_disk_full_stops_cleanly(small_fs):
    st = EpisodeStore.create(small_fs / "ds", robot="sim", fps=50, joint_names=JOINTS, cameras={"top": (240, 320)})
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta("ok", 50, "sim", JOINTS, "teleop"),
                      {"top": (240, 320)}, dof=8, jpeg=False)
    for i in range(5):
        w.add_step(np.zeros(8), np.zeros(8), timestamp=i / 50, images={"top": np.zeros((240, 320, 3), np.uint8)})
    first = st.add(w.finish(1))
    rng = np.random.default_rng(1)
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta("too big", 50, "sim", JOINTS, "teleop"),
                      {"top": (240, 320)}, dof=8, jpeg=False)
    t0 = time.monotonic()
    i = 0
    while w.error is None and time.monotonic() - t0 < 20:   # 230 KB/frame x2 (h5 + journal) vs 32 MB
        w.add_step(np.zeros(8), np.zeros(8), timestamp=i / 50,
                   images={"top": rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)})
        i += 1
        time.sleep(0.002)
    assert w.error is not None and "disk full" in w.error, w.error
    w.add_step(np.zeros(8), np.zeros(8), timestamp=99.0)   # ignored, does not raise or block
    assert w.finish() == st.episodes_dir / "episode_000002.h5"   # truncated episode published
    assert "disk full" in w.error and "were saved as episode_000002.h5" in w.error
    ep = read_episode(st.path(first.id))                   # earlier episode untouched
    assert ep.num_steps == 5 and ep.success == 1
    st = EpisodeStore.open(small_fs / "ds")                # the truncated one is kept and indexed
    assert [e.id for e in st.episodes()] == [1, 2]
    ep2 = read_episode(st.path(2))
    assert ep2.attrs["truncated"] and ep2.success == -1 and ep2.num_steps >= 1
    assert [p.name for p in st.episodes_dir.iterdir() if not p.name.endswith(".h5")] == []


def test_read_only_destination_fails_at_start(tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "size=1m,ro"):
        pytest.skip("cannot mount a read-only tmpfs here: read-only test skipped")
    try:
        with pytest.raises(RecorderError, match="read-only file system"):
            EpisodeWriter(mnt / "episode_000001.h5", EpisodeMeta("x", 30, "sim", JOINTS, "teleop"), {}, dof=8)
        with pytest.raises(RecorderError, match="cannot create episode store"):
            EpisodeStore.create(mnt / "ds", robot="sim", fps=30, joint_names=JOINTS, cameras={})
    finally:
        _umount(mnt)


@pytest.mark.parametrize("jpeg", [False, True], ids=["raw", "jpeg"])
def test_disk_full_hard_enospc(small_fs, monkeypatch, jpeg, tmp_path):
    """Without the early stop, the real ENOSPC from os.write/HDF5 still ends the episode cleanly."""
    monkeypatch.setattr(EpisodeWriter, "_check_space", lambda self, full=False: None)
    monkeypatch.setattr(EpisodeWriter, "_steps_that_fit", lambda self, records: len(records))
    cams = {"top": (240, 320), "wrist": (240, 320)}
    w = EpisodeWriter(small_fs / "episode_000001.h5", EpisodeMeta("x", 50, "sim", JOINTS, "teleop"), cams,
                      dof=8, jpeg=jpeg)
    rng = np.random.default_rng(2)
    t0 = time.monotonic()
    i = 0
    while w.error is None and time.monotonic() - t0 < 30:
        w.add_step(np.full(8, i, np.float32), np.zeros(8), timestamp=i / 50,
                   images={c: rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for c in cams})
        i += 1
        time.sleep(0.004)
    assert w.error and "disk full" in w.error
    try:
        assert w.finish() == small_fs / "episode_000001.h5" and "saved as episode_000001.h5" in w.error
        final = small_fs / "episode_000001.h5"
        assert sorted(p.name for p in small_fs.iterdir()) == ["episode_000001.h5"]
        assert read_episode(final).attrs["truncated"]
    except RecorderError as e:
        # Where the HDF5 library cannot close the file even after the reserve is freed (its cache can
        # stay broken after a failed flush: seen once in a clean-clone CI run), the episode is not lost:
        # the message says where the steps are, and recovery (what EpisodeStore.open runs) rebuilds it
        # once there is room; here: beside a copy on a disk with room.
        assert "kept in episode_000001.h5.partial/.journal" in str(e) and "free space" in str(e), e
        room = tmp_path / "room"
        room.mkdir()
        for suffix in (".partial", ".journal"):
            shutil.copy(small_fs / f"episode_000001.h5{suffix}", room / f"episode_000001.h5{suffix}")
        final = recover_episode(room / "episode_000001.h5")
        assert final is not None
    ep = read_episode(final)
    assert ep.num_steps > 0
    np.testing.assert_array_equal(ep.qpos[:, 0], np.arange(ep.num_steps))
    assert ep.images("top").shape[0] == ep.num_steps


def test_folder_turning_read_only_mid_recording_loses_nothing(tmp_path):
    """The dataset folder turns read-only while an episode records (a read-only bind mount over it: open
    files keep writing, every create/rename fails with EROFS). The episode cannot be published: a message
    says so and what to do; once the folder is writable again, opening the store recovers every step."""
    root = tmp_path / "ds"
    st = EpisodeStore.create(root, robot="sim", fps=50, joint_names=JOINTS, cameras={"top": (48, 64)})
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta("before", 50, "sim", JOINTS, "teleop"),
                      {"top": (48, 64)}, dof=8)
    for i in range(10):
        w.add_step(np.full(8, i), np.zeros(8), timestamp=i / 50, images={"top": np.zeros((48, 64, 3), np.uint8)})
    first = st.add(w.finish(1))
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta("turns read-only", 50, "sim", JOINTS, "teleop"),
                      {"top": (48, 64)}, dof=8)

    accepted = []

    def steps(a, b):
        for i in range(a, b):
            if w.error is not None:         # "recording stopped": what comes after is refused, and said
                return
            w.add_step(np.full(8, i), np.zeros(8), timestamp=i / 50, images={"top": np.zeros((48, 64, 3), np.uint8)})
            accepted.append(i)
            time.sleep(0.005)
    steps(0, 30)
    if subprocess.run(["mount", "--bind", str(root), str(root)], capture_output=True).returncode != 0:
        w.finish()
        pytest.skip("cannot bind-mount here (needs root/CAP_SYS_ADMIN): read-only-mid-recording test skipped")
    try:
        r = bench_faults.remount_read_only(root)      # retried while the kernel says "busy" (EBUSY)
        assert r.returncode == 0, r.stderr
        steps(30, 60)
        try:
            w.finish(1)
        except RecorderError:
            pass
        assert w.error is not None and "read-only" in w.error and "make the folder writable again" in w.error
    finally:
        _umount(root)
    st = EpisodeStore.open(root)
    assert st.last_recovered == [2]
    ep = read_episode(st.path(2))
    # Every accepted step, or all but the last <= 0.5 s (25 steps) when the failure surfaced in the writer
    # thread a few steps after it happened (its HDF5 process may open its file only after the flip).
    n = len(accepted)
    assert ep.recovered and n - 25 <= ep.num_steps <= n, (ep.num_steps, n)
    np.testing.assert_array_equal(ep.qpos[:, 0], np.arange(ep.num_steps))
    assert read_episode(st.path(first.id)).num_steps == 10
