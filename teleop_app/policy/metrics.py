"""Small statistics helpers shared by evaluation and reports (numpy only)."""
from __future__ import annotations

import math

import numpy as np


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (sensible for small n and 0% / 100%)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def percentiles_ms(seconds, qs=(50, 99)) -> dict[str, float]:
    """{'p50': ms, 'p99': ms, 'mean': ms, 'n': count} of a list of durations in seconds."""
    a = np.asarray(list(seconds), float)
    if a.size == 0:
        return {f"p{q}": float("nan") for q in qs} | {"mean": float("nan"), "n": 0}
    out = {f"p{q}": float(np.percentile(a, q) * 1000) for q in qs}
    out["mean"] = float(a.mean() * 1000)
    out["n"] = int(a.size)
    return out


def fmt_rate(successes: int, n: int) -> str:
    lo, hi = wilson(successes, n)
    pct = 100.0 * successes / n if n else float("nan")
    return f"{successes}/{n} = {pct:.0f}% (95% CI {100 * lo:.0f}-{100 * hi:.0f}%)"
