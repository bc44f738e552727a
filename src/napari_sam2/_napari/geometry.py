"""Which slice of an image layer the user is on, and how it maps to the engine's frames.

napari shows two *displayed* axes of a layer; the others are sliced at the viewer's current
position. Here one non-displayed axis is *tracked* (z or t: the engine's frame axis), at most one
more may be a *channel* axis, and every other non-displayed axis is *held* at its current index.
A frame is therefore the layer's two displayed axes, in ascending data order, at the held indices.

All axis numbers here are *layer data* axes (0 .. layer.ndim - 1), not world axes; an RGB layer's
colour axis is not counted, as in napari (``layer.ndim`` excludes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .multiscale import downsample_factors, level_data, level_shapes, to_level, to_level0

__all__ = ["SliceGeometry", "current_data_position", "geometry_for", "layer_array"]


@dataclass(frozen=True)
class SliceGeometry:
    """How a layer's data maps to the engine's frames.

    Attributes:
        shape: the layer's data shape without an RGB(A) colour axis (length ``ndim``).
        frame_axes: (row axis, column axis): the two displayed layer axes, ascending.
        tracked_axis: layer axis tracked by the engine, or None for a single 2-D frame.
        channel_axis: layer axis holding channels handed to the engine, or None.
        held: ``((axis, index), ...)``: non-displayed axes fixed at an index, sorted by axis.
        rgb: whether the layer's data has a trailing RGB(A) axis (after ``shape``).
        level: the level of a multiscale layer the frames are read from (0 otherwise); every
            axis number, index and ``shape`` here is in that level's data coordinates.
        factors: per-axis downsample factors of ``level`` (level-0 coordinate = level
            coordinate x factor, napari's rule, see :mod:`.multiscale`), or None for level 0.
    """

    shape: tuple[int, ...]
    frame_axes: tuple[int, int]
    tracked_axis: int | None
    channel_axis: int | None = None
    held: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    rgb: bool = False
    level: int = 0
    factors: tuple[float, ...] | None = None

    def to_level(self, coords) -> np.ndarray:
        """Level-0 data coordinates of the layer (..., ndim) -> this geometry's level."""
        return to_level(coords, self.factors)

    def to_level0(self, coords) -> np.ndarray:
        """Coordinates (..., ndim) of this geometry's level -> the layer's level-0 data."""
        return to_level0(coords, self.factors)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_frames(self) -> int:
        return 1 if self.tracked_axis is None else self.shape[self.tracked_axis]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one frame in pixels."""
        return self.shape[self.frame_axes[0]], self.shape[self.frame_axes[1]]

    def frames_index(self) -> tuple:
        """Index into the layer's data giving the engine's frames: held axes fixed, others whole.

        A numpy, dask or zarr array indexed with it stays lazy (a view or a lazy slice).
        """
        held = dict(self.held)
        index = tuple(held.get(axis, slice(None)) for axis in range(self.ndim))
        return index + ((slice(None),) if self.rgb else ())

    def engine_axes(self) -> tuple[int, int | None]:
        """(frame axis, channel axis) of the array :meth:`frames_index` gives, for the engine.

        The frame axis is 0 when nothing is tracked (the engine then sees one 2-D frame).
        """
        kept = [axis for axis in range(self.ndim) if axis not in dict(self.held)]
        frame = 0 if self.tracked_axis is None else kept.index(self.tracked_axis)
        channel = None if self.channel_axis is None else kept.index(self.channel_axis)
        return frame, channel

    def frame_of(self, data_coords: Sequence[float]) -> int | None:
        """Frame index of a point given in layer data coordinates, or None when the point is
        on another held position (another z of a 4-D stack, say), so not on these frames."""
        for axis, index in self.held:
            if int(round(float(data_coords[axis]))) != index:
                return None
        if self.tracked_axis is None:
            return 0
        return int(round(float(data_coords[self.tracked_axis])))

    def labels_index(self, frame: int, rows: np.ndarray, cols: np.ndarray) -> tuple:
        """Fancy index into a labels array of ``shape`` for pixels ``(rows, cols)`` of ``frame``.

        With a channel axis the pixels are repeated on every channel, so the labels show on
        each channel's slice.

        Returns:
            a tuple of ``ndim`` int64 arrays of equal length, for ``Labels.data_setitem``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        repeats = 1 if self.channel_axis is None else self.shape[self.channel_axis]
        count = rows.size
        held = dict(self.held)
        index = []
        for axis in range(self.ndim):
            if axis == self.frame_axes[0]:
                index.append(np.tile(rows, repeats))
            elif axis == self.frame_axes[1]:
                index.append(np.tile(cols, repeats))
            elif axis == self.channel_axis:
                index.append(np.repeat(np.arange(repeats, dtype=np.int64), count))
            elif axis == self.tracked_axis:
                index.append(np.full(count * repeats, frame, dtype=np.int64))
            else:
                index.append(np.full(count * repeats, held[axis], dtype=np.int64))
        return tuple(index)

    def frame_slice(self, frame: int) -> tuple:
        """Basic index into a labels array of ``shape`` giving frame ``frame`` as (H, W)
        (the first channel when there is a channel axis)."""
        held = dict(self.held)
        index = []
        for axis in range(self.ndim):
            if axis in self.frame_axes:
                index.append(slice(None))
            elif axis == self.tracked_axis:
                index.append(frame)
            elif axis == self.channel_axis:
                index.append(0)
            else:
                index.append(held[axis])
        return tuple(index)

    def key(self) -> tuple:
        """Hashable identity: two geometries with equal keys read the same frames."""
        return (
            self.shape, self.frame_axes, self.tracked_axis, self.channel_axis, self.held,
            self.level,
        )  # fmt: skip


def layer_array(layer, level: int = 0):
    """The data array of an image layer at ``level`` (of a multiscale pyramid; 0 is the full
    resolution), not converted: a dask or zarr array stays lazy."""
    return level_data(layer, level)


def layer_shape(layer, level: int = 0) -> tuple[int, ...]:
    """Data shape of an image layer (at ``level`` of a pyramid) without its RGB(A) axis."""
    return level_shapes(layer)[level]


def current_data_position(viewer, layer) -> np.ndarray:
    """The viewer's current position in ``layer``'s data coordinates, shape (layer.ndim,).

    Goes through ``layer.world_to_data``, so scale, translate and other transforms are honoured.
    """
    return np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)


def non_displayed_axes(viewer, layer) -> list[int]:
    """Layer axes that are not displayed, ascending. Raises ValueError outside a 2-D view."""
    return [a for a in range(layer.ndim) if a not in _displayed_layer_axes(viewer, layer)]


def _displayed_layer_axes(viewer, layer) -> tuple[int, int]:
    displayed = tuple(viewer.dims.displayed)
    if len(displayed) != 2:
        raise ValueError(
            "SAM 2 works on 2-D slices, but the viewer shows 3-D. Switch to the 2-D view "
            "(the square button at the bottom left, or Ctrl+Y) and try again."
        )
    offset = viewer.dims.ndim - layer.ndim
    axes = tuple(sorted(axis - offset for axis in displayed))
    if axes[0] < 0:
        raise ValueError(
            f"The image layer {layer.name!r} has {layer.ndim} dimension(s) and the viewer "
            "displays an axis it does not have. Reset the axis order (View > Axes) and try again."
        )
    return axes  # type: ignore[return-value]


def geometry_for(
    viewer,
    layer,
    *,
    tracked_axis: int | None = None,
    channel_axis: int | None = None,
    level: int = 0,
) -> SliceGeometry:
    """The slice geometry of ``layer`` at the viewer's current position.

    Args:
        viewer: a napari viewer (its dims give the displayed axes and the current position).
        layer: an Image layer.
        tracked_axis: layer axis to track; None takes the first non-displayed axis that is not
            ``channel_axis`` (z or t), or no axis for a 2-D image.
        channel_axis: layer axis of channels handed to the engine, or None.
        level: the level of a multiscale layer to read (see :mod:`.multiscale`); 0 otherwise.

    Raises:
        ValueError: a 3-D view, or axes that are displayed, out of range or equal.
    """
    frame_axes = _displayed_layer_axes(viewer, layer)
    free = [a for a in range(layer.ndim) if a not in frame_axes]
    for name, axis in (("tracked axis", tracked_axis), ("channel axis", channel_axis)):
        if axis is not None and axis not in free:
            raise ValueError(
                f"The {name} {axis} is not one of the non-displayed axes {free} of layer "
                f"{layer.name!r}; choose another one."
            )
    if tracked_axis is not None and tracked_axis == channel_axis:
        raise ValueError("The tracked axis and the channel axis must differ; choose another one.")
    if tracked_axis is None:
        candidates = [a for a in free if a != channel_axis]
        tracked_axis = candidates[0] if candidates else None
    shapes = level_shapes(layer)
    factors = downsample_factors(shapes, level) if level else None
    position = to_level(current_data_position(viewer, layer), factors)
    shape = shapes[level]
    held = tuple(
        (axis, int(np.clip(round(float(position[axis])), 0, shape[axis] - 1)))
        for axis in free
        if axis not in (tracked_axis, channel_axis)
    )
    return SliceGeometry(
        shape=shape,
        frame_axes=frame_axes,
        tracked_axis=tracked_axis,
        channel_axis=channel_axis,
        held=held,
        rgb=bool(getattr(layer, "rgb", False)),
        level=level,
        factors=factors,
    )


def current_frame(viewer, layer, geometry: SliceGeometry) -> int:
    """Index along the tracked axis that the viewer shows now (0 for a 2-D image)."""
    if geometry.tracked_axis is None:
        return 0
    position = geometry.to_level(current_data_position(viewer, layer))
    value = int(round(float(position[geometry.tracked_axis])))
    return int(np.clip(value, 0, geometry.num_frames - 1))
