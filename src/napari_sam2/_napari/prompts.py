"""Prompt layers (Points for clicks, Shapes for boxes) and their conversion to engine prompts.

The layers are the single source of truth for prompts: the annotator re-reads them after every
edit and sends the engine only the (object, frame) groups that changed.

Feature columns follow the CSV convention of :mod:`napari_sam2.engine.prompt_files`, so napari's
own CSV export replays with the CLI:

- Points: ``object`` (int id) and ``label`` (1 positive, 0 negative).
- Shapes: ``object`` (int id). napari's Shapes CSV writer drops features; see the user guide.

Coordinates go layer data -> world (``data_to_world`` of the prompt layer) -> image data
(``world_to_data`` of the image layer), so scale and translate of either layer are honoured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from napari.layers import Image, Points, Shapes

from .geometry import SliceGeometry

__all__ = [
    "NEGATIVE_COLOUR",
    "POSITIVE_COLOUR",
    "FramePrompt",
    "collect_prompts",
    "make_points_layer",
    "make_shapes_layer",
]

POSITIVE_COLOUR = np.array([0.2, 1.0, 0.2, 1.0], dtype=np.float32)
NEGATIVE_COLOUR = np.array([1.0, 0.2, 0.2, 1.0], dtype=np.float32)


@dataclass(frozen=True)
class FramePrompt:
    """All prompts of one object on one frame, in the engine's pixel coordinates.

    Attributes:
        points: ``((x, y), ...)``: (column, row) pixel coordinates of the frame.
        labels: one int per point, 1 positive and 0 negative.
        box: ``(x0, y0, x1, y1)`` or None.
    """

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    def engine_kwargs(self) -> dict:
        """Keyword arguments for ``Tracker.set_prompts``: points (N, 2) float32, labels (N,)
        int32, box (4,) float32, each None when absent."""
        return {
            "points": np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
            if self.points
            else None,
            "labels": np.asarray(self.labels, dtype=np.int32) if self.points else None,
            "box": None if self.box is None else np.asarray(self.box, dtype=np.float32),
        }


def _transform_kwargs(image: Image) -> dict:
    return {"scale": image.scale, "translate": image.translate, "affine": image.affine}


def make_points_layer(image: Image, name: str, obj_id: int) -> Points:
    """An empty Points layer aligned with ``image`` for positive/negative clicks of objects."""
    features = pd.DataFrame(
        {"object": pd.Series([], dtype=np.int64), "label": pd.Series([], dtype=np.int64)}
    )
    return Points(
        np.empty((0, image.ndim)),
        name=name,
        features=features,
        feature_defaults={"object": obj_id, "label": 1},
        face_color=POSITIVE_COLOUR,
        border_color="white",
        border_width=0.1,
        size=max(3.0, min(image.data.shape[-2:]) / 40.0) if not image.rgb else 5.0,
        **_transform_kwargs(image),
    )


def make_shapes_layer(image: Image, name: str, obj_id: int) -> Shapes:
    """An empty Shapes layer aligned with ``image`` for box prompts (rectangles)."""
    features = pd.DataFrame({"object": pd.Series([], dtype=np.int64)})
    return Shapes(
        ndim=image.ndim,
        name=name,
        features=features,
        feature_defaults={"object": obj_id},
        face_color=[0, 0, 0, 0],
        edge_width=1.0,
        **_transform_kwargs(image),
    )


def _to_image_data(layer, image: Image, coords: np.ndarray) -> np.ndarray:
    """(N, ndim) data coordinates of ``layer`` -> (N, image.ndim) data coordinates of ``image``."""
    return np.array(
        [image.world_to_data(layer.data_to_world(row)) for row in np.atleast_2d(coords)],
        dtype=float,
    ).reshape(-1, image.ndim)


def _inside(row: float, col: float, height: int, width: int) -> bool:
    # A pixel's centre sits at an integer coordinate; its area spans +-0.5 around it.
    return -0.5 <= row < height - 0.5 and -0.5 <= col < width - 0.5


def collect_prompts(
    points: Points | None,
    shapes: Shapes | None,
    image: Image,
    geometry: SliceGeometry,
) -> tuple[dict[tuple[int, int], FramePrompt], list[str]]:
    """Group the prompt layers' contents by (object id, frame).

    Args:
        points: clicks with features ``object`` and ``label``, or None.
        shapes: rectangles with feature ``object``, or None.
        image: the image layer the prompts refer to.
        geometry: which frames of ``image`` the engine sees.

    Returns:
        ``({(obj_id, frame): FramePrompt}, problems)``. Prompts on another held position (e.g.
        another z of a 4-D stack) are skipped silently; prompts outside the image, non-rectangle
        shapes and extra boxes are skipped and described in ``problems`` (messages meant for the
        user, saying what to do). The layers are never modified.
    """
    height, width = geometry.frame_shape
    row_axis, col_axis = geometry.frame_axes
    problems: list[str] = []
    clicks: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    boxes: dict[tuple[int, int], tuple[float, float, float, float]] = {}

    if points is not None and len(points.data):
        coords = _to_image_data(points, image, points.data)
        objects = np.asarray(points.features["object"], dtype=np.int64)
        labels = np.asarray(points.features["label"], dtype=np.int64)
        for position, obj_id, label in zip(coords, objects, labels, strict=True):
            frame = geometry.frame_of(position)
            if frame is None:
                continue
            row, col = float(position[row_axis]), float(position[col_axis])
            if not (0 <= frame < geometry.num_frames and _inside(row, col, height, width)):
                problems.append(
                    f"A point of object {obj_id} at row {row:.1f}, column {col:.1f} (frame "
                    f"{frame}) lies outside image {image.name!r} ({height} x {width} pixels, "
                    f"{geometry.num_frames} frame(s)); it is ignored. Move it onto the image "
                    "or delete it."
                )
                continue
            clicks.setdefault((int(obj_id), frame), []).append((col, row, 1 if label else 0))

    if shapes is not None and shapes.nshapes:
        objects = np.asarray(shapes.features["object"], dtype=np.int64)
        for index, (vertices, kind) in enumerate(zip(shapes.data, shapes.shape_type, strict=True)):
            obj_id = int(objects[index])
            if kind != "rectangle":
                problems.append(
                    f"Shape {index} is a {kind}; only rectangles are used as boxes. Draw a "
                    "rectangle (key R) or delete the shape."
                )
                continue
            corners = _to_image_data(shapes, image, vertices)
            frames = {geometry.frame_of(corner) for corner in corners}
            if frames == {None}:
                continue
            frame = frames.pop() if len(frames) == 1 else None
            rows, cols = corners[:, row_axis], corners[:, col_axis]
            x0, x1 = max(cols.min(), -0.5), min(cols.max(), width - 0.5)
            y0, y1 = max(rows.min(), -0.5), min(rows.max(), height - 0.5)
            if frame is None or not 0 <= frame < geometry.num_frames or x0 >= x1 or y0 >= y1:
                problems.append(
                    f"The box of object {obj_id} (shape {index}) lies outside image "
                    f"{image.name!r} ({height} x {width} pixels, {geometry.num_frames} "
                    "frame(s)); it is ignored. Move it onto the image or delete it."
                )
                continue
            key = (obj_id, frame)
            if key in boxes:
                problems.append(
                    f"Object {obj_id} has more than one box on frame {frame}; SAM takes one, so "
                    f"the last one drawn (shape {index}) is used. Delete the others."
                )
            boxes[key] = (float(x0), float(y0), float(x1), float(y1))

    groups: dict[tuple[int, int], FramePrompt] = {}
    for key in sorted(set(clicks) | set(boxes)):
        entries = clicks.get(key, [])
        groups[key] = FramePrompt(
            points=tuple((x, y) for x, y, _ in entries),
            labels=tuple(label for _, _, label in entries),
            box=boxes.get(key),
        )
    return groups, problems
