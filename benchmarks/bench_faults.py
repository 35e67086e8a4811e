"""Fault campaign on the recorder and the episode store, with real processes and real files.

    nice -n 10 .venv/bin/python benchmarks/bench_faults.py                 # default sizes
    .venv/bin/python benchmarks/bench_faults.py --kills 40 --cuts 200      # longer

Faults injected:
  * SIGKILL of a recording process at random moments of start / add steps / stop / keep (add +
    relabel) / delete / undo / trim / export (a loop of them, killed at a random time);
  * the journal of the interrupted episode cut at random byte offsets (torn writes);
  * disk full on a small tmpfs and the dataset folder turning read-only mid-recording (a read-only
    bind mount over it: `remount,ro` is refused while files are open); needs root for the mounts,
    skipped otherwise.
After each: every episode finished before the fault still reads back identically, the store index
agrees with the files, an export is complete or absent, and the interrupted episode is recovered
with the loss measured in steps and seconds (target: 0 earlier episodes lost, <= 0.5 s of the
current one). Prints one line per fault kind and a total.
Motion and camera faults during a real-time scripted recording on robot="sim-serial" (the real
serial driver over a pty, Dynamixel and Feetech), injected through Session.devices.simbus: (a) a
servo's replies dropped, (b) corrupted CRCs, (c) the bus unplugged then replugged, (d) a latched
hardware alert (overload), and (e) the camera vanishing and coming back. After each: earlier
episodes read back intact, the current one kept with <= 0.5 s lost, the arm held from the first
tick without an answer (no new goal written after the fault, only the last one again; the time from
the fault to that tick and to the e-stop, 0.25 s later, are measured), one message saying what
happened.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HZ = 50.0

# A recording process that loops over every store operation, logging what is durable (fsynced) so the
# parent knows what must survive. Steps are logged as they are handed to the writer; a store edit is
# logged before it starts ("deleting") and after it returns ("deleted"), so a kill in between leaves
# the parent knowing that either state is right.
CHILD = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter
    from recorder.export_lerobot import export_lerobot
    root, hz, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    log = open(sys.argv[4], "a", buffering=1)
    def say(**kw):
        log.write(json.dumps(kw) + "\\n"); log.flush(); os.fsync(log.fileno())
    joints = ["a", "b", "c", "g"]
    cams = {"front": (24, 32)}
    st = EpisodeStore.create(root, robot="sim", fps=hz, joint_names=joints, cameras=cams)
    rng = np.random.default_rng(seed)
    k = 0
    while True:
        k += 1
        n = int(rng.integers(5, 40))
        say(op="start", k=k)
        w = EpisodeWriter(st.new_episode_path(), EpisodeMeta(f"ep {k}", hz, "sim", joints, "teleop"), cams, dof=4)
        t0 = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / hz - time.monotonic()))
            w.add_step(np.full(4, i, np.float32), np.full(4, i, np.float32), timestamp=t0 + i / hz,
                       images={"front": np.full((24, 32, 3), (i * 7) % 256, np.uint8)})
            say(op="step", k=k, path=str(w.path), i=i + 1)
        say(op="stop", k=k)
        p = w.finish(success=-1)
        info = st.add(p)
        st.relabel(info.id, 1)
        say(op="kept", k=k, id=info.id, steps=n)
        op = rng.integers(0, 4)
        if op == 0 and len(st.episodes()) > 2:
            victim = st.episodes()[0].id
            say(op="deleting", id=victim)
            st.delete(victim)
            say(op="deleted", id=victim)
            if rng.integers(0, 2):
                say(op="undeleting", id=victim)
                st.undo()
                say(op="undeleted", id=victim)
        elif op == 1 and n > 10:
            say(op="trimming", id=info.id, steps=n - 4)
            st.trim(info.id, 2, n - 2)
            say(op="trimmed", id=info.id, steps=n - 4)
        elif op == 2:
            out = root + f"-export-{k}"
            export_lerobot(st, out, "t/t")
            say(op="exported", out=out)
""")


def _read_log(p: Path) -> list[dict]:
    out = []
    for line in p.read_text().splitlines() if p.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass      # the line being written at the kill
    return out


def kill_campaign(n: int, seed: int = 0, work: Path | None = None) -> dict:
    """SIGKILL the looping recorder n times at random moments; check everything after each."""
    from recorder import EpisodeStore, read_episode
    rnd = random.Random(seed)
    work = Path(work or tempfile.mkdtemp(prefix="faults-kill-"))
    script = work / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = {"kills": 0, "before_store": 0, "earlier_lost": 0, "earlier_checked": 0, "current_lost_steps": [], "bad_exports": 0,
           "index_disagreements": 0, "problems": [], "recovered": 0}
    for r in range(n):
        root = work / f"ds{r}"
        log = work / f"log{r}"
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(HZ), str(r), str(log)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90      # wait until it has kept an episode (slow start-up on a busy
        while time.monotonic() < deadline and proc.poll() is None:     # machine), then a random moment
            if any(e["op"] == "kept" for e in _read_log(log)):
                break
            time.sleep(0.05)
        time.sleep(rnd.uniform(0.0, 4.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        res["kills"] += 1
        events = _read_log(log)
        if not (root / "store.json").exists():
            res["before_store"] += 1     # killed while starting up
            continue
        st = EpisodeStore.open(root)          # recovery runs here
        res["recovered"] += len(st.last_recovered)
        # earlier episodes: every kept one (minus deletions not undone) must read back, same length
        expect: dict[int, int] = {}
        gone: dict[int, int] = {}        # deleted id -> its length then (undo brings back that, trims included)
        for e in events:
            if e["op"] == "kept":
                expect[e["id"]] = e["steps"]
            elif e["op"] == "trimmed":
                expect[e["id"]] = e["steps"]
            elif e["op"] == "deleted":
                gone[e["id"]] = expect.pop(e["id"], 0)
            elif e["op"] == "undeleted":
                expect[e["id"]] = gone.pop(e["id"])
        have = {i.id: i for i in st.episodes()}
        # the edit the kill interrupted (logged before it started, not after it returned): either state is right
        pending = events[-1] if events and events[-1]["op"] in ("deleting", "undeleting", "trimming") else None
        for eid, steps in expect.items():
            res["earlier_checked"] += 1
            info = have.get(eid)
            lengths = {steps, steps + 4}              # + 4: trimmed, then the trim undone
            if pending and pending["id"] == eid and pending["op"] == "trimming":
                lengths.add(pending["steps"])
            try:
                ok = info is not None and not info.broken and read_episode(st.path(eid)).num_steps in lengths
            except Exception:  # noqa: BLE001
                ok = False
            if not ok and info is None and pending and pending["id"] == eid and pending["op"] == "deleting":
                ok = True                             # killed inside delete() after the move
            if not ok:
                res["earlier_lost"] += 1
                res["problems"].append(f"run {r}: episode {eid} ({steps} steps) not intact: {info}")
        if pending and pending["op"] == "undeleting" and pending["id"] in have:     # killed inside undo()
            info = have[pending["id"]]
            if info.broken or read_episode(st.path(info.id)).num_steps != gone.get(pending["id"], info.num_steps):
                res["problems"].append(f"run {r}: episode {info.id} undeleted by a killed undo() is not intact")
        # the index agrees with the files
        for info in st.episodes():
            if info.broken:
                continue
            with read_episode(st.path(info.id)) as ep:
                if ep.num_steps != info.num_steps or ep.meta.instruction != info.instruction:
                    res["index_disagreements"] += 1
        # the interrupted episode: steps handed over vs steps recovered
        steps = [e for e in events if e["op"] == "step"]
        last_k = max((e["k"] for e in events if e["op"] == "start"), default=0)
        kept = any(e["op"] == "kept" and e.get("k") == last_k for e in events)
        cur = [e for e in steps if e["k"] == last_k]
        if cur and not kept:      # killed while recording, stopping or keeping it
            handed = cur[-1]["i"]
            path = Path(cur[-1]["path"])
            got = 0
            if path.exists():
                try:
                    got = read_episode(path).num_steps
                except Exception:  # noqa: BLE001
                    got = 0
            res["current_lost_steps"].append(max(0, handed - got))
        # exports: complete (meta/info.json) or absent; no staging folder left behind... except the
        # one of the killed process (a hidden .name.exporting-PID), which is garbage, never used
        for d in work.glob(f"ds{r}-export-*"):
            if not (d / "meta/info.json").exists():
                res["bad_exports"] += 1
                res["problems"].append(f"run {r}: half export {d}")
    return res


def torn_journal_campaign(cuts: int, seed: int = 0, work: Path | None = None) -> dict:
    """Cut a real journal at random byte offsets; recovery must keep every complete record."""
    import numpy as np

    from recorder import EpisodeMeta, read_episode
    from recorder.journal import _HEAD
    from recorder.recover import recover_episode
    from recorder.writer import EpisodeWriter
    rnd = random.Random(seed)
    work = Path(work or tempfile.mkdtemp(prefix="faults-torn-"))
    src = work / "src"
    src.mkdir()
    w = EpisodeWriter(src / "episode_000001.h5", EpisodeMeta("x", HZ, "sim", ["a", "b"], "teleop"),
                      {"front": (24, 32)}, dof=2, hdf5_process=False)
    n = 100
    for i in range(n):
        w.add_step(np.full(2, i, np.float32), np.zeros(2), timestamp=i / HZ,
                   images={"front": np.full((24, 32, 3), i, np.uint8)})
    deadline = time.monotonic() + 10
    while w.written_steps < n and time.monotonic() < deadline:
        time.sleep(0.01)
    journal = (src / "episode_000001.h5.journal").read_bytes()
    w.abort()
    # record boundaries
    ends, off = [], 0
    while off + _HEAD.size <= len(journal):
        length = int.from_bytes(journal[off + 4:off + 8], "little")
        off += _HEAD.size + length
        ends.append(off)
    res = {"cuts": 0, "lost_extra_steps": 0, "max_lost_s": 0.0, "failures": []}
    for c in range(cuts):
        cut = rnd.randrange(0, len(journal) + 1)
        d = work / f"c{c}"
        d.mkdir()
        (d / "episode_000001.h5.journal").write_bytes(journal[:cut])
        complete_steps = max(0, sum(1 for e in ends if e <= cut) - 1)      # minus the header record
        out = recover_episode(d / "episode_000001.h5")
        got = 0
        if out is not None:
            with read_episode(out) as ep:
                got = ep.num_steps
                if got and not np.array_equal(ep.qpos[:, 0], np.arange(got, dtype=np.float32)):
                    res["failures"].append(f"cut {cut}: wrong data")
        res["cuts"] += 1
        if got != complete_steps:
            res["lost_extra_steps"] += abs(complete_steps - got)
            res["failures"].append(f"cut at byte {cut}: {complete_steps} complete steps, recovered {got}")
        # the torn record itself is the only loss: at most one step (1 / fps s)
        res["max_lost_s"] = max(res["max_lost_s"], (1 if cut < len(journal) else 0) / HZ)
        shutil.rmtree(d)
    return res


def disk_campaign(work: Path | None = None) -> dict:
    """Disk full on a 40 MB tmpfs, then the folder turning read-only mid-recording (root only)."""
    import numpy as np

    from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter, read_episode
    work = Path(work or tempfile.mkdtemp(prefix="faults-disk-"))
    mnt = work / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        return {"skipped": "cannot mount tmpfs (needs root)"}
    res: dict = {}
    try:
        cams = {"front": (120, 160)}
        st = EpisodeStore.create(mnt / "ds", "sim", HZ, ["a", "b"], cams)
        rng = np.random.default_rng(0)

        def record(text, limit_s=15.0, on_step=None):
            w = EpisodeWriter(st.new_episode_path(), EpisodeMeta(text, HZ, "sim", ["a", "b"], "teleop"), cams,
                              dof=2, jpeg=False)
            i, t0 = 0, time.monotonic()
            while w.error is None and time.monotonic() - t0 < limit_s:
                w.add_step(np.zeros(2), np.zeros(2), timestamp=i / HZ,
                           images={"front": rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)})
                i += 1
                if on_step:
                    on_step(i)
                time.sleep(1 / HZ)
            try:
                p = w.finish(success=1)
            except Exception as e:  # noqa: BLE001
                return i, None, str(e)
            return i, p, w.error

        w = EpisodeWriter(st.new_episode_path(), EpisodeMeta("first", HZ, "sim", ["a", "b"], "teleop"), cams, dof=2)
        for i in range(10):
            w.add_step(np.zeros(2), np.zeros(2), timestamp=i / HZ, images={"front": np.zeros((120, 160, 3), np.uint8)})
        first = st.add(w.finish(success=1))
        handed, p, err = record("fills the disk")
        got = read_episode(p).num_steps if p else 0
        res["disk_full"] = {"message": err, "handed": handed, "saved": got,
                            "lost_s": (handed - got) / HZ,
                            "earlier_intact": read_episode(st.path(first.id)).num_steps == 10}
        # read-only: free the space again, then remount read-only while recording
        for q in list(st.episodes_dir.glob("episode_00000[2-9]*")):
            q.unlink()
        st.refresh()

        flipped = []

        ds = mnt / "ds"

        def flip(i):
            # `remount,ro` of the filesystem is refused while the writer has files open ("mount point is
            # busy"), so the folder turns read-only the way a bind mount can: a read-only bind mount of
            # it over itself. Open files keep writing; every new path operation (create, rename) fails
            # with EROFS, as on a share exported read-only mid-session.
            if i == 25:
                r = subprocess.run(["mount", "--bind", str(ds), str(ds)], capture_output=True, text=True)
                if r.returncode == 0:
                    r = remount_read_only(ds)
                flipped.append(r.returncode == 0 or r.stderr.strip())
        handed, p, err = record("read-only", limit_s=3.0, on_step=flip)
        ro_note = {"message": err, "handed": handed, "injected": flipped[0] if flipped else "not reached",
                   "published": bool(p and p.exists())}
        subprocess.run(["umount", str(ds)], capture_output=True)          # the folder is writable again
        st2 = EpisodeStore.open(ds)                                        # recovers what was left
        rec = [e for e in st2.episodes() if e.id != first.id]
        got = read_episode(st2.path(rec[-1].id)).num_steps if rec else 0
        res["read_only"] = {**ro_note, "saved": got, "lost_s": (handed - got) / HZ,
                            "recovered": list(st2.last_recovered),
                            "earlier_intact": read_episode(st2.path(first.id)).num_steps == 10}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return res


def remount_read_only(path: Path, tries: int = 100) -> subprocess.CompletedProcess:
    """`mount -o remount,bind,ro` of a bind mount at `path` (the folder turning read-only under a
    recording). The kernel refuses it with "mount point is busy" (EBUSY) while a writer thread is
    inside a write on that mount, so it is tried again for up to ~1 s; the last result is returned."""
    for _ in range(tries):
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True)
        if r.returncode == 0 or "busy" not in r.stderr:
            break
        time.sleep(0.01)
    return r


# ==================================================================== motion and camera faults
# During a real-time recording on robot="sim-serial" (the real serial driver over a pty), faults
# injected through Session.devices.simbus and the SimCamera. Each is (name, inject, recover, expected
# message regex, motion fault?). Recovery runs what an operator would do: clear the cause, release
# the e-stop (a hardware alert also needs the servo rebooted / its torque re-enabled).
MOTION_FAULTS = ("drop", "crc", "unplug", "alert")
CAMERA_FAULTS = ("camera",)
_EXPECT = {"drop": r"servo 3 stopped answering", "crc": r"(?i)(checksum|crc).*(5|corrupt)",
           "unplug": r"servos 1, 2, 3, 4, 5, 6, 7, 8 stopped answering", "alert": r"servo 2 .*(reboot|torque)",
           "camera": r"camera '\w+' failed"}


def _wait(cond, timeout: float = 10.0, dt: float = 0.002) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(dt)
    return False


def _clear_alert(s, sid: int = 2) -> None:
    """Runs on the control thread (posted): what the operator's 'reboot servo' does."""
    from drivers.bus import feetech as fts
    arm = s.devices.robot
    if arm.config.protocol == "dynamixel":
        arm.bus.reboot(sid)
    else:
        arm.bus.write(sid, fts.ADDR_TORQUE_ENABLE, b"\x01")
    arm.set_torque(True)


def motion_camera_campaign(protocols=("dynamixel", "feetech"), rounds: int = 1, work: Path | None = None,
                           faults=MOTION_FAULTS + CAMERA_FAULTS, record_s: float = 0.6, fault_s: float = 0.5) -> dict:
    """Record scripted episodes on sim-serial; inject each fault mid-episode; check after each."""
    import re

    from recorder import EpisodeStore, read_episode
    from teleop_app.session import Mode, Session, SessionConfig
    from teleop_app.workflow import State, WorkflowConfig
    work = Path(work or tempfile.mkdtemp(prefix="faults-motion-"))
    res = {"injected": 0, "earlier_checked": 0, "earlier_lost": 0, "current_lost_steps": [], "hold_s": [],
           "goals_after_fault": [], "estop_s": [], "problems": [], "messages": {}}
    for proto in protocols:
        fps = 20
        cfg = SessionConfig(dataset=str(work / f"ds-{proto}"), fps=fps, robot="sim-serial", protocol=proto,
                            use_gamepad=False, workflow=WorkflowConfig(countdown_s=0, reset_s=0, episode_s=0,
                                                                       target_episodes=1000))
        kept: dict[int, int] = {}      # episode id -> steps
        with Session(cfg) as s:
            bus = s.devices.simbus
            if not _wait(lambda: s.status.qpos is not None, 30):
                res["problems"].append(f"{proto}: session never published a position")
                continue
            s.set_mode(Mode.SCRIPTED)
            for r in range(rounds):
                for kind in faults:
                    where = f"{proto} round {r} {kind}"
                    s.start_episode()
                    if not _wait(lambda: s.status.workflow == State.RECORDING, 10):
                        res["problems"].append(f"{where}: recording did not start: {list(s.messages)[-3:]}")
                        continue
                    time.sleep(record_s)
                    n_msg = s._n_messages
                    rec = s.pipeline.recorder
                    hist0 = len(s.history)
                    steps_at_fault = rec.steps
                    t_fault = time.monotonic()
                    motion = kind in MOTION_FAULTS
                    cam = next(iter(s.devices.cameras.values()), None)
                    if kind == "drop":
                        bus.drop_replies([3])
                    elif kind == "crc":
                        bus.corrupt_crc([5], 1000)
                    elif kind == "unplug":
                        bus.unplug()
                    elif kind == "alert":
                        bus.hardware_error([2])
                    elif kind == "camera":
                        cam.disconnect()
                    res["injected"] += 1
                    if motion:
                        pipe = s.pipeline
                        # held: the first tick that got no observation wrote the last goal again and ran
                        # no source (pipeline._no_observation); a fault that lasts 0.25 s then e-stops
                        if not _wait(lambda: (pipe.last_fault_at or 0) >= t_fault or s.safety.estopped, 5):
                            res["problems"].append(f"{where}: no hold after the fault")
                        held_at = pipe.last_fault_at if (pipe.last_fault_at or 0) >= t_fault else time.monotonic()
                        res["hold_s"].append(held_at - t_fault)
                        if not _wait(lambda: s.safety.estopped, 5):
                            res["problems"].append(f"{where}: no e-stop after the lasting fault")
                        # goals written after the fault (the servos hold their last goal from then on)
                        after = [h for h in list(s.history)[hist0:] if h[0] >= t_fault]
                        res["goals_after_fault"].append(len(after))
                        _wait(lambda: s.status.estopped, 2)
                        res["estop_s"].append(time.monotonic() - t_fault)
                        if s.status.workflow == State.RECORDING:
                            _wait(lambda: s.status.workflow != State.RECORDING, 2)
                    time.sleep(fault_s)
                    if kind in ("drop", "crc"):
                        bus.clear_faults()
                    elif kind == "unplug":
                        bus.replug()
                    elif kind == "alert":
                        s._post(lambda: _clear_alert(s))
                    elif kind == "camera":
                        cam.connect()
                    if motion:
                        time.sleep(0.1)
                        s.reset_estop()
                        if not _wait(lambda: not s.status.estopped, 5):
                            res["problems"].append(f"{where}: e-stop could not be released after recovery: "
                                                   f"{list(s.messages)[-3:]}")
                    else:
                        _wait(lambda: any("is back" in m for m in list(s.messages)[-5:]), 5)
                        time.sleep(0.2)
                        steps_at_fault = rec.steps if rec.active else steps_at_fault
                        s.stop_episode()
                    if not _wait(lambda: s.status.workflow == State.REVIEW, 5):
                        res["problems"].append(f"{where}: episode not in review ({s.status.workflow})")
                    said = list(s.messages)[-(s._n_messages - n_msg):] if s._n_messages > n_msg else []
                    res["messages"][where] = said
                    if not any(re.search(_EXPECT[kind], m) for m in said):
                        res["problems"].append(f"{where}: no message saying what happened: {said}")
                    if sum("control loop error" in m for m in said) > 1 or sum("failed" in m for m in said) > 1:
                        res["problems"].append(f"{where}: the same fault said more than once: {said[:4]}")
                    if kind == "camera" and not any("is back" in m for m in said):
                        res["problems"].append(f"{where}: no message that the camera is back: {said}")
                    k0 = s.status.kept
                    s.keep(True)
                    if not _wait(lambda: s.status.kept > k0 and len(EpisodeStore.open(cfg.dataset).episodes())
                                 == len(kept) + 1, 10):
                        res["problems"].append(f"{where}: episode not kept: {list(s.messages)[-3:]}")
                        res["current_lost_steps"].append(steps_at_fault)
                        continue
                    st = EpisodeStore.open(cfg.dataset)
                    new = [i for i in st.episodes() if i.id not in kept]
                    got = read_episode(st.path(new[-1].id)).num_steps if new else 0
                    res["current_lost_steps"].append(max(0, steps_at_fault - got))
                    # earlier episodes read back from their files
                    for eid, n in kept.items():
                        res["earlier_checked"] += 1
                        try:
                            ok = read_episode(st.path(eid)).num_steps == n
                        except Exception:  # noqa: BLE001
                            ok = False
                        if not ok:
                            res["earlier_lost"] += 1
                            res["problems"].append(f"{where}: earlier episode {eid} ({n} steps) not intact")
                    if new:
                        kept[new[-1].id] = got
                    _wait(lambda: s.status.workflow != State.REVIEW, 3)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="motion/camera fault rounds per protocol")
    ap.add_argument("--only-motion", action="store_true", help="run only the motion and camera faults")
    a = ap.parse_args()
    t = time.monotonic()
    m = motion_camera_campaign(rounds=a.rounds)
    hold = sorted(m["hold_s"])
    lost = m["current_lost_steps"]
    print(f"motion/camera faults on sim-serial (dynamixel + feetech, {a.rounds} round(s) of "
          f"{', '.join(MOTION_FAULTS + CAMERA_FAULTS)}): {m['injected']} injected; earlier episodes checked "
          f"{m['earlier_checked']}, lost {m['earlier_lost']}; current episode steps lost max {max(lost, default=0)} "
          f"(= {max(lost, default=0) / 20:.2f} s at 20 Hz); goals written after a motion fault max "
          f"{max(m['goals_after_fault'], default=0)}; fault -> first held tick median "
          f"{hold[len(hold) // 2] * 1000 if hold else 0:.0f} ms, max {hold[-1] * 1000 if hold else 0:.0f} ms; "
          f"problems {len(m['problems'])}")
    for p in m["problems"][:5]:
        print("   ", p)
    if a.only_motion:
        print(f"campaign took {time.monotonic() - t:.0f} s")
        return 0
    k = kill_campaign(a.kills, a.seed)
    lost = k["current_lost_steps"]
    print(f"SIGKILL at random moments: {k['kills']} kills; earlier episodes checked {k['earlier_checked']}, "
          f"lost {k['earlier_lost']}; index/file disagreements {k['index_disagreements']}; half exports "
          f"{k['bad_exports']}; interrupted episodes recovered {k['recovered']}, steps lost "
          f"max {max(lost, default=0)} (= {max(lost, default=0) / HZ:.2f} s at {HZ:g} Hz), "
          f"median {sorted(lost)[len(lost) // 2] if lost else 0}")
    for p in k["problems"][:5]:
        print("   ", p)
    j = torn_journal_campaign(a.cuts, a.seed)
    print(f"journal cut at random offsets: {j['cuts']} cuts; steps lost beyond the torn record "
          f"{j['lost_extra_steps']}; worst loss {j['max_lost_s']:.2f} s")
    for p in j["failures"][:5]:
        print("   ", p)
    d = disk_campaign()
    if "skipped" in d:
        print(f"disk full / read-only: skipped ({d['skipped']})")
    else:
        for kind, r in d.items():
            print(f"{kind}: steps handed {r['handed']}, saved {r['saved']}, earlier episode intact "
                  f"{r['earlier_intact']}; message: {r['message']}"
                  + (f"; remount read-only: {r['injected']}" if "injected" in r else ""))
    print(f"campaign took {time.monotonic() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
