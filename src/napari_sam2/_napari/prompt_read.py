"""A pure read of the prompt layers: napari Points and Shapes -> engine prompts.

Nothing here changes a layer. The features of the prompt layers are:

- Points: ``object`` (int id), ``label`` (1 positive, 0 negative), ``plane`` (the view the
  click was made in, see :func:`plane_key`).
- Shapes: ``object`` and ``plane``.

Only prompts made in the plane being segmented are read; prompts of another orientation are
kept in the layers and counted, never re-run in the wrong plane. Coordinates go layer data ->
world (``data_to_world`` of the prompt layer) -> image data (``world_to_data`` of the image
layer), so scale and translate of either layer are honoured, then to the pyramid level being
read (a multiscale image, see :mod:`.multiscale`), then to SAM's (x, y) through the engine's one
conversion and its one inside-the-frame rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from napari.layers import Image, Points, Shapes

from ..engine.session import Prompt, inside_frame, rowcol_to_xy
from .geometry import SliceGeometry

__all__ = ["PromptRead", "PromptSource", "plane_key", "read_prompts", "source_of"]


def plane_key(geometry: SliceGeometry) -> str:
    """The orientation a prompt belongs to: its frame's (row, column) layer axes, e.g. "1,2"."""
    return f"{geometry.frame_axes[0]},{geometry.frame_axes[1]}"


@dataclass
class PromptRead:
    """What the layers hold for one plane.

    Attributes:
        prompts: ``{(obj_id, frame): Prompt}`` in SAM's coordinates.
        problems: messages for the user (outside the image, not a rectangle, two boxes).
        other_plane: how many points and boxes belong to another orientation.
    """

    prompts: dict[tuple[int, int], Prompt] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    other_plane: int = 0


@dataclass
class PromptSource:
    """A prompt layer's content in the image's data coordinates.

    Attributes:
        coords: points: (N, ndim) float; shapes: a list of (V, ndim) vertex arrays.
        features: the layer's features (``object``, ``label`` for points, ``plane``).
        kinds: shapes only: each shape's type ("rectangle", ...).
    """

    coords: np.ndarray | list[np.ndarray]
    features: object
    kinds: list[str] | None = None

    def __len__(self) -> int:
        return len(self.coords)


def _to_image_data(layer, image: Image, coords: np.ndarray) -> np.ndarray:
    """(N, ndim) data coordinates of ``layer`` -> (N, image.ndim) data coordinates of ``image``."""
    return np.array(
        [image.world_to_data(layer.data_to_world(row)) for row in np.atleast_2d(coords)],
        dtype=float,
    ).reshape(-1, image.ndim)


def source_of(layer: Points | Shapes | None, image: Image) -> PromptSource | None:
    """The content of a prompt layer, in ``image``'s data coordinates (None: no layer)."""
    if layer is None:
        return None
    features = layer.features.copy()
    if isinstance(layer, Points):
        coords = (
            _to_image_data(layer, image, layer.data)
            if len(layer.data)
            else np.empty((0, image.ndim))
        )
        return PromptSource(coords, features)
    vertices = [_to_image_data(layer, image, v) for v in layer.data]
    return PromptSource(vertices, features, list(layer.shape_type))


def _planes(source: PromptSource) -> list[str]:
    if "plane" not in source.features:
        return [""] * len(source)
    return [("" if value is None else str(value)) for value in source.features["plane"]]


def read_prompts(
    points: PromptSource | None,
    shapes: PromptSource | None,
    image: Image,
    geometry: SliceGeometry,
    painted: Mapping[tuple[int, int], np.ndarray] | None = None,
) -> PromptRead:
    """Group the prompts of ``geometry``'s plane by (object id, frame).

    Args:
        points / shapes: the prompt layers' contents (:func:`source_of`), or None, in the
            image's level-0 data coordinates; they are mapped to ``geometry``'s level here.
        image: the image layer the prompts refer to.
        geometry: which frames of ``image`` the engine sees.
        painted: ``{(obj_id, frame): bool (H, W)}`` masks the user painted; each becomes a mask
            prompt, which stands alone: clicks and boxes of that object on that frame are then
            not used (and reported).
    """
    read = PromptRead()
    here = plane_key(geometry)
    height, width = geometry.frame_shape
    row_axis, col_axis = geometry.frame_axes
    clicks: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    boxes: dict[tuple[int, int], np.ndarray] = {}

    if points is not None and len(points):
        coords = geometry.to_level(np.asarray(points.coords, dtype=float).reshape(-1, image.ndim))
        objects = np.asarray(points.features["object"], dtype=np.int64)
        labels = np.asarray(points.features["label"], dtype=np.int64)
        planes = _planes(points)
        for position, obj_id, label, plane in zip(coords, objects, labels, planes, strict=True):
            if plane and plane != here:
                read.other_plane += 1
                continue
            frame = geometry.frame_of(position)
            if frame is None:
                continue
            xy = rowcol_to_xy([[position[row_axis], position[col_axis]]])
            if not (0 <= frame < geometry.num_frames and inside_frame(xy, (height, width))[0]):
                read.problems.append(
                    f"A point of object {obj_id} at row {position[row_axis]:.1f}, column "
                    f"{position[col_axis]:.1f} (slice {frame}) lies outside image "
                    f"{image.name!r} ({height} x {width} pixels, {geometry.num_frames} "
                    "slice(s)); it is ignored. Move it onto the image or delete it."
                )
                continue
            clicks.setdefault((int(obj_id), frame), []).append((xy[0, 0], xy[0, 1], int(label)))

    if shapes is not None and len(shapes):
        objects = np.asarray(shapes.features["object"], dtype=np.int64)
        planes = _planes(shapes)
        for index, (corners, kind) in enumerate(zip(shapes.coords, shapes.kinds, strict=True)):
            obj_id = int(objects[index])
            if planes[index] and planes[index] != here:
                read.other_plane += 1
                continue
            if kind != "rectangle":
                read.problems.append(
                    f"Shape {index} is a {kind}; only rectangles are used as boxes. Draw a "
                    "rectangle (key R) or delete the shape."
                )
                continue
            corners = geometry.to_level(np.asarray(corners, dtype=float))
            frames = {geometry.frame_of(corner) for corner in corners}
            if frames == {None}:
                continue
            frame = frames.pop() if len(frames) == 1 else None
            rows, cols = corners[:, row_axis], corners[:, col_axis]
            x0, x1 = max(cols.min(), -0.5), min(cols.max(), width - 0.5)
            y0, y1 = max(rows.min(), -0.5), min(rows.max(), height - 0.5)
            if frame is None or not 0 <= frame < geometry.num_frames or x0 >= x1 or y0 >= y1:
                read.problems.append(
                    f"The box of object {obj_id} (shape {index}) lies outside image "
                    f"{image.name!r} ({height} x {width} pixels, {geometry.num_frames} "
                    "slice(s)); it is ignored. Move it onto the image or delete it."
                )
                continue
            key = (obj_id, frame)
            if key in boxes:
                read.problems.append(
                    f"Object {obj_id} has more than one box on slice {frame}; SAM takes one, so "
                    f"the last one drawn (shape {index}) is used. Delete the others."
                )
            boxes[key] = np.array([x0, y0, x1, y1], dtype=np.float64)

    painted = dict(painted or {})
    for key in sorted(set(clicks) | set(boxes) | set(painted)):
        obj_id, frame = key
        if key in painted:
            if key in clicks or key in boxes:
                read.problems.append(
                    f"Object {obj_id} was painted by hand on slice {frame}, so its clicks and "
                    "box there are not used. 'Clear this slice' removes the painted mask."
                )
            read.prompts[key] = Prompt(frame, obj_id, mask=painted[key])
            continue
        entries = clicks.get(key, [])
        read.prompts[key] = Prompt(
            frame,
            obj_id,
            points=[(x, y) for x, y, _ in entries],
            labels=[label for _, _, label in entries],
            box=boxes.get(key),
        )
    return read
