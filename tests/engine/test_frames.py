"""FrameSource: layouts, dtypes, intensity ranges, laziness and the SAM 2 model input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_sam2.engine.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameIndexError,
    FrameSource,
    reduce_channels,
)

RNG = np.random.default_rng(0)


class LazyStack:
    """An array-like that refuses to be materialised and records every read."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.reads: list = []

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was materialised")

    def __getitem__(self, key):
        self.reads.append(key)
        return self._data[key].copy()


def _ramp(height: int = 6, width: int = 8) -> np.ndarray:
    return np.arange(height * width, dtype=np.float32).reshape(height, width)


# ---------------------------------------------------------------- layouts


def test_2d_array_is_a_single_grey_frame():
    image = _ramp()
    source = FrameSource(image, axis=1, intensity_range=(0, 47))  # axis ignored for 2-D
    assert source.num_frames == 1 and len(source) == 1
    assert source.frame_shape == (6, 8)
    assert source.layout == "grey"
    frame = source.read(0)
    assert frame.shape == (6, 8, 3) and frame.dtype == np.float32
    np.testing.assert_allclose(frame[..., 0], image / 47, rtol=1e-6)
    np.testing.assert_array_equal(frame[..., 0], frame[..., 2])


def test_3d_grey_stack_reads_each_frame():
    stack = RNG.integers(0, 1000, size=(5, 7, 9)).astype(np.uint16)
    source = FrameSource(stack, intensity_range=(0, 1000))
    assert source.num_frames == 5 and source.frame_shape == (7, 9)
    for index in range(5):
        expected = stack[index].astype(np.float32) / 1000
        np.testing.assert_allclose(source.read(index)[..., 1], expected, rtol=1e-6)


def test_rgb_uint8_stack_is_not_stretched():
    stack = RNG.integers(20, 60, size=(3, 32, 33, 3)).astype(np.uint8)
    source = FrameSource(stack)  # guessed as RGB, as napari does
    assert source.layout == "rgb" and source.frame_shape == (32, 33)
    assert source.intensity_range == (0.0, 255.0)
    np.testing.assert_allclose(source.read(2), stack[2] / 255.0, rtol=1e-6)


def test_rgba_drops_alpha():
    stack = RNG.integers(0, 256, size=(2, 4, 5, 4)).astype(np.uint8)
    frame = FrameSource(stack, rgb=True).read(1)
    assert frame.shape == (4, 5, 3)
    np.testing.assert_allclose(frame, stack[1, ..., :3] / 255.0, rtol=1e-6)


def test_single_rgb_image_and_rgb_flag():
    image = RNG.integers(0, 256, size=(32, 40, 3)).astype(np.uint8)
    guessed = FrameSource(image)
    assert guessed.num_frames == 1 and guessed.frame_shape == (32, 40)
    np.testing.assert_allclose(guessed.read(0), image / 255.0, rtol=1e-6)
    # rgb=False: the same array is a stack of 32 grey frames of shape (40, 3)
    grey = FrameSource(image, rgb=False)
    assert grey.num_frames == 32 and grey.frame_shape == (40, 3) and grey.layout == "grey"
    # small sides are not guessed as colour (napari's rule), unless rgb=True says so
    small = image[:4, :5]
    assert FrameSource(small).layout == "grey" and FrameSource(small).num_frames == 4
    explicit = FrameSource(small, rgb=True)
    assert explicit.num_frames == 1 and explicit.layout == "rgb"


def test_channel_axis_per_channel_ranges_and_reduction():
    # (Z, C, H, W) with two channels on very different scales
    stack = np.zeros((3, 2, 4, 5), dtype=np.float32)
    stack[:, 0] = np.linspace(0, 10000, 20).reshape(4, 5)
    stack[:, 1] = np.linspace(0, 100, 20).reshape(4, 5)
    source = FrameSource(stack, channel_axis=1, intensity_range=[(0, 10000), (0, 100)])
    assert source.layout == "channels" and source.frame_shape == (4, 5)
    assert source.num_frames == 3
    frame = source.read(1)
    ramp = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_allclose(frame[..., 0], ramp, atol=1e-6)
    np.testing.assert_allclose(frame[..., 1], ramp, atol=1e-6)
    np.testing.assert_allclose(frame[..., 2], ramp, atol=1e-6)  # mean of two equal channels

    auto = FrameSource(stack, channel_axis=1)
    ranges = auto.intensity_range
    assert len(ranges) == 2
    assert ranges[0][1] > 9000 and ranges[1][1] < 101  # each channel keeps its own scale


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
def test_reduce_channels_rule(channels):
    scaled = RNG.random((3, 4, channels)).astype(np.float32)
    reduced = reduce_channels(scaled)
    assert reduced.shape == (3, 4, 3)
    if channels == 1:
        expected = np.repeat(scaled, 3, axis=-1)
    elif channels == 2:
        expected = np.stack([scaled[..., 0], scaled[..., 1], scaled.mean(-1)], axis=-1)
    else:
        expected = scaled[..., :3]
    np.testing.assert_allclose(reduced, expected, rtol=1e-6)


def test_tracked_axis_1_and_negative_axes():
    data = RNG.random((6, 4, 7)).astype(np.float32)  # (H, T, W)
    source = FrameSource(data, axis=1, intensity_range=(0, 1))
    assert source.num_frames == 4 and source.frame_shape == (6, 7)
    np.testing.assert_allclose(source.read(2)[..., 0], data[:, 2, :], rtol=1e-6)

    last = np.moveaxis(data, 1, -1)  # (H, W, T) with T=4: tracked last axis is never RGB
    negative = FrameSource(last, axis=-1, intensity_range=(0, 1))
    assert negative.layout == "grey" and negative.num_frames == 4
    np.testing.assert_allclose(negative.read(3)[..., 0], data[:, 3, :], rtol=1e-6)

    channels_last = RNG.random((3, 5, 6, 2)).astype(np.float32)  # (T, H, W, C)
    multi = FrameSource(channels_last, channel_axis=-1, intensity_range=(0, 1))
    frame = multi.read(0)
    np.testing.assert_allclose(frame[..., 1], channels_last[0, ..., 1], rtol=1e-6)

    channel_first = RNG.random((2, 6, 5, 4)).astype(np.float32)  # (C, H, W, T)
    moved = FrameSource(channel_first, axis=-1, channel_axis=0, intensity_range=(0, 1))
    assert moved.num_frames == 4 and moved.frame_shape == (6, 5)
    np.testing.assert_allclose(moved.read(1)[..., 0], channel_first[0, :, :, 1], rtol=1e-6)


# ---------------------------------------------------------------- dtypes


def test_int16_ct_like_negative_values():
    stack = np.array([[[-1000, 0], [400, 3000]]] * 2, dtype=np.int16)
    source = FrameSource(stack, intensity_range=(-1000, 1000))
    np.testing.assert_allclose(source.read(0)[..., 0], [[0.0, 0.5], [0.7, 1.0]], atol=1e-6)


def test_uint16_uses_full_dynamic_range():
    stack = np.linspace(0, 60000, 2 * 8 * 8).astype(np.uint16).reshape(2, 8, 8)
    source = FrameSource(stack)
    lo, hi = source.intensity_range
    expected = np.percentile(stack.astype(np.float64), [0.5, 99.5])
    np.testing.assert_allclose((lo, hi), expected, rtol=1e-6)
    frame = source.read(1)[..., 0]
    assert frame.max() == 1.0 and len(np.unique(frame)) > 50  # no 8-bit truncation


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.uint8])
def test_numeric_dtypes_give_float32_in_unit_range(dtype):
    stack = (RNG.random((3, 6, 6)) * 100).astype(dtype)
    frame = FrameSource(stack, intensity_range=(0, 100)).read(2)
    assert frame.dtype == np.float32
    np.testing.assert_allclose(frame[..., 0], stack[2].astype(np.float64) / 100, atol=1e-6)


def test_int32_with_large_offset_keeps_precision():
    base = 2_000_000_000
    stack = (base + np.arange(18).reshape(2, 3, 3)).astype(np.int32)
    frame = FrameSource(stack, intensity_range=(base, base + 17)).read(1)[..., 0]
    np.testing.assert_allclose(frame, (np.arange(9, 18).reshape(3, 3)) / 17, atol=1e-6)


def test_bool_frames_map_to_zero_and_one():
    stack = np.zeros((2, 4, 4), dtype=bool)
    stack[1, 1:3, 1:3] = True
    source = FrameSource(stack)
    assert source.intensity_range == (0.0, 1.0)
    np.testing.assert_array_equal(source.read(1)[..., 0], stack[1].astype(np.float32))


def test_frame_nbytes():
    assert FrameSource(np.zeros((4, 10, 12), np.uint16)).frame_nbytes == 10 * 12 * 2
    assert FrameSource(np.zeros((4, 10, 12, 3), np.uint8), rgb=True).frame_nbytes == 10 * 12 * 3
    multi = FrameSource(np.zeros((4, 2, 10, 12), np.float32), channel_axis=1)
    assert multi.frame_nbytes == 2 * 10 * 12 * 4


# ---------------------------------------------------------------- laziness


def test_lazy_array_is_never_materialised_and_reads_only_samples():
    data = RNG.integers(0, 4000, size=(40, 8, 8)).astype(np.uint16)
    lazy = LazyStack(data)
    source = FrameSource(lazy, sample_frames=4)
    assert lazy.reads == []  # construction reads nothing
    frame = source.read(5)
    read_indices = sorted(key[0] for key in lazy.reads)
    assert source.sample_indices() == [0, 13, 26, 39]
    assert read_indices == [0, 5, 13, 26, 39]
    np.testing.assert_allclose(frame, FrameSource(data, sample_frames=4).read(5), rtol=1e-6)
    source.read(6)
    assert len(lazy.reads) == 6  # the range is computed once


def test_lazy_array_reads_along_another_axis():
    data = RNG.random((5, 3, 6)).astype(np.float32)
    lazy = LazyStack(data)
    source = FrameSource(lazy, axis=1, intensity_range=(0, 1))
    source.read(2)
    assert lazy.reads == [(slice(None), 2)]


def test_reader_with_wrong_frame_shape_is_reported():
    class Squeezing(LazyStack):
        def __getitem__(self, key):
            return super().__getitem__(key)[:2]

    source = FrameSource(Squeezing(np.zeros((3, 4, 5))), intensity_range=(0, 1))
    with pytest.raises(ValueError, match="expected"):
        source.read(0)


def test_dask_array_matches_numpy():
    da = pytest.importorskip("dask.array")
    data = RNG.integers(0, 5000, size=(6, 10, 12)).astype(np.uint16)
    lazy = da.from_array(data, chunks=(1, 10, 12))
    dask_source = FrameSource(lazy)
    numpy_source = FrameSource(data)
    assert dask_source.intensity_range == pytest.approx(numpy_source.intensity_range)
    np.testing.assert_array_equal(dask_source.read(4), numpy_source.read(4))


def test_zarr_array_matches_numpy():
    zarr = pytest.importorskip("zarr")
    data = RNG.random((4, 9, 7)).astype(np.float32)
    source = FrameSource(zarr.array(data, chunks=(1, 9, 7)))
    np.testing.assert_array_equal(source.read(3), FrameSource(data).read(3))


def test_tifffile_memmap(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    data = RNG.integers(0, 65535, size=(5, 16, 20)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data)
    mapped = tifffile.memmap(path)
    source = FrameSource(mapped)
    assert source.num_frames == 5 and source.frame_shape == (16, 20)
    np.testing.assert_array_equal(source.read(2), FrameSource(data).read(2))


# ---------------------------------------------------------------- intensity range


def test_range_is_shared_by_the_stack_so_relative_brightness_stays():
    stack = np.stack(
        [
            100 + RNG.normal(0, 5, (16, 16)),
            200 + RNG.normal(0, 5, (16, 16)),
        ]
    ).astype(np.float32)
    source = FrameSource(stack)
    dim, bright = source.read(0)[..., 0], source.read(1)[..., 0]
    assert dim.mean() < 0.25 and bright.mean() > 0.75
    expected = np.percentile(stack.astype(np.float64), [0.5, 99.5])
    np.testing.assert_allclose(source.intensity_range, expected, rtol=1e-5)


def test_large_frames_are_sampled_with_a_pixel_stride():
    stack = RNG.random((2, 512, 512)).astype(np.float32)  # 2**18 pixels -> stride 2
    source = FrameSource(stack)
    expected = np.percentile(stack[:, ::2, ::2].astype(np.float64), [0.5, 99.5])
    np.testing.assert_allclose(source.intensity_range, expected, rtol=1e-6)


def test_fixed_range_clips():
    frame = np.array([[-5.0, 0.0, 5.0, 10.0, 20.0]], dtype=np.float32)
    out = FrameSource(frame, intensity_range=(0, 10)).read(0)[..., 0]
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]])


def test_sparse_data_fall_back_to_min_max():
    stack = np.zeros((2, 64, 64), dtype=np.uint16)
    stack[1, 3, 4] = 900  # far fewer than 0.5 % of the pixels
    source = FrameSource(stack)
    assert source.intensity_range == (0.0, 900.0)
    assert source.read(1)[3, 4, 0] == 1.0


def test_nan_and_inf_are_replaced():
    frame = np.array([[np.nan, np.inf, -np.inf, 5.0]], dtype=np.float32)
    stack = np.stack([frame, frame])
    out = FrameSource(stack, intensity_range=(0, 10)).read(1)[..., 0]
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.0, 0.5]])

    auto = FrameSource(np.stack([frame, frame * 2]))  # finite values: 5 and 10
    lo, hi = auto.intensity_range
    assert np.isfinite([lo, hi]).all() and 5.0 <= lo < hi <= 10.0
    assert np.isfinite(auto.read(0)).all()


def test_all_nan_sample_raises():
    stack = np.full((3, 4, 4), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="no finite values"):
        FrameSource(stack).read(0)


def test_nan_frame_is_named():
    stack = np.ones((3, 4, 4), dtype=np.float32)
    stack[2] = np.nan
    source = FrameSource(stack, intensity_range=(0, 2))
    np.testing.assert_allclose(source.read(1), 0.5)
    with pytest.raises(ValueError, match="frame 2 holds no finite values"):
        source.read(2)


def test_constant_stack_maps_to_zero_without_warnings():
    stack = np.full((3, 5, 5), 7, dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = FrameSource(stack)
        assert source.intensity_range == (7.0, 7.0)
        frame = source.read(1)
        tensor = source.model_input(1, 8)
    np.testing.assert_array_equal(frame, 0.0)
    assert torch.isfinite(tensor).all()


def test_degenerate_explicit_range_is_a_step():
    frame = np.array([[1.0, 5.0, 9.0]], dtype=np.float32)
    out = FrameSource(frame, intensity_range=(5, 5)).read(0)[..., 0]
    np.testing.assert_array_equal(out, [[0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    ("bad_range", "message"),
    [((10, 0), "lo > hi"), ((0, np.inf), "finite"), ((0, 1, 2), r"\(lo, hi\)")],
)
def test_bad_intensity_range_raises(bad_range, message):
    with pytest.raises(ValueError, match=message):
        FrameSource(np.zeros((2, 3, 3)), intensity_range=bad_range)


def test_per_channel_range_count_must_match():
    with pytest.raises(ValueError, match="per channel"):
        FrameSource(np.zeros((2, 3, 4, 4)), channel_axis=1, intensity_range=[(0, 1), (0, 2)])


# ---------------------------------------------------------------- errors


def test_4d_without_channel_axis_explains():
    with pytest.raises(ValueError, match="channel_axis") as info:
        FrameSource(np.zeros((3, 2, 8, 8)))
    assert "(3, 2, 8, 8)" in str(info.value)
    with pytest.raises(ValueError, match="rgb=True"):
        FrameSource(np.zeros((3, 8, 8, 3)))  # too small to be guessed as colour


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((8,), {}, "at least 2-D"),
        ((2, 3, 2, 8, 8), {"channel_axis": 2}, "slice the extra axes"),
        ((3, 2, 8, 8), {"axis": 1, "channel_axis": 1}, "same axis"),
        ((3, 8, 8), {"axis": 3}, "out of range"),
        ((3, 8, 8, 5), {"rgb": True}, "length 3 or 4"),
        ((0, 8, 8), {}, "empty"),
    ],
)
def test_bad_layouts(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrameSource(np.zeros(shape), **kwargs)


def test_bad_types():
    with pytest.raises(TypeError, match="complex"):
        FrameSource(np.zeros((2, 3, 3), dtype=np.complex64))
    with pytest.raises(TypeError, match="array-like"):
        FrameSource([[0, 1], [2, 3]])


def test_out_of_range_index_names_valid_frames():
    source = FrameSource(np.zeros((4, 3, 3)), intensity_range=(0, 1))
    for bad in (4, -1):
        with pytest.raises(FrameIndexError, match="0 to 3"):
            source.read(bad)
    with pytest.raises(ValueError):
        source.read(10)
    with pytest.raises(IndexError):
        source.read(10)
    with pytest.raises(TypeError):
        source.read(1.5)
    assert source.read(np.int64(3)).shape == (3, 3, 3)


# ---------------------------------------------------------------- model input


def test_model_input_constant_grey_is_normalised_exactly():
    source = FrameSource(np.full((1, 20, 30), 0.5, dtype=np.float32), intensity_range=(0, 1))
    tensor = source.model_input(0, 32)
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == torch.float32
    for channel in range(3):
        expected = (0.5 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(
            tensor[0, channel], torch.full((32, 32), expected), rtol=0, atol=1e-6
        )


def test_model_input_squashes_aspect_ratio_and_keeps_content():
    height, width = 24, 96
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    source = FrameSource(ramp, intensity_range=(0, 1))
    tensor = source.model_input(0, 32, device="cpu")
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    image = tensor[0] * std + mean
    assert image.shape == (3, 32, 32)
    row = image[0, 16]
    assert torch.all(row[1:] > row[:-1])  # the horizontal ramp survives the squash
    assert row[0] < 0.05 and row[-1] > 0.95
    torch.testing.assert_close(image[:, 0], image[:, -1])  # constant along the rows


def test_model_input_same_size_skips_resampling():
    data = RNG.random((2, 16, 16)).astype(np.float32)
    source = FrameSource(data, intensity_range=(0, 1))
    tensor = source.model_input(1, 16)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(tensor[0] * std + mean, torch.from_numpy(data[1]).expand(3, -1, -1))


def test_model_input_rejects_bad_size():
    source = FrameSource(np.zeros((4, 4)), intensity_range=(0, 1))
    with pytest.raises(ValueError, match="image_size"):
        source.model_input(0, 0)


# ---------------------------------------------------------------------------- extreme numbers

FLT_MAX = float(np.finfo(np.float32).max)


def _levels(frame: np.ndarray) -> int:
    return len(np.unique(frame[..., 0]))


@pytest.mark.parametrize(
    "data",
    [
        np.array([[-3e38, -1e38, 0.0, 1e38, 3e38]], dtype=np.float32),
        np.array([[-FLT_MAX, -3e38, 0.0, 3e38, FLT_MAX * 0.999]], dtype=np.float32),
        np.array([[-1e308, 0.0, 1e308, 1.7e308]], dtype=np.float64),
        np.array([[2**62, 2**62 + 1, 2**62 + 2, 2**62 + 3, 2**62 + 4]], dtype=np.int64),
        np.array([[-(2**63), -1, 0, 2**63 - 1]], dtype=np.int64),
        np.array([[2**64 - 5, 2**64 - 4, 2**64 - 3, 2**64 - 1]], dtype=np.uint64),
        np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
        np.array([[-65504.0, 0.0, 65504.0]], dtype=np.float16),
    ],
)
def test_extreme_values_map_into_unit_range_with_contrast(data):
    stack = np.repeat(np.tile(data, (4, 1))[None], 2, axis=0)  # (2, 4, W)
    source = FrameSource(stack)
    frame = source.read(0)
    assert frame.dtype == np.float32 and np.isfinite(frame).all()
    assert frame.min() >= 0.0 and frame.max() <= 1.0
    assert _levels(frame) >= 2  # the data has contrast, and so does the frame
    lo, hi = source.intensity_range
    assert np.isfinite([lo, hi]).all() and lo < hi


def test_int64_offsets_near_2_62_keep_every_step():
    base = 2**62
    stack = (base + np.arange(4 * 50, dtype=np.int64)).reshape(2, 4, 25)
    frame = FrameSource(stack, intensity_range=(base, base + 199)).read(1)
    grey = frame[..., 0]
    # 100 distinct inputs on frame 1 give 100 distinct, increasing outputs
    assert len(np.unique(grey)) == 100
    assert np.all(np.diff(grey.ravel()) > 0)


@pytest.mark.parametrize("fill", [-FLT_MAX, FLT_MAX, np.nan, np.inf, -np.inf])
def test_no_data_fills_are_left_out_of_the_range(fill):
    data = np.linspace(0, 100, 64 * 64, dtype=np.float32).reshape(64, 64)
    data[:20] = fill  # a third of the frame is no data
    source = FrameSource(np.stack([data, data]))
    lo, hi = source.intensity_range
    assert 0 <= lo < hi <= 100
    frame = source.read(0)
    assert np.isfinite(frame).all() and frame.min() >= 0 and frame.max() <= 1
    assert _levels(frame[20:]) > 100  # the real data keeps its contrast
    expected = 1.0 if fill == np.inf else 0.0
    assert np.all(frame[:20] == expected)


def test_a_frame_of_only_no_data_is_named():
    data = np.full((2, 8, 8), -FLT_MAX, dtype=np.float32)
    with pytest.raises(ValueError, match="no-data"):
        FrameSource(data).read(0)


@pytest.mark.parametrize(
    "bad",
    [(np.nan, 1), (0, np.inf), (-np.inf, 0), (5, 1), ("a", "b"), (1,), (1, 2, 3), None],
)
def test_intensity_range_must_be_finite_and_ordered(bad):
    if bad is None:
        bad = [[0, 1], [2]]
    with pytest.raises(ValueError, match="intensity_range"):
        FrameSource(np.zeros((2, 8, 8)), intensity_range=bad)


@pytest.mark.parametrize("axis", [1.5, True, "0", 0.0])
def test_axis_must_be_an_integer(axis):
    with pytest.raises(ValueError, match="axis must be an integer"):
        FrameSource(np.zeros((2, 8, 8)), axis=axis)


# ---------------------------------------------------------------------------- fuzzing

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

_DTYPES = ["bool", "uint8", "uint16", "int16", "int32", "int64", "uint64", "float16", "float32",
           "float64"]  # fmt: skip


@st.composite
def _stacks(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=7))
    if dtype.kind == "f":
        elements = hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True, allow_subnormal=True)
        fills = st.sampled_from([np.finfo(dtype).max, -np.finfo(dtype).max, np.nan, -np.inf])
        elements = st.one_of(elements, fills)
    else:
        elements = hnp.from_dtype(dtype)
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    axis = draw(st.integers(-5, 4))
    channel_axis = draw(st.one_of(st.none(), st.integers(-4, 4)))
    explicit = draw(st.one_of(st.none(), st.tuples(st.floats(), st.floats())))
    return array, axis, channel_axis, explicit


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(_stacks())
def test_fuzz_every_stack_maps_into_unit_range_or_is_refused(case):
    """Any shape, dtype (extreme values and no-data included), axis and range: either frames in
    [0, 1], finite, float32 (H, W, 3), or a ValueError with a message; never anything else."""
    array, axis, channel_axis, explicit = case
    try:
        source = FrameSource(array, axis=axis, channel_axis=channel_axis,
                             intensity_range=explicit)  # fmt: skip
        frames = [source.read(i) for i in range(source.num_frames)]
    except ValueError as err:
        assert str(err)
        event(f"refused: {type(err).__name__}")
        return
    event(f"read {array.dtype}")
    for frame in frames:
        assert frame.dtype == np.float32 and frame.shape == (*source.frame_shape, 3)
        assert np.isfinite(frame).all() and frame.min() >= 0.0 and frame.max() <= 1.0
