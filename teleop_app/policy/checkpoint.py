"""Self-describing checkpoints for the project's VLA, and the policy object that runs one.

One file holds: format tag + version, the weights (plain tensors), the model config, PolicyMeta
(joint names, fps, cameras, image size, chunk, normalisation stats), the tokenizer vocabulary,
the text encoder's spec (absent = the word tokenizer; "minilm": which sentence encoder, so loading
picks the same one and checks it with a probe embedding), training info (+ optimizer state for
resume) and, for a fine-tuned model, `finetune` (base file + sha256, LoRA rank/targets, trained
parameter count; the weights are the adapters merged into the base, so the file runs without peft). Only tensors, numbers, strings, lists and dicts
are stored and the file is loaded with `weights_only=True`, so opening a checkpoint never runs code.
Writes go to a temp file then os.replace, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .base import PolicyError, PolicyMeta
from .ee import EE_DIM
from .tokenizer import Tokenizer

FORMAT = "teleop-vla"
VERSION = 1


class CheckpointError(PolicyError):
    """The checkpoint file is missing, corrupt or not a teleop VLA checkpoint."""


def save_checkpoint(path, model, meta: PolicyMeta, tokenizer: Tokenizer, train_info: dict | None = None,
                    optimizer_state: dict | None = None, text_encoder: dict | None = None,
                    finetune: dict | None = None, state_dict: dict | None = None,
                    train_state_dict: dict | None = None) -> Path:
    """train_state_dict: the weights training continues from when they are not the ones the policy runs
    (an EMA of the weights is saved as state_dict, the optimizer's own weights here, for resuming)."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": {k: v.detach().cpu().clone()
                       for k, v in (state_dict if state_dict is not None else model.state_dict()).items()},
        "model_config": model.cfg.to_dict(),
        "meta": meta.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        # JSON round trip: only plain values reach the file (weights_only loading allows no classes)
        "train": json.loads(json.dumps(dict(train_info or {}), default=str)),
    }
    if optimizer_state is not None:
        blob["optimizer"] = optimizer_state
    if train_state_dict is not None:
        blob["train_state_dict"] = {k: v.detach().cpu().clone() for k, v in train_state_dict.items()}
    if text_encoder is not None and text_encoder.get("kind", "words") != "words":
        blob["text_encoder"] = json.loads(json.dumps(text_encoder))
    if finetune is not None:
        blob["finetune"] = json.loads(json.dumps(finetune, default=str))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path) -> dict:
    """The raw checkpoint dict, validated. Raises CheckpointError with what to do."""
    import torch
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (train one with `teleop train`)")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the checkpoint file (e.g. {path}/policy.pt)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail[:240]}); "
                              "the file is corrupt, truncated or not a teleop checkpoint (objects other "
                              "than tensors are refused) - use an earlier checkpoint or retrain") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a teleop VLA checkpoint (no '{FORMAT}' format tag)")
    if int(blob.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {blob.get('version')} is newer than this "
                              f"app supports ({VERSION}); update teleop")
    for key in ("state_dict", "model_config", "meta", "tokenizer"):
        if key not in blob:
            raise CheckpointError(f"{path}: checkpoint is missing '{key}'; it is incomplete - retrain")
    return blob


def build_model(blob: dict, path="<checkpoint>"):
    from .model import ModelConfig, VLAModel
    try:
        cfg = ModelConfig.from_dict(blob["model_config"])
        model = VLAModel(cfg)
        model.load_state_dict(blob["state_dict"])
    except Exception as e:
        raise CheckpointError(f"{path}: weights do not match the stored model config ({e}); "
                              "the file is corrupt or from an incompatible version") from None
    model.eval()
    return model


MAX_TTA = 16        # px: test-time shifts beyond this would move the scene, not jitter it


class VLAPolicy:
    """Runs the project's VLA on one observation; see base.Policy.

    tta (test-time augmentation, px): predict averages the normalised chunks of 5 copies of the observation,
    every camera image shifted by (0, 0), (+-tta, 0) and (0, +-tta) (edge pixels repeated, as the training
    shift), run as one batch; ~2x the time of one copy. The training augmentation taught the network to ignore
    shifts of that size, so the copies differ only in what it gets wrong: averaging keeps a grasp a pixel or two
    off the object's centre from deciding the rollout. Measured at +-4 px (docs/policy_results.md): with the
    benchmark's recipe (confuser scenes in training, whose failures are such drops) four 30-minute models went
    from 1,509 to 1,553 of 1,600 fresh seen scenes; without confuser scenes, where the failures are wrong
    objects, 1,124 -> 1,119 of 1,200 (neither helps nor hurts). 0 = one copy, the network's raw prediction.

    traced (default on): predict runs the network as a frozen TorchScript trace (torch.jit.trace, then
    torch.jit.optimize_for_inference: weights folded in, oneDNN convolutions), one per input signature (batch
    and text shapes, the grounding's hue or brightness branch, the weights' version), built when the policy is
    loaded (warm_up) and checked against the network on the same inputs before it is used; a trace that fails
    or differs falls back to the network, said in trace_notes. The same numbers to ~1e-6; with the copies the
    median call takes ~0.86 of the network's (8.8-9.9 ms against 10.2-11.5 on 2 threads, docs/policy_results.md)."""

    SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))

    def __init__(self, model, meta: PolicyMeta, tokenizer: Tokenizer, train_info: dict | None = None,
                 threads: int | None = 2, text_encoder=None, chain=None, tta: int = 0, traced: bool = True):
        import torch
        if threads:
            torch.set_num_threads(threads)
        if not 0 <= int(tta) <= MAX_TTA:
            raise PolicyError(f"test-time shift (tta) must be 0-{MAX_TTA} px, got {tta}")
        self.tta = int(tta)
        meta.extra = {**dict(meta.extra or {}), "tta": self.tta}     # said where it is served and loaded
        self.model = model.eval()
        self.meta = meta
        self.tokenizer = tokenizer
        self.train_info = dict(train_info or {})
        st, ac = meta.stats["state"], meta.stats["action"]
        self._s_mean, self._s_std = np.asarray(st["mean"], np.float32), np.asarray(st["std"], np.float32)
        self._a_mean, self._a_std = np.asarray(ac["mean"], np.float32), np.asarray(ac["std"], np.float32)
        self.text_encoder = text_encoder          # None = word tokenizer; else a SentenceEncoder
        self.traced = bool(traced)
        self._traces: dict[tuple, object] = {}    # input signature -> frozen trace, or None (runs the network)
        self.trace_notes: list[str] = []
        self._tok_cache: dict[str, object] = {}
        # "delta_arm": the network predicts arm moves relative to the current joints (train.chunk_targets);
        # "ee": end-effector moves relative to the current TCP, turned into joints by the chain (ee.py)
        self.action_space = meta.extra.get("action_space", "absolute")
        self.chain = chain              # "ee": the robot's chain the checkpoint carries (ee.chain_for)
        if self.action_space == "ee" and chain is None:
            raise PolicyError("an end-effector policy needs the robot's kinematic chain to output joint targets")

    def reset(self) -> None:
        pass

    def preprocess_images(self, images: dict) -> np.ndarray:
        """-> (n_cam, 3, H, W) float32 in [0,1], resized to the model's input size."""
        import cv2
        h, w = self.meta.image_size
        out = []
        for cam in self.meta.cameras:
            if cam not in images or images[cam] is None:
                raise PolicyError(f"observation lacks camera '{cam}' the policy needs "
                                  f"(got {sorted(images)})")
            img = np.asarray(images[cam])
            if img.ndim != 3 or img.shape[2] != 3:
                raise PolicyError(f"camera '{cam}' image must be HxWx3, got shape {img.shape}")
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            out.append(img.transpose(2, 0, 1))
        return np.stack(out).astype(np.float32) / 255.0

    def text_input(self, instruction: str):
        """The model's text input for one instruction (token ids or embedding), as a (1, ...) tensor;
        cached per string, so the sentence encoder runs once per new instruction, not per step."""
        import torch
        from .text_encoder import text_rows
        if instruction not in self._tok_cache:
            self._tok_cache[instruction] = torch.from_numpy(
                text_rows([instruction], self.tokenizer, self.text_encoder, self.model.cfg.grounding))
        return self._tok_cache[instruction]

    def _inputs(self, obs: dict):
        """(measured joints q, the model's (images, text, state) tensors for one observation)."""
        import torch
        imgs = self.preprocess_images(obs["images"])
        q = np.asarray(obs["qpos"], np.float32)
        if q.shape != self._s_mean.shape:
            raise PolicyError(f"qpos has shape {q.shape}, policy expects {self._s_mean.shape}")
        s = (q - self._s_mean) / self._s_std
        return q, (torch.from_numpy(imgs)[None], self.text_input(obs.get("instruction", "")),
                   torch.from_numpy(s)[None])

    def predict_keypose(self, obs: dict) -> np.ndarray | None:
        """Where the model expects the TCP at the next grasp/release (x, y, z in the robot's base frame, m),
        from its auxiliary head (`teleop train --keypose-weight`); None for a model trained without it."""
        import torch
        if not getattr(self.model.cfg, "keypose", False) or "keypose" not in self.meta.stats:
            return None
        _q, x = self._inputs(obs)
        with torch.inference_mode():
            kp = self.model(*x, with_keypose=True)[1][0].numpy()
        k = self.meta.stats["keypose"]
        return kp.astype(np.float64) * np.asarray(k["std"]) + np.asarray(k["mean"])

    def predict_target(self, obs: dict) -> dict[str, np.ndarray] | None:
        """Where the model sees the named object: camera -> (u, v) pixel at the model's image size, from the
        keypoint trained on it (`teleop train --target-weight`); None for a model trained without it."""
        import torch
        from .model import keypoint_to_pixel
        if not self.train_info.get("target_weight") or not self.model.cfg.keypoints:
            return None
        _q, x = self._inputs(obs)
        with torch.inference_mode():
            p = self.model.forward_all(*x)["target"][0].numpy()
        return dict(zip(self.meta.cameras, keypoint_to_pixel(p, self.model.cfg)))

    def _shifted(self, images):
        """(1, C, 3, H, W) -> (5, C, 3, H, W): the tta copies (SHIFTS scaled by tta)."""
        import torch
        import torch.nn.functional as F
        h, w = images.shape[-2:]
        d = self.tta
        padded = F.pad(images[0], (d, d, d, d), mode="replicate")
        return torch.stack([padded[:, :, d + d * dy:d + d * dy + h, d + d * dx:d + d * dx + w]
                            for dx, dy in self.SHIFTS])

    def _signature(self, img, text) -> tuple:
        """What a trace is specific to: shapes, the grounding branch the instruction takes (TorchScript records
        one side of affinity's `if`), and the weights (a trace holds them as constants)."""
        kind = None
        if self.model.cfg.grounding != "none":
            from .grounding import FEATURES, is_chromatic
            kind = tuple(is_chromatic(text[:, -FEATURES:].float()).tolist())
        weights = (id(self.model), sum(p._version for p in self.model.parameters()))
        return tuple(img.shape), tuple(text.shape), str(text.dtype), kind, weights

    def _trace(self, img, text, state):
        """A frozen, optimised trace of the network for these inputs, or None (with a note) if tracing fails
        or the trace's actions differ from the network's, on these inputs and on other images and state (a
        trace that froze a computation into a constant answers those wrong)."""
        import warnings
        import torch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # TracerWarning: the `if`s the signature pins down
                fn = torch.jit.optimize_for_inference(
                    torch.jit.trace(self.model, (img, text, state), check_trace=False))
            g = torch.Generator().manual_seed(0)
            other = (torch.rand(img.shape, generator=g), text, state + torch.randn(state.shape, generator=g))
            for _ in range(3):                           # a fresh graph's first calls profile, then optimise
                fn(*other)
            for inputs in ((img, text, state), other):
                got, want = fn(*inputs), self.model(*inputs)
                if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                    raise PolicyError(f"its actions differ from the network's by {(got - want).abs().max():.2e}")
            return fn
        except Exception as e:                           # noqa: BLE001 - the network still runs
            self.trace_notes.append(f"runs untraced for inputs {tuple(img.shape)}: {e}")
            return None

    def _network(self, img, text, state):
        """The network's normalised chunks for a batch (inside inference_mode), traced when it can be."""
        if not self.traced:
            return self.model(img, text, state)
        key = self._signature(img, text)
        if key not in self._traces:
            self._traces[key] = self._trace(img, text, state)
        fn = self._traces[key]
        return fn(img, text, state) if fn is not None else self.model(img, text, state)

    def _batch(self, img, text, state):
        """One observation's inputs -> the batch predict runs: the tta copies, or the observation itself."""
        if not self.tta:
            return img, text, state
        k = len(self.SHIFTS)
        return self._shifted(img), text.expand(k, *text.shape[1:]), state.expand(k, -1)

    def warm_up(self, instructions=("pick up the red cube", "pick up the white cube")) -> None:
        """Builds the traces predict will use (a chromatic and a grey instruction), so the first control steps
        do not pay for them. Blank images and the mean state: only the shapes and the branch matter."""
        import torch
        if not self.traced:
            return
        h, w = self.meta.image_size
        img = torch.zeros(1, len(self.meta.cameras), 3, h, w)
        state = torch.zeros(1, len(self._s_mean))
        with torch.inference_mode():
            for ins in instructions:
                self._network(*self._batch(img, self.text_input(ins), state))

    def predict(self, obs: dict) -> np.ndarray:
        import torch
        q, (img, text, state) = self._inputs(obs)
        with torch.inference_mode():
            out = self._network(*self._batch(img, text, state)).mean(0).numpy()
        a = out.astype(np.float64) * self._a_std + self._a_mean
        if self.action_space == "delta_arm":
            a[:, :-1] += q[:-1]
        elif self.chain is not None:
            from .ee import ee_to_joints
            a = ee_to_joints(self.chain, q.astype(np.float64), a)
        return a


def load_checkpoint_policy(path, threads: int | None = 2, tta: int | None = None, traced: bool = True,
                           **_ignored) -> VLAPolicy:
    """tta: VLAPolicy's test-time shift in px. None = on at the training shift (train info "aug_shift"; +-4 px
    before that was recorded) for a checkpoint trained with the strong augmentation, where it was measured;
    off after the basic one (+-2 px: the kinematic demo got 33/60 with it, 36/60 without) or none.
    traced: VLAPolicy's frozen trace of the network, built here (warm_up); False = the network as it is."""
    blob = read_checkpoint(path)
    try:
        meta = PolicyMeta.from_dict(blob["meta"])
        tok = Tokenizer.from_dict(blob["tokenizer"])
        for k in ("state", "action"):
            for s in ("mean", "std"):
                want = len(meta.joint_names) if k == "state" else (
                    EE_DIM if meta.extra.get("action_space") == "ee" else meta.action_dim)
                if len(meta.stats[k][s]) != want:
                    raise ValueError(f"stats {k}.{s} has the wrong length")
        chain = None
        if meta.extra.get("action_space") == "ee":
            from .ee import chain_for
            chain = chain_for(meta.extra, len(meta.joint_names) - 1)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is malformed ({e}); retrain") from None
    model = build_model(blob, path)
    enc = None
    if "text_encoder" in blob:
        from .text_encoder import load_text_encoder
        enc = load_text_encoder(blob["text_encoder"])
    if tta is None:
        info = blob.get("train") or {}
        tta = int(info.get("aug_shift", 4)) if info.get("augment") == "strong" else 0
    pol = VLAPolicy(model, meta, tok, blob.get("train"), threads=threads, text_encoder=enc, chain=chain, tta=tta,
                    traced=traced)
    pol.warm_up()
    return pol
