"""Perturbed scripted demos (DART-style): the physics expert first drives a deliberate detour beside the
object, then recovers; the detour is recorded with the action source "perturbation" and training draws
only the recovery. Real MuJoCo workcell, real recording through the control pipeline, real HDF5 read back."""
import subprocess
import sys

import numpy as np
import pytest

from drivers.sim import ScriptedExpert, SimConfig, Workcell, kinematics as kin
from drivers.sim.tasks import episodes
from drivers.sim.expert import DETOUR_RADIUS
from recorder.reader import read_episode
from recorder.schema import PERTURBATION
from recorder.store import EpisodeStore
from teleop_app.policy.dataset import load_dataset
from teleop_app.policy.train import sampling_probabilities
from teleop_app.scripted import record_scripted


def _run(wc, ex, steps=200):
    flags, tcp, grasped = [], [], []
    for _ in range(steps):
        a = ex.act(wc.qpos())
        flags.append(ex.perturbing)
        wc.set_target(a)
        wc.step(0.1)
        tcp.append(kin.fk(wc.qpos()[:7])[:3, 3])
        grasped.append(wc.grasped())
        if ex.done:
            break
    return np.array(flags), np.array(tcp), grasped


@pytest.mark.parametrize("kind", ["pick", "place_bowl"])
def test_expert_detours_beside_the_object_then_recovers(kind):
    wc = Workcell(SimConfig(physics=True))
    sc = next(iter(episodes("train", 1, seed=4, kinds=(kind,))))
    wc.reset(scene=sc)
    obj = wc.objects()[sc.target.name].copy()
    ex = ScriptedExpert(wc, seed=sc.seed, dt=0.1, perturb=1.0)
    flags, tcp, grasped = _run(wc, ex, 250)
    n = int(flags.sum())
    assert n >= 5 and flags[:n].all() and not flags[n:].any()       # one detour, at the start
    end = tcp[n - 1]
    assert np.linalg.norm(end[:2] - obj[:2]) > DETOUR_RADIUS[0] - 0.003   # beside the object, not above it
    assert end[2] < obj[2] + 0.09                                     # and down towards the table
    assert all(g is None for g in grasped[:n])                        # nothing grasped on the way
    assert ex.done and wc.success()                                   # the recovery solves the task

    wc.reset(scene=sc)                                                # perturb=0: the plain demo
    flags0, _, _ = _run(wc, ScriptedExpert(wc, seed=sc.seed, dt=0.1), 250)
    assert not flags0.any() and wc.success()


def test_which_scenes_are_perturbed_is_a_seeded_share():
    wc = Workcell(SimConfig(physics=True))
    picks = []
    for sc in episodes("train", 40, kinds=("pick",)):
        wc.reset(scene=sc)
        a = ScriptedExpert(wc, seed=0, dt=0.1, perturb=0.3)._detour
        b = ScriptedExpert(wc, seed=0, dt=0.1, perturb=0.3)._detour
        assert a == b
        picks.append(a)
    assert 4 <= sum(picks) <= 20
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ScriptedExpert(wc, perturb=1.5)


def test_recorded_detour_is_kept_but_never_drawn_for_training(tmp_path):
    root = tmp_path / "d"
    paths = record_scripted(root, ["pick_red"], 2, physics=True, perturb=1.0, image_size=32, cameras=("front",),
                            jpeg=False)
    assert len(paths) == 2 and len(EpisodeStore.open(root).episodes()) == 2
    for p in paths:
        with read_episode(p) as ep:
            src = ep.action_source
            n = src.count(PERTURBATION)
            assert n >= 5 and src[:n] == [PERTURBATION] * n and set(src[n:]) == {"scripted"}
            assert ep.meta.extra["perturb"] == 1.0 and ep.success == 1
    ds = load_dataset(root, image_size=(32, 32), val_fraction=0.0)
    mask = np.concatenate([e.perturbed for e in ds.episodes])
    assert ds.has_perturbations and 0 < mask.sum() < len(mask)
    p = sampling_probabilities(ds, None)
    assert (p[mask] == 0).all() and (p[~mask] > 0).all() and p.sum() == pytest.approx(1.0)
    p2 = sampling_probabilities(ds, 2.0)                              # HG-DAgger weights keep the rule
    assert (p2[mask] == 0).all()

    clean = tmp_path / "c"                                            # plain demos: uniform sampling
    record_scripted(clean, ["pick_red"], 1, physics=True, image_size=32, cameras=("front",), jpeg=False)
    assert sampling_probabilities(load_dataset(clean, image_size=(32, 32), val_fraction=0.0), None) is None
    with pytest.raises(ValueError, match="physics"):
        record_scripted(tmp_path / "k", ["pick_red"], 1, physics=False, perturb=0.5)


def test_cli_refuses_perturb_where_it_cannot_apply(tmp_path):
    cli = [sys.executable, "-m", "teleop_app.cli", "record", "--dataset", str(tmp_path / "d")]
    r = subprocess.run(cli + ["--perturb", "0.3"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--perturb needs --mode scripted --fast" in r.stderr
    r = subprocess.run(cli + ["--fast", "--kinematic", "--perturb", "0.3", "--episodes", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "physics sim" in r.stderr and "Traceback" not in r.stderr
