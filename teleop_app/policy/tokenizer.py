"""A word tokenizer the project ships: nothing is downloaded.

Vocabulary = a fixed base list of common manipulation words + every word seen in the training
instructions, sorted, so the same instructions always give the same ids. Unknown words map to
<unk>; the ids are saved inside the checkpoint, so a model is never paired with another vocabulary.
"""
from __future__ import annotations

import re
from typing import Iterable

PAD, UNK = "<pad>", "<unk>"
BASE_VOCAB = sorted(set("""
a an the up down pick place put push pull open close grab lift move take drop stack on in into onto
to from of at left right top bottom front back near far and then it cube block ball bowl cup plate
box drawer red blue green yellow black white orange purple pink small big large
""".split()))
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words; punctuation is dropped."""
    return _WORD.findall(str(text).lower())


class Tokenizer:
    def __init__(self, vocab: list[str], max_len: int = 12):
        if not vocab or vocab[0] != PAD or vocab[1] != UNK:
            raise ValueError("tokenizer vocabulary must start with <pad>, <unk>")
        if len(set(vocab)) != len(vocab):
            raise ValueError("tokenizer vocabulary has duplicate entries")
        self.vocab = list(vocab)
        self.max_len = int(max_len)
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, instructions: Iterable[str], max_len: int = 12) -> "Tokenizer":
        seen = set(BASE_VOCAB)
        for text in instructions:
            seen.update(words(text))
        return cls([PAD, UNK, *sorted(seen)], max_len=max_len)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def encode(self, text: str) -> list[int]:
        """Exactly max_len ids: words (truncated), then <pad>."""
        ids = [self._ids.get(w, self.unk_id) for w in words(text)][: self.max_len]
        return ids + [self.pad_id] * (self.max_len - len(ids))

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in words(text) if w not in self._ids]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i != self.pad_id)

    def to_dict(self) -> dict:
        return {"vocab": list(self.vocab), "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        return cls(list(d["vocab"]), int(d.get("max_len", 16)))
