"""Fuzz campaign: coverage-guided (atheris / libFuzzer) runs of every parser of outside input.

    nice -n 10 .venv/bin/python benchmarks/bench_fuzz.py --seconds 60            # all targets, 60 s each
    .venv/bin/python benchmarks/bench_fuzz.py --target journal --seconds 600     # one target
    .venv/bin/python benchmarks/bench_fuzz.py --seed-corpus                      # (re)write the seeds

The targets are tests/test_fuzz.py's fuzz_* functions (the same ones the default test run replays
the corpus through). Each target runs in its own process, starting from tests/fuzz_corpus/<target>/;
a crashing input is copied into that folder (crash-<sha1>) so the default test run keeps replaying
it after the fix. Prints inputs tried per target, crashes found, and whether each corpus crash input
now passes (fixed).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
CORPUS = TESTS / "fuzz_corpus"
sys.path[:0] = [str(ROOT), str(TESTS)]


# ------------------------------------------------------------------ seeds (valid inputs of each kind)
def seeds() -> dict[str, dict[str, bytes]]:
    import json

    import numpy as np

    from drivers.bus import dynamixel as dxl
    from drivers.bus import feetech as fts
    out: dict[str, dict[str, bytes]] = {}
    out["dxl_status"] = {
        "ping": dxl.ping_status(1, 1060, 52), "read4": dxl.build_status(3, 0, b"\x00\x08\x00\x00"),
        "alert": dxl.build_status(2, 0x80, b""), "err": dxl.build_status(2, 0x84, b""),
        "stuffed": dxl.build_status(1, 0, b"\xff\xff\xfd\x01"), "range": dxl.build_status(5, 0x04)}
    out["fts_status"] = {"ok": fts.build_status(1, 0, b"\x00\x08"), "overload": fts.build_status(4, 0x20),
                         "bits": fts.build_status(2, 0x25, b"\x01")}
    ids = list(range(1, 9))
    out["dxl_simbus"] = {
        "ping": dxl.ping(1) + dxl.ping(dxl.BROADCAST_ID),
        "read": dxl.read(2, 132, 4) + dxl.read(9, 0, 2),
        "write": dxl.write(3, 64, b"\x01") + dxl.write(3, 116, dxl.encode(2100, 4)),
        "sync": dxl.sync_read(132, 4, ids) + dxl.sync_write(116, 4, {i: dxl.encode(2048, 4) for i in ids}),
        "reboot": dxl.reboot(4) + dxl.build_instruction(5, 0x55, b"\x00"),
        "id": dxl.write(1, 7, b"\x0a") + dxl.write(10, 7, b"\x01")}
    out["fts_simbus"] = {
        "ping": fts.ping(1) + fts.ping(fts.BROADCAST_ID),
        "read": fts.read(2, 56, 2) + fts.read(9, 0, 2),
        "write": fts.write(3, 40, b"\x01") + fts.write(3, 42, fts.encode(2100, 2)),
        "sync": fts.sync_read(56, 2, ids) + fts.sync_write(42, 2, {i: fts.encode(2048, 2) for i in ids}),
        "id": fts.write(1, 5, b"\x0a")}

    tmp = Path(tempfile.mkdtemp(prefix="teleop-seeds-"))
    from recorder.journal import JournalHeader, JournalWriter, Step
    from recorder.schema import EpisodeMeta
    from recorder.writer import EpisodeWriter, encode_jpeg
    joints = ["a", "b"]
    journals = {}
    for jpeg in (True, False):
        meta = EpisodeMeta("pick", 10, "sim", joints, "teleop")
        attrs = {**meta.to_attrs(), "start_monotonic": 1.0}
        header = JournalHeader(attrs, {"front": (4, 4)}, 2, jpeg)
        p = tmp / f"j{int(jpeg)}.journal"
        w = JournalWriter(p, header)
        for i in range(3):
            im = np.full((4, 4, 3), i * 40, np.uint8)
            w.append(i, Step(i * 0.1, np.full(2, i, np.float32), np.zeros(2, np.float32), np.ones(2, np.float32),
                             np.zeros(2, np.float32) if i else None,
                             {"front": encode_jpeg(im) if jpeg else im}, {"front": i * 0.1}))
        w.close()
        journals["jpeg" if jpeg else "raw"] = p.read_bytes()
    journals["torn"] = journals["raw"][:-7]
    out["journal"] = journals
    out["recover"] = dict(journals)

    eps = {}
    for jpeg in (True, False):
        w = EpisodeWriter(tmp / f"episode_00000{int(jpeg) + 1}.h5", EpisodeMeta("pick", 10, "sim", joints, "teleop"),
                          {"front": (4, 4)}, dof=2, jpeg=jpeg, hdf5_process=False)
        for i in range(3):
            w.add_step(np.full(2, i * 0.1), np.zeros(2), timestamp=i * 0.1,
                       images={"front": np.full((4, 4, 3), i * 50, np.uint8)})
        eps["jpeg" if jpeg else "raw"] = w.finish(success=1).read_bytes()
    eps["cut"] = eps["raw"][: len(eps["raw"]) // 2]
    out["h5_episode"] = eps

    from recorder.store import EpisodeStore
    st = EpisodeStore.create(tmp / "st", "sim", 10, joints, {"front": (4, 4)})
    for k in (1, 2):
        shutil.copy(tmp / f"episode_00000{k}.h5", st.episodes_dir / f"episode_00000{k}.h5")
    st.refresh()
    idx = (tmp / "st/index.json").read_bytes()
    out["dataset_index"] = {"real": idx, "empty": b'{"version": 1, "episodes": [], "trash": []}',
                            "bad_entry": json.dumps({"version": 1, "episodes": [{"id": "x"}]}).encode()}

    prof_dir = ROOT / "teleop_app/profiles"
    out["profile_toml"] = {p.stem: p.read_bytes() for p in sorted(prof_dir.glob("*.toml"))}
    out["mapping_toml"] = {p.stem: p.read_bytes() for p in sorted((ROOT / "teleop_app/mappings").glob("*.toml"))}
    from drivers.bus.arm import Calibration, JointCalibration
    cal = Calibration({"shoulder": JointCalibration(12.0, -1, 1.0), "gripper": JointCalibration(-3.0, 1, 0.5)})
    out["calibration_json"] = {"cal": cal.save(tmp / "c.json").read_bytes()}
    out["calibration_toml"] = {"cal": cal.save(tmp / "c.toml").read_bytes()}

    import torch
    from teleop_app.policy import checkpoint as ck
    torch.save({"format": ck.FORMAT, "version": ck.VERSION, "state_dict": {"w": torch.zeros(2)},
                "model_config": {"vocab_size": 4}, "meta": {}, "tokenizer": {}}, tmp / "c.pt")
    torch.save({"x": torch.arange(3)}, tmp / "d.pt")
    out["checkpoint"] = {"tagged": (tmp / "c.pt").read_bytes(), "plain": (tmp / "d.pt").read_bytes(),
                         "pickle_exec": malicious_checkpoint(tmp / "evil.pt").read_bytes()}

    from teleop_app.policy import wire
    out["act_reply"] = {
        "chunk": wire.dumps({"action": np.zeros((4, 8), np.float32)}).encode(),
        "ee": wire.dumps(np.array([0.01, 0, 0, 0, 0, 0, 1.0], np.float32)).encode(),
        "list": json.dumps({"action": [[0.0] * 8]}).encode(), "error": b'"error"',
        "double": json.dumps(wire.dumps({"action": np.zeros(7)})).encode(), "err": b'{"error": "boom"}'}
    out["openpi_reply"] = {
        "chunk": wire.packb({"actions": np.zeros((10, 8), np.float32), "server_timing": {"infer_ms": 1.0}}),
        "vec": wire.packb({"actions": np.ones(8, np.float64)}),
        "scalar": wire.packb({"actions": np.float32(1.0)})}
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def malicious_checkpoint(path: Path) -> Path:
    """A torch zip checkpoint whose pickle would run os.system on a full (unsafe) load."""
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/teleop-fuzz-pwned",))
    body = pickle.dumps({"format": "x", "evil": Evil()}, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", body)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    return path


def write_seeds() -> None:
    for target, files in seeds().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / f"seed-{name}").write_bytes(data)
    print(f"seed corpus written to {CORPUS}")


# ------------------------------------------------------------------ one target under atheris (child)
def child(target: str, seconds: int, artifacts: Path, work: Path) -> None:
    import atheris
    with atheris.instrument_imports(include=["drivers", "recorder", "teleop_app"]):
        import test_fuzz
        import drivers.bus.dynamixel, drivers.bus.feetech, drivers.bus.simbus  # noqa: F401,E401
        import recorder.journal, recorder.reader, recorder.recover, recorder.store  # noqa: F401,E401
        import teleop_app.profiles, teleop_app.mapping, teleop_app.policy.wire  # noqa: F401,E401
    fn = test_fuzz.TARGETS[target]
    fn(b"")      # warm up lazy imports (torch, h5py) outside libFuzzer's per-input timeout
    atheris.Setup([sys.argv[0], str(work), f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/",
                   "-rss_limit_mb=3072", "-timeout=20", "-max_len=65536", "-print_final_stats=1"], fn)
    atheris.Fuzz()


def run_target(target: str, seconds: int) -> dict:
    artifacts = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-art-"))
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-corpus-"))
    for p in (CORPUS / target).glob("*"):
        shutil.copy(p, work / p.name)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, __file__, "--child", target, "--seconds", str(seconds),
                        "--artifacts", str(artifacts), "--work", str(work)],
                       capture_output=True, text=True, timeout=seconds + 300)
    runs = 0
    for pat in (r"Done (\d+) runs", r"stat::number_of_executed_units:\s*(\d+)", r"#(\d+)\s"):
        m = re.findall(pat, r.stderr)
        if m:
            runs = max(runs, max(int(x) for x in m))
    crashes = []
    for a in sorted(artifacts.iterdir()):
        data = a.read_bytes()
        kind = a.name.split("-", 1)[0]          # libFuzzer: crash- / timeout- / oom- / slow-unit-
        name = f"{kind}-{hashlib.sha1(data).hexdigest()[:16]}"
        dst = CORPUS / target / name
        if not dst.exists():
            dst.write_bytes(data)
        crashes.append(name)
    tail = [ln for ln in r.stderr.splitlines() if "Error" in ln or "Exception" in ln or "Traceback" in ln][:3]
    shutil.rmtree(artifacts, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"target": target, "runs": runs, "seconds": time.monotonic() - t0, "crashes": crashes,
            "rc": r.returncode, "detail": tail}


def replay_known_crashes() -> dict[str, tuple[int, int]]:
    """Every crash-* input kept in the corpus: (count, how many pass now)."""
    import test_fuzz
    out = {}
    for target, fn in test_fuzz.TARGETS.items():
        files = sorted(p for p in (CORPUS / target).iterdir() if not p.name.startswith("seed-")) \
            if (CORPUS / target).is_dir() else []
        ok = 0
        for p in files:
            try:
                fn(p.read_bytes())
                ok += 1
            except Exception:  # noqa: BLE001
                pass
        out[target] = (len(files), ok)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", help="target name (repeatable; default: all)")
    ap.add_argument("--seconds", type=int, default=60, help="per target")
    ap.add_argument("--seed-corpus", action="store_true", help="(re)write the seed files and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.seconds, Path(a.artifacts), Path(a.work))
        return 0
    if a.seed_corpus:
        write_seeds()
        return 0
    import test_fuzz
    targets = a.target or list(test_fuzz.TARGETS)
    before = replay_known_crashes()
    print(f"fuzz campaign: {len(targets)} target(s), {a.seconds} s each (atheris / libFuzzer)")
    print(f"{'target':18s} {'inputs tried':>13s} {'exec/s':>8s} {'new findings':>12s}")
    total_runs, new = 0, 0
    for t in targets:
        res = run_target(t, a.seconds)
        total_runs += res["runs"]
        new += len(res["crashes"])
        rate = res["runs"] / max(res["seconds"], 1e-9)
        print(f"{t:18s} {res['runs']:13d} {rate:8.0f} {len(res['crashes']):12d}"
              + (f"   {res['crashes'][0]}: {res['detail'][:1]}" if res["crashes"] else ""), flush=True)
    after = replay_known_crashes()
    print(f"total inputs tried: {total_runs}; new findings this run (crash/timeout/oom): {new}")
    print("findings kept in tests/fuzz_corpus (crash-*/timeout-*: this and earlier campaigns), passing now:")
    for t in targets:
        n, ok = after[t]
        if n:
            print(f"  {t:18s} {ok}/{n} fixed")
    del before
    return 0


if __name__ == "__main__":
    sys.exit(main())
