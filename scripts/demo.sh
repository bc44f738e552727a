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
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" != "Darwin" ]; then
  echo "napari-sam2 is installed in $VENV, but there is no display to open napari on" >&2
  echo "(neither DISPLAY nor WAYLAND_DISPLAY is set: a server or SSH session without X)." >&2
  echo "Run this from a desktop session, use 'ssh -X', or start a virtual display:" >&2
  echo "  xvfb-run -a bash scripts/demo.sh" >&2
  echo "The headless command line works without a display: $VENV/bin/napari-sam2 --help" >&2
  exit 1
fi
exec "$VENV/bin/napari-sam2" demo "$@"
