"""Serve any local checkpoint over OpenVLA's deploy.py protocol (stdlib HTTP, no pickle on the wire).

    POST /act  {"image": HxWx3 uint8, "instruction": str,           <- OpenVLA fields
                "images": {cam: HxWx3}, "qpos": (D,), "return_chunk": bool}   <- extensions
      -> 200: the first action (D,) as a json_numpy array, or {"action": (K, D)} with return_chunk
      -> 400 / 500: {"error": "..."} (bad request / the policy failed)
    GET /health -> {"ok": true, "meta": PolicyMeta}

Binds 127.0.0.1 by default; another address needs allow_remote and a token, which clients send as
`Authorization: Bearer TOKEN` (or `Api-Key TOKEN`). `serve(..., protocol="openpi")` serves the same
checkpoint over openpi's websocket protocol instead (openpi.OpenPIServer).

Our policies output absolute joint targets (not OpenVLA's 7-D EE delta), so clients use
RemotePolicy(action_mode="joint"). Inference is serialised with a lock (one model, many clients).
"""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from . import wire
from .base import Policy

MAX_BODY = 64 * 1024 * 1024


class _BadRequest(ValueError):
    pass


class PolicyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True, *,
                 token: str | None = None, allow_remote: bool = False, inject_latency: float = 0.0):
        from .openpi import check_bind
        check_bind(host, token, allow_remote)
        self.policy = policy
        self.quiet = quiet
        self.token = token
        self.inject_latency = float(inject_latency)
        self.lock = threading.Lock()
        self.requests = 0
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        h, p = self.server_address[:2]
        return f"http://{h}:{p}"

    def act(self, payload) -> object:
        if not isinstance(payload, dict):
            raise _BadRequest("request body must be a JSON object {'image': ..., 'instruction': ...}")
        if "encoded" in payload and len(payload) == 1:          # deploy.py's double-encoded variant
            payload = wire.loads(payload["encoded"])
        meta = self.policy.meta
        images = payload.get("images")
        if images is None:
            if "image" not in payload:
                raise _BadRequest("missing 'image' (HxWx3 uint8 array, json_numpy encoded)")
            images = {meta.cameras[0]: payload["image"]}
        if not isinstance(images, dict):
            raise _BadRequest("'images' must map camera name -> image array")
        for cam in meta.cameras:
            img = images.get(cam)
            if img is None:
                raise _BadRequest(f"this policy needs camera(s) {meta.cameras}; send them as "
                                  f"'images': {{name: array}} (got {sorted(images)})")
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
                raise _BadRequest(f"image '{cam}' must be an HxWx3 uint8 array, got {type(img).__name__} "
                                  f"{getattr(img, 'shape', '')}")
        instruction = payload.get("instruction")
        if not isinstance(instruction, str):
            raise _BadRequest("missing 'instruction' (string)")
        qpos = payload.get("qpos")
        if qpos is None:
            raise _BadRequest(f"this policy needs the joint state: send 'qpos' ({len(meta.joint_names)} "
                              f"values: {', '.join(meta.joint_names)})")
        qpos = np.asarray(qpos, float).reshape(-1)
        if qpos.shape != (len(meta.joint_names),):
            raise _BadRequest(f"'qpos' must have {len(meta.joint_names)} values, got {qpos.shape[0]}")
        obs = {"images": {c: np.asarray(images[c], np.uint8) for c in meta.cameras}, "qpos": qpos,
               "instruction": instruction}
        t0 = time.monotonic()
        with self.lock:
            chunk = np.asarray(self.policy.predict(obs), np.float64)
        if self.inject_latency:
            time.sleep(max(0.0, self.inject_latency - (time.monotonic() - t0)))
        self.requests += 1
        if chunk.ndim == 1:
            chunk = chunk[None]
        if payload.get("return_chunk"):
            return {"action": chunk}
        return chunk[0]


class _Handler(BaseHTTPRequestHandler):
    server: PolicyServer
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # reply headers and body are separate writes: avoid Nagle + delayed-ACK stalls (~40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # noqa: D401 - keep test output clean unless asked
        if not self.server.quiet:
            super().log_message(fmt, *args)

    def _send(self, status: int, obj) -> None:
        body = wire.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True     # the client gave up (timeout): nothing to answer

    def _authorized(self) -> bool:
        tok = self.server.token
        if not tok or self.headers.get("Authorization", "") in (f"Bearer {tok}", f"Api-Key {tok}"):
            return True
        self._send(401, {"error": "missing or wrong token (send 'Authorization: Bearer TOKEN')"})
        return False

    def do_GET(self):  # noqa: N802
        if not self._authorized():
            return
        if self.path.rstrip("/") in ("", "/health"):
            self._send(200, {"ok": True, "meta": self.server.policy.meta.to_dict()})
        else:
            self._send(404, {"error": f"no such endpoint {self.path}; use POST /act or GET /health"})

    def do_POST(self):  # noqa: N802
        if not self._authorized():
            return
        if self.path.rstrip("/") != "/act":
            self._send(404, {"error": f"no such endpoint {self.path}; use POST /act"})
            return
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if n <= 0 or n > MAX_BODY:
            self._send(400, {"error": f"request needs a JSON body of 1..{MAX_BODY} bytes (Content-Length {n})"})
            return
        try:
            payload = wire.loads(self.rfile.read(n))
            out = self.server.act(payload)
        except (wire.WireError, _BadRequest) as e:
            self._send(400, {"error": str(e)})
            return
        except Exception as e:  # noqa: BLE001 - the policy failed: report it, keep serving
            self._send(500, {"error": f"policy failed: {type(e).__name__}: {e}"})
            return
        self._send(200, out)


def make_server(policy: Policy, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True,
                **kw) -> PolicyServer:
    """Bound server, not yet serving (port 0 = any free port; see .url). Run .serve_forever().
    kw: token, allow_remote, inject_latency (s, a test / benchmark stand-in for a slow model)."""
    return PolicyServer(policy, host, port, quiet, **kw)


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
          ready: threading.Event | None = None, *, protocol: str = "http", token: str | None = None,
          allow_remote: bool = False, inject_latency: float = 0.0) -> None:
    """Load a checkpoint (or "demo") and serve it until interrupted (Ctrl+C / SIGTERM)."""
    import signal
    from .base import load_policy
    policy = load_policy(str(checkpoint))
    _warm_up(policy)
    kw = {"token": token, "allow_remote": allow_remote, "inject_latency": inject_latency}
    if protocol == "openpi":
        from .openpi import OpenPIServer
        srv = OpenPIServer(policy, host, port, quiet=quiet, **kw)
        where = f"{srv.url} (openpi websocket protocol)"
    elif protocol == "http":
        srv = make_server(policy, host, port, quiet, **kw)
        where = f"{srv.url}/act (OpenVLA deploy.py protocol)"
    else:
        raise ValueError(f"protocol must be 'http' or 'openpi', got {protocol!r}")
    m = policy.meta
    lat = f", injected latency {inject_latency * 1000:g} ms" if inject_latency else ""
    print(f"serving {checkpoint} on {where}: cameras {m.cameras}, {m.action_dim}-D joint targets, "
          f"chunk {m.chunk_size}{lat}; Ctrl+C stops", flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)        # SIGTERM stops it like Ctrl+C
    if ready is not None:
        ready.set()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if protocol == "openpi":
            srv.shutdown()          # closes open connections (their handler threads are not daemons)
        srv.server_close()


def _warm_up(policy) -> None:
    """One inference before serving, so the first client's first request is not the slow one."""
    m = policy.meta
    h, w = m.image_size
    mean = (m.stats or {}).get("state", {}).get("mean") or [0.0] * len(m.joint_names)
    try:
        policy.predict({"images": {c: np.zeros((h, w, 3), np.uint8) for c in m.cameras},
                        "qpos": np.asarray(mean, float), "instruction": "warm up"})
    except Exception:  # noqa: BLE001 - a real request will report the problem
        pass


def _interrupt(*_):
    raise KeyboardInterrupt
