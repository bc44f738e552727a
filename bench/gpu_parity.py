"""CUDA checks that the other benchmarks do not cover: parity with Meta's predictor on the GPU,
and the end-to-end time of a long stack.

``parity``: our Tracker against Meta's ``SAM2VideoPredictor`` on CUDA, on the same random
weights (object-score head biased so masks are real) and the same frames, in the scenarios of
``tests/engine/test_tracker_parity.py``: a click with forward and backward propagation, both
directions, a box, two objects, a correction (as a memory frame and as a conditioning frame).
Two modes:

- ``bfloat16``: both sides under bfloat16 autocast, as Meta runs its CUDA path (ours with
  ``precision="bfloat16"``); target: mask IoU >= 0.98 per frame and object.
- ``float32``: both sides in float32 with TF32 off; target: logits within 1e-3 of their
  scale (max |logit|, at least 1) per frame and object.

``stack``: the end-to-end time of a (T, 1024, 1024) uint16 stack in memory, one click, through
``napari_sam2.api.segment`` (Tracker, prompts, propagation both ways, a full uint32 labels
array on the host), after one short warm-up run.

Each writes a Markdown table (and the raw numbers as JSON) into ``--out``. Without CUDA each
writes a table that says "no CUDA: skipped" and exits 0. Run from the repository root:

    python bench/gpu_parity.py parity --out OUT
    python bench/gpu_parity.py stack --out OUT --frames 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the oracle recipe lives in tests/
    sys.path.insert(0, str(REPO_ROOT))

CASES = [("sam2_hiera_tiny", 256), ("sam2.1_hiera_tiny", 320), ("sam2.1_hiera_tiny", 1024)]
CLICK = np.array([[40.0, 48.0]])
MIN_IOU = 0.98
FP32_RTOL = 1e-3
SKIPPED = "no CUDA: skipped"


# ---------------------------------------------------------------------- side by side on CUDA


class CudaPair:
    """Our Tracker and Meta's predictor on CUDA with shared weights and input frames."""

    def __init__(
        self, preset, image_size, frames, mode, *, corrections_as_conditioning=False, device="cuda"
    ):
        import sam2.sam2_video_predictor as video_module
        from tests._oracle import build_oracle_video_predictor
        from tests.engine._video_oracle import OBJECT_SCORE_BIAS, _upcast_oracle_memory

        from napari_sam2.engine.tracker import Tracker
        from napari_sam2.model import build_sam2

        self.device = torch.device(device)
        self.mode = mode
        extra = []
        if corrections_as_conditioning:
            extra.append("++model.add_all_frames_to_correct_as_cond=true")
        oracle = build_oracle_video_predictor(preset, image_size, extra=extra)
        with torch.no_grad():
            oracle.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(OBJECT_SCORE_BIAS)
        _upcast_oracle_memory(oracle)
        model = build_sam2(preset, image_size=image_size, fill_hole_area=0)
        model.load_state_dict(oracle.state_dict(), strict=True)
        self.oracle = oracle.to(self.device).eval()
        self.tracker = Tracker(
            model.to(self.device).eval(),
            frames,
            corrections_as_conditioning=corrections_as_conditioning,
            precision=mode,
        )
        height, width = self.tracker.frame_shape
        inputs = torch.cat(
            [self.tracker.frames.model_input(t, image_size) for t in range(len(frames))]
        )
        video_module.load_video_frames = lambda *a, **k: (inputs, height, width)
        video_module.tqdm = lambda steps, **kwargs: steps
        with self._oracle_precision():
            self.state = self.oracle.init_state(video_path="unused")

    def _oracle_precision(self):
        if self.mode == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    def points(self, frame, obj_id, points=None, labels=None, box=None):
        ours = self.tracker.set_prompts(frame, obj_id, points=points, labels=labels, box=box)
        with torch.inference_mode(), self._oracle_precision():
            _, ids, masks = self.oracle.add_new_points_or_box(
                self.state, frame, obj_id, points=points, labels=labels, box=box
            )
        return [(frame, ours, dict(zip(ids, masks[:, 0])))]

    def propagate(self, start, reverse=False, max_frames=None):
        ours = list(
            self.tracker.propagate(start, "backward" if reverse else "forward", max_frames)
        )
        limit = None if max_frames is None else max_frames - 1
        steps = self.oracle.propagate_in_video(
            self.state, start, max_frame_num_to_track=limit, reverse=reverse
        )
        theirs = []
        while True:
            with torch.inference_mode(), self._oracle_precision():
                item = next(steps, None)
            if item is None:
                break
            frame, ids, masks = item
            theirs.append((frame, dict(zip(ids, masks[:, 0]))))
        if [f for f, _ in ours] != [f for f, _ in theirs]:
            raise AssertionError(f"frame order differs: {[f for f, _ in ours]}")
        return [(f, got, ref) for (f, got), (_, ref) in zip(ours, theirs)]


def scenario_click(pair):
    steps = pair.points(3, 1, CLICK, np.array([1]))
    return steps + pair.propagate(3) + pair.propagate(3, reverse=True)


def scenario_box(pair):
    steps = pair.points(0, 1, box=np.array([20.0, 25.0, 70.0, 75.0]))
    return steps + pair.propagate(0, max_frames=5)


def scenario_two_objects(pair):
    steps = pair.points(0, 1, CLICK, np.array([1]))
    steps += pair.propagate(0, max_frames=3)
    steps += pair.points(3, 2, np.array([[100.0, 20.0]]), np.array([1]))
    return steps + pair.propagate(0)


def scenario_correction(pair):
    steps = pair.points(0, 1, CLICK, np.array([1]))
    steps += pair.propagate(0)
    steps += pair.points(4, 1, np.array([[60.0, 48.0], [10.0, 10.0]]), np.array([1, 0]))
    return steps + pair.propagate(0)


def scenario_correction_as_conditioning(pair):
    steps = scenario_correction(pair)
    return steps + pair.propagate(6, reverse=True)


SCENARIOS = {
    "click, forward + backward": (scenario_click, False),
    "box": (scenario_box, False),
    "two objects": (scenario_two_objects, False),
    "correction": (scenario_correction, False),
    "correction as conditioning, both ways": (scenario_correction_as_conditioning, True),
}


def compare(steps) -> dict:
    """Smallest mask IoU, largest logit error relative to scale, mean mask share."""
    worst_iou, worst_err, fractions = 1.0, 0.0, []
    for frame, ours, theirs in steps:
        for obj_id, ref in theirs.items():
            ref = ref.float().cpu()
            if obj_id not in ours:
                if float(ref.max()) > -1000:
                    raise AssertionError(f"frame {frame}: object {obj_id} missing on our side")
                continue
            got = torch.as_tensor(ours[obj_id])
            scale = max(float(ref.abs().max()), 1.0)
            worst_err = max(worst_err, float((got - ref).abs().max()) / scale)
            union = float(((got > 0) | (ref > 0)).sum())
            if union:
                worst_iou = min(worst_iou, float(((got > 0) & (ref > 0)).sum()) / union)
            fractions.append(float((ref > 0).float().mean()))
    return {"iou": worst_iou, "rel_err": worst_err, "mask_share": float(np.mean(fractions))}


def run_parity(out: Path, device: str = "cuda", cases=CASES, modes=("bfloat16", "float32")):
    from tests.engine._video_oracle import synthetic_stack

    # A true float32 comparison: no TF32 in matmuls or convolutions on either side.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows, ok = [], True
    for mode in modes:
        for preset, size in cases:
            for name, (scenario, conditioning) in SCENARIOS.items():
                began = time.perf_counter()
                pair = CudaPair(
                    preset,
                    size,
                    synthetic_stack(7),
                    mode,
                    corrections_as_conditioning=conditioning,
                    device=device,
                )
                result = compare(scenario(pair))
                if mode == "bfloat16":
                    passed = result["iou"] >= MIN_IOU
                else:
                    passed = result["rel_err"] <= FP32_RTOL
                ok &= passed and 0.01 < result["mask_share"] < 0.99
                rows.append(
                    {
                        "mode": mode,
                        "preset": preset,
                        "size": size,
                        "scenario": name,
                        **result,
                        "passed": passed,
                        "seconds": time.perf_counter() - began,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                del pair
                if device == "cuda":
                    torch.cuda.empty_cache()
    where = torch.cuda.get_device_name() if device == "cuda" else device
    lines = [
        f"Parity on {where}, torch {torch.__version__}: ours vs "
        f"Meta's SAM2VideoPredictor (bfloat16: IoU >= {MIN_IOU}; float32 with TF32 off: "
        f"logits within {FP32_RTOL} of scale).",
        "",
        "| mode | preset @ size | scenario | min IoU | max err / scale | mask share | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['preset']} @ {r['size']} | {r['scenario']} | {r['iou']:.4f} "
            f"| {r['rel_err']:.2e} | {r['mask_share']:.3f} | {'yes' if r['passed'] else 'NO'} |"
        )
    write(out, "parity", lines, rows)
    return ok


# ---------------------------------------------------------------------- end to end


def run_stack(out: Path, frames: int, preset: str, precision: str) -> bool:
    from _harness import OBJECT_SCORE_BIAS, SyntheticStack

    from napari_sam2.api import segment
    from napari_sam2.model import build_sam2

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_sam2(preset, image_size=1024, device=device).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(OBJECT_SCORE_BIAS)
    lazy = SyntheticStack(frames, 1024, 1024)
    stack = np.stack([lazy.frame(t) for t in range(frames)])  # (T, 1024, 1024) uint16, in memory
    col, row = lazy.clicks(1)[0][0]
    click = [[0, row, col]]  # napari order: (frame, row, col)
    options = dict(points=click, model=model, device="cuda", precision=precision)

    segment(stack[:16], **options)  # warm-up: kernels, allocator, cuDNN choices
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    labels = segment(stack, **options)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    result = {
        "preset": preset,
        "frames": frames,
        "precision": precision,
        "seconds": seconds,
        "fps": frames / seconds,
        "labelled_share": float((labels > 0).mean()),
        "labels_dtype": str(labels.dtype),
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20,
    }
    print(json.dumps(result), flush=True)
    lines = [
        f"End to end on {torch.cuda.get_device_name()}, torch {torch.__version__}: "
        f"api.segment of a ({frames}, 1024, 1024) uint16 stack in host memory, one click on "
        "frame 0, both directions, to a full uint32 labels array (target: 500 slices, tiny, "
        "<= 5 s).",
        "",
        "| preset | frames | precision | seconds | frames/s | peak CUDA MiB | labelled share |",
        "|---|---|---|---|---|---|---|",
        f"| {preset} | {frames} | {precision} | {seconds:.2f} | {frames / seconds:.1f} | "
        f"{result['peak_cuda_mib']:.0f} | {result['labelled_share']:.3f} |",
    ]
    write(out, f"stack_{frames}", lines, [result])
    return result["labelled_share"] > 0


# ---------------------------------------------------------------------- output


def write(out: Path, name: str, lines: list[str], rows: list[dict]) -> None:
    """``name``.md and ``name``.json in ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".md", "\n".join(lines) + "\n"), (".json", json.dumps(rows, indent=1))):
        target = out / f"{name}{suffix}"
        temporary = target.with_suffix(suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(target)


def main(argv=None) -> int:
    # The oracle warns once per session that its CUDA extension (hole filling) is not built.
    warnings.filterwarnings("ignore", message=".*cannot import name '_C'")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=("parity", "stack"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables")
    parser.add_argument("--frames", type=int, default=500, help="stack: number of slices")
    parser.add_argument("--preset", default="sam2.1_hiera_tiny", help="stack: the preset")
    parser.add_argument("--precision", default="auto", help="stack: our precision")
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="parity: run one small case in float32 on the CPU, to check this script itself",
    )
    args = parser.parse_args(argv)
    if args.check == "parity" and args.cpu_dry_run:
        ok = run_parity(args.out, "cpu", CASES[:1], ("float32",))
        print(f"parity (CPU dry run): {'passed' if ok else 'FAILED'}")
        return 0 if ok else 1
    name = "parity" if args.check == "parity" else f"stack_{args.frames}"
    if not torch.cuda.is_available():
        write(args.out, name, [f"{args.check}: {SKIPPED}"], [{"skipped": SKIPPED}])
        print(f"{args.check}: {SKIPPED}")
        return 0
    if args.check == "parity":
        ok = run_parity(args.out)
    else:
        ok = run_stack(args.out, args.frames, args.preset, args.precision)
    print(f"{args.check}: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
