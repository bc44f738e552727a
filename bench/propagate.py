"""Per-frame propagation time and peak memory: our Tracker against Meta's SAM2VideoPredictor.

Both run in this process on the same random weights and the same frames, one click per object
on frame 0, propagating forward. The two generators are interleaved frame by frame and the one
that goes first alternates, so caches, turbo clocks and other load hit both alike.

What is timed, per frame (``next()`` on each generator, plus a CUDA sync):

- ours: everything from the lazy uint16 stack to float32 logits at the frame's full size on the
  host, including reading, normalising and resizing that frame;
- the oracle: its ``propagate_in_video`` step plus copying its full-size logits to the host.
  Its ``init_state``, which preloads every frame as model input, is not timed.

The first frame (the prompted one, which also encodes the prompt's memory) and one warm-up frame
are dropped; the median is over the rest. Peak memory is measured in a fresh subprocess per side
(``--memory-side``), because the peak-RSS mark and the allocator's free lists are per process.

    python bench/propagate.py --image-size 512 --frames 12
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _harness import (
    MAX_OBJECTS,
    SyntheticStack,
    build_pair,
    cpu_model,
    feed_oracle_frames,
    oracle_autocast,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
)

SKIPPED_FRAMES = 2  # the prompted frame and one warm-up frame


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--objects", type=int, default=1, help=f"1..{MAX_OBJECTS}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--precision",
        default=None,
        choices=("auto", "float32", "bfloat16", "float16"),
        help="our tracker's precision (default: float32 on the CPU, as the earlier figures; "
        "auto, i.e. bfloat16, on CUDA); the oracle runs float32 on the CPU and bfloat16 "
        "autocast on CUDA either way",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the memory subprocesses, no timing"
    )
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="ours runs objects one by one (batch_objects=False)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time each top-level submodule per frame"
    )
    parser.add_argument("--memory-side", choices=("ours", "oracle"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.precision is None:
        args.precision = "auto" if args.device == "cuda" else "float32"
    if not 1 <= args.objects <= MAX_OBJECTS:
        parser.error(f"--objects must be 1..{MAX_OBJECTS}")
    if args.memory_only and args.no_memory:
        parser.error("--memory-only and --no-memory exclude each other")
    if args.frames < SKIPPED_FRAMES + 1:
        parser.error(f"--frames must be at least {SKIPPED_FRAMES + 1}")
    return args


class Bench:
    """Weights, frames and prompts shared by both sides; makes fresh sessions of either."""

    def __init__(self, args):
        from napari_sam2.engine.frames import FrameSource

        self.args = args
        self.device = torch.device(args.device)
        self.stack = SyntheticStack(args.frames, args.height, args.width)
        self.clicks = self.stack.clicks(args.objects)
        self.ours_model, self.oracle = build_pair(args.preset, args.image_size, self.device)
        self._oracle_frames = {} if args.memory_side is None else None
        feed_oracle_frames(
            FrameSource(self.stack), args.image_size, self.device, self._oracle_frames
        )

    def ours(self):
        """A generator of (frame, {obj: logits ndarray}) after clicking on frame 0."""
        from napari_sam2.engine.tracker import Tracker

        tracker = Tracker(
            self.ours_model,
            self.stack,
            device=self.device,
            batch_objects=not self.args.no_batch,
            precision=self.args.precision,
        )
        for obj_id, click in enumerate(self.clicks, start=1):
            tracker.set_prompts(0, obj_id, points=click, labels=[1])
        return tracker.propagate(0, "forward")

    def oracle_session(self):
        with torch.inference_mode(), oracle_autocast(self.device):
            return self.oracle.init_state(video_path="unused")

    def oracle_run(self, state):
        """The same as :meth:`ours` on an ``init_state`` made beforehand (not timed)."""
        with torch.inference_mode(), oracle_autocast(self.device):
            for obj_id, click in enumerate(self.clicks, start=1):
                self.oracle.add_new_points_or_box(state, 0, obj_id, points=click, labels=[1])
        steps = self.oracle.propagate_in_video(state, 0)
        while True:
            with torch.inference_mode(), oracle_autocast(self.device):
                item = next(steps, None)
            if item is None:
                return
            frame, ids, masks = item
            yield frame, {int(i): m[0].float().cpu() for i, m in zip(ids, masks)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SubmoduleClock:
    """Seconds spent in each top-level submodule of a network (image_encoder, ...), via forward
    hooks; the submodule names are the state-dict prefixes, shared by both networks."""

    def __init__(self, network: torch.nn.Module, device: torch.device):
        self.totals: dict[str, float] = {}
        self._started: dict[str, float] = {}
        for name, module in network.named_children():
            if next(module.parameters(), None) is None:
                continue
            module.register_forward_pre_hook(self._enter(name, device))
            module.register_forward_hook(self._leave(name, device))

    def _enter(self, name, device):
        def hook(module, inputs):
            _sync(device)
            self._started[name] = time.perf_counter()

        return hook

    def _leave(self, name, device):
        def hook(module, inputs, output):
            _sync(device)
            spent = time.perf_counter() - self._started.pop(name)
            self.totals[name] = self.totals.get(name, 0.0) + spent

        return hook

    def snapshot(self) -> dict[str, float]:
        return dict(self.totals)


def time_interleaved(bench: Bench):
    """Per-frame seconds of each side, per-frame seconds by submodule (with ``--breakdown``),
    and how the two sides' outputs compare: the largest logit difference, the smallest mask IoU
    and the share of the frame the oracle's masks cover (to show that they are real)."""
    device = bench.device
    clocks = {}
    if bench.args.breakdown:
        clocks = {
            "ours": SubmoduleClock(bench.ours_model, device),
            "oracle": SubmoduleClock(bench.oracle, device),
        }
    parts = {name: [] for name in clocks}
    ours = bench.ours()
    oracle = bench.oracle_run(bench.oracle_session())
    sides = {"ours": ours, "oracle": oracle}
    times = {"ours": [], "oracle": []}
    outputs = {}
    worst = {"logit": 0.0, "iou": 1.0, "fractions": []}
    for step in range(bench.args.frames):
        order = ("ours", "oracle") if step % 2 == 0 else ("oracle", "ours")
        for name in order:
            before = clocks[name].snapshot() if clocks else None
            _sync(device)
            begin = time.perf_counter()
            outputs[name] = next(sides[name])
            _sync(device)
            times[name].append(time.perf_counter() - begin)
            if clocks:
                after = clocks[name].snapshot()
                spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
                spent["(outside the network)"] = times[name][-1] - sum(spent.values())
                parts[name].append(spent)
        (frame_a, ours_out), (frame_b, ref_out) = outputs["ours"], outputs["oracle"]
        assert frame_a == frame_b, f"frame order differs: {frame_a} != {frame_b}"
        for obj_id, ref in ref_out.items():
            got = torch.as_tensor(ours_out[obj_id])
            worst["logit"] = max(worst["logit"], float((got - ref).abs().max()))
            union = float(((got > 0) | (ref > 0)).sum())
            if union:
                iou = float(((got > 0) & (ref > 0)).sum()) / union
                worst["iou"] = min(worst["iou"], iou)
            worst["fractions"].append(float((ref > 0).float().mean()))
    return times, parts, worst


def measure_memory_side(bench: Bench, side: str) -> dict:
    """Peak RSS (CPU) or peak allocated (CUDA) increase of one side, MiB, in two phases:
    making the session and prompting (the oracle preloads every frame here), and propagating."""
    device = bench.device
    gc.collect()

    def begin():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device) / 2**20
        if not reset_peak_rss():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
        return rss_mib()

    def peak():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) / 2**20
        return peak_rss_mib()

    base = begin()
    if side == "ours":
        steps = bench.ours()
    else:
        steps = bench.oracle_run(bench.oracle_session())
        first = next(steps)  # the oracle prompts lazily inside its generator
    session = peak() - base
    base = begin()
    if side == "oracle":
        del first
    for _ in steps:  # outputs are dropped, as a viewer writing them into a layer would
        pass
    return {"session_mib": session, "propagate_mib": peak() - base}


def memory_in_subprocesses(argv) -> dict:
    results = {}
    for side in ("ours", "oracle"):
        command = [sys.executable, __file__, *argv, "--memory-side", side]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory run of {side} failed:\n{done.stderr[-2000:]}")
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def bench_precision(args) -> str:
    """The precision our side runs in, as the tracker resolves ``--precision`` here."""
    from napari_sam2.engine.precision import precision_name, resolve_precision

    return precision_name(resolve_precision(args.precision, args.device))


def report_breakdown(parts):
    """Median per-frame milliseconds of each submodule, side by side."""
    skip = SKIPPED_FRAMES
    names = sorted({key for frames in parts.values() for frame in frames for key in frame})
    print("median per-frame time by submodule (ms):")
    print(f"  {'submodule':24s} {'ours':>9s} {'oracle':>9s}")
    for key in names:
        cells = [
            1e3 * statistics.median(frame.get(key, 0.0) for frame in parts[side][skip:])
            for side in ("ours", "oracle")
        ]
        print(f"  {key:24s} {cells[0]:9.1f} {cells[1]:9.1f}")


def device_name(args) -> str:
    if args.device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_model()


def summarise(args, times, worst, memory) -> dict:
    """The figures of a run, as written by ``--json``."""
    figures = {
        "preset": args.preset,
        "image_size": args.image_size,
        "frames": args.frames,
        "objects": args.objects,
        "device": args.device,
        "device_name": device_name(args),
        "precision": bench_precision(args),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if times is not None:
        skip = SKIPPED_FRAMES
        medians = {name: statistics.median(t[skip:]) for name, t in times.items()}
        pairs = zip(times["ours"][skip:], times["oracle"][skip:])
        figures.update(
            {
                "ours_ms": 1e3 * medians["ours"],
                "oracle_ms": 1e3 * medians["oracle"],
                "ours_fps": 1 / medians["ours"],
                "oracle_fps": 1 / medians["oracle"],
                "ratio_of_medians": medians["ours"] / medians["oracle"],
                "median_of_ratios": statistics.median(a / b for a, b in pairs),
                "largest_logit_difference": worst["logit"],
                "smallest_mask_iou": worst["iou"],
            }
        )
    if memory:
        figures["memory_mib"] = memory
    return figures


def report(args, times, parts, worst, memory):
    figures = summarise(args, times, worst, memory)
    unit = "peak RSS increase" if args.device == "cpu" else "peak CUDA memory allocated increase"
    print(
        f"{args.preset} @ {args.image_size}, {args.frames} frames {args.height}x{args.width} "
        f"uint16, {args.objects} object(s), device {args.device}, ours in "
        f"{figures['precision']}, {figures['threads']} threads, torch {torch.__version__}, "
        f"{figures['device_name']}"
    )
    if times is not None:
        skip = SKIPPED_FRAMES
        print(f"per-frame time over frames {skip}..{args.frames - 1} (ms):")
        print(f"  {'side':8s} {'median':>9s} {'min':>9s} {'max':>9s}")
        for name, series in times.items():
            kept = series[skip:]
            median = figures[f"{name}_ms"]
            print(f"  {name:8s} {median:9.1f} {1e3 * min(kept):9.1f} {1e3 * max(kept):9.1f}")
        print(
            f"ratio ours/oracle: {figures['ratio_of_medians']:.3f} of the medians, "
            f"{figures['median_of_ratios']:.3f} median of per-frame ratios"
        )
        fractions = worst["fractions"]
        print(
            f"largest logit difference ours vs oracle: {worst['logit']:.3g}; smallest mask IoU "
            f"{worst['iou']:.4f}; oracle's masks cover {min(fractions):.3f}.."
            f"{max(fractions):.3f} of the frame"
        )
    if parts:
        report_breakdown(parts)
    if memory:
        print(f"{unit} (MiB), one fresh subprocess per side:")
        print(f"  {'side':8s} {'session+prompt':>15s} {'propagate':>10s}")
        for name, values in memory.items():
            print(f"  {name:8s} {values['session_mib']:15.1f} {values['propagate_mib']:10.1f}")
    if args.json:
        target = Path(args.json)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(figures, indent=1))
        temporary.replace(target)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    times = parts = worst = None
    if args.memory_side or not args.memory_only:
        bench = Bench(args)
        if args.memory_side:
            print(json.dumps(measure_memory_side(bench, args.memory_side)))
            return
        times, parts, worst = time_interleaved(bench)
        del bench
        gc.collect()
    memory = None if args.no_memory else memory_in_subprocesses(argv)
    report(args, times, parts, worst, memory)


if __name__ == "__main__":
    main()
