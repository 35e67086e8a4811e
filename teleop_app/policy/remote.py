"""Client for a VLA served over HTTP with OpenVLA's `vla-scripts/deploy.py` protocol.

    POST <url>/act   body: {"image": HxWx3 uint8, "instruction": str, "unnorm_key": str?}  (json_numpy)
    reply:           the action array, 7-D end-effector delta [dx, dy, dz, droll, dpitch, dyaw, gripper]

The 7-D delta is turned into absolute joint targets with the robot's kinematics: the new TCP pose is
the current one moved by (dx, dy, dz) in the base frame and rotated by the roll/pitch/yaw delta,
then IK (warm-started at the current joints) gives the arm joints; gripper 1 = open, 0 = closed
(OpenVLA / Bridge convention), mapped onto the robot's gripper range. FK and IK are pluggable
callables (default: the simulated arm's). Against the project's own server (server.py) the client
can instead ask for absolute joint targets (`action_mode="joint"`): it sends `qpos` and
`"return_chunk": true` (protocol extensions an OpenVLA server ignores) and gets the whole chunk.
"""
from __future__ import annotations

import http.client
import math
import socket
import time
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

from . import wire
from .base import PolicyError, PolicyMeta


class RemotePolicyError(PolicyError):
    """The VLA server is down, too slow, or answered with an error / unusable action."""


IKFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]   # (pos3, rot3x3, q_init7) -> q7
FKFn = Callable[[np.ndarray], np.ndarray]                            # q7 -> 4x4


def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (extrinsic x-y-z, as in Bridge / OpenVLA deltas)."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def sim_kinematics() -> tuple[FKFn, IKFn]:
    from drivers.sim import kinematics as kin

    def ik(pos, rot, q_init):
        return kin.ik(pos, rot, q_init=q_init, restarts=1, max_iter=100)
    return (lambda q: kin.fk(np.asarray(q)[:7])), ik


def ee_delta_to_joints(action7: np.ndarray, q: np.ndarray, fk: FKFn, ik: IKFn,
                       gripper_range: tuple[float, float] = (0.0, 1.0), scale: float = 1.0) -> np.ndarray:
    """7-D EE delta + current joints (arm + gripper) -> absolute joint target (same length as q)."""
    a = np.asarray(action7, float).reshape(-1)
    if a.shape != (7,):
        raise RemotePolicyError(f"expected a 7-D end-effector action (dx,dy,dz,droll,dpitch,dyaw,gripper), "
                                f"got shape {np.shape(action7)}")
    if not np.all(np.isfinite(a)):
        return np.full(len(q), np.nan)     # the runner reports and stops; nothing is sent
    q = np.asarray(q, float)
    t = np.asarray(fk(q[:-1]))
    pos = t[:3, 3] + scale * a[:3]
    rot = rpy_matrix(*(scale * a[3:6])) @ t[:3, :3]
    try:
        q_arm = np.asarray(ik(pos, rot, q[:-1]), float)
    except Exception as e:  # noqa: BLE001 - any IK failure: hold the arm, say why
        raise RemotePolicyError(f"IK found no joint solution for the server's action "
                                f"(target {np.round(pos, 3).tolist()}): {e}") from None
    lo, hi = gripper_range
    g = lo + float(np.clip(a[6], 0.0, 1.0)) * (hi - lo)
    return np.concatenate([q_arm, [g]])


class RemotePolicy:
    """Policy backed by an OpenVLA-style HTTP server; see the module docstring."""

    def __init__(self, url: str, *, meta: PolicyMeta | None = None, profile=None, camera: str = "front",
                 timeout: float = 5.0, connect_timeout: float = 2.0, unnorm_key: str | None = None,
                 action_mode: str = "ee_delta", fk: FKFn | None = None, ik: IKFn | None = None,
                 ee_scale: float = 1.0, send_qpos: bool | None = None, cameras: list[str] | None = None,
                 token: str | None = None, **_ignored):
        if action_mode not in ("ee_delta", "joint"):
            raise ValueError("action_mode must be 'ee_delta' (OpenVLA) or 'joint' (teleop server)")
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise RemotePolicyError(f"bad VLA server URL {url!r}; expected http://host:port")
        self.url = url.rstrip("/")
        self._host, self._port, self._https = u.hostname, u.port or (443 if u.scheme == "https" else 80), \
            u.scheme == "https"
        base = u.path.rstrip("/")
        self._path = base if base.endswith("/act") else base + "/act"
        self.camera = camera
        self.cameras = list(cameras) if cameras else None
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.unnorm_key = unnorm_key
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.action_mode = action_mode
        self.ee_scale = float(ee_scale)
        self.send_qpos = action_mode == "joint" if send_qpos is None else bool(send_qpos)
        self._conn: http.client.HTTPConnection | None = None
        if meta is None and action_mode == "joint":
            meta = self.fetch_meta()          # a teleop server describes its policy at /health
            self.cameras = self.cameras or list(meta.cameras)
        if meta is None:
            from teleop_app.profiles import load_profile
            prof = load_profile(profile or "sim7") if not hasattr(profile, "joint_names") else profile
            meta = PolicyMeta(joint_names=prof.joint_names, action_dim=prof.dof, fps=prof.fps,
                              image_size=(224, 224), cameras=self.cameras or [camera], chunk_size=1,
                              kind="remote",
                              extra={"url": self.url, "action_mode": action_mode})
            self._gripper_range = (prof.gripper.lower, prof.gripper.upper)
        else:
            self._gripper_range = (0.0, 1.0)
        self.meta = meta
        if action_mode == "ee_delta" and (fk is None or ik is None):
            dfk, dik = sim_kinematics()
            fk, ik = fk or dfk, ik or dik
        self.fk, self.ik = fk, ik
        self.last_latency: float | None = None

    def reset(self) -> None:
        pass

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- HTTP ------------------------------------------------------------------------
    def fetch_meta(self) -> PolicyMeta:
        """GET /health of a teleop policy server -> its PolicyMeta (joints, cameras, fps, chunk)."""
        conn = self._connection()
        try:
            conn.request("GET", self._path[: -len("/act")] + "/health", headers=self._auth)
            resp = conn.getresponse()
            data = resp.read()
            meta = PolicyMeta.from_dict(wire.loads(data)["meta"])
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise RemotePolicyError(f"VLA server at {self.url} is not reachable ({e}); start it "
                                    "(e.g. `teleop serve CHECKPOINT`) or check the URL") from None
        except (wire.WireError, KeyError, TypeError) as e:
            raise RemotePolicyError(f"{self.url}/health did not describe a teleop policy ({e}); for an "
                                    "OpenVLA server use action_mode='ee_delta'") from None
        meta.kind = f"remote:{meta.kind}"
        meta.extra = {**meta.extra, "url": self.url}
        return meta

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.connect_timeout)
        return self._conn

    def request(self, payload: dict) -> object:
        """POST payload to /act; returns the decoded reply. Raises RemotePolicyError with what to do."""
        body = wire.dumps(payload).encode()
        where = f"VLA server at {self.url}"
        for attempt in (0, 1):           # one silent retry on a stale keep-alive connection
            conn = self._connection()
            try:
                if conn.sock is None:
                    conn.connect()
                    # headers and body go out as separate writes: without NODELAY, Nagle + delayed
                    # ACK add ~40 ms per request on loopback
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sock.settimeout(self.timeout)
                t0 = time.perf_counter()
                conn.request("POST", self._path, body, {"Content-Type": "application/json", **self._auth})
                resp = conn.getresponse()
                data = resp.read()
                self.last_latency = time.perf_counter() - t0
                break
            except (socket.timeout, TimeoutError):
                self.close()
                raise RemotePolicyError(f"{where} did not answer within {self.timeout:g} s "
                                        "(overloaded or hung?); holding position") from None
            except (ConnectionRefusedError, socket.gaierror) as e:
                self.close()
                raise RemotePolicyError(f"{where} is not reachable ({e.strerror or e}); start it "
                                        "(e.g. `teleop serve CHECKPOINT`) or check the URL") from None
            except (http.client.HTTPException, ConnectionError, OSError) as e:
                self.close()
                if attempt == 0 and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                   BrokenPipeError)):
                    continue
                raise RemotePolicyError(f"{where}: connection failed ({type(e).__name__}: {e})") from None
        try:
            reply = wire.loads(data)
        except wire.WireError as e:
            reply = None
            if resp.status == 200:
                raise RemotePolicyError(f"{where} sent an unreadable reply ({e}): {data[:200]!r}") from None
        if resp.status != 200:
            msg = reply.get("error") if isinstance(reply, dict) else data[:300].decode("utf-8", "replace")
            raise RemotePolicyError(f"{where} returned HTTP {resp.status}: {msg}")
        if isinstance(reply, str):
            if reply.strip().lower() == "error":   # deploy.py's answer to a failed request
                raise RemotePolicyError(f"{where} reported an error for this request (check the "
                                        "image/instruction format and unnorm_key in the server log)")
            try:                                    # deploy.py double-encoding
                reply = wire.loads(reply)
            except wire.WireError:
                raise RemotePolicyError(f"{where} sent an unexpected reply: {reply[:200]!r}") from None
        if isinstance(reply, dict) and "error" in reply:
            raise RemotePolicyError(f"{where} reported: {reply['error']}")
        return reply

    # ---- Policy API ------------------------------------------------------------------
    def predict(self, obs: dict) -> np.ndarray:
        images = obs.get("images", {})
        cams = self.cameras or [self.camera]
        missing = [c for c in cams if c not in images]
        if missing:
            raise RemotePolicyError(f"observation lacks camera(s) {missing} the remote policy uses "
                                    f"(have {sorted(images)})")
        payload: dict = {"image": np.ascontiguousarray(images[cams[0]], dtype=np.uint8),
                         "instruction": str(obs.get("instruction", ""))}
        if len(cams) > 1:                       # extension: several cameras by name
            payload["images"] = {c: np.ascontiguousarray(images[c], dtype=np.uint8) for c in cams}
        if self.unnorm_key:
            payload["unnorm_key"] = self.unnorm_key
        q = np.asarray(obs["qpos"], float)
        if self.send_qpos:
            payload["qpos"] = q.astype(np.float32)
        if self.action_mode == "joint":
            payload["return_chunk"] = True
        reply = self.request(payload)
        action = reply.get("action") if isinstance(reply, dict) else reply
        if not isinstance(action, (np.ndarray, np.generic, list)):
            raise RemotePolicyError(f"server reply has no action array: {str(reply)[:200]}")
        a = np.asarray(action, float)
        if self.action_mode == "joint":
            return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
        if a.ndim == 2:           # some servers return a chunk of EE deltas: use the first
            a = a[0]
        return ee_delta_to_joints(a, q, self.fk, self.ik, self._gripper_range, self.ee_scale)[None]
