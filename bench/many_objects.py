"""Many objects: time per object-frame against N, and the state store's bounded memory.

``scaling`` propagates N objects (a small box each, on a grid over frame 0) through a lazy
synthetic stack on the CPU, in a fresh subprocess per N, and prints per N: the median time per
frame and per object-frame over the timed frames (after the prompted frame and one warm-up
frame), the peak RSS (``resource.getrusage``, whole process), the peak RSS once the model was
built and frame 0 encoded (the fixed part: Python, torch, weights, one image encoding), and the
pre-flight estimate (:func:`~napari_sam2.engine.memory_estimate.estimate_run_bytes`: state,
output labels, the frame in flight) added to that fixed part::

    python bench/many_objects.py scaling --objects 1 10 50 --image-size 512 --frames 4

``bounded`` measures the state layout, not the compute: it fills, through the tracker's own
:class:`~napari_sam2.engine.state_store.StateStore` and :class:`ObjectState`, the outputs that
tracking N objects through F frames at input size S keeps (the shapes and dtypes of
:class:`FrameOutput`, values made from the object and frame), and reads every frame's memory plan
(:func:`plan_memory`: up to 7 spatial memories and 16 pointers per object) as propagation does.
It prints the peak RSS, the bytes in RAM and on disk, the estimate, the time per object-frame of
storing and of reading a plan, and checks that spilled outputs read back bit for bit::

    python bench/many_objects.py bounded --objects 200 --frames 100 --image-size 1024 \
        --budget-gib 8
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from _harness import OBJECT_SCORE_BIAS, SyntheticStack, cpu_model, rss_mib

MIB = 2**20


def peak_rss_bytes() -> int:
    """Peak RSS of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def grid_boxes(num_objects: int, height: int, width: int) -> list[list[float]]:
    """``num_objects`` boxes (x0, y0, x1, y1) of 1/20 of the frame, on a grid."""
    side = int(np.ceil(np.sqrt(num_objects)))
    box = max(4, min(height, width) // 20)
    boxes = []
    for index in range(num_objects):
        row, col = divmod(index, side)
        y = int((row + 0.5) * height / side) - box // 2
        x = int((col + 0.5) * width / side) - box // 2
        boxes.append([x, y, x + box, y + box])
    return boxes


# ---------------------------------------------------------------------- scaling


def run_scaling(args) -> dict:
    from napari_sam2.engine.labels import merge_logits
    from napari_sam2.engine.memory_estimate import estimate_run_bytes
    from napari_sam2.engine.tracker import Tracker
    from napari_sam2.model import build_sam2

    torch.manual_seed(0)
    model = build_sam2(args.preset, image_size=args.image_size).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(OBJECT_SCORE_BIAS)
    num_frames = args.frames + 2  # the prompted frame, one warm-up frame, the timed ones
    stack = SyntheticStack(num_frames, args.side, args.side)
    tracker = Tracker(model, stack, precision=args.precision)
    tracker.prepare(0)
    fixed = peak_rss_bytes()
    for obj_id, box in enumerate(grid_boxes(args.objects, args.side, args.side), start=1):
        tracker.set_prompts(0, obj_id, box=box)
    labels = np.zeros((num_frames, args.side, args.side), np.uint32)
    times = []
    start = time.perf_counter()
    for frame, logits in tracker.propagate(0):
        labels[frame] = merge_logits(logits)
        now = time.perf_counter()
        times.append(now - start)
        start = now
    timed = times[2:]
    estimate = estimate_run_bytes(
        image_size=args.image_size,
        num_objects=args.objects,
        num_frames=num_frames,
        frame_shape=(args.side, args.side),
    )
    peak = peak_rss_bytes()
    return {
        "objects": args.objects,
        "timed_frames": len(timed),
        "s_per_frame": statistics.median(timed),
        "s_per_object_frame": statistics.median(timed) / args.objects,
        "peak_rss_mib": peak / MIB,
        "fixed_peak_mib": fixed / MIB,
        "estimate_mib": estimate.total / MIB,
        "state_mib": tracker.state_nbytes / MIB,
        "estimated_state_mib": estimate.state / MIB,
        "peak_over_fixed_plus_estimate": peak / (fixed + estimate.total),
        "foreground_pixels": int((labels > 0).sum()),
    }


def scaling(args) -> None:
    print(f"# {cpu_model()}, {args.threads} thread(s), {args.preset} at {args.image_size}, ")
    print(f"# {args.side}x{args.side} frames, {args.frames} timed, precision {args.precision}")
    rows = []
    for count in args.objects:
        command = [
            sys.executable,
            __file__,
            "scaling",
            "--child",
            *("--objects", str(count), "--image-size", str(args.image_size)),
            *("--frames", str(args.frames), "--side", str(args.side)),
            *("--preset", args.preset, "--threads", str(args.threads)),
            *("--precision", args.precision),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"the run with {count} objects failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(
        "| N | s/frame | ms/object-frame | peak RSS MiB | fixed MiB | estimate MiB | "
        "peak / (fixed + estimate) | state MiB (estimated) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['objects']} | {row['s_per_frame']:.2f} | "
            f"{1000 * row['s_per_object_frame']:.0f} | {row['peak_rss_mib']:.0f} | "
            f"{row['fixed_peak_mib']:.0f} | {row['estimate_mib']:.1f} | "
            f"{row['peak_over_fixed_plus_estimate']:.3f} | {row['state_mib']:.1f} "
            f"({row['estimated_state_mib']:.1f}) |"
        )


# ---------------------------------------------------------------------- bounded


def _fill(out_shape_low, out_shape_mem, obj_id: int, frame: int):
    from napari_sam2.engine.objects import FrameOutput

    value = float(obj_id * 1000 + frame)
    return FrameOutput(
        low_res=torch.full(out_shape_low, value),
        pointer=torch.full((1, 256), value),
        score=torch.full((1, 1), value),
        memory=torch.full(out_shape_mem, value / 1024, dtype=torch.bfloat16),
    )


def run_bounded(args) -> dict:
    from napari_sam2.engine.memory_estimate import split_state_bytes
    from napari_sam2.engine.objects import ObjectState, plan_memory
    from napari_sam2.engine.state_store import StateStore

    size = args.image_size
    low_shape, mem_shape = (1, 1, size // 4, size // 4), (1, 64, size // 16, size // 16)
    budget = int(args.budget_gib * 2**30)
    fixed = peak_rss_bytes()
    with tempfile.TemporaryDirectory(dir=args.spill_dir) as parent:
        store = StateStore(budget, spill_dir=parent)
        states = {obj_id: ObjectState.in_store(store) for obj_id in range(1, args.objects + 1)}
        store_s, plan_s = 0.0, 0.0
        for frame in range(args.frames):
            start = time.perf_counter()
            for state in states.values():
                plan = plan_memory(state, frame, backward=False, num_frames=args.frames)
                assert len(plan.spatial) <= 7 and len(plan.pointers) <= 16
            plan_s += time.perf_counter() - start
            start = time.perf_counter()
            for obj_id, state in states.items():
                target = state.conditioning if frame == 0 else state.recent
                target[frame] = _fill(low_shape, mem_shape, obj_id, frame)
            store_s += time.perf_counter() - start
        # Re-reading an old, spilled frame (a re-propagation's plan) gives the same bits.
        start = time.perf_counter()
        checked = 0
        for obj_id, state in states.items():
            plan = plan_memory(state, 3, backward=False, num_frames=args.frames)
            for _, out in plan.spatial:
                expected = _fill(low_shape, mem_shape, obj_id, int(out.score.item()) % 1000)
                assert torch.equal(out.low_res, expected.low_res)
                assert torch.equal(out.memory, expected.memory)
                checked += 1
        reread_s = time.perf_counter() - start
        spilled_recent = sum(state.recent.is_spilled(1) for state in states.values())
        result = {
            "objects": args.objects,
            "frames": args.frames,
            "image_size": size,
            "budget_gib": args.budget_gib,
            "peak_rss_mib": peak_rss_bytes() / MIB,
            "start_peak_mib": fixed / MIB,
            "ram_state_mib": store.ram_nbytes / MIB,
            "disk_state_mib": store.disk_nbytes / MIB,
            "estimate_ram_mib": split_state_bytes(size, args.objects, args.frames, budget)[0]
            / MIB,
            "estimate_disk_mib": split_state_bytes(size, args.objects, args.frames, budget)[1]
            / MIB,
            "spills": store.spill_count,
            "frame1_spilled_objects": spilled_recent,
            "ms_store_per_object_frame": 1000 * store_s / (args.objects * args.frames),
            "ms_plan_per_object_frame": 1000 * plan_s / (args.objects * args.frames),
            "ms_reread_plan_per_object": 1000 * reread_s / args.objects,
            "reread_outputs_checked": checked,
            "rss_now_mib": rss_mib(),
        }
        for state in states.values():
            state.release()
        store.close()
    return result


def bounded(args) -> None:
    print(f"# {cpu_model()}; state layout of {args.objects} objects x {args.frames} frames")
    command = [
        sys.executable,
        __file__,
        "bounded",
        "--child",
        *("--objects", str(args.objects), "--frames", str(args.frames)),
        *("--image-size", str(args.image_size), "--budget-gib", str(args.budget_gib)),
    ]
    if args.spill_dir:
        command += ["--spill-dir", args.spill_dir]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"the bounded run failed:\n{done.stderr}")
    print(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("scaling")
    one.add_argument("--objects", type=int, nargs="+", default=[1, 10, 50])
    one.add_argument("--image-size", type=int, default=512)
    one.add_argument("--frames", type=int, default=4, help="timed frames")
    one.add_argument("--side", type=int, default=512, help="frame height and width")
    one.add_argument("--preset", default="sam2.1_hiera_tiny")
    one.add_argument("--threads", type=int, default=1)
    one.add_argument("--precision", default="float32")
    one.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    two = sub.add_parser("bounded")
    two.add_argument("--objects", type=int, default=200)
    two.add_argument("--frames", type=int, default=100)
    two.add_argument("--image-size", type=int, default=1024)
    two.add_argument("--budget-gib", type=float, default=8.0)
    two.add_argument("--spill-dir", default=None)
    two.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.mode == "scaling":
            torch.set_num_threads(args.threads)
            args.objects = args.objects[0]
            print(json.dumps(run_scaling(args)))
        else:
            print(json.dumps(run_bounded(args)))
    elif args.mode == "scaling":
        scaling(args)
    else:
        bounded(args)


if __name__ == "__main__":
    main()
