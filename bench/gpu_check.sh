#!/usr/bin/env bash
# Every CUDA check of issue 11 in one call (under 8 minutes on one H100/H200-class GPU), so it
# can be rerun once within a 15-minute GPU lease. Writes its tables into OUT_DIR.
#
#   bash bench/gpu_check.sh OUT_DIR      # e.g. "$OUT" in the device tool
#
# Beforehand, on a machine with network: `bash bench/gpu_wheels.sh` fills .whl/ with what the
# CUDA image lacks (our package, pooch, platformdirs, sam2==1.1.0, hydra-core, omegaconf,
# antlr4-python3-runtime, iopath); carry .whl along. The image has python3 with torch (CUDA),
# torchvision, numpy, scikit-image, tifffile, hypothesis, pytest and the oracle's other needs.
#
# Steps (each with its own time limit; a failed step is reported and the others still run):
#   1. install .whl/*.whl into /tmp/site (no index, no deps)
#   2. environment: GPU, torch, CUDA, and which napari_sam2 is imported
#   3. the `gpu`-marked tests (tests/engine/test_gpu.py)
#   4. CUDA parity, ours vs Meta's (bench/gpu_parity.py parity): bf16 autocast IoU >= 0.98,
#      fp32 (TF32 off) within 1e-3
#   5. FPS at 1024, ours vs Meta's in one process (bench/propagate.py --device cuda):
#      sam2.1 tiny and large, 1 and 10 objects
#   6. GPU memory against stack length, 100 and 500 frames (propagate.py --memory-only)
#   7. end to end, a 500-slice 1024^2 uint16 stack, tiny (bench/gpu_parity.py stack)
# Without CUDA (e.g. on a CPU machine, to check this script) steps 3-7 write "no CUDA: skipped"
# and the script exits 0.
#
# Environment: PYTHON (default python3), SITE (default /tmp/site), BUDGET (default 470 s: each
# step's limit is cut to what is left of it), QUICK=1 (fewer frames, for a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$FINAL"
FINAL=$(cd "$FINAL" && pwd)
# Steps write into a scratch folder; OUT_DIR gets five files (the device tool brings back at
# most eight): summary.md, tables.md, environment.txt, log.txt and raw.tar.gz with the rest.
OUT=$(mktemp -d /tmp/gpu_check.XXXXXX)
bundle() {
  cp "$OUT"/summary.md "$OUT"/tables.md "$OUT"/environment.txt "$OUT"/log.txt "$FINAL"/ 2>/dev/null
  tar -czf "$FINAL/raw.tar.gz" -C "$OUT" .
}
trap bundle EXIT
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-470} # seconds for the whole script; steps are cut short to fit
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
SUMMARY="$OUT/summary.md"
START=$(date +%s)
status=0

log() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$OUT/log.txt"; }
record() { # record NAME RC SECONDS
  local verdict=${4:-ok}
  [ "$2" -eq 124 ] && verdict="TIMED OUT"
  [ "$2" -ne 0 ] && [ "$2" -ne 124 ] && verdict="FAILED (rc $2)"
  [ "$2" -ne 0 ] && status=1
  echo "| $1 | $verdict | $3 |" >>"$SUMMARY"
}
step() { # step NAME LIMIT_S COMMAND...: run with a time limit, output to OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then
    log "$name: skipped, the ${BUDGET} s budget is spent"
    echo "| $name | SKIPPED: out of time | 0 |" >>"$SUMMARY"
    status=1
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name (limit $limit s): $*"
  local began rc
  began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  rc=$?
  local verdict=ok
  grep -q "no CUDA: skipped" "$OUT/$name.txt" && verdict="no CUDA: skipped"
  record "$name" "$rc" "$(($(date +%s) - began))" "$verdict"
  tail -n 5 "$OUT/$name.txt" | sed 's/^/    /'
  return 0
}

echo "| step | result | seconds |" >"$SUMMARY"
echo "|---|---|---|" >>"$SUMMARY"

# 1. wheels
if ls .whl/*.whl >/dev/null 2>&1; then
  log "installing $(ls .whl/*.whl | wc -l) wheels into $SITE"
  began=$(date +%s)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl >"$OUT/install.txt" 2>&1
  record install $? "$(($(date +%s) - began))"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  log "no .whl/ folder: using the packages $PYTHON already has"
  echo "| install | skipped: no .whl/ | 0 |" >>"$SUMMARY"
fi
# The working tree's tests/ and bench/ import from the repository root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 2. environment; if the installed wheel is older than src/, the working tree's src/ wins.
"$PYTHON" - >"$OUT/environment.txt" 2>&1 <<'EOF'
import filecmp, pathlib, sys
import torch
import napari_sam2
from napari_sam2.engine.precision import cpu_has_native_bf16, resolve_precision
installed = pathlib.Path(napari_sam2.__file__).parent
source = pathlib.Path("src/napari_sam2").resolve()
stale = [
    str(p.relative_to(source)) for p in source.rglob("*.py")
    if not (installed / p.relative_to(source)).exists()
    or not filecmp.cmp(p, installed / p.relative_to(source), shallow=False)
]
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
    print("precision auto on cuda:", resolve_precision("auto", "cuda"))
print("cpu native bf16:", cpu_has_native_bf16())
print("napari_sam2 from", installed, "| differs from src/:", len(stale), "files", stale[:5])
EOF
cat "$OUT/environment.txt"
if grep -q "differs from src/: [1-9]" "$OUT/environment.txt"; then
  log "the installed napari_sam2 differs from src/: using src/ (rerun bench/gpu_wheels.sh)"
  export PYTHONPATH="$PWD/src:$PYTHONPATH"
fi
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  CUDA=1
else
  CUDA=0
  log "no CUDA: skipped (the CUDA steps below write that into their tables)"
fi

skip_table() { # skip_table NAME: a table that says the step did not run
  printf '%s\n' "$1: no CUDA: skipped" >"$OUT/$1.md"
  echo "| $1 | no CUDA: skipped | 0 |" >>"$SUMMARY"
  log "$1: no CUDA: skipped"
}

# 3. gpu-marked tests
if [ "$CUDA" = 1 ]; then
  step gpu_tests 150 "$PYTHON" -m pytest -m gpu tests/engine/test_gpu.py tests/engine/test_device.py \
    -q -p no:cacheprovider -rs
else
  skip_table gpu_tests
fi

# 4. parity on CUDA (gpu_parity.py writes its own "no CUDA: skipped" table)
step parity 200 "$PYTHON" bench/gpu_parity.py parity --out "$OUT"

# 5. FPS at 1024: tiny and large, 1 and 10 objects
FRAMES=40
[ "$QUICK" = 1 ] && FRAMES=4
if [ "$CUDA" = 1 ]; then
  for preset in sam2.1_hiera_tiny sam2.1_hiera_large; do
    for objects in 1 10; do
      name="fps_${preset#sam2.1_hiera_}_${objects}obj"
      step "$name" 90 "$PYTHON" bench/propagate.py --device cuda --precision auto \
        --preset "$preset" --image-size 1024 --objects "$objects" --frames "$FRAMES" \
        --no-memory --json "$OUT/$name.json"
    done
  done
else
  skip_table fps
fi

# 6. GPU memory against stack length (ours must stay flat)
LENGTHS="100 500"
[ "$QUICK" = 1 ] && LENGTHS="4 8"
if [ "$CUDA" = 1 ]; then
  for frames in $LENGTHS; do
    step "memory_${frames}" 120 "$PYTHON" bench/propagate.py --device cuda --precision auto \
      --image-size 1024 --frames "$frames" --memory-only --json "$OUT/memory_${frames}.json"
  done
else
  skip_table memory
fi

# 7. end to end, 500 slices (gpu_parity.py writes its own "no CUDA: skipped" table)
SLICES=500
[ "$QUICK" = 1 ] && SLICES=20
step "stack" 90 "$PYTHON" bench/gpu_parity.py stack --out "$OUT" --frames "$SLICES"

# Tables: one Markdown file gathering the JSON figures.
"$PYTHON" - "$OUT" >"$OUT/tables.md" 2>&1 <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def rows(pattern):
    return [json.loads(p.read_text()) for p in sorted(out.glob(pattern))]
print("## FPS at 1024, ours vs Meta's SAM2VideoPredictor in one process\n")
fps = rows("fps_*.json")
if not fps:
    print("no CUDA: skipped\n")
else:
    print(f"{fps[0]['device_name']}, torch {fps[0]['torch']}, ours in {fps[0]['precision']}, "
          "Meta's under bfloat16 autocast; median over frames after the first two.\n")
    print("| preset | objects | ours FPS | Meta FPS | ours/Meta time | min mask IoU |")
    print("|---|---|---|---|---|---|")
    for r in fps:
        print(f"| {r['preset']} | {r['objects']} | {r['ours_fps']:.1f} | {r['oracle_fps']:.1f} "
              f"| {r['ratio_of_medians']:.3f} | {r['smallest_mask_iou']:.4f} |")
print("\n## GPU memory against stack length (peak allocated increase, MiB)\n")
memory = rows("memory_*.json")
if not memory:
    print("no CUDA: skipped\n")
else:
    memory.sort(key=lambda r: r["frames"])
    print("| frames | ours session+prompt | ours propagate | Meta session+prompt | Meta propagate |")
    print("|---|---|---|---|---|")
    for r in memory:
        m = r["memory_mib"]
        print(f"| {r['frames']} | {m['ours']['session_mib']:.1f} | {m['ours']['propagate_mib']:.1f} "
              f"| {m['oracle']['session_mib']:.1f} | {m['oracle']['propagate_mib']:.1f} |")
    if len(memory) >= 2:
        a, b = memory[0], memory[-1]
        span = b["frames"] - a["frames"]
        for side in ("ours", "oracle"):
            grow = lambda r: r["memory_mib"][side]["session_mib"] + r["memory_mib"][side]["propagate_mib"]
            print(f"\n{side}: {(grow(b) - grow(a)) / span:.3f} MiB per frame (target for ours: < 1)")
for name in ("parity.md",) + tuple(p.name for p in sorted(out.glob("stack_*.md"))):
    path = out / name
    print(f"\n## {name[:-3]}\n")
    print(path.read_text() if path.exists() else "not written (see the step's .txt)")
EOF
cat "$OUT/tables.md"
echo
log "done in $(($(date +%s) - START)) s"
cat "$SUMMARY"
exit $status
