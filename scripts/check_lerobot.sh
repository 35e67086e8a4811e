#!/usr/bin/env bash
# Optional consumer check (NOT part of the default test run): the real lerobot package loads a
# teleop LeRobot v3.0 export. lerobot >= 0.4 needs Python >= 3.12, the project runs on 3.11, so
# this builds a separate Python 3.12 venv (pyenv) with lerobot[dataset]==0.6.1 (pulls torch:
# several GB on the first run) and runs tests/test_recorder_lerobot_load.py in it, with the
# project on PYTHONPATH (nothing is installed into the project's .venv).
#
#   scripts/check_lerobot.sh                  # venv in /tmp/teleop-lerobot-venv (LEROBOT_VENV=... to move it)
#   nice -n 10 scripts/check_lerobot.sh > /tmp/check_lerobot.log 2>&1 &
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LEROBOT_VENV:-/tmp/teleop-lerobot-venv}
if [ -z "${PY312:-}" ]; then
    PYROOT=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    V=$(ls -d "$PYROOT"/versions/3.12.* 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$V" ] || { echo "no Python 3.12 under $PYROOT/versions: pyenv install 3.12" >&2; exit 2; }
    PY312="$V/bin/python"
fi
echo "python: $PY312  venv: $VENV"
[ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# lerobot 0.6.1 pins torch<2.12 itself (the project's torch 2.13 cannot be used): this venv is
# separate from the project's .venv for that reason. h5py/opencv for the exporter side (recorder/).
"$VENV/bin/python" -m pip install -q "lerobot[dataset]==0.6.1" h5py opencv-python-headless pytest
"$VENV/bin/python" -c "import lerobot, torch; print('lerobot', lerobot.__version__, 'torch', torch.__version__)"
cd "$ROOT"
PYTHONPATH="$ROOT:$ROOT/tests" exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --noconftest \
    -o addopts="" -W ignore::pytest.PytestConfigWarning tests/test_recorder_lerobot_load.py -rs
