"""Remote VLA client <-> the project's own server over loopback (real HTTP, real sockets)."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from drivers.sim import kinematics as kin
from teleop_app.policy import wire
from teleop_app.policy.base import PolicyMeta, load_policy
from teleop_app.policy.remote import RemotePolicy, RemotePolicyError, ee_delta_to_joints, rpy_matrix
from teleop_app.policy.server import make_server

NAMES = [f"joint{i}" for i in range(1, 8)] + ["gripper"]


class FakePolicy:
    """Chunk whose first row encodes what it saw (so the test checks the request arrived intact)."""

    def __init__(self, action_dim=8, delay=0.0, fail=False, chunk=4):
        self.meta = PolicyMeta(joint_names=NAMES, action_dim=action_dim, fps=10, cameras=["front"],
                               chunk_size=chunk, kind="fake")
        self.delay, self.fail, self.seen = delay, fail, []

    def reset(self):
        pass

    def predict(self, obs):
        self.seen.append(obs)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        base = np.zeros(self.meta.action_dim)
        base[0] = obs["images"]["front"].mean()
        base[1] = len(obs["instruction"])
        base[2] = obs["qpos"][0]
        return np.stack([base + k for k in range(self.meta.chunk_size)])


@pytest.fixture
def serve():
    servers = []

    def start(policy):
        srv = make_server(policy, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def obs(val=7, q0=0.25):
    q = kin.HOME.copy()
    q[0] = q0
    return {"images": {"front": np.full((32, 32, 3), val, np.uint8)}, "qpos": q, "instruction": "pick up"}


def test_wire_roundtrip_and_rejects_objects():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = wire.loads(wire.dumps({"x": a, "s": np.int64(5)}))
    assert b["x"].dtype == np.float32 and np.array_equal(b["x"], a) and b["s"] == 5
    enc = wire.encode_array(a)
    assert set(enc) == {"__numpy__", "dtype", "shape"} and enc["dtype"] == "<f4"
    with pytest.raises(wire.WireError):
        wire.decode_array({"__numpy__": enc["__numpy__"], "dtype": "|O", "shape": [3, 4]})
    with pytest.raises(wire.WireError):
        wire.encode_array(np.array([object()]))


def test_joint_chunk_over_loopback(serve):
    pol = FakePolicy()
    srv = serve(pol)
    client = RemotePolicy(srv.url, action_mode="joint")
    out = client.predict(obs(val=9, q0=0.3))
    assert out.shape == (4, 8)
    assert out[0, 0] == pytest.approx(9) and out[0, 1] == len("pick up") and out[0, 2] == pytest.approx(0.3)
    assert out[3, 0] == pytest.approx(12)
    assert pol.seen[0]["images"]["front"].shape == (32, 32, 3)
    # keep-alive connection reused for a second request
    assert client.predict(obs(val=1))[0, 0] == pytest.approx(1)
    assert srv.requests == 2
    client.close()


def test_joint_mode_learns_cameras_from_server_and_sends_all(serve):
    pol = FakePolicy()
    pol.meta.cameras = ["front", "wrist"]
    srv = serve(pol)
    client = RemotePolicy(srv.url, action_mode="joint")
    assert client.meta.cameras == ["front", "wrist"] and client.meta.chunk_size == 4
    o = obs(val=3)
    o["images"]["wrist"] = np.full((16, 16, 3), 5, np.uint8)
    client.predict(o)
    seen = pol.seen[-1]["images"]
    assert seen["front"].mean() == 3 and seen["wrist"].shape == (16, 16, 3) and seen["wrist"].mean() == 5


def test_openvla_style_reply_is_single_action(serve):
    srv = serve(FakePolicy())
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    body = wire.dumps({"image": np.zeros((8, 8, 3), np.uint8), "instruction": "x", "qpos": np.zeros(8)})
    c.request("POST", "/act", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    a = wire.loads(r.read())
    assert r.status == 200 and isinstance(a, np.ndarray) and a.shape == (8,)
    c.request("GET", "/health")
    r = c.getresponse()
    h = wire.loads(r.read())
    assert r.status == 200 and h["meta"]["joint_names"] == NAMES


def test_server_error_is_json_500(serve):
    srv = serve(FakePolicy(fail=True))
    client = RemotePolicy(srv.url, action_mode="joint")
    with pytest.raises(RemotePolicyError, match=r"HTTP 500.*model exploded"):
        client.predict(obs())


def test_bad_request_is_json_400(serve):
    srv = serve(FakePolicy())
    client = RemotePolicy(srv.url, action_mode="joint", send_qpos=False)
    with pytest.raises(RemotePolicyError, match=r"HTTP 400.*qpos"):
        client.predict(obs())


def test_server_down_gives_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(RemotePolicyError, match="not reachable.*serve"):
        RemotePolicy(f"http://127.0.0.1:{port}", action_mode="joint", timeout=1)   # asks /health first
    client = RemotePolicy(f"http://127.0.0.1:{port}", timeout=1)                   # OpenVLA mode
    with pytest.raises(RemotePolicyError, match="not reachable.*serve"):
        client.predict(obs())


def test_timeout(serve):
    srv = serve(FakePolicy(delay=1.5))
    client = RemotePolicy(srv.url, action_mode="joint", timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(RemotePolicyError, match="did not answer within 0.3"):
        client.predict(obs())
    assert time.monotonic() - t0 < 1.4


def test_load_policy_url_and_ee_delta_through_ik(serve):
    """OpenVLA-style 7-D EE delta -> joint targets through the (pluggable) IK."""
    class DeltaPolicy(FakePolicy):
        def predict(self, o):
            return np.array([[0.02, -0.01, -0.03, 0.0, 0.0, 0.1, 0.0]])
    srv = serve(DeltaPolicy(action_dim=7))
    client = load_policy(srv.url, send_qpos=True)          # default: ee_delta + sim kinematics
    assert isinstance(client, RemotePolicy)
    o = obs(q0=0.0)
    target = client.predict(o)[0]
    assert target.shape == (8,) and target[7] == 0.0        # gripper 0 = close
    t0, t1 = kin.fk(o["qpos"][:7]), kin.fk(target[:7])
    assert np.allclose(t1[:3, 3] - t0[:3, 3], [0.02, -0.01, -0.03], atol=2e-3)
    assert np.allclose(t1[:3, :3], rpy_matrix(0, 0, 0.1) @ t0[:3, :3], atol=2e-2)
    # a custom IK callable is used as given
    calls = []

    def my_ik(pos, rot, q_init):
        calls.append(pos)
        return np.asarray(q_init) + 0.01
    out = ee_delta_to_joints(np.array([0, 0, 0.01, 0, 0, 0, 1.0]), o["qpos"], lambda q: kin.fk(q), my_ik)
    assert calls and np.allclose(out[:7], o["qpos"][:7] + 0.01) and out[7] == 1.0
