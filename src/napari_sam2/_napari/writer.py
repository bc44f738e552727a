"""Writing engine results into a napari Labels layer, through the engine's one overlap policy.

Every write computes the frame's new labels with :func:`napari_sam2.engine.session.label_frame`
(the API's and the CLI's rule too) and sends only the pixels that change through
``Labels.data_setitem``, so napari records them for undo. A write inside
``labels.block_history()`` joins that undo step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from napari.layers import Labels

from ..engine.session import label_frame
from .geometry import SliceGeometry

__all__ = ["erase_object", "next_free_id", "write_frame"]


def write_frame(
    labels: Labels,
    geometry: SliceGeometry,
    frame: int,
    logits_by_id: Mapping[int, np.ndarray | None],
    *,
    masks: Mapping[int, np.ndarray] | None = None,
    protect: bool = True,
    refresh: bool = True,
) -> int:
    """Write the objects of one frame; returns the number of pixels changed (0: no undo step).

    Args:
        labels: a Labels layer whose data has ``geometry.shape``.
        geometry: maps the frame to the labels' axes.
        frame: index along the tracked axis.
        logits_by_id: ``{obj_id: float logits (H, W) or None}`` (None: remove the object).
        masks: ``{obj_id: bool (H, W)}`` painted masks kept to the pixel.
        protect: keep labels of objects not written and labels painted by hand.
        refresh: let napari redraw after the write.
    """
    if tuple(labels.data.shape) != tuple(geometry.shape):
        raise ValueError(
            f"The Labels layer {labels.name!r} has shape {tuple(labels.data.shape)}, not the "
            f"image's {tuple(geometry.shape)}; delete it and segment again."
        )
    current = np.asarray(labels.data[geometry.frame_slice(frame)])
    updated = label_frame(current, logits_by_id, masks=masks, protect=protect)
    rows, cols = np.nonzero(updated != current)
    if rows.size == 0:
        return 0
    values = updated[rows, cols]
    index = geometry.labels_index(frame, rows, cols)
    repeats = len(index[0]) // rows.size
    labels.data_setitem(index, np.tile(values, repeats), refresh=refresh)
    return int(rows.size)


def erase_object(labels: Labels, obj_id: int, index: tuple | None = None) -> int:
    """Set every pixel of ``obj_id`` to 0 through ``data_setitem``, within ``index`` (a tuple
    of one int or ``slice(None)`` per axis; default everywhere); returns the pixels changed."""
    data = np.asarray(labels.data)
    region = (slice(None),) * data.ndim if index is None else tuple(index)
    hits = list(np.nonzero(data[region] == obj_id))
    if not hits or not hits[0].size:
        return 0
    count = hits[0].size
    coords = []
    for part in region:
        coords.append(hits.pop(0) if isinstance(part, slice) else np.full(count, int(part)))
    labels.data_setitem(tuple(coords), 0)
    return int(count)


def next_free_id(labels: Labels | None, taken: set[int]) -> int:
    """The smallest id above every id in ``labels`` and in ``taken`` (1 for an empty start), so a
    new object never reuses a painted label."""
    highest = max(taken, default=0)
    if labels is not None and labels.data.size:
        highest = max(highest, int(np.max(labels.data)))
    return highest + 1
