"""Turn per-object logits into one label image, and write one object without touching others.

Two jobs, both vectorised over whole frames:

- :func:`merge_logits`: several objects' float32 logits for one frame -> one integer label image,
  where overlaps go to the most confident object.
- :func:`write_object`: put one object's mask into an existing label image in place, replacing only
  that object's own pixels, so labels painted by hand or other objects are never clobbered.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["merge_logits", "write_object"]


def merge_logits(
    logits_by_id: Mapping[int, np.ndarray],
    *,
    shape: tuple[int, int] | None = None,
    dtype: np.dtype | type = np.uint32,
) -> np.ndarray:
    """Merge per-object logits into a label image.

    Args:
        logits_by_id: ``{object id: logits}``, ids positive integers, every logits array a float
            (H, W) array of the same shape (the tracker's float32 output; mask = logits > 0).
        shape: (H, W) of the result, needed only when ``logits_by_id`` is empty.
        dtype: integer dtype of the result (uint32 by default); it must hold the largest id.

    Returns:
        (H, W) array of ``dtype``: each pixel holds the id of the object with the highest logit
        among the objects whose logit there is > 0, and 0 (background) where no logit is > 0. Ties
        go to the smaller id.

    Raises:
        ValueError: no logits and no ``shape``, logits of different shapes or not 2-D, an id that
            is not a positive integer or does not fit ``dtype``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise ValueError(f"dtype must be an integer dtype, got {dtype}")
    if not logits_by_id:
        if shape is None:
            raise ValueError("merge_logits got no objects; pass shape=(H, W) for an empty result")
        return np.zeros(tuple(shape), dtype=dtype)

    ids = sorted(logits_by_id)
    first = np.asarray(logits_by_id[ids[0]])
    frame_shape = first.shape
    if first.ndim != 2:
        raise ValueError(f"logits must be (H, W) arrays; object {ids[0]} has shape {first.shape}")
    if shape is not None and tuple(shape) != frame_shape:
        raise ValueError(f"logits have shape {frame_shape} but shape={tuple(shape)} was asked for")
    limit = np.iinfo(dtype).max
    for obj_id in ids:
        _check_id(obj_id, limit, dtype)

    labels = np.zeros(frame_shape, dtype=dtype)
    # Best logit so far; starting at 0 makes "logit > 0" and "beats the others" one comparison.
    best = np.zeros(frame_shape, dtype=np.float32)
    wins = np.empty(frame_shape, dtype=bool)
    for obj_id in ids:
        logits = np.asarray(logits_by_id[obj_id])
        if logits.shape != frame_shape:
            raise ValueError(
                f"all logits must have the same shape; object {ids[0]} has {frame_shape}, "
                f"object {obj_id} has {logits.shape}"
            )
        np.greater(logits, best, out=wins)
        np.copyto(labels, dtype.type(obj_id), where=wins)
        np.maximum(best, logits, out=best, where=wins)
    return labels


def write_object(
    labels: np.ndarray,
    obj_id: int,
    mask: np.ndarray,
    *,
    protect: bool = True,
) -> np.ndarray:
    """Write one object's mask into ``labels`` in place.

    Args:
        labels: integer label image of any shape (e.g. one (H, W) frame or a whole stack); it is
            modified in place.
        obj_id: the object's id, a positive integer that fits ``labels.dtype``.
        mask: bool array of ``labels.shape``, True where the object now is.
        protect: when True, pixels that belong to another object (label > 0 and != ``obj_id``)
            are never overwritten, even where ``mask`` is True. When False, ``mask`` wins.

    Returns:
        bool array of ``labels.shape``, True where ``labels`` changed: pixels newly set to
        ``obj_id`` and pixels of ``obj_id`` outside ``mask`` that were cleared to 0. Pixels of
        other ids are never cleared.

    Raises:
        ValueError: shapes differ, ``labels`` is not an integer array, or the id is invalid.
    """
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    mask = np.asarray(mask)
    if mask.shape != labels.shape:
        raise ValueError(f"mask has shape {mask.shape} but labels have shape {labels.shape}")
    if mask.dtype != bool:
        mask = mask.astype(bool)
    _check_id(obj_id, np.iinfo(labels.dtype).max, labels.dtype)

    own = labels == obj_id
    stale = own & ~mask  # the object's old pixels that it no longer covers
    fresh = mask & ~own
    if protect:
        fresh &= labels == 0
    labels[stale] = 0
    labels[fresh] = obj_id
    stale |= fresh
    return stale


def _check_id(obj_id: object, limit: int, dtype: np.dtype) -> None:
    if isinstance(obj_id, bool) or not isinstance(obj_id, int | np.integer):
        raise ValueError(f"object ids must be positive integers, got {obj_id!r}")
    if not 0 < int(obj_id) <= limit:
        raise ValueError(f"object id {obj_id} is not in 1..{limit}, the range of dtype {dtype}")
