"""Segment a stack or an image from Python, without napari: :func:`segment`.

Example::

    import tifffile
    from napari_sam2.api import segment

    stack = tifffile.imread("cells.tif")                 # (Z, H, W)
    labels = segment(stack, points=[[12, 140, 96]])      # one click: (frame, row, col)
    # labels: (Z, H, W) uint32, 1 where the clicked object is, 0 elsewhere

Prompts use napari's order, (frame, row, col), so coordinates read off napari's status bar (data
coordinates) can be pasted as they are; :func:`segment` converts them to SAM's (x, y).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .engine.session import (
    DIRECTIONS,
    Prompt,
    group_prompts,
    label_frame,
    rowcol_to_xy,
    start_frame,
)

__all__ = [
    "Prompt",
    "prompts_from_arrays",
    "segment",
    "segment_all",
    "segment_everything",
    "segment_everything_labels",
]

ProgressCallback = Callable[[int, int], None]
"""``progress(done_frames, total_frames)``, called after every finished frame."""


def segment(
    image: Any,
    *,
    points: Any = None,
    labels: Any = None,
    boxes: Any = None,
    prompts: Sequence[Prompt] | None = None,
    model: str | torch.nn.Module = "sam2.1_hiera_tiny",
    checkpoint: str | os.PathLike[str] | None = "download",
    image_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    axis: int = 0,
    channel_axis: int | None = None,
    intensity_range: tuple[float, float] | None = None,
    direction: str = "both",
    max_frames: int | None = None,
    progress: ProgressCallback | None = None,
    masks: Any = None,
    mask_frames: Sequence[int] | None = None,
    feature_store: str | os.PathLike[str] | None = None,
    roi: bool = False,
    roi_margin: float | None = None,
) -> np.ndarray:
    """Segment the prompted objects of an image or through a stack with SAM 2.

    Args:
        image: a 2-D image (H, W), an RGB(A) image (H, W, 3|4), a stack with the tracked axis
            ``axis`` such as (Z, H, W) or (T, H, W, 3), or a multichannel array with
            ``channel_axis``. numpy, dask, zarr or a tifffile memmap: frames are read lazily.
        points: clicks in napari's order: (N, 3) rows of (frame, row, col) for a stack, or
            (N, 2) rows of (row, col) for a single image (an (N, 3) array with frame 0 works
            too). Coordinates are pixels of the data (not world units). All points belong to
            object 1.
        labels: (N,) 1 for a positive click (inside the object), 0 for a negative one; default
            all 1.
        boxes: (M, 5) rows of (frame, row0, col0, row1, col1) for a stack, or (M, 4) rows of
            (row0, col0, row1, col1) for a single image. Box ``i`` is object ``i + 1``, so the
            first box and the points describe the same object.
        prompts: instead of ``points``/``labels``/``boxes``, a list of :class:`Prompt` (e.g. from
            :func:`napari_sam2.engine.prompt_files.read_points_csv`), which carry their own
            object ids and use SAM's (x, y) coordinates.
        model: a preset name (see ``napari-sam2 models``) or an already built SAM 2 network
            (then ``checkpoint`` and ``image_size`` are ignored).
        checkpoint: ``"download"`` (default) fetches the preset's official weights into the user
            cache on first use; a path loads a local ``.pt`` file (e.g. a fine-tune); None builds
            random weights, useful for tests only.
        image_size: the network's square input size; None keeps the preset's (1024).
        device: "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda", "cuda:N" or "mps". With a
            built ``model``, "auto" keeps the model where it is.
        precision: what the network computes in: "auto" (bfloat16 on CUDA and on CPUs with
            native bfloat16, such as recent Xeons and AMD Zen 4; float32 elsewhere),
            "float32", "bfloat16" or "float16" (CUDA and MPS only). See
            :mod:`napari_sam2.engine.precision`.
        axis: the tracked axis of ``image`` (z or t). Ignored for a single image.
        channel_axis: axis holding channels of multichannel data, or None.
        intensity_range: (lo, hi) mapped to black and white; None uses robust percentiles of the
            whole stack.
        direction: "both" (default) tracks forward from the earliest prompted frame and backward
            from it, covering the whole stack; "forward" covers the earliest prompted frame and
            later ones; "backward" the latest prompted frame and earlier ones. Frames not covered
            stay 0.
        max_frames: frames visited in each direction, the start included (None: the whole
            axis).
        progress: optional ``progress(done, total)`` called after every tracked frame.
        masks: seed labels, e.g. a napari Labels layer's data: integer ids, (num_frames, H, W)
            like the returned labels, or one (H, W) slice with ``mask_frames=[k]``. Each id on
            each chosen slice becomes a mask prompt of the object with that id (several slices
            of one id: several conditioning frames). They share the id space with ``boxes``
            (box ``i`` is object ``i + 1``) and ``prompts``.
        mask_frames: the slices of ``masks`` to seed from; None takes every slice with labels.
        feature_store: a folder that keeps the image features on disk (a zarr store, created
            when absent; needs ``pip install 'napari-sam2[cluster]'``): frames found there are
            read instead of computed, and computed ones are added, so a second run on the same
            image and model computes nothing. A store made for other data or another model
            raises :class:`~napari_sam2.engine.feature_store.FeatureStoreMismatch`. Results
            equal those without a store within bfloat16 rounding of the features.
        roi: work on a region around each object instead of the whole slice squashed to the
            input size: for slices much larger than the input size, where small objects lose
            their detail. Each region is set from the object's prompts with ``roi_margin``,
            follows the object through the stack, and its result is pasted back at full
            resolution (see :mod:`napari_sam2.engine.roi`). It costs one image encoding per
            object and slice; a slice no larger than the input size is one region, with the
            plain result. Not with ``feature_store``.
        roi_margin: with ``roi``, the share of an object's size added on each side of it
            (default 0.5: the region is twice the object's size, and at least the input size).

    Returns:
        uint32 labels, (num_frames, H, W) for a stack and (H, W) for a single image. Each pixel
        holds the id of the object with the highest positive logit there, 0 for background
        (:data:`napari_sam2.engine.session.OVERLAP_POLICY`, the annotator's rule too).

    Raises:
        ValueError: missing or malformed prompts, a prompt outside the image, an unknown preset
            or device, a bad checkpoint file.
        MemoryError: the propagation's state would not fit in memory.
        RuntimeError: the checkpoint could not be downloaded (no network).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if progress is not None and not callable(progress):
        raise TypeError("progress must be None or a callable progress(done, total)")
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if prompts is not None:
        if points is not None or labels is not None or boxes is not None:
            raise ValueError("give either prompts=, or points/labels/boxes arrays, not both")
        prompt_list = group_prompts(prompts)
    else:
        prompt_list = prompts_from_arrays(points=points, labels=labels, boxes=boxes)
    if not prompt_list and masks is None:
        raise ValueError(
            "no prompts: give points=(N, 3) rows of (frame, row, col), boxes=(M, 5) rows of "
            "(frame, row0, col0, row1, col1), prompts=[Prompt, ...] or seed labels masks="
        )

    from .engine.memory_estimate import check_propagation_fits

    tracker = _tracker(
        image,
        model,
        checkpoint,
        image_size,
        device,
        axis=axis,
        channel_axis=channel_axis,
        intensity_range=intensity_range,
        precision=precision,
        feature_store=feature_store,
        roi=roi,
        roi_margin=roi_margin,
    )
    single = _is_single_image(image, tracker)
    if masks is not None:
        from .engine.everything import prompts_from_label_array

        seeds = prompts_from_label_array(
            masks, mask_frames, num_frames=tracker.num_frames, frame_shape=tracker.frame_shape
        )
        if not seeds and not prompt_list:
            raise ValueError("the seed labels (masks=) hold no ids on the chosen slices")
        prompt_list = group_prompts(prompt_list, seeds)
    _check_frames(prompt_list, tracker.num_frames, axis, single)

    for prompt in prompt_list:
        tracker.set_prompts(prompt.frame, prompt.obj_id, **prompt.engine_kwargs())

    height, width = tracker.frame_shape
    empty = np.zeros((height, width), dtype=np.uint32)
    if single:
        result = label_frame(empty, tracker.frame_logits(0))
        if progress is not None:
            progress(1, 1)
        return result

    start = start_frame((p.frame for p in prompt_list), direction)
    total = tracker.plan(start, direction, max_frames).total
    # The returned labels count too: refuse a run that would not fit before allocating them.
    labels_bytes = tracker.num_frames * height * width * np.dtype(np.uint32).itemsize
    check_propagation_fits(tracker, total, extra_bytes=labels_bytes)
    result = np.zeros((tracker.num_frames, height, width), dtype=np.uint32)
    frames = tracker.propagate(start, direction, max_frames)
    for done, (frame, logits) in enumerate(frames, start=1):
        result[frame] = label_frame(empty, logits)
        if progress is not None:
            progress(done, total)
    return result


def prompts_from_arrays(
    *, points: Any = None, labels: Any = None, boxes: Any = None
) -> list[Prompt]:
    """Napari-order arrays -> :class:`Prompt` list (SAM's (x, y)), grouped by (frame, object).

    ``points`` (N, 3) as (frame, row, col) or (N, 2) as (row, col) on frame 0, all object 1;
    ``labels`` (N,) 1/0, default all 1; ``boxes`` (M, 5) as (frame, row0, col0, row1, col1) or
    (M, 4) as (row0, col0, row1, col1), box ``i`` is object ``i + 1``. Corners may come in any
    order.
    """
    prompts: list[Prompt] = []
    if points is not None:
        table = _frame_table(points, "points", "(frame, row, col)", "(row, col)", spatial=2)
        if labels is None:
            marks = np.ones(len(table), dtype=np.int64)
        else:
            marks = np.asarray(labels).reshape(-1)
            if marks.shape[0] != len(table):
                raise ValueError(
                    f"got {len(table)} points but {marks.shape[0]} labels; give one label per "
                    "point (1 inside, 0 outside)"
                )
            if not np.isin(marks, (0, 1)).all():
                raise ValueError(f"labels must be 1 or 0, got values {np.unique(marks)}")
        for frame in np.unique(table[:, 0]):
            rows = table[:, 0] == frame
            xy = rowcol_to_xy(table[rows][:, 1:3])
            prompts.append(Prompt(int(frame), 1, xy, marks[rows]))
    elif labels is not None:
        raise ValueError("labels were given without points")

    if boxes is not None:
        table = _frame_table(
            boxes, "boxes", "(frame, row0, col0, row1, col1)", "(row0, col0, row1, col1)", 4
        )
        for index, (frame, r0, c0, r1, c1) in enumerate(table):
            box = [min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)]
            prompts.append(Prompt(int(frame), index + 1, box=np.array(box)))
    return group_prompts(prompts)


def _frame_table(values: Any, name: str, stack_form: str, image_form: str, spatial: int):
    """(K, 1 + spatial) float array with the frame first; frames rounded to integers."""
    table = np.asarray(values, dtype=np.float64)
    if table.ndim == 1 and table.size in (spatial, spatial + 1):
        table = table[None, :]
    if table.ndim != 2 or table.shape[1] not in (spatial, spatial + 1):
        raise ValueError(
            f"{name} must have shape (N, {spatial + 1}) as {stack_form} rows for a stack, or "
            f"(N, {spatial}) as {image_form} rows for a single image; got shape {table.shape}"
        )
    if not np.isfinite(table).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    if table.shape[1] == spatial:
        table = np.concatenate([np.zeros((len(table), 1)), table], axis=1)
    table[:, 0] = np.round(table[:, 0])
    return table


def _is_auto(device: Any) -> bool:
    return isinstance(device, str) and device.strip().lower() == "auto"


def _network(model: Any, checkpoint: Any, image_size: int | None, device: Any) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a preset name or a built SAM 2 network, got {type(model).__name__}"
        )
    from .model import build_sam2

    return build_sam2(model, checkpoint=checkpoint, image_size=image_size, device=device)


def _tracker(
    image, model, checkpoint, image_size, device, *, roi=False, roi_margin=None, **options
):
    """A Tracker over ``image`` on the network that ``model`` names or is (a RegionTracker
    with ``roi``); with a built ``model``, device "auto" keeps it where it is."""
    from .engine.tracker import Tracker

    if roi_margin is not None and not roi:
        raise ValueError("roi_margin is the margin of a region of interest: pass roi=True too")
    network = _network(model, checkpoint, image_size, device)
    tracker_device = None if not isinstance(model, str) and _is_auto(device) else device
    if roi:
        from .engine.region_tracker import RegionTracker
        from .engine.roi import DEFAULT_MARGIN

        margin = DEFAULT_MARGIN if roi_margin is None else roi_margin
        return RegionTracker(network, image, device=tracker_device, margin=margin, **options)
    return Tracker(network, image, device=tracker_device, **options)


def _is_single_image(image: Any, tracker: Any) -> bool:
    """True when the tracker took the whole array as one frame (no tracked axis)."""
    frame_rank = 2 if tracker.frames.layout == "grey" else 3
    return tracker.num_frames == 1 and len(image.shape) == frame_rank


def _check_frames(prompts: list[Prompt], num_frames: int, axis: int, single: bool) -> None:
    for prompt in prompts:
        if 0 <= prompt.frame < num_frames:
            continue
        if single:
            raise ValueError(
                f"a prompt is on frame {prompt.frame}, but the image is a single 2-D frame; use "
                "frame 0 (or (row, col) points without a frame)"
            )
        raise ValueError(
            f"a prompt is on frame {prompt.frame}, but the stack has {num_frames} frames along "
            f"axis {axis} (0 to {num_frames - 1})"
        )


# ---------------------------------------------------------------------- segment everything


def segment_everything(
    image: Any,
    *,
    model: str | torch.nn.Module = "sam2.1_hiera_tiny",
    checkpoint: str | os.PathLike[str] | None = "download",
    image_size: int | None = None,
    device: str | torch.device = "auto",
    channel_axis: int | None = None,
    intensity_range: tuple[float, float] | None = None,
    **amg_parameters: Any,
) -> list[dict[str, Any]]:
    """Find every object on one 2-D frame: SAM 2's automatic mask generator.

    Args:
        image: one frame: grey (H, W), RGB(A) (H, W, 3|4), or multichannel with
            ``channel_axis``; any integer, float or bool dtype.
        model, checkpoint, image_size, device: as for :func:`segment`.
        channel_axis, intensity_range: as for :func:`segment`.
        amg_parameters: the parameters of Meta's ``SAM2AutomaticMaskGenerator``, with its
            defaults: ``points_per_side=32``, ``points_per_batch=64``, ``pred_iou_thresh=0.8``,
            ``stability_score_thresh=0.95``, ``stability_score_offset=1.0``,
            ``mask_threshold=0.0``, ``box_nms_thresh=0.7``, ``crop_n_layers=0``,
            ``crop_nms_thresh=0.7``, ``crop_overlap_ratio=512/1500``,
            ``crop_n_points_downscale_factor=1``, ``point_grids=None``,
            ``min_mask_region_area=0``, ``use_m2m=False``, ``multimask_output=True``
            (see :class:`napari_sam2.engine.automatic.AutomaticMaskSettings`).

    Returns:
        one dict per mask, as Meta's generator returns them: ``segmentation`` bool (H, W),
        ``area`` (pixels), ``bbox`` [x, y, w, h], ``predicted_iou``, ``stability_score``,
        ``point_coords`` [[x, y]] and ``crop_box`` [x, y, w, h].

    Raises:
        ValueError: an unknown or bad parameter (the message lists the valid ones), an image
            that is not one non-empty 2-D frame.
    """
    from .engine.automatic import AutomaticMaskGenerator, AutomaticMaskSettings, single_frame

    settings = AutomaticMaskSettings.from_options(**amg_parameters)
    source = single_frame(image, channel_axis=channel_axis, intensity_range=intensity_range)
    network = _network(model, checkpoint, image_size, device)
    run_on = None if not isinstance(model, str) and _is_auto(device) else device
    return AutomaticMaskGenerator(network, settings, device=run_on).generate(source)


def segment_everything_labels(image: Any, **options: Any) -> np.ndarray:
    """:func:`segment_everything` as one uint32 label image (H, W): smaller masks win where
    masks overlap, and ids run 1..N over the masks that keep at least one pixel, in the order
    of the records. Takes the same arguments."""
    from .engine.automatic import labels_from_records, single_frame

    records = segment_everything(image, **options)
    shape = single_frame(
        image,
        channel_axis=options.get("channel_axis"),
        intensity_range=options.get("intensity_range"),
    ).frame_shape
    return labels_from_records(records, shape)


def segment_all(
    image: Any,
    *,
    frames: Sequence[int] = (0,),
    model: str | torch.nn.Module = "sam2.1_hiera_tiny",
    checkpoint: str | os.PathLike[str] | None = "download",
    image_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    axis: int = 0,
    channel_axis: int | None = None,
    intensity_range: tuple[float, float] | None = None,
    same_object_iou: float = 0.5,
    direction: str = "both",
    progress: ProgressCallback | None = None,
    feature_store: str | os.PathLike[str] | None = None,
    **amg_parameters: Any,
) -> np.ndarray:
    """Segment everything on key frames and track every object through the stack.

    On each key frame of ``frames``, the automatic mask generator (:func:`segment_everything`)
    finds masks; each becomes an object with a mask prompt (ids 1..N on the first key frame).
    On later key frames, a mask whose IoU with an object propagated there is above
    ``same_object_iou`` is that object (another conditioning frame), the others are new
    objects (:data:`napari_sam2.engine.everything.SAME_OBJECT_RULE`). Then every object is
    propagated in ``direction``.

    Args:
        image, model, checkpoint, image_size, device, precision, axis, channel_axis,
            intensity_range, direction, feature_store: as for :func:`segment`.
        frames: the key frames (indices along ``axis``; ``(0,)`` for a single image).
        same_object_iou: the IoU threshold above which a mask of a later key frame is an
            object already tracked there, in [0, 1].
        progress: optional ``progress(done, total)`` after every tracked frame (the passes
            that carry objects between key frames count too).
        amg_parameters: the generator's parameters, as for :func:`segment_everything`.

    Returns:
        uint32 labels, (num_frames, H, W) for a stack and (H, W) for a single image.

    Raises:
        ValueError: a bad parameter or key frame, or no mask found on any key frame.
    """
    if progress is not None and not callable(progress):
        raise TypeError("progress must be None or a callable progress(done, total)")
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    from .engine.automatic import AutomaticMaskGenerator, AutomaticMaskSettings
    from .engine.everything import track_everything

    settings = AutomaticMaskSettings.from_options(**amg_parameters)  # checked before the model
    tracker = _tracker(
        image,
        model,
        checkpoint,
        image_size,
        device,
        axis=axis,
        channel_axis=channel_axis,
        intensity_range=intensity_range,
        precision=precision,
        feature_store=feature_store,
    )
    generator = AutomaticMaskGenerator(tracker.model, settings, device=tracker.device)
    labels = track_everything(
        tracker,
        generator,
        frames,
        same_object_iou=same_object_iou,
        direction=direction,
        progress=progress,
    )
    return labels[0] if _is_single_image(image, tracker) else labels
