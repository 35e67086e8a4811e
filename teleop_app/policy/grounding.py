"""Colour grounding for the project's VLA: a colour lexicon says which colour an instruction names, and an
extra image channel says where that colour is.

    find_colour("pick up the cube the colour of the sky")   # -> ("sky", (0.51, 0.79, 0.99))
    colour_features(["lift the purple prism"])              # (1, 4): r, g, b in 0..1, found (1 / 0)
    affinity(images, features)                              # (B, 1, H, W) in 0..1: how much each pixel has it

Why: a policy trained on four colours has never been told what "purple" or "the colour of the sky" looks
like; RT-2 knows it from web-scale vision-language pre-training, which this project cannot download. The
lexicon stands in for that knowledge: the XKCD colour survey (949 colour names that ~220,000 people gave
to RGB samples, Munroe 2010), as matplotlib ships it (`matplotlib.colors.XKCD_COLORS`). It is web data
about colour words and nothing else: it has never seen the workcell, its objects or its splits. Names
of the form "<thing> <colour>" ("fire engine red", "deep sea blue") also index the thing, so "a fire
engine" names that red; a word that prefixes several names ("off white", "off blue") is not a thing.

The channel is the same function of the pixels for every colour (hue closeness for chromatic colours,
brightness for white/grey/black), so what the network learns about the channel on the training colours
holds for a colour it never saw. An instruction with no colour word gets an all-zero channel and
found = 0. Chosen colour = the first colour term in the sentence (the target comes before the support:
"stack the red cube on the blue cube").
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

KINDS = ("none", "colour")
FEATURES = 4                    # r, g, b, found
_WORD = re.compile(r"[a-z]+")
MAX_WORDS = 4                   # the longest lexicon name tried ("very dark purple", "fire engine red")
HUE_SIGMA = 15.0                # degrees: red (0) and orange (22-26) stay apart
RELATIVE_FLOOR = 0.25          # matches weaker than this are not scaled up to 1
CHROMATIC = 0.25                # a colour with saturation below this is white / grey / black
NEUTRAL = 0.225                 # pixels below this saturation are neutral: the brightest one is "white"
GREY_TOLERANCE = 0.12           # a neutral pixel within this brightness of the named grey matches fully


@lru_cache(maxsize=1)
def lexicon() -> dict[str, tuple[float, float, float]]:
    """Colour name -> (r, g, b) in 0..1: the XKCD names, plus each "<thing> <colour>" name's thing."""
    try:
        from matplotlib.colors import XKCD_COLORS, to_rgb
    except ImportError:
        raise ImportError("colour grounding needs matplotlib (pip install -e '.[policy]')") from None
    names = {k.split(":", 1)[1].replace("'", ""): tuple(float(v) for v in to_rgb(c))
             for k, c in XKCD_COLORS.items()}
    things: dict[str, list] = {}
    for name, rgb in names.items():
        words = name.split()
        if len(words) > 1 and words[-1] in names:
            things.setdefault(" ".join(words[:-1]), []).append(rgb)
    # a thing of one colour only: "off" (off white, off blue, ...) or "dark" are modifiers, not things
    one = {t: v[0] for t, v in things.items() if len(v) == 1}
    return {**one, **names}             # a full name wins over a thing of the same spelling


def find_colour(text: str) -> tuple[str, tuple[float, float, float]] | None:
    """The first colour term of `text` (longest match at each word): (term, rgb 0..1), or None."""
    lex = lexicon()
    words = _WORD.findall(str(text).lower())
    for i in range(len(words)):
        for n in range(min(MAX_WORDS, len(words) - i), 0, -1):
            term = " ".join(words[i:i + n])
            if term in lex:
                return term, lex[term]
    return None


def colour_features(texts) -> np.ndarray:
    """(N, FEATURES) float32 rows: the named colour's rgb and 1, or zeros for a sentence without one."""
    out = np.zeros((len(texts), FEATURES), np.float32)
    for i, t in enumerate(texts):
        hit = find_colour(t)
        if hit is not None:
            out[i, :3], out[i, 3] = hit[1], 1.0
    return out


def _hsv(x):
    """(..., 3, H, W) rgb 0..1 -> hue (degrees), saturation, value, each (..., H, W)."""
    r, g, b = x.unbind(-3)
    v, c = _value_chroma(r, g, b)
    return _hue(r, g, b, v, c), _saturation(v, c), v


def _value_chroma(r, g, b):
    """max and max - min over r, g, b: elementwise maxima, not a reduction over the channel axis (the same
    numbers, ~5x faster on a batch of images)."""
    import torch
    v = torch.maximum(torch.maximum(r, g), b)
    return v, v - torch.minimum(torch.minimum(r, g), b)


def _saturation(v, c):
    import torch
    return torch.where(v > 1e-6, c / v.clamp(min=1e-6), torch.zeros_like(v))


def _hue(r, g, b, v, c):
    import torch
    cc = c.clamp(min=1e-6)
    return torch.where(v == r, ((g - b) / cc) % 6, torch.where(v == g, (b - r) / cc + 2, (r - g) / cc + 4)) * 60.0


GREY_REFERENCES = ("brightest", "neutral")


def is_chromatic(features):
    """(B, FEATURES) -> (B,) bool: the named colour is matched by hue (else by brightness: white, grey, black)."""
    return (_hsv(features[:, :3, None, None])[1] >= CHROMATIC).reshape(-1)


def affinity(images, features, grey_reference: str = "brightest"):
    """images (B, 3, H, W) rgb in 0..1, features (B, FEATURES) -> (B, 1, H, W) in 0..1.

    Chromatic colour: saturated pixels (s >= 0.45-0.6: the wood and blue-grey tables are below) whose hue
    is within ~HUE_SIGMA degrees. White / grey / black: unsaturated pixels whose brightness matches,
    relative to a reference (light and exposure vary):
      "brightest": the image's brightest pixel, within a 0.1 spread (every model before Dec 7). A white
                   object's faces, 0.8-0.9 of the white arm's highlight, get 0.3-0.5, the arm 1.
      "neutral":   the image's brightest neutral pixel (the "white patch" of colour constancy: a saturated
                   surface can be brighter than anything white), and any neutral pixel within GREY_TOLERANCE
                   of the colour's brightness matches fully: a white object and a white arm both get 1.
                   A model must have learnt to look past the arm (train's channel_distract, which sets it).
    Then scaled so the image's best match is 1 (when it is at least RELATIVE_FLOOR). found = 0 -> zeros.
    Each image computes only its own kind of match (hue for a chromatic colour, brightness otherwise): the
    channel runs in every training step and every inference call."""
    import torch
    if grey_reference not in GREY_REFERENCES:
        raise ValueError(f"grey_reference must be one of {GREY_REFERENCES}, got {grey_reference!r}")
    r, g, b = images.unbind(-3)
    v, c = _value_chroma(r, g, b)
    s = _saturation(v, c)
    hc, sc, vc = _hsv(features[:, :3, None, None])          # (B, 1, 1)
    chromatic = is_chromatic(features)
    a = torch.empty_like(v)
    if bool(chromatic.all()):           # one kind only (as in most batches): no copies of the images
        ci, gi = slice(None), None
    elif not bool(chromatic.any()):
        ci, gi = None, slice(None)
    else:
        ci, gi = chromatic.nonzero().reshape(-1), (~chromatic).nonzero().reshape(-1)
    if ci is not None:
        dh = (_hue(r[ci], g[ci], b[ci], v[ci], c[ci]) - hc[ci]).abs()
        dh = torch.minimum(dh, 360.0 - dh)
        a[ci] = torch.exp(-0.5 * (dh / HUE_SIGMA) ** 2) * ((s[ci] - 0.45) / 0.15).clamp(0, 1)
    if gi is not None:
        vg, sg = v[gi], s[gi]
        if grey_reference == "neutral":
            white = (vg * (sg < NEUTRAL)).flatten(-2).amax(-1)[..., None, None]     # the brightest neutral pixel
            d = ((vg / white.clamp(min=1e-3) - vc[gi]).abs() - GREY_TOLERANCE).clamp(min=0)
        else:
            d = vg / vg.flatten(-2).amax(-1)[..., None, None].clamp(min=1e-3) - vc[gi]
        a[gi] = torch.exp(-0.5 * (d / 0.1) ** 2) * (1 - ((sg - 0.15) / 0.15).clamp(0, 1))
    a = a * features[:, 3, None, None]
    # relative to the image's best match: a lexicon colour is not the rendered one ("sky" is a lighter blue
    # than a blue cube, 22 degrees of hue away), so its closest pixels count fully; the floor keeps a colour
    # that is not in view (a faint match only) faint
    a = a / a.flatten(-2).amax(-1)[..., None, None].clamp(min=RELATIVE_FLOOR)
    return a[:, None]
