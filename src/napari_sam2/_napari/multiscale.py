"""napari multiscale (pyramid) image layers: the level the annotator reads, and how prompts and
labels map between levels. Pure functions on shapes, coordinates and arrays: no Qt, no viewer.

**Which level.** A pyramid (an OME-Zarr multiscale image, a list of numpy, dask or zarr arrays,
largest first) is read at one level. By default (:func:`default_level`) that is the *finest level
whose frame fits the model*: the first level whose two frame axes (the displayed ones) satisfy
``max(H, W) <= input size``; when no level is that small, the coarsest level. SAM 2 resizes every
frame to the input size anyway, so a finer level would only cost reading time and memory; a
coarser one would throw detail away. The dock offers every level besides "auto".

**Coordinates.** napari draws level ``k`` with its data coordinate ``c`` at level-0 data
coordinate ``c * f``, where ``f = shape_0 / shape_k`` per axis (the layer's
``downsample_factors``), without a half-pixel offset, and shows index ``round(c0 / f)`` of a
non-displayed axis (napari 0.9.2, ``napari/layers/_scalar_field/_slice.py``). This module uses
the same map both ways (:func:`to_level`, :func:`to_level0`), so what the engine gets is what
the user sees at that level. Prompts stay in the image's level-0 coordinates (the prompt layers
have the image's transform); they are mapped to the level when they are read.

**Labels.** The output Labels layer is created *at the chosen level*: its shape is that level's
shape and its scale is the image's scale times ``f`` (same translate and affine), which is the
transform napari draws level ``k`` with, so the labels line up with the image at every zoom. No
label array of the full level-0 size is ever allocated (1,000 slices of 4096 x 4096 would need
64 GiB of uint32). Masks therefore have the chosen level's resolution; choose level 0 in the
dock for full-resolution labels. A pyramid made by averaging blocks of ``f`` pixels has its
level-k pixel centres ``(f - 1) / 2`` level-0 pixels further on than napari draws them; napari
ignores that offset for the image, and so do the labels, which keeps the two aligned on screen.

**Laziness.** Nothing here converts a level to numpy. :func:`lazy_index` selects the frames the
engine reads without reading them: numpy and dask arrays are indexed (a view, a lazy graph);
other arrays (zarr, tifffile's zarr view, a custom reader) are wrapped in :class:`LazyIndex`,
because indexing a zarr array reads the selection at once.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

__all__ = [
    "LazyIndex",
    "default_level",
    "downsample_factors",
    "lazy_index",
    "level_data",
    "level_for_shape",
    "level_shapes",
    "level_text",
    "resolve_level",
    "to_level",
    "to_level0",
]


def level_shapes(layer) -> list[tuple[int, ...]]:
    """Data shape of each level of an image layer, finest first, without an RGB(A) axis.

    A layer that is not multiscale has one level: its data.
    """
    levels = layer.data if getattr(layer, "multiscale", False) else [layer.data]
    rgb = bool(getattr(layer, "rgb", False))
    shapes = []
    for array in levels:
        shape = tuple(int(n) for n in array.shape)
        shapes.append(shape[:-1] if rgb else shape)
    return shapes


def level_data(layer, level: int = 0):
    """The data array of ``level`` of an image layer (the data itself when not multiscale);
    never converted, so a dask or zarr level stays lazy."""
    if getattr(layer, "multiscale", False):
        return layer.data[level]
    if level != 0:
        raise ValueError(f"The layer {layer.name!r} is not multiscale; it has level 0 only.")
    return layer.data


def downsample_factors(shapes: Sequence[Sequence[int]], level: int) -> tuple[float, ...]:
    """Per-axis factors ``shape_0 / shape_level`` (napari's ``downsample_factors`` rule)."""
    finest = np.asarray(shapes[0], dtype=float)
    return tuple(float(v) for v in finest / np.asarray(shapes[level], dtype=float))


def default_level(
    shapes: Sequence[Sequence[int]], frame_axes: tuple[int, int], input_size: int
) -> int:
    """The finest level whose frame has ``max(H, W) <= input_size``, else the coarsest level.

    Args:
        shapes: the levels' shapes, finest first (:func:`level_shapes`).
        frame_axes: the two (displayed) axes a frame spans.
        input_size: the model's square input side in pixels (1024 for SAM 2, 512 for MedSAM2).
    """
    for level, shape in enumerate(shapes):
        if max(int(shape[axis]) for axis in frame_axes) <= int(input_size):
            return level
    return len(shapes) - 1


def resolve_level(
    requested: int | None,
    shapes: Sequence[Sequence[int]],
    frame_axes: tuple[int, int],
    input_size: int,
    name: str = "image",
) -> int:
    """``requested`` (None: :func:`default_level`), checked against the levels there are.

    Raises:
        ValueError: ``requested`` is not a level of the layer ``name``.
    """
    if requested is None:
        return default_level(shapes, frame_axes, input_size)
    level = operator.index(requested)
    if not 0 <= level < len(shapes):
        raise ValueError(
            f"The image {name!r} has {len(shapes)} level(s) (0 to {len(shapes) - 1}), so level "
            f"{level} cannot be read; choose another level or 'auto'."
        )
    return level


def level_for_shape(shapes: Sequence[Sequence[int]], shape: Sequence[int]) -> int | None:
    """The level whose shape is ``shape``, or None."""
    for level, candidate in enumerate(shapes):
        if tuple(int(n) for n in candidate) == tuple(int(n) for n in shape):
            return level
    return None


def level_text(shapes: Sequence[Sequence[int]], level: int, frame_axes: tuple[int, int]) -> str:
    """A dock label for ``level``, e.g. "level 1 (512 × 512)" (its frame's H × W)."""
    height, width = (int(shapes[level][axis]) for axis in frame_axes)
    return f"level {level} ({height} × {width})"


def to_level(coords, factors: Sequence[float] | None) -> np.ndarray:
    """Level-0 data coordinates (..., ndim) -> coordinates of the level with ``factors``."""
    coords = np.asarray(coords, dtype=float)
    return coords if factors is None else coords / np.asarray(factors, dtype=float)


def to_level0(coords, factors: Sequence[float] | None) -> np.ndarray:
    """Coordinates (..., ndim) of the level with ``factors`` -> level-0 data coordinates."""
    coords = np.asarray(coords, dtype=float)
    return coords if factors is None else coords * np.asarray(factors, dtype=float)


# ---------------------------------------------------------------------------------- laziness


def lazy_index(array, index: tuple):
    """``array[index]`` without reading anything: for numpy (a view) and dask (a lazy graph)
    it is that; a selection of whole axes is the array itself; any other array is wrapped in a
    :class:`LazyIndex` that applies ``index`` only when a frame is read."""
    if all(isinstance(part, slice) and part == slice(None) for part in index):
        return array
    if isinstance(array, np.ndarray) or type(array).__module__.startswith("dask."):
        return array[index]
    return LazyIndex(array, index)


class LazyIndex:
    """The array ``array[index]`` of an array whose indexing reads data (zarr), read only where
    it is indexed itself.

    Args:
        array: any array with ``shape``, ``dtype`` and numpy-style basic indexing.
        index: one int or ``slice(None)`` per leading axis of ``array`` (as
            :meth:`~.geometry.SliceGeometry.frames_index` gives); an int removes its axis.
    """

    def __init__(self, array, index: tuple) -> None:
        for part in index:
            if not (isinstance(part, int | np.integer) or part == slice(None)):
                raise TypeError(f"LazyIndex takes ints and whole slices only, not {part!r}")
        self._array = array
        self._index = tuple(index) + (slice(None),) * (len(array.shape) - len(index))
        self.shape = tuple(
            int(n) for n, part in zip(array.shape, self._index, strict=True)
            if isinstance(part, slice)
        )  # fmt: skip
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(part is Ellipsis or part is None for part in key):
            raise TypeError("LazyIndex takes ints and slices only (no Ellipsis, no newaxis)")
        parts = iter(key)
        full = []
        for part in self._index:
            full.append(next(parts, slice(None)) if isinstance(part, slice) else part)
        rest = list(parts)
        if rest:
            raise IndexError(f"too many indices for an array of shape {self.shape}")
        return self._array[tuple(full)]

    def __array__(self, dtype=None, copy=None):
        data = np.asarray(self[()])
        return data if dtype is None else data.astype(dtype)
