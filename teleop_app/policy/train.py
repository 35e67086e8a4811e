"""Train the project's VLA on recorded episodes, on the CPU, with progress, checkpoints and resume.

    train("data/demos", "runs/vla.pt", steps=6000, max_minutes=20)

Targets are chunks of the next `chunk` joint targets (padded past the episode end with the last
action = hold), by default as arm moves relative to the current joints (see chunk_targets),
normalised with the dataset mean/std; the policy always outputs absolute joint targets. Images get a small random shift
(+-aug_shift px: small, because a fixed camera's pixel position *is* the cube position the arm must
reach) and a mild brightness jitter, the joint state a little noise, so the policy copes
with its own small errors in closed loop. L1 loss (as ACT): sharper than L2 on multi-modal data.

Switches (each measured in benchmarks/bench_generalization.py):
  text_encoder  "words" (shipped tokenizer) or "minilm" / a sentence-transformers folder: a frozen
                pre-trained sentence embedding, computed once per distinct instruction; training adds a
                little noise to it so the projection is smooth between the few training sentences.
  augment       "none", "basic" (the shift + brightness above, default) or "strong": random crop/shift
                +-4 px, colour jitter (brightness, contrast, per-channel gain = white balance), saturation
                and Gaussian pixel noise. Domain randomisation itself is in the data: `teleop record --randomize`.
  state_noise   Gaussian noise (sigma, on the normalised joint state) while training. The default 0.05 is
                the old recipe; on the physics sim it fitted the demos and failed every closed-loop pick
                (the network told the demos apart by their joint paths and never looked); 1.5 learns to look.
  action_space  "delta_arm" (default), "absolute" or "ee" (end-effector targets through the robot
                profile's [kinematics] chain, policy/ee.py).
  keypose_weight  > 0: an auxiliary head predicts, from each observation, where the TCP will be at the demo's
                next grasp or release (keypose_targets: hindsight labels read off the demo itself, through
                the profile's [kinematics] chain; nothing privileged from the sim), weighted into the loss.
                It asks the vision + instruction path to say *where* the named object is, the part the
                action loss supervises only through 30 future joint moves.
  target_weight > 0: keypoint 0 of each camera's spatial softmax is trained to sit on the object the
                instruction names (target_labels: where the demo grasps it, projected through the simulated
                workcell's cameras). A convolutional detector of "the named object" is translation-equivariant,
                so it carries to new placements, where a regression from the fused tokens (keypose) did not.
  init          fine-tune from a base checkpoint: LoRA adapters (peft) on the fusion transformer's
                feed-forward layers, the instruction conditioning (FiLM generator, text projection) and
                the action head (lora_vision: the cameras' encoders too); `full=True` trains every
                weight instead. The base's normalisation, cameras, image size and text encoder are kept.
                See finetune_targets for what is adapted.
  ema > 0       the saved weights are an exponential moving average of the trained ones (decay `ema` per
                step, as diffusion policy and ACT-style recipes keep); training resumes from the raw weights.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from .base import PolicyError, PolicyMeta
from .dataset import Dataset, load_dataset
from .ee import EE_DIM, ee_targets
from .tokenizer import Tokenizer


@dataclass
class TrainResult:
    path: Path
    step: int
    loss: float
    val_loss: float | None
    minutes: float
    episodes: int
    samples: int
    cancelled: bool = False
    history: list[tuple[int, float]] = field(default_factory=list)
    trained_params: int = 0          # parameters the optimizer updated (LoRA: the adapters only)
    total_params: int = 0


ACTION_SPACES = ("delta_arm", "absolute", "ee")


def chunk_targets(ds: Dataset, chunk: int, action_space: str, chain=None) -> tuple[np.ndarray, np.ndarray]:
    """(N, chunk, D) raw targets and (N, chunk) chunk indices, over all episodes concatenated.

    action_space "delta_arm": arm joints as (target[t+k] - qpos[t]), gripper absolute. The model
    then only has to be precise about the small move from where the arm is, not about absolute
    angles (much better use of a small network); the policy adds qpos back, so it still outputs
    absolute joint targets. "absolute": targets as recorded. "ee": the target's end-effector pose
    relative to the TCP at qpos[t] (D = 7, policy/ee.py; `chain` = the robot's kinematic chain); the
    policy turns it back into joint targets through the same chain.
    """
    out, start, idx = [], 0, []
    for e in ds.episodes:
        n = len(e.qpos)
        t = np.minimum(np.arange(n)[:, None] + np.arange(chunk)[None], n - 1)
        if action_space == "ee":
            a = ee_targets(chain, e.qpos, e.action, chunk)
        else:
            a = e.action[t].astype(np.float32)                       # (n, chunk, D)
        if action_space == "delta_arm":
            a[..., :-1] -= e.qpos[:, None, :-1]
        out.append(a)
        idx.append(start + t)
        start += n
    return np.concatenate(out), np.concatenate(idx)


def target_stats(ds: Dataset, chunk: int, action_space: str, chain=None) -> dict:
    a = chunk_targets(ds, chunk, action_space, chain)[0]
    a = a.reshape(-1, a.shape[-1])
    st = ds.stats()
    st["action"] = {"mean": a.mean(0).tolist(), "std": np.maximum(a.std(0), 1e-3).tolist()}
    return st


def gripper_events(action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(closed (T,) bool: the commanded gripper is under half open, the steps where it changes: a grasp or a
    release) of one episode's actions."""
    closed = np.asarray(action[:, -1]) < 0.5
    return closed, np.flatnonzero(closed[1:] != closed[:-1]) + 1


def keypose_targets(ds: Dataset, chain) -> np.ndarray:
    """(N, 3) over all episodes concatenated: for each step, the TCP position (through `chain`, at the
    measured joints) at the episode's next gripper event at or after it (the commanded gripper crossing half
    open: a grasp or a release), or at its last step when none follows. For a pick that is where the
    object is; for a place, where it goes once grasped."""
    out = []
    for e in ds.episodes:
        n = len(e.qpos)
        _closed, events = gripper_events(e.action)
        nxt = np.full(n, n - 1)
        for k in events[::-1]:
            nxt[:k + 1] = k
        tcp = np.array([chain.fk(q)[:3, 3] for q in np.asarray(e.qpos, float)])
        out.append(tcp[nxt].astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def target_labels(ds: Dataset, chain, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Where the demo's target object is in each camera's image, for the target loss (train's target_weight):
    (N, n_cam, 2) positions in the keypoint coordinates of a model of config `cfg` (model.pixel_to_keypoint)
    and an (N, n_cam) mask of those in view.

    The object's 3D position is a hindsight label read off the demo, as keypose_targets: until the first
    grasp it is the TCP where the gripper closes, while held the TCP itself, after a release the TCP there.
    Projecting it needs each camera's geometry: the simulated workcell's (drivers/sim/render.view_camera),
    with the episode's own camera jitter rebuilt from its seed; recordings of real cameras carry none yet."""
    from drivers.sim.render import Style, make_style, style_rng, view_camera
    from teleop_app.profiles import load_profile
    from .model import pixel_to_keypoint
    views = {c.name: c.view for c in load_profile(ds.robot).cameras}
    h, w = ds.image_size
    pts, ok = [], []
    for e in ds.episodes:
        if e.sim is None or "seed" not in e.extra:
            raise PolicyError(f"target_weight needs the cameras' geometry: {e.file} is not a simulated-workcell "
                              "recording with its scene seed; train without it (target_weight 0)")
        r = bool(e.extra.get("randomized"))
        style = make_style(style_rng(e.extra["seed"]), r, r, r, r) if r else Style()
        q = np.asarray(e.qpos, float)
        tcp = [chain.fk(x) for x in q]
        closed, events = gripper_events(e.action)
        obj = np.array([t[:3, 3] for t in tcp])                  # held (and no event): at the TCP
        if len(events):
            obj[:events[0]] = obj[events[0]]                     # before the first grasp: where it closes
            for k, nxt in zip(events, list(events[1:]) + [len(q)]):
                if not closed[k]:
                    obj[k:nxt] = obj[k]                          # released: stays where it was let go
        uv = np.zeros((len(q), len(ds.cameras), 2))
        m = np.zeros((len(q), len(ds.cameras)), bool)
        for ci, cam in enumerate(ds.cameras):
            view = views.get(cam, cam)
            if view == "wrist":                                  # moves with the hand: a camera per frame
                proj = [view_camera(view, style, tcp[t], w, h).project(obj[t][None]) for t in range(len(q))]
                px, z = np.concatenate([p for p, _ in proj]), np.concatenate([d for _, d in proj])
            else:                                                # fixed in the cell: one camera, all frames
                px, z = view_camera(view, style, None, w, h).project(obj)
            uv[:, ci] = px
            m[:, ci] = (z > 0.02) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        pts.append(pixel_to_keypoint(uv, cfg).astype(np.float32))
        ok.append(m)
    n = len(ds.cameras)
    return (np.concatenate(pts) if pts else np.zeros((0, n, 2), np.float32),
            np.concatenate(ok) if ok else np.zeros((0, n), bool))


def robot_chain(ds: Dataset, why: str = "action_space 'ee'"):
    """The kinematic chain of the robot the dataset was recorded with (its profile's [kinematics]), for
    action_space "ee" and the keypose labels (`why` names the one asking); a clear error when the profile
    has none."""
    from teleop_app.profiles import ProfileError, load_profile
    if not ds.robot:
        raise PolicyError(f"{why} needs the robot profile the episodes were recorded with; "
                          "these episodes name none")
    try:
        prof = load_profile(ds.robot)
    except ProfileError as e:
        raise PolicyError(f"{why} needs the robot's profile: {e}") from None
    if prof.kinematics is None:
        raise PolicyError(f"{why} needs a [kinematics] chain of the arm joints in the profile "
                          f"'{prof.name}' (it has none); train without it")
    if prof.kinematics.n != len(ds.joint_names) - 1:
        raise PolicyError(f"{why}: the profile '{prof.name}' chains {prof.kinematics.n} joints, the "
                          f"dataset has {len(ds.joint_names) - 1} arm joints ({ds.joint_names[:-1]})")
    return prof.kinematics


def sampling_probabilities(ds: Dataset, intervention_weight: float | None) -> np.ndarray | None:
    """Probability of drawing each step (episodes concatenated) as a training sample, None = uniform.
    intervention_weight (HG-DAgger): the policy's own actions are dropped and the operator's corrections
    weighted; a scripted demo's deliberate mistakes (action source "perturbation") are never drawn, only
    the recovery after them."""
    if intervention_weight is None and not ds.has_perturbations:
        return None
    w = ds.step_weights(intervention_weight)
    if w.sum() <= 0:
        raise PolicyError("no demonstration or intervention steps to train on (every step is the policy's "
                          "own action or a deliberate perturbation)")
    return w / w.sum()


AUGMENT = ("none", "basic", "strong")
LORA_RANK = 8


class _Batcher:
    """Flat arrays over all episodes + normalised chunk targets; text = token ids or sentence embeddings."""

    def __init__(self, ds: Dataset, tok: Tokenizer, chunk: int, stats: dict, action_space: str, encoder=None,
                 chain=None, keypose=None, variants: list[list[str]] | None = None, grounding: str = "none"):
        self.cams = ds.cameras
        self.images = {c: np.concatenate([e.images[c] for e in ds.episodes]) for c in self.cams}
        q = np.concatenate([e.qpos for e in ds.episodes])
        s_mean, s_std = np.asarray(stats["state"]["mean"], np.float32), np.asarray(stats["state"]["std"], np.float32)
        a_mean, a_std = np.asarray(stats["action"]["mean"], np.float32), np.asarray(stats["action"]["std"], np.float32)
        self.state = (q - s_mean) / s_std
        self.targets = (chunk_targets(ds, chunk, action_space, chain)[0] - a_mean) / a_std
        # text rows per episode: (n_episodes, K, ...) wordings, row 0 = the recorded instruction
        # (instruction augmentation gives K > 1: batch(idx, rng) draws one per sample)
        variants = variants or [[e.instruction] for e in ds.episodes]
        k_max = max(len(v) for v in variants)
        flat = [v[k % len(v)] for v in variants for k in range(k_max)]
        from .text_encoder import text_rows
        rows = text_rows(flat, tok, encoder, grounding)
        self.text = rows.reshape(len(variants), k_max, *rows.shape[1:])
        self.n_variants = np.asarray([len(v) for v in variants])
        self.episode = np.concatenate([np.full(len(e.qpos), i) for i, e in enumerate(ds.episodes)])
        self.n = len(q)
        self.keypose = None           # (N, 3) normalised keypose_targets, when the keypose loss runs
        if keypose is not None:
            k = stats["keypose"]
            self.keypose = (keypose - np.asarray(k["mean"], np.float32)) / np.asarray(k["std"], np.float32)

    def batch(self, idx: np.ndarray, rng: np.random.Generator | None = None):
        """rng: draw one wording of each sample's instruction (instruction augmentation); None: the recorded one."""
        imgs = np.stack([self.images[c][idx] for c in self.cams], 1)      # (B, C, H, W, 3)
        ep = self.episode[idx]
        k = (rng.integers(0, 1 << 30, len(idx)) % self.n_variants[ep]) if rng is not None else 0
        return imgs, self.text[ep, k], self.state[idx], self.targets[idx]


def shift_range(mode: str, pad: int) -> int:
    """How far (+- px) augment_images shifts an image in `mode` with `pad`: what the policy then learnt to
    ignore, and the shifts it averages over at run time (checkpoint.VLAPolicy's tta)."""
    if mode not in AUGMENT:
        raise ValueError(f"augment must be one of {AUGMENT}, got {mode!r}")
    return 0 if mode == "none" else max(pad, 4) if mode == "strong" else pad


NOISE_BANK = 1 << 23             # standard normal values drawn once per process for gaussian_noise


@lru_cache(maxsize=1)
def _noise_bank():
    import torch
    return torch.randn(NOISE_BANK, generator=torch.Generator().manual_seed(0))


def gaussian_noise(shape, rng: np.random.Generator):
    """A float32 tensor of standard normal noise: a window at an offset `rng` draws in a bank of NOISE_BANK
    values (drawn once per process, fixed seed); fresh torch.randn for more than half the bank. torch's
    sampler costs ~6 ns a value here, 10 ms for a batch of 64 96x96 images: 7 % of a training step, where
    the window is a copy (0.3 ms). The pixel-noise augmentation only needs noise the network cannot learn:
    a random offset every step gives that, and the run stays reproducible from the training seed."""
    import torch
    n = int(np.prod(shape))
    if n > NOISE_BANK // 2:
        return torch.randn(*shape)
    off = int(rng.integers(0, NOISE_BANK - n + 1))
    return _noise_bank()[off:off + n].view(*shape)


def augment_images(x, rng: np.random.Generator, mode: str = "basic", pad: int = 2, return_shift: bool = False):
    """(B, C, 3, H, W) float in [0,1] -> augmented copy. "basic": shift +-pad px + brightness 0.85-1.15;
    "strong": shift +-max(pad, 4) px, brightness 0.7-1.3, contrast 0.7-1.3, per-channel gain 0.85-1.15,
    saturation 0.7-1.3, Gaussian noise sigma 0-0.03. "none": unchanged.
    return_shift: (copy, (B, C, 2) pixels each image's content moved by, x then y)."""
    import torch
    import torch.nn.functional as F
    b, c, ch, h, w = x.shape
    moved = np.zeros((b, c, 2), np.float32)
    p = shift_range(mode, pad)
    if mode == "none":
        return (x, moved) if return_shift else x
    n = b * c
    flat = x.reshape(n, ch, h, w).contiguous()        # (a batch arrives in the recorder's h, w, rgb order)
    if p > 0:
        padded = F.pad(flat, (p, p, p, p), mode="replicate")
        dx, dy = rng.integers(0, 2 * p + 1, n), rng.integers(0, 2 * p + 1, n)
        flat = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        moved = np.stack([p - dx, p - dy], 1).astype(np.float32).reshape(b, c, 2)
    u = lambda lo, hi, shape: torch.from_numpy(rng.uniform(lo, hi, shape).astype(np.float32))
    if mode == "basic":
        flat = flat * u(0.85, 1.15, (n, 1, 1, 1))
    else:
        flat = flat * u(0.7, 1.3, (n, 1, 1, 1)) * u(0.85, 1.15, (n, 3, 1, 1))
        mean = flat.mean((1, 2, 3), keepdim=True)
        flat = (flat - mean) * u(0.7, 1.3, (n, 1, 1, 1)) + mean
        grey = flat.mean(1, keepdim=True)
        flat = (flat - grey) * u(0.7, 1.3, (n, 1, 1, 1)) + grey
        flat = flat + gaussian_noise(flat.shape, rng) * u(0.0, 0.03, (n, 1, 1, 1))
    out = flat.clamp_(0, 1).reshape(b, c, ch, h, w)
    return (out, moved) if return_shift else out


def _to_torch(imgs, toks, state, act, aug: bool, rng: np.random.Generator, pad: int = 4,
              state_noise: float = 0.05, augment: str = "basic", text_noise: float = 0.0, noise_dims: int | None = None):
    """-> (images, text, state, actions, (B, C, 2) pixels the augmentation moved each image by: the target loss
    moves its labels with them). text_noise goes on the first noise_dims text values (the sentence embedding,
    not the grounding colour after it; None = all)."""
    import torch
    x = torch.from_numpy(imgs).permute(0, 1, 4, 2, 3).float().div_(255.0)   # (B, C, 3, H, W)
    s = torch.from_numpy(state)
    t = torch.from_numpy(toks)
    shift = np.zeros((*x.shape[:2], 2), np.float32)
    if aug:
        x, shift = augment_images(x, rng, augment, pad, return_shift=True)
        s = s + state_noise * torch.randn_like(s)
        if text_noise and t.is_floating_point():
            t = t.clone()
            t[:, :noise_dims] += text_noise * torch.randn_like(t[:, :noise_dims])
    return x, t, s, torch.from_numpy(act), shift


def distract_features(text, share: float, rng: np.random.Generator, levels: tuple[float, float] = (0.0, 1.0)):
    """For a batch's text input ending in grounding colour features (B, ... + grounding.FEATURES): (B, FEATURES)
    features of a grey level uniform in levels (0 black .. 1 white) for a share of the rows whose instruction
    names a colour, zeros (found = 0) for the others (train's channel_distract; model.forward_all's distract)."""
    import torch
    from .grounding import FEATURES
    b = text.shape[0]
    on = (rng.random(b) < share) & (text[:, -1].numpy() > 0)
    out = np.zeros((b, FEATURES), np.float32)
    out[on, :3] = rng.uniform(levels[0], levels[1], (int(on.sum()), 1))
    out[on, 3] = 1.0
    return torch.from_numpy(out)


def finetune_targets(net, vision: bool = False) -> list[str]:
    """Modules LoRA adapts: the fusion transformer's feed-forward layers, the action head and the
    instruction conditioning (FiLM generator, sentence-embedding projection). Not the attention
    projections: torch's MultiheadAttention reads its weights directly (an adapter on out_proj would
    never run), and peft's experimental MultiheadAttention adapter did not merge back exactly.
    vision: also every convolution and linear layer of the cameras' encoders (stem, FiLM blocks, token
    projection, keypoint maps and their MLP), so a new task can look for what the base never had to find."""
    from torch import nn
    names = []
    for n, m in net.named_modules():
        leaf = n.rsplit(".", 1)[-1]
        if (n.startswith("transformer.") and leaf in ("linear1", "linear2")) or n == "head" \
                or n in ("film.0", "film.2", "text_proj.0", "text_proj.2"):
            names.append(n)
        elif vision and n.startswith("encoders.") and isinstance(m, (nn.Conv2d, nn.Linear)):
            names.append(n)
    return names


def count_params(net) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    ps = list(net.parameters())
    return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)


def _sha256(path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train(dataset_root, out_path, steps: int = 6000, batch_size: int = 64, lr: float = 3e-4,
          resume: bool = True, progress: Callable[[dict], None] | None = None,
          cancel: threading.Event | None = None, *, cameras: list[str] | None = None,
          image_size: tuple[int, int] = (64, 64), chunk: int = 10, val_fraction: float = 0.1,
          checkpoint_every: int = 500, max_minutes: float | None = None, seed: int = 0,
          model: dict | None = None, threads: int = 2, weight_decay: float = 1e-4,
          warmup: int = 200, action_space: str = "delta_arm", aug_shift: int = 2,
          text_encoder: str = "words", augment: str = "basic", init=None, full: bool = False,
          lora_rank: int = LORA_RANK, lora_vision: bool = False, text_noise: float = 0.05,
          state_noise: float = 0.05,
          intervention_weight: float | None = None, keypose_weight: float = 0.0,
          instruction_augment: bool = False, target_weight: float = 0.0, grounding: str = "none",
          ema: float = 0.0, channel_distract: float = 0.0,
          distract_levels: tuple[float, float] = (0.0, 1.0)) -> TrainResult:
    """Train (or resume) and write a checkpoint to out_path; returns a TrainResult.

    The LR follows warmup + cosine over `steps`, or over `max_minutes` if that ends first, so a
    time-boxed run still finishes at a low LR. `cancel.set()` stops after the current step and
    saves. With resume, an existing out_path with optimizer state continues where it stopped.
    With init=BASE.pt, fine-tunes the base (LoRA adapters, or every weight with full=True) on this
    dataset; the run's trained/total parameter counts are in the checkpoint's train info.
    intervention_weight=W (HG-DAgger, teleop_app/dagger.py): steps the policy produced on its own are
    not trained on, operator interventions are sampled W times as often as demonstration steps.
    instruction_augment: each step draws one wording of its demo's instruction (instruction_aug.py:
    colour synonyms), so the instruction's meaning, not one sentence, is tied to the behaviour.
    target_weight=W > 0: keypoint 0 of each camera learns to sit on the named object (target_labels), an L1
    loss in keypoint coordinates weighted W into the action loss.
    grounding="colour" (a new model with a sentence encoder): each camera gets a colour-affinity input channel
    for the colour the instruction names (grounding.py: a colour lexicon, not learnt from the demos).
    channel_distract=P (with grounding): in a share P of the samples whose instruction names a colour, the channel
    also marks a random grey level, white to black (distract_features): what it shows when an instruction names
    white or grey and the robot, its fingers or shadows match too. The training colours are all chromatic, so
    without it the network never sees the channel mark something that is not the target.
    distract_levels=(LO, HI): the grey levels it draws from (0 black .. 1 white); (0.8, 1.0) marks what a white
    instruction marks at run time, the arm's lit faces, and not the table's greys and shadows.
    A new model trained with a distractor matches white / grey against the brightest neutral pixel
    (grounding.affinity's "neutral"), which marks a white object as fully as the white arm; without it, the old "brightest" reference (the same
    reference with a model never shown a lit arm: white targets 5/36 -> 1/36 and 23/36 -> 7/36 for two seeds).
    """
    import torch
    from .checkpoint import FORMAT, CheckpointError, build_model, read_checkpoint, save_checkpoint
    from .model import ModelConfig, VLAModel
    from .text_encoder import load_text_encoder

    if augment not in AUGMENT:
        raise PolicyError(f"augment must be one of {', '.join(AUGMENT)}, got {augment!r}")
    from .grounding import KINDS as GROUNDING
    if grounding not in GROUNDING:
        raise PolicyError(f"grounding must be one of {', '.join(GROUNDING)}, got {grounding!r}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be a decay in [0, 1), got {ema}")
    if not 0.0 <= channel_distract <= 1.0:
        raise PolicyError(f"channel_distract must be a share in [0, 1], got {channel_distract}")
    distract_levels = tuple(float(v) for v in distract_levels)
    if len(distract_levels) != 2 or not 0.0 <= distract_levels[0] <= distract_levels[1] <= 1.0:
        raise PolicyError(f"distract_levels must be two grey levels 0 <= LO <= HI <= 1, got {distract_levels}")
    base_blob = None
    if init is not None:
        try:
            base_blob = read_checkpoint(init)
        except CheckpointError as e:
            raise PolicyError(f"cannot fine-tune: {e}") from None
        bm = PolicyMeta.from_dict(base_blob["meta"])
        cameras, image_size = list(bm.cameras), tuple(bm.image_size)   # the base decides its inputs
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out_path = Path(out_path)
    t_load = time.monotonic()
    if progress:
        progress({"phase": "loading", "step": 0, "steps": steps})
    ds = load_dataset(dataset_root, cameras, tuple(image_size), "train", val_fraction)
    variants = None
    if instruction_augment:
        from .instruction_aug import instruction_variants
        variants = [instruction_variants(e.instruction) for e in ds.episodes]
    try:
        val = load_dataset(dataset_root, ds.cameras, tuple(image_size), "val", val_fraction)
    except PolicyError:
        val = None
    load_s = time.monotonic() - t_load

    blob = None
    kp_labels = None          # keypose_targets of the training set, when the keypose loss runs
    if resume and out_path.exists() and init is not None:
        raise PolicyError(f"{out_path} exists; a fine-tuning run (--init) always starts from the base: "
                          "pass --no-resume to overwrite it, or choose another output path")
    if resume and out_path.exists():
        try:
            blob = read_checkpoint(out_path)
        except CheckpointError as e:
            raise PolicyError(f"cannot resume: {e}. Pass resume=False (--no-resume) to overwrite it, "
                              "or choose another output path") from None
        if "optimizer" not in blob:
            raise PolicyError(f"cannot resume {out_path}: it holds no optimizer state (an exported "
                              "checkpoint?). Pass resume=False (--no-resume) or another output path")
    if blob is not None:
        tok = Tokenizer.from_dict(blob["tokenizer"])
        meta = PolicyMeta.from_dict(blob["meta"])
        if tuple(meta.image_size) != tuple(image_size):
            raise PolicyError(f"cannot resume {out_path}: it was trained at image size {meta.image_size}, "
                              f"not {tuple(image_size)}; pass the same size or resume=False")
        if meta.joint_names != ds.joint_names or meta.cameras != ds.cameras:
            raise PolicyError(f"cannot resume {out_path}: it was trained on joints {meta.joint_names} / "
                              f"cameras {meta.cameras}, the dataset has {ds.joint_names} / {ds.cameras}; "
                              "pass resume=False or a new output path")
        net = build_model(blob, out_path)
        stats = meta.stats
        action_space = meta.extra.get("action_space", "absolute")
        info = dict(blob["train"])
        start_step, elapsed0 = int(info.get("step", 0)), float(info.get("elapsed_s", 0.0))
        enc_spec = blob.get("text_encoder", {"kind": "words"})
        encoder = load_text_encoder(enc_spec)
        finetune = blob.get("finetune")
    elif base_blob is not None:
        tok = Tokenizer.from_dict(base_blob["tokenizer"])
        meta = PolicyMeta.from_dict(base_blob["meta"])
        if meta.joint_names != ds.joint_names:
            raise PolicyError(f"cannot fine-tune {init}: it was trained on joints {meta.joint_names}, "
                              f"the dataset has {ds.joint_names}")
        net = build_model(base_blob, init)
        stats = meta.stats                       # keep the base's normalisation: its weights assume it
        action_space = meta.extra.get("action_space", "absolute")
        meta.extra["instructions"] = sorted(set(meta.extra.get("instructions", []))
                                            | {e.instruction for e in ds.episodes})
        enc_spec = base_blob.get("text_encoder", {"kind": "words"})
        encoder = load_text_encoder(enc_spec)
        info, start_step, elapsed0 = {}, 0, 0.0
        finetune = {"base": str(init), "base_sha256": _sha256(init), "method": "full" if full else "lora",
                    "base_step": int(base_blob["train"].get("step", 0))}
        if encoder is None:
            unknown = sorted({w for e in ds.episodes for w in tok.unknown_words(e.instruction)})
            if unknown:
                print(f"note: the base uses the word tokenizer; new words map to <unk>: {unknown}")
        if not full:
            from peft import LoraConfig, get_peft_model
            targets = finetune_targets(net, vision=lora_vision)
            net = get_peft_model(net, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                                 target_modules=targets))
            finetune.update({"lora_rank": lora_rank, "lora_alpha": 2 * lora_rank, "targets": targets,
                             "lora_vision": bool(lora_vision),
                             "saved_as": "adapters merged into the base weights"})
    else:
        tok = Tokenizer.build([t for v in variants for t in v] if variants else [e.instruction for e in ds.episodes])
        encoder = load_text_encoder(text_encoder)
        enc_spec = encoder.spec() if encoder is not None else {"kind": "words"}
        finetune = None
        if encoder is not None:
            model = {**(model or {}), "text_encoder": encoder.kind, "text_dim": encoder.dim}
        if grounding != "none":
            if encoder is None:
                raise PolicyError("grounding needs a sentence text encoder (--text-encoder minilm), not the word "
                                  "tokenizer")
            model = {**(model or {}), "grounding": grounding}
            if channel_distract > 0:        # a network shown a lit arm can take the channel that lights it fully
                model["grey_reference"] = "neutral"
        if action_space not in ACTION_SPACES:
            raise ValueError(f"action_space must be one of {', '.join(ACTION_SPACES)}, got {action_space!r}")
        chain = robot_chain(ds) if action_space == "ee" else None
        stats = target_stats(ds, chunk, action_space, chain)
        if keypose_weight > 0:
            kp_labels = keypose_targets(ds, robot_chain(ds, "keypose_weight > 0"))
            stats["keypose"] = {"mean": kp_labels.mean(0).tolist(),
                                "std": np.maximum(kp_labels.std(0), 1e-3).tolist()}
            model = {**(model or {}), "keypose": True}
        cfg = ModelConfig(vocab_size=len(tok), max_len=tok.max_len, state_dim=len(ds.joint_names),
                          action_dim=EE_DIM if chain is not None else len(ds.joint_names), chunk=chunk,
                          cameras=list(ds.cameras),
                          image_size=tuple(image_size), **(model or {}))
        net = VLAModel(cfg)
        meta = PolicyMeta(joint_names=ds.joint_names, action_dim=len(ds.joint_names), fps=ds.fps,
                          image_size=tuple(image_size), cameras=list(ds.cameras), chunk_size=chunk,
                          stats=stats, kind=FORMAT,
                          extra={"instructions": sorted({e.instruction for e in ds.episodes}),
                                 "action_space": action_space})
        if chain is not None:           # the policy turns its end-effector targets into joints with it
            from teleop_app.kinematics import chain_to_dict
            meta.extra["kinematics"] = chain_to_dict(chain)
        if len(ds.sims) == 1:     # teleop eval then rolls it out on the sim it learnt (evaluate.choose_sim)
            meta.extra["sim"] = ds.sims[0]
        info, start_step, elapsed0 = {}, 0, 0.0
    if ema and finetune is not None and finetune.get("method") == "lora":
        raise PolicyError("ema averages every weight; LoRA fine-tuning trains adapters only (use it without ema, "
                          "or with full=True)")
    ema_net = None
    if ema:
        # the checkpoint's weights (what the policy runs) are an exponential moving average of the optimizer's;
        # those are kept as train_state_dict to resume from. The average starts as a copy of net: on resume
        # that is the saved average, and net then goes back to the trained weights.
        ema_net = torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema), use_buffers=True)
        if blob is not None and "train_state_dict" in blob:
            ema_net.n_averaged.fill_(1)
            net.load_state_dict(blob["train_state_dict"])
    net.train()
    n_train, n_total = count_params(net)
    lora = finetune is not None and finetune.get("method") == "lora" and base_blob is not None
    # fused: one kernel over all parameters (8 % of a CPU training step less than the per-tensor loop)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0 if lora else weight_decay, fused=True)
    if blob is not None:
        opt.load_state_dict(blob["optimizer"])
    cfg = ModelConfig.from_dict(base_blob["model_config"]) if base_blob is not None else net.cfg
    if action_space == "ee":            # resume / fine-tune: the chain the checkpoint was trained with
        from .ee import chain_for
        chain = chain_for(meta.extra, len(meta.joint_names) - 1)
    else:
        chain = None
    # the keypose loss runs when asked for and the model has the head (a fine-tune of a base without one
    # trains actions only)
    keypose_on = keypose_weight > 0 and cfg.keypose and "keypose" in stats
    if keypose_on and kp_labels is None:
        kp_labels = keypose_targets(ds, robot_chain(ds, "keypose_weight > 0"))
    tr = _Batcher(ds, tok, cfg.chunk, stats, action_space, encoder, chain, kp_labels if keypose_on else None,
                  variants, cfg.grounding)
    target_on = target_weight > 0
    if target_on:
        if not cfg.keypoints:
            raise PolicyError("target_weight needs a model with keypoints (model keypoints > 0)")
        from .model import pixel_to_keypoint
        tgt, tgt_ok = target_labels(ds, robot_chain(ds, "target_weight > 0"), cfg)
        px_unit = (pixel_to_keypoint([1.0, 1.0], cfg) - pixel_to_keypoint([0.0, 0.0], cfg)).astype(np.float32)
    distract_on = channel_distract > 0
    if distract_on and cfg.grounding == "none":
        raise PolicyError("channel_distract needs a model with a grounding channel (grounding 'colour')")
    va = _Batcher(val, tok, cfg.chunk, stats, action_space, encoder, chain, grounding=cfg.grounding) \
        if val is not None else None
    if finetune is not None and base_blob is not None:
        finetune.update({"trained_params": n_train, "total_params": n_total if not lora else
                         sum(v.numel() for v in base_blob["state_dict"].values())})
    if progress:
        progress({"phase": "model", "step": start_step, "steps": steps, "trained_params": n_train,
                  "total_params": n_total, "text_encoder": enc_spec.get("kind", "words"),
                  "method": finetune.get("method") if finetune else "scratch"})
    held_out = [e.file for e in val.episodes] if val is not None else []

    def lr_at(step: int, elapsed: float) -> float:
        frac = step / max(1, steps)
        if max_minutes:
            frac = max(frac, elapsed / (60.0 * max_minutes))
        warm = min(1.0, (step + 1) / max(1, warmup))
        return lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def val_loss() -> float | None:
        if va is None:
            return None
        net.eval()
        idx = np.random.default_rng(1).choice(va.n, min(va.n, 256), replace=False)
        with torch.inference_mode():
            x, t, s, a, _ = _to_torch(*va.batch(idx), aug=False, rng=rng)
            v = float((net(x, t, s) - a).abs().mean())
        net.train()
        return v

    def save(step: int, loss: float, vl: float | None, elapsed: float) -> None:
        info.update({"step": step, "steps": steps, "loss": loss, "val_loss": vl, "elapsed_s": elapsed,
                     "trained_params": n_train, "augment": augment, "aug_shift": shift_range(augment, aug_shift),
                     "text_encoder": enc_spec.get("kind"),
                     "action_space": action_space, "state_noise": state_noise,
                     "keypose_weight": keypose_weight if keypose_on else 0.0, "keypose_loss": kp_ema,
                     "target_weight": target_weight, "target_loss": tg_ema,
                     "instruction_augment": bool(variants), "grounding": cfg.grounding,
                     "channel_distract": channel_distract, "distract_levels": list(distract_levels),
                     "batch_size": batch_size, "lr": lr, "dataset": str(dataset_root),
                     "episodes": len(ds.episodes), "samples": tr.n, "held_out": held_out,
                     "val_fraction": val_fraction, "torch": str(torch.__version__), "ema": ema,
                     "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if lora:      # merge a copy: training continues on the adapters; the file needs no peft
            import copy
            merged = copy.deepcopy(net).merge_and_unload()
            save_checkpoint(out_path, merged, meta, tok, info, None, enc_spec, finetune)
        else:           # with an average: the policy runs it, training resumes from net
            save_checkpoint(out_path, net, meta, tok, info, opt.state_dict(), enc_spec, finetune,
                            state_dict=ema_net.module.state_dict() if ema_net is not None else None,
                            train_state_dict=net.state_dict() if ema_net is not None else None)

    pick = sampling_probabilities(ds, intervention_weight)
    t0 = time.monotonic()
    step, loss_ema, history, cancelled = start_step, None, [], False
    kp_ema = tg_ema = None
    vl = None
    while step < steps:
        elapsed = elapsed0 + time.monotonic() - t0
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        if max_minutes and elapsed >= 60.0 * max_minutes:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed)
        idx = rng.integers(0, tr.n, batch_size) if pick is None else rng.choice(tr.n, batch_size, p=pick)
        x, t, s, a, moved = _to_torch(*tr.batch(idx, rng if variants else None), aug=augment != "none", rng=rng,
                                      pad=aug_shift, augment=augment, text_noise=text_noise,
                                      state_noise=state_noise, noise_dims=cfg.text_dim)
        dis = distract_features(t, channel_distract, rng, distract_levels) if distract_on else None
        if keypose_on or target_on or dis is not None:
            out = net.forward_all(x, t, s, keypose=keypose_on, distract=dis)
            loss = (out["actions"] - a).abs().mean()
            total = loss
            if keypose_on:
                kp_loss = (out["keypose"] - torch.from_numpy(tr.keypose[idx])).abs().mean()
                total = total + keypose_weight * kp_loss
                kv = kp_loss.item()
                kp_ema = kv if kp_ema is None else 0.95 * kp_ema + 0.05 * kv
            if target_on:
                lab = torch.from_numpy(tgt[idx] + moved * px_unit)           # the labels move with the image
                ok = torch.from_numpy(tgt_ok[idx]).float()
                err = (out["target"] - lab).abs().sum(-1)
                tg_loss = (err * ok).sum() / ok.sum().clamp(min=1)
                total = total + target_weight * tg_loss
                tv = tg_loss.item()
                tg_ema = tv if tg_ema is None else 0.95 * tg_ema + 0.05 * tv
        else:
            loss = total = (net(x, t, s) - a).abs().mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
        opt.step()
        if ema_net is not None:
            ema_net.update_parameters(net)
        step += 1
        lv = loss.item()
        if not math.isfinite(lv):
            raise PolicyError(f"training diverged (loss {lv} at step {step}); lower the learning rate")
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        if step % 50 == 0 or step == steps:
            history.append((step, loss_ema))
        if step % checkpoint_every == 0:
            vl = val_loss()
            save(step, loss_ema, vl, elapsed0 + time.monotonic() - t0)
        if progress and (step % 10 == 0 or step == steps):
            el = elapsed0 + time.monotonic() - t0
            rate = (step - start_step) / max(1e-6, time.monotonic() - t0)
            eta = (steps - step) / max(rate, 1e-6)
            if max_minutes:
                eta = min(eta, max(0.0, 60 * max_minutes - el))
            progress({"phase": "training", "step": step, "steps": steps, "loss": loss_ema, "val_loss": vl,
                      "keypose_loss": kp_ema, "target_loss": tg_ema,
                      "elapsed_s": el, "eta_s": eta, "lr": opt.param_groups[0]["lr"]})
    elapsed = elapsed0 + time.monotonic() - t0
    vl = val_loss()
    save(step, loss_ema if loss_ema is not None else float("nan"), vl, elapsed)
    if progress:
        progress({"phase": "done", "step": step, "steps": steps, "loss": loss_ema, "val_loss": vl,
                  "elapsed_s": elapsed, "load_s": load_s})
    return TrainResult(out_path, step, float(loss_ema if loss_ema is not None else float("nan")), vl,
                       elapsed / 60.0, len(ds.episodes), tr.n, cancelled, history, n_train,
                       finetune["total_params"] if finetune and "total_params" in finetune else n_total)
