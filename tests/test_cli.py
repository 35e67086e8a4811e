"""The `teleop` console script, run as real subprocesses."""
import os
import signal
import subprocess
import sys
import time


from recorder.reader import read_episode
from recorder.store import EpisodeStore

TELEOP = [sys.executable, "-m", "teleop_app.cli"]
ENV = {**os.environ, "SDL_VIDEODRIVER": "dummy", "QT_QPA_PLATFORM": "offscreen"}


def run(*args, check=True, timeout=300):
    r = subprocess.run([*TELEOP, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"teleop {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def test_help_is_for_newcomers():
    out = run("--help").stdout
    for cmd in ("gui", "record", "replay", "datasets", "devices", "train", "eval"):
        assert cmd in out
    assert "examples:" in out
    assert "--robot" in run("record", "--help").stdout


def test_bad_inputs_give_clear_errors(tmp_path):
    r = run("record", "--profile", "nope", "--dataset", tmp_path / "d", check=False)
    assert r.returncode == 1 and "unknown profile 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = run("datasets", "list", tmp_path / "missing", check=False)
    assert r.returncode == 1 and "no dataset at" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[[joints]]\nname='a'\n")
    r = run("profiles", "--check", bad, check=False)
    assert r.returncode == 1 and "missing field 'lower'" in r.stderr
    r = run("record", "--robot", "real", "--profile", "koch", "--port", "/dev/does-not-exist",
            "--dataset", tmp_path / "d", check=False)
    assert r.returncode == 1 and "/dev/does-not-exist" in r.stderr and "Traceback" not in r.stderr


def test_record_list_validate_export_replay(tmp_path):
    ds = tmp_path / "ds"
    run("record", "--mode", "scripted", "--fast", "--episodes", "2", "--tasks", "pick_red,pick_blue",
        "--image-size", "96", "--dataset", ds)
    out = run("datasets", "list", ds).stdout
    assert "4 episode(s)" in out and "pick up the blue cube" in out
    v = run("datasets", "validate", ds, check=False)
    assert v.stdout.count("OK ") + v.stdout.count("BAD") == 4
    run("datasets", "export", ds, tmp_path / "lr", "--format", "lerobot")
    assert (tmp_path / "lr" / "meta" / "info.json").exists()
    run("datasets", "export", ds, tmp_path / "rlds", "--format", "rlds")
    assert list((tmp_path / "rlds").rglob("*.npy"))
    ep = sorted((ds / "episodes").glob("*.h5"))[0]
    r = run("replay", ep, "--dataset", tmp_path / "ds2", "--fps", "10")
    assert "replay finished" in r.stdout


def test_sigkill_mid_episode_loses_at_most_one_second(tmp_path):
    """A real-time scripted recording killed with SIGKILL is recovered on the next start."""
    ds = tmp_path / "ds"
    p = subprocess.Popen([*TELEOP, "record", "--mode", "scripted", "--episodes", "50", "--fps", "20",
                          "--dataset", str(ds)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=ENV)
    # Wait until at least one episode is kept and the next one is well under way.
    t0 = time.monotonic()
    seen = ""
    while time.monotonic() - t0 < 120:
        line = p.stdout.readline()
        seen += line
        if "kept 1/" in line and "recording" in line:
            break
    time.sleep(2.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert "kept 1/" in seen, seen
    store = EpisodeStore.open(ds)                 # recovery runs here
    eps = store.episodes()
    assert len(eps) >= 2, eps
    first = read_episode(ds / eps[0].file)
    assert first.success == 1 and first.num_steps > 20
    rec = [e for e in eps if e.recovered]
    assert rec, "the interrupted episode was not recovered"
    ep = read_episode(ds / rec[-1].file)
    # ~2.5 s at 20 Hz were recorded before the kill; at most 1 s may be lost.
    assert ep.num_steps >= 20, ep.num_steps
    assert ep.images("front").shape[0] == ep.num_steps


def test_devices_lists_each_kind_without_hardware():
    out = run("devices").stdout
    assert "serial ports:" in out and "cameras:" in out and "gamepads:" in out


def test_physics_sim_from_the_cli(tmp_path):
    """The MuJoCo workcell is the default behind the real-time session; --kinematic is the fast mode,
    which lacks the physics tasks; --physics is still accepted (the default)."""
    from teleop_app.cli import build_parser
    for cmd in ("gui", "record", "replay x.h5", "simbus"):
        argv = cmd.split()
        assert build_parser().parse_args(argv).physics is None                       # the default
        assert build_parser().parse_args([*argv, "--physics"]).physics is True       # the old flag
        assert build_parser().parse_args([*argv, "--kinematic"]).physics is False
    ds = tmp_path / "ds"
    r = run("record", "--mode", "scripted", "--kinematic", "--task", "push_red", "--episodes", "1",
            "--dataset", ds, check=False)
    assert r.returncode != 0 and "kinematic" in r.stderr and "push_red" in r.stderr, r.stderr
    run("record", "--mode", "scripted", "--task", "red_on_plate", "--episodes", "1",
        "--fps", "20", "--dataset", ds)
    store = EpisodeStore.open(ds)
    (info,) = store.episodes()
    ep = read_episode(store.path(info.id))
    assert ep.meta.instruction == "put the red cube on the plate" and info.success == 1
    assert ep.meta.extra["sim"] == "physics"
    assert len(ep.action) > 20 and ep.meta.fps == 20
