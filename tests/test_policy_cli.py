"""`teleop train | serve | eval | report` as registered by teleop_app.policy.cli.add_commands."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from teleop_app.policy.cli import add_commands
from teleop_app.policy.evaluate import RolloutResults
from teleop_app.policy.runner import RolloutResult


def parser():
    ap = argparse.ArgumentParser(prog="teleop")
    add_commands(ap.add_subparsers(dest="cmd"))
    return ap


def test_commands_registered_with_help():
    ap = parser()
    for cmd in ("train", "serve", "eval", "report"):
        a = ap.parse_args([cmd, "x"] + (["y"] if cmd == "train" else []))
        assert callable(a.fn)
    a = ap.parse_args(["eval", "runs/vla.pt", "--offline", "data", "--chunk-mode", "replan"])
    assert a.offline == "data" and a.chunk_mode == "replan" and a.episodes == 20
    out = subprocess.run([sys.executable, "-c", "import sys, teleop_app.policy, teleop_app.policy.cli;"
                          "print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"       # importing the policy package does not pull in torch


def test_report_command_and_errors(tmp_path, capsys):
    res = RolloutResults([RolloutResult("pick_red", "pick up the red cube", 1, True, 30, "success",
                                        latencies=[0.005])], policy="p", chunk_mode="ensemble")
    res.save(tmp_path / "rollouts.json")
    ap = parser()
    a = ap.parse_args(["report", str(tmp_path / "rep"), "--results", str(tmp_path / "rollouts.json")])
    assert a.fn(a) == 0
    assert "| pick_red | pick up the red cube | 1/1 | 100% |" in (tmp_path / "rep" / "report.md").read_text()
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["results"]["policy"] == "p"
    a = ap.parse_args(["report", str(tmp_path / "rep2")])
    assert a.fn(a) == 1 and "give --results" in capsys.readouterr().err
    a = ap.parse_args(["eval", str(tmp_path / "missing.pt")])
    assert a.fn(a) == 1 and "checkpoint not found" in capsys.readouterr().err
