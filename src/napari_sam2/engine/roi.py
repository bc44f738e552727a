"""Regions of interest: where the region tracker looks on slices much larger than the model.

SAM 2 squashes every frame into a square of its input size S (1024 for the official presets), so
on a 4096 x 4096 slice each input pixel stands for 4 x 4 pixels of the data and small objects
lose their detail. :class:`~napari_sam2.engine.region_tracker.RegionTracker` instead tracks each
object on a crop around it (a :class:`Region`) and pastes the results back into frame-sized
logits. This module holds the geometry, in frame pixels; no torch, no model.

Conventions: an :class:`Extent` is a half-open box of pixel rows and columns
``[row0, row1) x [col0, col1)``. Prompts use SAM's (x, y) = (column, row), and a point at (x, y)
lies on the pixel whose centre is nearest (``floor(x + 0.5)``), as in
:func:`napari_sam2.engine.session.inside_frame`.

The rules, with ``margin`` m (default 0.5) and ``min_side`` (default S):

1. **Size.** An object's region is a square of side ``max(min_side, ceil(L * (1 + 2 m)))``,
   where L is the longest side of the extent of its prompts (points of either label, the box,
   the mask): m is the share of the object's size added on each side. A side longer than the
   frame is cut to the frame, so a region never exceeds it. A click alone has no size: its
   region is ``min_side`` (S by default: the crop reaches the model at its native resolution).
2. **Place.** The region is centred on the prompts' extent and shifted inside the frame.
3. **Grow.** A new object's first mask that touches an edge of its region which is not an edge
   of the frame was cut by the region: the side is doubled and the prompt segmented again, at
   most :data:`MAX_GROWTH` times (each costs one image encoding).
4. **Follow.** During propagation each slice starts from the region of the slice before it in
   the direction of travel. When the mask there comes within :data:`FOLLOW_EDGE` of the side
   (1/8) of an edge of the region that is not the frame's, the region is moved so that the
   mask's box is centred (shifted inside the frame); its size stays. An empty mask leaves it
   where it was. Prompted slices keep the region of their prompts.
5. **Paste.** Logits computed on the crop at its full resolution are written into a frame of
   :data:`OUTSIDE_LOGIT` (mask = logits > 0 stays exact, and the engine's overlap policy never
   gives a pixel outside an object's region to that object).

A region covering the whole frame (a frame no larger than ``min_side``, or ``min_side`` at least
the frame's longer side) is the plain tracker's frame, and the results are the plain ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_MARGIN",
    "FOLLOW_EDGE",
    "MAX_GROWTH",
    "OUTSIDE_LOGIT",
    "Extent",
    "Region",
    "follow",
    "grown",
    "mask_extent",
    "place",
    "prompt_extent",
    "region_for",
    "region_size",
    "touches_inner_edge",
]

#: Logit written outside an object's region: far below any mask threshold, and the value SAM 2
#: itself uses for "no object".
OUTSIDE_LOGIT = -1024.0
#: Share of the object's size added on each side of it (rule 1).
DEFAULT_MARGIN = 0.5
#: A mask this close to an inner edge of its region, as a share of the side, moves the region
#: (rule 4).
FOLLOW_EDGE = 0.125
#: How many times a new object's region may double when its first mask is cut (rule 3).
MAX_GROWTH = 2


class Extent(NamedTuple):
    """A half-open box of pixels: rows ``[row0, row1)``, columns ``[col0, col1)``."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def centre(self) -> tuple[float, float]:
        """(row, col) of the box's centre, in the same pixel units as its bounds."""
        return (self.row0 + self.row1) / 2, (self.col0 + self.col1) / 2

    def union(self, other: Extent | None) -> Extent:
        if other is None:
            return self
        return Extent(
            min(self.row0, other.row0),
            min(self.col0, other.col0),
            max(self.row1, other.row1),
            max(self.col1, other.col1),
        )


@dataclass(frozen=True)
class Region:
    """A crop of a frame: ``height`` x ``width`` pixels from row ``top``, column ``left``."""

    top: int
    left: int
    height: int
    width: int

    @classmethod
    def whole(cls, frame_shape: tuple[int, int]) -> Region:
        """The region that is the whole frame of ``frame_shape`` (H, W)."""
        return cls(0, 0, int(frame_shape[0]), int(frame_shape[1]))

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, cols) slices of a frame array that give this crop."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def contains(self, extent: Extent) -> bool:
        """Whether every pixel of ``extent`` (frame pixels) lies in the region."""
        return (
            self.top <= extent.row0
            and extent.row1 <= self.bottom
            and self.left <= extent.col0
            and extent.col1 <= self.right
        )

    def to_frame(self, local: Extent) -> Extent:
        """``local`` (pixels of the crop) in pixels of the frame."""
        return Extent(
            local.row0 + self.top,
            local.col0 + self.left,
            local.row1 + self.top,
            local.col1 + self.left,
        )

    def local_points(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) (x, y) of the frame -> (x, y) of the crop."""
        return np.asarray(xy, dtype=np.float64).reshape(-1, 2) - [self.left, self.top]

    def local_box(self, box: np.ndarray) -> np.ndarray:
        """(x0, y0, x1, y1) of the frame -> of the crop (not clipped)."""
        offset = [self.left, self.top, self.left, self.top]
        return np.asarray(box, dtype=np.float64).reshape(4) - offset

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The crop of a frame-sized array (H, W, ...) (a view)."""
        return frame[self.slices]

    def paste(
        self, logits: np.ndarray, frame_shape: tuple[int, int], fill: float = OUTSIDE_LOGIT
    ) -> np.ndarray:
        """Crop-sized float logits (height, width) -> float32 (H, W) of the frame, ``fill``
        outside the region. A region that is the whole frame returns the logits as they are."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != self.shape:
            raise ValueError(
                f"logits have shape {logits.shape}, but the region is {self.shape} (H, W)"
            )
        if self == Region.whole(frame_shape):
            return logits
        full = np.full(tuple(frame_shape), np.float32(fill), dtype=np.float32)
        full[self.slices] = logits
        return full


def _point_pixels(xy: np.ndarray) -> np.ndarray:
    """(N, 2) (x, y) -> (N, 2) int64 (row, col) of the pixel each point lies on."""
    table = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.floor(table[:, ::-1] + 0.5).astype(np.int64)


def mask_extent(mask: np.ndarray) -> Extent | None:
    """The extent of the True pixels of a 2-D bool array, None when there are none."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return Extent(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def prompt_extent(
    frame_shape: tuple[int, int], *, points=None, box=None, mask=None
) -> Extent | None:
    """The pixels one object's prompts on one frame cover, clipped to the frame.

    ``points`` (N, 2) (x, y) of either label, ``box`` (x0, y0, x1, y1), ``mask`` bool (H, W).
    None when there is nothing (no points, no box, an empty mask).
    """
    height, width = frame_shape
    found: Extent | None = None
    if points is not None and np.asarray(points).size:
        pixels = _point_pixels(points)
        lo, hi = pixels.min(axis=0), pixels.max(axis=0) + 1
        found = Extent(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
        from_box = Extent(math.floor(y0), math.floor(x0), math.ceil(y1), math.ceil(x1))
        found = from_box.union(found)
    if mask is not None:
        from_mask = mask_extent(mask)
        if from_mask is not None:
            found = from_mask.union(found)
    if found is None:
        return None
    row0, row1 = min(max(found.row0, 0), height - 1), min(max(found.row1, 1), height)
    col0, col1 = min(max(found.col0, 0), width - 1), min(max(found.col1, 1), width)
    return Extent(row0, col0, max(row1, row0 + 1), max(col1, col0 + 1))


def region_size(
    extent: Extent | None, frame_shape: tuple[int, int], *, margin: float, min_side: int
) -> tuple[int, int]:
    """(height, width) of the region for ``extent`` (rule 1): a square of side
    ``max(min_side, ceil(L * (1 + 2 * margin)))``, cut to the frame."""
    longest = 0 if extent is None else max(extent.height, extent.width)
    side = max(int(min_side), math.ceil(longest * (1 + 2 * float(margin))), 1)
    return min(side, int(frame_shape[0])), min(side, int(frame_shape[1]))


def place(
    centre: tuple[float, float], size: tuple[int, int], frame_shape: tuple[int, int]
) -> Region:
    """A region of ``size`` (h, w) centred on (row, col) ``centre``, shifted inside the frame."""
    height, width = (min(int(s), int(f)) for s, f in zip(size, frame_shape))
    top = math.floor(centre[0] - height / 2 + 0.5)
    left = math.floor(centre[1] - width / 2 + 0.5)
    top = min(max(top, 0), int(frame_shape[0]) - height)
    left = min(max(left, 0), int(frame_shape[1]) - width)
    return Region(top, left, height, width)


def region_for(
    extent: Extent | None,
    frame_shape: tuple[int, int],
    *,
    margin: float,
    min_side: int,
    size: tuple[int, int] | None = None,
) -> Region:
    """The region of rules 1 and 2 for prompts covering ``extent`` (frame pixels); ``size``
    fixes (h, w) instead of rule 1. No extent: centred on the frame."""
    if size is None:
        size = region_size(extent, frame_shape, margin=margin, min_side=min_side)
    centre = (frame_shape[0] / 2, frame_shape[1] / 2) if extent is None else extent.centre
    return place(centre, size, frame_shape)


def _inner_gaps(region: Region, local: Extent, frame_shape: tuple[int, int]):
    """The gaps (pixels) between ``local`` (crop pixels) and each edge of the region that is
    not an edge of the frame: top, bottom, left, right; None for a frame edge."""
    height, width = frame_shape
    return (
        local.row0 if region.top > 0 else None,
        region.height - local.row1 if region.bottom < height else None,
        local.col0 if region.left > 0 else None,
        region.width - local.col1 if region.right < width else None,
    )


def touches_inner_edge(region: Region, local: Extent | None, frame_shape) -> bool:
    """Whether a mask covering ``local`` (crop pixels) reaches an edge of the region that is
    not an edge of the frame, so the region may have cut it (rule 3)."""
    if local is None:
        return False
    return any(gap is not None and gap <= 0 for gap in _inner_gaps(region, local, frame_shape))


def grown(region: Region, local: Extent | None, frame_shape: tuple[int, int]) -> Region:
    """``region`` with its side doubled (cut to the frame), centred on the mask ``local``
    (crop pixels) or on the old region (rule 3)."""
    size = (2 * region.height, 2 * region.width)
    if local is None:
        centre = (region.top + region.height / 2, region.left + region.width / 2)
    else:
        centre = region.to_frame(local).centre
    return place(centre, size, frame_shape)


def follow(
    region: Region,
    local: Extent | None,
    frame_shape: tuple[int, int],
    *,
    edge: float = FOLLOW_EDGE,
) -> Region:
    """The region for the next slice (rule 4): ``region`` as it is, or moved so that the mask
    ``local`` (its extent in crop pixels) is centred when it comes within ``edge`` times the
    side of an edge of the region that is not an edge of the frame."""
    if local is None:
        return region
    top, bottom, left, right = _inner_gaps(region, local, frame_shape)
    near_rows = edge * region.height
    near_cols = edge * region.width
    near = any(gap is not None and gap < near_rows for gap in (top, bottom)) or any(
        gap is not None and gap < near_cols for gap in (left, right)
    )
    if not near:
        return region
    return place(region.to_frame(local).centre, region.shape, frame_shape)
