"""The VLA's target keypoint (train.target_labels, `teleop train --target-weight`): one spatial-softmax keypoint
of each camera is trained to sit on the object the instruction names. Its labels are where the demo grasps the
object (read off the demo), projected through the simulated workcell's cameras with each episode's own camera
jitter; a model trained with them, loaded and rolled; a clear refusal for recordings without camera geometry.

Real parts: the MuJoCo workcell and its scripted expert through the one control pipeline, domain randomisation,
the crash-safe recorder, HDF5 files read back, torch training on the CPU, the checkpoint loader.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mujoco")

from drivers.sim.objects import COLOURS  # noqa: E402
from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.checkpoint import read_checkpoint  # noqa: E402
from teleop_app.policy.dataset import load_dataset  # noqa: E402
from teleop_app.policy.generalization import (first_observations, record_scenes, split_scenes,  # noqa: E402
                                              target_check)
from teleop_app.policy.model import ModelConfig, keypoint_to_pixel  # noqa: E402
from teleop_app.policy.train import robot_chain, target_labels, train  # noqa: E402

SIZE = 64
TINY = dict(channels=(8, 16, 16), d_model=32, n_layers=1, n_heads=2, grid=2, keypoints=8)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("target") / "data"
    # randomised: every episode has its own camera jitter, which the labels must rebuild from the seed
    paths = record_scenes(root, split_scenes(["train"], 3), image_size=SIZE, cameras=("front", "wrist"),
                          randomize=True)
    assert len(paths) == 3
    return root


def _distance_to_colour(img, rgb, u, v):
    """pixels from (u, v) to the nearest pixel of about that colour (inf when none is in the image)."""
    ys, xs = np.nonzero(np.linalg.norm(img.astype(float) - np.asarray(rgb, float), axis=-1) < 60)
    return float(np.min(np.hypot(xs - u, ys - v))) if len(xs) else np.inf


def test_target_labels_sit_on_the_named_object_in_both_cameras(demos):
    ds = load_dataset(demos, ["front", "wrist"], (SIZE, SIZE), "train", 0.0)
    cfg = ModelConfig(vocab_size=2, image_size=(SIZE, SIZE))
    p, ok = target_labels(ds, robot_chain(ds, "test"), cfg)
    n = sum(len(e.qpos) for e in ds.episodes)
    assert p.shape == (n, 2, 2) and ok.shape == (n, 2)
    assert ok[:, 0].all()                       # the fixed front camera sees the whole table
    assert ok[:, 1].mean() > 0.5
    u, v = keypoint_to_pixel(p, cfg).transpose(2, 0, 1)
    own, other = {0: [], 1: []}, {0: [], 1: []}
    off = 0
    for i, e in enumerate(ds.episodes):
        rgb = COLOURS[e.extra["target"].split("_")[0]]
        wrong = ds.episodes[(i + 1) % len(ds.episodes)]            # the same labels on another scene's images
        for ci, cam in enumerate(ds.cameras):
            for t in range(0, min(len(e.qpos), len(wrong.qpos)), 3):
                if ok[off + t, ci]:
                    own[ci].append(_distance_to_colour(e.images[cam][t], rgb, u[off + t, ci], v[off + t, ci]))
                    other[ci].append(_distance_to_colour(wrong.images[cam][t], rgb, u[off + t, ci], v[off + t, ci]))
        off += len(e.qpos)
    for ci in (0, 1):
        assert np.median(own[ci]) <= 1.5, (ds.cameras[ci], np.median(own[ci]))
        assert np.median(other[ci]) > 2 * max(np.median(own[ci]), 1.0), (ds.cameras[ci], np.median(other[ci]))


def test_train_with_the_target_loss_learns_where_the_object_is(demos, tmp_path):
    kw = dict(batch_size=8, lr=3e-3, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0, model=TINY, warmup=5,
              threads=1, resume=False, cameras=["front", "wrist"], augment="strong", target_weight=1.0)
    short = tmp_path / "short.pt"
    train(demos, short, steps=10, **kw)
    b = read_checkpoint(short)
    assert b["train"]["target_weight"] == 1.0 and np.isfinite(b["train"]["target_loss"])
    # the keypoint learns: trained longer, its error falls well below where it started
    long = tmp_path / "long.pt"
    train(demos, long, steps=300, **kw)
    assert read_checkpoint(long)["train"]["target_loss"] < 0.6 * b["train"]["target_loss"]
    pol = load_policy(str(long))
    obs = {"images": {"front": np.full((SIZE, SIZE, 3), 120, np.uint8), "wrist": np.full((SIZE, SIZE, 3), 90, np.uint8)},
           "qpos": np.asarray(load_dataset(demos, ["front"], (SIZE, SIZE), "train", 0.0).episodes[0].qpos[0]),
           "instruction": "pick up the red cube"}
    a = pol.predict(obs)
    assert a.shape == (4, 8) and np.isfinite(a).all()
    seen = pol.predict_target(obs)
    assert set(seen) == {"front", "wrist"}
    assert all(p.shape == (2,) and (0 <= p).all() and (p <= SIZE).all() for p in seen.values())
    rep = target_check(pol, split_scenes(["seen", "reasoning"], 2))
    assert set(rep) == {"seen", "reasoning"}
    assert all(r["n"] == 2 and 0 <= r["nearest_right"] <= 2 and r["median_px"] >= 0 for r in rep.values())
    # the scenes' first observations, as the policy gets them (the benchmark times predict on these)
    scenes = split_scenes(["seen"], 2)
    first = first_observations(pol, scenes)
    assert [o["instruction"] for o in first] == [sc.instruction for sc in scenes]
    assert all(o["images"][c].shape == (SIZE, SIZE, 3) for o in first for c in ("front", "wrist"))
    assert not np.array_equal(first[0]["images"]["front"], first[1]["images"]["front"])   # two scenes, two looks
    assert all(np.isfinite(pol.predict(o)).all() for o in first)
    # a model trained without the loss has no target keypoint to report
    plain = tmp_path / "plain.pt"
    train(demos, plain, steps=2, **{**kw, "target_weight": 0.0})
    assert load_policy(str(plain)).predict_target(obs) is None


def test_target_loss_refuses_recordings_without_camera_geometry(demos, tmp_path):
    ds = load_dataset(demos, ["front"], (SIZE, SIZE), "train", 0.0)
    ds.episodes[0].extra.pop("seed")               # as a real robot's recording: no scene to rebuild
    with pytest.raises(PolicyError, match="camera.*geometry"):
        target_labels(ds, robot_chain(ds, "test"), ModelConfig(vocab_size=2, image_size=(SIZE, SIZE)))
    with pytest.raises(PolicyError, match="keypoints"):
        train(demos, tmp_path / "x.pt", steps=1, batch_size=2, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
              model={**TINY, "keypoints": 0}, threads=1, resume=False, target_weight=1.0)
