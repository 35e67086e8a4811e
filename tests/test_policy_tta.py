"""Test-time shift averaging (checkpoint.VLAPolicy's tta, `teleop eval --tta PX`): the prediction is the mean over
copies of the images shifted +-PX; off by default. Training records the shift its augmentation used."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.train import train  # noqa: E402

from test_policy_pipeline import SIZE, TINY, record  # noqa: E402

KW = dict(batch_size=8, image_size=(SIZE, SIZE), model=TINY, threads=1, checkpoint_every=1000, val_fraction=0.0,
          steps=4, lr=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    record(root / "data", [("pick_red", 21), ("pick_blue", 22)])
    return root


def test_training_records_its_shift_and_the_policy_averages_over_shifted_copies(data, tmp_path):
    for augment, pad, shift in (("strong", 2, 4), ("strong", 6, 6), ("basic", 3, 3), ("none", 2, 0)):
        out = tmp_path / f"{augment}{pad}.pt"
        train(data / "data", out, augment=augment, aug_shift=pad, **KW)
        assert torch.load(out, weights_only=True)["train"]["aug_shift"] == shift
        assert load_policy(str(out)).tta == 0                    # off unless asked for
    ck = str(tmp_path / "strong2.pt")
    pol, raw = load_policy(ck, tta=4), load_policy(ck)
    img = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    obs = {"images": {"front": img}, "qpos": np.asarray(pol.meta.stats["state"]["mean"]) + 0.1,
           "instruction": "pick up the red cube"}
    got, single = pol.predict(obs), raw.predict(obs)
    assert got.shape == single.shape and np.all(np.isfinite(got))
    assert not np.allclose(got, single, atol=1e-5)            # the shifted copies change the prediction
    # the same average built independently: numpy edge-padded shifts, each through the plain policy (the output
    # is affine in the network's, so the mean of predictions is the prediction of the mean)
    d = 4
    padded = np.pad(img, ((d, d), (d, d), (0, 0)), mode="edge")
    copies = [padded[d + d * dy:d + d * dy + SIZE, d + d * dx:d + d * dx + SIZE]
              for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
    assert len({c.tobytes() for c in copies}) == 5
    manual = np.mean([raw.predict({**obs, "images": {"front": c}}) for c in copies], 0)
    np.testing.assert_allclose(got, manual, atol=1e-4)
    assert not np.allclose(load_policy(ck, tta=8).predict(obs), got, atol=1e-5)


def test_bad_shifts_are_refused():
    assert load_policy("demo").tta == 0 and load_policy("demo", tta=2).tta == 2
    for bad in (-1, 17):
        with pytest.raises(PolicyError, match="test-time shift"):
            load_policy("demo", tta=bad)


def test_eval_refuses_tta_for_a_policy_server(capsys):
    import argparse
    from teleop_app.policy.cli import add_commands
    ap = argparse.ArgumentParser(prog="teleop")
    add_commands(ap.add_subparsers(dest="cmd"))
    for url in ("http://127.0.0.1:9", "ws://127.0.0.1:9"):
        a = ap.parse_args(["eval", url, "--tta", "2"])
        assert a.fn(a) != 0
        assert "drop --tta" in capsys.readouterr().err
