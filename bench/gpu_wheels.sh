#!/usr/bin/env bash
# Fetch, here, the wheels bench/gpu_check.sh installs on the CUDA machine (which has no network).
#
#   bash bench/gpu_wheels.sh            # writes .whl/ at the repository root (git ignores it)
#
# The CUDA image has python3.12 with torch (CUDA), torchvision, numpy, scikit-image, tifffile,
# hypothesis, pytest, filelock, pillow, tqdm, pyyaml, packaging, requests and portalocker. What
# it lacks: our package, pooch (and its platformdirs), and for the oracle sam2==1.1.0 with
# hydra-core, omegaconf, antlr4-python3-runtime and iopath. Pure-Python packages published as
# sdists only (antlr4, iopath, sam2) are built into wheels here with `pip wheel --no-deps`.
# Environment: PYTHON (default .venv/bin/python, else python3; its pip runs, and building
# sam2 needs torch in it), PY_VERSION (default 3.12, the CUDA image's).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
PY_VERSION=${PY_VERSION:-3.12}
DEST=.whl
mkdir -p "$DEST"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >>.git/info/exclude; }

# Binary wheels for the CUDA machine's Python (all pure Python, but pinned to its version).
BINARY=(pooch==1.8.2 platformdirs==4.3.8 hydra-core==1.3.2 omegaconf==2.3.0)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${BINARY[@]}"

# sdist-only pure-Python packages: build wheels (no compiled code; sam2's CUDA extension is
# switched off, as the oracle recipe in DESIGN.md does, and is not needed for the checks).
export SAM2_BUILD_CUDA=0
for spec in antlr4-python3-runtime==4.9.3 iopath==0.1.10 sam2==1.1.0; do
  name=${spec%%==*}
  if ls "$DEST"/"${name//-/_}"-*.whl >/dev/null 2>&1; then continue; fi
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$spec"
done

# Our package, from the working tree as it is now (rerun this script after changing src/).
rm -f "$DEST"/napari_sam2-*.whl
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" .

ls -l "$DEST"
du -sh "$DEST"
