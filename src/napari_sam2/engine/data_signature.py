"""The data signature that keys a feature store: which data, read how, through which model.

Image features depend on the pixels, on how they are read (the tracked axis, the channel layout,
the intensity range that maps them to [0, 1]), on the network's weights and on its input size. A
:class:`~napari_sam2.engine.feature_store.FeatureStore` is used only for data whose signature
equals its own, so a store made for another image, another intensity range or another model is
never read by mistake.

The signature is a JSON-able dict:

- ``features_version``: how frames become model input (resize, normalisation); bumped when that
  changes, so old stores stop matching;
- ``shape``, ``dtype``: the whole array's shape and dtype;
- ``axis``, ``channel_axis``, ``layout``: the tracked axis (None for a single image), the axis
  holding colour or channels (None for grey), and how a frame is read ("grey", "rgb",
  "channels");
- ``num_frames``, ``frame_shape``: frames along ``axis`` and (H, W) of one frame;
- ``intensity_range``: the (lo, hi) the frame source maps to [0, 1] (one pair per channel for
  per-channel ranges);
- ``content_hash``: sha256 of a sample of the pixels (see :func:`content_hash`);
- ``model``, ``input_size``: the preset (or custom config) name and the square input side;
- ``weights_hash``: sha256 of the weights that make the image features: the image encoder
  and the decoder's two high-resolution projections (see :func:`weights_hash`).

The content hash reads a few frames spread over the stack, and a strided grid of pixels in each
(:data:`SAMPLE_FRAMES`, :data:`SAMPLE_PIXELS`), so it is cheap on a lazy stack of thousands of
large slices. It tells another file or another acquisition apart; a change to pixels outside the
sample (one edited slice) is not seen: delete the store after editing the data.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from .frames import FrameSource

__all__ = [
    "FEATURES_VERSION",
    "FEATURE_MODULES",
    "SAMPLE_FRAMES",
    "SAMPLE_PIXELS",
    "content_hash",
    "data_signature",
    "weights_hash",
]

#: How frames become the network's input (frames.FrameSource.model_input); bump on any change.
FEATURES_VERSION = 1
#: Frames read for the content hash, evenly spread from the first to the last.
SAMPLE_FRAMES = 8
#: About this many pixels of each sampled frame are hashed (a strided grid).
SAMPLE_PIXELS = 1 << 14

_WEIGHTS_HASH_ATTRIBUTE = "_napari_sam2_weights_hash"


def data_signature(frames: Any, model: torch.nn.Module | None = None, **frame_options) -> dict:
    """The signature of ``frames`` read through ``model``, as a JSON-able dict (module docstring).

    ``frames``: a :class:`~napari_sam2.engine.tracker.Tracker` (then ``model`` is its own), a
    :class:`~napari_sam2.engine.frames.FrameSource`, or an array-like, which is wrapped in a
    FrameSource with ``frame_options`` (``axis``, ``channel_axis``, ``intensity_range``,
    ``rgb``), as the tracker would read it. ``model``: the SAM 2 network.

    Costs one read of :data:`SAMPLE_FRAMES` strided frames, the frame source's intensity range
    (estimated on first use if not given) and, once per model, the weights hash.
    """
    if model is None and hasattr(frames, "frames") and hasattr(frames, "model"):
        frames, model = frames.frames, frames.model
    if model is None:
        raise TypeError("data_signature needs the model: data_signature(frames, model)")
    source = frames if isinstance(frames, FrameSource) else FrameSource(frames, **frame_options)
    config = model.config
    tracked, colour_axis = _axes(source)
    lo_hi = source.intensity_range
    return {
        "features_version": FEATURES_VERSION,
        "shape": [int(n) for n in source._shape],
        "dtype": source.dtype.name,
        "axis": tracked,
        "channel_axis": colour_axis,
        "layout": source.layout,
        "num_frames": int(source.num_frames),
        "frame_shape": [int(n) for n in source.frame_shape],
        "intensity_range": _plain(lo_hi),
        "content_hash": content_hash(source),
        "model": str(config.name),
        "input_size": int(config.image_size),
        "weights_hash": weights_hash(model),
    }


def _axes(source: FrameSource) -> tuple[int | None, int | None]:
    """The tracked axis and the colour/channel axis of the source's array (None when absent)."""
    tracked = source._tracked
    colour = source._colour_axis
    return (None if tracked is None else int(tracked), None if colour is None else int(colour))


def _plain(value):
    """Nested tuples of numbers as lists of Python ints and floats."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


def sample_frames(num_frames: int, count: int = SAMPLE_FRAMES) -> list[int]:
    """Up to ``count`` frame indices evenly spread from the first to the last."""
    count = min(int(count), int(num_frames))
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, count)})


def content_hash(
    source: FrameSource, *, frames: int = SAMPLE_FRAMES, pixels: int = SAMPLE_PIXELS
) -> str:
    """sha256 (hex) of a strided pixel sample of ``frames`` frames spread over the stack.

    Each sampled frame contributes a grid of about ``pixels`` pixels (every ``s``-th row and
    column, all channels) at the source's dtype, little-endian. Only those pixels are read from
    the array (indexing with a step), so a memory-mapped or chunked stack reads little.
    """
    height, width = source.frame_shape
    stride = max(1, math.ceil(math.sqrt(height * width / max(1, int(pixels)))))
    digest = hashlib.sha256()
    indices = sample_frames(source.num_frames, frames)
    digest.update(repr((indices, stride, source.dtype.name)).encode())
    for index in indices:
        sample = _strided_frame(source, index, stride)
        sample = np.ascontiguousarray(sample)
        sample = sample.astype(sample.dtype.newbyteorder("<"), copy=False)
        digest.update(repr(sample.shape).encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()


def _strided_frame(source: FrameSource, index: int, stride: int) -> np.ndarray:
    """Every ``stride``-th row and column of frame ``index`` as stored (all channels), read with
    one indexing step on the source's array, so lazy arrays load only what they must."""
    array = source._frames
    tracked, colour = _axes(source)
    key = []
    for dim in range(len(source._shape)):
        if dim == tracked:
            key.append(int(index))
        elif dim == colour:
            key.append(slice(None))
        else:
            key.append(slice(None, None, stride))
    try:
        return np.asarray(array[tuple(key)])
    except (TypeError, IndexError, ValueError, NotImplementedError):
        # readers that cannot index with a step: read the frame, then stride it
        return source.read_raw(index)[::stride, ::stride]


#: The submodules whose weights make the image features (``SAM2.encode_image``): the image
#: encoder (trunk and neck) and the decoder's projections of the two high-resolution levels.
FEATURE_MODULES = ("image_encoder", "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")


def _feature_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state of :data:`FEATURE_MODULES` by full name (the whole state dict of a model that
    lacks them)."""
    state: dict[str, torch.Tensor] = {}
    for name in FEATURE_MODULES:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            return model.state_dict()
        state.update(module.state_dict(prefix=f"{name}."))
    return state


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 (hex) of the weights that make ``model``'s image features (:data:`FEATURE_MODULES`):
    every name, dtype, shape and value, in name order, independent of the device and memory
    layout (channels-last included). Two models that differ only in the decoder or the memory
    modules share their features, and their stores.

    Hashing reads every weight once (about 0.1 s for sam2.1 tiny), so the result is kept on the
    model and reused until a weight changes (a new tensor or an in-place update, as
    ``load_state_dict`` does).
    """
    state = _feature_weights(model)
    key = tuple(
        (name, tensor.data_ptr(), tensor._version, str(tensor.dtype), tuple(tensor.shape))
        for name, tensor in state.items()
    )
    cached = getattr(model, _WEIGHTS_HASH_ATTRIBUTE, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())
    value = digest.hexdigest()
    # A plain attribute (not a parameter or buffer): kept with the model, not in its state.
    object.__setattr__(model, _WEIGHTS_HASH_ATTRIBUTE, (key, value))
    return value
