"""Colour grounding for the VLA (teleop_app/policy/grounding.py, `teleop train --grounding colour`): a colour
lexicon (the XKCD colour names matplotlib ships) says which colour an instruction names, an input channel says
where that colour is in each camera image.

Real parts: matplotlib's XKCD table, the MuJoCo workcell's renders in the default and the held-out look, the
scripted expert's demos through the recorder, torch training on the CPU, the checkpoint loader.
"""
from __future__ import annotations

import colorsys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mujoco")
pytest.importorskip("matplotlib")

from drivers.sim.tasks import NOVEL_PHRASES, TRAIN_PHRASES, episodes  # noqa: E402
from teleop_app.policy.base import PolicyError, load_policy  # noqa: E402
from teleop_app.policy.checkpoint import read_checkpoint  # noqa: E402
from teleop_app.policy.generalization import record_scenes, split_scenes  # noqa: E402
from teleop_app.policy.grounding import FEATURES, affinity, colour_features, find_colour  # noqa: E402
from teleop_app.policy.train import train  # noqa: E402

SIZE = 64
TINY = dict(channels=(8, 16, 16), d_model=32, n_layers=1, n_heads=2, grid=2, keypoints=8)


def _hue(rgb) -> float:
    return 360.0 * colorsys.rgb_to_hsv(*rgb)[0]


def test_the_lexicon_names_colours_the_demos_never_had():
    term, rgb = find_colour("pick up the purple prism")
    assert term == "purple" and 260 < _hue(rgb) < 300
    term, rgb = find_colour("lift the cube the colour of a fire engine")      # "fire engine red" indexes the thing
    assert term == "fire engine" and (_hue(rgb) < 10 or _hue(rgb) > 350)
    assert find_colour("stack the red cube on the blue cube")[0] == "red"    # the target comes first
    assert find_colour("grab the Cube the colour of the SKY")[0] == "sky"
    assert find_colour("push the cube to the marked spot") is None
    f = colour_features(["lift the orange block", "pick up the cube"])
    assert f.shape == (2, FEATURES) and f[:, 3].tolist() == [1.0, 0.0] and not f[1].any()
    assert 15 < _hue(f[0, :3]) < 35


def test_no_task_word_is_mistaken_for_a_colour():
    """Every training and novel phrasing, with the object words left out, names no colour: a template word that
    is also a colour name ("rose", "sand") would send the channel to the wrong object."""
    for table in (TRAIN_PHRASES, NOVEL_PHRASES):
        for templates in table.values():
            for t in templates:
                assert find_colour(t.format(obj="cube", sup="cylinder")) is None, t


def _scene_render(scene, held_out: bool):
    from drivers.sim import SimConfig, Workcell
    from drivers.sim.render import front_camera
    from teleop_app.policy.generalization import held_out_style
    wc = Workcell(SimConfig(physics=True, width=96, height=96))
    wc.reset(seed=scene.seed, scene=scene)
    if held_out:
        wc.renderer.set_style(held_out_style())
    cam = front_camera(wc.renderer.style, 96, 96)
    centres = {k: cam.project(np.array([p[:3]]))[0][0] for k, p in wc.objects().items()}
    return wc.render("front", 96, 96), centres


@pytest.mark.parametrize("held_out", [False, True])
def test_the_channel_marks_an_unseen_colour_in_a_rendered_scene(held_out):
    """Scenes whose target has a colour training never sees (purple / orange / white): the channel's strongest
    blob is on the target, also in the held-out look (dark blue-grey table, dim warm side light)."""
    import cv2
    hits = n = 0
    for sc in episodes("unseen_objects", 40, kinds=("pick",)):
        if sc.target.colour not in ("purple", "orange", "white"):
            continue
        img, centres = _scene_render(sc, held_out)
        x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
        a = cv2.GaussianBlur(affinity(x, torch.from_numpy(colour_features([sc.instruction])))[0, 0].numpy(),
                             (0, 0), 2.0)
        v, u = np.unravel_index(np.argmax(a), a.shape)
        nearest = min(centres, key=lambda k: np.hypot(*(centres[k] - (u, v))))
        hits += nearest == sc.target.name
        n += 1
        # an instruction naming no colour gives an empty channel
        assert not affinity(x, torch.zeros(1, FEATURES)).any()
    assert n >= 10 and hits >= 0.7 * n, (hits, n)


def test_a_batch_mixing_colour_kinds_gives_each_image_its_own_channel():
    """affinity computes the hue match only for chromatic colours and the brightness match only for
    white / grey / black: in a batch that mixes them (and sentences with no colour), each image's channel is
    the one it gets alone."""
    sc = next(iter(episodes("unseen_objects", 1, kinds=("pick",))))
    img, _ = _scene_render(sc, False)
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    a, b = (o.colour for o in sc.objects[:2])                     # two chromatic colours in view
    texts = [f"pick up the {a} one", "lift the white block", "pick up the cube", "grab the grey one",
             f"the {b} one"]
    f = torch.from_numpy(colour_features(texts))
    assert f[:, 3].tolist() == [1, 1, 0, 1, 1]
    xs = torch.cat([x, x.flip(-1), x, x.flip(-2), x])
    batch = affinity(xs, f)
    alone = torch.cat([affinity(xs[i:i + 1], f[i:i + 1]) for i in range(len(texts))])
    assert torch.equal(batch, alone)
    assert batch[[0, 4]].flatten(1).amax(1).eq(1).all() and not batch[2].any()
    assert (batch[0] - batch[4]).abs().amax() > 0.5           # the two colours mark different pixels


def test_white_marks_a_white_object_as_fully_as_the_white_arm():
    """grey_reference "neutral": the brightness match is relative to the brightest neutral pixel (the arm's
    highlight in the front camera) and tolerates the object's shaded faces, so a white object is marked at full
    strength; "brightest" (the models before it) marks it as a faint blob beside the arm."""
    n = 0
    for sc in episodes("unseen_objects", 60, kinds=("pick",)):
        if sc.target.colour != "white":
            continue
        img, centres = _scene_render(sc, False)
        x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
        f = torch.from_numpy(colour_features([sc.instruction]))
        u, v = np.round(centres[sc.target.name]).astype(int)
        near = lambda a: a[0, 0, max(v - 2, 0):v + 3, max(u - 2, 0):u + 3].max()
        assert near(affinity(x, f, "neutral")) >= 0.95, sc.instruction
        assert near(affinity(x, f)) < 0.8, sc.instruction
        n += 1
    assert n >= 5
    with pytest.raises(ValueError, match="grey_reference"):
        affinity(x, f, "median")


def test_distract_features_mark_a_grey_level_only_where_a_colour_is_named():
    from teleop_app.policy.train import distract_features
    text = torch.zeros(4000, 6)
    text[::2, -1] = 1.0                                   # every other row names a colour
    d = distract_features(text, 0.25, np.random.default_rng(0))
    on = d[:, -1] == 1
    assert d.shape == (4000, FEATURES) and not on[1::2].any() and not d[1::2].any()
    assert 0.2 < on[::2].float().mean() < 0.3
    grey = d[on, :3]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
    assert grey.min() < 0.05 and grey.max() > 0.95
    assert not distract_features(text, 0.0, np.random.default_rng(0)).any()
    bright = distract_features(text, 0.25, np.random.default_rng(0), levels=(0.8, 1.0))   # the lit arm's levels
    assert torch.equal(bright[:, -1], d[:, -1])
    assert bright[on, :3].min() >= 0.8 and bright[on, :3].max() <= 1.0 and bright[on, :3].max() > 0.98


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding") / "data"
    assert len(record_scenes(root, split_scenes(["train"], 3), image_size=SIZE, cameras=("front", "wrist"),
                             randomize=True)) == 3
    return root


def test_train_with_grounding_loads_and_reads_the_channel(demos, tmp_path):
    ck = tmp_path / "g.pt"
    train(demos, ck, steps=20, batch_size=8, lr=3e-3, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
          model=TINY, warmup=5, threads=1, resume=False, cameras=["front", "wrist"], augment="strong",
          text_encoder="minilm", target_weight=1.0, grounding="colour")
    blob = read_checkpoint(ck)
    assert blob["model_config"]["grounding"] == "colour" and blob["train"]["grounding"] == "colour"
    assert blob["model_config"]["grey_reference"] == "brightest"          # no channel_distract: the old match
    pol = load_policy(str(ck), threads=1)
    t = pol.text_input("pick up the purple cube")
    assert t.shape == (1, pol.model.cfg.text_dim + FEATURES)
    assert t[0, -1] == 1.0 and 260 < _hue(t[0, -4:-1].numpy()) < 300
    from drivers.sim import SimConfig, Workcell
    wc = Workcell(SimConfig(physics=True, width=SIZE, height=SIZE))
    wc.reset(seed=3)
    obs = {"images": {c: wc.render(c, SIZE, SIZE) for c in ("front", "wrist")}, "qpos": wc.qpos(),
           "instruction": "pick up the red cube"}
    a = pol.predict(obs)
    assert np.isfinite(a).all()
    # the trained network reads the channel: the same sentence embedding with the colour removed acts otherwise
    _q, (x, text, s) = pol._inputs(obs)
    blank = text.clone()
    blank[:, -FEATURES:] = 0
    with torch.inference_mode():
        assert not torch.allclose(pol.model(x, text, s), pol.model(x, blank, s), atol=1e-4)


def test_channel_distract_trains_with_a_second_colour_in_the_channel(demos, tmp_path):
    """train(channel_distract=P): the network sees the channel also mark a grey level (the arm for "white"); the
    distractor changes the channel only on its rows, and training without grounding refuses it."""
    ck = tmp_path / "d.pt"
    train(demos, ck, steps=10, batch_size=8, lr=3e-3, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
          model=TINY, warmup=5, threads=1, resume=False, cameras=["front", "wrist"], augment="strong",
          text_encoder="minilm", grounding="colour", channel_distract=0.5, distract_levels=(0.8, 1.0))
    blob = read_checkpoint(ck)
    assert blob["train"]["channel_distract"] == 0.5 and blob["model_config"]["grey_reference"] == "neutral"
    assert blob["train"]["distract_levels"] == [0.8, 1.0]
    pol = load_policy(str(ck), threads=1)
    from drivers.sim import SimConfig, Workcell
    wc = Workcell(SimConfig(physics=True, width=SIZE, height=SIZE))
    wc.reset(seed=3)
    obs = {"images": {c: wc.render(c, SIZE, SIZE) for c in ("front", "wrist")}, "qpos": wc.qpos(),
           "instruction": "pick up the red cube"}
    _q, (x, text, s) = pol._inputs(obs)
    x, text, s = x.repeat(2, 1, 1, 1, 1), text.repeat(2, 1), s.repeat(2, 1)
    white = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])      # row 0: no distractor
    with torch.inference_mode():
        plain = pol.model.forward_all(x, text, s)["actions"]
        mixed = pol.model.forward_all(x, text, s, distract=white)["actions"]
    assert torch.equal(mixed[0], plain[0]) and not torch.allclose(mixed[1], plain[1], atol=1e-5)
    kw = dict(steps=1, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0, model=TINY, threads=1, resume=False)
    with pytest.raises(PolicyError, match="grounding channel"):
        train(demos, tmp_path / "n.pt", text_encoder="minilm", channel_distract=0.5, **kw)
    with pytest.raises(PolicyError, match="share"):
        train(demos, tmp_path / "m.pt", text_encoder="minilm", grounding="colour", channel_distract=1.5, **kw)
    with pytest.raises(PolicyError, match="grey levels"):
        train(demos, tmp_path / "m.pt", text_encoder="minilm", grounding="colour", channel_distract=0.5,
              distract_levels=(1.0, 0.8), **kw)


def test_grounding_refuses_the_word_tokenizer_and_unknown_kinds(demos, tmp_path):
    kw = dict(steps=1, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0, model=TINY, threads=1, resume=False)
    with pytest.raises(PolicyError, match="sentence text encoder"):
        train(demos, tmp_path / "w.pt", text_encoder="words", grounding="colour", **kw)
    with pytest.raises(PolicyError, match="grounding must be one of"):
        train(demos, tmp_path / "x.pt", text_encoder="minilm", grounding="shape", **kw)


def test_the_traced_network_acts_as_the_network_for_each_colour_kind_and_follows_its_weights(demos, tmp_path):
    """VLAPolicy runs a frozen trace of the network per input signature: a trace records one side of the
    channel's hue-or-brightness branch, so a red and a white instruction each get their own, built at load."""
    ck = tmp_path / "t.pt"
    train(demos, ck, steps=10, batch_size=8, lr=3e-3, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0,
          model=TINY, warmup=5, threads=1, resume=False, cameras=["front", "wrist"], augment="strong",
          text_encoder="minilm", grounding="colour", channel_distract=0.5)
    pol, plain = load_policy(str(ck), threads=1), load_policy(str(ck), threads=1, traced=False)
    assert pol.tta and len(pol._traces) == 2 and not pol.trace_notes and not plain._traces    # built at load
    from drivers.sim import SimConfig, Workcell
    wc = Workcell(SimConfig(physics=True, width=SIZE, height=SIZE))
    wc.reset(seed=3)
    obs = {"images": {c: wc.render(c, SIZE, SIZE) for c in ("front", "wrist")}, "qpos": wc.qpos()}
    acts = {}
    for ins in ("pick up the red cube", "pick up the white cube", "pick up the cube"):
        acts[ins] = pol.predict({**obs, "instruction": ins})
        np.testing.assert_allclose(acts[ins], plain.predict({**obs, "instruction": ins}), atol=1e-5)
    assert not np.allclose(acts["pick up the red cube"], acts["pick up the white cube"], atol=1e-4)
    assert len(pol._traces) == 2          # no colour named: the brightness side, with found = 0
    with torch.no_grad():                 # new weights: the trace holding the old ones is not used
        pol.model.head.bias.add_(0.5)
    moved = pol.predict({**obs, "instruction": "pick up the red cube"})
    pol.traced = False
    np.testing.assert_allclose(moved, pol.predict({**obs, "instruction": "pick up the red cube"}), atol=1e-5)
    assert not np.allclose(moved, acts["pick up the red cube"], atol=1e-3)


def test_a_network_the_trace_gets_wrong_runs_untraced_and_says_so(demos, tmp_path):
    """A forward that leaves torch (here through numpy) traces into a constant: the check on other images
    catches it, and predict runs the network itself."""
    ck = tmp_path / "u.pt"
    train(demos, ck, steps=2, batch_size=8, image_size=(SIZE, SIZE), chunk=4, val_fraction=0.0, model=TINY,
          threads=1, resume=False, cameras=["front", "wrist"], text_encoder="minilm", grounding="colour")
    pol = load_policy(str(ck), threads=1)

    class ThroughNumpy(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.cfg = net, net.cfg

        def forward(self, *inputs):
            return torch.from_numpy(self.net(*inputs).numpy().copy())

    net = pol.model
    pol.model = ThroughNumpy(net)
    from drivers.sim import SimConfig, Workcell
    wc = Workcell(SimConfig(physics=True, width=SIZE, height=SIZE))
    wc.reset(seed=4)
    obs = {"images": {c: wc.render(c, SIZE, SIZE) for c in ("front", "wrist")}, "qpos": wc.qpos(),
           "instruction": "pick up the blue cube"}
    got = pol.predict(obs)
    assert len(pol.trace_notes) == 1 and "runs untraced" in pol.trace_notes[0] and "differ" in pol.trace_notes[0]
    pol.model, pol.traced = net, False
    np.testing.assert_allclose(got, pol.predict(obs), atol=1e-6)
