#!/usr/bin/env bash
# Install napari-sam2 with napari and open napari with the demo stack and the annotator docked.
#   bash scripts/demo.sh
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_SPEC (default torch==2.13.0,
# the CPU build on this project's machines; see the README to pick a CUDA or Apple build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel
"${pip[@]}" "$TORCH_SPEC"
"${pip[@]}" -e ".[napari]" pyqt5
exec "$VENV/bin/napari-sam2" demo "$@"
