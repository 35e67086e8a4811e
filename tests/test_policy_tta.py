"""Test-time shift averaging (checkpoint.VLAPolicy's tta): the policy's prediction is the mean over copies of its
images shifted by the training augmentation's range, which the checkpoint records (older ones: read off their
augmentation mode); 0 turns it off."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.checkpoint import VLAPolicy  # noqa: E402
from teleop_app.policy.train import train  # noqa: E402

from test_policy_pipeline import SIZE, TINY, record  # noqa: E402

KW = dict(batch_size=8, image_size=(SIZE, SIZE), model=TINY, threads=1, checkpoint_every=1000, val_fraction=0.0,
          steps=4, lr=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    record(root / "data", [("pick_red", 21), ("pick_blue", 22)])
    return root


def _obs(pol, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return {"images": {"front": img}, "qpos": np.asarray(pol.meta.stats["state"]["mean"]) + 0.1,
            "instruction": "pick up the red cube"}


def test_checkpoint_records_its_training_shift_and_the_policy_averages_over_it(data, tmp_path):
    # recorded: the shift each augmentation used; on by default after the strong one only (measured there)
    for augment, pad, shift, default in (("strong", 2, 4, 4), ("strong", 6, 6, 6), ("basic", 3, 3, 0),
                                         ("none", 2, 0, 0)):
        out = tmp_path / f"{augment}{pad}.pt"
        train(data / "data", out, augment=augment, aug_shift=pad, **KW)
        assert torch.load(out, weights_only=True)["train"]["aug_shift"] == shift
        assert load_policy(str(out)).tta == default
    assert load_policy(str(tmp_path / "basic3.pt"), tta=3).tta == 3
    pol, raw = load_policy(str(tmp_path / "strong2.pt")), load_policy(str(tmp_path / "strong2.pt"), tta=0)
    obs = _obs(pol)
    got, single = pol.predict(obs), raw.predict(obs)
    assert got.shape == single.shape and np.all(np.isfinite(got))
    assert not np.allclose(got, single, atol=1e-5)            # the shifted copies change the prediction
    # the same average built independently: numpy edge-padded shifts, each through the plain policy (the output
    # is affine in the network's, so the mean of predictions is the prediction of the mean)
    d, img = 4, obs["images"]["front"]
    padded = np.pad(img, ((d, d), (d, d), (0, 0)), mode="edge")
    copies = [padded[d + d * dy:d + d * dy + SIZE, d + d * dx:d + d * dx + SIZE]
              for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
    assert len({c.tobytes() for c in copies}) == 5
    manual = np.mean([raw.predict({**obs, "images": {"front": c}}) for c in copies], 0)
    np.testing.assert_allclose(got, manual, atol=1e-4)
    # a larger shift than trained is the operator's choice, and gives another average
    assert not np.allclose(load_policy(str(tmp_path / "strong2.pt"), tta=8).predict(obs), got, atol=1e-5)


def test_checkpoints_from_before_the_shift_was_recorded_and_bad_shifts(data, tmp_path):
    demo = load_policy("demo")        # the basic augmentation (+-2 px), before aug_shift was recorded: off
    assert isinstance(demo, VLAPolicy) and demo.tta == 0
    assert load_policy("demo", tta=2).tta == 2
    train(data / "data", tmp_path / "s.pt", augment="strong", **KW)
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    del blob["train"]["aug_shift"]                   # an older strong-augmentation checkpoint: +-4 px
    torch.save(blob, tmp_path / "old.pt")
    assert load_policy(str(tmp_path / "old.pt")).tta == 4
    del blob["train"]["augment"]                     # nothing known about its augmentation: off
    torch.save(blob, tmp_path / "older.pt")
    assert load_policy(str(tmp_path / "older.pt")).tta == 0
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


def test_the_shift_is_said_where_the_policy_runs_in_its_child_process(data, tmp_path):
    from teleop_app.policy.child import ChildPolicy
    from teleop_app.profiles import load_profile
    ck = tmp_path / "strong.pt"
    train(data / "data", ck, augment="strong", **KW)
    pol = ChildPolicy(str(ck), profile=load_profile("sim7"))      # a real inference process, as the GUI loads it
    try:
        assert pol.meta.extra["tta"] == 4
        obs = {"images": {"front": np.full((SIZE, SIZE, 3), 90, np.uint8)}, "qpos": np.full(8, 0.1),
               "instruction": "pick up the red cube"}
        assert np.all(np.isfinite(pol.predict(obs)))
    finally:
        pol.close()


def test_one_place_tells_a_server_from_a_checkpoint():
    from teleop_app.policy.base import policy_source
    assert [policy_source(s) for s in ("http://h:8000", "https://h", " ws://h:8000", "wss://h", "demo",
                                       "runs/vla.pt", "http.pt")] == \
        ["openvla", "openvla", "openpi", "openpi", "checkpoint", "checkpoint", "checkpoint"]
