"""Precompute on dask.distributed: throughput against worker processes, and memory per worker.

``scale`` fills a fresh feature store from the same on-disk stack with each cluster layout in
``--layouts`` (``WORKERSxTHREADS``: worker processes x torch threads each), and prints the
throughput (computed frames per second of wall time, from the first chunk sent to the last one
finished) and its ratio to the first layout. Each layout gets its own local cluster, all started
first; a warm-up store of one chunk per worker makes every worker build the network and encode a
frame, so the timed runs measure the steady state, not start-up. The layouts then take turns,
``--repeat`` times, and the best and median of each are printed (on a shared machine the best
is the run least disturbed by other processes), with the workers' CPU seconds per frame (user +
system time of the worker processes over the run, divided by the frames): unlike the wall
time, it does not depend on how much of the cores other processes leave us, and equal CPU time
per frame for 1 and 2 workers means 2 workers on 2 free cores give twice the throughput::

    python bench/precompute.py scale --frames 24 --layouts 1x1 1x2 2x1 --repeat 3

``memory`` fills a store for stacks of each length in ``--lengths`` on a fresh 2-worker
cluster per length, and prints each worker's peak RSS (``ru_maxrss`` of the worker process,
from start-up to the end of the run, the network included) and its RSS split into anonymous
memory and mapped files at the end::

    python bench/precompute.py memory --lengths 50 200

Both use random weights of ``--preset`` (sam2.1_hiera_tiny) saved to a checkpoint file that
the workers load, at input size ``--image-size`` (512), on ``--side`` x ``--side`` uint16
frames (512) written as an uncompressed TIFF that workers memory-map. Run from the repository
root: ``.venv/bin/python bench/precompute.py ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import tifffile
import torch
from _harness import SyntheticStack, cpu_model, random_model

from napari_sam2.distributed.cluster import connect
from napari_sam2.distributed.precompute import FeatureJob, precompute
from napari_sam2.distributed.worker import ModelOptions


def write_stack(path: Path, frames: int, side: int) -> Path:
    """A (frames, side, side) uint16 TIFF, written frame by frame (never whole in memory)."""
    stack = SyntheticStack(frames, side, side)
    tifffile.imwrite(path, (stack.frame(i) for i in range(frames)),
                     shape=stack.shape, dtype=stack.dtype)  # fmt: skip
    return path


def worker_memory() -> dict:
    """This worker process's peak RSS and its current anonymous and file-backed RSS, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    status = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                status[key] = int(value.split()[0]) / 1024
    return {"peak_rss_mib": round(peak, 1), **{k: round(v, 1) for k, v in status.items()}}


def cpu_seconds() -> float:
    """User + system CPU seconds of this (worker) process so far, all its threads."""
    times = os.times()
    return times.user + times.system


def job(args, stack: Path, store: Path, checkpoint: Path) -> FeatureJob:
    return FeatureJob(
        stack=str(stack),
        store=str(store),
        model=ModelOptions(args.preset, str(checkpoint), args.image_size, "cpu"),
        precision=args.precision,
        intensity_range=(0, 4000),
    )


def scale(args, folder: Path, checkpoint: Path) -> None:
    stack = write_stack(folder / "scale.tif", args.frames, args.side)
    layouts = [tuple(int(n) for n in text.lower().split("x")) for text in args.layouts]
    rates: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts}
    cpu_per_frame: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts}
    with contextlib.ExitStack() as clusters:
        clients = {}
        for workers, threads in layouts:
            client = clusters.enter_context(connect(workers=workers, threads=threads))
            warm = write_stack(folder / f"warm{workers}x{threads}.tif", 2 * workers, args.side)
            precompute(job(args, warm, folder / f"warm{workers}x{threads}.zarr", checkpoint),
                       client=client, chunk_frames=1)  # fmt: skip
            clients[workers, threads] = client
        # Layouts take turns, so a burst of load from other processes hits them alike.
        for repeat in range(args.repeat):
            for workers, threads in layouts:
                store = folder / f"scale{workers}x{threads}-{repeat}.zarr"
                client = clients[workers, threads]
                before = client.run(cpu_seconds)
                report = precompute(job(args, stack, store, checkpoint), client=client,
                                    chunk_frames=args.chunk_frames)  # fmt: skip
                after = client.run(cpu_seconds)
                assert report.computed == args.frames, report
                rates[workers, threads].append(report.frames_per_second)
                cpu = sum(after[w] - before[w] for w in after) / report.computed
                cpu_per_frame[workers, threads].append(cpu)
                print(json.dumps({"layout": f"{workers}x{threads}", "repeat": repeat,
                                  "seconds": round(report.compute_seconds, 2),
                                  "frames_per_s": round(report.frames_per_second, 3),
                                  "worker_cpu_s_per_frame": round(cpu, 3),
                                  "workers_used": len(set(report.pids))}), flush=True)  # fmt: skip
    base = max(rates[layouts[0]])
    for (workers, threads), values in rates.items():
        best = max(values)
        cpu = statistics.median(cpu_per_frame[workers, threads])
        print(f"{workers} worker(s) x {threads} thread(s): best {best:.3f} frames/s, median "
              f"{statistics.median(values):.3f}; best / best of {layouts[0][0]}x"
              f"{layouts[0][1]}: {best / base:.2f}; worker CPU s per frame (median) "
              f"{cpu:.3f}")  # fmt: skip


def memory(args, folder: Path, checkpoint: Path) -> None:
    for length in args.lengths:
        stack = write_stack(folder / f"mem{length}.tif", length, args.side)
        with connect(workers=2) as client:
            start = time.perf_counter()
            report = precompute(job(args, stack, folder / f"mem{length}.zarr", checkpoint),
                                client=client, chunk_frames=args.chunk_frames)  # fmt: skip
            seconds = time.perf_counter() - start
            per_worker = client.run(worker_memory)
        assert report.computed == length, report
        stack_mib = os.path.getsize(stack) / 2**20
        print(json.dumps({"frames": length, "stack_mib": round(stack_mib, 1),
                          "seconds": round(seconds, 1), "workers": list(per_worker.values())}),
              flush=True)  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("scale", "memory"):
        mode = sub.add_parser(name)
        mode.add_argument("--preset", default="sam2.1_hiera_tiny")
        mode.add_argument("--image-size", type=int, default=512)
        mode.add_argument("--side", type=int, default=512, help="frame height and width")
        mode.add_argument("--precision", default="auto")
        mode.add_argument("--chunk-frames", type=int, default=None)
        mode.add_argument("--folder", default=None, help="where stacks and stores go")
    sub.choices["scale"].add_argument("--frames", type=int, default=16)
    sub.choices["scale"].add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"])
    sub.choices["scale"].add_argument("--repeat", type=int, default=3)
    sub.choices["memory"].add_argument("--lengths", type=int, nargs="+", default=[50, 200])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.folder) as temp:
        folder = Path(temp)
        checkpoint = folder / "random.pt"
        model = random_model(args.preset, args.image_size, object_bias=None)  # features only
        torch.save({"model": model.state_dict()}, checkpoint)
        del model
        print(f"# {cpu_model()}; {os.cpu_count()} cores; {args.preset} random weights at "
              f"{args.image_size}, {args.side}x{args.side} uint16 frames, precision "
              f"{args.precision}")  # fmt: skip
        (scale if args.mode == "scale" else memory)(args, folder, checkpoint)


if __name__ == "__main__":
    main()
