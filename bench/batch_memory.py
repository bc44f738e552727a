"""Peak RSS per worker of ``napari-sam2 batch`` against stack length.

For each length in ``--lengths``, a fresh local cluster of ``--workers`` worker processes runs
``napari-sam2 batch`` (the real command, in this process) on a jobs file of one row per worker,
all rows on the same ``--side`` x ``--side`` uint16 stack (an uncompressed TIFF the workers
memory-map) with one click on the first frame, propagated through every frame. Then each
worker's peak RSS (``ru_maxrss`` from start-up on: Python, torch and the network included) and
its RSS at the end, split into anonymous memory and mapped files, are printed.

``--modes disk`` is batch as it is (each row's label volume in a file beside its output, the
tracking state within the worker's share of the machine's memory); ``ram`` patches the workers
back to the previous behaviour (the whole label volume in RAM, the tracker's default budget), to
show what the change saves::

    python bench/batch_memory.py --lengths 50 200 --modes disk ram

Random weights of ``--preset`` (sam2.1_hiera_tiny, object-score head biased so the object is
tracked), saved to a checkpoint file the workers load, at input size ``--image-size`` (512),
``precision="auto"``. Run from the repository root: ``.venv/bin/python bench/batch_memory.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from _harness import SyntheticStack, cpu_model, random_model
from precompute import worker_memory, write_stack

from napari_sam2 import cli
from napari_sam2.distributed.cluster import connect
from napari_sam2.engine.prompt_files import Prompt, write_points_csv


def labels_in_ram() -> None:
    """In a worker: make batch rows keep their labels in RAM with the tracker's default state
    budget, as before the label buffer and the per-worker budget."""
    from napari_sam2 import cli as worker_cli

    run = getattr(worker_cli._run_segment, "__wrapped__", worker_cli._run_segment)

    def in_ram(args, plan=None, model=None):
        args.labels_on_disk, args.state_ram_bytes = False, None
        return run(args, plan=plan, model=model)

    in_ram.__wrapped__ = run
    worker_cli._run_segment = in_ram


def one_length(args, folder: Path, checkpoint: Path, length: int, mode: str) -> dict:
    stack = folder / f"stack{length}.tif"
    if not stack.exists():
        write_stack(stack, length, args.side)
    row, col = SyntheticStack(length, args.side, args.side).centres(0)[0]
    points = write_points_csv(folder / "points.csv", [Prompt(0, 1, [[col, row]], [1])])
    outs = [folder / f"{mode}{length}_{index}.tif" for index in range(args.workers)]
    jobs = folder / f"jobs_{mode}{length}.csv"
    jobs.write_text(
        "stack,points,boxes,prompts,out\n" + "".join(f"{stack},{points},,,{out}\n" for out in outs)
    )
    with connect(workers=args.workers) as client:
        if mode == "ram":
            client.run(labels_in_ram)
        argv = ["batch", str(jobs), "--scheduler", client.scheduler.address, "-q",
                "--checkpoint", str(checkpoint), "--image-size", str(args.image_size),
                "--device", "cpu", "--range", "0", "4000"]  # fmt: skip
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as summary:
            status = cli.main(argv)
        seconds = time.perf_counter() - start
        per_worker = list(client.run(worker_memory).values())
    assert status == 0, summary.getvalue()
    assert all(out.exists() for out in outs), summary.getvalue()
    labels_mib = length * args.side * args.side * 2 / 2**20
    for out in outs:
        out.unlink()
    return {"mode": mode, "frames": length, "label_volume_mib": round(labels_mib, 1),
            "seconds": round(seconds, 1), "workers": per_worker}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--side", type=int, default=1024, help="frame height and width")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--modes", nargs="+", choices=["disk", "ram"], default=["disk", "ram"])
    parser.add_argument("--folder", default=None, help="where stacks and outputs go")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.folder) as temp:
        folder = Path(temp)
        checkpoint = folder / "random.pt"
        model = random_model(args.preset, args.image_size)
        torch.save({"model": model.state_dict()}, checkpoint)
        del model
        print(f"# {cpu_model()}; {os.cpu_count()} cores; {args.preset} random weights at "
              f"{args.image_size}, {args.side}x{args.side} uint16 frames, {args.workers} "
              f"worker(s), one row each")  # fmt: skip
        for length in args.lengths:
            for mode in args.modes:
                print(json.dumps(one_length(args, folder, checkpoint, length, mode)), flush=True)


if __name__ == "__main__":
    main()
