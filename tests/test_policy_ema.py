"""Weight EMA in training (`teleop train --ema DECAY`): the checkpoint's weights are the moving average of the
trained ones, training resumes from the trained ones (not the average), and the policy runs the average."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.train import train  # noqa: E402

from test_policy_pipeline import SIZE, TINY, record  # noqa: E402

KW = dict(batch_size=8, image_size=(SIZE, SIZE), model=TINY, threads=1, checkpoint_every=1000, val_fraction=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    record(root / "data", [("pick_red", 11), ("pick_blue", 12)])
    return root


def test_ema_checkpoint_holds_the_average_and_resumes_from_the_trained_weights(data, tmp_path):
    out = tmp_path / "ema.pt"
    train(data / "data", out, steps=6, ema=0.5, lr=1e-2, **KW)
    blob = torch.load(out, weights_only=True)
    assert blob["train"]["ema"] == 0.5
    avg, raw = blob["state_dict"], blob["train_state_dict"]
    assert set(avg) == set(raw)
    moved = [k for k in avg if not torch.equal(avg[k], raw[k])]
    assert moved                                     # the average lags the trained weights
    # the same seed without EMA ends on the trained weights: what ema=0.5 kept as train_state_dict
    train(data / "data", tmp_path / "plain.pt", steps=6, lr=1e-2, **KW)
    plain = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert "train_state_dict" not in plain
    for k in raw:
        torch.testing.assert_close(raw[k], plain["state_dict"][k])
    # the policy runs the average
    pol = load_policy(str(out))
    net_sd = pol.model.state_dict()
    assert all(torch.equal(net_sd[k], avg[k]) for k in avg)
    obs = {"images": {"front": np.full((SIZE, SIZE, 3), 80, np.uint8)},
           "qpos": np.asarray(pol.meta.stats["state"]["mean"]), "instruction": "pick up the red cube"}
    assert np.all(np.isfinite(pol.predict(obs)))
    # resuming continues from the trained weights, and the average from the saved average: one more step at
    # learning rate 0 leaves the trained weights as they were and moves the average half way to them
    train(data / "data", out, steps=7, ema=0.5, lr=0.0, **KW)
    again = torch.load(out, weights_only=True)
    assert again["train"]["step"] == 7
    for k in raw:
        torch.testing.assert_close(again["train_state_dict"][k], raw[k])
        torch.testing.assert_close(again["state_dict"][k], (avg[k] + raw[k]) / 2)


def test_ema_refusals(data, tmp_path):
    with pytest.raises(ValueError, match="ema must be a decay"):
        train(data / "data", tmp_path / "x.pt", steps=2, ema=1.0, **KW)
    train(data / "data", tmp_path / "base.pt", steps=2, **KW)
    with pytest.raises(PolicyError, match="LoRA"):
        train(data / "data", tmp_path / "lora.pt", steps=2, ema=0.9, init=tmp_path / "base.pt", batch_size=8,
              threads=1, checkpoint_every=1000, val_fraction=0.0)
