"""Exports read back with pyarrow + PyAV (LeRobot v3.0 layout) and numpy (RLDS builder input)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter, RecorderError, read_episode
from recorder.export_lerobot import export_lerobot
from recorder.export_rlds import export_rlds

JOINTS = [f"j{i}" for i in range(7)] + ["gripper"]
CAMS = {"front": (48, 64), "wrist": (32, 40)}
FPS = 20


def frame(cam: str, i: int, ep: int) -> np.ndarray:
    h, w = CAMS[cam]
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 4 + i * 6) % 256, (y * 5 + ep * 40) % 256,
                    np.full_like(x, (i * 9 + ep * 50) % 200 + 20)], -1)
    return img.astype(np.uint8)


def make_store(root: Path, lengths=(12, 9, 15), success=(1, 0, -1),
               instructions=("pick the cube", "pick the cube", "put cube in bowl")) -> EpisodeStore:
    st = EpisodeStore.create(root, robot="sim", fps=FPS, joint_names=JOINTS, cameras=CAMS)
    for e, (n, ok, text) in enumerate(zip(lengths, success, instructions)):
        w = EpisodeWriter(st.new_episode_path(), EpisodeMeta(text, FPS, "sim", JOINTS, "teleop"), CAMS, dof=8)
        for i in range(n):
            q = (np.arange(8) * 0.1 + i * 0.01 + e).astype(np.float32)
            w.add_step(q, q + 0.5, timestamp=10 + i / FPS, images={c: frame(c, i, e) for c in CAMS})
        st.add(w.finish(success=ok))
    return st


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EpisodeStore:
    return make_store(tmp_path_factory.mktemp("exp") / "ds")


def decode_all(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]


def test_lerobot_v30_files_match_spec(store, tmp_path):
    calls = []
    out = export_lerobot(store, tmp_path / "lr", "teleop/test", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 2), (1, 2), (2, 2)]               # failed episode 2 skipped
    exported = [read_episode(store.path(i)) for i in (1, 3)]

    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "sim"
    assert info["total_episodes"] == 2 and info["total_frames"] == 27 and info["total_tasks"] == 2
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:2"} and info["chunks_size"] == 1000
    f = info["features"]
    assert f["observation.state"] == {"dtype": "float32", "shape": [8], "names": JOINTS}
    assert f["action"]["shape"] == [8]
    v = f["observation.images.front"]
    assert v["dtype"] == "video" and v["shape"] == [48, 64, 3] and v["names"] == ["height", "width", "channels"]
    assert v["info"]["video.codec"] == "h264" and v["info"]["video.pix_fmt"] == "yuv420p" and v["info"]["video.fps"] == FPS
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert f[k]["shape"] == [1]

    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick the cube", "put cube in bowl"]
    assert tasks.column("task_index").to_pylist() == [0, 1]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data.num_rows == 27
    state = np.array(data.column("observation.state").to_pylist(), np.float32)
    np.testing.assert_array_equal(state, np.concatenate([e.qpos for e in exported]))
    np.testing.assert_array_equal(np.array(data.column("action").to_pylist(), np.float32),
                                  np.concatenate([e.action for e in exported]))
    fi = data.column("frame_index").to_numpy()
    np.testing.assert_array_equal(fi, np.r_[np.arange(12), np.arange(15)])
    np.testing.assert_allclose(data.column("timestamp").to_numpy(), fi / FPS, atol=1e-6)
    np.testing.assert_array_equal(data.column("index").to_numpy(), np.arange(27))
    np.testing.assert_array_equal(data.column("episode_index").to_numpy(), np.r_[[0] * 12, [1] * 15])
    np.testing.assert_array_equal(data.column("task_index").to_numpy(), np.r_[[0] * 12, [1] * 15])

    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == [0, 1] and [e["length"] for e in eps] == [12, 15]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 12), (12, 27)]
    assert eps[1]["tasks"] == ["put cube in bowl"] and eps[0]["data/file_index"] == 0
    assert len(eps[0]["stats/observation.state/mean"]) == 8

    for cam in CAMS:
        key = f"observation.images.{cam}"
        frames = decode_all(out / f"videos/{key}/chunk-000/file-000.mp4")
        assert len(frames) == 27
        for e, ep in zip(eps, exported):
            lo, hi = e[f"videos/{key}/from_timestamp"], e[f"videos/{key}/to_timestamp"]
            mine = [img for t, img in frames if lo - 1e-4 <= t < hi - 1e-4]
            assert len(mine) == ep.num_steps
            for i in (0, ep.num_steps // 2, ep.num_steps - 1):   # same frame at the same timestamp
                t_i = lo + i / FPS
                img = next(im for t, im in frames if abs(t - t_i) < 1e-4)
                err = np.abs(img.astype(int) - ep.image(cam, i).astype(int)).mean()
                assert err < 6.0, (cam, i, err)

    stats = json.loads((out / "meta/stats.json").read_text())
    allq = np.concatenate([e.qpos for e in exported])
    np.testing.assert_allclose(stats["observation.state"]["mean"], allq.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["std"], allq.std(0), rtol=1e-4, atol=1e-6)
    assert stats["action"]["max"] == pytest.approx(np.concatenate([e.action for e in exported]).max(0).tolist())
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    assert "q01" in stats["observation.state"] and stats["observation.state"]["count"] == [27]


def test_lerobot_export_refuses_bad_requests(store, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/x").write_text("x")
    with pytest.raises(RecorderError, match="not empty"):
        export_lerobot(store, tmp_path / "busy", "a/b")
    with pytest.raises(RecorderError, match=r"episodes \[99\]"):
        export_lerobot(store, tmp_path / "o", "a/b", ids=[99])


def test_rlds_builder_input(store, tmp_path):
    calls = []
    out = export_rlds(store.root, tmp_path / "rlds", progress=lambda d, t: calls.append(d),
                      skip_failed=False, val_fraction=0.34)
    assert calls == [0, 1, 2, 3]
    train = sorted(p.name for p in (out / "train").glob("episode_*.npy"))
    val = sorted(p.name for p in (out / "val").glob("episode_*.npy"))
    assert len(train) == 2 and len(val) == 1 and set(train) | set(val) == {f"episode_{i}.npy" for i in (1, 2, 3)}
    for name in train + val:
        i = int(name.split("_")[1].split(".")[0])
        ep = read_episode(store.path(i))
        split = "train" if name in train else "val"
        data = np.load(out / split / name, allow_pickle=True)   # as the template's _generate_examples
        assert len(data) == ep.num_steps
        for k, step in enumerate(data):
            assert set(step) == {"image", "wrist_image", "state", "action", "language_instruction"}
            assert step["image"].shape == (48, 64, 3) and step["image"].dtype == np.uint8
            assert step["wrist_image"].shape == (32, 40, 3)
            np.testing.assert_array_equal(step["state"], ep.qpos[k])
            np.testing.assert_array_equal(step["action"], ep.action[k])
            assert step["language_instruction"] == ep.meta.instruction
        np.testing.assert_array_equal(data[3]["image"], ep.image("front", 3))
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["image"]["camera"] == "front" and info["wrist_image"]["camera"] == "wrist"
    assert info["state"]["shape"] == [8]


def test_rlds_resize(store, tmp_path):
    out = export_rlds(store, tmp_path / "r", image_size=(64, 64), val_fraction=0)
    data = np.load(next((out / "train").glob("*.npy")), allow_pickle=True)
    assert data[0]["image"].shape == (64, 64, 3) and data[0]["wrist_image"].shape == (64, 64, 3)
    assert list((out / "val").iterdir()) == []
