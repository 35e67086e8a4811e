"""Checkpoint policies in a child inference process, so the control loop never shares a GIL with torch.

`Session.load_policy({"source": "runs/vla.pt" | "demo"})` starts

    python -m teleop_app.policy.child CHECKPOINT          (token in $TELEOP_POLICY_TOKEN)

which loads the checkpoint (importing torch there, not in the control process), warms it up, serves it
with the openpi websocket server (openpi.OpenPIServer) on 127.0.0.1 at an ephemeral port and reports
that port as ONE stdout line `PORT <n>` (or `ERROR <message>` and exits 2). The control process then
talks to it with the openpi client (openpi.OpenPIPolicy, `Authorization: Api-Key TOKEN`, a random token
per child), wrapped as `ChildPolicy` whose `meta` is the checkpoint's own PolicyMeta (sent in the
server's metadata), so `check_compatible` runs against the robot before anything moves, as for an
in-process policy.

Lifetime: the child ends with `ChildPolicy.close()` (clear_policy, Session.close), and with its parent
process whatever way that ends: it exits when its stdin (a pipe only the parent holds) reaches EOF, or
when its parent pid changes. (PR_SET_PDEATHSIG is not used: it fires when the parent *thread* that
spawned the child exits, and policies are loaded on a short-lived thread.)
A child that dies makes the next inference fail (a message, the policy stopped, the arm held; no
e-stop); one that hangs gives no action and PolicySource's stall timer stops it the same way.
"""
from __future__ import annotations

import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .base import PolicyError, PolicyMeta
from .runner import PolicyRunner

TOKEN_ENV = "TELEOP_POLICY_TOKEN"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ChildPolicy:
    """A Policy served by a child process (see the module docstring). Raises PolicyError with the
    child's own message when it cannot load the checkpoint."""

    def __init__(self, checkpoint: str, *, profile=None, load_timeout: float = 180.0, timeout: float = 5.0,
                 python: str | None = None, env: dict | None = None):
        self.checkpoint = str(checkpoint)
        self.token = secrets.token_urlsafe(24)
        self._err = tempfile.TemporaryFile(mode="w+b")
        e = {**os.environ, **(env or {}), TOKEN_ENV: self.token}
        self.proc = subprocess.Popen([python or sys.executable, "-m", "teleop_app.policy.child", self.checkpoint],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=e,
                                     close_fds=True)
        self.pid = self.proc.pid
        self.client = None
        try:
            port = self._read_port(load_timeout)
            from .openpi import OpenPIPolicy
            self.client = OpenPIPolicy(f"ws://127.0.0.1:{port}", profile=profile, api_key=self.token,
                                       timeout=timeout, check=False)
            served = self.client.metadata.get("policy") if isinstance(self.client.metadata, dict) else None
            if not isinstance(served, dict):
                raise PolicyError("the policy process sent no policy metadata")
            self.meta = PolicyMeta.from_dict(served)
            self.meta.extra = {**dict(self.meta.extra or {}), "child_pid": self.pid}
        except BaseException:
            self.close()
            raise

    def _stderr_tail(self, n: int = 1500) -> str:
        try:
            self._err.seek(0)
            text = self._err.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return text[-n:]

    def _read_port(self, timeout: float) -> int:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        t_end = time.monotonic() + timeout
        try:
            while b"\n" not in buf:
                left = t_end - time.monotonic()
                if left <= 0:
                    raise PolicyError(f"the policy process did not start serving {self.checkpoint} within "
                                      f"{timeout:g} s")
                if not sel.select(min(left, 0.5)):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    code = self.proc.wait(5)
                    tail = self._stderr_tail()
                    raise PolicyError(f"the policy process ended before serving ({_describe_exit(code)})"
                                      + (f":\n{tail}" if tail else ""))
                buf += chunk
        finally:
            sel.close()
        line = buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        if line.startswith("ERROR "):
            raise PolicyError(line[6:])
        if not line.startswith("PORT "):
            raise PolicyError(f"the policy process said {line[:200]!r} instead of its port")
        return int(line.split()[1])

    # ---- Policy API ---------------------------------------------------------------------
    def reset(self) -> None:
        pass

    def predict(self, obs: dict):
        if self.client is None:
            raise PolicyError("the policy process is closed")
        code = self.proc.poll()
        if code is not None:
            raise PolicyError(f"the policy process ended ({_describe_exit(code)}); load the policy again")
        try:
            return self.client.predict(obs)
        except PolicyError as e:
            code = self.proc.poll()
            if code is None:
                try:
                    code = self.proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    raise e from None
            raise PolicyError(f"the policy process ended ({_describe_exit(code)}); load the policy again") from None

    def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            c.close()
        p = self.proc
        if p.poll() is None:
            try:
                p.stdin.close()             # the child's cue to exit
            except OSError:
                pass
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)
        for f in (p.stdin, p.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            self._err.close()
        except OSError:
            pass


class ChildPolicyRunner(PolicyRunner):
    """A PolicyRunner whose close() also ends the child process (first, so a request blocked on a hung
    child returns at once)."""

    def close(self) -> None:
        close = getattr(self.policy, "close", None)
        inner = getattr(self.policy, "inner", None)         # make_async may wrap the policy
        for c in (close, getattr(inner, "close", None)):
            if c is not None:
                c()
                break
        super().close()


def child_policy(policy) -> "ChildPolicy | None":
    """The ChildPolicy behind a runner's policy (possibly wrapped), or None."""
    for p in (policy, getattr(policy, "inner", None), getattr(policy, "policy", None)):
        if isinstance(p, ChildPolicy):
            return p
    return None


# ---------------------------------------------------------------- the child side
def exit_with_parent(ppid: int) -> None:
    """End this process when its parent pid changes (the parent died, even by SIGKILL). Also a process pool's
    initializer: the benchmarks' recording workers end with the benchmark."""
    def parent_pid():
        while os.getppid() == ppid:
            time.sleep(0.5)
        os._exit(0)
    threading.Thread(target=parent_pid, name="parent-pid", daemon=True).start()


def _watch_parent(ppid: int) -> None:
    def stdin_eof():
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(0)
    threading.Thread(target=stdin_eof, name="parent-stdin", daemon=True).start()
    exit_with_parent(ppid)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m teleop_app.policy.child",
                                 description="serve one checkpoint to the control process that started it")
    ap.add_argument("checkpoint")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    a = ap.parse_args(argv)
    _watch_parent(os.getppid())
    token = os.environ.pop(TOKEN_ENV, "") or None
    out = sys.stdout
    try:
        from .base import load_policy
        from .openpi import OpenPIServer
        from .server import _warm_up
        policy = load_policy(a.checkpoint, threads=a.threads)
        _warm_up(policy)
        srv = OpenPIServer(policy, "127.0.0.1", 0, token=token)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        out.write("ERROR " + " ".join(f"cannot load policy {a.checkpoint}: {e}".split()) + "\n")
        out.flush()
        return 2
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    out.write(f"PORT {srv.port}\n")
    out.flush()
    os.dup2(2, 1)       # later prints go to the parent's stderr file: nobody reads the stdout pipe any more
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
