"""Replay of tests/fuzz_corpus/known_hangs/: damaged HDF5 files on which libhdf5 itself loops forever.

Each one is read through the bounded path (recorder.h5check, a child process killed after the
timeout) and must give a clear message while the good episodes beside it stay listed, validated and
exportable and no file is lost. Everything that would hang without the bound runs the CLI in a
subprocess with its own timeout, so a regression fails the test instead of hanging the run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recorder.h5check import check_readable
from test_dataset_ops import TELEOP, make

HANGS = sorted(p for p in (Path(__file__).resolve().parent / "fuzz_corpus" / "known_hangs").iterdir()
               if p.name != "README.md")
TIMEOUT_S = 2          # the bound given to the product (TELEOP_HDF5_TIMEOUT_S)
WALL_S = 120           # the test's own bound on one command (a loaded 2-core machine)
HUNG = f"the HDF5 library did not finish reading it in {TIMEOUT_S} s (damaged file?)"


def cli(*args):
    env = {**os.environ, "TELEOP_HDF5_TIMEOUT_S": str(TIMEOUT_S)}
    try:
        return subprocess.run([*TELEOP, *map(str, args)], capture_output=True, text=True, timeout=WALL_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`teleop {' '.join(map(str, args))}` still running after {WALL_S} s: the HDF5 read is not bounded")


def test_the_corpus_is_there():
    assert len(HANGS) >= 2, "tests/fuzz_corpus/known_hangs/ lost its inputs"


@pytest.mark.parametrize("hang", HANGS, ids=[p.name for p in HANGS])
def test_checker_reports_the_hanging_file_and_reads_the_others(tmp_path, hang):
    st = make(tmp_path / "ds", n_eps=2)
    bad = tmp_path / "bad.h5"
    shutil.copy(hang, bad)
    files = [st.path(1), bad, st.path(2)]
    t = time.monotonic()
    out = check_readable(files, timeout_s=TIMEOUT_S)
    assert out == {bad: HUNG + "; skipped, the file is kept"}
    assert time.monotonic() - t < WALL_S


@pytest.mark.parametrize("hang", HANGS, ids=[p.name for p in HANGS])
def test_dataset_with_a_hanging_file_lists_validates_and_exports_the_rest(tmp_path, hang):
    ds = tmp_path / "ds"
    make(ds, n_eps=3)
    bad = ds / "episodes" / "episode_000004.h5"
    shutil.copy(hang, bad)
    r = cli("datasets", "list", ds)
    assert r.returncode == 0, r.stderr
    assert "4 episode(s)" in r.stdout and "1 BROKEN" in r.stdout, r.stdout
    assert f"    4  BROKEN  episodes/episode_000004.h5: {HUNG}" in r.stdout
    assert all(f"    {i}     {9 + i} steps" in r.stdout for i in (1, 2, 3)), r.stdout
    # known now: the index remembers it, the next listing does not read it again
    entry = [e for e in json.loads((ds / "index.json").read_text())["episodes"] if e["id"] == 4][0]
    assert HUNG in entry["broken"] and entry["size"] == hang.stat().st_size
    v = cli("datasets", "validate", ds)
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stderr
    lines = [ln for ln in v.stdout.splitlines() if ln[:3] in ("OK ", "BAD")]
    assert [ln[:3] + ln.split()[1] for ln in lines] == ["OK 1", "OK 2", "OK 3", "BAD4"], v.stdout
    assert HUNG in lines[3] and "3 of 4 episode(s) OK, 1 BAD" in v.stdout
    e = cli("datasets", "export", ds, tmp_path / "all", "--format", "lerobot")
    assert e.returncode == 1 and "broken" in e.stderr and not (tmp_path / "all").exists()
    e = cli("datasets", "export", ds, tmp_path / "lr", "--format", "lerobot", "--ids", "1-3")
    assert e.returncode == 0, e.stderr
    info = json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3
    assert bad.read_bytes() == hang.read_bytes()          # nothing lost, nothing rewritten


@pytest.mark.parametrize("hang", HANGS[:1], ids=[p.name for p in HANGS[:1]])
def test_validate_does_not_trust_an_index_that_calls_the_file_good(tmp_path, hang):
    """Damage the index cannot see (same size and mtime as indexed): validate still reads it bounded."""
    ds = tmp_path / "ds"
    make(ds, n_eps=2)
    bad = ds / "episodes" / "episode_000002.h5"
    shutil.copy(hang, bad)
    idx = json.loads((ds / "index.json").read_text())
    st = bad.stat()
    for e in idx["episodes"]:
        if e["id"] == 2:
            e.update(size=st.st_size, mtime=st.st_mtime)
    (ds / "index.json").write_text(json.dumps(idx))
    assert "BROKEN" not in cli("datasets", "list", ds).stdout          # the fast path trusts the index
    v = cli("datasets", "validate", ds)
    assert v.returncode == 1 and f"BAD     2 unreadable: {HUNG}" in v.stdout, v.stdout + v.stderr
    assert "1 of 2 episode(s) OK, 1 BAD" in v.stdout
    assert "    2  BROKEN" in cli("datasets", "list", ds).stdout      # and it is marked broken now


@pytest.mark.parametrize("hang", HANGS, ids=[p.name for p in HANGS])
def test_salvage_of_a_hanging_partial_keeps_it_and_opens_the_store(tmp_path, hang):
    """An interrupted recording without journal whose .partial makes libhdf5 loop: the salvage is ended,
    the leftover is kept as .unrecoverable and the store opens."""
    ds = tmp_path / "ds"
    make(ds, n_eps=2)
    partial = ds / "episodes" / "episode_000003.h5.partial"
    shutil.copy(hang, partial)
    r = cli("datasets", "list", ds)
    assert r.returncode == 0, r.stderr
    assert "2 episode(s)" in r.stdout and "BROKEN" not in r.stdout
    assert HUNG in r.stderr, r.stderr
    kept = partial.with_name(partial.name + ".unrecoverable")
    assert not partial.exists() and kept.read_bytes() == hang.read_bytes()
    assert not list((ds / "episodes").glob("*.recovering"))


def test_replay_of_a_hanging_file_is_refused_with_the_message(tmp_path):
    """`teleop replay FILE` takes any file; read in the control process it would stall its loop forever."""
    bad = tmp_path / "bad.h5"
    shutil.copy(HANGS[0], bad)
    r = cli("replay", bad, "--dataset", tmp_path / "ds", "--fps", "10")
    assert r.returncode != 0 and f"episode file {bad}: {HUNG}" in r.stdout + r.stderr, r.stdout + r.stderr
    assert bad.read_bytes() == HANGS[0].read_bytes()


def test_episodes_tab_lists_the_hanging_file_broken_and_never_opens_it(qtbot, tmp_path, monkeypatch):
    import recorder.reader
    from ui.episodes_tab import EpisodesTab
    ds = tmp_path / "ds"
    make(ds, n_eps=2)
    shutil.copy(HANGS[0], ds / "episodes" / "episode_000003.h5")
    assert cli("datasets", "list", ds).returncode == 0         # bounded (above): now indexed broken
    real, opened = recorder.reader.read_episode, []

    def read_episode(path):             # the tab must not open it: in this process it would never return
        opened.append(Path(path).name)
        if Path(path).name == "episode_000003.h5":
            raise RuntimeError("the tab opened the broken file")
        return real(path)
    monkeypatch.setattr(recorder.reader, "read_episode", read_episode)
    tab = EpisodesTab()
    qtbot.addWidget(tab)
    msgs = []
    tab.message.connect(msgs.append)
    tab.open_path(str(ds))
    qtbot.waitUntil(lambda: tab.table.rowCount() == 3, timeout=WALL_S * 1000)
    tab.select_id(3)
    qtbot.waitUntil(lambda: tab.frame_label.text() == "unreadable", timeout=10000)
    assert "episode_000003.h5" not in opened and any(HUNG in m for m in msgs), (opened, msgs)
    tab.select_id(1)                    # the good ones beside it still open
    qtbot.waitUntil(lambda: tab.episode is not None and tab.episode.num_steps == 10, timeout=10000)


if __name__ == "__main__":          # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
