"""Many objects at once: objects seeded from labels, and every object found on key frames,
tracked through the stack.

- :func:`objects_from_labels`: label slices -> one mask :class:`~.session.Prompt` per id and
  slice, keeping the ids.
- :func:`match_key_slice`: the rule that says whether a mask found on a later key frame is an
  object already tracked there or a new one (see :data:`SAME_OBJECT_RULE`).
- :func:`iter_track_everything` / :func:`track_everything`: segment everything on key frames
  (:class:`~.automatic.AutomaticMaskGenerator`), make each mask an object, and propagate all
  of them with the :class:`~.tracker.Tracker`, frame by frame or into one labels volume.

Labels are written with :func:`~.session.label_frame`, the one overlap policy.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .automatic import labels_from_records
from .session import DIRECTIONS, Prompt, label_frame, plan_propagation, start_frame

__all__ = [
    "SAME_OBJECT_RULE",
    "EverythingFrame",
    "iter_track_everything",
    "masks_from_records",
    "match_key_slice",
    "objects_from_labels",
    "prompts_from_label_array",
    "track_everything",
    "track_everything_total",
]

SAME_OBJECT_RULE = (
    "A mask found on a later key frame is an object already tracked there when its IoU with "
    "that object's propagated labels on the frame is above same_object_iou (default 0.5); its "
    "mask then becomes another conditioning frame of that object. Each object takes at most one "
    "mask (the one of highest IoU). Every other mask is a new object with a fresh id."
)

#: The default of ``same_object_iou``. At 0.5 or more, disjoint masks can match an object at
#: most once each (two disjoint masks cannot both cover more than half of the union with it).
SAME_OBJECT_IOU = 0.5

ProgressCallback = Callable[[int, int], None]


# ------------------------------------------------------------------------------ seeding


def objects_from_labels(
    labels_by_frame: Mapping[int, Any], *, label_dtype: np.dtype | type = np.uint32
) -> list[Prompt]:
    """Seed objects from label slices: one mask prompt per label id and slice.

    Args:
        labels_by_frame: ``{frame: (H, W) integer labels}``; 0 is background. The slices must
            all have one shape.
        label_dtype: the dtype of the labels the objects will be written to; every id must fit.

    Returns:
        :class:`Prompt` list sorted by (frame, id), each with ``mask = (slice == id)`` and the
        id as ``obj_id``. An id on several slices gives several prompts: several conditioning
        frames of one object. Empty slices give nothing.

    Raises:
        ValueError: a slice that is not 2-D, not integer, of another shape than the others, with
            negative values or ids that do not fit ``label_dtype``; a bad frame index.
    """
    limit = int(np.iinfo(np.dtype(label_dtype)).max)
    prompts: list[Prompt] = []
    shape = None
    for frame in sorted(labels_by_frame, key=_frame_key):
        labels = np.asarray(labels_by_frame[frame])
        where = f"the labels of frame {frame}"
        if labels.ndim != 2:
            raise ValueError(f"{where} must be one (H, W) slice, got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise ValueError(
                f"{where} have dtype {labels.dtype}; labels must be integers (0 background, "
                "1, 2, ... object ids), e.g. array.astype(np.uint32) of a label image"
            )
        if shape is not None and labels.shape != shape:
            raise ValueError(
                f"{where} have shape {labels.shape}, but the other slices {shape}; give slices "
                "of one image"
            )
        shape = labels.shape
        ids = np.unique(labels)
        if ids.size and ids[0] < 0:
            raise ValueError(f"{where} hold negative values ({ids[0]}); ids must be positive")
        ids = ids[ids > 0]
        if ids.size and int(ids[-1]) > limit:
            raise ValueError(
                f"{where} hold id {int(ids[-1])}, which does not fit the {np.dtype(label_dtype)} "
                f"labels (largest id {limit}); renumber the labels"
            )
        prompts.extend(Prompt(frame, int(obj_id), mask=labels == obj_id) for obj_id in ids)
    return prompts


def prompts_from_label_array(
    labels: Any,
    frames: Iterable[int] | None = None,
    *,
    num_frames: int,
    frame_shape: tuple[int, int],
    label_dtype: np.dtype | type = np.uint32,
    name: str = "the seed labels",
) -> list[Prompt]:
    """Seed prompts from a label array (e.g. a napari Labels layer or a label TIFF) for a
    stack of ``num_frames`` frames of ``frame_shape``: :func:`objects_from_labels` on the
    chosen slices.

    ``labels`` is (num_frames, H, W), read slice by slice (a memmap or a zarr array stays on
    disk), or one (H, W) slice, which then needs exactly one frame in ``frames``. ``frames``:
    the slices to seed from; None takes every slice with labels. ``name`` names the array in
    messages. ValueError when shapes, frames or values do not fit.
    """
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    shape, dtype = tuple(labels.shape), np.dtype(labels.dtype)
    stack_shape = (num_frames, *frame_shape)
    if dtype.kind not in "iu":
        raise ValueError(
            f"{name} have dtype {dtype}; labels must be integers (0 background, 1, 2, ... "
            "object ids), e.g. a napari Labels layer or a label TIFF"
        )
    chosen = None if frames is None else sorted({_frame_key(frame) for frame in frames})
    for frame in chosen or ():
        if frame >= num_frames:
            raise ValueError(
                f"seed frame {frame} is out of range: the stack has {num_frames} frames "
                f"(0 to {num_frames - 1})"
            )
    if shape == tuple(frame_shape):
        if chosen is None and num_frames == 1:
            chosen = [0]
        if chosen is None or len(chosen) != 1:
            raise ValueError(
                f"{name} are one slice {shape}; say which frame they belong to with exactly "
                "one mask frame, or give labels of the stack's shape "
                f"{stack_shape}"
            )
        return objects_from_labels({chosen[0]: labels}, label_dtype=label_dtype)
    if shape != stack_shape:
        raise ValueError(
            f"{name} have shape {shape}, but the stack needs {stack_shape} (frames, rows, "
            f"columns) or one slice {tuple(frame_shape)}"
        )
    if chosen is None:
        slices = {}
        for frame in range(num_frames):
            plane = np.asarray(labels[frame])
            if plane.any():
                slices[frame] = plane
    else:
        slices = {frame: np.asarray(labels[frame]) for frame in chosen}
    return objects_from_labels(slices, label_dtype=label_dtype)


def _frame_key(frame) -> int:
    if isinstance(frame, bool) or not isinstance(frame, numbers.Integral) or frame < 0:
        raise ValueError(f"frame indices must be non-negative integers, got {frame!r}")
    return int(frame)


# ------------------------------------------------------------------------------ key slices


def masks_from_records(records: Sequence[Mapping[str, Any]], shape: tuple[int, int]):
    """Mask records (as the generator returns them) -> disjoint bool masks (H, W), one per id
    of :func:`~.automatic.labels_from_records` (smaller masks win where masks overlap), in id
    order; masks left without a pixel are dropped."""
    labels = labels_from_records(list(records), shape)
    return [labels == obj_id for obj_id in range(1, int(labels.max(initial=0)) + 1)]


def match_key_slice(
    found: Sequence[Any],
    propagated_labels: np.ndarray,
    existing_ids: Iterable[int] | None = None,
    same_object_iou: float = SAME_OBJECT_IOU,
) -> tuple[dict[int, np.ndarray], list[np.ndarray]]:
    """Split the masks found on a key frame into objects already tracked there and new ones.

    The rule is :data:`SAME_OBJECT_RULE`: a found mask whose IoU with an object's pixels in
    ``propagated_labels`` is above (strictly) ``same_object_iou`` is that object; objects take
    masks in decreasing IoU, at most one each; all other masks are new.

    Args:
        found: bool masks (H, W), or mask records with a ``segmentation`` (their masks are
            used as given; :func:`masks_from_records` makes them disjoint first).
        propagated_labels: (H, W) integer labels of the frame, as propagated so far.
        existing_ids: the ids that count as tracked objects (None: every id in the labels).
        same_object_iou: the IoU threshold, in [0, 1]; 1 makes every mask new.

    Returns:
        ``(matched, new)``: ``{obj_id: mask}`` for the masks that are tracked objects, and the
        list of the other masks in their given order.
    """
    same_object_iou = _check_iou(same_object_iou)
    labels = np.asarray(propagated_labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"the propagated labels must be an (H, W) integer image, got shape {labels.shape} "
            f"and dtype {labels.dtype}"
        )
    masks = [_as_mask(item, labels.shape, index) for index, item in enumerate(found)]
    present = np.unique(labels)
    present = present[present > 0]
    if existing_ids is not None:
        present = np.intersect1d(present, np.fromiter(existing_ids, dtype=np.int64))
    values, counts = np.unique(labels, return_counts=True)
    areas = dict(zip(values.tolist(), counts.tolist()))

    candidates = []  # (iou, mask index, obj_id)
    for index, mask in enumerate(masks):
        under = labels[mask]
        ids, overlaps = np.unique(under[np.isin(under, present)], return_counts=True)
        size = int(np.count_nonzero(mask))
        for obj_id, overlap in zip(ids.tolist(), overlaps.tolist()):
            iou = overlap / (size + areas[obj_id] - overlap)
            if iou > same_object_iou:
                candidates.append((iou, index, obj_id))
    matched: dict[int, np.ndarray] = {}
    used: set[int] = set()
    for _, index, obj_id in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
        if index not in used and obj_id not in matched:
            matched[obj_id] = masks[index]
            used.add(index)
    new = [mask for index, mask in enumerate(masks) if index not in used]
    return dict(sorted(matched.items())), new


def _check_iou(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0.0 <= float(value) <= 1.0)
    ):
        raise ValueError(f"same_object_iou must be a number in [0, 1], got {value!r}")
    return float(value)


def _as_mask(item: Any, shape: tuple[int, int], index: int) -> np.ndarray:
    mask = item["segmentation"] if isinstance(item, Mapping) else item
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"found mask {index} has shape {mask.shape}, the frame {shape}")
    return mask.astype(bool, copy=False)


# ------------------------------------------------------------------------------ tracking


class EverythingFrame(NamedTuple):
    """One tracked frame of :func:`iter_track_everything`.

    ``logits``: ``{obj_id: float32 (H, W)}`` (mask = logits > 0). ``final``: the frame comes
    from the last propagation, with every object and prompt; frames of earlier passes (which
    carry objects to the next key frame) are visited again by it.
    """

    frame: int
    logits: dict[int, np.ndarray]
    final: bool


def _key_order(key_frames: Iterable[int], num_frames: int, direction: str) -> list[int]:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    frames = sorted({_frame_key(frame) for frame in key_frames})
    if not frames:
        raise ValueError("give at least one key frame to segment everything on")
    for frame in frames:
        if frame >= num_frames:
            raise ValueError(
                f"key frame {frame} is out of range: the stack has {num_frames} frames "
                f"(0 to {num_frames - 1})"
            )
    # Backward runs visit the key frames from the last down, so each pass reaches the next.
    return frames[::-1] if direction == "backward" else frames


def track_everything_total(
    num_frames: int,
    key_frames: Iterable[int],
    direction: str = "both",
    prompted_frames: Iterable[int] = (),
) -> int:
    """How many frames :func:`iter_track_everything` yields: the passes between consecutive
    key frames, then the final propagation. ``prompted_frames``: frames already prompted on
    the tracker, which can move the final start."""
    order = _key_order(key_frames, num_frames, direction)
    between = sum(abs(b - a) + 1 for a, b in zip(order, order[1:]))
    start = start_frame([*order, *prompted_frames], direction)
    return between + plan_propagation(num_frames, start, direction).total


def iter_track_everything(
    tracker,
    generator,
    key_frames: Iterable[int],
    *,
    same_object_iou: float = SAME_OBJECT_IOU,
    direction: str = "both",
    progress: ProgressCallback | None = None,
) -> Iterator[EverythingFrame]:
    """Segment everything on each key frame and track every object; yields frame by frame.

    Key frames are visited in order (from the last for ``direction="backward"``). On each,
    ``generator.generate(tracker.frames, frame)`` finds masks, made disjoint by
    :func:`masks_from_records` (smaller masks win). On the first key frame of an empty tracker
    they become objects 1..N. On later key frames (or a tracker with objects), the masks are
    matched against the labels propagated there by :func:`match_key_slice`: a matched mask
    becomes another conditioning frame of its object (with the Tracker's default
    ``corrections_as_conditioning=True``), the others new objects with ids after the largest.
    Between key frames, the objects are propagated from one key frame to the next; then one
    final propagation in ``direction`` carries every object through the stack.

    Args:
        tracker: a :class:`~.tracker.Tracker`; objects it has already are kept and tracked too.
        generator: an :class:`~.automatic.AutomaticMaskGenerator` on the tracker's network.
        key_frames: frames to segment everything on.
        same_object_iou: the IoU threshold of :data:`SAME_OBJECT_RULE`.
        direction: "both", "forward" or "backward", as :meth:`Tracker.propagate`.
        progress: optional ``progress(done, total)`` after every yielded frame
            (total: :func:`track_everything_total`).

    Yields:
        :class:`EverythingFrame` ``(frame, logits, final)``. Closing the generator cancels;
        finished frames stay tracked.

    Raises:
        ValueError: a bad key frame, direction or threshold; no mask found on any key frame
            of an empty tracker.
    """
    order = _key_order(key_frames, tracker.num_frames, direction)
    same_object_iou = _check_iou(same_object_iou)
    prompted = [f for obj_id in tracker.object_ids for f in tracker.prompted_frames(obj_id)]
    total = track_everything_total(tracker.num_frames, order, direction, prompted)
    done = 0
    step = -1 if direction == "backward" else 1
    for position, frame in enumerate(order):
        _seed_key_frame(tracker, generator, frame, same_object_iou)
        if position + 1 == len(order):
            break
        if not tracker.object_ids:
            continue  # nothing found yet: nothing to carry to the next key frame
        reach = abs(order[position + 1] - frame) + 1
        pass_direction = "backward" if step < 0 else "forward"
        for index, logits in tracker.propagate(frame, pass_direction, reach):
            done += 1
            yield EverythingFrame(index, logits, False)
            if progress is not None:
                progress(done, total)
    if not tracker.object_ids:
        listed = ", ".join(map(str, sorted(order)))
        raise ValueError(
            f"segment everything found no mask on key frame(s) {listed}; lower "
            "pred_iou_thresh or stability_score_thresh, or pick other frames"
        )
    prompted = [f for obj_id in tracker.object_ids for f in tracker.prompted_frames(obj_id)]
    start = start_frame(prompted, direction)
    done = total - tracker.plan(start, direction).total  # skipped passes still count as done
    for index, logits in tracker.propagate(start, direction):
        done += 1
        yield EverythingFrame(index, logits, True)
        if progress is not None:
            progress(done, total)


def _seed_key_frame(tracker, generator, frame: int, same_object_iou: float) -> None:
    """Segment everything on ``frame`` and give the masks to the tracker as mask prompts."""
    records = generator.generate(tracker.frames, frame)
    masks = masks_from_records(records, tracker.frame_shape)
    existing = tracker.object_ids
    if existing:
        empty = np.zeros(tracker.frame_shape, dtype=tracker.label_dtype)
        current = label_frame(empty, tracker.frame_logits(frame))
        matched, new = match_key_slice(masks, current, existing, same_object_iou)
    else:
        matched, new = {}, masks
    for obj_id, mask in matched.items():
        tracker.set_prompts(frame, obj_id, mask=mask)
    first_new = max(existing, default=0) + 1
    for offset, mask in enumerate(new):
        tracker.set_prompts(frame, first_new + offset, mask=mask)


def track_everything(
    tracker,
    generator,
    key_frames: Iterable[int],
    *,
    same_object_iou: float = SAME_OBJECT_IOU,
    direction: str = "both",
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """:func:`iter_track_everything` collected into labels (num_frames, H, W) of the tracker's
    ``label_dtype``; frames the final propagation does not reach stay 0."""
    height, width = tracker.frame_shape
    labels = np.zeros((tracker.num_frames, height, width), dtype=tracker.label_dtype)
    empty = np.zeros((height, width), dtype=tracker.label_dtype)
    for step in iter_track_everything(
        tracker,
        generator,
        key_frames,
        same_object_iou=same_object_iou,
        direction=direction,
        progress=progress,
    ):
        if step.final:
            labels[step.frame] = label_frame(empty, step.logits)
    return labels
