"""Lazy frame source: read one frame of a stack, normalise it, and prepare it for SAM 2.

A :class:`FrameSource` wraps any array-like stack (numpy, dask, zarr, a tifffile memmap, a lazy
reader) and never loads the whole stack: every read indexes a single frame and converts only that
frame to numpy. Intensities are mapped to [0, 1] with one range for the whole stack, so brightness
does not flicker from frame to frame, and 16-bit or float data keep their full dynamic range.

Layouts (after removing the tracked ``axis``, a frame is):

- ``(H, W)``: grey, repeated into three channels for SAM.
- ``(H, W, 3)`` or ``(H, W, 4)``: RGB or RGBA (alpha is dropped). Without ``rgb``, this is guessed
  as napari does: a last axis of length 3 or 4 after two axes longer than 30 pixels.
- multichannel, when ``channel_axis`` is given: each channel is normalised with its own range and
  the channels are reduced to three (see :func:`reduce_channels`).

A 2-D array, or a 3-D array whose last axis is RGB(A), is a single frame and ``axis`` is ignored.
"""

from __future__ import annotations

import math
import numbers
import operator
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# napari's guess: a last axis of 3 or 4 is colour only when the two axes before it are longer.
RGB_GUESS_MIN_SIDE = 30
# Pixels per sampled frame used for the percentiles; larger frames are read with a stride.
SAMPLE_PIXELS_PER_FRAME = 1 << 16

_SUPPORTED_KINDS = "buif"  # bool, unsigned, signed, float


class FrameIndexError(IndexError, ValueError):
    """A frame index outside ``[0, num_frames)``; both an IndexError and a ValueError."""


class FrameSource:
    """Read frames of a stack one at a time as normalised float32 RGB.

    Args:
        frames: array-like with ``shape``, ``dtype``, ``ndim`` and integer/slice indexing. It is
            never converted as a whole; only single frames are materialised.
        axis: the axis of ``frames`` that is tracked (time or z). Negative values count from the
            end. Ignored for a single frame (a 2-D array, or a 3-D RGB(A) array).
        channel_axis: axis of the original ``frames`` holding channels (multichannel data), or
            None. Must differ from ``axis``.
        intensity_range: ``(lo, hi)`` mapped to 0 and 1 (values outside are clipped). For
            multichannel data it may also be one ``(lo, hi)`` pair per channel. None computes one
            range for the whole stack from the 0.5 and 99.5 percentiles of up to ``sample_frames``
            evenly spaced frames (per channel for multichannel data). RGB(A) uint8 data default to
            ``(0, 255)`` so natural images are not stretched. If the percentiles coincide (e.g. a
            mostly empty image), the sampled minimum and maximum are used instead.
        sample_frames: how many evenly spaced frames are read to estimate the intensity range.
        rgb: whether the last axis holds RGB(A) colour. None guesses like napari: a last axis of
            length 3 or 4 (and not the tracked axis) after two axes longer than 30 pixels, on an
            array with at least three dimensions. Pass napari's ``layer.rgb`` to remove the guess.

    A degenerate range (``hi == lo``, e.g. a constant stack) maps values above ``lo`` to 1 and all
    others to 0, so a constant stack becomes all zeros without any division by zero.

    The mapping is computed in float64 (halved operands, so even ``-1e308..1e308`` cannot
    overflow), and for 64-bit integers in exact integer arithmetic, so every frame maps into
    [0, 1], finite, and keeps its contrast: float32 data near ``+-3e38`` and int64 data near
    ``2**62`` included.

    No-data values: NaN, +-inf and +-FLT_MAX (the float32 maximum, a common "no data" fill, and
    the float64 maximum likewise) are left out of the estimated range. When mapping, NaN, -inf
    and +-FLT_MAX become ``lo`` (0) and +inf becomes ``hi`` (1). A frame that holds no finite
    value at all raises ValueError naming the frame.
    """

    def __init__(
        self,
        frames: Any,
        *,
        axis: int = 0,
        channel_axis: int | None = None,
        intensity_range: Sequence[float] | Sequence[Sequence[float]] | None = None,
        sample_frames: int = 16,
        rgb: bool | None = None,
    ) -> None:
        for attribute in ("shape", "dtype", "__getitem__"):
            if not hasattr(frames, attribute):
                raise TypeError(
                    f"frames must be array-like (numpy, dask, zarr, ...) with shape, dtype and "
                    f"indexing; got {type(frames).__name__} without {attribute!r}"
                )
        dtype = np.dtype(frames.dtype)
        if dtype.kind not in _SUPPORTED_KINDS:
            raise TypeError(
                f"frames have dtype {dtype}; expected bool, integer or float data "
                "(convert complex or object data to real numbers first)"
            )
        if isinstance(sample_frames, bool) or not isinstance(sample_frames, numbers.Integral):
            raise ValueError(f"sample_frames must be an integer, got {sample_frames!r}")
        if int(sample_frames) < 1:
            raise ValueError(f"sample_frames must be at least 1, got {sample_frames}")

        self._frames = frames
        self._dtype = dtype
        self._shape = tuple(int(n) for n in frames.shape)
        self._sample_frames = int(sample_frames)
        self._resolve_layout(axis, channel_axis, rgb)
        self._lock = threading.Lock()
        self._range: tuple[np.ndarray, np.ndarray] | None = None
        if intensity_range is not None:
            self._range = self._validated_range(intensity_range)
        elif self._colour == "rgb" and dtype == np.uint8:
            self._range = (np.array([0.0]), np.array([255.0]))

    # ------------------------------------------------------------------ layout

    def _resolve_layout(self, axis: int, channel_axis: int | None, rgb: bool | None) -> None:
        """Decide the tracked axis, the colour axis and the frame shape from the array's shape."""
        shape, ndim = self._shape, len(self._shape)
        if ndim < 2:
            raise ValueError(f"frames have shape {shape}; expected at least 2-D (H, W) data")
        tracked = _normalise_axis(axis, ndim, "axis")
        colour_axis: int | None = None
        if channel_axis is not None:
            colour_axis = _normalise_axis(channel_axis, ndim, "channel_axis")
            colour = "channels"
        else:
            if rgb is None:
                rgb = (
                    ndim >= 3
                    and shape[-1] in (3, 4)
                    and all(n > RGB_GUESS_MIN_SIDE for n in shape[-3:-1])
                    and tracked != ndim - 1
                )
            if rgb:
                if shape[-1] not in (3, 4):
                    raise ValueError(
                        f"rgb=True needs a last axis of length 3 or 4; frames have shape {shape}"
                    )
                colour_axis = ndim - 1
            colour = "rgb" if rgb else "grey"

        frame_rank = 2 if colour_axis is None else 3
        if ndim == frame_rank:
            tracked = None  # a single frame: the whole array
        elif ndim != frame_rank + 1:
            raise ValueError(self._layout_message(frame_rank, colour_axis))
        if tracked is not None and tracked == colour_axis:
            raise ValueError(
                f"axis ({axis}) and channel_axis ({channel_axis}) name the same axis of frames "
                f"with shape {shape}; the tracked axis must differ from the channel axis"
            )

        spatial = [
            d for d in range(ndim) if d != tracked and d != colour_axis
        ]  # remaining axes, in order, are (H, W)
        height, width = (shape[d] for d in spatial)
        if height < 1 or width < 1 or (tracked is not None and shape[tracked] < 1):
            raise ValueError(f"frames have shape {shape}; frames must not be empty")
        self._tracked = tracked
        self._colour = colour
        self._colour_axis = colour_axis
        self._num_channels = 1 if colour_axis is None else shape[colour_axis]
        self._frame_shape = (height, width)
        self._raw_frame_shape = tuple(shape[d] for d in range(ndim) if d != tracked)
        if colour_axis is None:
            self._channel_position = None
        else:
            below = tracked is not None and tracked < colour_axis
            self._channel_position = colour_axis - 1 if below else colour_axis

    def _layout_message(self, frame_rank: int, colour_axis: int | None) -> str:
        shape = self._shape
        if colour_axis is None:
            return (
                f"frames have shape {shape} ({len(shape)}-D): without channel_axis a frame must "
                "be (H, W) grey or (H, W, 3|4) RGB(A), so expected a 2-D image, a 3-D stack "
                "(T, H, W) or a 4-D RGB stack (T, H, W, 3|4) (pass rgb=True when H or W is 30 or "
                f"less); removing the tracked axis would leave a {len(shape) - 1}-D frame. Pick "
                "channel_axis or slice the array"
            )
        return (
            f"frames have shape {shape} ({len(shape)}-D) with channel_axis: expected a 3-D "
            "multichannel image or a 4-D stack such as (T, C, H, W); slice the extra axes first"
        )

    def _validated_range(
        self, intensity_range: Sequence[float] | Sequence[Sequence[float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            values = np.asarray(intensity_range, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"intensity_range must be numbers (lo, hi); got {intensity_range!r}"
            ) from None
        if values.shape == (2,):
            values = values[None, :]
        channels = self._num_channels if self._colour == "channels" else 1
        if values.ndim != 2 or values.shape[1] != 2 or values.shape[0] not in (1, channels):
            raise ValueError(
                f"intensity_range must be (lo, hi) or, with channel_axis, one (lo, hi) per "
                f"channel ({channels}); got {intensity_range!r}"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"intensity_range must be finite numbers; got {intensity_range!r}")
        lo, hi = values[:, 0], values[:, 1]
        if (lo > hi).any():
            raise ValueError(
                f"intensity_range has lo > hi ({intensity_range!r}); give (lo, hi) with lo <= hi"
            )
        if _exact_integers(self._dtype):
            # whole-number bounds stay exact Python ints (float64 merges 2**62 and 2**62 + 4)
            exact = np.array(
                [_exact_bound(v) for v in np.asarray(intensity_range, dtype=object).ravel()],
                dtype=object,
            ).reshape(values.shape)
            if (exact[:, 0] > exact[:, 1]).any():
                raise ValueError(f"intensity_range has lo > hi ({intensity_range!r})")
            return exact[:, 0], exact[:, 1]
        return lo, hi

    # ------------------------------------------------------------------ properties

    @property
    def num_frames(self) -> int:
        """Number of frames along the tracked axis (1 for a single image)."""
        return 1 if self._tracked is None else self._shape[self._tracked]

    def __len__(self) -> int:
        return self.num_frames

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one frame, in pixels of the original data."""
        return self._frame_shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the raw frames."""
        return self._dtype

    @property
    def layout(self) -> str:
        """How a frame's values are read: "grey", "rgb" or "channels"."""
        return self._colour

    @property
    def frame_nbytes(self) -> int:
        """Bytes of one raw frame as stored (all channels), for memory estimates."""
        return math.prod(self._raw_frame_shape) * self._dtype.itemsize

    @property
    def intensity_range(self) -> tuple[float, float] | tuple[tuple[float, float], ...]:
        """The ``(lo, hi)`` mapped to [0, 1], computed on first use when not given.

        Multichannel sources with per-channel ranges give one ``(lo, hi)`` per channel.
        """
        lo, hi = self._ensure_range()
        if lo.shape[0] == 1:
            return _number(lo[0]), _number(hi[0])
        return tuple((_number(a), _number(b)) for a, b in zip(lo, hi, strict=True))

    # ------------------------------------------------------------------ reading

    def read_raw(self, index: int) -> np.ndarray:
        """One frame as stored, with channels last: (H, W) or (H, W, C), the source's dtype."""
        index = self._checked_index(index)
        if self._tracked is None:
            key: tuple = (slice(None),) * len(self._shape)
        else:
            key = (slice(None),) * self._tracked + (index,)
        frame = np.asarray(self._frames[key])
        if frame.shape != self._raw_frame_shape:
            raise ValueError(
                f"reading frame {index} gave shape {frame.shape}, expected "
                f"{self._raw_frame_shape}; the array's reader does not index as numpy does"
            )
        if self._channel_position is not None:
            frame = np.moveaxis(frame, self._channel_position, -1)
        return frame

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as float32 (H, W, 3) RGB in [0, 1].

        Raises:
            FrameIndexError: ``index`` is outside ``[0, num_frames)``.
            ValueError: the frame holds no finite value.
        """
        scaled = self._normalised(index)
        if scaled.shape[-1] == 1:
            scaled = np.repeat(scaled, 3, axis=-1)
        return scaled

    def _normalised(self, index: int) -> np.ndarray:
        """Frame ``index`` in [0, 1] as float32 (H, W, 1) for grey data, else (H, W, 3)."""
        raw = self.read_raw(index)
        values = raw if _exact_integers(raw.dtype) else _as_float(raw)
        if values.dtype.kind == "f" and not np.isfinite(values).any():
            raise ValueError(
                f"frame {index} holds no finite values (all NaN or infinite); it cannot be "
                "segmented: fix or skip this frame"
            )
        lo, hi = self._ensure_range()
        if self._colour == "rgb":
            values = values[..., :3]  # drop alpha
        elif self._colour == "grey":
            values = values[..., None]
        scaled = _normalise(values, lo, hi)
        if self._colour == "channels":
            scaled = reduce_channels(scaled)
        return np.ascontiguousarray(scaled, dtype=np.float32)

    def model_input(
        self, index: int, image_size: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Frame ``index`` prepared for SAM 2: float32 (1, 3, S, S) with S = ``image_size``.

        The frame is resized to the square S x S (the aspect ratio is squashed, as SAM 2 does) with
        bilinear, antialiased interpolation on the float [0, 1] image
        (``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``, the same filter
        as Meta's image predictor; their video loader resizes 8-bit images with PIL instead, so
        values differ slightly there), then normalised with the ImageNet mean and std.
        """
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        size = int(image_size)
        # Grey frames stay one channel until after the resize (2.5x faster), then expand.
        image = torch.from_numpy(self._normalised(index)).permute(2, 0, 1)[None]
        image = image.to(device=device) if device is not None else image
        if tuple(image.shape[-2:]) != (size, size):
            image = F.interpolate(
                image, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        image = image.expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=image.device)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=image.device)
        return ((image - mean[:, None, None]) / std[:, None, None]).contiguous()

    # ------------------------------------------------------------------ helpers

    def _checked_index(self, index: int) -> int:
        if isinstance(index, bool):
            raise TypeError(f"frame index must be an integer, got {index!r}")
        try:
            position = operator.index(index)
        except TypeError:
            raise TypeError(f"frame index must be an integer, got {index!r}") from None
        if not 0 <= position < self.num_frames:
            raise FrameIndexError(
                f"frame index {index!r} is out of range; valid frames are 0 to "
                f"{self.num_frames - 1}"
            )
        return position

    def _ensure_range(self) -> tuple[np.ndarray, np.ndarray]:
        if self._range is None:
            with self._lock:
                if self._range is None:
                    self._range = self._estimate_range()
        return self._range

    def sample_indices(self) -> list[int]:
        """The evenly spaced frames read to estimate the intensity range."""
        count = min(self._sample_frames, self.num_frames)
        return sorted({int(round(x)) for x in np.linspace(0, self.num_frames - 1, count)})

    def _estimate_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Robust (lo, hi) per channel group from a pixel-strided sample of a few frames."""
        if self._dtype.kind == "b":
            return np.array([0.0]), np.array([1.0])
        height, width = self._frame_shape
        stride = max(1, math.ceil(math.sqrt(height * width / SAMPLE_PIXELS_PER_FRAME)))
        per_channel = self._colour == "channels"
        groups = self._num_channels if per_channel else 1
        samples: list[list[np.ndarray]] = [[] for _ in range(groups)]
        for index in self.sample_indices():
            frame = self.read_raw(index)[::stride, ::stride]
            if not _exact_integers(frame.dtype):
                frame = _as_float(frame)
            if self._colour == "rgb":
                frame = frame[..., :3]
            if per_channel:
                for channel in range(groups):
                    samples[channel].append(frame[..., channel].ravel())
            else:
                samples[0].append(frame.ravel())
        lows, highs = [], []
        for group in samples:
            values = np.concatenate(group)
            if values.dtype.kind == "f":
                values = values[~_no_data(values)]
            if values.size == 0:
                raise ValueError(
                    "the frames sampled to estimate the intensity range contain no finite values "
                    "other than no-data fills (NaN, inf, FLT_MAX); pass intensity_range=(lo, hi) "
                    "explicitly"
                )
            lo, hi = _robust_range(values)
            lows.append(lo)
            highs.append(hi)
        # 64-bit integer ranges stay Python ints: float64 would merge 2**62 and 2**62 + 4.
        kind = object if _exact_integers(self._dtype) else np.float64
        return np.array(lows, dtype=kind), np.array(highs, dtype=kind)


def reduce_channels(scaled: np.ndarray) -> np.ndarray:
    """Reduce normalised channels (H, W, C) to the three SAM expects, (H, W, 3).

    - 1 channel: repeated, as grey.
    - 2 channels: ``(c0, c1, mean(c0, c1))``, so both channels also show in the third one
      rather than leaving it black.
    - 3 channels: used as RGB.
    - more than 3: the first three (slice or reorder the channels to choose others).
    """
    count = scaled.shape[-1]
    if count == 1:
        return np.repeat(scaled, 3, axis=-1)
    if count == 2:
        return np.concatenate([scaled, scaled.mean(axis=-1, keepdims=True)], axis=-1)
    return scaled[..., :3]


_NO_DATA = (float(np.finfo(np.float32).max), float(np.finfo(np.float64).max))


def _no_data(values: np.ndarray) -> np.ndarray:
    """True where a float value is NaN, +-inf or +-FLT_MAX / +-DBL_MAX (no-data fills)."""
    magnitude = np.abs(values)
    return ~np.isfinite(values) | np.isin(magnitude, _NO_DATA)


def _exact_bound(value) -> int | float:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    number = float(value)
    return int(number) if number.is_integer() else number


def _number(value) -> float | int:
    """A range bound for users: a Python int stays exact (64-bit data), else a float."""
    return value if isinstance(value, int) else float(value)


def _exact_integers(dtype: np.dtype) -> bool:
    """64-bit integers: float64 would lose offsets near 2**62, so they are mapped exactly."""
    return dtype.kind in "iu" and dtype.itemsize >= 8


def _robust_range(values: np.ndarray) -> tuple[float, float] | tuple[int, int]:
    """(lo, hi) at the robust percentiles of 1-D ``values``; the full span when they meet.
    Exact Python ints for 64-bit integers."""
    if _exact_integers(values.dtype):
        ordered = np.sort(values)
        last = ordered.size - 1
        lo = ordered[int(math.floor(LOW_PERCENTILE / 100 * last))]
        hi = ordered[int(math.ceil(HIGH_PERCENTILE / 100 * last))]
        if hi <= lo:
            lo, hi = ordered[0], ordered[-1]
        return int(lo), int(hi)
    lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:  # sparse data (mostly one value): fall back to the full span
        lo, hi = values.min(), values.max()
    return float(lo), float(hi)


def _normalise(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 1 per channel (last axis), clipped, in float64.

    No-data values become ``lo`` (+inf becomes ``hi``). 64-bit integers are mapped in exact
    integer arithmetic; floats through halved operands, so no step can overflow.
    """
    if _exact_integers(values.dtype):
        return _normalise_exact(values, lo, hi)
    values = values.astype(np.float64, copy=False)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    positive_inf = np.isposinf(values)
    values = np.where(_no_data(values), lo, values)
    values = np.where(positive_inf, hi, values)
    span = hi / 2 - lo / 2
    degenerate = span <= 0
    safe_span = np.where(degenerate, 1.0, span)
    scaled = (values / 2 - lo / 2) / safe_span
    if degenerate.any():
        step = (values > lo).astype(np.float64)
        scaled = np.where(degenerate, step, scaled)
    return np.clip(scaled, 0.0, 1.0)


def _normalise_exact(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """:func:`_normalise` for int64/uint64: offsets from ``lo`` are taken in integers."""
    info = np.iinfo(values.dtype)
    channels = values.shape[-1]
    lo = np.broadcast_to(np.asarray(lo, dtype=object), (channels,))
    hi = np.broadcast_to(np.asarray(hi, dtype=object), (channels,))
    out = np.empty(values.shape, dtype=np.float64)
    for channel in range(channels):
        # The range as integers inside the dtype (a float range is widened to whole numbers).
        low = int(min(max(math.floor(lo[channel]), info.min), info.max))
        high = int(min(max(math.ceil(hi[channel]), info.min), info.max))
        column = values[..., channel]
        if high <= low:
            out[..., channel] = column > low
            continue
        clipped = np.clip(column, values.dtype.type(low), values.dtype.type(high))
        # uint64 wrap-around gives the exact offset in [0, high - low] even across the sign.
        offset = clipped.astype(np.uint64) - np.uint64(low % 2**64)
        out[..., channel] = offset.astype(np.float64) / float(high - low)
    return np.clip(out, 0.0, 1.0)


def _as_float(frame: np.ndarray) -> np.ndarray:
    """float64: exact for every integer up to 32 bits and every float32 value, and wide enough
    that mapping extreme values cannot overflow."""
    return frame.astype(np.float64, copy=False)


def _normalise_axis(axis: int, ndim: int, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {axis!r}")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"{name}={axis} is out of range for {ndim}-D frames")
    return int(axis) % ndim
