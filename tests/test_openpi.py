"""openpi protocol: our client against a server built on openpi-client's own msgpack_numpy, openpi's own
WebsocketClientPolicy against `teleop serve --protocol openpi` (a real subprocess), layouts."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.server import serve as ws_serve

from drivers.sim import kinematics as kin
from teleop_app.policy import load_policy, wire
from teleop_app.policy.base import PolicyMismatchError
from teleop_app.policy.layouts import LayoutError, load_layout, template_names
from teleop_app.policy.openpi import OpenPIPolicy, OpenPIServer
from teleop_app.policy.remote import RemotePolicyError
from teleop_app.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
SIM7 = load_profile("sim7")


class FakeOpenPIServer:
    """An openpi-style policy server: websockets + openpi_client.msgpack_numpy, openpi's error frames.

    mode: "ok" | "error" (text frame + close, as openpi's server on an exception) | "drop" (close
    without answering) | "slow" (sleep `delay` first). `modes` is consumed one per request."""

    def __init__(self, metadata=None, chunk=10, dim=8):
        self.metadata = {} if metadata is None else metadata
        self.chunk, self.dim = chunk, dim
        self.modes: list[str] = []
        self.delay = 0.0
        self.requests: list[dict] = []
        self.connections = 0
        self.srv = ws_serve(self._handler, "127.0.0.1", 0, compression=None, max_size=None)
        self.url = f"ws://127.0.0.1:{self.srv.socket.getsockname()[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def _handler(self, ws):
        self.connections += 1
        packer = msgpack_numpy.Packer()
        ws.send(packer.pack(self.metadata))
        while True:
            try:
                obs = msgpack_numpy.unpackb(ws.recv())
            except Exception:  # noqa: BLE001 - client went away
                return
            self.requests.append(obs)
            mode = self.modes.pop(0) if self.modes else "ok"
            if mode == "error":
                ws.send("Traceback (most recent call last):\n  File \"policy.py\", line 1\n"
                        "ValueError: state has 8 dims, model wants 14")
                ws.close(1011, "Internal server error. Traceback included in previous frame.")
                return
            if mode == "drop":
                ws.close()
                return
            if mode == "slow":
                time.sleep(self.delay)
            base = np.zeros(self.dim, np.float32)
            state = obs.get("observation/state", obs.get("observation/joint_position"))
            base[: min(len(state), self.dim)] = np.asarray(state, np.float32)[: self.dim]
            ws.send(packer.pack({"actions": np.stack([base + 0.01 * k for k in range(self.chunk)]),
                                 "server_timing": {"infer_ms": 1.0}}))

    def close(self):
        self.srv.shutdown()


@pytest.fixture
def fake():
    servers = []

    def start(**kw):
        s = FakeOpenPIServer(**kw)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.close()


def obs(q=None, size=(48, 64)):
    q = kin.HOME.copy() if q is None else q
    return {"images": {"front": np.full((*size, 3), 5, np.uint8), "wrist": np.full((*size, 3), 9, np.uint8)},
            "qpos": q, "instruction": "pick up the red cube"}


def test_msgpack_frames_match_openpi_client_and_refuse_objects():
    x = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "g": np.int16(3), "s": "hi", "n": {"u": np.ones(2, bool)}}
    y = msgpack_numpy.unpackb(wire.packb(x))
    assert y["a"].dtype == np.float32 and np.array_equal(y["a"], x["a"]) and y["g"] == 3 and y["s"] == "hi"
    z = wire.unpackb(msgpack_numpy.packb(x))
    assert np.array_equal(z["a"], x["a"]) and z["n"]["u"].dtype == bool
    evil = msgpack_numpy.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}})
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.unpackb(evil)
    with pytest.raises(wire.WireError):
        wire.packb({"x": np.array([object()], dtype=object)})
    with pytest.raises(wire.WireError):
        wire.unpackb(b"\xc1 not msgpack")


def test_client_against_openpi_style_server(fake):
    srv = fake(metadata={"server": "somebody's pi0"})
    pol = OpenPIPolicy(srv.url, layout="sim7", profile=SIM7)
    assert pol.metadata == {"server": "somebody's pi0"} and pol.meta.cameras == ["front", "wrist"]
    q = kin.HOME.copy()
    q[0] = 0.3
    out = pol.predict(obs(q))
    assert out.shape == (10, 8) and out[0, 0] == pytest.approx(0.3) and out[9, 0] == pytest.approx(0.39)
    req = srv.requests[0]
    assert set(req) == {"observation/front_image", "observation/wrist_image", "observation/state", "prompt"}
    assert req["observation/front_image"].shape == (64, 64, 3) and req["observation/front_image"].dtype == np.uint8
    assert req["observation/state"].dtype == np.float32 and req["prompt"] == "pick up the red cube"
    assert pol.server_timing == {"infer_ms": 1.0}


def test_droid_layout_keys_and_units(fake):
    srv = fake(dim=8, chunk=15)
    pol = OpenPIPolicy(srv.url, layout="droid", profile=SIM7, fps=15)      # a 15 Hz loop, as DROID's
    out = pol.predict(obs())
    req = srv.requests[0]
    assert set(req) == {"observation/exterior_image_1_left", "observation/wrist_image_left",
                        "observation/joint_position", "observation/gripper_position", "prompt"}
    assert req["observation/exterior_image_1_left"].shape == (224, 224, 3)
    # resize_with_pad: 48x64 -> 168x224 with black bars top and bottom
    assert req["observation/exterior_image_1_left"][0].max() == 0 and req["observation/exterior_image_1_left"][112].min() == 5
    assert req["observation/gripper_position"].tolist() == [0.0]           # sim gripper open = DROID 0
    assert out.shape == (8, 8)                                             # open-loop horizon 8
    # the fake echoes the joints as velocities: target = q + cumsum(clip(v, -1, 1) * 0.2)
    v = np.clip(kin.HOME[:7], -1, 1) * 0.2
    assert np.allclose(out[0, :7], kin.HOME[:7] + v, atol=1e-5)


def test_error_frame_is_a_clear_error_then_reconnects(fake):
    srv = fake()
    pol = OpenPIPolicy(srv.url, layout="sim7")
    srv.modes = ["error"]
    with pytest.raises(RemotePolicyError, match=r"(?s)reported an error: ValueError: state has 8 dims.*server traceback"):
        pol.predict(obs())
    assert pol.predict(obs()).shape == (10, 8)          # next call: a new connection
    assert srv.connections == 2 and pol.reconnects == 1


def test_dropped_connection_reconnects_and_resends(fake):
    srv = fake()
    pol = OpenPIPolicy(srv.url, layout="sim7")
    srv.modes = ["drop"]
    out = pol.predict(obs())
    assert out.shape == (10, 8) and srv.connections == 2 and len(srv.requests) == 2
    srv.modes = ["drop", "drop"]
    with pytest.raises(RemotePolicyError, match="connection lost twice"):
        pol.predict(obs())


def test_slow_reply_times_out_then_recovers(fake):
    srv = fake()
    srv.delay = 1.0
    pol = OpenPIPolicy(srv.url, layout="sim7", timeout=0.3)
    srv.modes = ["slow"]
    t0 = time.monotonic()
    with pytest.raises(RemotePolicyError, match="did not answer within 0.3"):
        pol.predict(obs())
    assert time.monotonic() - t0 < 0.9
    assert pol.predict(obs()).shape == (10, 8)          # the late reply is not mistaken for this one


def test_server_down_and_no_layout_are_clear(fake):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(RemotePolicyError, match="not reachable.*--protocol openpi"):
        load_policy(f"ws://127.0.0.1:{port}", layout="sim7")
    srv = fake()
    with pytest.raises(RemotePolicyError, match="does not describe its observation layout.*--layout"):
        OpenPIPolicy(srv.url)


def test_layout_mismatch_refused_before_anything_moves(fake):
    srv = fake(dim=14)
    with pytest.raises(PolicyMismatchError, match=r"12 arm joints \+ 2 gripper.*7 arm joints.*cam_high.*50 Hz"):
        OpenPIPolicy(srv.url, layout="aloha", profile=SIM7)
    with pytest.raises(PolicyMismatchError, match="runs at 20 Hz, robot 'sim7' at 10 Hz"):
        OpenPIPolicy(srv.url, layout="libero", profile="sim7")
    koch = load_profile("koch")
    with pytest.raises(PolicyMismatchError, match="7 arm joints.*robot 'koch' has 5"):
        OpenPIPolicy(srv.url, layout="sim7", profile=koch)
    assert srv.requests == []                            # not one observation was sent


def test_layout_templates_and_bad_files(tmp_path):
    assert {"aloha", "droid", "libero", "sim7"} <= set(template_names())
    for n in template_names():
        load_layout(n)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[action]\nkind = "teleport"\n')
    with pytest.raises(LayoutError, match="bad.toml.*action.kind 'teleport'"):
        load_layout(bad)
    bad.write_text('name = "x"\n[[images]]\nkey = "a"\ncamera = "front"\ncolour = 1\n')
    with pytest.raises(LayoutError, match=r"unknown field\(s\) \['colour'\] in 'images\[0\]'"):
        load_layout(bad)
    with pytest.raises(LayoutError, match="no layout 'nope'.*aloha"):
        load_layout("nope")


def test_libero_layout_ee_state_and_deltas_through_ik(fake):
    srv = fake(dim=7, chunk=10)
    srv.modes = []
    pol = OpenPIPolicy(srv.url, layout="libero", profile=SIM7, fps=20)
    req = pol.layout.request(obs(), SIM7, fk=pol.fk)
    st = req["observation/state"]
    assert st.shape == (8,) and np.allclose(st[:3], kin.fk(kin.HOME[:7])[:3, 3], atol=1e-5)
    assert np.allclose(st[6:], [0.04, -0.04])           # open fingers
    acts = np.zeros((10, 7))
    acts[:, 2] = -0.2                                   # 1 cm down per step (0.05 m per unit)
    acts[:, 6] = 1.0                                    # close
    q = pol.layout.joints({"actions": acts}, kin.HOME, SIM7, 0.05, fk=pol.fk, ik=pol.ik)
    assert q.shape == (5, 8) and np.all(q[:, 7] == 0.0)
    z = [kin.fk(r[:7])[2, 3] for r in q]
    assert np.allclose(np.diff([kin.fk(kin.HOME[:7])[2, 3], *z]), -0.01, atol=1.5e-3)


# ---- openpi's own client against `teleop serve --protocol openpi` -------------------------------

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture
def served_demo():
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "teleop_app.cli", "serve", "demo", "--protocol", "openpi",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving" in line or proc.poll() is not None:
            break
    assert "serving" in line, f"server did not start: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
    yield f"ws://127.0.0.1:{port}", proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_openpi_client_drives_teleop_serve(served_demo):
    url, proc = served_demo
    client = WebsocketClientPolicy(url)
    md = client.get_server_metadata()
    assert md["server"] == "teleop" and md["protocol"] == "openpi-websocket"
    ex = md["example_observation"]
    assert set(ex) == set(md["observation"]) == {"observation/front_image", "observation/wrist_image",
                                                  "observation/state", "prompt"}
    for k, spec in md["observation"].items():
        if spec["dtype"] != "str":
            assert list(ex[k].shape) == spec["shape"] and str(ex[k].dtype) == spec["dtype"]
    out = client.infer(ex)
    k, d = md["action"]["shape"]
    assert out["actions"].shape == (k, d) == (md["policy"]["chunk_size"], 8) and np.all(np.isfinite(out["actions"]))
    assert out["server_timing"]["infer_ms"] > 0
    # channels-first images (as ALOHA clients send) and a bigger frame are accepted too
    ex2 = dict(ex, **{"observation/front_image": np.zeros((3, 224, 224), np.uint8)})
    assert client.infer(ex2)["actions"].shape == (k, d)
    # a bad observation: openpi's error frame (text), which its client raises as RuntimeError
    with pytest.raises(RuntimeError, match="(?s)Error in inference server.*observation/state.*8 values"):
        client.infer(dict(ex, **{"observation/state": np.zeros(3, np.float32)}))
    # our client: the layout comes from the metadata, the policy runs as any other
    pol = load_policy(url)
    assert pol.meta.cameras == ["front", "wrist"] and pol.layout.action.gripper_raw
    assert pol.predict(obs()).shape == (k, 8)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_non_loopback_bind_needs_option_and_token():
    class P:
        meta = load_policy.__globals__["PolicyMeta"](joint_names=SIM7.joint_names, action_dim=8, fps=10)
    from teleop_app.policy.base import PolicyError
    from teleop_app.policy.server import make_server
    with pytest.raises(PolicyError, match="--allow-remote and --token"):
        OpenPIServer(P(), "0.0.0.0", 0)
    with pytest.raises(PolicyError, match="needs --token"):
        make_server(P(), "0.0.0.0", 0, allow_remote=True)


def test_token_is_checked(fake):
    class P:
        meta = load_policy.__globals__["PolicyMeta"](joint_names=SIM7.joint_names, action_dim=8, fps=10,
                                                      cameras=["front"], chunk_size=2)

        def predict(self, o):
            return np.tile(o["qpos"], (2, 1))
    srv = OpenPIServer(P(), "127.0.0.1", 0, token="s3cret")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RemotePolicyError, match="refused the websocket handshake.*token"):
            OpenPIPolicy(srv.url)
        pol = OpenPIPolicy(srv.url, api_key="s3cret")
        assert pol.predict(obs()).shape == (2, 8)
        assert WebsocketClientPolicy(srv.url, api_key="s3cret").get_server_metadata()["server"] == "teleop"
    finally:
        srv.shutdown()
