"""`RemoteSession`: the Session API over the control channel, for the GUI (and any other client).

Commands are messages with a short reply timeout (the control side answers in about a millisecond; a
refusal comes back as RemoteError with the Session's own text). `estop()` is a single message that is not
waited for. `.status`, `.messages` and `.info` are filled by a reader thread from the control process's
stream; `latest_frames()` reads the shared-memory buffers. No call here waits on the control loop.

    rs = connect(SessionConfig(robot="sim", dataset="data/demo"))   # starts the control process if needed
    rs.set_mode(Mode.SCRIPTED); rs.start_episode(); print(rs.status.loop); rs.close()
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from teleop_app.control import wire
from teleop_app.control.server import COMMANDS, config_from_dict, config_to_json, socket_path

CALL_TIMEOUT_S = 4.0        # the Session takes a command at its next tick (<= 1 s at 1 Hz) and waits <= 3 s
PING_S = 0.2


class RemoteError(RuntimeError):
    """The control side refused a command (the message is its reason) or did not answer."""


class ControlLost(RemoteError):
    """The connection to the control process is gone."""


def _command(name: str):
    def call(self, *args, **kwargs):
        return self._call(name, *args, **kwargs)
    call.__name__ = name
    call.__doc__ = f"Session.{name} in the control process."
    return call


class RemoteSession:
    """Mirror of teleop_app.session.Session's public API, served by a control process."""

    def __init__(self, path: str | os.PathLike, process: subprocess.Popen | None = None,
                 heartbeat: str = "thread", timeout_s: float = CALL_TIMEOUT_S, observe: bool = False):
        """`heartbeat="thread"`: pings from a thread of this client; "manual": the owner calls heartbeat()
        (the GUI does, from its UI timer, so a hung UI counts as a lost client). `observe`: watch only (status,
        frames, e-stop) beside the controlling client, without replacing it."""
        import socket
        self.path = Path(path)
        self.process = process
        self.timeout_s = timeout_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(self.path))
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, list] = {}
        self._hello = threading.Event()
        self.connected = True
        self.lost_reason = ""
        self.status = None
        self.status_time = 0.0
        self.messages: deque[str] = deque(maxlen=200)
        self.messages_seen = 0          # count of messages received, for views that append new ones
        self.info = None
        self.config = None
        self.control_pid: int | None = None
        self._frames: dict = {}
        self._reader = threading.Thread(target=self._read_loop, name="remote-read", daemon=True)
        self._reader.start()
        self._send({"op": "hello", "observe": observe})
        if not self._hello.wait(10.0):
            self.detach()
            raise ControlLost(f"the control process at {self.path} did not answer")
        t_end = time.monotonic() + 5.0
        while self.status is None and self.connected and time.monotonic() < t_end:
            time.sleep(0.005)
        if heartbeat == "thread":
            threading.Thread(target=self._ping_loop, name="remote-ping", daemon=True).start()

    # ------------------------------------------------------------------ commands
    for _name in sorted(COMMANDS - {"estop"}):
        locals()[_name] = _command(_name)
    del _name

    def estop(self, source: str = "gui") -> None:
        """One message, not waited for; the control side latches it at its next tick."""
        self._send({"op": "estop", "source": source})

    def heartbeat(self) -> None:
        if self.connected:
            try:
                self._send({"op": "ping"})
            except ControlLost:
                pass

    def _call(self, method: str, *args, **kwargs):
        if not self.connected:
            raise ControlLost(f"not connected to the control process ({self.lost_reason})")
        mid = next(self._ids)
        slot = [threading.Event(), None]
        self._pending[mid] = slot
        try:
            self._send({"op": "call", "id": mid, "method": method, "args": list(args), "kwargs": kwargs})
            if not slot[0].wait(self.timeout_s):
                raise RemoteError(f"{method}: the control process did not answer within {self.timeout_s:g} s")
        finally:
            self._pending.pop(mid, None)
        reply = slot[1]
        if reply is None:
            raise ControlLost(f"{method}: connection to the control process lost ({self.lost_reason})")
        if not reply["ok"]:
            raise RemoteError(reply["error"])
        return reply.get("result")

    def _send(self, msg) -> None:
        data = wire.encode(msg)
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as e:
            self._lost(f"send failed: {e}")
            raise ControlLost(f"connection to the control process lost: {e}") from None

    # ------------------------------------------------------------------ read side
    def latest_frames(self) -> dict:
        """{camera: (image HxWx3 uint8, timestamp)} of the last frames the control loop read."""
        out = {}
        for name, fb in list(self._frames.items()):
            r = fb.read()
            if r is not None:
                out[name] = (r[0], r[1])
        return out

    def frame(self, camera: str):
        """(image, timestamp, index) of one camera, or None; the index tells a new frame from a repeat."""
        fb = self._frames.get(camera)
        return None if fb is None else fb.read()

    @property
    def alive(self) -> bool:
        return self.connected

    def _read_loop(self) -> None:
        from teleop_app.control.frames import FrameBuffer
        try:
            while True:
                msg = wire.recv(self._sock)
                if msg is None:
                    self._lost("the control process closed the connection")
                    return
                op = msg.get("op")
                if op == "status":
                    self.status = msg["status"]
                    self.status_time = time.monotonic()
                    for m in msg.get("messages", ()):
                        self.messages.append(m)
                        self.messages_seen += 1
                elif op == "reply":
                    slot = self._pending.get(msg.get("id"))
                    if slot is not None:
                        slot[1] = msg
                        slot[0].set()
                elif op == "hello":
                    self.info, self.control_pid = msg["info"], msg["pid"]
                    self.config = config_from_dict(msg["config"])     # the SessionConfig it runs with
                    self._frames = {n: FrameBuffer(shm) for n, shm in msg["frames"].items()}
                    self._hello.set()
        except (OSError, wire.WireError) as e:
            self._lost(f"connection error: {e}")

    def _ping_loop(self) -> None:
        while self.connected:
            self.heartbeat()
            time.sleep(PING_S)

    def _lost(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        self.lost_reason = reason
        for slot in list(self._pending.values()):
            slot[0].set()

    # ------------------------------------------------------------------ ending
    def detach(self) -> None:
        """Leave the control process running (it holds the arm and waits for a client)."""
        self._lost("detached")
        try:
            self._sock.close()
        except OSError:
            pass
        for fb in self._frames.values():
            fb.close()
        self._frames = {}

    def close(self, timeout_s: float = 10.0) -> None:
        """End the control process cleanly: episode kept, arm held, devices released; waits for it."""
        was_connected = self.connected
        if was_connected:
            try:
                self._send({"op": "shutdown"})
            except ControlLost:
                pass
            t_end = time.monotonic() + timeout_s
            while self.connected and time.monotonic() < t_end:
                time.sleep(0.01)
        self.detach()
        if self.process is not None:
            if not was_connected and self.process.poll() is None:
                self.process.terminate()         # waiting out its grace period: SIGTERM is a clean end too
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                self.process.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# ====================================================================== starting / finding the control process
def launch(config, grace_s: float = 60.0, timeout_s: float = 60.0, path: Path | None = None,
           client_timeout_s: float = 5.0) -> tuple[subprocess.Popen, Path]:
    """Start `python -m teleop_app.control.server` for `config`; returns (process, socket path) once it
    serves, or raises RemoteError with the control side's reason (e.g. the robot did not connect)."""
    cmd = [sys.executable, "-m", "teleop_app.control.server", "--config", config_to_json(config),
           "--grace", str(grace_s), "--client-timeout", str(client_timeout_s)]
    if path is not None:
        cmd += ["--socket", str(path)]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)   # a Ctrl-C / SIGTERM to the GUI's group is the GUI's to handle
    result: list = []
    t = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout_s)
    line = result[0] if result else ""
    if result:
        proc.stdout.close()            # the control process says one line; its log goes to stderr
    try:
        msg = json.loads(line) if line.strip() else {}
    except ValueError:
        msg = {}
    if "ready" not in msg:
        if proc.poll() is None and not result:
            proc.kill()
        proc.wait(5)
        raise RemoteError(msg.get("error") or f"the control process did not start (exit {proc.returncode})")
    return proc, Path(msg["ready"])


def connect(config, *, spawn: bool = True, grace_s: float = 60.0, heartbeat: str = "thread",
            client_timeout_s: float = 5.0) -> RemoteSession:
    """Connect to the control process serving `config.dataset`, starting one if none runs (and `spawn`)."""
    path = socket_path(config.dataset)
    if path.exists():
        try:
            return RemoteSession(path, heartbeat=heartbeat)
        except (OSError, ControlLost):
            pass                       # a stale socket of a process that is gone: start a new one
    if not spawn:
        raise RemoteError(f"no control process serves {config.dataset}")
    proc, path = launch(config, grace_s=grace_s, client_timeout_s=client_timeout_s)
    try:
        return RemoteSession(path, process=proc, heartbeat=heartbeat)
    except Exception:
        proc.terminate()
        proc.wait(10)
        raise
