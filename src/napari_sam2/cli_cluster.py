"""``napari-sam2 precompute`` and ``napari-sam2 batch``: the commands that run on dask.distributed.

::

    napari-sam2 precompute STACK --store features.zarr [--scheduler ADDRESS] [--workers N]
    napari-sam2 batch JOBS.csv [--store DIR] [--scheduler ADDRESS] [--workers N]

Without ``--scheduler`` both start a local cluster of worker processes on this machine (one per
GPU, else one per core up to four; see :mod:`napari_sam2.distributed.cluster`); with it they
send the same tasks to the cluster behind that scheduler, whose workers must see the same files
(a shared file system). Both resume: ``precompute`` skips the frames already in the store,
``batch`` the rows whose output exists. Each batch row is segmented exactly as ``napari-sam2
segment`` does it (same checks, same prompt-file replay, same atomic write), by the same code.

The argparse lives here; :func:`add_cluster_commands` hooks the commands into
:func:`napari_sam2.cli.build_parser`. dask and distributed are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import cli

__all__ = ["EXIT_ROWS_FAILED", "add_cluster_commands", "segment_row"]

EXIT_ROWS_FAILED = 1
"""``batch``'s exit status when at least one row failed (the others were still written)."""

#: ``batch`` options handed to every row's ``segment`` (attribute names of its namespace).
_ROW_OPTIONS = (
    "model",
    "checkpoint",
    "image_size",
    "device",
    "precision",
    "axis",
    "channel_axis",
    "range",
    "direction",
)


# ---------------------------------------------------------------------------------- parser


def add_cluster_commands(commands) -> None:
    """Add ``precompute`` and ``batch`` to the CLI's subcommands."""
    pre = commands.add_parser(
        "precompute",
        help="compute every frame's image features into a feature store, on a dask cluster",
        description=(
            "Compute the image features of every frame of STACK and keep them in the feature "
            "store --store (a .zarr folder), so that napari, segment and batch read them "
            "instead of computing them. Frames already in the store are skipped, so an "
            "interrupted run resumes. A store made for other data or another model is refused."
        ),
    )
    pre.add_argument("stack", help="image: .tif/.tiff, a .zarr folder (OME-Zarr) or .npy")
    pre.add_argument(
        "--store", required=True, metavar="DIR.zarr", help="the feature store (created if absent)"
    )
    _add_cluster_options(pre)
    pre.add_argument(
        "--chunk-frames",
        type=int,
        metavar="N",
        help="frames per task (default: about four tasks per worker, at most 16 frames)",
    )
    cli._add_model_options(pre)
    pre.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    pre.set_defaults(handler=_run_precompute)

    batch = commands.add_parser(
        "batch",
        help="segment many volumes from a jobs CSV, one task per volume, on a dask cluster",
        description=(
            "Segment every row of JOBS.csv (header stack,points,boxes,prompts,out; empty cells "
            "allowed; relative paths are relative to the CSV's folder) as 'segment' would, one "
            "task per row. 'prompts' is the annotator's prompt file, 'points'/'boxes' napari "
            "CSV files. Outputs are written atomically; a row whose output exists is skipped, "
            "so a second run resumes. A failing row is reported in the summary table and does "
            f"not stop the others; the exit status is then {EXIT_ROWS_FAILED}."
        ),
    )
    batch.add_argument("jobs", metavar="JOBS.csv", help="the jobs file, one row per volume")
    batch.add_argument(
        "--store",
        metavar="DIR",
        help="a folder of feature stores, one per stack (<stack name>.features.zarr), read "
        "when present and filled otherwise",
    )
    _add_cluster_options(batch)
    batch.add_argument(
        "--state-ram-gib",
        type=float,
        metavar="GIB",
        help="RAM each row's tracking state may hold before it goes to disk (default: half of "
        "a machine's available memory split between the tasks it runs at once, at most 4 GiB)",
    )
    cli._add_model_options(batch)
    cli._add_direction_option(batch)
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(handler=_run_batch)


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running dask scheduler (tcp://host:8786); default: a local cluster of worker "
        "processes on this machine",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes of the local cluster (default: one per GPU, else one per core "
        "up to 4)",
    )


# ---------------------------------------------------------------------------------- commands


def _require_cluster():
    from .distributed import ClusterUnavailable, require_distributed

    try:
        return require_distributed()
    except ClusterUnavailable as err:
        raise cli.CommandError(str(err)) from None


def _connect(args: argparse.Namespace):
    from .distributed.cluster import connect

    if args.workers is not None and args.workers < 1:
        raise cli.CommandError(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None and args.scheduler is not None:
        raise cli.CommandError(
            "--workers sets the size of the local cluster; with --scheduler the cluster's own "
            "workers are used, so give one of the two"
        )
    return connect(args.scheduler, workers=args.workers)


def _say_cluster(client, quiet: bool) -> None:
    if quiet:
        return
    layout = getattr(client, "napari_sam2_layout", None)
    where = layout.describe() if layout is not None else f"{len(client.nthreads())} worker(s)"
    print(f"cluster: {where} ({client.scheduler.address})", file=sys.stderr)


def _absolute(path: str | None) -> str | None:
    """Workers may run elsewhere (another folder, another machine): send absolute paths."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def _run_precompute(args: argparse.Namespace) -> int:
    _require_cluster()
    from .distributed.precompute import FeatureJob, precompute
    from .distributed.worker import ModelOptions
    from .engine.device import resolve_device
    from .model.config import get_config

    args.model = args.model or cli.DEFAULT_MODEL
    cli._check_model_name(args.model)
    resolve_device(args.device)
    try:
        get_config(args.model, args.image_size)
    except ValueError as err:
        raise cli.CommandError(f"--image-size {args.image_size}: {cli._one_line(err)}") from None
    if args.chunk_frames is not None and args.chunk_frames < 1:
        raise cli.CommandError(f"--chunk-frames must be at least 1, got {args.chunk_frames}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise cli.CommandError(f"--checkpoint {args.checkpoint} does not exist")
    cli.read_stack(args.stack)  # a missing or unreadable stack fails here, not on a worker
    store = Path(args.store)
    for name, source in (("STACK", args.stack), ("--checkpoint", args.checkpoint)):
        if source is not None and cli._io._same_file(store, Path(source)):
            raise cli.CommandError(
                f"--store {store} is the input {name} {source}; give the store its own folder"
            )
    job = FeatureJob(
        stack=_absolute(args.stack),
        store=_absolute(args.store),
        model=ModelOptions(args.model, _absolute(args.checkpoint), args.image_size, args.device),
        precision=args.precision or "auto",
        axis=args.axis,
        channel_axis=args.channel_axis,
        intensity_range=None if args.range is None else tuple(args.range),
    )
    with _connect(args) as client:
        _say_cluster(client, args.quiet)
        with cli._ProgressBar(not args.quiet, desc="precomputing") as bar:
            report = precompute(
                job, client=client, chunk_frames=args.chunk_frames, progress=bar.update
            )
    if not args.quiet:
        print(report.summary())
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    _require_cluster()
    from .distributed.batch import format_summary, read_jobs, run_batch
    from .distributed.cluster import torch_threads_of
    from .distributed.worker import tasks_per_host

    if args.model is not None:
        cli._check_model_name(args.model)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise cli.CommandError(f"--checkpoint {args.checkpoint} does not exist")
    budget = args.state_ram_gib
    if budget is not None and not (budget > 0 and budget < float("inf")):
        raise cli.CommandError(f"--state-ram-gib must be a number above 0, got {budget}")
    rows = read_jobs(args.jobs)  # the whole file is checked before a cluster starts
    options = {name: getattr(args, name) for name in _ROW_OPTIONS}
    options["checkpoint"] = _absolute(args.checkpoint)
    options["state_ram_bytes"] = None if budget is None else int(budget * 2**30)
    with _connect(args) as client:
        _say_cluster(client, args.quiet)
        options["torch_threads"] = torch_threads_of(client)
        options["tasks_per_host"] = tasks_per_host(client)
        with cli._ProgressBar(not args.quiet, desc="volumes", unit="volume") as bar:
            results = run_batch(
                rows,
                segment_row,
                options,
                client=client,
                store_dir=_absolute(args.store),
                progress=bar.update,
            )
    print(format_summary(results))
    return EXIT_ROWS_FAILED if any(result.failed for result in results) else 0


def segment_row(row, options: dict, store: str | None):
    """Task: segment one batch row as ``napari-sam2 segment`` does, on the worker's cached
    network. Returns a :class:`~napari_sam2.distributed.batch.RowResult`; a failure is a
    failed result (one line), not an exception, so the other rows go on."""
    from .distributed.batch import timed_row
    from .distributed.worker import ModelOptions, cached_model, state_ram_share

    def work() -> tuple[int, int]:
        if os.path.exists(row.out):
            # another run finished it meanwhile: never overwrite (the client counted it as
            # pending, so it is reported as done by that run)
            raise cli.CommandError(f"{row.out} exists already (written by another run)")
        args = cli.build_parser().parse_args(["segment", f"--out={row.out}", "--quiet", row.stack])
        for name in _ROW_OPTIONS:
            setattr(args, name, options[name])
        args.points, args.boxes, args.prompts = row.points, row.boxes, row.prompts
        args.store = store  # segment's --store: read the row's features, fill what is missing
        # Bounded RAM per worker whatever the volume's length: the label volume on disk
        # beside the output, the tracking state within this worker's share of the machine.
        args.labels_on_disk = True
        args.state_ram_bytes = options.get("state_ram_bytes")
        if args.state_ram_bytes is None:
            args.state_ram_bytes = state_ram_share(options.get("tasks_per_host", 1))
        plan = cli._Plan(args)  # the prompt file's settings fill the options not given
        model = cached_model(
            ModelOptions(
                args.model,
                args.checkpoint,
                args.image_size,
                args.device,
                options.get("torch_threads"),
            )
        )
        cli._run_segment(args, plan=plan, model=model)
        return len(plan.object_ids), plan.total

    return timed_row(row, work)
