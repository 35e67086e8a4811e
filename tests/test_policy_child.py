"""Checkpoint policies run in a child inference process (teleop_app.policy.child), never in the session's.

Real parts: the sim session and its loop, the shipped demo checkpoint loaded by a real child process
(torch there), the openpi websocket client/server between them, real signals (SIGKILL, SIGSTOP) sent to
the child and to its parent, /proc read for the processes' state."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from teleop_app.policy.base import PolicyMeta
from teleop_app.policy.child import child_policy
from teleop_app.policy.runner import PolicyRunner
from teleop_app.session import Mode, PolicyState, Session, SessionConfig
import waiting  # noqa: E402 (tests/waiting.py)

pytestmark = pytest.mark.timeout(240)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(cond, timeout=10.0, dt=0.02):
    return waiting.wait_for(cond, timeout, dt)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def policy_children(ppid: int) -> list[int]:
    """Live `teleop_app.policy.child` processes whose parent is ppid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if int(st[1]) == ppid and st[0] != "Z" and b"teleop_app.policy.child" in cmd:
            out.append(int(d))
    return out


def make(tmp_path, fps=10, **kw):
    return Session(SessionConfig(dataset=str(tmp_path / "ds"), fps=fps, use_gamepad=False, **kw))


def load_demo(s, timeout=150):
    s.load_policy({"source": "demo", "chunk_mode": "smooth"})
    assert wait_for(lambda: s.status.policy_state in (PolicyState.READY, PolicyState.ERROR), timeout), \
        "the demo policy did not load"
    assert s.status.policy_state == PolicyState.READY, list(s.messages)[-3:]
    child = child_policy(s.policy_runner.policy)
    assert child is not None and alive(child.pid)
    return child


SESSION_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from teleop_app.session import Mode, PolicyState, Session, SessionConfig
    from teleop_app.policy.child import child_policy
    s = Session(SessionConfig(dataset=sys.argv[1], fps=10, use_gamepad=False)).open()
    s.load_policy({"source": "demo", "chunk_mode": "smooth"})
    t_end = time.monotonic() + 150
    while s.status.policy_state not in (PolicyState.READY, PolicyState.ERROR) and time.monotonic() < t_end:
        time.sleep(0.05)
    out = {"state": s.status.policy_state.value, "messages": list(s.messages)[-3:]}
    if s.status.policy_state == PolicyState.READY:
        pid = child_policy(s.policy_runner.policy).pid
        q0 = s.status.qpos.copy()
        s.set_mode(Mode.POLICY)
        time.sleep(3.0)
        out.update(moved=float(np.abs(s.status.qpos - q0).max()), mode=s.status.mode.value,
                   steps=s.policy_runner.stats.steps, inferences=s.policy_runner.stats.inferences, child=pid)
        s.clear_policy()
        time.sleep(0.5)
    out["torch_imported"] = "torch" in sys.modules
    out["libtorch_mapped"] = "libtorch" in open("/proc/self/maps").read()
    s.close()
    print("RESULT " + json.dumps(out), flush=True)
""")


def test_demo_policy_runs_in_a_child_process_and_torch_never_enters_the_session(tmp_path):
    r = subprocess.run([sys.executable, "-c", SESSION_SCRIPT, str(tmp_path / "ds")], cwd=ROOT,
                       capture_output=True, text=True, timeout=220,
                       env={**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, (r.stdout[-2000:], r.stderr[-3000:])
    out = json.loads(lines[-1][7:])
    assert out["state"] == "ready", out
    assert out["mode"] == "policy" and out["inferences"] >= 2, out
    assert out["moved"] > 1e-3, out                    # the arm followed the demo policy
    assert out["torch_imported"] is False and out["libtorch_mapped"] is False, out
    assert not alive(out["child"]), "clear_policy() left the inference process running"


def test_sigkilled_child_mid_run_stops_the_policy_and_holds_without_estop(tmp_path):
    with make(tmp_path) as s:
        child = load_demo(s)
        s.set_mode(Mode.POLICY)
        assert wait_for(lambda: s.policy_runner.stats.inferences >= 2, 30)
        seq0 = s.status.seq
        os.kill(child.pid, signal.SIGKILL)
        assert wait_for(lambda: s.status.mode == Mode.HOLD, 10), list(s.messages)[-5:]
        st = s.status
        assert st.policy_state == PolicyState.ERROR and not st.estopped
        assert any("policy stopped, arm held" in m and "SIGKILL" in m for m in s.messages), list(s.messages)[-5:]
        q = st.qpos.copy()
        time.sleep(0.5)
        assert s.status.seq > seq0 + 3                 # the loop kept ticking
        assert np.abs(s.status.qpos - q).max() < 0.05      # held where it was
        s.clear_policy()
        assert wait_for(lambda: s.status.policy_state == PolicyState.NONE, 5)


def test_hung_child_stops_the_policy_after_the_stall_time_and_is_ended(tmp_path):
    with make(tmp_path, policy_stall_s=1.5) as s:
        child = load_demo(s)
        s.set_mode(Mode.POLICY)
        assert wait_for(lambda: s.policy_runner.stats.inferences >= 2, 30)
        os.kill(child.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert wait_for(lambda: s.status.mode == Mode.HOLD, 15), list(s.messages)[-5:]
            assert time.monotonic() - t0 < 12
            assert s.status.policy_state == PolicyState.ERROR and not s.status.estopped
            assert any("gave no action" in m for m in s.messages), list(s.messages)[-5:]
            s.clear_policy()
            assert wait_for(lambda: not alive(child.pid), 10), "a stopped child was not ended"
        finally:
            if alive(child.pid):
                os.kill(child.pid, signal.SIGKILL)


def test_policy_that_does_not_fit_the_robot_is_refused_and_its_child_ended(tmp_path):
    with make(tmp_path, fps=20) as s:                  # the demo policy was trained at 10 Hz
        s.load_policy({"source": "demo"})
        assert wait_for(lambda: s.status.policy_state in (PolicyState.READY, PolicyState.ERROR), 150)
        assert s.status.policy_state == PolicyState.ERROR
        assert any("control rate differs" in m for m in s.messages), list(s.messages)[-3:]
        assert wait_for(lambda: not policy_children(os.getpid()), 10)
        s.load_policy({"source": str(tmp_path / "missing.pt")})
        assert wait_for(lambda: any("no checkpoint file" in m for m in s.messages), 5)


def test_child_dies_with_its_parent(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from teleop_app.policy.child import ChildPolicy
        p = ChildPolicy("demo")
        print("CHILD", p.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.startswith("CHILD"), line
        pid = int(line.split()[1])
        assert alive(pid)
        parent.kill()
        parent.wait(10)
        assert wait_for(lambda: not alive(pid), 10), "the inference process outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


class Mover:
    """In-process policy (chunk 10) that moves joint 0 by 0.005 rad per action."""

    def __init__(self, profile, fps):
        self.meta = PolicyMeta(joint_names=list(profile.joint_names), action_dim=profile.dof, fps=fps,
                               cameras=["front"], chunk_size=10)

    def reset(self):
        pass

    def predict(self, obs):
        q = np.asarray(obs["qpos"], float)
        return np.stack([q + np.eye(len(q))[0] * 0.005 * (k + 1) for k in range(10)])


class CountingRunner(PolicyRunner):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.actions = 0

    def act(self, obs, now=None):
        a = super().act(obs, now)
        self.actions += a is not None
        return a


def test_step_policy_runs_n_actions_then_holds(tmp_path):
    with make(tmp_path) as s:
        with pytest.raises(Exception, match="no policy loaded"):
            s.step_policy(1)
        r = CountingRunner(Mover(s.profile, s.fps), "replan", lower=s.profile.lower(), upper=s.profile.upper())
        s.set_policy(r, "mover")
        s.step_policy(1)
        assert wait_for(lambda: s.status.mode == Mode.HOLD and r.actions >= 1, 10)
        time.sleep(0.5)
        assert r.actions == 1 and s.status.policy_state == PolicyState.READY
        s.step_policy(3)
        assert wait_for(lambda: r.actions >= 4 and s.status.mode == Mode.HOLD, 10)
        time.sleep(0.5)
        assert r.actions == 4 and s.status.mode == Mode.HOLD
        s.set_mode(Mode.POLICY)                        # running: step n more from where it is, then hold
        assert wait_for(lambda: r.actions >= 6, 10)
        n0 = r.actions
        s.step_policy(2)
        assert wait_for(lambda: s.status.mode == Mode.HOLD, 5)
        assert r.actions - n0 <= 3
        with pytest.raises(ValueError):
            s.step_policy(0)


def test_through_the_control_process_policy_loads_in_a_child_steps_and_ends_with_it(tmp_path, monkeypatch):
    """The GUI's path: RemoteSession -> control process -> load_policy / step_policy; torch is not mapped
    into the control process; SIGTERM to the control process ends its inference process too."""
    import shutil
    import tempfile
    from teleop_app.control.client import connect
    d = tempfile.mkdtemp(prefix="tp", dir="/tmp")          # socket paths are limited to ~108 bytes
    os.chmod(d, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", d)
    rs = connect(SessionConfig(robot="sim", dataset=str(tmp_path / "ds"), fps=10, use_gamepad=False), grace_s=5)
    pid = rs.control_pid
    try:
        rs.load_policy({"source": "demo", "chunk_mode": "smooth"})
        assert wait_for(lambda: rs.status.policy_state in (PolicyState.READY, PolicyState.ERROR), 150)
        assert rs.status.policy_state == PolicyState.READY, list(rs.messages)[-3:]
        kids = policy_children(pid)
        assert len(kids) == 1
        with open(f"/proc/{pid}/maps") as f:
            assert "libtorch" not in f.read()
        with open(f"/proc/{kids[0]}/maps") as f:
            assert "libtorch" in f.read()                  # the model lives in the child
        q0 = rs.status.qpos.copy()
        rs.step_policy(5)
        assert wait_for(lambda: any("policy: step 5" in m for m in rs.messages), 10)
        assert wait_for(lambda: rs.status.mode == Mode.HOLD and np.abs(rs.status.qpos - q0).max() > 1e-4,
                        20), list(rs.messages)[-3:]        # it moved, then held
        assert rs.status.policy_state == PolicyState.READY and not rs.status.estopped
        os.kill(pid, signal.SIGTERM)
        assert wait_for(lambda: not alive(pid), 20)
        assert wait_for(lambda: not alive(kids[0]), 10), "the inference process outlived the control process"
    finally:
        try:
            rs.close()
        except Exception:  # noqa: BLE001 - already gone
            pass
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


def test_auto_chunk_mode_ensembles_the_projects_vla_and_smooths_a_remote_one(tmp_path):
    """The default chunk mode ("auto"): the project's VLA (inference within a tick) is ensembled every
    tick, in the session's child and under `teleop eval --async` alike, as measured best on the physics
    sim; a remote VLA (100-900 ms) is run in smooth mode. Before, `eval --async` ran the project's VLA
    smooth and the session ensembled remote policies (0.55 rad one-tick jumps at 850 ms)."""
    import threading
    from teleop_app.policy.base import load_policy
    from teleop_app.policy.server import make_server
    local = load_policy("demo")
    assert PolicyRunner(local, "auto", async_=True).mode == "ensemble"     # teleop eval --async
    assert PolicyRunner(local, "auto").mode == "ensemble"
    with make(tmp_path) as s:
        s.load_policy({"source": "demo"})
        assert wait_for(lambda: s.status.policy_state in (PolicyState.READY, PolicyState.ERROR), 150)
        assert s.status.policy_state == PolicyState.READY, list(s.messages)[-3:]
        assert s.policy_runner.policy.meta.kind == "teleop-vla"     # the child serves the checkpoint's meta
        assert s.policy_runner.mode == "ensemble"
        s.clear_policy()
        assert wait_for(lambda: s.status.policy_state == PolicyState.NONE, 10)
        srv = make_server(local, "127.0.0.1", 0)          # the same VLA served remotely (/act, /health)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            s.load_policy({"source": f"http://127.0.0.1:{srv.server_address[1]}", "remote_action": "joint"})
            assert wait_for(lambda: s.status.policy_state in (PolicyState.READY, PolicyState.ERROR), 30)
            assert s.status.policy_state == PolicyState.READY, list(s.messages)[-3:]
            assert s.policy_runner.policy.meta.chunk_size > 1
            assert s.policy_runner.policy.meta.kind.startswith("remote") and s.policy_runner.mode == "smooth"
            s.clear_policy()
        finally:
            srv.shutdown()
            srv.server_close()
