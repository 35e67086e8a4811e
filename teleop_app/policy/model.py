"""The project's own small Vision-Language-Action model (torch, runs on the CPU).

    camera images --CNN (FiLM-conditioned on the instruction)--> spatial tokens per camera
                  (+ with grounding "colour": one more input channel, where the named colour is; grounding.py)
    instruction   --word embedding------------------------------> word tokens   (text_encoder "words")
                  or frozen sentence embedding (384-d MiniLM) --MLP--> one text token ("minilm")
    joint state   --linear--------------------------------------> one proprio token
    + `chunk` learned action-query tokens
    -> small transformer encoder over all tokens
    -> each query token -> one future action (normalised absolute joint targets)

FiLM lets the instruction steer *what* the vision encoder looks for (red vs blue cube), which
a late-fusion transformer alone learns slowly on small datasets. CoordConv channels and spatial-softmax
keypoints help the CNN report *where* things are; training can supervise keypoint 0 of each camera to sit on
the named object (train's target_weight, forward_all's "target"). With a sentence encoder the model never
sees the encoder itself, only its cached embedding (text_encoder.py), so a step costs the same as with words.
Import this module only where torch is wanted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from .grounding import FEATURES as GROUNDING_FEATURES, affinity


@dataclass
class ModelConfig:
    vocab_size: int
    max_len: int = 12
    state_dim: int = 8
    action_dim: int = 8
    chunk: int = 10
    cameras: list[str] = field(default_factory=lambda: ["front"])
    image_size: tuple[int, int] = (64, 64)
    channels: tuple[int, ...] = (16, 32, 64)
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.0
    grid: int = 2                    # spatial tokens per camera = grid * grid
    keypoints: int = 32              # spatial-softmax keypoints per camera (0 = off)
    text_encoder: str = "words"      # "words" (token ids) or "minilm" (a sentence embedding)
    text_dim: int = 384              # sentence embedding size (text_encoder != "words")
    keypose: bool = False            # an extra token + head predicting the next keypose (train.keypose_targets)
    grounding: str = "none"          # "colour": the text input ends with grounding.FEATURES colour values and
                                     # each camera gets an extra input channel: where that colour is (grounding.py)
    grey_reference: str = "brightest"  # how the channel matches white / grey / black (grounding.affinity)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size", (64, 64)))
        d["channels"] = tuple(d.get("channels", (16, 32, 64)))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def feature_shape(cfg: ModelConfig) -> tuple[int, int]:
    """(h, w) of each camera's last feature map, the one the keypoints are read on: the stem and every
    block halve the image (rounding up)."""
    h, w = cfg.image_size
    for _ in cfg.channels:
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def pixel_to_keypoint(uv, cfg: ModelConfig):
    """Image pixels (..., 2) (u right, v down, 0..width) -> keypoint coordinates: -1..1 from the centre of
    the first feature cell to that of the last (VisionEncoder's spatial softmax grid)."""
    import numpy as np
    (fh, fw), (h, w) = feature_shape(cfg), cfg.image_size
    uv = np.asarray(uv, np.float64)
    return np.stack([2 * (uv[..., 0] * fw / w - 0.5) / max(fw - 1, 1) - 1,
                     2 * (uv[..., 1] * fh / h - 0.5) / max(fh - 1, 1) - 1], -1)


def keypoint_to_pixel(p, cfg: ModelConfig):
    """The inverse of pixel_to_keypoint."""
    import numpy as np
    (fh, fw), (h, w) = feature_shape(cfg), cfg.image_size
    p = np.asarray(p, np.float64)
    return np.stack([((p[..., 0] + 1) / 2 * max(fw - 1, 1) + 0.5) * w / fw,
                     ((p[..., 1] + 1) / 2 * max(fh - 1, 1) + 0.5) * h / fh], -1)


class FiLMConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.norm = nn.GroupNorm(8, cout)

    def forward(self, x, gamma, beta):
        x = self.norm(self.conv(x))
        x = x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return F.relu(x)


class VisionEncoder(nn.Module):
    """Image (B,3,H,W) in [0,1] + FiLM params -> (B, grid*grid, d_model)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.channels
        extra = 1 if cfg.grounding != "none" else 0          # the colour-affinity channel
        self.stem = nn.Sequential(nn.Conv2d(5 + extra, c[0], 5, 2, 2), nn.GroupNorm(8, c[0]), nn.ReLU())
        self.blocks = nn.ModuleList(FiLMConvBlock(a, b, 2) for a, b in zip(c[:-1], c[1:]))
        self.proj = nn.Conv2d(c[-1], cfg.d_model, 1)
        self.grid = cfg.grid
        self.n_kp = cfg.keypoints
        if self.n_kp:
            # spatial softmax: each map's expected (x, y) = where its feature fires, a direct,
            # sub-pixel position signal (robomimic / diffusion-policy style); one token per camera
            self.kp_conv = nn.Conv2d(c[-1], self.n_kp, 1)
            self.kp_mlp = nn.Sequential(nn.Linear(2 * self.n_kp, cfg.d_model), nn.ReLU(),
                                        nn.Linear(cfg.d_model, cfg.d_model))
        self.film_sizes = list(c[1:])
        h, w = cfg.image_size
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)

    def forward(self, img, films, with_points: bool = False, extra=None):
        """-> tokens; with_points: (tokens, (B, K, 2) keypoint positions, -1..1 from the first to the last
        feature cell (feature_shape), x right, y down; None without keypoints). extra: (B, 1, H, W) more input
        channels (the grounding channel)."""
        b = img.shape[0]
        x = torch.cat([img * 2 - 1, self.coords.expand(b, -1, -1, -1)] + ([extra] if extra is not None else []), 1)
        x = self.stem(x)
        for blk, (g, bt) in zip(self.blocks, films):
            x = blk(x, g, bt)
        tokens = F.adaptive_avg_pool2d(self.proj(x), self.grid).flatten(2).transpose(1, 2)
        points = None
        if self.n_kp:
            m = self.kp_conv(x)
            hh, ww = m.shape[-2:]
            att = torch.softmax(m.flatten(2), -1)                       # (B, K, h*w)
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, hh), torch.linspace(-1, 1, ww), indexing="ij")
            pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).to(att)   # (h*w, 2)
            points = att @ pos                                             # (B, K, 2)
            tokens = torch.cat([tokens, self.kp_mlp(points.flatten(1))[:, None]], 1)
        return (tokens, points) if with_points else tokens


class VLAModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.text_encoder == "words":
            self.word_emb = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
            self.word_pos = nn.Parameter(torch.zeros(1, cfg.max_len, d))
        else:
            # frozen pre-trained embedding -> one text token; the same vector drives FiLM
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(), nn.Linear(d, d))
        self.encoders = nn.ModuleList(VisionEncoder(cfg) for _ in cfg.cameras)
        film_total = 2 * sum(self.encoders[0].film_sizes) * len(cfg.cameras)
        self.film = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, film_total))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)
        n_img = cfg.grid * cfg.grid + (1 if cfg.keypoints else 0)
        self.img_pos = nn.Parameter(torch.randn(1, n_img * len(cfg.cameras), d) * 0.02)
        self.state_proj = nn.Linear(cfg.state_dim, d)
        self.queries = nn.Parameter(torch.randn(1, cfg.chunk, d) * 0.02)
        self.type_emb = nn.Parameter(torch.randn(4, d) * 0.02)   # image, word, state, query
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, d * cfg.ff_mult, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.action_dim)
        if cfg.keypose:
            # auxiliary: where the TCP will be at the next grasp/release, from this observation (training only
            # reads the head; the token takes part in the fusion, so inference runs it too)
            self.keypose_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.keypose_head = nn.Linear(d, 3)

    def text_tokens(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (tokens (B, L, d), padding mask (B, L) True = pad, pooled (B, d) for FiLM)."""
        if self.cfg.text_encoder == "words":
            mask = text != 0
            w = self.word_emb(text) + self.word_pos[:, : text.shape[1]]
            pooled = (w * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            return w, ~mask, pooled
        t = self.text_proj(text.float())
        return t[:, None], torch.zeros(t.shape[0], 1, dtype=torch.bool, device=t.device), t

    def forward(self, images: torch.Tensor, text: torch.Tensor, state: torch.Tensor,
                with_keypose: bool = False):
        """images (B, n_cam, 3, H, W) float in [0,1]; text (B, L) long token ids ("words") or
        (B, text_dim) float sentence embeddings (+ grounding.FEATURES colour values with grounding "colour");
        state (B, D) normalised.
        Returns (B, chunk, action_dim) normalised actions; with_keypose (a model built with
        keypose=True): (actions, (B, 3) normalised next-keypose position)."""
        out = self.forward_all(images, text, state, keypose=with_keypose)
        return (out["actions"], out["keypose"]) if with_keypose else out["actions"]

    def forward_all(self, images: torch.Tensor, text: torch.Tensor, state: torch.Tensor,
                    keypose: bool = False, distract: torch.Tensor | None = None) -> dict:
        """forward's inputs -> {"actions": (B, chunk, action_dim), "target": (B, n_cam, 2) where keypoint 0
        of each camera fires (VisionEncoder's coordinates; None for a model without keypoints: train's
        target_weight supervises it to be the named object), "keypose": (B, 3) or None}.
        distract (training only, a grounding model): (B, grounding.FEATURES) a second colour per row whose
        match is added (maximum) to the grounding channel where its found value is 1 (train's channel_distract)."""
        b = text.shape[0]
        colour = None
        if self.cfg.grounding != "none":          # the text input's tail is the named colour (grounding.py)
            text, colour = text[:, :-GROUNDING_FEATURES], text[:, -GROUNDING_FEATURES:].float()
        w, text_pad, pooled = self.text_tokens(text)
        film = self.film(pooled)
        sizes = self.encoders[0].film_sizes
        img_tokens, points, off = [], [], 0
        for ci, enc in enumerate(self.encoders):
            films = []
            for s in sizes:
                films.append((film[:, off:off + s], film[:, off + s:off + 2 * s]))
                off += 2 * s
            extra = None
            if colour is not None:
                ref = self.cfg.grey_reference
                extra = affinity(images[:, ci], colour, ref)
                if distract is not None:
                    rows = (distract[:, -1] > 0).nonzero().reshape(-1)
                    if len(rows):
                        extra[rows] = torch.maximum(extra[rows], affinity(images[rows, ci], distract[rows], ref))
                extra = extra * 2 - 1
            tok, pts = enc(images[:, ci], films, with_points=True, extra=extra)
            img_tokens.append(tok)
            points.append(pts)
        x_img = torch.cat(img_tokens, 1) + self.img_pos + self.type_emb[0]
        x_w = w + self.type_emb[1]
        x_s = self.state_proj(state)[:, None] + self.type_emb[2]
        x_q = self.queries.expand(b, -1, -1) + self.type_emb[3]
        extra = [self.keypose_query.expand(b, -1, -1)] if self.cfg.keypose else []
        x = torch.cat([x_img, x_w, x_s, *extra, x_q], 1)
        n_before = x_img.shape[1]
        pad = torch.zeros(b, x.shape[1], dtype=torch.bool, device=x.device)
        pad[:, n_before:n_before + w.shape[1]] = text_pad
        x = self.transformer(x, src_key_padding_mask=pad)
        q = self.norm(x[:, -self.cfg.chunk:])
        out = {"actions": self.head(q), "keypose": None,
               "target": torch.stack([p[:, 0] for p in points], 1) if self.cfg.keypoints else None}
        if keypose:
            if not self.cfg.keypose:
                raise ValueError("this model has no keypose head (built with keypose=False)")
            out["keypose"] = self.keypose_head(self.norm(x[:, -self.cfg.chunk - 1]))
        return out
