"""How peak RSS grows with stack length when propagating one object.

Each run is a fresh subprocess that tracks one object (a click on frame 0) forward through N
lazily synthesised 1024x1024 uint16 frames and reports its peak RSS (VmHWM, reset after the
networks are built, so it is the peak while prompting and propagating). Fixed costs (Python,
torch, weights, the first frames) cancel in the difference of two lengths:

    growth = (peak(N_long) - peak(N_short)) / (N_long - N_short)   MiB per frame

The stack itself costs nothing: each frame is made when read and never stored. Outputs are
dropped as they come, as a viewer writing them into a Labels layer would.

    python bench/memory_growth.py --lengths 40 160 --image-size 256 --sides ours oracle
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import torch
from _harness import (
    SyntheticStack,
    build_pair,
    cpu_model,
    feed_oracle_frames,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--lengths", type=int, nargs=2, default=(40, 160), metavar=("SHORT", "LONG")
    )
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--sides", nargs="+", choices=("ours", "oracle"), default=["ours"])
    parser.add_argument(
        "--feature-cache-mib",
        type=float,
        default=None,
        help="our Tracker's feature_cache_bytes in MiB (default: the Tracker's default)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--run", nargs=2, metavar=("SIDE", "FRAMES"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def start_measuring(result: dict) -> None:
    """Forget the peak of building the networks, which would hide what propagation adds."""
    gc.collect()
    if not reset_peak_rss():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs); Linux only")
    result["baseline_rss_mib"] = rss_mib()


def run_one(args, side: str, num_frames: int) -> dict:
    """Propagate through ``num_frames`` frames in this process; peak RSS and state sizes."""
    from napari_sam2.engine.frames import FrameSource
    from napari_sam2.engine.tracker import Tracker

    device = torch.device("cpu")
    stack = SyntheticStack(num_frames, args.height, args.width)
    click = stack.clicks(1)[0]
    ours_model, oracle = build_pair(args.preset, args.image_size, device)
    result = {"side": side, "frames": num_frames}
    if side == "ours":
        del oracle
        start_measuring(result)
        options = {}
        if args.feature_cache_mib is not None:
            options["feature_cache_bytes"] = int(args.feature_cache_mib * 2**20)
        tracker = Tracker(ours_model, stack, **options)
        tracker.set_prompts(0, 1, points=click, labels=[1])
        visited = sum(1 for _ in tracker.propagate(0, "forward"))
        result["state_mib"] = tracker.state_nbytes / 2**20
        result["feature_cache_mib"] = tracker.features.nbytes / 2**20
    else:
        del ours_model
        start_measuring(result)
        feed_oracle_frames(FrameSource(stack), args.image_size, device)
        with torch.inference_mode():
            state = oracle.init_state(video_path="unused")
            oracle.add_new_points_or_box(state, 0, 1, points=click, labels=[1])
        visited = sum(1 for _ in oracle.propagate_in_video(state, 0))
    if visited != num_frames:
        raise RuntimeError(f"{side} visited {visited} of {num_frames} frames")
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def run_in_subprocess(argv, side: str, num_frames: int) -> dict:
    command = [sys.executable, __file__, *argv, "--run", side, str(num_frames)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} with {num_frames} frames failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        side, frames = args.run
        print(json.dumps(run_one(args, side, int(frames))))
        return
    short, long = sorted(args.lengths)
    cache = "default" if args.feature_cache_mib is None else f"{args.feature_cache_mib:g} MiB"
    print(
        f"{args.preset} @ {args.image_size}, one object, {args.height}x{args.width} uint16 "
        f"lazy frames, our feature cache {cache}, torch {torch.__version__}, {cpu_model()}"
    )
    for side in args.sides:
        runs = [run_in_subprocess(argv, side, n) for n in (short, long)]
        growth = (runs[1]["peak_rss_mib"] - runs[0]["peak_rss_mib"]) / (long - short)
        peaks = ", ".join(
            f"{r['frames']} frames {r['peak_rss_mib']:.1f} (from {r['baseline_rss_mib']:.1f})"
            for r in runs
        )
        extra = ""
        if side == "ours":
            extra = (
                f"; at {long} frames state {runs[1]['state_mib']:.1f} MiB, "
                f"feature cache {runs[1]['feature_cache_mib']:.1f} MiB"
            )
        print(f"{side:7s} peak RSS (MiB): {peaks} -> {growth:.3f} MiB/frame{extra}")


if __name__ == "__main__":
    main()
