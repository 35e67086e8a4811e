"""Nothing the app reads is unpickled: checkpoints load weights-only, no code path calls pickle.load,
np.load(allow_pickle=True) or torch.load without weights_only=True."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_malicious_checkpoint_is_refused_without_running_its_code(tmp_path):
    pytest.importorskip("torch")
    from bench_fuzz import malicious_checkpoint
    from teleop_app.policy.checkpoint import CheckpointError, load_checkpoint_policy, read_checkpoint
    marker = Path("/tmp/teleop-fuzz-pwned")
    marker.unlink(missing_ok=True)
    evil = malicious_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_checkpoint_policy(evil)
    assert not marker.exists(), "the checkpoint's pickle ran code"


_UNSAFE = [
    (re.compile(r"\bpickle\.loads?\(|\bcPickle\b|\bdill\b|\bjoblib\.load\("), "unpickles"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load with allow_pickle"),
    (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"\bshelve\.open\(|\bmarshal\.loads?\("), "unpickles"),
]


def test_no_code_path_unpickles_what_it_reads():
    bad = []
    for pkg in ("teleop_app", "drivers", "recorder", "ui"):
        for p in (ROOT / pkg).rglob("*.py"):
            for n, line in enumerate(p.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for rx, what in _UNSAFE:
                    if rx.search(code):
                        # the RLDS exporter *writes* the builder template's pickled .npy (np.save); the
                        # app never loads it
                        if "np.save(" in code and p.name == "export_rlds.py":
                            continue
                        bad.append(f"{p.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
    assert not bad, "\n".join(bad)
