"""Cost of working on a region around each object (issue 10, item 5), against the plain tracker.

On a stack of large slices (default 4 x 4096 x 4096 uint16), one click per object on slice 0,
then a forward propagation: seconds for the clicks and per propagated slice, plain tracker vs
RegionTracker, in one process (random weights; the timing does not depend on them). Random
weights give masks that fill their region, which would make the regions grow (rule 3 of
engine/roi.py); the regions are kept at their first size (max_growth=0), as for a small object
whose mask fits. Each figure is the best of ``--repeat`` runs, after a warm-up.

    .venv/bin/python bench/roi.py --side 4096 --frames 4 --image-size 512 --objects 1 3
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
from _harness import random_model

from napari_sam2.engine.region_tracker import RegionTracker
from napari_sam2.engine.tracker import Tracker


def stack_of(frames: int, side: int, objects: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Dim noise with ``objects`` bright discs (radius side / 64) spread over the slice."""
    rng = np.random.default_rng(0)
    stack = rng.integers(100, 400, (frames, side, side), dtype=np.uint16)
    radius = side // 64
    centres = [(side // 4 + k * side // (2 * max(objects, 1)), side // 3) for k in range(objects)]
    rows, cols = np.ogrid[:side, :side]
    for t in range(frames):
        for row, col in centres:
            stack[t][(rows - row) ** 2 + (cols - col - 4 * t) ** 2 < radius**2] = 3000
    return stack, centres


def run(make, model, stack, centres) -> tuple[float, float]:
    """(seconds for the clicks, seconds per propagated slice)."""
    tracker = make(model, stack, precision="float32")
    start = time.perf_counter()
    for obj_id, (row, col) in enumerate(centres, start=1):
        tracker.set_prompts(0, obj_id, points=np.array([[col, row]]), labels=np.array([1]))
    clicks = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(1 for _ in tracker.propagate(0, "forward"))
    per_slice = (time.perf_counter() - start) / max(count - 1, 1)  # slice 0 is the prompt's
    return clicks, per_slice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = random_model("sam2.1_hiera_tiny", args.image_size)
    threads = torch.get_num_threads()
    print(f"{args.frames} x {args.side}^2 uint16, input {args.image_size}, {threads} threads")
    print("objects | plain clicks s | roi clicks s | plain s/slice | roi s/slice | roi/plain")
    warm, spots = stack_of(2, args.image_size, 1)
    run(Tracker, model, warm, spots)
    roi_tracker = functools.partial(RegionTracker, max_growth=0)
    for objects in args.objects:
        stack, centres = stack_of(args.frames, args.side, objects)
        runs = {Tracker: [], roi_tracker: []}
        for _ in range(args.repeat):
            for make, found in runs.items():
                found.append(run(make, model, stack, centres))
        plain = [min(t[i] for t in runs[Tracker]) for i in (0, 1)]
        roi = [min(t[i] for t in runs[roi_tracker]) for i in (0, 1)]
        print(
            f"{objects} | {plain[0]:.2f} | {roi[0]:.2f} | {plain[1]:.2f} | {roi[1]:.2f} | "
            f"{roi[1] / plain[1]:.2f}"
        )


if __name__ == "__main__":
    main()
