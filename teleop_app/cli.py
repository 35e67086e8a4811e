"""`teleop` command line: the GUI, headless recording, replay, datasets, devices, policies.

Every subcommand prints what to do on failure and exits non-zero; nothing here imports Qt or torch
unless the subcommand needs it.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

EPILOG = """examples:
  teleop gui                                   open the app on the simulated workcell (MuJoCo physics)
  teleop gui --kinematic                       ... on the kinematic fast-mode sim
  teleop record --mode scripted --episodes 20  20 expert demos into data/default (headless, fast)
  teleop record --mode gamepad --episodes 5    teleoperate with the pad, headless, real time
  teleop datasets list data/default            episodes, labels, cadence health
  teleop datasets export data/default out/ --format lerobot
  teleop replay data/default/episode_000000.h5 --robot sim
  teleop train data/default runs/vla.pt        train the project's small VLA on the CPU
  teleop eval runs/vla.pt --episodes 20        closed-loop success rate in the sim
"""


class CliError(Exception):
    pass


def _progress(prefix: str):
    """A one-line text progress bar for long work."""
    t0 = time.monotonic()

    def cb(done: int, total: int) -> None:
        total = max(total, 1)
        w = 30
        n = int(w * done / total)
        el = time.monotonic() - t0
        eta = el / done * (total - done) if done else 0
        sys.stderr.write(f"\r{prefix} [{'#' * n}{'.' * (w - n)}] {done}/{total} {el:5.1f}s eta {eta:5.1f}s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return cb


def _session_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="sim7", help="built-in profile name (sim7, koch, so101) or a .toml path")
    p.add_argument("--robot", default="sim", choices=["sim", "sim-serial", "real"],
                   help="sim: in-process simulated arm; sim-serial: the sim behind a simulated servo bus on a "
                        "pseudo-terminal, driven by the real serial driver; real: hardware on --port")
    p.add_argument("--port", help="serial port for --robot real (default: the profile's)")
    p.add_argument("--protocol", default="dynamixel", choices=["dynamixel", "feetech"],
                   help="servo protocol spoken by --robot sim-serial")
    p.add_argument("--calibration", help="servo calibration file for --robot real")
    p.add_argument("--fps", type=float, help="control and recording rate in Hz (1..50; default: profile)")
    p.add_argument("--cameras", help="comma-separated camera names to use (default: all in the profile)")
    p.add_argument("--dataset", default="data/default", help="dataset folder (created if missing)")
    p.add_argument("--mapping", help="gamepad mapping TOML (default: built-in Xbox layout)")
    p.add_argument("--operator", default="", help="operator name stored in each episode")
    p.add_argument("--seed", type=int, default=0, help="sim scene seed")
    p.add_argument("--task", default="pick_red", help="sim task: pick_red, pick_blue, red_in_bowl (physics sim "
                   "also red_on_plate, push_red, stack_red_on_blue)")
    p.add_argument("--randomize", action="store_true", help="sim domain randomisation (light, colours, camera, noise)")
    _sim_args(p)
    p.add_argument("--leader", metavar="sim|PORT",
                   help="leader arm for --mode leader and takeovers: 'sim' (simulated, own pty) or its serial port")
    p.add_argument("--leader-profile", help="leader profile (default: <profile>_leader, e.g. koch_leader)")
    p.add_argument("--leader-calibration", help="the leader's calibration JSON (needed for a real leader)")


def _sim_args(p: argparse.ArgumentParser) -> None:
    """--kinematic / --physics: which simulated workcell (the MuJoCo physics one unless told)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kinematic", dest="physics", action="store_false", default=None,
                   help="sim: the kinematic fast mode (the arm follows its goal within a tick, a cube moves "
                        "only when grasped; tasks pick_red, pick_blue, red_in_bowl) instead of the default "
                        "MuJoCo contact physics")
    g.add_argument("--physics", dest="physics", action="store_true", default=None,
                   help="sim: MuJoCo contact physics (the default; friction grasps that can slip; more tasks: "
                        "red_on_plate, push_red, stack_red_on_blue)")


def _sim_tasks(physics: bool | None) -> dict[str, str]:
    """The sim tasks the chosen backend can set up: task key -> instruction."""
    from drivers.sim import sim_tasks
    from teleop_app.devices import sim_physics
    return sim_tasks(sim_physics(physics))


def _unknown_task(task: str, physics: bool | None) -> CliError:
    from drivers.sim import PHYSICS_TASKS
    from teleop_app.devices import sim_physics
    known = _sim_tasks(physics)
    kin = not sim_physics(physics)
    return CliError(f"unknown sim task '{task}'" + (" for the kinematic sim" if kin else "")
                    + f": use one of {', '.join(known)}"
                    + (f" (without --kinematic also {', '.join(PHYSICS_TASKS)})" if kin else ""))


def _session_config(a):
    from teleop_app.session import SessionConfig
    from teleop_app.workflow import WorkflowConfig
    return SessionConfig(profile=a.profile, robot=a.robot, port=a.port, protocol=a.protocol,
                         calibration=a.calibration, fps=a.fps,
                         cameras=a.cameras.split(",") if a.cameras else None, dataset=a.dataset,
                         mapping=a.mapping, operator=a.operator, seed=a.seed, task=a.task,
                         randomize=a.randomize, physics=a.physics, workflow=WorkflowConfig(), leader=a.leader,
                         leader_profile=a.leader_profile, leader_calibration=a.leader_calibration)


# ------------------------------------------------------------------ commands
def cmd_gui(a) -> int:
    """The window is a client of a control process (teleop_app.control.server) that owns the devices."""
    try:
        from ui.app import main as gui_main
    except ImportError as e:
        raise CliError(f"the GUI needs PySide6 and pyqtgraph ({e}); run ./dev app to install them")
    cfg = _session_config(a)
    if a.unattended:
        if a.unattended < 1:
            raise CliError("--unattended N needs N >= 1 episodes")
        tasks = _sim_tasks(cfg.physics)
        if a.task not in tasks:
            raise _unknown_task(a.task, cfg.physics)
        wf = cfg.workflow
        wf.target_episodes, wf.auto_keep, wf.countdown_s = a.unattended, True, 0.0
        wf.reset_s, wf.episode_s = a.reset_s, a.episode_s
        wf.instructions = [tasks[a.task]]
    return gui_main(cfg, unattended=a.unattended, grace_s=a.grace, hang_s=a.hang_s)


def cmd_record(a) -> int:
    if a.perturb and not (a.mode == "scripted" and a.fast):
        raise CliError("--perturb needs --mode scripted --fast (the sim's expert drives the detours)")
    if a.mode == "scripted" and a.fast:
        from drivers.sim import TASKS
        from teleop_app.devices import sim_physics
        from teleop_app.scripted import record_scripted
        tasks = a.tasks.split(",") if a.tasks else list(TASKS)
        bad = [t for t in tasks if t not in _sim_tasks(a.physics)]
        if bad:
            raise _unknown_task(bad[0], a.physics)
        physics = sim_physics(a.physics)
        paths = record_scripted(a.dataset, tasks, a.episodes, seed=a.seed, fps=a.fps or 10.0,
                                cameras=a.cameras.split(",") if a.cameras else ("front",),
                                image_size=a.image_size, progress=_progress("recording"),
                                keep_failures=a.keep_failures, randomize=a.randomize, physics=physics,
                                perturb=a.perturb)
        print(f"recorded {len(paths)} episode(s) into {a.dataset} on the {'physics' if physics else 'kinematic'} sim")
        return 0
    from teleop_app.session import Mode, Session
    cfg = _session_config(a)
    cfg.workflow.target_episodes = a.episodes
    cfg.workflow.countdown_s = 0 if a.mode == "scripted" else 3
    cfg.workflow.reset_s = 0.5 if a.mode == "scripted" else 5
    cfg.workflow.episode_s = a.episode_s
    cfg.workflow.auto_keep = a.mode == "scripted"
    if a.instruction:
        cfg.workflow.instructions = [s.strip() for s in a.instruction.split(";")]
    elif a.mode == "scripted":
        known = _sim_tasks(cfg.physics)
        if cfg.task not in known:
            raise _unknown_task(cfg.task, cfg.physics)
        cfg.workflow.instructions = [known[cfg.task]]
    stop = _stop_signals()
    s = Session(cfg)
    signal.signal(signal.SIGUSR1, lambda *_: s.estop("SIGUSR1"))     # `kill -USR1 <pid>` = e-stop
    with s:
        _promote_main(s)
        if a.mode == "takeover":
            _load_policy_for_takeover(s, a.policy)
        s.set_mode(Mode(a.mode))
        print(f"{a.mode} recording into {a.dataset}: {a.episodes} episode(s). Ctrl-C or SIGTERM stops and "
              "keeps what was recorded; SIGUSR1 = e-stop." +
              (" Pad: Start = start/stop, Y = success, X = failure." if a.mode in ("gamepad", "cartesian", "takeover") else ""), flush=True)
        s.start_episode()
        last = None
        while not stop and s.workflow.state.value != "done":
            time.sleep(0.1)
            st = s.status
            line = f"{st.workflow:10s} kept {st.kept}/{st.target_episodes} steps {st.recording_steps:4d} {st.message}"
            if line != last:
                print(line, flush=True)
                last = line
        recording = bool(stop) and s.pipeline is not None and s.pipeline.recorder.active
    return _stopped_message(stop, "recording", "the episode in progress was kept unlabelled; " if recording else "")


def _promote_main(s) -> None:
    """This thread only prints status lines; at the loop's side (real-time, lower priority) it cannot be
    descheduled while it holds the GIL the control loop waits for."""
    if s.loop.realtime_priority and s.config.realtime_helpers:
        from teleop_app.loop import promote_threads
        promote_threads(("MainThread",))


def _stop_signals() -> list[int]:
    """SIGINT and SIGTERM end a CLI run cleanly (episode kept, arm held, devices released)."""
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _f: stop.append(signum))
    return stop


def _stopped_message(stop: list[int], what: str, extra: str = "") -> int:
    if not stop:
        return 0
    name = signal.Signals(stop[0]).name
    print(f"{what} stopped by {name}: {extra}arm held, devices released", flush=True)
    return 128 + signal.SIGTERM if stop[0] == signal.SIGTERM else 0


def _load_policy_for_takeover(s, policy: str | None) -> None:
    from teleop_app.session import PolicyState
    if not policy:
        raise CliError("--mode takeover needs --policy CKPT_OR_URL (the policy the operator takes over from)")
    s.load_policy({"source": policy})
    end = time.monotonic() + 120
    while s.policy_state == PolicyState.LOADING and time.monotonic() < end:
        time.sleep(0.1)
    if s.policy_state != PolicyState.READY:
        raise CliError(f"policy {policy} did not load: {s.messages[-1] if s.messages else 'timeout'}")


def cmd_replay(a) -> int:
    from teleop_app.session import Session
    cfg = _session_config(a)
    cfg.use_gamepad = False
    stop = _stop_signals()
    s = Session(cfg)
    signal.signal(signal.SIGUSR1, lambda *_: s.estop("SIGUSR1"))
    with s:
        _promote_main(s)
        s.start_replay(a.episode)
        bar = _progress("replay")         # one bar: its clock gives the elapsed time and the eta
        while s.mode.value in ("replay", "homing") and not stop:
            i, n = s.status.replay_progress
            if n:
                bar(i, n)
            time.sleep(0.1)
        if stop:
            s.stop_replay()
            time.sleep(2 * s.period)
        print(s.messages[-1] if s.messages else "done")
    return _stopped_message(stop, "replay")


def _ids(text: str | None) -> list[int] | None:
    """'1,3,7-9' -> [1, 3, 7, 8, 9] (None stays None)."""
    if text is None:
        return None
    out = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(hi) - int(lo) > 1_000_000:
                    raise ValueError
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise CliError(f"episode ids must look like 1,3,7-9; got {text!r}") from None
    if not out:
        raise CliError("no episode ids given")
    return out


def _open_dataset(path: str):
    from recorder.store import EpisodeStore
    if not Path(path).exists():
        raise CliError(f"no dataset at {path}: record one with `teleop record`")
    return EpisodeStore.open(path)


def _validate(store) -> int:
    """Every episode is reported, broken ones included; the exit code says whether any was bad.
    Each file is first read in a child process with a time bound (a damaged file can make the HDF5
    library loop forever): one that does not finish is reported BAD and marked broken, not waited for."""
    from recorder.reader import read_episode
    from recorder.schema import RecorderError
    from recorder.validate import cadence_report, validate_episode
    bad = 0
    eps = store.episodes()
    for e in store.verified():
        try:
            if e.broken:
                raise RecorderError(e.broken)
            with read_episode(store.root / e.file) as ep:
                probs = validate_episode(ep)
                c = cadence_report(ep)
        except (RecorderError, OSError, ValueError) as ex:
            bad += 1
            print(f"BAD {e.id:>5} unreadable: {str(ex).replace(str(store.root / e.file) + ': ', '')}")
            continue
        flag = "OK " if not probs else "BAD"
        bad += bool(probs)
        print(f"{flag} {e.id:>5} {c.get('achieved_hz', 0):5.1f} Hz p99 err {c.get('p99_period_error_ms', 0):5.1f} ms"
              f" missed {c.get('missed_ticks', 0)}  {'; '.join(probs)}")
    print(f"{len(eps) - bad} of {len(eps)} episode(s) OK" + (f", {bad} BAD" if bad else ""))
    return 1 if bad else 0


def cmd_datasets(a) -> int:
    act = a.action
    if act == "merge":
        from recorder.edit import merge_stores
        info = merge_stores([a.dataset, a.other], a.out)
        print(f"merged {info['episodes']} episode(s) into {a.out}; the sources are unchanged")
        return 0
    store = _open_dataset(a.dataset)
    if store.last_recovered:
        print(f"recovered interrupted episode(s) {store.last_recovered}")
    if act == "list":
        rows = store.episodes()
        print(f"{len(rows)} episode(s) in {a.dataset}" +
              (f", {len(store.broken())} BROKEN" if store.broken() else ""))
        for e in rows:
            if e.broken:
                print(f"{e.id:>5}  BROKEN  {e.file}: {e.broken}")
                continue
            lab = {1: "success", 0: "failure"}.get(e.success, "-")
            print(f"{e.id:>5}  {e.num_steps:5d} steps  {lab:8s} {e.mode:11s} {e.instruction}")
    elif act == "validate":
        return _validate(store)
    elif act == "export":
        if a.format == "lerobot":
            from recorder.export_lerobot import export_lerobot
            export_lerobot(store, a.out, repo_id=a.repo_id or f"local/{Path(a.dataset).name}",
                           progress=_progress("export"), ids=_ids(a.ids))
        else:
            from recorder.export_rlds import export_rlds
            export_rlds(store, a.out, progress=_progress("export"), ids=_ids(a.ids))
        print(f"exported to {a.out}")
    elif act == "stats":
        print(json.dumps(store.stats(), indent=1, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    elif act == "delete":
        ids = _ids(a.ids)
        store.delete_many(ids)
        print(f"moved episode(s) {ids} to the trash (undo: teleop datasets undo {a.dataset})")
    elif act == "relabel":
        ids = _ids(a.ids)
        store.relabel_many(ids, {"success": 1, "failure": 0, "unknown": -1}[a.label])
        print(f"labelled episode(s) {ids} {a.label}")
    elif act == "set-instruction":
        ids = _ids(a.ids) if a.ids else [e.id for e in store.episodes()
                                         if a.where is None or e.instruction == a.where]
        if not ids:
            raise CliError(f"no episode has the instruction {a.where!r}")
        store.set_instruction(ids, a.text)
        print(f"instruction of {len(ids)} episode(s) set to {a.text!r} (undo: teleop datasets undo {a.dataset})")
    elif act == "trim":
        info = store.trim(int(a.id), a.start, a.end)
        print(f"episode {info.id} now has {info.num_steps} steps (undo: teleop datasets undo {a.dataset})")
    elif act == "split":
        from recorder.edit import split_store
        r = split_store(store, a.out, val_fraction=a.val, seed=a.seed)
        print(f"split into {a.out}/train ({len(r['train'])} episodes) and {a.out}/val ({len(r['val'])}: "
              f"{r['val']}); the source is unchanged")
    elif act == "undo":
        print(f"undone: {store.undo()}")
    return 0


def _print_list(title: str, list_fn, fmt=str) -> None:
    print(f"{title}:")
    try:
        items = list(list_fn())
    except Exception as e:           # a listing problem must not hide the other devices
        print(f"  cannot list: {e}")
        return
    for it in items:
        print(f"  {fmt(it)}")
    if not items:
        print("  (none)")


def cmd_devices(a) -> int:
    from serial.tools import list_ports

    from drivers.camera import list_cameras
    from drivers.gamepad import list_gamepads
    _print_list("serial ports", list_ports.comports, lambda p: f"{p.device}  {p.description}")
    _print_list("cameras", list_cameras)
    _print_list("gamepads", list_gamepads)
    return 0


def cmd_profiles(a) -> int:
    from teleop_app.profiles import builtin_profiles, load_profile
    if a.check:
        p = load_profile(a.check)
        print(f"{p.source}: OK ({p.name}, {p.dof} joints incl. gripper, bus {p.bus.kind}, "
              f"cameras {[c.name for c in p.cameras]})")
        return 0
    for n in builtin_profiles():
        p = load_profile(n)
        print(f"{n:8s} {p.dof}-D  bus={p.bus.kind:9s} {p.description}")
    return 0


def cmd_simbus(a) -> int:
    from teleop_app.devices import make_workcell
    from teleop_app.profiles import load_profile
    from drivers.bus.simbus import SimServoBus
    prof = load_profile(a.profile)
    wc = make_workcell(prof, physics=a.physics)
    bus = SimServoBus(wc, protocol=a.protocol, ids=[j.servo_id for j in prof.all_joints], step_backend=True)
    path = bus.start()
    print(f"simulated {a.protocol} bus for '{prof.name}' ({wc.sim} sim) on {path} (ids "
          f"{[j.servo_id for j in prof.all_joints]}); Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        bus.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="teleop", description="Teach robot arms by demonstration and validate "
                                 "VLA policies. Without hardware everything runs on a simulated workcell.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("gui", help="open the desktop app")
    _session_args(p)
    p.add_argument("--unattended", type=int, default=0, metavar="N",
                   help="sim: record N scripted episodes unattended (auto-keep, success from the sim) in the "
                        "window, then quit (exit 0)")
    p.add_argument("--episode-s", type=float, default=60.0, help="--unattended: longest episode in seconds")
    p.add_argument("--reset-s", type=float, default=0.5, help="--unattended: pause between episodes in seconds")
    p.add_argument("--grace", type=float, default=60.0,
                   help="if the window dies, the control process holds the arm and waits this many seconds for "
                        "a restarted `teleop gui` to reconnect")
    p.add_argument("--hang-s", type=float, default=5.0,
                   help="a window silent this long counts as hung: the control process holds the arm and closes "
                        "the episode (kept); the window reconnects when it recovers")
    p.set_defaults(fn=cmd_gui)

    p = sub.add_parser("record", help="record episodes headless (scripted expert, gamepad or kinesthetic)")
    _session_args(p)
    p.add_argument("--mode", default="scripted",
                   choices=["scripted", "gamepad", "kinesthetic", "leader", "cartesian", "takeover"],
                   help="leader: a leader arm drives (--leader); cartesian: the pad steers the gripper; takeover: "
                        "--policy runs and the operator takes over with the pad/leader (left stick click or a "
                        "stick pushed past half way; click again to hand back); steps record an intervention flag")
    p.add_argument("--policy", help="--mode takeover: checkpoint or policy server URL")
    p.add_argument("--episodes", type=int, default=10, help="episodes to record (per task with --fast)")
    p.add_argument("--instruction", help="language instruction(s), ';'-separated to cycle through")
    p.add_argument("--episode-s", type=float, default=30.0, help="max seconds per episode")
    p.add_argument("--fast", action="store_true",
                   help="scripted only: step the sim as fast as possible (sim-clock timestamps)")
    p.add_argument("--tasks", help="--fast: comma-separated tasks (default: pick_red,pick_blue,red_in_bowl)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--keep-failures", action="store_true")
    p.add_argument("--perturb", type=float, default=0.0, metavar="F",
                   help="--fast, physics sim: in this share of episodes the expert first drives a detour beside the "
                        "object, then recovers; the detour is recorded as action source 'perturbation' and "
                        "training imitates only the recovery (DART-style noise injection)")
    p.set_defaults(fn=cmd_record)

    p = sub.add_parser("replay", help="play a recorded episode back on the robot through the safety layer")
    p.add_argument("episode", help="episode .h5 file")
    _session_args(p)
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("datasets", help="list / validate / export / stats / edit a dataset",
                       description="Review, export and edit a dataset. Every edit is atomic and can be "
                                   "undone with `teleop datasets undo DATASET`; merge and split write new "
                                   "datasets and leave their sources unchanged.")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, hlp in (("list", "episodes, labels, broken files"), ("validate", "check every episode"),
                      ("stats", "per-joint statistics"), ("undo", "undo the last edit")):
        q = dsub.add_parser(name, help=hlp)
        q.add_argument("dataset", help="dataset folder")
    q = dsub.add_parser("export", help="LeRobot v3.0 dataset or RLDS builder input (complete or not at all)")
    q.add_argument("dataset")
    q.add_argument("out", help="output folder (must be empty or absent)")
    q.add_argument("--format", default="lerobot", choices=["lerobot", "rlds"])
    q.add_argument("--repo-id", help="lerobot: repo id written into the dataset (default local/<name>)")
    q.add_argument("--ids", help="episodes to export, e.g. 1,3,7-9 (default: all but failures)")
    q = dsub.add_parser("delete", help="move episodes to the trash")
    q.add_argument("dataset")
    q.add_argument("ids", help="e.g. 4 or 1,3,7-9")
    q = dsub.add_parser("relabel", help="label episodes success / failure / unknown")
    q.add_argument("dataset")
    q.add_argument("ids")
    q.add_argument("label", choices=["success", "failure", "unknown"])
    q = dsub.add_parser("set-instruction", help="change the instruction of a selection of episodes")
    q.add_argument("dataset")
    q.add_argument("text", help="the new instruction")
    q.add_argument("--ids", help="episodes, e.g. 1,3,7-9")
    q.add_argument("--where", help="every episode whose instruction is exactly this (default with no --ids: all)")
    q = dsub.add_parser("trim", help="cut an episode's start and/or end")
    q.add_argument("dataset")
    q.add_argument("id", type=int)
    q.add_argument("--start", type=int, default=0, help="first step kept (default 0)")
    q.add_argument("--end", type=int, help="one past the last step kept; negative counts from the end")
    q = dsub.add_parser("merge", help="merge two datasets of the same robot and cameras into a new one")
    q.add_argument("dataset")
    q.add_argument("other")
    q.add_argument("out", help="new dataset folder")
    q = dsub.add_parser("split", help="split off a validation set: OUT/train and OUT/val")
    q.add_argument("dataset")
    q.add_argument("out")
    q.add_argument("--val", type=float, default=0.1, help="fraction of episodes for validation (default 0.1)")
    q.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_datasets)

    p = sub.add_parser("devices", help="list serial ports, cameras and gamepads")
    p.set_defaults(fn=cmd_devices)

    p = sub.add_parser("profiles", help="list robot profiles, or --check a profile file")
    p.add_argument("--check", help="validate a profile name or .toml path")
    p.set_defaults(fn=cmd_profiles)

    p = sub.add_parser("simbus", help="serve the simulated arm as a servo bus on a pseudo-terminal")
    p.add_argument("--profile", default="sim7")
    p.add_argument("--protocol", default="dynamixel", choices=["dynamixel", "feetech"])
    _sim_args(p)
    p.set_defaults(fn=cmd_simbus)

    try:
        from teleop_app.policy.cli import add_commands
        add_commands(sub)
    except ImportError:
        pass
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")
    if not getattr(a, "fn", None):
        ap.print_help()
        return 2
    from drivers.interfaces import DeviceError
    from teleop_app.profiles import ProfileError
    try:
        return int(a.fn(a) or 0)
    except (CliError, ProfileError, DeviceError, FileNotFoundError, ValueError) as e:
        print(f"teleop {a.cmd}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from teleop_app.session import SessionError
        from recorder.schema import RecorderError
        from teleop_app.policy.base import PolicyError
        if isinstance(e, (SessionError, RecorderError, PolicyError)):
            print(f"teleop {a.cmd}: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
