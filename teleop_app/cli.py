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
  teleop gui                                   open the app on the simulated workcell
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
    p.add_argument("--task", default="pick_red", help="sim task: pick_red, pick_blue, red_in_bowl")
    p.add_argument("--randomize", action="store_true", help="sim domain randomisation (light, colours, camera, noise)")


def _session_config(a):
    from teleop_app.session import SessionConfig
    from teleop_app.workflow import WorkflowConfig
    return SessionConfig(profile=a.profile, robot=a.robot, port=a.port, protocol=a.protocol,
                         calibration=a.calibration, fps=a.fps,
                         cameras=a.cameras.split(",") if a.cameras else None, dataset=a.dataset,
                         mapping=a.mapping, operator=a.operator, seed=a.seed, task=a.task,
                         randomize=a.randomize, workflow=WorkflowConfig())


# ------------------------------------------------------------------ commands
def cmd_gui(a) -> int:
    try:
        from ui.app import main as gui_main
    except ImportError as e:
        raise CliError(f"the GUI needs PySide6 and pyqtgraph ({e}); run ./dev app to install them")
    return gui_main(_session_config(a))


def cmd_record(a) -> int:
    if a.mode == "scripted" and a.fast:
        from drivers.sim import TASKS
        from teleop_app.scripted import record_scripted
        tasks = a.tasks.split(",") if a.tasks else list(TASKS)
        paths = record_scripted(a.dataset, tasks, a.episodes, seed=a.seed, fps=a.fps or 10.0,
                                cameras=a.cameras.split(",") if a.cameras else ("front",),
                                image_size=a.image_size, progress=_progress("recording"),
                                keep_failures=a.keep_failures, randomize=a.randomize)
        print(f"recorded {len(paths)} episode(s) into {a.dataset}")
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
        from drivers.sim import TASKS
        cfg.workflow.instructions = [TASKS[cfg.task]]
    with Session(cfg) as s:
        s.set_mode(Mode(a.mode))
        print(f"{a.mode} recording into {a.dataset}: {a.episodes} episode(s). Ctrl-C stops and keeps "
              "what was recorded." + (" Pad: Start = start/stop, Y = success, X = failure." if a.mode == "gamepad" else ""))
        stop = []
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        s.start_episode()
        last = None
        while not stop and s.workflow.state.value != "done":
            time.sleep(0.1)
            st = s.status
            line = f"{st.workflow:10s} kept {st.kept}/{st.target_episodes} steps {st.recording_steps:4d} {st.message}"
            if line != last:
                print(line)
                last = line
    return 0


def cmd_replay(a) -> int:
    from teleop_app.session import Session
    cfg = _session_config(a)
    cfg.use_gamepad = False
    with Session(cfg) as s:
        s.start_replay(a.episode)
        bar = _progress("replay")         # one bar: its clock gives the elapsed time and the eta
        while s.mode.value in ("replay", "homing"):
            i, n = s.status.replay_progress
            if n:
                bar(i, n)
            time.sleep(0.1)
        print(s.messages[-1] if s.messages else "done")
    return 0


def cmd_datasets(a) -> int:
    from recorder.store import EpisodeStore
    if not Path(a.dataset).exists():
        raise CliError(f"no dataset at {a.dataset}: record one with `teleop record`")
    store = EpisodeStore.open(a.dataset)
    if a.action == "list":
        rows = store.episodes()
        print(f"{len(rows)} episode(s) in {a.dataset}")
        for e in rows:
            lab = {1: "success", 0: "failure"}.get(e.success, "-")
            print(f"{e.id:>5}  {e.num_steps:5d} steps  {lab:8s} {e.mode:11s} {e.instruction}")
    elif a.action == "validate":
        from recorder.reader import read_episode
        from recorder.validate import cadence_report, validate_episode
        bad = 0
        for e in store.episodes():
            ep = read_episode(Path(a.dataset) / e.file)
            probs = validate_episode(ep)
            c = cadence_report(ep)
            flag = "OK " if not probs else "BAD"
            bad += bool(probs)
            print(f"{flag} {e.id:>5} {c.get('achieved_hz', 0):5.1f} Hz p99 err {c.get('p99_period_error_ms', 0):5.1f} ms"
                  f" missed {c.get('missed_ticks', 0)}  {'; '.join(probs)}")
        return 1 if bad else 0
    elif a.action == "export":
        if not a.out:
            raise CliError("export needs an output folder: teleop datasets export DATASET OUT --format lerobot")
        if a.format == "lerobot":
            from recorder.export_lerobot import export_lerobot
            export_lerobot(a.dataset, a.out, repo_id=a.repo_id or f"local/{Path(a.dataset).name}",
                           progress=_progress("export"))
        else:
            from recorder.export_rlds import export_rlds
            export_rlds(a.dataset, a.out, progress=_progress("export"))
        print(f"exported to {a.out}")
    elif a.action == "stats":
        print(json.dumps(store.stats(), indent=1, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
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
    wc = make_workcell(prof)
    bus = SimServoBus(wc, protocol=a.protocol, ids=[j.servo_id for j in prof.all_joints], step_backend=True)
    path = bus.start()
    print(f"simulated {a.protocol} bus for '{prof.name}' on {path} (ids "
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
    p.set_defaults(fn=cmd_gui)

    p = sub.add_parser("record", help="record episodes headless (scripted expert, gamepad or kinesthetic)")
    _session_args(p)
    p.add_argument("--mode", default="scripted", choices=["scripted", "gamepad", "kinesthetic"])
    p.add_argument("--episodes", type=int, default=10, help="episodes to record (per task with --fast)")
    p.add_argument("--instruction", help="language instruction(s), ';'-separated to cycle through")
    p.add_argument("--episode-s", type=float, default=30.0, help="max seconds per episode")
    p.add_argument("--fast", action="store_true",
                   help="scripted only: step the sim as fast as possible (sim-clock timestamps)")
    p.add_argument("--tasks", help="--fast: comma-separated tasks (default: all)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--keep-failures", action="store_true")
    p.set_defaults(fn=cmd_record)

    p = sub.add_parser("replay", help="play a recorded episode back on the robot through the safety layer")
    p.add_argument("episode", help="episode .h5 file")
    _session_args(p)
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("datasets", help="list / validate / export / stats of a dataset")
    p.add_argument("action", choices=["list", "validate", "export", "stats"])
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("out", nargs="?", help="export: output folder")
    p.add_argument("--format", default="lerobot", choices=["lerobot", "rlds"])
    p.add_argument("--repo-id", help="lerobot: repo id written into the dataset (default local/<name>)")
    p.set_defaults(fn=cmd_datasets)

    p = sub.add_parser("devices", help="list serial ports, cameras and gamepads")
    p.set_defaults(fn=cmd_devices)

    p = sub.add_parser("profiles", help="list robot profiles, or --check a profile file")
    p.add_argument("--check", help="validate a profile name or .toml path")
    p.set_defaults(fn=cmd_profiles)

    p = sub.add_parser("simbus", help="serve the simulated arm as a servo bus on a pseudo-terminal")
    p.add_argument("--profile", default="sim7")
    p.add_argument("--protocol", default="dynamixel", choices=["dynamixel", "feetech"])
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
