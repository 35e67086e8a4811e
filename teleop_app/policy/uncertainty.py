"""Does the policy know when it is failing? Its per-step uncertainty and how well it predicts failure.

    chunk_disagreement(runner)  spread of the overlapping action chunks covering the runner's last tick
    UncertaintyTrace(runner)    called once per control tick of a rollout; .summary() -> notes["uncertainty"]
    auroc(failed, succeeded)    P(a failed rollout's uncertainty > a successful one's)
    failure_prediction(rolls)   the validation report's "Does uncertainty predict failure?" numbers + verdict

Chunk disagreement is defined only where two or more chunks cover a tick: "ensemble" mode (sync or
async) from its second tick on, and "smooth" mode (it keeps the last few chunks); "replan" mode holds one
chunk at a time and a chunk size of 1 never overlaps, so there it is NaN on every tick and the report
says "not measured" rather than inventing a number. Numpy only; reads PolicyRunner's chunk buffer
(`_chunks`, `_step`), which the runner does not expose otherwise, and never changes it.
"""
from __future__ import annotations

import math

import numpy as np

LAST_TICKS = 10        # "before the end": the last ticks of a rollout (its failure, or its success)
MIN_PER_SIDE = 5       # fewer failed (or successful) rollouts than this: too few to tell


def chunk_disagreement(runner) -> float:
    """Spread of the overlapping action chunks that cover the runner's last tick: the mean over arm
    joints of the standard deviation across chunks (rad). NaN with fewer than two chunks."""
    chunks = list(getattr(runner, "_chunks", ()) or ())
    t = int(getattr(runner, "_step", 0)) - 1
    acts = [c[t - s] for s, c in chunks if s <= t < s + len(c)]
    if len(acts) < 2:
        return float("nan")
    a = np.stack(acts)[:, :-1]
    return float(a.std(0).mean())


def _num(x: float) -> float | None:
    """JSON-safe: NaN (undefined) becomes None."""
    return float(x) if x is not None and math.isfinite(x) else None


class UncertaintyTrace:
    """The per-tick uncertainty of one rollout: call it after every control tick (any arguments,
    so it fits the pipeline's on_step), then summary() for the rollout's notes."""

    def __init__(self, runner):
        self.runner = runner
        self.values: list[float] = []

    def __call__(self, *_tick) -> None:
        self.values.append(chunk_disagreement(self.runner))

    def summary(self, last: int = LAST_TICKS) -> dict:
        """{"mean", "max", "last": mean of the last `last` defined ticks, "n": defined ticks, "ticks",
        "trace"}; undefined values are None (the chunk mode gave no overlapping chunks)."""
        v = np.asarray(self.values, float)
        ok = v[np.isfinite(v)]
        return {"mean": _num(ok.mean()) if ok.size else None, "max": _num(ok.max()) if ok.size else None,
                "last": _num(ok[-last:].mean()) if ok.size else None, "n": int(ok.size), "ticks": int(v.size),
                "trace": [_num(round(float(x), 6)) for x in v]}


def auroc(pos: list[float], neg: list[float]) -> float:
    """P(a failure's uncertainty > a success's), ties count half; NaN if either side is empty."""
    if not pos or not neg:
        return float("nan")
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def auroc_ci95(a: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """Approximate 95 % interval of an AUROC (Hanley & McNeil 1982), clipped to [0, 1]. The standard
    error is taken at the AUROC pulled half a pair towards 0.5: at exactly 0 or 1 the formula's
    variance is zero, and a perfect split of a handful of rollouts is not certainty."""
    if not (math.isfinite(a) and n_pos and n_neg):
        return float("nan"), float("nan")
    pairs = n_pos * n_neg
    v = (a * pairs + 0.5) / (pairs + 1)
    q1, q2 = v / (2 - v), 2 * v * v / (1 + v)
    var = (v * (1 - v) + (n_pos - 1) * (q1 - v * v) + (n_neg - 1) * (q2 - v * v)) / pairs
    se = math.sqrt(max(var, 0.0))
    return max(0.0, a - 1.96 * se), min(1.0, a + 1.96 * se)


_STATS = (("mean", "per-rollout mean"), ("max", "per-rollout max"), ("last", f"last {LAST_TICKS} ticks"))


def failure_prediction(rollouts, min_per_side: int = MIN_PER_SIDE) -> dict:
    """Uncertainty of failed vs successful rollouts (rollouts without a sim/operator label are left
    out). The verdict uses each rollout's mean uncertainty, as dagger.py's evaluation does.
    -> {"verdict": "predicts" | "inverted" | "no_signal" | "too_few" | "not_measured" | "not_recorded",
        "text": one plain sentence (with its caveats), "n_failed", "n_succeeded", "n_undefined",
        "stats": {mean|max|last: {failed_mean, failed_median, succeeded_mean, succeeded_median, auroc}},
        "auroc", "auroc_ci95", "auroc_within_task" (pairs of the same task only), "tasks_failed",
        "tasks_succeeded", "min_per_side"}"""
    labelled = [r for r in rollouts if r.success is not None]
    rec = [(bool(r.success), r.notes.get("uncertainty"), r.task) for r in labelled
           if isinstance(getattr(r, "notes", None), dict) and isinstance(r.notes.get("uncertainty"), dict)]
    defined = [(ok, u) for ok, u, _ in rec if u.get("mean") is not None]
    tasks = [t for _, u, t in rec if u.get("mean") is not None]
    out: dict = {"n_failed": sum(1 for ok, _ in defined if not ok),
                 "n_succeeded": sum(1 for ok, _ in defined if ok),
                 "n_undefined": len(rec) - len(defined), "n_unrecorded": len(labelled) - len(rec),
                 "min_per_side": int(min_per_side), "stats": {}}
    for key, _ in _STATS:
        f = [float(u[key]) for ok, u in defined if not ok and u.get(key) is not None]
        s = [float(u[key]) for ok, u in defined if ok and u.get(key) is not None]
        out["stats"][key] = {"failed_mean": _num(np.mean(f)) if f else None,
                             "failed_median": _num(np.median(f)) if f else None,
                             "succeeded_mean": _num(np.mean(s)) if s else None,
                             "succeeded_median": _num(np.median(s)) if s else None,
                             "auroc": _num(auroc(f, s))}
    # within a task: a difference between tasks (a harder task both fails and wobbles more) is not
    # the policy knowing it is failing; pairs only failures and successes of the same task
    pairs, within = 0, 0.0
    by_task: dict[str, tuple[list, list]] = {}
    for (ok, u), t in zip(defined, tasks):
        by_task.setdefault(t, ([], []))[1 if ok else 0].append(float(u["mean"]))
    for f, s_ in by_task.values():
        if f and s_:
            pairs += len(f) * len(s_)
            within += len(f) * len(s_) * auroc(f, s_)
    out["auroc_within_task"] = within / pairs if pairs else None
    out["tasks_failed"] = sorted(t for t, (f, _) in by_task.items() if f)
    out["tasks_succeeded"] = sorted(t for t, (_, s_) in by_task.items() if s_)
    nf, ns = out["n_failed"], out["n_succeeded"]
    a = out["stats"]["mean"]["auroc"]
    lo, hi = auroc_ci95(a if a is not None else float("nan"), nf, ns)
    out["auroc"], out["auroc_ci95"] = a, [_num(lo), _num(hi)]
    if not labelled:
        out["verdict"] = "not_recorded"
        out["text"] = "Not known: no rollout has a success label (label hardware runs to compare)."
    elif not rec:
        out["verdict"] = "not_recorded"
        out["text"] = ("Not known: these rollouts carry no uncertainty record (saved before it was recorded, "
                       "or run by a path that does not record it).")
    elif not defined:
        out["verdict"] = "not_measured"
        out["text"] = ("Not measured: no tick had two overlapping action chunks, so chunk disagreement is "
                       "undefined (NaN). 'replan' mode and a chunk size of 1 never overlap; evaluate with "
                       "--chunk-mode ensemble (or smooth) to measure it.")
    elif nf < min_per_side or ns < min_per_side:
        few = "failures" if nf < min_per_side else "successes"
        out["verdict"] = "too_few"
        out["text"] = (f"Too few {few} to tell: {nf} failed and {ns} successful rollout(s) with a measured "
                       f"uncertainty; at least {min_per_side} of each are needed before the AUROC means "
                       "anything. Run more rollouts.")
    elif lo > 0.5:
        out["verdict"] = "predicts"
        out["text"] = (f"Yes: failed rollouts were more uncertain than successful ones (AUROC {a:.2f}, "
                       f"95% CI {lo:.2f}-{hi:.2f}, {nf} failed vs {ns} succeeded), so asking for help above "
                       "an uncertainty threshold would catch some failures. On these scenes and this chunk "
                       "mode only; pick the threshold on rollouts, not on this table.")
    elif hi < 0.5:
        out["verdict"] = "inverted"
        out["text"] = (f"No, the opposite: successful rollouts were more uncertain (AUROC {a:.2f}, 95% CI "
                       f"{lo:.2f}-{hi:.2f}); an uncertainty threshold would ask for help on the wrong rollouts.")
    else:
        out["verdict"] = "no_signal"
        out["text"] = (f"No clear signal: AUROC {a:.2f} (95% CI {lo:.2f}-{hi:.2f}, 0.5 = chance) over {nf} "
                       f"failed vs {ns} succeeded; uncertainty does not separate failures from successes "
                       "here, so do not rely on it to ask for help.")
    if nf and ns and out["verdict"] not in ("not_measured", "not_recorded"):
        if out["auroc_within_task"] is None:
            out["text"] += (f" Caveat: the failures ({', '.join(out['tasks_failed'])}) and the successes "
                            f"({', '.join(out['tasks_succeeded'])}) come from different tasks, so the "
                            "difference may be the task rather than the failure; it needs failures and "
                            "successes of the same task to tell.")
        elif len(by_task) > 1:
            out["text"] += (" Within a task (failures vs successes of the same task only): AUROC "
                            f"{out['auroc_within_task']:.2f}.")
    if out["n_undefined"] and out["verdict"] not in ("not_measured", "not_recorded"):
        out["text"] += f" {out['n_undefined']} rollout(s) had no defined uncertainty and are left out."
    return out


def stats_rows(fp: dict) -> tuple[list[str], list[list[str]]]:
    """The report table: one row per per-rollout statistic."""
    def f(x, spec=".4f"):
        return "-" if x is None else format(x, spec)
    head = ["uncertainty (rad)", "failed mean", "failed median", "succeeded mean", "succeeded median",
            "AUROC"]
    rows = [[label, f(d["failed_mean"]), f(d["failed_median"]), f(d["succeeded_mean"]),
             f(d["succeeded_median"]), f(d["auroc"], ".2f")]
            for key, label in _STATS for d in [fp["stats"][key]]]
    return head, rows
