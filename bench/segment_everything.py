"""Segment everything on one slice: our generator against Meta's SAM2AutomaticMaskGenerator.

Both run in this process on the same random weights (Meta's initialisation, the IoU head
biased and the mask logits sharpened so that masks pass the filters, as in the parity tests)
and the same normalised frame. Runs alternate between the sides, the side that goes first
alternating too; CPU time (all threads) and wall time are taken per run, and the medians are
compared. The masks of the two sides are matched and their agreement printed.

On a machine without a loadable torchvision, the oracle runs on the tests' stand-in module;
its NMS is a plain loop slower than torchvision's C++ one, so the script also reports the
ratio with the oracle's NMS time taken out, the bound that favours the oracle.

    python bench/segment_everything.py --image-size 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from _harness import cpu_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--image", default="ihc.png", help="an image of skimage.data")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a generator parameter for both sides (default: Meta's defaults), e.g. "
        "points_per_side=16",
    )
    return parser.parse_args(argv)


def _parameters(pairs: list[str]) -> dict:
    parameters = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        parameters[name] = json.loads(value)
    return parameters


class _Timed:
    """Wraps a function and adds up the CPU time spent in it."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.process_time()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.process_time() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tests.engine._amg_oracle import (
        build_amg_pair,
        compare_records,
        install_torchvision_stand_in,
        oracle_generator,
        skimage_image,
    )

    from napari_sam2.engine.automatic import AutomaticMaskGenerator
    from napari_sam2.engine.frames import FrameSource

    stand_in = install_torchvision_stand_in()
    parameters = _parameters(args.param)
    ours_net, oracle_net = build_amg_pair(args.preset, args.image_size)
    source = FrameSource(skimage_image(args.image))
    frame = source.read(0)
    ours = AutomaticMaskGenerator(ours_net, **parameters)
    oracle = oracle_generator(oracle_net, **parameters)
    import sam2.automatic_mask_generator as meta

    nms = _Timed(meta.batched_nms)
    meta.batched_nms = nms

    sides = {"ours": lambda: ours.generate(source), "oracle": lambda: oracle.generate(frame)}
    cpu = {name: [] for name in sides}
    wall = {name: [] for name in sides}
    nms_seconds = []
    results = {}
    with torch.inference_mode():
        AutomaticMaskGenerator(ours_net, points_per_side=2).generate(source)  # warm-up
        oracle_generator(oracle_net, points_per_side=2).generate(frame)
        for repeat in range(args.repeats):
            order = ["ours", "oracle"] if repeat % 2 == 0 else ["oracle", "ours"]
            for name in order:
                before_nms = nms.seconds
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                results[name] = sides[name]()
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start_wall)
                if name == "oracle":
                    nms_seconds.append(nms.seconds - before_nms)
                print(f"run {repeat} {name}: cpu {cpu[name][-1]:.2f} s", file=sys.stderr)

    median = {name: statistics.median(values) for name, values in cpu.items()}
    oracle_nms = statistics.median(nms_seconds)
    agreement = compare_records(results["ours"], results["oracle"])
    report = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": "stand-in" if stand_in else "real",
        "image": args.image,
        "frame_shape": list(source.frame_shape),
        "image_size": args.image_size,
        "parameters": parameters or "Meta's defaults",
        "repeats": args.repeats,
        "ours_cpu_s": round(median["ours"], 2),
        "oracle_cpu_s": round(median["oracle"], 2),
        "oracle_nms_cpu_s": round(oracle_nms, 2),
        "ours_wall_s": round(statistics.median(wall["ours"]), 2),
        "oracle_wall_s": round(statistics.median(wall["oracle"]), 2),
        "ratio_cpu": round(median["ours"] / median["oracle"], 3),
        "ratio_cpu_oracle_without_nms": round(median["ours"] / (median["oracle"] - oracle_nms), 3),
        "masks": agreement["count"],
        "oracle_masks": agreement["oracle_count"],
        "min_mask_iou": round(float(agreement["min_iou"]), 4),
        "max_predicted_iou_diff": float(agreement["max_iou_pred_diff"]),
        "max_stability_diff": float(agreement["max_stability_diff"]),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
