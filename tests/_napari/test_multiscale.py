"""Multiscale (pyramid) image layers and lazy layers in the annotator, driven by script.

The level rule, the level <-> level-0 coordinate map (napari's own), labels made at the chosen
level and lined up with the image, and dask, zarr and other lazy arrays read frame by frame.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam2._napari import Annotator
from napari_sam2._napari.annotator import AUTO_LEVEL
from napari_sam2._napari.multiscale import (
    LazyIndex,
    default_level,
    downsample_factors,
    lazy_index,
    level_shapes,
    resolve_level,
    to_level,
    to_level0,
)
from napari_sam2._sample_data import make_demo_stack
from napari_sam2.engine.frames import FrameSource

from .helpers import apply_masks, headless

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, 3.0, -4.0)


@pytest.fixture(scope="module")
def pyramid():
    """(4, 320, 320) and (4, 160, 160): level 0 is larger than the test model's input (256)."""
    finest = make_demo_stack((4, 320, 320), seed=1)
    return [finest, finest[:, ::2, ::2].copy()]


def annotator_on(model, data, **image_kwargs):
    viewer = ViewerModel()
    image = viewer.add_image(data, name="cells", **image_kwargs)
    a = Annotator(viewer)
    a.state.precision = "float32"  # the engine alone below runs in float32 too
    a.state.prefetch = False
    a.set_model(model)
    a.state.image = image
    return viewer, image, a


# ---------------------------------------------------------------------------------- the rule


def test_default_level_is_the_finest_whose_frame_fits_the_input_size():
    shapes = [(5, 2048, 1536), (5, 1024, 768), (5, 512, 384)]
    assert default_level(shapes, (1, 2), 1024) == 1
    assert default_level(shapes, (1, 2), 512) == 2
    assert default_level(shapes, (1, 2), 4096) == 0
    assert default_level(shapes, (1, 2), 256) == 2, "none fits: the coarsest level"
    # Only the frame's axes count: a long z axis does not push the choice down.
    assert default_level([(3000, 1024, 1024), (3000, 512, 512)], (1, 2), 1024) == 0
    assert resolve_level(None, shapes, (1, 2), 1024) == 1
    assert resolve_level(0, shapes, (1, 2), 1024) == 0
    with pytest.raises(ValueError, match="3 level.*level 3 cannot be read"):
        resolve_level(3, shapes, (1, 2), 1024, "cells")


def test_level_coordinates_are_napari_s_and_round_trip():
    viewer = ViewerModel()
    finest = np.zeros((6, 64, 48), np.uint8)
    image = viewer.add_image(
        [finest, finest[::2, ::2, ::2], finest[::2, ::4, ::4]],
        multiscale=True,
        scale=SCALE,
        translate=TRANSLATE,
    )
    shapes = level_shapes(image)
    assert shapes == [(6, 64, 48), (3, 32, 24), (3, 16, 12)]
    for level in range(3):
        np.testing.assert_array_equal(
            downsample_factors(shapes, level), image.downsample_factors[level]
        )
    factors = downsample_factors(shapes, 2)
    coords = np.random.default_rng(0).uniform(0, 40, size=(7, 3))
    np.testing.assert_allclose(to_level0(to_level(coords, factors), factors), coords)
    np.testing.assert_allclose(to_level(coords, factors), coords / [2.0, 4.0, 4.0])
    assert to_level(coords, None) is not None
    np.testing.assert_array_equal(to_level(coords, None), coords)


# ---------------------------------------------------------------------------------- annotating


def test_a_click_reads_the_chosen_level_and_the_labels_line_up(model, pyramid):
    viewer, image, a = annotator_on(
        model, pyramid, multiscale=True, scale=SCALE, translate=TRANSLATE
    )
    assert a.level() == 1, "160 <= 256 < 320: level 1 is the finest that fits"
    assert a.level_choices() == [
        (AUTO_LEVEL, None),
        ("level 0 (320 × 320)", 0),
        ("level 1 (160 × 160)", 1),
    ]
    assert a.level_description() == "level 1 (160 × 160) of 2"
    click = image.data_to_world([2, 100, 60])  # level-0 data (slice 2, row 100, col 60)
    a.add_point(click)
    labels = a.layers.labels
    assert labels.data.shape == (4, 160, 160), "the labels are made at the level read"
    np.testing.assert_allclose(labels.scale, [2.0, 1.0, 1.0])
    np.testing.assert_allclose(labels.translate, TRANSLATE)
    # The engine alone on level 1, with the click at level-1 pixel (row 50, col 30).
    engine = headless(model, pyramid[1])
    expected = engine.set_prompts(2, 1, points=[[30, 50]], labels=[1])[1] > 0
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(labels.data[2] == 1, expected)
    assert labels.data[[0, 1, 3]].max() == 0
    # Lined up: every level-1 pixel of the labels sits where napari draws that image pixel.
    rows, cols = np.nonzero(expected)
    level1 = np.stack([np.full(rows.size, 2), rows, cols], axis=1).astype(float)
    drawn = np.array([image.data_to_world(p) for p in to_level0(level1, (1, 2, 2))])
    ours = np.array([labels.data_to_world(p) for p in level1])
    np.testing.assert_allclose(ours, drawn)
    np.testing.assert_allclose(labels.world_to_data(click), [2, 50, 30])

    # A box (object 2) maps to level-1 pixels too.
    a.new_object()
    a.add_box(image.data_to_world([2, 40, 180]), image.data_to_world([2, 140, 300]))
    shadow = np.zeros((4, 160, 160), np.uint32)
    shadow[2][expected] = 1
    apply_masks(shadow, 2, engine.set_prompts(2, 2, box=[90, 20, 150, 70]))
    assert (shadow[2] == 2).any()
    np.testing.assert_array_equal(labels.data[2], shadow[2])

    viewer.dims.set_point(0, image.data_to_world([2, 0, 0])[0])
    assert a.current_frame() == 2
    job = a.propagate("forward")
    assert job is not None and job.finished
    for frame, logits in engine.propagate(2, "forward"):
        apply_masks(shadow, frame, logits)
    np.testing.assert_array_equal(labels.data, shadow)
    assert a.messages[-1][0] == "info"


def test_choosing_another_level_keeps_the_old_labels_and_segments_at_the_new_one(model, pyramid):
    viewer, image, a = annotator_on(model, pyramid, multiscale=True, scale=SCALE)
    a.add_point(image.data_to_world([1, 100, 60]))
    coarse = a.layers.labels
    assert coarse.data.shape == (4, 160, 160)
    a.state.level = 0
    labels = a.layers.labels
    assert labels is not coarse and labels.data.shape == (4, 320, 320)
    np.testing.assert_allclose(labels.scale, SCALE)
    assert coarse in viewer.layers and coarse.name == "cells SAM 2 labels (level 1)"
    assert (coarse.data == 1).any(), "the level-1 labels are kept"
    assert any("kept in the layer 'cells SAM 2 labels (level 1)'" in t for _, t in a.messages)
    expected = headless(model, pyramid[0]).set_prompts(1, 1, points=[[60, 100]], labels=[1])
    np.testing.assert_array_equal(labels.data[1] == 1, expected[1] > 0)
    # Back to auto: the level-1 layer is not adopted again, a new one is made.
    a.state.level = None
    assert a.layers.labels.data.shape == (4, 160, 160)
    assert a.layers.labels is not coarse
    with pytest.raises(ValueError, match="2 level"):
        a.state.level = 5
        a.geometry()


def test_a_prompt_file_saved_at_a_level_loads_back_in_place(model, pyramid, tmp_path):
    viewer, image, a = annotator_on(model, pyramid, multiscale=True, scale=SCALE)
    a.add_point(image.data_to_world([3, 100, 60]))
    points = np.array(a.layers.points.data)
    path = tmp_path / "p.sam2.json"
    assert a.save_prompts(path)
    a.layers.points.data = np.empty((0, 3))
    assert a.load_prompts(path)
    np.testing.assert_allclose(a.layers.points.data, points)


# ---------------------------------------------------------------------------------- laziness


def counting_dask(array: np.ndarray, reads: collections.Counter, name):
    """A dask array of ``array`` (one chunk per frame) that counts each frame it computes."""
    import dask.array as da

    def read(block, block_info=None):
        reads[(name, block_info[None]["chunk-location"][0])] += 1
        return block

    return da.from_array(array, chunks=(1, *array.shape[1:])).map_blocks(read, dtype=array.dtype)


def test_dask_pyramid_levels_are_read_frame_by_frame(model):
    finest = make_demo_stack((40, 64, 64), seed=2)
    reads: collections.Counter = collections.Counter()
    levels = [counting_dask(finest, reads, 0), counting_dask(finest[:, ::2, ::2], reads, 1)]
    viewer, image, a = annotator_on(model, levels, multiscale=True, contrast_limits=(0, 3000))
    a.state.level = 1
    viewer.dims.set_current_step(0, 7)
    reads.clear()  # what napari read to draw the layer is not the annotator's
    a.add_point(image.data_to_world([7, 30, 30]))
    assert not any(name == 0 for name, _ in reads), "level 0 is never read"
    sample = FrameSource(finest[:, ::2, ::2]).sample_indices()
    assert set(reads) == {(1, f) for f in {*sample, 7}}, "the intensity sample and slice 7"
    assert len(set(reads)) < 40
    reads.clear()
    a.propagate("forward", max_frames=3)
    assert set(reads) == {(1, 8), (1, 9)}
    assert (a.layers.labels.data[8:10] > 0).any()


def test_a_plain_dask_layer_stays_lazy(model):
    data = make_demo_stack((30, 64, 64), seed=3)
    reads: collections.Counter = collections.Counter()
    viewer, image, a = annotator_on(model, counting_dask(data, reads, "z"))
    a.state.intensity = "contrast limits"  # no intensity sample: only the clicked slice
    viewer.dims.set_current_step(0, 12)
    reads.clear()
    a.add_point(image.data_to_world([12, 30, 30]))
    assert set(reads) == {("z", 12)}
    expected = headless(model, data, intensity_range=tuple(image.contrast_limits))
    logits = expected.set_prompts(12, 1, points=[[30, 30]], labels=[1])[1]
    np.testing.assert_array_equal(a.layers.labels.data[12] == 1, logits > 0)


class RecordingArray:
    """An array whose every read is recorded (as zarr's, indexing reads at once)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.keys = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        self.keys.append(key)
        return self.data[key]


def test_lazy_index_reads_one_frame_of_a_held_position():
    data = np.arange(5 * 3 * 8 * 9, dtype=np.uint16).reshape(5, 3, 8, 9)
    recording = RecordingArray(data)
    full = (slice(None),) * 4
    assert lazy_index(recording, full) is recording
    assert isinstance(lazy_index(data, (slice(None), 1)), np.ndarray)
    view = lazy_index(recording, (slice(None), 1, slice(None), slice(None)))
    assert isinstance(view, LazyIndex) and view.shape == (5, 8, 9) and recording.keys == []
    source = FrameSource(view, axis=0, intensity_range=(0, 1000))
    np.testing.assert_array_equal(source.read_raw(3), data[3, 1])
    assert recording.keys == [(3, 1, slice(None), slice(None))]
    np.testing.assert_array_equal(view[1:3, 2], data[1:3, 1, 2])
    with pytest.raises(IndexError, match="too many"):
        view[0, 0, 0, 0]


def test_a_4d_zarr_layer_is_segmented_at_the_held_position(model, tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.stack([make_demo_stack((4, 64, 64), seed=s) for s in (4, 5)], axis=1)
    stored = zarr.open_array(
        tmp_path / "stack.zarr", mode="w", shape=data.shape, chunks=(1, 1, 64, 64),
        dtype=data.dtype,
    )  # fmt: skip
    stored[:] = data
    viewer, image, a = annotator_on(model, stored)
    viewer.dims.set_current_step(1, 1)
    viewer.dims.set_current_step(0, 2)
    a.add_point(image.data_to_world([2, 1, 20, 40]))
    expected = headless(model, data[:, 1]).set_prompts(2, 1, points=[[40, 20]], labels=[1])
    np.testing.assert_array_equal(a.layers.labels.data[2, 1] == 1, expected[1] > 0)
    assert a.layers.labels.data[:, 0].max() == 0
