#!/usr/bin/env bash
# Optional consumer check (NOT part of the default test run): the RLDS builder input written by
# `teleop datasets export --format rlds` builds into a TFDS dataset with tensorflow_datasets and a
# builder in the shape of the public template (kpertsch/rlds_dataset_builder, example_dataset:
# steps{observation{image, wrist_image, state}, action, discount, reward, is_first, is_last,
# is_terminal, language_instruction}, episode_metadata{file_path}); the built dataset is read back
# and compared with the episodes. The template's language_embedding (a TF-Hub model download) is
# left out: no downloads at run time. tensorflow lives in its own venv (nothing enters .venv).
#
#   scripts/check_tfds.sh            # venv in /tmp/teleop-tfds-venv (TFDS_VENV=... to move it)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${TFDS_VENV:-/tmp/teleop-tfds-venv}
WORK=$(mktemp -d /tmp/teleop-tfds-XXXXXX)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" 2>/dev/null || "$ROOT/.venv/bin/python" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q tensorflow-cpu tensorflow-datasets
# 1. a small dataset, exported as RLDS builder input (project venv)
"$ROOT/.venv/bin/python" - "$WORK" <<'PY'
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, ".")
from recorder import EpisodeMeta, EpisodeStore, EpisodeWriter
from recorder.export_rlds import export_rlds
work = Path(sys.argv[1])
joints = [f"j{i}" for i in range(7)] + ["gripper"]
cams = {"front": (32, 40), "wrist": (32, 40)}
st = EpisodeStore.create(work / "ds", robot="sim", fps=10, joint_names=joints, cameras=cams)
for e in range(4):
    w = EpisodeWriter(st.new_episode_path(), EpisodeMeta(f"task {e % 2}", 10, "sim", joints, "teleop"), cams, dof=8,
                      jpeg=False, hdf5_process=False)
    for i in range(6 + e):
        q = np.full(8, e + i * 0.1, np.float32)
        w.add_step(q, q + 1, timestamp=i / 10, images={c: np.full((32, 40, 3), (i * 20 + e) % 256, np.uint8) for c in cams})
    st.add(w.finish(success=1))
export_rlds(st, work / "rlds", val_fraction=0.25)
print("exported", work / "rlds")
PY
# 2. build with tensorflow_datasets and read back (tfds venv); tfds wants the builder in a file
cd "$WORK"
cat > "$WORK/teleop_rlds_builder.py" <<'PY'
import glob, json, sys
from pathlib import Path
import numpy as np
import tensorflow_datasets as tfds
work = Path(sys.argv[1])
DATA = work / "rlds"
info = json.loads((DATA / "dataset_info.json").read_text())
H, W, _ = info["image"]["shape"]
D = info["state"]["shape"][0]


class TeleopDataset(tfds.core.GeneratorBasedBuilder):
    """The template's example_dataset builder, shapes from dataset_info.json."""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        img = lambda: tfds.features.Image(shape=(H, W, 3), dtype=np.uint8, encoding_format="png")
        # (the template calls dataset_info_from_configs, which reads metadata files next to a builder
        # package; this one-file builder gives the same features directly)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "steps": tfds.features.Dataset({
                "observation": tfds.features.FeaturesDict({
                    "image": img(), "wrist_image": img(),
                    "state": tfds.features.Tensor(shape=(D,), dtype=np.float32)}),
                "action": tfds.features.Tensor(shape=(D,), dtype=np.float32),
                "discount": tfds.features.Scalar(dtype=np.float32),
                "reward": tfds.features.Scalar(dtype=np.float32),
                "is_first": tfds.features.Scalar(dtype=np.bool_),
                "is_last": tfds.features.Scalar(dtype=np.bool_),
                "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                "language_instruction": tfds.features.Text()}),
            "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(str(DATA / "train/episode_*.npy")),
                "val": self._generate_examples(str(DATA / "val/episode_*.npy"))}

    def _generate_examples(self, path):
        for p in sorted(glob.glob(path)):
            data = np.load(p, allow_pickle=True)     # the template's own format (our export)
            steps = [{"observation": {"image": s["image"], "wrist_image": s["wrist_image"], "state": s["state"]},
                      "action": s["action"], "discount": 1.0, "reward": float(i == len(data) - 1),
                      "is_first": i == 0, "is_last": i == len(data) - 1, "is_terminal": i == len(data) - 1,
                      "language_instruction": s["language_instruction"]} for i, s in enumerate(data)]
            yield p, {"steps": steps, "episode_metadata": {"file_path": p}}


b = TeleopDataset(data_dir=str(work / "tfds"))
b.download_and_prepare()
n_steps = 0
for split in ("train", "val"):
    files = sorted(glob.glob(str(DATA / split / "episode_*.npy")))
    want = {f: np.load(f, allow_pickle=True) for f in files}
    for ep in tfds.as_numpy(b.as_dataset(split=split)):
        src = want[ep["episode_metadata"]["file_path"].decode()]
        steps = list(ep["steps"])
        assert len(steps) == len(src)
        for s, t in zip(steps, src):
            np.testing.assert_array_equal(s["observation"]["state"], t["state"])
            np.testing.assert_array_equal(s["action"], t["action"])
            np.testing.assert_array_equal(s["observation"]["image"], t["image"])
            assert s["language_instruction"].decode() == t["language_instruction"]
            n_steps += 1
print(f"TFDS build OK: {b.info.splits['train'].num_examples} train + {b.info.splits['val'].num_examples} val "
      f"episodes, {n_steps} steps read back identical (tensorflow_datasets {tfds.__version__})")
PY
"$VENV/bin/python" "$WORK/teleop_rlds_builder.py" "$WORK"
