"""The annotator controller driven by script, as the widget drives it (inline runner)."""

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam2._napari import AnnotatorController

from .helpers import apply_masks, headless

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, 3.0, -4.0)


def world(frame, row, col):
    """World coordinates of data position (frame, row, col) of the scaled, translated image."""
    return [TRANSLATE[i] + SCALE[i] * v for i, v in enumerate((frame, row, col))]


@pytest.fixture
def annotated(model, stack):
    """A viewer with the stack (scaled, translated) and a controller with the model."""
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="cells", scale=SCALE, translate=TRANSLATE)
    controller = AnnotatorController(viewer)
    controller.set_model(model)
    controller.image_layer = image
    assert controller.ensure_layers()
    return viewer, controller


def errors(controller, level="error"):
    return [text for lvl, text in controller.messages if lvl == level]


def test_point_then_segment_honours_scale_and_translate(annotated, model, stack):
    viewer, c = annotated
    c.add_point(world(2, 30, 20))
    engine = headless(model, stack)
    expected = engine.set_prompts(2, 1, points=[[20, 30]], labels=[1])[1] > 0
    labels = c.labels_layer.data
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(labels[2] == 1, expected)
    assert labels[[0, 1, 3, 4]].max() == 0
    assert c.labels_layer.selected_label == 1
    assert c.messages == []


def test_box_object_propagation_correction_and_undo(model, stack):
    stack = stack[:4]
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="cells", scale=SCALE, translate=TRANSLATE)
    c = AnnotatorController(viewer)
    c.set_model(model)
    c.image_layer = image
    engine = headless(model, stack)
    shadow = np.zeros(stack.shape, np.uint32)

    c.add_point(world(1, 30, 20))
    apply_masks(shadow, 1, {1: engine.set_prompts(1, 1, points=[[20, 30]], labels=[1])[1]})
    second = c.new_object()
    assert second == 2 and c.current_object == 2 and c.labels_layer.selected_label == 2
    c.add_box(world(1, 10, 30), world(1, 40, 60))
    apply_masks(shadow, 1, {2: engine.set_prompts(1, 2, box=[30, 10, 60, 40])[2]})
    labels = c.labels_layer
    np.testing.assert_array_equal(labels.data, shadow)
    assert (labels.data == 2).any(), "the box object got no pixels"

    before = labels.data.copy()
    viewer.dims.set_point(0, world(1, 0, 0)[0])
    job = c.propagate("both")
    assert job is not None and job.finished
    for frame, logits in engine.propagate(1, "both"):
        apply_masks(shadow, frame, logits)
    np.testing.assert_array_equal(labels.data, shadow)
    for frame in range(stack.shape[0]):
        assert set(np.unique(labels.data[frame])) <= {0, 1, 2}
        assert (labels.data[frame] == 1).any(), f"frame {frame} lost object 1"

    # A negative click on slice 3 is a correction: it becomes a conditioning frame.
    c.select_object(1)
    c.add_point(world(3, 10, 10), positive=False)
    apply_masks(
        shadow,
        3,
        {1: engine.set_prompts(3, 1, points=[[10, 10]], labels=[0])[1]},
    )
    np.testing.assert_array_equal(labels.data, shadow)
    viewer.dims.set_point(0, world(3, 0, 0)[0])
    c.propagate("forward")
    for frame, logits in engine.propagate(3, "forward"):
        apply_masks(shadow, frame, logits)
    np.testing.assert_array_equal(labels.data, shadow)
    assert c.tracker.prompted_frames(1) == [1, 3]

    # Undo: the second propagation, then the correction, then the first propagation.
    labels.undo()
    labels.undo()
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    assert errors(c) == []


def test_delete_object_removes_its_prompts_and_pixels_only(annotated):
    viewer, c = annotated
    c.add_point(world(1, 30, 20))
    c.new_object()
    c.add_point(world(3, 30, 20))
    labels = c.labels_layer.data
    assert (labels[1] == 1).any() and (labels[3] == 2).any()
    c.delete_object(1)
    assert c.objects == [2]
    assert not (labels == 1).any() and (labels[3] == 2).any()
    assert list(c.points_layer.features["object"]) == [2]


def test_new_object_skips_painted_labels(annotated):
    viewer, c = annotated
    c.labels_layer.data[0, 0, 0] = 7
    assert c.new_object() == 8


def test_2d_image_segments_and_explains_why_it_cannot_propagate(model, stack):
    viewer = ViewerModel()
    image = viewer.add_image(stack[0], name="single")
    c = AnnotatorController(viewer)
    c.set_model(model)
    c.image_layer = image
    c.add_point([30, 20])
    expected = headless(model, stack[0]).set_prompts(0, 1, points=[[20, 30]], labels=[1])[1] > 0
    np.testing.assert_array_equal(c.labels_layer.data == 1, expected)
    before = c.labels_layer.data.copy()
    assert c.propagate("both") is None
    assert any("single 2-D frame" in text for text in errors(c, "warning"))
    np.testing.assert_array_equal(c.labels_layer.data, before)


def test_rgb_stack(model):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, size=(3, 64, 64, 3), dtype=np.uint8)
    data[:, 20:40, 20:40] = 250
    viewer = ViewerModel()
    image = viewer.add_image(data, rgb=True)
    c = AnnotatorController(viewer)
    c.set_model(model)
    c.image_layer = image
    c.add_point([1, 30, 30])
    assert c.labels_layer.data.shape == (3, 64, 64)
    expected = headless(model, data).set_prompts(1, 1, points=[[30, 30]], labels=[1])[1] > 0
    np.testing.assert_array_equal(c.labels_layer.data[1] == 1, expected)


def test_4d_tracks_t_and_holds_z(model):
    data = np.stack([np.roll(np.eye(64, dtype=np.float32) * 900, k, axis=1) for k in range(4)])
    data = np.stack([data * 0.5, data, data * 0.25], axis=1)  # (t=4, z=3, 64, 64)
    viewer = ViewerModel()
    image = viewer.add_image(data)
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 1)
    c = AnnotatorController(viewer)
    c.set_model(model)
    c.image_layer = image
    c.add_point([1, 1, 32, 33])
    c.propagate("both")
    labels = c.labels_layer.data
    assert labels.shape == data.shape
    assert labels[:, [0, 2]].max() == 0, "labels leaked to z slices that were not tracked"
    engine = headless(model, data[:, 1])
    shadow = np.zeros((4, 64, 64), np.uint32)
    apply_masks(shadow, 1, engine.set_prompts(1, 1, points=[[33, 32]], labels=[1]))
    for frame, logits in engine.propagate(1, "both"):
        apply_masks(shadow, frame, logits)
    np.testing.assert_array_equal(labels[:, 1], shadow)


def test_no_image_layer_gives_advice(model):
    viewer = ViewerModel()
    c = AnnotatorController(viewer)
    c.set_model(model)
    assert c.propagate() is None
    assert not c.ensure_layers()
    assert all("No image layer" in text for text in errors(c)) and errors(c)


def test_prompt_outside_the_image_is_ignored_and_kept(annotated):
    viewer, c = annotated
    c.add_point(world(2, 30, 20))
    before = c.labels_layer.data.copy()
    c.add_point(world(2, 300, 20))
    assert any("outside image" in text for text in errors(c, "warning"))
    assert len(c.points_layer.data) == 2
    np.testing.assert_array_equal(c.labels_layer.data, before)


def test_model_file_that_is_not_a_checkpoint_keeps_the_model(annotated, model, tmp_path):
    viewer, c = annotated
    bogus = tmp_path / "notes.pt"
    bogus.write_text("this is not a checkpoint")
    c.load_model("sam2.1_hiera_tiny", str(bogus), device="cpu")
    assert c.model is model
    assert any("notes.pt" in text and "previous model" in text for text in errors(c))
    c.load_model("sam2.1_hiera_tiny", str(tmp_path / "missing.pt"), device="cpu")
    assert any("does not exist" in text for text in errors(c))
    assert c.model is model


def test_prompts_made_before_a_model_are_segmented_once_it_loads(model, stack):
    viewer = ViewerModel()
    image = viewer.add_image(stack)
    c = AnnotatorController(viewer)
    c.image_layer = image
    c.add_point([2, 30, 20])
    assert any("No SAM 2 model" in text for text in errors(c, "warning"))
    assert c.labels_layer.data.max() == 0
    c.set_model(model)
    assert (c.labels_layer.data[2] == 1).any()


def test_adapters_never_import_qt():
    import subprocess
    import sys

    code = (
        "import sys, napari_sam2._napari, napari_sam2._napari.model_loading;"
        "print([m for m in ('qtpy', 'PyQt5', 'napari._qt') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_intensity_modes_reach_the_engine(annotated):
    viewer, c = annotated
    image = c.image_layer
    image.contrast_limits = (300.0, 2000.0)
    c.set_intensity("contrast limits")
    c.add_point(world(2, 30, 20))
    assert c.tracker.frames.intensity_range == pytest.approx((300.0, 2000.0))
    c.set_intensity("fixed", (0.0, 4000.0))
    assert c.tracker.frames.intensity_range == pytest.approx((0.0, 4000.0))
    with pytest.raises(ValueError, match="lo < hi"):
        c.set_intensity("fixed", (5.0, 1.0))


def test_channel_axis_writes_every_channel(model, stack):
    data = np.stack([stack[:3], stack[:3][:, ::-1]], axis=1)  # (z=3, c=2, 64, 64)
    viewer = ViewerModel()
    image = viewer.add_image(data)
    c = AnnotatorController(viewer)
    c.set_model(model)
    c.image_layer = image
    c.set_axes(0, 1)
    c.add_point([1, 0, 30, 20])
    labels = c.labels_layer.data
    assert labels.shape == data.shape
    assert (labels[1, 0] == 1).any()
    np.testing.assert_array_equal(labels[1, 0], labels[1, 1])
    assert labels[[0, 2]].max() == 0
    with pytest.raises(ValueError, match="must differ"):
        c.set_axes(1, 1)
