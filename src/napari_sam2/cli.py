"""The ``napari-sam2`` command: segment a stack headless, list the models, open the demo.

::

    napari-sam2 segment STACK.tif --points points.csv [--boxes boxes.csv] --out labels.tif
    napari-sam2 segment STACK.tif --masks seeds.tif [--mask-frame K ...] --out labels.tif
    napari-sam2 segment BIG.tif --points points.csv --roi [--roi-margin 0.5] --out labels.tif
    napari-sam2 segment-all STACK.tif --frame K [--frame K2 ...] --out labels.tif
    napari-sam2 models
    napari-sam2 demo

``--points`` and ``--boxes`` are CSV files saved from napari's Points and Shapes layers (File >
Save Selected Layer(s)); see :mod:`napari_sam2.engine.prompt_files` for the format and the
optional ``label`` and ``object`` columns.

Nothing is lost:

- every check runs before the model is built or a frame is read: the output must not be an
  input (``./sub/../stack.tif`` counts), must not be a folder, must lie in an existing folder
  you can write to, and an existing output is replaced only with ``--overwrite``; a run that
  would not fit in memory is refused with the numbers;
- the labels are written to a temporary file beside ``--out`` and renamed into place when
  complete, so a crash or a full disk leaves the previous output as it was;
- Ctrl-C (or SIGTERM) during propagation keeps the finished frames: they are written to
  ``<out>.partial.tif`` (e.g. ``labels.partial.tif``) with every unfinished frame 0, and the
  TIFF's description lists the finished frames (``{"finished_frames": [...]}``). ``--out``
  itself is not written. The exit status is then 130. Run the command again to compute all
  frames (runs are not resumed).

Errors print one ``error: ...`` line and exit with status 2 (set ``NAPARI_SAM2_DEBUG=1`` to see
the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .engine import io as _io
from .engine.session import plan_propagation, start_frame

__all__ = ["PARTIAL_SUFFIX", "RunInterrupted", "main", "partial_path"]

EXIT_USAGE = 2
DEFAULT_MODEL = "sam2.1_hiera_tiny"
EXIT_INTERRUPTED = 130
DEBUG_ENV_VAR = "NAPARI_SAM2_DEBUG"
"""When set, errors are raised with their traceback instead of printed as one line."""
PARTIAL_SUFFIX = ".partial"
"""Inserted before the suffix of ``--out`` for the finished frames of an interrupted run."""


class CommandError(Exception):
    """A problem the user can fix; printed as one ``error:`` line, exit status 2."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where the finished frames were kept."""


# ---------------------------------------------------------------------------------- model


def _build_model(name: str, checkpoint: str | None, image_size: int | None, device: str):
    """Build the network for ``segment``. Tests replace this function to inject a model."""
    from .model import build_sam2

    return build_sam2(
        name,
        checkpoint="download" if checkpoint is None else checkpoint,
        image_size=image_size,
        device=device,
    )


# ---------------------------------------------------------------------------------- files

# The readers and the writer live in the engine so the Python API can use them too.
read_stack = _io.read_stack
write_labels = _io.write_labels


def partial_path(out: str | Path) -> Path:
    """Where an interrupted run keeps its finished frames: labels.tif -> labels.partial.tif."""
    out = Path(out)
    return out.with_name(f"{out.stem}{PARTIAL_SUFFIX}{out.suffix}")


def _input_paths(args: argparse.Namespace) -> list[str]:
    """Every file the run reads; none of them may be the output."""
    names = (args.stack, args.points, args.boxes, args.prompts, args.masks, args.checkpoint)
    return [name for name in names if name is not None]


# ---------------------------------------------------------------------------------- commands


def _prompt_axis(image_ndim: int, axis: int, channel_axis: int | None) -> int:
    """The tracked axis among the prompt file's coordinates.

    napari splits a channel axis into separate layers, so annotations on such data have one axis
    fewer than the array; the tracked axis moves down by one when the channel axis precedes it.
    """
    if not -image_ndim <= axis < image_ndim:
        raise CommandError(f"--axis {axis} is out of range for a {image_ndim}-D image")
    tracked = axis % image_ndim
    if channel_axis is not None:
        if not -image_ndim <= channel_axis < image_ndim:
            raise CommandError(
                f"--channel-axis {channel_axis} is out of range for a {image_ndim}-D image"
            )
        if channel_axis % image_ndim < tracked:
            tracked -= 1
    return tracked


def _apply_prompt_file(args: argparse.Namespace) -> None:
    """With ``--prompts FILE``: read it, and take its settings where no option was given."""
    args.prompt_file = None
    if args.prompts is not None:
        if args.points is not None or args.boxes is not None:
            raise CommandError("give either --prompts FILE, or --points/--boxes CSV files")
        from .engine.prompt_store import read_prompt_file

        args.prompt_file = read_prompt_file(args.prompts)
        settings = args.prompt_file.settings
        for option, key in (
            ("model", "model"),
            ("checkpoint", "checkpoint"),
            ("image_size", "image_size"),
            ("precision", "precision"),
        ):
            if getattr(args, option) is None and settings.get(key) is not None:
                setattr(args, option, settings[key])
        if args.range is None and settings.get("intensity_range") is not None:
            args.range = list(settings["intensity_range"])
        if getattr(args, "roi", False) is None and settings.get("roi"):
            args.roi = True  # made with "Work on a region around the object"; --no-roi: not
    args.model = args.model or DEFAULT_MODEL
    args.precision = args.precision or "auto"


def _read_prompts(args: argparse.Namespace, image_ndim: int) -> list:
    from .engine.prompt_files import group_prompts, read_boxes_csv, read_points_csv

    if args.prompt_file is not None:
        from .engine.prompt_store import prompts_for_engine

        prompts = prompts_for_engine(args.prompt_file)
        if not prompts:
            raise CommandError(f"{args.prompts}: the file holds no prompts")
        return prompts
    if args.points is None and args.boxes is None:
        if args.masks is not None:
            return []  # seeded from --masks once the stack's layout is known
        raise CommandError(
            "give prompts: --prompts FILE (saved by the annotator), --points FILE.csv "
            "and/or --boxes FILE.csv, or seed labels --masks FILE.tif"
        )
    axis = _prompt_axis(image_ndim, args.axis, args.channel_axis)
    found = []
    if args.points is not None:
        found.append(read_points_csv(args.points, axis=axis))
    if args.boxes is not None:
        found.append(read_boxes_csv(args.boxes, axis=axis))
    prompts = group_prompts(*found)
    if not prompts:
        files = " and ".join(str(p) for p in (args.points, args.boxes) if p is not None)
        raise CommandError(f"{files}: no prompts in the file(s)")
    return prompts


def _check_model_name(name: str) -> None:
    from .model.config import PRESETS, unknown_preset

    if name not in PRESETS:
        raise CommandError(str(unknown_preset(name)))


def _tracker_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :class:`~napari_sam2.engine.tracker.Tracker` set by options."""
    return {
        "axis": args.axis,
        "channel_axis": args.channel_axis,
        "intensity_range": None if args.range is None else tuple(args.range),
        "precision": args.precision,
        "feature_store": getattr(args, "store", None),
        "state_ram_bytes": getattr(args, "state_ram_bytes", None),  # batch: a worker's share
    }


def _tracker_class(args: argparse.Namespace):
    """What ``segment`` tracks with: a Tracker, or with ``--roi`` a RegionTracker."""
    if not getattr(args, "roi", False):
        from .engine.tracker import Tracker

        return Tracker
    import functools

    from .engine.region_tracker import RegionTracker

    return functools.partial(RegionTracker, margin=args.roi_margin)


def _check_roi_options(args: argparse.Namespace) -> None:
    """--roi and --roi-margin, checked before the model; sets the default margin."""
    import math

    from .engine.roi import DEFAULT_MARGIN

    roi, margin = getattr(args, "roi", False), getattr(args, "roi_margin", None)
    if margin is not None and not roi:
        raise CommandError("--roi-margin is the margin of --roi's regions: add --roi")
    if not roi:
        return
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise CommandError(f"--roi-margin must be a number of at least 0, got {margin}")
    if getattr(args, "store", None) is not None:
        raise CommandError(
            "--roi works on crops around each object and --store keeps features of whole "
            "slices: use one or the other"
        )
    args.roi_margin = DEFAULT_MARGIN if margin is None else margin


class _Plan:
    """Everything checked before the model is built: paths, image layout, prompts, memory."""

    def __init__(self, args: argparse.Namespace) -> None:
        import dataclasses

        from .engine.label_buffer import labels_on_disk
        from .engine.memory_estimate import check_run_fits, estimate_run_bytes
        from .model.config import get_config

        _apply_prompt_file(args)
        _check_model_name(args.model)
        inputs = _input_paths(args)
        self.out = _io.check_output_path(
            args.out,
            inputs=inputs,
            overwrite=args.overwrite,
            suffixes=_io.TIFF_SUFFIXES,
            what="--out",
        )
        from .engine.device import resolve_device

        resolve_device(args.device)  # an unknown or absent device fails before the download
        try:
            config = get_config(args.model, args.image_size)
        except ValueError as err:
            raise CommandError(f"--image-size {args.image_size}: {_one_line(err)}") from None
        _check_store_option(args)
        _check_roi_options(args)
        self.image = read_stack(args.stack)
        if args.prompt_file is not None and args.prompt_file.plane is not None:
            self.image = _plane_of_prompt_file(args, self.image)
        self.prompts = _read_prompts(args, len(self.image.shape))
        self.frames, self.single = _frame_layout(args, self.image)
        if args.masks is not None or args.mask_frames:
            self.prompts = _seed_prompts(args, self.frames, self.prompts)
        for prompt in self.prompts:
            if not 0 <= prompt.frame < self.frames.num_frames:
                raise CommandError(
                    f"a prompt is on frame {prompt.frame}, but {args.stack} has "
                    f"{self.frames.num_frames} frame(s) along --axis {args.axis}"
                )
        self.object_ids = sorted({prompt.obj_id for prompt in self.prompts})
        self.label_dtype = _io.label_dtype_for(self.object_ids[-1])
        self.num_frames = self.frames.num_frames
        self.start = start_frame((p.frame for p in self.prompts), args.direction)
        if self.single:
            self.total = 1
        else:
            self.total = plan_propagation(self.num_frames, self.start, args.direction).total
        estimate = estimate_run_bytes(
            image_size=config.image_size,
            num_objects=len(self.object_ids),
            num_frames=self.total,
            frame_shape=self.frames.frame_shape,
            label_itemsize=self.label_dtype.itemsize,
            channels=3 if self.frames.layout != "grey" else 1,
            state_ram_bytes=getattr(args, "state_ram_bytes", None),
        )
        volume = (self.num_frames, *self.frames.frame_shape)
        on_disk = getattr(args, "labels_on_disk", None)
        if not self.single and labels_on_disk(volume, self.label_dtype, on_disk):
            estimate = dataclasses.replace(estimate, labels=0)  # a file beside --out
        check_run_fits(estimate)


def _check_store_option(args: argparse.Namespace) -> None:
    """--store needs zarr, and a folder that is not an input: checked before the model."""
    store = getattr(args, "store", None)
    if store is None:
        return
    try:
        import zarr  # noqa: F401
    except ImportError:
        raise CommandError(
            "--store needs the zarr package: pip install 'napari-sam2[cluster]'"
        ) from None
    for name in _input_paths(args):
        if _io._same_file(Path(store), Path(name)):
            raise CommandError(
                f"--store {store} is the input {name}; give the store its own folder"
            )


def _frame_layout(args: argparse.Namespace, image):
    """(FrameSource, single): the frames the options make of ``image``, and whether it is one
    2-D image (no tracked axis). Only the layout is worked out; no frame is read."""
    from .engine.frames import FrameSource

    options = _tracker_options(args)
    frames = FrameSource(
        image,
        axis=options["axis"],
        channel_axis=options["channel_axis"],
        intensity_range=options["intensity_range"],
    )
    rank = 2 if frames.layout == "grey" else 3
    return frames, frames.num_frames == 1 and len(image.shape) == rank


def _plane_of_prompt_file(args: argparse.Namespace, image):
    """The frames a prompt file's plane reads (held axes fixed), with --axis and
    --channel-axis set from the plane."""
    from .engine.prompt_store import engine_axes

    plane = args.prompt_file.plane
    if tuple(image.shape[: len(plane.shape)]) != tuple(plane.shape):
        level = args.prompt_file.settings.get("level") or 0
        hint = f" (level {level} of a pyramid: give that level's array)" if level else ""
        raise CommandError(
            f"{args.prompts} was made on an image of shape {tuple(plane.shape)}{hint}, but "
            f"{args.stack} has shape {tuple(image.shape)}"
        )
    axes = engine_axes(plane)
    args.axis = 0 if axes.axis is None else axes.axis
    args.channel_axis = axes.channel_axis
    return image[axes.index]


def _run_segment(args: argparse.Namespace, plan: _Plan | None = None, model=None) -> int:
    """``segment``; ``batch`` passes the row's checked plan and its worker's cached model."""
    plan = _Plan(args) if plan is None else plan  # every check before the slow part
    if model is None:
        model = _build_model(args.model, args.checkpoint, args.image_size, args.device)
    from .engine.label_buffer import label_volume, release_mapped_pages
    from .engine.session import label_frame

    make = _tracker_class(args)
    tracker = make(model, plan.image, **_tracker_options(args), label_dtype=plan.label_dtype)
    height, width = tracker.frame_shape
    for prompt in plan.prompts:
        tracker.set_prompts(prompt.frame, prompt.obj_id, **prompt.engine_kwargs())
    empty = np.zeros((height, width), dtype=plan.label_dtype)
    if plan.single:
        labels = label_frame(empty, tracker.frame_logits(0))
        written = _write_output(plan, args, labels, labels, [0])
    else:
        # The one full copy of the result, in the final dtype, written slice by slice; a large
        # one (and a batch row's) is kept on disk beside --out, so RAM does not grow with it.
        shape = (plan.num_frames, height, width)
        on_disk = getattr(args, "labels_on_disk", None)
        with label_volume(plan.out, shape, plan.label_dtype, on_disk=on_disk) as labels:
            finished: list[int] = []
            try:
                with _ProgressBar(enabled=not args.quiet) as bar:
                    for frame, logits in tracker.propagate(plan.start, args.direction):
                        labels[frame] = label_frame(empty, logits)
                        finished.append(frame)
                        bar.update(len(finished), plan.total)
                        if len(finished) % 16 == 0:  # the frames read from a mapped stack
                            release_mapped_pages(plan.image)
            except BaseException as error:
                _keep_finished_frames(plan, args, labels, finished, error)
                raise
            written = _write_output(plan, args, labels, labels, finished)
    if not args.quiet:
        print(f"wrote {written} ({' x '.join(map(str, labels.shape))}, "
              f"{len(plan.object_ids)} object(s))")  # fmt: skip
    return 0


def _seed_prompts(args: argparse.Namespace, frames, prompts: list) -> list:
    """``prompts`` with the objects seeded from ``--masks`` (see
    :func:`napari_sam2.engine.everything.prompts_from_label_array`)."""
    from .engine.everything import prompts_from_label_array
    from .engine.session import group_prompts

    if args.masks is None:
        raise CommandError("--mask-frame chooses slices of --masks; give --masks FILE.tif too")
    seeds = prompts_from_label_array(
        read_stack(args.masks),
        args.mask_frames,
        num_frames=frames.num_frames,
        frame_shape=frames.frame_shape,
        name=f"--masks {args.masks}",
    )
    if not seeds and not prompts:
        raise CommandError(f"--masks {args.masks}: no labels on the chosen slices")
    try:
        return group_prompts(prompts, seeds)
    except ValueError as err:
        raise CommandError(f"--masks {args.masks}: {_one_line(err)}") from None


class _SegmentAllPlan:
    """``segment-all``'s checks before the model is built: paths, image layout, key frames,
    the generator's parameters."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .engine.automatic_settings import AutomaticMaskSettings
        from .engine.device import resolve_device
        from .engine.everything import track_everything_total
        from .model.config import get_config

        _apply_prompt_file(args)  # sets the defaults of --model and --precision
        _check_model_name(args.model)
        self.out = _io.check_output_path(
            args.out,
            inputs=_input_paths(args),
            overwrite=args.overwrite,
            suffixes=_io.TIFF_SUFFIXES,
            what="--out",
        )
        resolve_device(args.device)
        try:
            get_config(args.model, args.image_size)
        except ValueError as err:
            raise CommandError(f"--image-size {args.image_size}: {_one_line(err)}") from None
        given = {
            name: getattr(args, name) for name in _AMG_OPTIONS if getattr(args, name) is not None
        }
        self.settings = AutomaticMaskSettings.from_options(**given)
        if not 0.0 <= args.same_object_iou <= 1.0:
            raise CommandError(f"--same-object-iou must be in [0, 1], got {args.same_object_iou}")
        _check_store_option(args)
        self.image = read_stack(args.stack)
        self.frames, self.single = _frame_layout(args, self.image)
        self.num_frames = self.frames.num_frames
        for frame in args.frames:
            if not 0 <= frame < self.num_frames:
                raise CommandError(
                    f"--frame {frame} is out of range: {args.stack} has {self.num_frames} "
                    f"frame(s) along --axis {args.axis} (0 to {self.num_frames - 1})"
                )
        self.total_steps = track_everything_total(self.num_frames, args.frames, args.direction)
        start = max(args.frames) if args.direction == "backward" else min(args.frames)
        self.total = plan_propagation(self.num_frames, start, args.direction).total


#: ``segment-all`` options passed to the generator when given (else Meta's defaults).
_AMG_OPTIONS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "min_mask_region_area",
    "box_nms_thresh",
    "crop_n_layers",
)


def _run_segment_all(args: argparse.Namespace) -> int:
    plan = _SegmentAllPlan(args)  # every check before the slow part
    model = _build_model(args.model, args.checkpoint, args.image_size, args.device)
    from .engine.automatic import AutomaticMaskGenerator
    from .engine.everything import iter_track_everything
    from .engine.label_buffer import label_volume
    from .engine.session import label_frame
    from .engine.tracker import Tracker

    tracker = Tracker(model, plan.image, **_tracker_options(args))
    generator = AutomaticMaskGenerator(tracker.model, plan.settings, device=tracker.device)
    height, width = tracker.frame_shape
    empty = np.zeros((height, width), dtype=np.uint32)
    shape = (plan.num_frames, height, width)
    on_disk = False if plan.single else None  # a 2-D image is one frame: in RAM
    with label_volume(plan.out, shape, np.uint32, on_disk=on_disk) as labels:
        finished: list[int] = []  # frames of the final propagation, the only ones kept
        try:
            with _ProgressBar(enabled=not args.quiet) as bar:
                steps = iter_track_everything(
                    tracker,
                    generator,
                    args.frames,
                    same_object_iou=args.same_object_iou,
                    direction=args.direction,
                    progress=bar.update,
                )
                for step in steps:
                    if step.final:
                        labels[step.frame] = label_frame(empty, step.logits)
                        finished.append(step.frame)
        except BaseException as error:
            _keep_finished_frames(plan, args, labels, finished, error)
            raise
        result = labels[0] if plan.single else labels
        written = _write_output(plan, args, result, labels, finished)
    if not args.quiet:
        print(f"wrote {written} ({' x '.join(map(str, result.shape))}, "
              f"{len(tracker.object_ids)} object(s))")  # fmt: skip
    return 0


def _write_output(plan, args, result, labels, finished: list[int]):
    """Write ``result`` to ``--out``; a Ctrl-C during the write keeps the finished frames of
    ``labels`` in the partial file instead (``--out`` stays as it was)."""
    try:
        return write_labels(plan.out, result, overwrite=args.overwrite, inputs=_input_paths(args))
    except KeyboardInterrupt as error:
        _keep_finished_frames(plan, args, labels, finished, error)
        raise


def _keep_finished_frames(plan: _Plan, args, labels, finished: list[int], error) -> None:
    """Write the frames finished before ``error`` to the partial file; the output is untouched.

    A KeyboardInterrupt becomes :class:`RunInterrupted` carrying where the frames went.
    """
    if not finished:
        if isinstance(error, KeyboardInterrupt):
            raise RunInterrupted("interrupted before any frame was finished; nothing written")
        return
    target = partial_path(plan.out)
    done = sorted(finished)
    try:
        write_labels(
            target,
            labels,
            overwrite=True,
            inputs=_input_paths(args),
            description={"napari_sam2_partial": True, "finished_frames": done},
        )
        kept = (
            f"the {len(done)} finished frame(s) of {plan.total} ({_ranges(done)}) are in "
            f"{target}; other frames are 0 there. {plan.out} was not written"
        )
    except (OSError, ValueError) as write_error:
        kept = f"the finished frames could not be kept: {_one_line(write_error)}"
    if isinstance(error, KeyboardInterrupt):
        raise RunInterrupted(f"interrupted: {kept}") from None
    if isinstance(error, _user_errors()):
        # one line still: the error, then where the finished frames went
        raise CommandError(f"{_one_line(error)} ({kept})") from error
    print(f"note: {kept}", file=sys.stderr)


def _ranges(frames: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"frames 0-2, 5"``."""
    parts, begin = [], frames[0]
    for previous, current in zip(frames, [*frames[1:], None]):
        if current != previous + 1:
            parts.append(str(begin) if begin == previous else f"{begin}-{previous}")
            begin = current
    return "frames " + ", ".join(parts)


class _ProgressBar:
    """A tqdm bar on stderr fed by ``update(done, total)``; silent when disabled."""

    def __init__(self, enabled: bool, desc: str = "segmenting", unit: str = "frame") -> None:
        self._enabled = enabled
        self._bar = None
        self._desc, self._unit = desc, unit

    def __enter__(self) -> _ProgressBar:
        return self

    def update(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=self._unit, desc=self._desc, file=sys.stderr)
        self._bar.update(done - self._bar.n)

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _run_models(args: argparse.Namespace) -> int:
    from .model.registry import PRESET_NAMES, cache_dir, checkpoint_info, checkpoint_path

    print(f"cache folder: {cache_dir()}  (set NAPARI_SAM2_CACHE to change it)")
    width = max(len(name) for name in PRESET_NAMES)
    for name in PRESET_NAMES:
        path = checkpoint_path(name)
        size = checkpoint_info(name).size
        size_text = f"{size / 2**20:.0f} MiB" if size else "size unknown"
        status = "cached" if path.is_file() else f"not downloaded ({size_text})"
        print(f"{name:<{width}}  {status:<30}  {path}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("napari") is None:
        raise CommandError(
            "the demo needs napari and a Qt binding: pip install 'napari-sam2[napari]' pyqt5"
        )
    try:
        from ._qt.demo import main as demo_main
    except ModuleNotFoundError as err:
        raise CommandError(f"the demo cannot start: {err}") from err
    result = demo_main()
    return int(result) if isinstance(result, int) else 0


# ---------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error:`` line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see: {self.prog} --help)\n")


def _add_segment_options(seg: argparse.ArgumentParser, prompts: bool = True) -> None:
    seg.add_argument("stack", help="image: .tif/.tiff, a .zarr folder (OME-Zarr) or .npy")
    if prompts:
        _add_prompt_options(seg)
    seg.add_argument("--out", required=True, metavar="TIF", help="output label TIFF")
    seg.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (atomically)"
    )
    seg.add_argument(
        "--store",
        metavar="DIR.zarr",
        help="keep image features in this feature store (created if absent, filled with the "
        "frames computed; a store made for other data or another model is refused)",
    )
    _add_model_options(seg)
    _add_direction_option(seg)
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def _add_roi_options(seg: argparse.ArgumentParser) -> None:
    seg.add_argument(
        "--roi",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="work on a region around each object instead of the whole slice squashed to the "
        "input size (for slices much larger than it): regions follow the objects and results "
        "are pasted back at full resolution; one image encoding per object and slice. A prompt "
        "file made so turns it on; --no-roi turns it off",
    )
    seg.add_argument(
        "--roi-margin",
        type=float,
        metavar="M",
        help="with --roi: share of an object's size added on each side of it (default 0.5)",
    )


def _add_direction_option(seg: argparse.ArgumentParser) -> None:
    seg.add_argument(
        "--direction",
        choices=("both", "forward", "backward"),
        default="both",
        help="propagation direction from the prompted frames (default: both)",
    )


def _add_model_options(seg: argparse.ArgumentParser) -> None:
    """The network and frame-layout options (shared with ``precompute`` and ``batch``)."""
    seg.add_argument("--model", default=None, help=f"preset name (default: {DEFAULT_MODEL})")
    seg.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="local .pt checkpoint; default: download the preset's official weights",
    )
    seg.add_argument("--image-size", type=int, metavar="N", help="network input size")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    seg.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default=None,
        help="compute precision (default: auto: bfloat16 on CUDA and on CPUs that compute it "
        "natively, float32 elsewhere)",
    )
    seg.add_argument("--axis", type=int, default=0, help="tracked axis (default: 0)")
    seg.add_argument("--channel-axis", type=int, metavar="N", help="axis of channels, if any")
    seg.add_argument(
        "--range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="intensity range mapped to black and white (default: robust percentiles)",
    )


def _add_segment_all(commands) -> None:
    every = commands.add_parser(
        "segment-all",
        help="segment everything on key slices and track every object through the stack",
        description=(
            "Run SAM 2's automatic mask generator on the key frames and propagate every mask "
            "found through the stack; write a label TIFF. A mask found on a later key frame "
            "whose IoU with an object propagated there is above --same-object-iou is that "
            "object (another conditioning frame); the others are new objects. Ctrl-C keeps "
            "the finished frames in OUT.partial.tif."
        ),
    )
    _add_segment_options(every, prompts=False)
    every.add_argument(
        "--frame",
        type=int,
        action="append",
        required=True,
        metavar="K",
        dest="frames",
        help="a key frame to segment everything on (repeat for several)",
    )
    every.add_argument(
        "--same-object-iou",
        type=float,
        default=0.5,
        metavar="T",
        help="IoU above which a mask of a later key frame is an object already tracked "
        "there (default: 0.5)",
    )
    number = {"points_per_side": int, "points_per_batch": int, "crop_n_layers": int}
    defaults = {
        "points_per_side": "clicks per side of the point grid (default: 32)",
        "points_per_batch": "clicks decoded together (default: 64)",
        "pred_iou_thresh": "keep masks whose predicted IoU is above this (default: 0.8)",
        "stability_score_thresh": "keep masks at least this stable (default: 0.95)",
        "min_mask_region_area": "remove holes and islands up to this area (default: 0)",
        "box_nms_thresh": "box IoU above which a duplicate mask is dropped (default: 0.7)",
        "crop_n_layers": "layers of crops segmented on their own (default: 0)",
    }
    for name in _AMG_OPTIONS:
        every.add_argument(
            "--" + name.replace("_", "-"),
            type=number.get(name, float),
            default=None,
            metavar="N" if name in number else "X",
            help=defaults[name],
        )
    every.set_defaults(handler=_run_segment_all, points=None, boxes=None, prompts=None, masks=None)


def _add_prompt_options(seg: argparse.ArgumentParser) -> None:
    seg.add_argument(
        "--prompts",
        metavar="FILE",
        help="the annotator's prompt file (Save prompts…): objects, clicks, boxes, masks, "
        "plane and settings; options given here override its settings",
    )
    seg.add_argument("--points", metavar="CSV", help="napari Points CSV (clicks)")
    seg.add_argument("--boxes", metavar="CSV", help="napari Shapes CSV (rectangles)")
    seg.add_argument(
        "--masks",
        metavar="TIF",
        help="seed labels: a label TIFF of the stack's (frames, rows, columns) or one slice; "
        "each id on the chosen slices becomes an object with that id",
    )
    seg.add_argument(
        "--mask-frame",
        type=int,
        action="append",
        metavar="K",
        dest="mask_frames",
        help="a slice of --masks to seed from (repeat for several; default: every slice with "
        "labels; required when --masks is one slice)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="napari-sam2",
        description="Segment Anything 2 for stacks and images, with or without napari.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    seg = commands.add_parser(
        "segment",
        help="segment a stack from prompts saved in napari",
        description=(
            "Segment the objects prompted in napari CSV files through a stack and write a label "
            "TIFF. Prompt coordinates are the layer's data coordinates, with the frame on the "
            "tracked axis; a 'label' column (1/0) marks negative clicks and an 'object' column "
            "gives object ids. Ctrl-C keeps the finished frames in OUT.partial.tif."
        ),
    )
    _add_segment_options(seg)
    _add_roi_options(seg)
    seg.set_defaults(handler=_run_segment)
    _add_segment_all(commands)
    from .cli_cluster import add_cluster_commands  # precompute and batch (dask.distributed)

    add_cluster_commands(commands)

    models = commands.add_parser("models", help="list model presets and their download status")
    models.set_defaults(handler=_run_models)

    demo = commands.add_parser("demo", help="open napari with a sample stack and the annotator")
    demo.set_defaults(handler=_run_demo)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported late: it loads pooch, which --help should not wait for.
    from .model.registry import CheckpointHashMismatch, CheckpointUnavailable

    return (
        CommandError,
        ValueError,
        TypeError,
        OSError,
        MemoryError,
        CheckpointUnavailable,
        CheckpointHashMismatch,
    )


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on errors, 130 on Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get(DEBUG_ENV_VAR))
    # SIGTERM (a killed job, a closed terminal) keeps the finished frames as Ctrl-C does.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return args.handler(args)
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        message = str(interrupt) if isinstance(interrupt, RunInterrupted) else "interrupted"
        print(f"error: {_one_line(RuntimeError(message))}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            raise
        from .model.registry import CheckpointUnavailable

        message = _one_line(error)
        if isinstance(error, CheckpointUnavailable):
            message += " On the command line, give the local file with --checkpoint FILE."
        if not isinstance(error, _user_errors()):
            # Not a known bad-input error: still one line, with the type to report it by.
            message = (
                f"unexpected {type(error).__name__}: {message} (set {DEBUG_ENV_VAR}=1 for the "
                "traceback and please report it)"
            )
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
