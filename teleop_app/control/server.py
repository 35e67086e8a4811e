"""The control process: owns a Session (robot, cameras, gamepad, loop, recorder) and serves one client (the
GUI) over a Unix domain socket. Nothing the client does can slow the loop: the client lives in another
process, commands arrive as messages, the status snapshot streams out from a sender thread that may block
on a stalled client without anyone waiting for it, and the camera frames go through shared memory.

    python -m teleop_app.control.server --config '{"robot": "sim", ...}' [--grace 60]

Channel: a socket 0600 in a private 0700 directory of this user (`runtime_dir()`), one per dataset; no TCP;
msgpack frames with the typed codec of `wire.py` (no pickle). If the client disconnects, is killed or stops
answering (no ping for `client_timeout_s`), the arm is held, an episode under way is stopped and kept
(unlabelled), and the process waits `grace_s` for a client to come back before it shuts down.
SIGTERM / SIGINT: clean end (episode kept, arm held, devices released).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import queue
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path

from teleop_app.control import wire
from teleop_app.loop import realtime_helper

log = logging.getLogger("teleop.control")

# What a client may call on the Session (the contract's commands; set_policy takes a Python object and
# stays in-process only). "estop" also has its own message, handled without queueing.
COMMANDS = frozenset({
    "set_mode", "estop", "reset_estop", "go_home", "command", "jog", "push", "set_gripper", "set_instruction",
    "start_episode", "stop_episode", "next", "rerecord", "keep", "discard", "label", "reset_scene",
    "start_replay", "stop_replay", "set_workflow", "set_mapping", "load_policy", "clear_policy", "step_policy",
    "take_over", "hand_back", "move_leader"})     # human in the loop (teleop_app/human.py)
# Both at the GUI's own refresh rate: each wake-up of these threads takes the GIL from the loop's process
# (measured, 50 Hz loop on a loaded 2-core machine: p99 11 ms with frames published at 60 Hz, 3.6 ms without).
STATUS_HZ = 30.0
FRAME_HZ = 30.0


# ====================================================================== where the socket lives
def runtime_dir() -> Path:
    """This user's private directory for control sockets ($XDG_RUNTIME_DIR/teleop or /tmp/teleop-UID),
    created 0700; refused if another user owns it or others can enter it."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    d = Path(base) / "teleop" if base and os.path.isdir(base) else Path(f"/tmp/teleop-{os.getuid()}")
    try:
        d.mkdir(mode=0o700, parents=False, exist_ok=True)
    except FileNotFoundError:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{d} is not a directory owned by you: remove it or set XDG_RUNTIME_DIR")
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def socket_path(dataset: str | os.PathLike) -> Path:
    """The control socket for a dataset: a restarted GUI on the same dataset finds the running process."""
    key = hashlib.sha1(str(Path(dataset).expanduser().resolve()).encode()).hexdigest()[:16]
    return runtime_dir() / f"control-{key}.sock"


# ====================================================================== config over the command line
def config_to_json(config) -> str:
    return json.dumps(dataclasses.asdict(config))


def config_from_json(text: str):
    return config_from_dict(json.loads(text))


def config_from_dict(d: dict):
    from teleop_app.session import SessionConfig
    from teleop_app.workflow import WorkflowConfig
    d = dict(d)
    known = {f.name for f in dataclasses.fields(SessionConfig)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown session settings: {', '.join(sorted(unknown))}")
    wf = d.pop("workflow", None) or {}
    return SessionConfig(**d, workflow=WorkflowConfig(**wf))


# ====================================================================== one client
class _Client:
    """A connected client: a reader (this server's thread) and a sender thread with a reply queue and a
    latest-only status slot. The sender is the only writer of the socket; it may block on a stopped client,
    which costs nobody anything but itself."""

    def __init__(self, sock: socket.socket, server: "ControlServer"):
        self.sock, self.server = sock, server
        self.last_seen = time.monotonic()
        self.alive = True
        self.observer = False
        self.pinged = False        # the hang watchdog starts with the first ping (a GUI may take a while to
                                   # build its views after connecting; its death is seen as EOF anyway)
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self.sender = threading.Thread(target=self._send_loop, name="control-send", daemon=True)
        self.sender.start()

    def send(self, msg) -> None:
        self.replies.put(msg)
        self._wake.set()

    def _send_loop(self) -> None:
        srv = self.server
        sent_seq = None
        sent_msgs = 0                  # the first status carries the recent messages (a reconnecting GUI shows them)
        period = 1.0 / srv.status_hz
        realtime_helper()          # the frame and status threads: real-time, below the loop
        try:
            while self.alive:
                self._wake.wait(period)
                self._wake.clear()
                srv.session.loop.wait_quiet()          # not while the loop starts a tick (GIL)
                while True:
                    try:
                        msg = self.replies.get_nowait()
                    except queue.Empty:
                        break
                    self.sock.sendall(wire.encode(msg))
                st = srv.session.status
                if st.seq != sent_seq:
                    sent_seq = st.seq
                    msgs = list(srv.session.messages)
                    # the deque may be ahead of the snapshot's count (said since): count it, while it is not full
                    n = len(msgs) if len(msgs) < (srv.session.messages.maxlen or 0) else st.messages_seq
                    new = msgs[-min(n - sent_msgs, len(msgs)):] if n > sent_msgs else []
                    sent_msgs = n
                    self.sock.sendall(wire.encode({"op": "status", "status": st, "messages": new}))
        except OSError:
            pass
        finally:
            self.alive = False

    def close(self) -> None:
        self.alive = False
        self._wake.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ====================================================================== the server
class ControlServer:
    def __init__(self, session, path: Path, grace_s: float = 60.0, client_timeout_s: float = 5.0,
                 status_hz: float = STATUS_HZ):
        self.session, self.path = session, Path(path)
        self.grace_s, self.client_timeout_s, self.status_hz = grace_s, client_timeout_s, status_hz
        self.stop_event = threading.Event()
        self.client: _Client | None = None         # the controlling client (the GUI): watched, replaced
        self.observers: list[_Client] = []          # read-only clients (monitors, tests): never watched
        self._client_lock = threading.Lock()
        self._orphan_since = time.monotonic()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        # Set while no lost client is being held: a client that reconnects at once (a GUI dropped after a
        # hang) has its commands wait for the hold, so its "start again" cannot run before the hold's "stop".
        self._settled = threading.Event()
        self._settled.set()
        self.frames = {}
        self.config_dict = dataclasses.asdict(session.config)
        self._sock: socket.socket | None = None

    # ------------------------------------------------------------------ setup / teardown
    def open(self) -> "ControlServer":
        from teleop_app.control.frames import FrameBuffer
        info = self.session.info
        tag = f"teleop-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        for i, (name, (h, w, _fps)) in enumerate(info.cameras.items()):
            self.frames[name] = FrameBuffer(f"{tag}-{i}", (int(h), int(w), 3), create=True)
        if self.path.exists():
            self.path.unlink()          # the caller checked that nothing answers on it
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)           # the socket is born 0600: no window where others could connect
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        s.listen(2)
        self._sock = s
        for fn, name in ((self._accept_loop, "control-accept"), (self._frame_loop, "control-frames"),
                         (self._call_loop, "control-calls"), (self._watch_loop, "control-watch")):
            threading.Thread(target=fn, name=name, daemon=True).start()
        return self

    def close(self) -> None:
        self.stop_event.set()
        try:
            self.session.close()          # keeps an episode under way (unlabelled), releases the devices
        finally:
            # Only now do clients see the connection end: a client waiting in close() knows the devices
            # are free (a new control process may open them).
            with self._client_lock:
                clients, self.client, self.observers = [self.client, *self.observers], None, []
            for c in clients:
                if c is not None:
                    c.close()
            if self._sock is not None:
                self._sock.close()
                try:
                    self.path.unlink()
                except OSError:
                    pass
            for fb in self.frames.values():
                fb.close()

    # ------------------------------------------------------------------ threads
    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            if not self._same_user(sock):
                sock.close()
                continue
            client = _Client(sock, self)
            threading.Thread(target=self._read_loop, args=(client,), name="control-read", daemon=True).start()

    def _adopt(self, c: _Client, observe: bool) -> None:
        """After its hello: an observer only watches; a controlling client replaces the previous one (e.g.
        a GUI that hung and was restarted)."""
        with self._client_lock:
            if observe:
                self.observers = [o for o in self.observers if o.alive] + [c]
                return
            old, self.client = self.client, c
        if old is not None:
            old.close()
        self.session.say("control process: client connected" + (" (replacing the previous one)" if old else ""))

    @staticmethod
    def _same_user(sock) -> bool:
        import struct
        try:
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", cred)
            return uid == os.getuid()
        except (OSError, AttributeError):
            return True            # not Linux: the 0700 directory and 0600 socket still bar other users

    def _read_loop(self, c: _Client) -> None:
        reason = "disconnected"
        try:
            while c.alive:
                msg = wire.recv(c.sock)
                if msg is None:
                    break
                c.last_seen = time.monotonic()
                op = msg.get("op")
                if op == "estop":             # straight to the session's lock-free flag: no queue
                    self.session.estop(msg.get("source", "gui"))
                elif op == "call":
                    if c.observer:
                        c.send({"op": "reply", "id": msg.get("id"), "ok": False,
                                "error": "an observer cannot send commands (only e-stop)"})
                    else:
                        self._calls.put((c, msg))
                elif op == "hello":
                    c.observer = bool(msg.get("observe"))
                    self._adopt(c, c.observer)
                    c.send({"op": "hello", "info": self.session.info, "pid": os.getpid(),
                            "frames": {n: fb.name for n, fb in self.frames.items()}, "config": self.config_dict,
                            "grace_s": self.grace_s})
                elif op == "shutdown":
                    self.session.say("control process: shutdown requested by the client")
                    reason = None
                    self.stop_event.set()
                    return                    # the connection stays open until close() has finished
                elif op == "ping":
                    c.pinged = True
        except ConnectionResetError:           # a killed client with unread data: a reset, not an EOF
            reason = "disconnected"
        except (OSError, wire.WireError) as e:
            reason = f"connection error: {e}"
        if reason is not None and not c.observer:
            self._client_lost(c, reason)
        c.close()

    def _call_loop(self) -> None:
        """Commands run here, one after the other, never on the tick and never on the socket reader (so
        an e-stop message is never queued behind a slow command)."""
        while not self.stop_event.is_set():
            try:
                c, msg = self._calls.get(timeout=0.2)
            except queue.Empty:
                continue
            self._settled.wait()
            name, mid = msg.get("method"), msg.get("id")
            if c is not self.client:          # queued by a client dropped since: it no longer commands
                c.send({"op": "reply", "id": mid, "ok": False, "kind": "ControlLost",
                        "error": f"{name}: this client was disconnected before the command ran"})
                continue
            try:
                fn = getattr(self.session, name, None) if name in COMMANDS else None
                if fn is None:
                    raise ValueError(f"unknown command {name!r}" if name not in COMMANDS else
                                     f"this control side has no {name!r} yet")
                result = fn(*msg.get("args", ()), **msg.get("kwargs", {}))
                reply = {"op": "reply", "id": mid, "ok": True, "result": None if result is None else result}
                try:
                    wire.encode(reply)
                except (wire.WireError, TypeError):
                    reply["result"] = str(result)
            except Exception as e:               # refusals travel back as text the UI shows
                reply = {"op": "reply", "id": mid, "ok": False, "error": str(e) or type(e).__name__,
                         "kind": type(e).__name__}
            c.send(reply)

    def _frame_loop(self) -> None:
        """Each camera's newest frame (Session.live_frames: the camera's own rate, not the loop's) into
        shared memory (latest-only, off the tick)."""
        last: dict[str, float] = {}
        index: dict[str, int] = {}
        period = 1.0 / FRAME_HZ
        realtime_helper()          # the frame and status threads: real-time, below the loop
        while not self.stop_event.wait(period):
            self.session.loop.wait_quiet(self.stop_event)
            try:
                frames = self.session.live_frames()
            except Exception:
                continue
            for name, (img, ts) in frames.items():
                fb = self.frames.get(name)
                if fb is None or img is None or last.get(name) == ts:
                    continue
                last[name] = ts
                index[name] = index.get(name, 0) + 1
                fb.write(img, ts, index[name])

    def _watch_loop(self) -> None:
        while not self.stop_event.wait(0.05):
            with self._client_lock:
                c = self.client
            now = time.monotonic()
            if self.stop_event.is_set():
                return
            if c is not None and c.alive and c.pinged and now - c.last_seen > self.client_timeout_s:
                self._client_lost(c, f"not answering for {now - c.last_seen:.1f} s")
            elif c is None and now - self._orphan_since > self.grace_s:
                self.session.say(f"control process: no client for {self.grace_s:g} s, shutting down")
                self.stop_event.set()

    # ------------------------------------------------------------------ the client is gone
    def _client_lost(self, c: _Client, reason: str) -> None:
        with self._client_lock:
            if self.client is not c:
                return                   # already replaced by a newer client: nothing to hold
            self.client = None
            self._orphan_since = time.monotonic()
            self._settled.clear()
        try:
            c.close()
            msg = (f"client {reason} at tick {self.session.status.seq}: holding the arm, waiting "
                   f"{self.grace_s:g} s for it to reconnect")
            log.warning(msg)             # on stderr too: the GUI that lost us may not show it
            self.session.say(msg)
            hold_for_lost_client(self.session)
        finally:
            self._settled.set()


def hold_for_lost_client(session, timeout_s: float = 1.0) -> None:
    """What the control side does on its own when the GUI is gone: an unattended cycle ends, an episode
    under way is stopped and kept (labelled by the sim, else unlabelled), and modes driven from the GUI or by
    the machine (policy, scripted, replay, kinesthetic) fall back to holding the arm. Stop and mode switch
    are queued together, so both take effect at the same, next tick. The gamepad keeps working: this
    process reads it."""
    from teleop_app.session import Mode
    from teleop_app.workflow import State
    st = session.status
    session.set_workflow(auto_keep=False)        # nothing starts again by itself
    if st.workflow in (State.RECORDING, State.COUNTDOWN):
        session.stop_episode()
    if st.mode not in (Mode.HOLD, Mode.GAMEPAD):
        try:
            session.set_mode(Mode.HOLD)          # waits for the tick that also ran the stop
        except Exception as e:                   # could not switch: hold by the latch
            session.estop(f"control: client lost ({e})")
    t_end = time.monotonic() + timeout_s
    while session.status.workflow == State.RECORDING and time.monotonic() < t_end:
        time.sleep(0.005)
    if session.status.workflow == State.REVIEW:
        session.keep(None)


# ====================================================================== entry point
def control_answers(path: Path) -> bool:
    """True if a control process listens on `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _emit(**kw) -> None:
    """One JSON line on stdout for the process that launched us (ready or error)."""
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="teleop control process (started by `teleop gui`)")
    ap.add_argument("--config", required=True, help="SessionConfig as JSON")
    ap.add_argument("--socket", help="socket path (default: per dataset in the runtime dir)")
    ap.add_argument("--grace", type=float, default=60.0, help="seconds to wait for a client before exiting")
    ap.add_argument("--client-timeout", type=float, default=5.0,
                    help="a client silent for this long counts as hung: hold, keep the episode")
    a = ap.parse_args(argv)
    # SDL (pygame) must neither open a window nor take over SIGTERM/SIGINT from us.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ["SDL_NO_SIGNAL_HANDLERS"] = "1"
    os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
    logging.basicConfig(level=logging.WARNING, format="control: %(message)s")
    try:
        config = config_from_json(a.config)
        path = Path(a.socket) if a.socket else socket_path(config.dataset)
    except (ValueError, TypeError, OSError) as e:
        _emit(error=f"bad control settings: {e}")
        return 2
    if control_answers(path):
        _emit(error=f"a control process already serves {config.dataset} ({path}): connect to it instead")
        return 3
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from teleop_app.session import Session, SessionError
    session = Session(config)
    try:
        session.start()
    except (SessionError, OSError, ValueError) as e:
        try:
            session.close()
        finally:
            _emit(error=str(e))
        return 2
    server = ControlServer(session, path, grace_s=a.grace, client_timeout_s=a.client_timeout)
    try:
        server.open()
        _emit(ready=str(path), pid=os.getpid())
        while not stop.is_set() and not server.stop_event.is_set():
            stop.wait(0.1)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
