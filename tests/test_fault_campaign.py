"""The fault campaign of benchmarks/bench_faults.py at test size: SIGKILL of a process looping over
record / stop / keep / delete / undo / trim / export at random moments, the journal cut at random
byte offsets. Earlier episodes intact, index and files agree, exports whole or absent, the
interrupted episode recovered with <= 0.5 s lost."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_faults  # noqa: E402


def test_sigkill_at_random_moments(tmp_path):
    r = bench_faults.kill_campaign(3, seed=11, work=tmp_path)
    assert r["problems"] == [] and r["earlier_lost"] == 0 and r["index_disagreements"] == 0
    assert r["bad_exports"] == 0
    assert r["kills"] == 3 and r["earlier_checked"] >= 1
    assert all(n <= 0.5 * bench_faults.HZ for n in r["current_lost_steps"]), r["current_lost_steps"]


def test_journal_cut_at_random_offsets(tmp_path):
    r = bench_faults.torn_journal_campaign(40, seed=3, work=tmp_path)
    assert r["failures"] == [] and r["lost_extra_steps"] == 0 and r["cuts"] == 40
    assert r["max_lost_s"] <= 0.5
