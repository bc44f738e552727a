"""Checks of user prompts, and their conversion to model input coordinates.

Every error is a ``ValueError`` whose message says what was wrong and what to give instead.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch.nn import functional as F

from .objects import EncodedPrompt
from .session import MASK_THRESHOLD, inside_frame, mask_to_bool

__all__ = [
    "MASK_THRESHOLD",
    "mask_to_bool",
    "validate_frame_index",
    "validate_object_id",
    "validate_prompt",
]


def validate_frame_index(frame, num_frames: int) -> int:
    """``frame`` as an int; ValueError unless it is an integer (not a bool or a float) in
    ``[0, num_frames)``."""
    if not isinstance(frame, numbers.Integral) or isinstance(frame, bool):
        raise ValueError(f"frame index must be an integer, got {frame!r}")
    if not 0 <= frame < num_frames:
        raise ValueError(
            f"frame index {frame} is out of range: the stack has {num_frames} frames "
            f"(0 to {num_frames - 1})"
        )
    return int(frame)


def validate_object_id(obj_id, label_dtype: np.dtype | type | None = None) -> int:
    """``obj_id`` as an int; ValueError unless it is a positive integer (not a bool or a float)
    that fits ``label_dtype`` (the dtype of the label image it will be written to), if given."""
    if not isinstance(obj_id, numbers.Integral) or isinstance(obj_id, bool) or obj_id < 1:
        raise ValueError(
            f"object id must be a positive integer (it becomes the label value), got {obj_id!r}"
        )
    if label_dtype is not None:
        limit = int(np.iinfo(np.dtype(label_dtype)).max)
        if obj_id > limit:
            raise ValueError(
                f"object id {obj_id} does not fit the {np.dtype(label_dtype)} label image "
                f"(largest id {limit}); use smaller ids or a wider label dtype"
            )
    return int(obj_id)


def _as_points(points, labels, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.asarray(points, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(
            f"points must have shape (N, 2) as (x, y) = (column, row) pixels, got shape "
            f"{coords.shape}"
        )
    if labels is None:
        raise ValueError("labels are missing: give one label per point (1 inside, 0 outside)")
    marks = np.asarray(labels).reshape(-1)
    if marks.shape[0] != coords.shape[0]:
        raise ValueError(
            f"got {coords.shape[0]} points but {marks.shape[0]} labels; give one label per "
            "point (1 inside, 0 outside)"
        )
    if not np.isin(marks, (0, 1)).all():
        raise ValueError(f"labels must be 1 (inside) or 0 (outside), got {np.unique(marks)}")
    if not np.isfinite(coords).all():
        raise ValueError("points contain NaN or infinite coordinates")
    outside = ~inside_frame(coords, (height, width))
    if outside.any():
        x, y = coords[np.argmax(outside)]
        raise ValueError(
            f"point (x={x:g}, y={y:g}) is outside the frame of width {width} and height "
            f"{height}; points are (x, y) = (column, row) pixels of the frame, each pixel "
            f"covering +-0.5 around its centre (x from -0.5 to {width - 0.5:g})"
        )
    return coords, marks.astype(np.int32)


def _as_box(box, height: int, width: int) -> np.ndarray:
    corners = np.asarray(box, dtype=np.float64).reshape(-1)
    if corners.shape != (4,) or not np.isfinite(corners).all():
        raise ValueError(f"box must be four finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = corners
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"box (x0, y0, x1, y1) = {tuple(corners)} is empty: need x1 > x0, y1 > y0"
        )
    if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
        raise ValueError(
            f"box {tuple(corners)} lies outside the frame of width {width} and height {height}"
        )
    return np.clip(corners, 0, [width, height, width, height])


def validate_prompt(
    frame_shape: tuple[int, int],
    image_size: int,
    *,
    points=None,
    labels=None,
    box=None,
    mask=None,
) -> EncodedPrompt:
    """Check one object's prompts on one frame and convert them to model input pixels.

    Points and box are scaled from the frame's (H, W) to the model's square input. A mask is
    made bool first (see :func:`mask_to_bool`: a float mask is foreground where >= 0.5), then
    resized to (S, S) and thresholded at 0.5.
    """
    height, width = frame_shape
    has_points = points is not None and np.asarray(points).size > 0
    if mask is not None:
        if has_points or box is not None:
            raise ValueError("give either a mask, or points and/or a box, not both")
        return EncodedPrompt(mask=_mask_input(mask, frame_shape, image_size))
    if not has_points and box is None:
        raise ValueError("the prompt is empty: give at least one point, a box or a mask")

    parts_xy, parts_labels = [], []
    if box is not None:
        corners = _as_box(box, height, width)
        parts_xy.append(corners.reshape(2, 2))
        parts_labels.append(np.array([2, 3], dtype=np.int32))
    if has_points:
        coords, marks = _as_points(points, labels, height, width)
        parts_xy.append(coords)
        parts_labels.append(marks)
    xy = np.concatenate(parts_xy, axis=0)
    scale = np.array([image_size / width, image_size / height])
    coords_t = torch.as_tensor(xy * scale, dtype=torch.float32).unsqueeze(0)
    labels_t = torch.as_tensor(np.concatenate(parts_labels), dtype=torch.int32).unsqueeze(0)
    return EncodedPrompt(coords=coords_t, labels=labels_t)


def _mask_input(mask, frame_shape: tuple[int, int], image_size: int) -> torch.Tensor:
    array = np.asarray(mask)
    if array.shape != tuple(frame_shape):
        raise ValueError(
            f"mask has shape {array.shape} but frames are {tuple(frame_shape)}; give a bool "
            "mask of the frame's (H, W)"
        )
    tensor = torch.as_tensor(mask_to_bool(array), dtype=torch.float32)[None, None]
    if tuple(frame_shape) == (image_size, image_size):
        return tensor
    resized = F.interpolate(
        tensor, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return (resized >= 0.5).float()
