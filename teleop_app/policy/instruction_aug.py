"""Instruction augmentation: train on several wordings of each demo's instruction.

Labs relabel demos with more wordings so a policy ties *meanings* to behaviour rather than one
sentence (DIAL: instruction augmentation with foundation models; RT-1/RT-2 crowd paraphrases).
Here the wordings come from a fixed table of colour synonyms ("red" -> "crimson", "scarlet"):
each training step draws one wording of its demo's instruction, so the text encoder's embedding
of a colour is learnt from several words, not one. No new demos, no model download.

The table never contains a colour the sim holds out (purple, orange, white and their near
synonyms) nor any word of the reasoning riddles (tomato, sky, lemon, ...): a test checks that no
wording reaches an evaluation split.
"""
from __future__ import annotations

import re

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "blue": ("navy", "cobalt"),
    "yellow": ("golden", "mustard"),
    "green": ("emerald", "jade"),
    "pink": ("rose", "blush"),
    "cyan": ("turquoise", "teal"),
    "brown": ("chestnut", "umber"),
    "black": ("ebony", "jet black"),
}
_WORD = re.compile(r"\b(" + "|".join(map(re.escape, COLOUR_SYNONYMS)) + r")\b")


def instruction_variants(text: str) -> list[str]:
    """The instruction first, then one wording per synonym of each colour word it names (the other
    words unchanged). An instruction without a known colour word has itself as its only variant."""
    out = [text]
    for m in _WORD.finditer(text):
        for syn in COLOUR_SYNONYMS[m.group(1)]:
            v = text[:m.start()] + syn + text[m.end():]
            if v not in out:
                out.append(v)
    return out
