"""openpi's policy-server protocol (pi0 / pi0.5 `scripts/serve_policy.py`): client and server.

The protocol, as openpi-client's `WebsocketClientPolicy` and openpi's `WebsocketPolicyServer` speak it:
  * a websocket (no compression); right after the handshake the server sends one binary frame, its
    metadata dict;
  * each request is one binary frame: the observation dict (openpi example keys, see layouts/);
  * each reply is one binary frame: a dict with "actions" (chunk, action_dim) (+ "server_timing");
  * a failure is a *text* frame (the server's traceback), then the server closes the connection.
Frames are msgpack with numpy arrays as {"__ndarray__": True, "data", "dtype", "shape"}
(wire.packb / wire.unpackb: numbers and bools only, no pickle).

    pol = OpenPIPolicy("ws://gpu-box:8000", layout="droid", profile=my_profile)   # foreign server
    pol = load_policy("ws://127.0.0.1:8000")      # a teleop server: its metadata carries the layout

`OpenPIServer` serves any local checkpoint the same way (`teleop serve CKPT --protocol openpi`), so
openpi's own client drives it; its metadata describes the expected observation (keys, shapes,
dtypes), the action layout, and carries an `example_observation`.
"""
from __future__ import annotations

import threading
import time
import traceback
from urllib.parse import urlsplit

import numpy as np

from . import wire
from .base import PolicyError, PolicyMeta
from .layouts import Layout, fit_image, layout_for_meta, load_layout
from .remote import RemotePolicyError

PROTOCOL = "openpi-websocket"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _profile(profile):
    if profile is None or isinstance(profile, str):
        from teleop_app.profiles import load_profile
        return load_profile(profile or "sim7")
    return profile


class OpenPIPolicy:
    """A Policy backed by an openpi websocket policy server (see the module docstring).

    `layout` (template name, file, dict or Layout) says how observations and actions look on the
    wire; None = take it from the server's metadata (teleop servers send one). It is checked
    against `profile` in the constructor, before anything moves (PolicyMismatchError).
    Connection: opened in the constructor; a dropped connection is reopened (and the request sent
    again) once per call; a reply slower than `timeout` raises and the next call reconnects.
    """

    def __init__(self, url: str, *, layout=None, profile=None, timeout: float = 10.0,
                 connect_timeout: float = 5.0, api_key: str | None = None, fk=None, ik=None,
                 check: bool = True, fps: float | None = None, **_ignored):
        u = urlsplit(url)
        if u.scheme not in ("ws", "wss") or not u.hostname:
            raise RemotePolicyError(f"bad openpi server URL {url!r}; expected ws://host:port")
        self.url = url.rstrip("/")
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.api_key = api_key
        self.profile = _profile(profile)
        self._ws = None
        self._lock = threading.Lock()
        self.reconnects = 0
        self.last_latency: float | None = None
        self.server_timing: dict = {}
        self.metadata: dict = {}
        self._connect()
        if layout is None:
            lay = self.metadata.get("layout") if isinstance(self.metadata, dict) else None
            if not isinstance(lay, dict):
                self.close()
                raise RemotePolicyError(
                    f"the openpi server at {self.url} does not describe its observation layout "
                    f"(metadata keys: {sorted(map(str, self.metadata))}); give one: --layout "
                    "aloha|droid|libero|sim7 or a .toml file (teleop_app/policy/layouts/)")
            layout = lay
        self.layout: Layout = load_layout(layout)
        if check:
            self.layout.check(self.profile, fps)
        if self.layout.uses_ee and (fk is None or ik is None):
            from .remote import sim_kinematics
            dfk, dik = sim_kinematics()
            fk, ik = fk or dfk, ik or dik
        self.fk, self.ik = fk, ik
        served = self.metadata.get("policy") if isinstance(self.metadata, dict) else None
        chunk = self.layout.action.horizon or (int(served.get("chunk_size", 1)) if isinstance(served, dict) else 1)
        h, w = (self.layout.images[0].height, self.layout.images[0].width) if self.layout.images else (224, 224)
        self.meta = PolicyMeta(joint_names=list(self.profile.joint_names), action_dim=self.profile.dof,
                               fps=float(self.layout.fps), image_size=(h, w), cameras=self.layout.cameras,
                               chunk_size=max(1, chunk), kind=f"openpi:{self.layout.name}",
                               extra={"url": self.url, "layout": self.layout.name, "remote": True,
                                      "server": self.metadata.get("server", "") if isinstance(self.metadata, dict) else ""})

    # ---- connection -------------------------------------------------------------------------
    def _connect(self) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        where = f"openpi server at {self.url}"
        try:
            ws = connect(self.url, compression=None, max_size=None, open_timeout=self.connect_timeout,
                         additional_headers=headers, close_timeout=1.0, proxy=None, legacy=True)
        except (ConnectionRefusedError, OSError) as e:
            raise RemotePolicyError(f"{where} is not reachable ({getattr(e, 'strerror', None) or e}); start it "
                                    "(e.g. `teleop serve CHECKPOINT --protocol openpi`, or openpi's "
                                    "scripts/serve_policy.py) or check the URL") from None
        except InvalidHandshake as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            hint = " (wrong or missing token: --token / api_key)" if status in (401, 403) else ""
            raise RemotePolicyError(f"{where} refused the websocket handshake: {e}{hint}") from None
        except (InvalidURI, TimeoutError) as e:
            raise RemotePolicyError(f"{where}: cannot connect ({type(e).__name__}: {e})") from None
        try:
            first = ws.recv(timeout=self.connect_timeout)
        except TimeoutError:
            ws.close()
            raise RemotePolicyError(f"{where} sent no metadata within {self.connect_timeout:g} s after "
                                    "connecting (is it an openpi policy server?)") from None
        except Exception as e:  # noqa: BLE001 - closed right away
            raise RemotePolicyError(f"{where} closed the connection before sending its metadata ({e})") from None
        if isinstance(first, str):
            ws.close()
            raise RemotePolicyError(f"{where} reported an error on connect:\n{first.strip()[-2000:]}")
        try:
            self.metadata = wire.unpackb(first)
        except wire.WireError as e:
            ws.close()
            raise RemotePolicyError(f"{where} sent unreadable metadata ({e})") from None
        self._ws = ws

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - already gone
                pass

    def reset(self) -> None:
        pass

    def infer(self, request: dict) -> dict:
        """One raw request -> the decoded reply dict (openpi's BasePolicy.infer)."""
        from websockets.exceptions import ConnectionClosed
        where = f"openpi server at {self.url}"
        data = wire.packb(request)
        with self._lock:
            for attempt in (0, 1):
                if self._ws is None:
                    self._connect()
                    self.reconnects += 1
                ws = self._ws
                t0 = time.perf_counter()
                try:
                    ws.send(data)
                    reply = ws.recv(timeout=self.timeout)
                except TimeoutError:
                    self.close()            # a late reply would be read as the next one's: start over
                    raise RemotePolicyError(f"{where} did not answer within {self.timeout:g} s "
                                            "(overloaded or hung?); holding position") from None
                except (ConnectionClosed, OSError) as e:
                    self.close()
                    if attempt == 0:
                        continue            # dropped: reconnect and send again, once
                    raise RemotePolicyError(f"{where}: connection lost twice in a row ({e})") from None
                self.last_latency = time.perf_counter() - t0
                if isinstance(reply, str):
                    self.close()            # openpi closes after an error frame; reconnect next call
                    raise RemotePolicyError(f"{where} reported an error: {_last_line(reply)}\n"
                                            f"--- server traceback ---\n{reply.strip()[-3000:]}")
                try:
                    out = wire.unpackb(reply)
                except wire.WireError as e:
                    raise RemotePolicyError(f"{where} sent an unreadable reply ({e})") from None
                if isinstance(out, dict) and isinstance(out.get("server_timing"), dict):
                    self.server_timing = out["server_timing"]
                return out
        raise AssertionError("unreachable")

    # ---- Policy API ---------------------------------------------------------------------------
    def predict(self, obs: dict) -> np.ndarray:
        q = np.asarray(obs["qpos"], float)
        req = self.layout.request(obs, self.profile, fk=self.fk)
        reply = self.infer(req)
        try:
            return self.layout.joints(reply, q, self.profile, 1.0 / self.layout.fps, fk=self.fk, ik=self.ik)
        except PolicyError as e:
            raise RemotePolicyError(f"openpi server at {self.url}: {e}") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(empty error frame)"


# ---- server ---------------------------------------------------------------------------------------

class ObservationError(ValueError):
    """A request does not match the observation the served policy expects."""


class OpenPIServer:
    """Serve a Policy over openpi's websocket protocol (threads: one per connection, one model lock).

    `inject_latency` (s) sleeps before each reply: a test / benchmark knob standing in for a slow
    model. A non-loopback `host` needs a `token` (clients send `Authorization: Api-Key TOKEN`, as
    openpi-client's `api_key` does).
    """

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, *, token: str | None = None,
                 allow_remote: bool = False, inject_latency: float = 0.0, quiet: bool = True):
        check_bind(host, token, allow_remote)
        self.policy = policy
        self.token = token
        self.inject_latency = float(inject_latency)
        self.quiet = quiet
        self.lock = threading.Lock()
        self.requests = 0
        self.layout = layout_for_meta(policy.meta)
        self.metadata = self._metadata()
        from websockets.sync.server import serve
        self._srv = serve(self._handler, host, port, compression=None, max_size=None,
                          process_request=self._process_request)
        self.host, self.port = self._srv.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _metadata(self) -> dict:
        meta, lay = self.policy.meta, self.layout
        obs = {im.key: {"shape": [im.height, im.width, 3], "dtype": "uint8",
                        "what": f"camera '{im.camera}' RGB, HxWx3 (any size is resized)"} for im in lay.images}
        obs["observation/state"] = {"shape": [len(meta.joint_names)], "dtype": "float32",
                                    "what": "joint positions " + ", ".join(meta.joint_names)
                                    + " (rad; gripper in the robot's units)"}
        obs["prompt"] = {"shape": [], "dtype": "str", "what": "the instruction"}
        h, w = meta.image_size
        example = {im.key: np.zeros((h, w, 3), np.uint8) for im in lay.images}
        mean = meta.stats.get("state", {}).get("mean") if meta.stats else None
        example["observation/state"] = np.asarray(mean if mean else np.zeros(len(meta.joint_names)), np.float32)
        example["prompt"] = "pick up the red cube"
        return {"server": "teleop", "protocol": PROTOCOL, "observation": obs,
                "action": {"key": "actions", "shape": [int(meta.chunk_size), int(meta.action_dim)],
                           "dtype": "float32", "kind": "absolute joint targets", "joints": list(meta.joint_names),
                           "units": "rad; gripper in the robot's units (sim7: 0 closed .. 1 open)",
                           "fps": float(meta.fps)},
                "layout": lay.to_dict(), "policy": {k: v for k, v in meta.to_dict().items() if k != "stats"},
                "example_observation": example}

    def _process_request(self, connection, request):
        import http
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.token:
            if request.headers.get("Authorization", "") not in (f"Api-Key {self.token}", f"Bearer {self.token}"):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    def obs_from_request(self, req) -> dict:
        if not isinstance(req, dict):
            raise ObservationError(f"a request must be a dict (the observation), got {type(req).__name__}")
        meta, lay = self.policy.meta, self.layout
        missing = [im.key for im in lay.images if im.key not in req]
        missing += [k for k in ("observation/state", "prompt") if k not in req]
        if missing:
            raise ObservationError(f"observation lacks {missing}; this server expects keys "
                                   f"{list(self.metadata['observation'])} (see its metadata / "
                                   "example_observation)")
        images = {}
        for im in lay.images:
            img = req[im.key]
            if not isinstance(img, np.ndarray) or img.ndim != 3:
                raise ObservationError(f"'{im.key}' must be an HxWx3 uint8 array, got "
                                       f"{type(img).__name__} {getattr(img, 'shape', '')}")
            if img.shape[0] == 3 and img.shape[2] != 3:
                img = img.transpose(1, 2, 0)          # channels-first, as ALOHA clients send
            if img.shape[2] != 3:
                raise ObservationError(f"'{im.key}' must have 3 colour channels, got shape {img.shape}")
            if img.dtype != np.uint8:
                if np.issubdtype(img.dtype, np.floating):
                    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)     # openpi's convert_to_uint8
                else:
                    raise ObservationError(f"'{im.key}' must be uint8 (or float in [0, 1]), got {img.dtype}")
            images[im.camera] = fit_image(img, *meta.image_size, "stretch")
        q = np.asarray(req["observation/state"], float).reshape(-1)
        if q.shape != (len(meta.joint_names),):
            raise ObservationError(f"'observation/state' must have {len(meta.joint_names)} values "
                                   f"({', '.join(meta.joint_names)}), got {q.shape[0]}")
        if not isinstance(req["prompt"], str):
            raise ObservationError(f"'prompt' must be a string, got {type(req['prompt']).__name__}")
        return {"images": images, "qpos": q, "instruction": req["prompt"]}

    def infer(self, req) -> dict:
        obs = self.obs_from_request(req)
        t0 = time.monotonic()
        with self.lock:
            chunk = np.asarray(self.policy.predict(obs), np.float32)
        if self.inject_latency:
            time.sleep(max(0.0, self.inject_latency - (time.monotonic() - t0)))
        self.requests += 1
        return {"actions": chunk if chunk.ndim == 2 else chunk[None],
                "server_timing": {"infer_ms": (time.monotonic() - t0) * 1000}}

    def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed
        try:
            ws.send(wire.packb(self.metadata))
            while True:
                msg = ws.recv()
                try:
                    if isinstance(msg, str):
                        raise ObservationError("requests must be binary msgpack frames, got a text frame")
                    req = wire.unpackb(msg)
                    if isinstance(req, dict) and "__ctrl__" in req:      # openpi's episode markers
                        ws.send(wire.packb({"__ack__": str(req["__ctrl__"])}))
                        continue
                    out = self.infer(req)
                except Exception as e:  # noqa: BLE001 - openpi's way: traceback as text, then close
                    text = (f"{type(e).__name__}: {e}" if isinstance(e, (ObservationError, wire.WireError))
                            else traceback.format_exc())
                    ws.send(text)
                    ws.close(1011, "Internal server error. Traceback included in previous frame.")
                    return
                ws.send(wire.packb(out))
        except ConnectionClosed:
            return

    def serve_forever(self) -> None:
        self._srv.serve_forever()

    def shutdown(self) -> None:
        self._srv.shutdown()

    def server_close(self) -> None:
        try:
            self._srv.socket.close()
        except OSError:
            pass


def check_bind(host: str, token: str | None, allow_remote: bool) -> None:
    """Both servers: only this machine by default; another address needs allow_remote AND a token."""
    if host in LOOPBACK:
        return
    if not allow_remote:
        raise PolicyError(f"refusing to bind {host}: the policy server is reachable from other machines "
                          "there; pass --allow-remote and --token SECRET (or bind 127.0.0.1)")
    if not token:
        raise PolicyError(f"binding {host} needs --token SECRET (clients send it as `Authorization: "
                          "Api-Key SECRET`, openpi-client's api_key)")
