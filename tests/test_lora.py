"""Fine-tuning from a base checkpoint: LoRA adapters (peft) train a small fraction of the weights,
the saved file holds the adapters merged into the base (loads with weights_only, runs without peft),
records the base and the trained parameter count; --full trains every weight; refusals are clear."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.train import finetune_targets, train  # noqa: E402

from test_policy_pipeline import SIZE, TINY, record  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    record(root / "base_data", [("pick_red", 11), ("pick_red", 13)])
    record(root / "new_data", [("pick_blue", 12), ("pick_blue", 14)])     # a new instruction
    r = train(root / "base_data", root / "base.pt", steps=30, batch_size=8, image_size=(SIZE, SIZE), model=TINY,
              threads=1, checkpoint_every=1000, val_fraction=0.0)
    return root, r


def test_lora_trains_adapters_only_and_saves_merged(base):
    root, rb = base
    before = torch.load(root / "base.pt", weights_only=True)["state_dict"]
    phases = []
    r = train(root / "new_data", root / "lora.pt", steps=20, batch_size=8, init=root / "base.pt", threads=1,
              checkpoint_every=1000, val_fraction=0.0, lr=5e-3, progress=phases.append)
    assert 0 < r.trained_params < 0.5 * r.total_params
    assert r.total_params == rb.total_params
    model_phase = next(p for p in phases if p["phase"] == "model")
    assert model_phase["method"] == "lora" and model_phase["trained_params"] == r.trained_params
    blob = torch.load(root / "lora.pt", weights_only=True)       # plain tensors only: no code runs
    ft = blob["finetune"]
    assert ft["method"] == "lora" and ft["base"] == str(root / "base.pt") and len(ft["base_sha256"]) == 64
    assert ft["trained_params"] == r.trained_params and "head" in ft["targets"]
    sd = blob["state_dict"]
    assert set(sd) == set(before)                    # merged: same keys as the base, no lora_A / lora_B
    changed = {k for k in sd if not torch.equal(sd[k], before[k])}
    assert changed and all(k.startswith(("transformer.", "head", "film.")) for k in changed), changed
    assert not any(k.startswith("encoders.") for k in changed)     # the vision encoder stayed frozen
    assert blob["meta"]["extra"]["instructions"] == ["pick up the blue cube", "pick up the red cube"]
    pol = load_policy(str(root / "lora.pt"))
    obs = {"images": {"front": np.zeros((SIZE, SIZE, 3), np.uint8)}, "qpos": np.asarray(pol.meta.stats["state"]["mean"]),
           "instruction": "pick up the blue cube"}
    assert np.all(np.isfinite(pol.predict(obs)))


def test_full_finetune_trains_everything_and_refusals(base, tmp_path):
    root, rb = base
    r = train(root / "new_data", tmp_path / "full.pt", steps=5, batch_size=8, init=root / "base.pt", full=True,
              threads=1, checkpoint_every=1000, val_fraction=0.0)
    assert r.trained_params == r.total_params == rb.total_params
    assert torch.load(tmp_path / "full.pt", weights_only=True)["finetune"]["method"] == "full"
    with pytest.raises(PolicyError, match="always starts from the base"):
        train(root / "new_data", tmp_path / "full.pt", steps=5, init=root / "base.pt", threads=1)
    with pytest.raises(PolicyError, match="cannot fine-tune"):
        train(root / "new_data", tmp_path / "x.pt", steps=5, init=tmp_path / "missing.pt", threads=1)


def test_targets_cover_fusion_head_and_conditioning():
    from teleop_app.policy.model import ModelConfig, VLAModel
    net = VLAModel(ModelConfig(vocab_size=10, n_layers=2, text_encoder="minilm", **{k: v for k, v in TINY.items()
                                                                                     if k != "n_layers"}))
    t = finetune_targets(net)
    assert {"head", "film.0", "film.2", "text_proj.0", "text_proj.2", "transformer.layers.1.linear2"} <= set(t)
    assert not any(x.startswith("encoders") for x in t)


def test_lora_vision_adapts_the_camera_encoders_and_merges_exactly(base, tmp_path):
    """--lora-vision: adapters on every convolution / linear layer of the vision encoders as well; merging
    them back gives the adapted model's output, and the saved file's encoder weights changed."""
    root, rb = base
    import copy
    from peft import LoraConfig, get_peft_model
    from teleop_app.policy.model import ModelConfig, VLAModel
    torch.manual_seed(0)
    net = VLAModel(ModelConfig(vocab_size=10, image_size=(SIZE, SIZE), **TINY))
    t = finetune_targets(net, vision=True)
    assert set(finetune_targets(net)) < set(t)
    assert {"encoders.0.stem.0", "encoders.0.blocks.0.conv", "encoders.0.proj", "encoders.0.kp_conv",
            "encoders.0.kp_mlp.0"} <= set(t)
    pm = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=t))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)           # adapters that do something (peft starts B at zero)
        x = (torch.rand(2, 1, 3, SIZE, SIZE), torch.randint(1, 10, (2, 12)), torch.randn(2, 8))
        # the adapted model as training runs it (in eval mode torch's fused encoder-layer path reads the
        # feed-forward weights directly and skips their adapters; merging puts them into those weights)
        pm.train()
        adapted = pm(*x)
        merged = copy.deepcopy(pm).merge_and_unload().eval()
        with pm.disable_adapter():
            assert not torch.allclose(adapted, pm(*x), atol=1e-3)
        torch.testing.assert_close(merged(*x), adapted, atol=1e-5, rtol=1e-4)
    before = torch.load(root / "base.pt", weights_only=True)["state_dict"]
    r_plain = train(root / "new_data", tmp_path / "lora.pt", steps=20, batch_size=8, init=root / "base.pt",
                    threads=1, checkpoint_every=1000, val_fraction=0.0, lr=5e-3)
    r = train(root / "new_data", tmp_path / "lora_vision.pt", steps=20, batch_size=8, init=root / "base.pt",
              threads=1, checkpoint_every=1000, val_fraction=0.0, lr=5e-3, lora_vision=True)
    assert r_plain.trained_params < r.trained_params < 0.5 * r.total_params
    blob = torch.load(tmp_path / "lora_vision.pt", weights_only=True)
    assert blob["finetune"]["lora_vision"] is True and "encoders.0.stem.0" in blob["finetune"]["targets"]
    sd = blob["state_dict"]
    assert set(sd) == set(before)
    changed = {k for k in sd if not torch.equal(sd[k], before[k])}
    assert any(k.startswith("encoders.0.stem.0") for k in changed)
    assert any(k.startswith("encoders.0.kp_conv") for k in changed)
    # nothing but adapted layers moved (GroupNorm, positional parameters and queries stay the base's)
    assert not any(".norm." in k or k.endswith(("img_pos", "queries", "type_emb")) for k in changed), changed
    pol = load_policy(str(tmp_path / "lora_vision.pt"))
    obs = {"images": {"front": np.full((SIZE, SIZE, 3), 90, np.uint8)},
           "qpos": np.asarray(pol.meta.stats["state"]["mean"]), "instruction": "pick up the blue cube"}
    assert np.all(np.isfinite(pol.predict(obs)))


def test_cli_refuses_lora_vision_without_a_base(tmp_path, capsys):
    from teleop_app.cli import main
    rc = main(["train", str(tmp_path / "data"), str(tmp_path / "x.pt"), "--lora-vision"])
    assert rc != 0
    assert "--lora-vision" in capsys.readouterr().err
