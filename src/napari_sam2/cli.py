"""The ``napari-sam2`` command: segment a stack headless, list the models, open the demo.

::

    napari-sam2 segment STACK.tif --points points.csv [--boxes boxes.csv] --out labels.tif
    napari-sam2 models
    napari-sam2 demo

``--points`` and ``--boxes`` are CSV files saved from napari's Points and Shapes layers (File >
Save Selected Layer(s)); see :mod:`napari_sam2.engine.prompt_files` for the format and the
optional ``label`` and ``object`` columns. Errors print one ``error: ...`` line and exit with
status 2 (set ``NAPARI_SAM2_DEBUG=1`` to see the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
DEBUG_ENV_VAR = "NAPARI_SAM2_DEBUG"
"""When set, errors are raised with their traceback instead of printed as one line."""
_TIFF_SUFFIXES = (".tif", ".tiff")


class CommandError(Exception):
    """A problem the user can fix; printed as one ``error:`` line, exit status 2."""


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


# ---------------------------------------------------------------------------------- reading


def read_stack(path: str | Path) -> Any:
    """Open an image for lazy reading: TIFF (memory-mapped when possible), Zarr/OME-Zarr, .npy.

    For an OME-Zarr (or any Zarr group) the full-resolution array is used: the first dataset of
    the first ``multiscales`` entry, else the array named ``0``, else the first array found.
    """
    path = Path(path)
    if not path.exists():
        raise CommandError(f"input {path} does not exist")
    suffix = path.suffix.lower()
    if path.is_dir() and suffix == ".zarr":
        return _read_zarr(path)
    if suffix in _TIFF_SUFFIXES:
        return _read_tiff(path)
    if suffix == ".npy":
        import numpy as np

        return np.load(path, mmap_mode="r")
    raise CommandError(
        f"cannot read {path}: supported inputs are TIFF (.tif, .tiff), Zarr/OME-Zarr folders "
        "(.zarr) and NumPy (.npy)"
    )


def _read_tiff(path: Path) -> Any:
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except (ValueError, TypeError, OSError):
        # compressed, tiled or otherwise not contiguous: read it into memory
        pass
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for broken files
        raise CommandError(f"cannot read TIFF {path}: {err}") from err


def _read_zarr(path: Path) -> Any:
    if importlib.util.find_spec("zarr") is None:
        raise CommandError(f"reading {path} needs the zarr package: pip install zarr")
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise CommandError(f"cannot open Zarr {path}: {err}") from err
    if hasattr(node, "shape"):
        return node
    multiscales = node.attrs.get("multiscales") if hasattr(node, "attrs") else None
    if multiscales:
        try:
            return node[multiscales[0]["datasets"][0]["path"]]
        except (KeyError, IndexError, TypeError):
            pass
    if "0" in node:
        return node["0"]
    for _, array in node.arrays():
        return array
    raise CommandError(f"the Zarr group {path} holds no array")


def _checked_output(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        raise CommandError(f"--out {path}: the labels are written as TIFF; use a .tif name")
    if not path.parent.exists():
        raise CommandError(f"--out {path}: the folder {path.parent} does not exist")
    return path


def write_labels(path: str | Path, labels: Any) -> Path:
    """Write labels as a zlib-compressed TIFF: uint16 when the ids fit, else uint32."""
    import numpy as np
    import tifffile

    path = _checked_output(path)
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    tifffile.imwrite(path, np.asarray(labels, dtype=dtype), compression="zlib")
    return path


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


def _read_prompts(args: argparse.Namespace, image_ndim: int) -> list:
    from .engine.prompt_files import group_prompts, read_boxes_csv, read_points_csv

    if args.points is None and args.boxes is None:
        raise CommandError("give prompts: --points FILE.csv and/or --boxes FILE.csv")
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
    from .model import PRESET_NAMES

    if name not in PRESET_NAMES:
        raise CommandError(
            f"unknown model {name!r}; choose one of {', '.join(PRESET_NAMES)} "
            "(see: napari-sam2 models)"
        )


def _run_segment(args: argparse.Namespace) -> int:
    _check_model_name(args.model)
    out = _checked_output(args.out)  # before the slow part, so a typo fails at once
    image = read_stack(args.stack)
    prompts = _read_prompts(args, len(image.shape))

    from .api import segment

    model = _build_model(args.model, args.checkpoint, args.image_size, args.device)
    with _ProgressBar(enabled=not args.quiet) as bar:
        labels = segment(
            image,
            prompts=prompts,
            model=model,
            device=args.device,
            axis=args.axis,
            channel_axis=args.channel_axis,
            intensity_range=None if args.range is None else tuple(args.range),
            direction=args.direction,
            progress=bar.update,
        )
    written = write_labels(out, labels)
    if not args.quiet:
        ids = len({prompt.obj_id for prompt in prompts})
        print(f"wrote {written} ({' x '.join(map(str, labels.shape))}, {ids} object(s))")
    return 0


class _ProgressBar:
    """A tqdm bar on stderr fed by ``update(done, total)``; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar = None

    def __enter__(self) -> _ProgressBar:
        return self

    def update(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", desc="segmenting", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
            "gives object ids."
        ),
    )
    seg.add_argument("stack", help="image: .tif/.tiff, a .zarr folder (OME-Zarr) or .npy")
    seg.add_argument("--points", metavar="CSV", help="napari Points CSV (clicks)")
    seg.add_argument("--boxes", metavar="CSV", help="napari Shapes CSV (rectangles)")
    seg.add_argument("--out", required=True, metavar="TIF", help="output label TIFF")
    seg.add_argument(
        "--model", default="sam2.1_hiera_tiny", help="preset name (default: %(default)s)"
    )
    seg.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="local .pt checkpoint; default: download the preset's official weights",
    )
    seg.add_argument("--image-size", type=int, metavar="N", help="network input size")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    seg.add_argument("--axis", type=int, default=0, help="tracked axis (default: 0)")
    seg.add_argument("--channel-axis", type=int, metavar="N", help="axis of channels, if any")
    seg.add_argument(
        "--range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="intensity range mapped to black and white (default: robust percentiles)",
    )
    seg.add_argument(
        "--direction",
        choices=("both", "forward", "backward"),
        default="both",
        help="propagation direction from the prompted frames (default: both)",
    )
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    seg.set_defaults(handler=_run_segment)

    models = commands.add_parser("models", help="list model presets and their download status")
    models.set_defaults(handler=_run_models)

    demo = commands.add_parser("demo", help="open napari with a sample stack and the annotator")
    demo.set_defaults(handler=_run_demo)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported after parsing: it loads torch, which --help should not wait for.
    from .model.registry import CheckpointHashMismatch, CheckpointUnavailable

    user_errors = (
        CommandError,
        ValueError,
        TypeError,
        OSError,
        MemoryError,
        CheckpointUnavailable,
        CheckpointHashMismatch,
    )
    try:
        return args.handler(args)
    except user_errors as error:
        if os.environ.get(DEBUG_ENV_VAR):
            raise
        message = _one_line(error)
        if isinstance(error, CheckpointUnavailable):
            message += " On the command line, give the local file with --checkpoint FILE."
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
