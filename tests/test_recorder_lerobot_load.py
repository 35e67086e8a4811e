"""Optional: the real lerobot package loads our v3.0 export (needs Python >= 3.12 + lerobot >= 0.4).

Skipped here (Python 3.11); the always-on spec check is tests/test_recorder_export.py."""
from __future__ import annotations

import numpy as np
import pytest

lerobot = pytest.importorskip("lerobot", reason="lerobot >= 0.4 not installed (it needs Python >= 3.12)")

from recorder import read_episode  # noqa: E402
from recorder.export_lerobot import export_lerobot  # noqa: E402

from test_recorder_export import CAMS, FPS, make_store  # noqa: E402


def test_lerobot_dataset_loads_export(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    st = make_store(tmp_path / "ds")
    out = export_lerobot(st, tmp_path / "lr", "teleop/test")
    ds = LeRobotDataset("teleop/test", root=out)
    exported = [read_episode(st.path(i)) for i in (1, 3)]          # episode 2 is labelled failed
    assert ds.num_episodes == 2 and ds.num_frames == sum(e.num_steps for e in exported) and ds.fps == FPS
    idx = 0
    for k, ep in enumerate(exported):
        for i in range(ep.num_steps):
            item = ds[idx]
            assert int(item["episode_index"]) == k and int(item["frame_index"]) == i
            np.testing.assert_allclose(item["observation.state"].numpy(), ep.qpos[i], rtol=0, atol=0)
            np.testing.assert_allclose(item["action"].numpy(), ep.action[i], rtol=0, atol=0)
            assert item["task"] == ep.meta.instruction
            for cam in CAMS:
                img = item[f"observation.images.{cam}"].numpy()          # (3, H, W) float in [0, 1]
                img = (np.transpose(img, (1, 2, 0)) * 255).round()
                assert np.abs(img - ep.image(cam, i).astype(float)).mean() < 6.0
            idx += 1
