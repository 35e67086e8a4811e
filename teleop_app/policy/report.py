"""Validation report: one self-contained HTML file (plots embedded as base64 PNG) + the same in Markdown.

    write_report(results, offline, "reports/vla_2026-11-25") -> Path to report.html

Contents: success rate with a 95% Wilson interval, per-task breakdown, success per generalization
split (seen / unseen objects / novel instructions / reasoning, per task) next to RT-2's figures when
the rollouts carry a split (generalization.run_scene_rollouts), inference latency p50/p99,
safety interventions (clamps, e-stops, watchdog trips, NaN stops), whether the policy's uncertainty
(chunk disagreement) predicts failure (failed vs successful rollouts, AUROC, a verdict with its caveats),
failures, offline error table and the predicted-vs-recorded plot. Either `results` or `offline` may be None.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

from .evaluate import RolloutResults
from .metrics import fmt_rate
from .offline import OfflineResults
from .uncertainty import LAST_TICKS, stats_rows

_CSS = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.ok{color:#2b8a3e}.bad{color:#c92a2a}
code{background:#f4f4f4;padding:0 .2em}img{max-width:100%}"""

_INTERVENTION_NAMES = {
    "clamped_limits": "commands clamped to joint limits",
    "clamped_step": "commands slowed by the step (speed) limit",
    "blocked_workspace": "commands blocked at the workspace bounds",
    "rejected_nonfinite": "non-finite commands rejected by the safety layer",
    "estops": "e-stops",
    "watchdog_trips": "watchdog holds (safety layer)",
    "runner_watchdog_trips": "inference slower than the limit (runner watchdog)",
    "nan_or_range_stops": "rollouts stopped for NaN / out-of-range output",
    "holds": "ticks holding position (no fresh action)",
}


def _sections(results: RolloutResults | None, offline: OfflineResults | None, info: dict) -> list[dict]:
    """Report content as neutral blocks, rendered to both HTML and Markdown."""
    out: list[dict] = []
    if info:
        out.append({"h": "Setup", "kv": [(k, str(v)) for k, v in info.items()]})
    if results is not None and results.rollouts:
        o = results.overall()
        rows = [[t, d["instruction"], f"{d['success']}/{d['n']}", f"{100 * d['rate']:.0f}%",
                 f"{100 * d['ci95'][0]:.0f}-{100 * d['ci95'][1]:.0f}%", f"{d['mean_steps']:.0f}"]
                for t, d in results.per_task().items()]
        rows.append(["overall", "", f"{o['success']}/{o['n']}", f"{100 * o['rate']:.0f}%",
                     f"{100 * o['ci95'][0]:.0f}-{100 * o['ci95'][1]:.0f}%", ""])
        out.append({"h": "Closed-loop success",
                    "p": f"{fmt_rate(o['success'], o['n'])} over {len(results.tasks())} task(s)"
                         + (f" {results.sim_text()}" if results.sim_text() else "")
                         + f"; chunk mode '{results.chunk_mode}', config {json.dumps(results.config)}",
                    "table": (["task", "instruction", "success", "rate", "95% CI (Wilson)", "mean steps"], rows)})
        from .generalization import split_rows
        head, srows = split_rows(results)
        if srows:
            dom = results.config.get("domain", "default")
            out.append({"h": "Generalization (per split)",
                        "p": "Unseen scenes from the physics workcell's declared splits (drivers/sim/tasks.py), "
                             f"visual domain '{dom}'. RT-2 column: RT-2's real-robot figures as quoted in "
                             "issue 13 (97 / 62 / 81 / 74 %), for scale, not a like-for-like comparison.",
                        "table": (head, srows)})
        from .generalization import TURN_COLUMN, TWIN_COLUMN, outcome_rows
        head, orows = outcome_rows(results)
        if orows:
            from drivers.sim.physics import OUTCOMES
            out.append({"h": "How the rollouts ended",
                        "p": "Read off the physics sim's state after each rollout (drivers/sim/physics.py, "
                             "OutcomeTrace): " + "; ".join(f"{o} = {OUTCOMES[o]}" for o in head[2:]
                                                            if o in OUTCOMES and o != "success") + "."
                             + (f" '{TWIN_COLUMN}': successes over the scenes with an object of the target's "
                                "colour and another shape on the table (telling them apart takes the shape)."
                                if TWIN_COLUMN in head else "")
                             + (f" '{TURN_COLUMN}': successes over the scenes where the expert's grasp turns the "
                                "wrist away from the bowl's wall or another object (the open fingers would meet it)."
                                if TURN_COLUMN in head else ""),
                        "table": (head, orows)})
        wrong = results.wrong_object()
        if wrong:
            out.append({"h": "Does the instruction matter?",
                        "p": "Both cubes are on the table in every scene. Rollouts that lifted the cube the "
                             "instruction did not ask for: " + ", ".join(f"{t}: {n}" for t, n in wrong.items())})
        lat = results.latency_ms()
        out.append({"h": "Inference latency",
                    "table": (["p50 (ms)", "p99 (ms)", "mean (ms)", "inferences"],
                              [[f"{lat['p50']:.1f}", f"{lat['p99']:.1f}", f"{lat['mean']:.1f}", str(lat["n"])]])})
        iv = results.interventions()
        out.append({"h": "Safety interventions",
                    "table": (["intervention", "count"],
                              [[_INTERVENTION_NAMES.get(k, k), str(v)] for k, v in iv.items()])})
        out.append(_uncertainty_section(results))
        fails = results.failures()
        if fails:
            out.append({"h": f"Failures ({len(fails)})", "list": fails[:50]})
    if offline is not None:
        rows = [[n, f"{m:.4f}", f"{r:.4f}"] for n, m, r in offline.table_rows()]
        which = "held-out" if offline.split == "val" else offline.split
        out.append({"h": f"Offline action error ({which} episodes)",
                    "p": f"{len(offline.episodes)} {offline.split} episode(s), {offline.n_steps} steps; arm mean "
                         f"MAE {offline.arm_mae:.4f} rad; gripper open/closed agreement "
                         f"{100 * offline.gripper_accuracy:.1f}%",
                    "table": (["joint", "MAE", "RMSE"], rows),
                    "img": offline.plot})
    return out


def _uncertainty_section(results: RolloutResults) -> dict:
    fp = results.uncertainty()
    mode = results.chunk_mode
    if results.config.get("runner_mode") and results.config["runner_mode"] != mode:
        mode = f"{mode} = {results.config['runner_mode']}"
    sec = {"h": "Does uncertainty predict failure?",
           "p": f"{fp['text']} Uncertainty = chunk disagreement: the spread (rad, mean over arm joints of the "
                f"std across chunks) of the overlapping action chunks covering a tick, chunk mode "
                f"'{mode}'. AUROC = P(a failed rollout's uncertainty > a successful one's): "
                f"0.5 is chance, 1 a perfect warning; the verdict uses the per-rollout mean. 'last "
                f"{LAST_TICKS} ticks' is the uncertainty just before a rollout ended (its failure or its "
                "success). Rollouts: "
                f"{fp['n_failed']} failed, {fp['n_succeeded']} succeeded with a measured uncertainty"
                + (f", {fp['n_undefined']} undefined (NaN)" if fp["n_undefined"] else "")
                + (f", {fp['n_unrecorded']} without a record" if fp["n_unrecorded"] else "") + "."}
    if fp["n_failed"] or fp["n_succeeded"]:
        sec["table"] = stats_rows(fp)
    return sec


def _md(title: str, secs: list[dict], img_names: dict) -> str:
    lines = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    for s in secs:
        lines += [f"## {s['h']}", ""]
        if "kv" in s:
            lines += [f"- **{k}**: {v}" for k, v in s["kv"]] + [""]
        if "p" in s:
            lines += [s["p"], ""]
        if "table" in s:
            head, rows = s["table"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
        if "list" in s:
            lines += [f"- {x}" for x in s["list"]] + [""]
        if s.get("img") and s["img"] in img_names:
            lines += [f"![predicted vs recorded]({img_names[s['img']]})", ""]
    return "\n".join(lines)


def _html(title: str, secs: list[dict]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
             f"<p>Generated {e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>"]
    for s in secs:
        parts.append(f"<h2>{e(s['h'])}</h2>")
        if "kv" in s:
            parts.append("<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in s["kv"]) + "</ul>")
        if "p" in s:
            parts.append(f"<p>{e(s['p'])}</p>")
        if "table" in s:
            head, rows = s["table"]
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
        if "list" in s:
            parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in s["list"]) + "</ul>")
        if s.get("img") and Path(s["img"]).exists():
            b64 = base64.b64encode(Path(s["img"]).read_bytes()).decode("ascii")
            parts.append(f"<img alt='predicted vs recorded' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: RolloutResults | None, offline: OfflineResults | None, out_dir,
                 title: str = "Policy validation report", info: dict | None = None) -> Path:
    """Write out_dir/report.html (self-contained), report.md, results.json; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    secs = _sections(results, offline, dict(info or {}))
    img_names = {}
    if offline is not None and offline.plot and Path(offline.plot).exists():
        dst = out / "offline_actions.png"
        if Path(offline.plot).resolve() != dst.resolve():
            dst.write_bytes(Path(offline.plot).read_bytes())
        img_names[offline.plot] = dst.name
    (out / "report.md").write_text(_md(title, secs, img_names))
    page = out / "report.html"
    page.write_text(_html(title, secs))
    blob = {"info": info or {}, "results": results.to_dict() if results else None,
            "offline": offline.to_dict() if offline else None}
    (out / "results.json").write_text(json.dumps(blob, indent=1, default=str))
    return page
