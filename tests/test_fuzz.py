"""Fuzzing of everything that parses outside input, and the replay of the fuzz corpus.

Each target takes raw bytes and runs the real parser the app uses on them; the only exceptions
allowed out are the parser's documented "bad input" errors (each with a message). Anything else
(IndexError, KeyError, struct.error, a hang, a crash) is a finding.

Default test run (fast): every file in tests/fuzz_corpus/<target>/ (seeds + every input a campaign
ever found crashing, kept as regression tests), plus a short hypothesis run per target.
Long, coverage-guided campaign (atheris / libFuzzer), documented command:

    nice -n 10 .venv/bin/python benchmarks/bench_fuzz.py --seconds 60       # every target
    .venv/bin/python benchmarks/bench_fuzz.py --target dxl_status --seconds 600

It prints inputs tried per target and crashes found; new crashing inputs land in the corpus.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
_TMP = Path(tempfile.mkdtemp(prefix="teleop-fuzz-"))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# ------------------------------------------------------------------ servo buses
def fuzz_dxl_status(data: bytes) -> None:
    from drivers.bus import dynamixel as dxl
    from drivers.bus.errors import PacketError, ServoError
    try:
        pkt, n = dxl.parse_packet(data)
    except PacketError:
        return
    assert 10 <= n <= len(data)
    try:
        dxl.raise_for_status(pkt)
    except ServoError as e:
        assert str(e)
    if pkt.error is not None:      # a status packet re-encodes to an equal packet
        again, _ = dxl.parse_packet(dxl.build_status(pkt.servo_id, pkt.error, pkt.params))
        assert again == pkt


def fuzz_fts_status(data: bytes) -> None:
    from drivers.bus import feetech as fts
    from drivers.bus.errors import PacketError, ServoError
    try:
        pkt, n = fts.parse_status(data)
    except PacketError:
        return
    assert 6 <= n <= len(data)
    try:
        fts.raise_for_status(pkt)
    except ServoError as e:
        assert str(e)
    again, _ = fts.parse_status(fts.build_status(pkt.servo_id, pkt.error, pkt.params))
    assert again == pkt


_SIMBUS: dict = {}


def _simbus(protocol: str):
    if protocol not in _SIMBUS:
        from drivers.bus.simbus import IdealServos, SimServoBus
        _SIMBUS[protocol] = SimServoBus(IdealServos(8), protocol=protocol, ids=list(range(1, 9)))
    return _SIMBUS[protocol]


def _fuzz_simbus(protocol: str, data: bytes) -> None:
    """The simulated servos must survive any byte stream from a client (no exception at all)."""
    bus = _simbus(protocol)
    buf = bytearray(data)
    bus._drain(buf)
    assert len(buf) <= len(data)


def fuzz_dxl_simbus(data: bytes) -> None:
    _fuzz_simbus("dynamixel", data)


def fuzz_fts_simbus(data: bytes) -> None:
    _fuzz_simbus("feetech", data)


# ------------------------------------------------------------------ recorder
def _file(name: str, data: bytes) -> Path:
    p = _TMP / name
    p.write_bytes(data)
    return p


def fuzz_journal(data: bytes) -> None:
    from recorder.journal import read_journal
    p = _file("j.h5.journal", data)
    try:
        header, steps = read_journal(p)
    except ValueError:
        return
    for st in steps:
        assert st.qpos.shape == (header.dof,)


def fuzz_recover(data: bytes) -> None:
    """A leftover journal is recovered into a readable episode, or set aside; never an exception."""
    import shutil
    from recorder.reader import read_episode
    from recorder.recover import recover_episode
    d = _TMP / "rec"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    (d / "episode_000001.h5.journal").write_bytes(data)
    out = recover_episode(d / "episode_000001.h5")
    if out is not None:
        with read_episode(out) as ep:
            assert ep.num_steps > 0 and ep.recovered
    else:
        assert (d / "episode_000001.h5.journal.unrecoverable").exists()


def fuzz_h5_episode(data: bytes) -> None:
    from recorder.reader import quick_check, read_episode, read_summary
    from recorder.schema import CorruptEpisodeError
    from recorder.validate import validate_episode
    p = _file("e.h5", data)
    quick_check(p)
    try:
        read_summary(p)
    except CorruptEpisodeError:
        pass
    try:
        ep = read_episode(p)
    except CorruptEpisodeError:
        return
    with ep:
        try:
            validate_episode(ep)
            for cam in ep.cameras:
                ep.images(cam)
        except CorruptEpisodeError:
            pass


def fuzz_dataset_index(data: bytes) -> None:
    """A store whose index.json is garbage opens (rebuilt from the files), lists, never deletes."""
    import shutil
    from recorder.store import EpisodeStore
    root = _TMP / "store"
    if not (root / "store.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        EpisodeStore.create(root, "sim", 10, ["a", "b"], {})
    (root / "index.json").write_bytes(data)
    st = EpisodeStore.open(root)
    for info in st.episodes():
        assert isinstance(info.id, int) and isinstance(info.instruction, str)
    assert (root / "store.json").exists()


# ------------------------------------------------------------------ configuration files
def fuzz_profile_toml(data: bytes) -> None:
    from teleop_app.profiles import ProfileError, load_profile
    p = _file("p.toml", data)
    try:
        prof = load_profile(p)
    except ProfileError as e:
        assert str(e)
        return
    assert prof.dof == len(prof.joint_names)


def fuzz_mapping_toml(data: bytes) -> None:
    from teleop_app.mapping import MappingError, load_mapping
    try:
        load_mapping(_file("m.toml", data))
    except MappingError as e:
        assert str(e)


def _calibration(suffix: str, data: bytes) -> None:
    from drivers.bus.arm import Calibration, CalibrationError
    try:
        c = Calibration.load(_file("c" + suffix, data))
    except CalibrationError as e:
        assert str(e)
        return
    assert c.joints


def fuzz_calibration_json(data: bytes) -> None:
    _calibration(".json", data)


def fuzz_calibration_toml(data: bytes) -> None:
    _calibration(".toml", data)


def fuzz_checkpoint(data: bytes) -> None:
    """weights_only loading: any file is refused with CheckpointError or loads without running code."""
    from teleop_app.policy.checkpoint import CheckpointError, build_model, read_checkpoint
    p = _file("ckpt.pt", data)
    try:
        blob = read_checkpoint(p)
        build_model(blob, p)
    except CheckpointError as e:
        assert str(e)


# ------------------------------------------------------------------ policy replies
class _ActServer:
    """A real loopback HTTP server whose /act answers with the current fuzz input."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        outer = self
        self.reply = b""

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.reply)))
                self.end_headers()
                self.wfile.write(outer.reply)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"


_ACT: dict = {}


def fuzz_act_reply(data: bytes) -> None:
    from teleop_app.policy.base import PolicyError, PolicyMeta
    from teleop_app.policy.remote import RemotePolicy
    if "srv" not in _ACT:
        _ACT["srv"] = _ActServer()
        meta = PolicyMeta(joint_names=[f"j{i}" for i in range(8)], action_dim=8, fps=10, image_size=(8, 8),
                          cameras=["front"], chunk_size=4, kind="fuzz")
        _ACT["joint"] = RemotePolicy(_ACT["srv"].url, meta=meta, action_mode="joint", cameras=["front"])
        _ACT["ee"] = RemotePolicy(_ACT["srv"].url, profile="sim7")
    _ACT["srv"].reply = data
    obs = {"images": {"front": np.zeros((8, 8, 3), np.uint8)}, "qpos": np.zeros(8), "instruction": "x"}
    for mode in ("joint", "ee"):
        try:
            a = _ACT[mode].predict(obs)
        except PolicyError as e:
            assert str(e)
            continue
        assert isinstance(a, np.ndarray) and a.ndim == 2


def fuzz_openpi_reply(data: bytes) -> None:
    """openpi's msgpack reply, decoded as OpenPIPolicy.predict does (wire.unpackb + layout.joints)."""
    from teleop_app.policy import wire
    from teleop_app.policy.base import PolicyError
    if "lay" not in _ACT:
        from teleop_app.policy.layouts import load_layout
        from teleop_app.profiles import load_profile
        from teleop_app.policy.remote import sim_kinematics
        _ACT["lay"], _ACT["prof"], _ACT["kin"] = load_layout("sim7"), load_profile("sim7"), sim_kinematics()
    try:
        reply = wire.unpackb(data)
    except wire.WireError as e:
        assert str(e)
        return
    fk, ik = _ACT["kin"]
    try:
        a = _ACT["lay"].joints(reply, np.zeros(8), _ACT["prof"], 0.1, fk=fk, ik=ik)
    except PolicyError as e:
        assert str(e)
        return
    assert isinstance(a, np.ndarray)


TARGETS = {name[len("fuzz_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("fuzz_")}


# ------------------------------------------------------------------ the default test run
def corpus_files(target: str) -> list[Path]:
    d = CORPUS / target
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


@pytest.mark.parametrize("target", list(TARGETS))
def test_corpus_replay(target):
    files = corpus_files(target)
    assert files, f"no corpus for {target}: run benchmarks/bench_fuzz.py --seed-corpus"
    for p in files:
        try:
            TARGETS[target](p.read_bytes())
        except Exception as e:          # noqa: BLE001 - name the input that fails
            raise AssertionError(f"{target}: corpus input {p.name} fails: {e!r}") from e


try:
    from hypothesis import HealthCheck, given, settings, strategies as hs
except ImportError:     # pragma: no cover
    hs = None


if hs is not None:
    # derandomized: the same inputs every run (a libhdf5 hang on some damaged files, see
    # docs/recorder_schema.md, must not turn the default run flaky); TELEOP_FUZZ_EXAMPLES=N for more
    _FAST = settings(max_examples=int(os.environ.get("TELEOP_FUZZ_EXAMPLES", "25")), deadline=None,
                     suppress_health_check=list(HealthCheck), database=None, derandomize=True)

    def _mutated(target: str):
        """Bytes near the corpus (its files with flipped / cut / spliced bytes) or plain random."""
        seeds = [p.read_bytes() for p in corpus_files(target)] or [b""]

        @hs.composite
        def strat(draw):
            base = bytearray(draw(hs.sampled_from(seeds)))
            for _ in range(draw(hs.integers(0, 4))):
                op = draw(hs.integers(0, 3))
                if op == 0 and base:
                    i = draw(hs.integers(0, len(base) - 1))
                    base[i] = draw(hs.integers(0, 255))
                elif op == 1 and base:
                    del base[draw(hs.integers(0, len(base))):]
                elif op == 2:
                    i = draw(hs.integers(0, len(base)))
                    base[i:i] = draw(hs.binary(max_size=16))
                else:
                    base = bytearray(draw(hs.binary(max_size=64)))
            return bytes(base)
        return strat()

    @pytest.mark.parametrize("target", list(TARGETS))
    def test_hypothesis_mutations(target):
        @_FAST
        @given(_mutated(target))
        def run(data):
            TARGETS[target](data)
        run()
