#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite (lint included).
#   bash scripts/test.sh [pytest arguments]
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_SPEC (default the CPU build
# torch==2.13.0 that this project's machines carry; use any torch >= 2.1 elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# Debian packages for a virtual X display with OpenGL (napari's canvas needs it; Qt's
# "offscreen" platform has no OpenGL here).
APT_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo_cmd apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel
"${pip[@]}" "$TORCH_SPEC"
"${pip[@]}" -e ".[test]"
# The test oracle: Meta's SAM 2 code (the registry's sam2==1.1.0 carries Meta's sam2/ tree).
# Never a runtime dependency. No CUDA extension is built.
SAM2_BUILD_CUDA=0 "${pip[@]}" --no-deps --no-build-isolation sam2==1.1.0
"${pip[@]}" hydra-core iopath pillow tqdm

"$VENV/bin/ruff" check src tests bench examples scripts
"$VENV/bin/python" -m pytest "$@"
