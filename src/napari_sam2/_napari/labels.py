"""Write one object's mask into a napari Labels layer, with undo history, protecting other ids.

The pixel rule is :func:`napari_sam2.engine.labels.write_object`: an object replaces only its
own pixels and takes free (0) pixels; other objects' and hand-painted labels stay unless
``protect=False``. Changes go through ``Labels.data_setitem`` so napari records them; wrap a
whole segmentation or propagation in ``labels.block_history()`` to make it one undo step.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from ..engine.labels import write_object
from .geometry import SliceGeometry

__all__ = ["make_labels_layer", "next_free_id", "write_mask"]

LABELS_DTYPE = np.uint32


def make_labels_layer(image: Image, shape: tuple[int, ...], name: str) -> Labels:
    """An empty Labels layer of ``shape`` aligned with ``image`` (same scale and translate)."""
    return Labels(
        np.zeros(shape, dtype=LABELS_DTYPE),
        name=name,
        scale=image.scale,
        translate=image.translate,
        affine=image.affine,
        opacity=0.5,
    )


def write_mask(
    labels: Labels,
    geometry: SliceGeometry,
    frame: int,
    obj_id: int,
    mask: np.ndarray | None,
    *,
    protect: bool = True,
    refresh: bool = True,
) -> int:
    """Write ``obj_id``'s mask on ``frame`` into ``labels``; None clears the object there.

    Args:
        labels: a Labels layer whose data has ``geometry.shape``.
        geometry: maps the frame to the labels' axes.
        frame: index along the tracked axis.
        obj_id: the object's label id (> 0).
        mask: bool (H, W) of the frame, or None for "no longer on this frame".
        protect: keep other ids' pixels even where ``mask`` is True.
        refresh: let napari redraw after the write.

    Returns:
        the number of pixels changed on the frame (per channel).
    """
    current = np.asarray(labels.data[geometry.frame_slice(frame)])
    if mask is None:
        mask = np.zeros(current.shape, dtype=bool)
    updated = current.copy()
    changed = write_object(updated, int(obj_id), mask, protect=protect)
    rows, cols = np.nonzero(changed)
    if rows.size == 0:
        return 0
    values = updated[rows, cols]
    index = geometry.labels_index(frame, rows, cols)
    repeats = len(index[0]) // rows.size
    labels.data_setitem(index, np.tile(values, repeats), refresh=refresh)
    return int(rows.size)


def next_free_id(labels: Labels | None, taken: set[int]) -> int:
    """The smallest id above every id in ``labels`` and in ``taken`` (1 for an empty start), so a
    new object never reuses a painted label."""
    highest = max(taken, default=0)
    if labels is not None and labels.data.size:
        highest = max(highest, int(np.max(labels.data)))
    return highest + 1
