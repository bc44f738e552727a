"""Many objects at once: segment everything on a slice, or start from an existing Labels layer.

Both make mask prompts, exactly as a brush edit does: each object's mask on a slice becomes a
conditioning frame of that object, so Propagate then tracks all of them. The new objects join
the object list and their pixels the output Labels layer in one undo step.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from ..engine.automatic import AutomaticMaskGenerator, labels_from_records
from ..engine.everything import SAME_OBJECT_IOU, match_key_slice
from .jobs import Job
from .state import ObjectInfo
from .writer import next_free_id, write_frame

__all__ = ["add_mask_objects", "objects_from_labels", "parse_slices", "segment_everything"]


def add_mask_objects(annotator, masks: dict[tuple[int, int], np.ndarray], name: str) -> int:
    """Make ``{(obj_id, frame): bool (H, W)}`` mask prompts (new ids join the object list) and
    write their pixels, as one undo step; returns how many objects are new."""
    work = annotator.work
    before = work.snapshot or annotator.snapshot()
    known = set(annotator.state.object_ids)
    new_ids = sorted({obj_id for obj_id, _ in masks} - known)
    annotator.state.objects = (
        *annotator.state.objects,
        *(ObjectInfo(id=i, name=f"object {i}") for i in new_ids),
    )
    work.painted.update(masks)
    if new_ids and annotator.state.current_object is None:
        annotator.state.current_object = new_ids[0]
    step = annotator.record_step(name, before)
    session = annotator.session()
    labels = work.layers.ensure_labels(session.geometry.shape)
    for frame in sorted({frame for _, frame in masks}):
        on_frame = {obj_id: mask for (obj_id, f), mask in masks.items() if f == frame}
        with work.layers.muted(), labels.block_history():
            changed = write_frame(
                labels, session.geometry, frame, {}, masks=on_frame,
                protect=annotator.state.protect,
            )  # fmt: skip
        if changed:
            step.add_label_step(labels)
    annotator.sync(write=False)
    return len(new_ids)


def segment_everything(
    annotator, *, same_object_iou: float = SAME_OBJECT_IOU, **parameters
) -> Job | None:
    """Find every object on the current slice (SAM 2's automatic mask generator with
    ``parameters``) in the background; each becomes an object with a mask prompt there. A
    mask overlapping an object already on the slice with IoU above ``same_object_iou`` is that
    object (:data:`napari_sam2.engine.everything.SAME_OBJECT_RULE`)."""
    if not annotator.ensure_layers():
        return None
    try:
        session = annotator.session()
        frame = annotator.current_frame()
        generator = AutomaticMaskGenerator(annotator.model, **parameters)
    except ValueError as err:
        annotator.notify("error", str(err))
        return None

    def work():
        yield generator.generate(session.tracker.frames, frame)

    def on_yield(records) -> None:
        if not records:
            annotator.state.status = f"Segment everything found no object on slice {frame}."
            annotator.notify(
                "warning",
                f"Segment everything found no object on slice {frame}. Lower the IoU or "
                "stability threshold, or use more points per side.",
            )
            return
        local = labels_from_records(records, session.geometry.frame_shape)
        labels = annotator.work.layers.labels
        found = [local == k for k in range(1, int(local.max()) + 1)]
        # On a later key slice, a mask that overlaps an object already there is that object
        # (one more conditioning frame for it); the others are new objects.
        current = np.asarray(labels.data[session.geometry.frame_slice(frame)])
        matched, new = match_key_slice(found, current, annotator.state.object_ids, same_object_iou)
        start = next_free_id(labels, set(annotator.state.object_ids))
        masks = {(obj_id, frame): mask for obj_id, mask in matched.items()}
        masks.update({(start + k, frame): mask for k, mask in enumerate(new)})
        count = add_mask_objects(annotator, masks, "segment everything")
        annotator.notify(  # information also becomes the dock's status line
            "info",
            f"Found {len(found)} object(s) on slice {frame}: {count} new, {len(matched)} "
            "already tracked there.",
        )

    annotator.state.status = f"Segmenting everything on slice {frame}…"

    def on_error(err: BaseException) -> None:
        # The status line must not keep saying "Segmenting…" after a failure.
        annotator.state.status = f"Segment everything failed on slice {frame}."
        annotator.report_failure(err)

    job = Job("segment everything", work, on_yield=on_yield, on_error=on_error)
    annotator.jobs.submit(job)
    return job


def parse_slices(text: str, num_frames: int) -> list[int] | None:
    """ "all" (or empty) -> None; "3, 7, 10-12" -> [3, 7, 10, 11, 12]; ValueError otherwise."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    frames: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"{part!r} is not a slice or a range such as 3 or 10-12")
        first, last = int(low), int(high or low)
        if first > last or last >= num_frames:
            raise ValueError(
                f"slices {part} are not within 0 to {num_frames - 1} in ascending order"
            )
        frames.update(range(first, last + 1))
    return sorted(frames)


def objects_from_labels(annotator, layer: Labels, frames: list[int] | None = None) -> int:
    """Every label id of ``layer`` on ``frames`` (default: every slice with labels) becomes a
    mask prompt of the object with that id (new ids join the list); returns the objects made.
    ``layer`` must have the image's shape (at the pyramid level read, for a multiscale one)."""
    geometry = annotator.geometry()
    # Read slice by slice: a dask or zarr Labels layer is never loaded whole.
    data = layer.data
    if getattr(layer, "multiscale", False):
        levels = [level for level in data if tuple(level.shape) == tuple(geometry.shape)]
        data = levels[0] if levels else data[0]
    if tuple(data.shape) != tuple(geometry.shape):
        raise ValueError(
            f"The Labels layer {layer.name!r} has shape {tuple(data.shape)}, but the image "
            f"{annotator.state.image.name!r} has {tuple(geometry.shape)}; choose a layer made "
            "for this image."
        )
    if frames is None:
        frames = [
            f for f in range(geometry.num_frames)
            if np.asarray(data[geometry.frame_slice(f)]).any()
        ]  # fmt: skip
    masks: dict[tuple[int, int], np.ndarray] = {}
    for frame in frames:
        slice_labels = np.asarray(data[geometry.frame_slice(frame)])
        for obj_id in np.unique(slice_labels):
            if obj_id > 0:
                masks[(int(obj_id), frame)] = slice_labels == obj_id
    if not masks:
        raise ValueError(f"The Labels layer {layer.name!r} has no labels on those slices.")
    before = set(annotator.state.object_ids)
    add_mask_objects(annotator, masks, "objects from labels")
    made = len(set(annotator.state.object_ids) - before)
    annotator.notify(
        "info",
        f"{len({k[0] for k in masks})} object(s) from {layer.name!r} on {len(set(frames))} "
        f"slice(s), {made} new.",
    )
    return made
