"""Generalization benchmark for the project's VLA on the physics workcell (drivers/sim, MuJoCo):
record expert demos -> train on the CPU -> success per held-out split, domain gap, fine-tuning curve.

    .venv/bin/python benchmarks/bench_generalization.py --out /tmp/gen --quick          # smoke test, minutes
    .venv/bin/python benchmarks/bench_generalization.py --out /tmp/gen --skip words     # everything, ~2 h 40 min on 2 cores
    .venv/bin/python benchmarks/bench_generalization.py --out /tmp/gen --skip splits    # the fine-tuning curve alone, ~1 h

Defaults: 1,440 demos, 96x96 images, 30 minutes of training per model on 2 threads, target keypoint loss
weight 3 (docs/policy_results.md: three times the demos and 30 instead of 20 minutes took the table from
58/28/38/24 % to 70/30/68/22 %; the target keypoint cut missed grasps from 63 to 45 of 200 rollouts), colour
grounding, a moving average of the weights at 0.999 (--ema; unseen objects 64 -> 75 % on 200 scenes), and
a third of the demos perturbed (--perturb 0.33: the expert first drives a detour beside the object, then
recovers; only the recovery is imitated; seen objects 90 -> 96 % on 200 scenes, missed grasps 10 -> 1),
and a same-colour twin of the target (the red cylinder beside the red cube) in half the training scenes that
lack one (--confusers 0.5: about 60 % of them have one, against 21 % in a plain draw). The main model (strong
augmentation) is evaluated as every checkpoint of it runs: each prediction averaged over 5 copies of the
images shifted +-4 px, its training shift (checkpoint.VLAPolicy's tta). The two go together: the twins make
the policy tell the shapes apart (wrong objects on 400 fresh seen scenes 10-24 -> 3-5) but close its grasps
off the centre (drops 3-4 -> 11-18), and the averaged copies recentre them (four such models 1,509 ->
1,553 of 1,600 fresh seen scenes; docs/policy_results.md). Since Dec 7 noon the grounding channel of a quarter
of the colour-naming samples also marks the lit arm's grey levels (--channel-distract 0.25 --distract-levels
0.8 1), so white targets are found beside the white arm: two seeds, unseen objects 275 -> 324 of 400, seen
388 -> 382 of 400 (not significant). Since Dec 7 evening the expert takes a cube unturned and turns the wrist
only for a neighbour (drivers/sim/expert.py's _grasp_yaw). The bowl beside the target in 30 % of the training
scenes (--bowl-near 0.3) was the default for one session and is not any more: with it seed 0 got 184/200 fresh
seen scenes, without it 194/200. What decides the seen split is the step count: at the 30 minutes of a VM that
trains at ~830 steps/min (25,000 steps) training seed 1 gets 397/400 fresh seen scenes, at 14,000 steps 370/400
(docs/policy_results.md). Since Dec 8 the randomised demos include dark benches (drivers/sim/render.py's
TABLE_TONES): seed 0 at 19,364 steps keeps the held-out look, 47/50 instead of 7/50, for fresh seen 387/400
instead of 398/400 (one seed; docs/policy_results.md, "A dark table").

What it runs (sizes are the flags; --quick shrinks all of them):
  1. expert demos of the training split (drivers/sim/tasks.py: seen objects, training phrasings) for
     --kinds, twice: plain, and with sim domain randomisation (as `teleop record --randomize`); --perturb
     of them start with a detour and its recovery (as `teleop record --fast --perturb`)
  2. three models, each for --minutes on the CPU:
       rand  = MiniLM text encoder, randomised demos, strong augmentation   (the main model)
       plain = MiniLM text encoder, plain demos, basic augmentation
       words = the word tokenizer, randomised demos, strong augmentation    (paraphrase check)
  3. rand on --eval unseen scenes per split: seen, unseen objects, novel instructions, reasoning, and how
     its rollouts ended (wrong object, missed grasp, dropped, ...: drivers/sim/physics.py OutcomeTrace);
     words on seen + novel instructions (does the pre-trained encoder fix paraphrases?)
     and, with the target keypoint, where rand sees the named object from each first frame (target_check,
     OUT/target_keypoint.png); rand's predict alone, batch 1 on --threads, with the averaged copies and
     with one (p50/p99 ms on the first frames: the issue's 15 ms budget; inside the rollouts the sim shares
     the process)
  4. domain gap: rand and plain on seen scenes in the default look and in the held-out visual domain
  5. fine-tuning curve on a new task kind (--new-kind, place_bowl) from --ft-demos demos, starting from a base
     of its own trained on --ft-base-kinds (pick, place_plate, stack: the neighbouring skills, never the new
     kind; 'main' = the rand model): --ft-methods LoRA adapters (fusion, conditioning, head), LoRA on the
     vision encoders too, full fine-tuning, and the same architecture from scratch, same demos and time, with
     trained parameter counts and each run's outcome breakdown (--skip splits: this part alone, ~1 h)
  6. with --dagger-rounds K: HG-DAgger on the physics sim from the main model (the sim's expert takes
     over when the policy drifts; teleop_app.policy.generalization.collect_corrections), each round
     adding --dagger-minutes of training; the same splits, next to a control that trains as long on
     the demos alone
Prints the tables and writes OUT/summary.json and OUT/report.html (+ .md). Demos and checkpoints
already in OUT are reused (pass --fresh to start over).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY = dict(channels=(8, 16, 32), d_model=64, n_layers=1, n_heads=2)
# fine-tuning methods of the curve: label, train() keywords (a base is added as init, except for scratch)
FT_METHODS = {
    "lora": ("LoRA on base", {"lr": 1e-3}),
    "lora_vision": ("LoRA + vision on base", {"lr": 1e-3, "lora_vision": True}),
    "full": ("full fine-tune of base", {"lr": 3e-4, "full": True}),
    "scratch": ("from scratch", {"text_encoder": "minilm", "augment": "strong"}),
}


def instruction_check(n: int = 100) -> dict:
    """What the encoder fixes, at the input: for n scenes per split (all task kinds), the share of words
    the word tokenizer (vocabulary = every training instruction) maps to <unk>, and how often the
    training instruction nearest to the scene's instruction names the right task and object
    (word tokens: bag-of-known-words Jaccard; MiniLM: cosine of the embeddings). No policy involved."""
    import numpy as np
    from drivers.sim.tasks import KINDS, STACK_SUPPORT_SHAPES, TRAIN_OBJECTS, TRAIN_PHRASES, episodes, phrase
    from teleop_app.policy.text_encoder import SentenceEncoder
    from teleop_app.policy.tokenizer import Tokenizer, words
    train = []
    for kind, temps in TRAIN_PHRASES.items():
        for t in temps:
            for o in TRAIN_OBJECTS:
                sups = ([s for s in TRAIN_OBJECTS if s.shape in STACK_SUPPORT_SHAPES and s != o]
                        if kind == "stack" else [None])
                for sp in sups:
                    train.append(((kind, o.name, sp.name if sp else None), phrase(t, o, sp)))
    tok = Tokenizer.build([t for _, t in train])
    enc = SentenceEncoder("minilm")
    emb = enc.embed_many([t for _, t in train])
    bags = [{w for w in words(t)} for _, t in train]
    out = {}
    for split in ("seen", "novel_instructions", "reasoning"):
        sc = list(episodes(split, n, kinds=KINDS))
        unk = [len(tok.unknown_words(s.instruction)) / max(1, len(words(s.instruction))) for s in sc]
        ok_st = ok_bow = 0
        for s in sc:
            key = (s.kind, s.target.name, s.support.name if s.support else None)
            ok_st += train[int(np.argmax(emb @ enc.embed(s.instruction)))][0] == key
            b = {w for w in words(s.instruction) if w in tok._ids}
            ok_bow += train[int(np.argmax([len(b & t) / max(1, len(b | t)) for t in bags]))][0] == key
        out[split] = {"n": len(sc), "unk_words": float(np.mean(unk)), "nearest_ok_words": ok_bow,
                      "nearest_ok_minilm": ok_st}
    return out


def target_figure(policy, scenes, path: Path, per_split: int = 2) -> Path:
    """A picture of where the model sees the named object: each scene's first front frame (upscaled) with the
    target's true centre (green ring) and the target keypoint (magenta cross), its split and instruction."""
    import cv2
    import numpy as np
    from drivers.sim import SimConfig, Workcell
    from drivers.sim.render import front_camera
    h = policy.meta.image_size[0]
    tiles, count = [], {}
    for sc in scenes:
        if count.get(sc.split, 0) >= per_split:
            continue
        count[sc.split] = count.get(sc.split, 0) + 1
        wc = Workcell(SimConfig(physics=True, width=h, height=h))
        wc.reset(scene=sc)
        seen = policy.predict_target({"images": {c: wc.render(c, h, h) for c in policy.meta.cameras},
                                      "qpos": wc.qpos(), "instruction": sc.instruction})
        true = front_camera(wc.renderer.style, h, h).project(np.array([wc.objects()[sc.target.name][:3]]))[0][0]
        k = 320 / h
        img = cv2.resize(wc.render("front", h, h), (320, 320), interpolation=cv2.INTER_NEAREST).copy()
        cv2.circle(img, tuple(int(v * k) for v in true), 11, (40, 255, 40), 2, cv2.LINE_AA)
        cv2.drawMarker(img, tuple(int(v * k) for v in seen["front"]), (255, 0, 255), cv2.MARKER_CROSS, 18, 2)
        cv2.rectangle(img, (0, 0), (319, 36), (0, 0, 0), -1)
        err = float(np.linalg.norm(seen["front"] - true))
        cv2.putText(img, f"{sc.split}: {err:.1f} px off at {h} px", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 0), 1, cv2.LINE_AA)
        cv2.putText(img, sc.instruction[:52], (4, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(img)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 4)
    grid = np.vstack([np.hstack(tiles[i:i + 4]) for i in range(0, len(tiles), 4)])
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return path


def grounding_figure(scenes, path: Path, size: int = 96, per_split: int = 2, grey_reference: str = "brightest") -> Path:
    """A picture of the colour grounding channel (grounding.py): for scenes of each split, the first front frame
    and, beside it, the channel for its instruction (white / grey matched as the model does), in the default look
    and in the held-out look; and the first scene whose target is white or grey (where the arm matches too)."""
    import cv2
    import numpy as np
    import torch
    from drivers.sim import SimConfig, Workcell
    from teleop_app.policy.generalization import held_out_style
    from teleop_app.policy.grounding import affinity, colour_features, find_colour
    f = colour_features([sc.instruction for sc in scenes])
    neutral = [i for i in range(len(scenes)) if f[i, -1] > 0 and np.ptp(f[i, :3]) < 0.05][:1]
    picked, count = [], {}
    for i, sc in enumerate(scenes):
        if count.get(sc.split, 0) < per_split:
            count[sc.split] = count.get(sc.split, 0) + 1
            picked.append(sc)
    picked += [scenes[i] for i in neutral if scenes[i] not in picked]
    rows = []
    for sc in picked:
        tiles = []
        for look in ("default", "held_out"):
            wc = Workcell(SimConfig(physics=True, width=size, height=size))
            wc.reset(seed=sc.seed, scene=sc)
            if look == "held_out":
                wc.renderer.set_style(held_out_style())
            img = wc.render("front", size, size)
            x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
            a = affinity(x, torch.from_numpy(colour_features([sc.instruction])), grey_reference)[0, 0].numpy()
            tiles += [img, np.repeat((a * 255).astype(np.uint8)[..., None], 3, -1)]
        row = cv2.resize(np.hstack(tiles), (4 * 200, 200), interpolation=cv2.INTER_NEAREST)
        hit = find_colour(sc.instruction)
        bar = np.zeros((34, row.shape[1], 3), np.uint8)
        cv2.putText(bar, f"{sc.split}: {sc.instruction}", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(bar, f"lexicon: {hit[0] if hit else 'no colour term'}   (frame | channel, default look | "
                         f"held-out look; greys against the {grey_reference} pixel)", (4, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(np.vstack([bar, row]))
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    return path


def inference_alone(ckpt, scenes, threads: int, calls: int = 400) -> dict:
    """The policy's predict alone, as the control loop calls it (batch 1, `threads` torch threads), on the first
    frames of the evaluation scenes, with nothing else in the process: {setting: {p50, p99, mean, n} ms} for the
    averaged copies as the checkpoint runs and for one copy (--tta 0), and the first call on a new instruction
    (the sentence encoder's cache miss). Meaningful on an idle machine only."""
    from teleop_app.policy.base import load_policy
    from teleop_app.policy.generalization import first_observations
    from teleop_app.policy.metrics import percentiles_ms
    one = load_policy(str(ckpt), threads=threads, tta=0)
    obs = first_observations(one, scenes[:20])
    out = {}
    for label, pol in (("as it runs", load_policy(str(ckpt), threads=threads)), ("one copy", one)):
        for o in obs:                           # warm-up; fills the instruction cache
            pol.predict(o)
        lat = []
        for i in range(calls):
            t = time.perf_counter()
            pol.predict(obs[i % len(obs)])
            lat.append(time.perf_counter() - t)
        key = f"{label} (+-{pol.tta} px)" if pol.tta else label
        out[key] = percentiles_ms(lat)
        if pol is not one:                      # a new instruction: the encoder runs once, then it is cached
            t = time.perf_counter()
            pol.predict({**obs[0], "instruction": "lift the cube that is red, please"})
            out["new instruction, first call"] = percentiles_ms([time.perf_counter() - t])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench_generalization")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the whole path in a few minutes")
    ap.add_argument("--kinds", default="pick", help="task kinds of the base training (default pick)")
    ap.add_argument("--demos", type=int, default=1440, help="training demos (over all kinds)")
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per base model (the issue's cap)")
    ap.add_argument("--steps", type=int, default=0,
                    help="train each base model for this many optimizer steps instead of --minutes (0 = time budget): "
                         "the same model on a machine of another speed; the documented 30-min runs made 14,900-16,900 "
                         "steps, a VM half as fast 9,000, the Dec 7 VM 13,100 with the faster step")
    ap.add_argument("--eval", type=int, default=50, help="unseen scenes per split")
    ap.add_argument("--domain-eval", type=int, default=30, help="scenes per domain for the gap")
    ap.add_argument("--new-kind", default="place_bowl", help="fine-tuning task kind (not in --kinds)")
    ap.add_argument("--ft-demos", default="10,20", help="numbers of new-task demos for the curve")
    ap.add_argument("--ft-minutes", type=float, default=2.0, help="training budget per fine-tuning run")
    ap.add_argument("--ft-eval", type=int, default=20, help="new-task scenes per curve point")
    ap.add_argument("--ft-base-kinds", default="pick,place_plate,stack",
                    help="task kinds of the base the fine-tuning curve starts from (its own --minutes of training "
                         "on --ft-base-demos demos); 'main' = the main model (pick only by default)")
    ap.add_argument("--ft-base-demos", type=int, default=720, help="demos of the fine-tuning base (over its kinds)")
    ap.add_argument("--ft-methods", default="lora,lora_vision,full,scratch",
                    help="fine-tuning methods for the curve: lora (fusion, conditioning, head), lora_vision (+ "
                         "the vision encoders), full (every weight), scratch (no base)")
    ap.add_argument("--image-size", type=int, default=96,
                    help="camera images (square); 96 doubled seen-object success over 64 at the same budget; "
                         "two runs at 128 were no better than two at 96, pooled, and with the Dec 6 recipe 128 got "
                         "186/200 seen against 194 and 186 for two seeds at 96 (40 %% fewer steps in 30 minutes)")
    ap.add_argument("--cameras", default="front,wrist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--chunk", type=int, default=30, help="actions predicted per step")
    ap.add_argument("--state-noise", type=float, default=1.5,
                    help="noise on the normalised joint state in training (0.05 = the old default, which "
                         "fitted the demos and failed every closed-loop pick: the policy replayed the demo its "
                         "joints resembled instead of looking)")
    ap.add_argument("--action-space", default="delta_arm", choices=["delta_arm", "ee"])
    ap.add_argument("--keypose-weight", type=float, default=0.0,
                    help="weight of the auxiliary next-keypose loss of the main models (train.keypose_targets)")
    ap.add_argument("--target-weight", type=float, default=3.0,
                    help="target keypoint loss weight (train's target_weight; 0 = off, the recipe before Dec 3 evening)")
    ap.add_argument("--grounding", default="colour", choices=["none", "colour"],
                    help="the models' colour grounding channel (train's grounding; grounding.py); none = the "
                         "recipe before Dec 4")
    ap.add_argument("--ema", type=float, default=0.999,
                    help="the base models save an exponential moving average of their weights (decay per step; "
                         "0 = off)")
    ap.add_argument("--perturb", type=float, default=0.33,
                    help="share of the main and base models' demos that start with a deliberate detour beside the "
                         "object and recover from it (record_scenes' perturb; the detour is not imitated; "
                         "0 = the recipe before Dec 6: missed grasps 43 -> 10 of 600 seen-colour rollouts)")
    ap.add_argument("--confusers", type=float, default=0.5,
                    help="share of the training scenes without one given a distractor of the target's colour and "
                         "another shape (tasks.make_scene's confuser; a plain draw has one in about 21 %% of scenes; "
                         "0 = the recipe before Dec 6 evening)")
    ap.add_argument("--bowl-near", type=float, default=0.0,
                    help="share of the main model's training scenes with the bowl right beside the target "
                         "(tasks.make_scene's bowl_near; the open fingers hit its wall unless the wrist turns, "
                         "in about one scene in four of them, against 2-6 %% of a plain draw). 0.3 was the "
                         "default for one session: training seed 0 at 14,000 steps got 184/200 fresh seen scenes "
                         "with it, 194/200 without (docs/policy_results.md)")
    ap.add_argument("--channel-distract", type=float, default=0.25,
                    help="share of the base models' samples whose grounding channel also marks a grey level "
                         "(train's channel_distract: the white arm lit for 'the white cube'; the models then match "
                         "white against the brightest neutral pixel); 0 = the recipe before Dec 7 noon. At 0.25 with "
                         "--distract-levels 0.8 1, two seeds on 200 scenes per split: unseen objects 324/400 against "
                         "275/400, seen 382/400 against 388/400")
    ap.add_argument("--distract-levels", type=float, nargs=2, default=(0.8, 1.0), metavar=("LO", "HI"),
                    help="grey levels --channel-distract draws from (train's distract_levels), 0 black .. 1 white; "
                         "0 1 (any grey): unseen objects 304/400, seen 374/400 on the same two seeds")
    ap.add_argument("--train-seed", type=int, default=0,
                    help="seed of every training run (weights, batches, augmentation): another value replicates a run")
    ap.add_argument("--instruction-augment", action="store_true",
                    help="the main models train on colour-synonym wordings of each instruction (instruction_aug.py)")
    ap.add_argument("--dagger-rounds", type=int, default=0,
                    help="HG-DAgger rounds on the main model (0 = off): corrected rollouts, then resume training")
    ap.add_argument("--dagger-rollouts", type=int, default=240, help="corrected rollouts per DAgger round")
    ap.add_argument("--dagger-minutes", type=float, default=4.0, help="training added per DAgger round")
    ap.add_argument("--intervention-weight", type=float, default=2.0)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: words,domain,finetune, or splits "
                                                "(the whole main model: its demos, training, table, domain gap)")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--instructions-only", action="store_true",
                    help="only the instruction-level check (word tokenizer vs MiniLM, no policy; ~1 min)")
    a = ap.parse_args()
    if a.grounding == "none":
        a.channel_distract = 0.0            # the distractor marks the grounding channel: nothing to mark
    if a.instructions_only:
        for split, d in instruction_check().items():
            print(f"{split:<20} n={d['n']}  words -> <unk> {100 * d['unk_words']:.0f}%  nearest training "
                  f"instruction names the right task+object: word tokens {d['nearest_ok_words']}/{d['n']}, "
                  f"MiniLM {d['nearest_ok_minilm']}/{d['n']}")
        return 0
    if a.quick:
        a.demos, a.minutes, a.eval, a.domain_eval = 6, 0.3, 2, 2
        a.ft_demos, a.ft_minutes, a.ft_eval, a.ft_base_demos = "2,4", 0.2, 2, 6
        a.dagger_rollouts, a.dagger_minutes = 3, 0.2

    import torch
    from teleop_app.policy.base import load_policy
    from teleop_app.policy.evaluate import RolloutResults
    from teleop_app.policy.generalization import (RT2, SPLIT_LABELS, format_outcome_table, format_split_table,
                                                  keypose_check, outcome_counts, per_split, record_scenes,
                                                  run_scene_rollouts, split_scenes, target_check)
    from teleop_app.policy.report import write_report
    from teleop_app.policy.train import train

    skip = set(x.strip() for x in a.skip.split(",") if x.strip())
    kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
    # the fine-tuning part's flags, checked before an hour of training rather than after it
    methods = [m.strip() for m in a.ft_methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(FT_METHODS))
    if unknown:
        raise SystemExit(f"unknown --ft-methods {unknown}; use {', '.join(FT_METHODS)}")
    base_kinds = kinds if a.ft_base_kinds == "main" else \
        tuple(k.strip() for k in a.ft_base_kinds.split(",") if k.strip())
    if a.ft_base_kinds == "main" and "splits" in skip and "finetune" not in skip:
        raise SystemExit("--ft-base-kinds main needs the main model: do not --skip splits")
    if a.new_kind in base_kinds:
        raise SystemExit(f"--ft-base-kinds must not contain the new kind {a.new_kind!r}")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    if a.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    cams = tuple(c.strip() for c in a.cameras.split(","))
    model = TINY if a.quick else None
    summary: dict = {"command": " ".join(sys.argv), "sim": "physics (MuJoCo) workcell, drivers/sim/tasks.py splits",
                     "kinds": kinds, "demos": a.demos, "minutes": a.minutes, "steps": a.steps, "eval_per_split": a.eval,
                     "lr": a.lr, "chunk": a.chunk, "state_noise": a.state_noise, "action_space": a.action_space,
                     "keypose_weight": a.keypose_weight, "instruction_augment": a.instruction_augment,
                     "target_weight": a.target_weight, "grounding": a.grounding, "ema": a.ema, "perturb": a.perturb,
                     "confusers": a.confusers, "bowl_near": a.bowl_near, "channel_distract": a.channel_distract,
                     "distract_levels": list(a.distract_levels), "train_seed": a.train_seed,
                     "threads": a.threads, "quick": a.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    T0 = time.monotonic()

    def log(msg):
        print(f"[{(time.monotonic() - T0) / 60:5.1f} min] {msg}", flush=True)

    def record(name, scenes, randomize, perturb=None):
        return record_all([(name, scenes, randomize)], perturb)[0]

    def record_all(jobs, perturb=None):
        """Record [(name, scenes, randomize)] into OUT/name on --threads processes (the sim and its renderer
        are single-threaded): fewer datasets than processes are each cut into that many runs of consecutive
        scenes, recorded side by side and merged in scene order (recorder.edit.merge_stores); --perturb
        unless told."""
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing
        import os
        from recorder.edit import merge_stores
        from teleop_app.policy.child import exit_with_parent
        todo = [j for j in jobs if not (out / j[0] / "store.json").exists()]
        t0 = time.monotonic()
        kw = dict(image_size=a.image_size, cameras=cams, perturb=a.perturb if perturb is None else perturb)
        parts = max(1, a.threads // max(1, len(todo)))
        runs = []                                           # (dataset name, part folder, scenes, randomize)
        for n, sc, r in todo:
            k = min(parts, len(sc))
            cuts = [len(sc) * i // k for i in range(k + 1)]
            runs += [(n, out / (n if k == 1 else f"{n}.part{i}"), sc[cuts[i]:cuts[i + 1]], r) for i in range(k)]
        for n, folder, _sc, _r in runs:
            if folder.name != n and folder.exists():        # a part left by an interrupted run
                shutil.rmtree(folder)
        if len(runs) > 1 and a.threads > 1:
            with ProcessPoolExecutor(min(len(runs), a.threads), mp_context=multiprocessing.get_context("spawn"),
                                     # killed by a signal, the benchmark would leave its workers recording
                                     initializer=exit_with_parent, initargs=(os.getpid(),)) as ex:
                futs = [ex.submit(record_scenes, folder, sc, randomize=r, **kw) for _n, folder, sc, r in runs]
                kept_runs = [len(f.result()) for f in futs]
        else:
            kept_runs = [len(record_scenes(folder, sc, randomize=r, **kw)) for _n, folder, sc, r in runs]
        kept = {n: 0 for n, _sc, _r in todo}
        for (n, _folder, _sc, _r), k in zip(runs, kept_runs):
            kept[n] += k
        for n in kept:
            folders = [f for m, f, _s, _r in runs if m == n]
            if len(folders) > 1:
                merge_stores(folders, out / n)
                for f in folders:
                    shutil.rmtree(f)
        for n, sc, _r in todo:
            k = kept[n]
            summary[f"record_{n}"] = {"scenes": len(sc), "kept": k, "s": round(time.monotonic() - t0, 1)}
            log(f"recorded {n}: {k}/{len(sc)} expert demos kept in {time.monotonic() - t0:.0f} s")
        return [out / j[0] for j in jobs]

    def fit(name, data, minutes, start=None, base=False, **kw):
        """Train OUT/name.pt for `minutes`; with start=CKPT, resume from that checkpoint's weights and
        optimizer (copied) up to `minutes` of training in all. base: a base model, trained for --steps
        instead when that is given."""
        ckpt = out / f"{name}.pt"
        if start is not None:
            if not ckpt.exists():
                shutil.copyfile(start, ckpt)
        elif ckpt.exists():
            return ckpt, summary.get(f"train_{name}", {})
        by_steps = base and a.steps > 0
        last = [time.monotonic()]

        def progress(p):                    # a line every 5 minutes: a long training shows where it is
            if p.get("phase") == "training" and time.monotonic() - last[0] >= 300:
                last[0] = time.monotonic()
                log(f"training {name}: step {p['step']}" + (f"/{p['steps']}" if by_steps else "") +
                    f", loss {p['loss']:.4f}, {p['step'] / max(p['elapsed_s'] / 60, 1e-9):.0f} steps/min")
        r = train(data, ckpt, steps=a.steps if by_steps else 10 ** 6, batch_size=a.batch_size, lr=kw.pop("lr", a.lr),
                  max_minutes=None if by_steps else minutes,
                  threads=a.threads, cameras=list(cams), image_size=(a.image_size, a.image_size),
                  resume=start is not None, model=model if "init" not in kw else None,
                  checkpoint_every=10 ** 6, val_fraction=0.0, seed=a.train_seed,
                  chunk=a.chunk, state_noise=a.state_noise, action_space=a.action_space, progress=progress, **kw)
        info = {"steps": r.step, "minutes": round(r.minutes, 2), "loss": round(r.loss, 4),
                "episodes": r.episodes, "samples": r.samples, "trained_params": r.trained_params,
                "total_params": r.total_params}
        summary[f"train_{name}"] = info
        log(f"trained {name}: {info} ({r.step / max(r.minutes, 1e-9):.0f} steps/min; the documented 30-min runs "
            f"made ~500/min)")
        return ckpt, info

    def evaluate(ckpt, scenes, domain="default", tag="", tta=None):
        """tta: the policy's test-time shift (None = as the checkpoint runs: on after the strong augmentation)."""
        path = out / f"rollouts_{tag or ckpt.stem}_{domain}.json"
        if path.exists():                       # a re-run reuses finished evaluations
            return RolloutResults.load(path)
        pol = load_policy(str(ckpt), threads=a.threads, tta=tta)
        t0 = time.monotonic()
        res = run_scene_rollouts(pol, scenes, domain=domain, policy_name=str(ckpt))
        res.save(path)
        lat = res.latency_ms()
        log(f"evaluated {ckpt.stem} on {len(scenes)} scenes ({domain}, test-time shift +-{pol.tta} px) in "
            f"{time.monotonic() - t0:.0f} s, inference p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms")
        return res

    # 1-4) the main model: demos, training, the split table, the domain gap (--skip splits: none of it)
    m_rand = res = words_tab = None
    table, dagger, gap = {}, {}, {}
    if "splits" not in skip:
        # 1) demos of the training split
        train_scenes = split_scenes(["train"], a.demos, kinds, confuser=a.confusers, bowl_near=a.bowl_near)
        jobs = [("data_rand", train_scenes, True)] + ([("data_plain", train_scenes, False)] if "domain" not in skip else [])
        data_rand, data_plain = (record_all(jobs) + [None])[:2]

        # 2) models
        m_rand, _ = fit("rand", data_rand, a.minutes, base=True, text_encoder="minilm", augment="strong",
                        keypose_weight=a.keypose_weight, instruction_augment=a.instruction_augment,
                        target_weight=a.target_weight, grounding=a.grounding, ema=a.ema, channel_distract=a.channel_distract,
                        distract_levels=a.distract_levels)
        m_plain = fit("plain", data_plain, a.minutes, base=True, text_encoder="minilm", augment="basic",
                      keypose_weight=a.keypose_weight, instruction_augment=a.instruction_augment,
                      target_weight=a.target_weight, grounding=a.grounding, ema=a.ema, channel_distract=a.channel_distract,
                      distract_levels=a.distract_levels)[0] \
            if data_plain is not None else None
        m_words = fit("words", data_rand, a.minutes, base=True, text_encoder="words", augment="strong",
                      keypose_weight=a.keypose_weight, instruction_augment=a.instruction_augment,
                      target_weight=a.target_weight, ema=a.ema)[0] \
            if "words" not in skip else None

        # 3) generalization table
        scenes = split_scenes(["seen", "unseen_objects", "novel_instructions", "reasoning"], a.eval, kinds)
        res = evaluate(m_rand, scenes, tag="rand_splits")
        table = per_split(res)
        summary["splits"] = {k: {kk: v[kk] for kk in ("n", "success", "rate", "ci95")} for k, v in table.items()}
        log("generalization (rand model)\n" + format_split_table(res))
        summary["outcomes"] = outcome_counts(res)
        log("how the rollouts ended (rand model)\n" + format_outcome_table(res))
        if a.keypose_weight > 0 and scenes:    # where the model thinks the grasp is, from the first frame
            summary["keypose_check"] = keypose_check(load_policy(str(m_rand), threads=a.threads), scenes)
            log("keypose head from the first frame (rand model): " + json.dumps(summary["keypose_check"]))
        if a.target_weight > 0 and scenes:     # where the model sees the named object, from the first frame
            pol = load_policy(str(m_rand), threads=a.threads)
            summary["target_check"] = target_check(pol, scenes)
            log("target keypoint from the first frame (rand model): " + json.dumps(summary["target_check"]))
            log(f"target keypoint picture: {target_figure(pol, scenes, out / 'target_keypoint.png')}")
        if a.grounding != "none":
            from teleop_app.policy.checkpoint import read_checkpoint
            from teleop_app.policy.model import ModelConfig
            ref = ModelConfig.from_dict(read_checkpoint(m_rand)["model_config"]).grey_reference   # as the model matches
            log(f"grounding channel picture: {grounding_figure(scenes, out / 'grounding_channel.png', grey_reference=ref)}")
        summary["inference"] = inference_alone(m_rand, scenes, a.threads)
        log(f"the policy alone on {a.threads} threads, batch 1 (the issue's budget: 15 ms a step): " +
            "; ".join(f"{k}: p50 {v['p50']:.1f} ms, p99 {v['p99']:.1f} ms" for k, v in summary["inference"].items()))
        if m_words is not None:
            ws = split_scenes(["seen", "novel_instructions"], a.eval, kinds)
            wres = evaluate(m_words, ws, tag="words_splits")
            words_tab = per_split(wres)
            summary["words_splits"] = {k: {kk: v[kk] for kk in ("n", "success", "rate", "ci95")}
                                       for k, v in words_tab.items()}
            log("word tokenizer model\n" + format_split_table(wres))

        # 3b) HG-DAgger on the physics sim: the main model rolls out on fresh training scenes, the sim's expert
        #     takes over when it drifts (replanning from the scene as it is), the rollouts join the demos and
        #     training resumes with interventions weighted; a control resumes as long on the demos alone
        if a.dagger_rounds > 0:
            import os
            from teleop_app.policy.generalization import collect_corrections

            data_dag = out / "data_dagger"
            if not (data_dag / "store.json").exists():     # the demos, hard-linked (episode files are immutable)
                shutil.copytree(data_rand, data_dag, copy_function=os.link)
            cur, total, rounds = m_rand, a.minutes, []
            for rnd in range(1, a.dagger_rounds + 1):
                mark = out / f"dagger_collect_{rnd}.json"
                if not mark.exists():
                    t0 = time.monotonic()
                    col = collect_corrections(load_policy(str(cur), threads=a.threads),
                                              split_scenes(["train"], a.dagger_rollouts, kinds, seed=500_000 + 10_000 * rnd),
                                              data_dag, dagger_round=rnd)
                    col["s"] = round(time.monotonic() - t0, 1)
                    mark.write_text(json.dumps(col))
                col = json.loads(mark.read_text())
                log(f"DAgger round {rnd}: {col['rollouts']} rollouts, {col['corrected_steps']} of {col['steps']} steps "
                    f"corrected ({col['takeovers']} takeovers), {col['success_with_help']} succeeded with help")
                total += a.dagger_minutes
                cur = fit(f"rand_dagger{rnd}", data_dag, total, start=cur, augment="strong",
                          intervention_weight=a.intervention_weight)[0]
                rounds.append({"round": rnd, **col, "train": summary.get(f"train_rand_dagger{rnd}")})
            dres = per_split(evaluate(cur, scenes, tag="dagger_splits"))
            ctrl = fit("rand_more", data_rand, total, start=m_rand, augment="strong")[0]
            cres = per_split(evaluate(ctrl, scenes, tag="more_splits"))
            keep = ("n", "success", "rate", "ci95")
            dagger = {"rounds": rounds, "minutes_total": total,
                      "dagger": {k: {kk: v[kk] for kk in keep} for k, v in dres.items()},
                      "control": {k: {kk: v[kk] for kk in keep} for k, v in cres.items()}}
            summary["dagger"] = dagger

        # 4) domain gap
        if m_plain is not None:
            ds = split_scenes(["seen"], a.domain_eval, kinds, seed=5000)
            for name, ck in (("with randomisation + strong aug", m_rand), ("without (plain demos, basic aug)", m_plain)):
                row = {}
                for dom in ("default", "held_out"):
                    d = per_split(evaluate(ck, ds, domain=dom, tag=f"{ck.stem}_gap"))["seen"]
                    row[dom] = {kk: d[kk] for kk in ("n", "success", "rate", "ci95")}
                row["gap"] = row["default"]["rate"] - row["held_out"]["rate"]
                gap[name] = row
                log(f"domain {name}: default {row['default']['success']}/{row['default']['n']}, "
                    f"held-out {row['held_out']['success']}/{row['held_out']['n']}")
            summary["domain_gap"] = gap

    # 5) fine-tuning curve on a new task kind, from a base trained on other kinds
    curve, ft_base_info = [], {}
    if "finetune" not in skip:
        ns = sorted(int(x) for x in a.ft_demos.split(","))
        if a.ft_base_kinds == "main":
            ft_base = m_rand
        else:
            data_fb = record("data_ftbase", split_scenes(["train"], a.ft_base_demos, base_kinds), True)
            ft_base, ft_base_info = fit("ftbase", data_fb, a.minutes, base=True, text_encoder="minilm", augment="strong",
                                        target_weight=a.target_weight, grounding=a.grounding, ema=a.ema, channel_distract=a.channel_distract,
                                        distract_levels=a.distract_levels)
            fb_res = evaluate(ft_base, split_scenes(["seen"], a.ft_eval * len(base_kinds), base_kinds, seed=7000),
                              tag="ftbase_kinds")
            ft_base_info = {**ft_base_info, "kinds": base_kinds, "demos": a.ft_base_demos,
                            "per_kind": {k: {kk: v[kk] for kk in ("n", "success", "rate")}
                                         for k, v in per_split(fb_res)["seen"]["per_task"].items()}}
            summary["ft_base"] = ft_base_info
            log(f"fine-tuning base on {base_kinds}: " + json.dumps(ft_base_info["per_kind"]))
        ft_eval = split_scenes(["seen"], a.ft_eval, (a.new_kind,), seed=7000)
        # the curve compares ways to use the same demos: every point runs the same way, without the test-time
        # shift (LoRA and full fine-tunes train with the basic augmentation, scratch with the strong one)
        base_new = per_split(evaluate(ft_base, ft_eval, tag="base_newtask", tta=0))["seen"]
        curve.append({"demos": 0, "method": "base (no new demos)", "success": base_new["success"],
                      "n": base_new["n"], "rate": base_new["rate"], "ci95": base_new["ci95"], "trained_params": 0})
        for n in ns:
            data_n = record(f"data_new_{n}", split_scenes(["train"], n, (a.new_kind,), seed=20000), True,
                            perturb=0.0)      # the lab's few demos of its new task: plain ones
            for method in methods:
                label, kw = FT_METHODS[method]
                if method == "scratch":
                    kw = {**kw, "grounding": a.grounding}
                else:
                    kw = {**kw, "init": ft_base}
                ck, info = fit(f"ft_{method}_{n}", data_n, a.ft_minutes, target_weight=a.target_weight, **kw)
                res_n = evaluate(ck, ft_eval, tag=ck.stem, tta=0)
                d = per_split(res_n)["seen"]
                curve.append({"demos": n, "method": label, "success": d["success"], "n": d["n"],
                              "rate": d["rate"], "ci95": d["ci95"], "trained_params": info.get("trained_params"),
                              "train_steps": info.get("steps"), "outcomes": outcome_counts(res_n)})
                log(f"fine-tune {label} {n} demos: {d['success']}/{d['n']} "
                    f"(trained {info.get('trained_params')} params)")
        summary["finetune_curve"] = curve

    # ---- tables ----------------------------------------------------------------------------------
    pct = lambda d: f"{d['success']}/{d['n']} = {100 * d['rate']:.0f}% ({100 * d['ci95'][0]:.0f}-{100 * d['ci95'][1]:.0f}%)"
    lines = []
    if res is not None:
        lines += ["", f"== generalization, kinds {kinds}, {a.demos} demos, "
                  f"{f'{a.steps} steps' if a.steps else f'{a.minutes} min'}/model ==",
                  f"{'split':<20} {'ours (MiniLM, rand+aug)':<28} {'word tokenizer':<28} RT-2"]
        for sp in ("seen", "unseen_objects", "novel_instructions", "reasoning"):
            if sp in table:
                w = pct(words_tab[sp]) if words_tab and sp in words_tab else "-"
                lines.append(f"{SPLIT_LABELS[sp]:<20} {pct(table[sp]):<28} {w:<28} {100 * RT2[sp]:.0f}%")
        lines += ["", "== how the main model's rollouts ended (read off the physics) ==", format_outcome_table(res)]
    if dagger:
        lines += ["", f"== HG-DAgger on the physics sim ({a.dagger_rounds} rounds of {a.dagger_rollouts} corrected "
                      f"rollouts, {dagger['minutes_total']:g} min of training in all) ==",
                  f"{'split':<20} {'base (' + str(a.minutes) + ' min)':<28} {'+ DAgger':<28} {'control: demos only':<28}"]
        for sp in ("seen", "unseen_objects", "novel_instructions", "reasoning"):
            if sp in table:
                lines.append(f"{SPLIT_LABELS[sp]:<20} {pct(table[sp]):<28} {pct(dagger['dagger'][sp]):<28} "
                             f"{pct(dagger['control'][sp]):<28}")
    if gap:
        lines += ["", "== held-out visual domain (seen objects) ==",
                  f"{'training':<36} {'default look':<24} {'held-out domain':<24} gap"]
        for name, row in gap.items():
            lines.append(f"{name:<36} {pct(row['default']):<24} {pct(row['held_out']):<24} "
                         f"{100 * row['gap']:+.0f} pts")
    if curve:
        fb = f"a base trained on {ft_base_info['kinds']}" if ft_base_info else "the main model"
        lines += ["", f"== fine-tuning on '{a.new_kind}' ({a.ft_minutes} min per run) from {fb} ==",
                  f"{'demos':<6} {'method':<24} {'success':<26} trained params"]
        for c in curve:
            lines.append(f"{c['demos']:<6} {c['method']:<24} {pct(c):<26} {c['trained_params']}")
    text = "\n".join(lines)
    print(text)
    summary["wall_min"] = round((time.monotonic() - T0) / 60, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "tables.txt").write_text(text + "\n")
    if res is not None:
        page = write_report(res, None, out, title="VLA generalization (physics sim)",
                            info={k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
        print(f"report: {page}")
    print(f"summary: {out / 'summary.json'}  (wall {summary['wall_min']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
