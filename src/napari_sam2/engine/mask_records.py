"""Geometry and bookkeeping for automatic mask generation, in plain torch and numpy.

The pieces that :mod:`napari_sam2.engine.automatic` composes: the point grids and crop boxes
that cover a frame, the stability score, boxes of binary masks, greedy box non-maximum
suppression, the filter for masks cut by a crop's edge, the removal of small holes and islands,
and :class:`Candidates`, the column store of masks that survive the filters.

Conventions: points are (x, y) pixels, boxes (x0, y0, x1, y1). Boxes of masks are inclusive
pixel indices (x1 is the last column inside), as SAM's generator reports them; crop boxes are
exclusive (x1 is one past the last column), as slices are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

#: How close (pixels) a mask's box may come to a crop's inner edge before the mask counts as
#: cut off by the crop.
CROP_EDGE_TOLERANCE = 20.0

#: Logits written by the small-region clean-up: well inside (holes) or outside (islands).
CLEANUP_LOGIT = 10.0


def point_grid(points_per_side: int) -> np.ndarray:
    """``points_per_side**2`` points (x, y) in (0, 1), float64, row by row (x varies fastest);
    each point is the centre of its cell of an even grid."""
    n = int(points_per_side)
    half_cell = 0.5 / n
    centres = np.linspace(half_cell, 1.0 - half_cell, n)
    xs, ys = np.meshgrid(centres, centres, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def layer_point_grids(points_per_side: int, crop_n_layers: int, downscale: int) -> list:
    """One grid per crop layer: layer i has ``int(points_per_side / downscale**i)`` a side."""
    return [
        point_grid(int(points_per_side / downscale**layer)) for layer in range(crop_n_layers + 1)
    ]


def crop_boxes(
    height: int, width: int, crop_n_layers: int, overlap_ratio: float
) -> list[tuple[tuple[int, int, int, int], int]]:
    """``[(crop box, layer), ...]``: the whole frame (layer 0), then for layer i >= 1 a
    ``2**i`` x ``2**i`` tiling whose neighbours overlap by ``overlap_ratio`` of the short side
    (scaled down by ``2 / 2**i``). Boxes are exclusive (x0, y0, x1, y1), ordered by layer, then
    by column of tiles, then by row."""
    boxes = [((0, 0, width, height), 0)]
    short_side = min(height, width)
    for layer in range(1, crop_n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        tile_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        tile_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        lefts = [int((tile_w - overlap) * k) for k in range(per_side)]
        tops = [int((tile_h - overlap) * k) for k in range(per_side)]
        for x0 in lefts:
            for y0 in tops:
                box = (x0, y0, min(x0 + tile_w, width), min(y0 + tile_h, height))
                boxes.append((box, layer))
    return boxes


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks ``logits > threshold + offset`` and ``logits > threshold - offset``
    over the last two axes, float32 (...,). The first mask lies inside the second, so the IoU
    is a ratio of pixel counts; it is NaN where the outer mask is empty."""
    return _count_inside(logits, threshold + offset) / _count_inside(logits, threshold - offset)


def _count_inside(logits: torch.Tensor, level: float) -> torch.Tensor:
    """int32 counts of ``logits > level`` over the last two axes. Rows are summed in int16
    first when they are short enough (faster on the CPU than one int32 reduction)."""
    above = logits > level
    if logits.shape[-1] < 2**15:
        return above.sum(dim=-1, dtype=torch.int16).sum(dim=-1, dtype=torch.int32)
    return above.sum(dim=(-2, -1), dtype=torch.int32)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes around boolean masks (N, H, W): (N, 4) int64 inclusive (x0, y0, x1, y1); an empty
    mask gets (0, 0, 0, 0)."""
    count, height, width = masks.shape
    if count == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2).to(torch.uint8)  # (N, H)
    cols = masks.any(dim=1).to(torch.uint8)  # (N, W)
    # argmax returns the first maximum: the first occupied row/column from either end
    top = rows.argmax(dim=1)
    bottom = height - 1 - rows.flip(1).argmax(dim=1)
    left = cols.argmax(dim=1)
    right = width - 1 - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1)
    occupied = masks.flatten(1).any(dim=1, keepdim=True)
    return torch.where(occupied, boxes, torch.zeros_like(boxes))


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """(N, N) float32 IoU of boxes (N, 4) with areas (x1 - x0) * (y1 - y0); 0/0 gives NaN,
    which compares as no overlap."""
    boxes = boxes.float()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    sides = (bottom_right - top_left).clamp(min=0)
    inter = sides[..., 0] * sides[..., 1]
    return inter / (areas[:, None] + areas[None, :] - inter)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices (K,) int64 of the kept boxes, best score first.

    Boxes are visited by decreasing score (ties keep their input order); a box is dropped when
    its IoU with a kept box exceeds ``iou_threshold``. The IoU matrix is computed at once; only
    the visit runs in a Python loop, over the boxes still alive.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = (box_iou_matrix(boxes[order]) > iou_threshold).cpu().numpy()
    alive = np.ones(len(order), dtype=bool)
    kept = []
    for rank in range(len(order)):
        if alive[rank]:
            kept.append(rank)
            alive[rank + 1 :] &= ~overlaps[rank, rank + 1 :]
    return order[torch.as_tensor(kept, dtype=torch.int64, device=order.device)]


def cut_by_crop(
    boxes: torch.Tensor,
    crop_box: tuple[int, int, int, int],
    frame_box: tuple[int, int, int, int],
    tolerance: float = CROP_EDGE_TOLERANCE,
) -> torch.Tensor:
    """(N,) bool: the box (frame coordinates) comes within ``tolerance`` of an edge of the crop
    that is not also an edge of the frame, so the crop probably cut the object off."""
    boxes = boxes.float()
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    frame = torch.tensor(frame_box, dtype=torch.float32, device=boxes.device)
    near_crop = (boxes - crop).abs() <= tolerance
    near_frame = (boxes - frame).abs() <= tolerance
    return (near_crop & ~near_frame).any(dim=1)


def _component_areas(binary: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, H, W) int64: per pixel, the size of its 8-connected component
    within its own mask (0 outside). All masks are labelled in one call: they are stacked
    into one tall image with an empty row between neighbours, which no component crosses."""
    from skimage.measure import label

    count, height, width = binary.shape
    tall = np.zeros((count, height + 1, width), dtype=bool)
    tall[:, :height] = binary
    regions = label(tall.reshape(count * (height + 1), width), connectivity=2)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return sizes[regions].reshape(count, height + 1, width)[:, :height]


def remove_small_regions(logits: torch.Tensor, max_area: float, threshold: float = 0.0):
    """Fill holes and delete islands of at most ``max_area`` pixels in mask logits (N, H, W).

    Holes are 8-connected components of ``logits <= threshold``; they become
    ``threshold + 10``. Islands are components of ``logits > threshold``; they become
    ``threshold - 10``. Both are found on the input, so filling a hole never creates an
    island. Returns a new tensor; ``max_area <= 0`` returns the input.
    """
    if max_area <= 0 or logits.shape[0] == 0:
        return logits
    inside = (logits > threshold).cpu().numpy()
    holes = _component_areas(~inside)
    islands = _component_areas(inside)
    hole = torch.from_numpy((holes > 0) & (holes <= max_area)).to(logits.device)
    island = torch.from_numpy((islands > 0) & (islands <= max_area)).to(logits.device)
    cleaned = torch.where(hole, torch.full_like(logits, threshold + CLEANUP_LOGIT), logits)
    return torch.where(island, torch.full_like(logits, threshold - CLEANUP_LOGIT), cleaned)


@dataclass
class Candidates:
    """Masks that passed the filters, one row each, kept compactly as low-resolution logits.

    ``low_res`` (N, h, w) float32 logits at the decoder's resolution, cleaned of small regions
    when asked; the full mask is recomputed from them at the end, so memory does not grow with
    the frame's size. ``ious`` and ``stability`` (N,) float32. ``points`` (N, 2) float (x, y)
    and ``boxes`` (N, 4) inclusive, both in frame pixels. ``crops`` (N, 4) int64 exclusive crop
    boxes.
    """

    low_res: torch.Tensor
    ious: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor
    crops: torch.Tensor

    def __len__(self) -> int:
        return int(self.ious.shape[0])

    def select(self, index: torch.Tensor) -> Candidates:
        """The rows ``index`` (bool mask or int64 indices), in that order."""
        return Candidates(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        return Candidates(
            **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Candidates)}
        )
