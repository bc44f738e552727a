"""The annotator driven by script (inline runner): the pure controller tests.

What a user does with mouse and keys in a real window is tested in tests/_qt with real Qt
events and the real worker.
"""

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam2._napari import Annotator
from napari_sam2.api import segment
from napari_sam2.engine.session import Prompt

from .helpers import apply_masks, headless

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, 3.0, -4.0)


def world(frame, row, col):
    """World coordinates of data position (frame, row, col) of the scaled, translated image."""
    return [TRANSLATE[i] + SCALE[i] * v for i, v in enumerate((frame, row, col))]


def make(model, data, **image_kwargs):
    viewer = ViewerModel()
    image = viewer.add_image(data, name="cells", **image_kwargs)
    a = Annotator(viewer)
    a.state.precision = "float32"  # the engine alone below runs in float32 too
    a.state.prefetch = False  # inline, it would compute every neighbour after each click
    a.set_model(model)
    a.state.image = image
    return viewer, a


@pytest.fixture
def annotated(model, stack):
    viewer, a = make(model, stack, scale=SCALE, translate=TRANSLATE)
    return viewer, a


def said(a, level="error"):
    return [text for lvl, text in a.messages if lvl == level]


def test_point_then_segment_honours_scale_and_translate(annotated, model, stack):
    viewer, a = annotated
    a.add_point(world(2, 30, 20))
    expected = headless(model, stack).set_prompts(2, 1, points=[[20, 30]], labels=[1])[1] > 0
    labels = a.layers.labels.data
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(labels[2] == 1, expected)
    assert labels[[0, 1, 3, 4]].max() == 0
    assert a.layers.labels.selected_label == 1
    assert a.messages == []
    assert viewer.layers.selection.active is a.layers.points


def test_the_status_line_says_what_each_prompt_edit_did(annotated):
    viewer, a = annotated
    a.add_point(world(2, 30, 20))
    assert a.state.status == "Segmented object 1 on slice 2."
    a.rename_object(1, "nucleus")
    a.add_point(world(2, 32, 20))
    assert a.state.status == "Segmented nucleus on slice 2."
    a.layers.points.data = a.layers.points.data[:0]  # the user deletes both clicks
    assert a.state.status == "Cleared nucleus on slice 2."
    assert not (a.layers.labels.data == 1).any()


def test_objects_propagation_correction_and_undo_as_one_story(model, stack):
    stack = stack[:4]
    viewer, a = make(model, stack, scale=SCALE, translate=TRANSLATE)
    engine = headless(model, stack)
    shadow = np.zeros(stack.shape, np.uint32)

    a.add_point(world(1, 30, 20))
    apply_masks(shadow, 1, engine.set_prompts(1, 1, points=[[20, 30]], labels=[1]))
    assert a.new_object() == 2 and a.state.current_object == 2
    assert a.layers.labels.selected_label == 2
    a.add_box(world(1, 10, 30), world(1, 40, 60))
    apply_masks(shadow, 1, engine.set_prompts(1, 2, box=[30, 10, 60, 40]))
    labels = a.layers.labels
    np.testing.assert_array_equal(labels.data, shadow)
    assert (labels.data == 2).any(), "the box object got no pixels"

    viewer.dims.set_point(0, world(1, 0, 0)[0])
    before_propagation = labels.data.copy()
    job = a.propagate("both")
    assert job is not None and job.finished
    for frame, logits in engine.propagate(1, "both"):
        apply_masks(shadow, frame, logits)
    np.testing.assert_array_equal(labels.data, shadow)
    assert "Propagated 2 object(s) through 4 slice(s)" in a.state.status

    # A negative click on slice 3 is a correction; undo takes back pixels AND the click.
    a.select_object(1)
    viewer.dims.set_point(0, world(3, 0, 0)[0])
    before_click = labels.data.copy()
    a.add_point(world(3, 10, 10), positive=False)
    assert len(a.layers.points.data) == 2
    assert a.session().tracker.prompted_frames(1) == [1, 3]
    a.undo()
    np.testing.assert_array_equal(labels.data, before_click)
    assert len(a.layers.points.data) == 1, "undo must take the click back too"
    assert a.session().tracker.prompted_frames(1) == [1], "the engine must forget it as well"
    a.redo()
    assert len(a.layers.points.data) == 2
    assert a.session().tracker.prompted_frames(1) == [1, 3]
    a.undo()
    a.undo()  # the propagation
    np.testing.assert_array_equal(labels.data, before_propagation)
    assert said(a) == []


def test_delete_object_is_undoable_and_comes_back_in_the_list(annotated):
    viewer, a = annotated
    a.add_point(world(1, 30, 20))
    a.new_object()
    a.add_point(world(3, 30, 20))
    labels = a.layers.labels.data
    assert (labels[1] == 1).any() and (labels[3] == 2).any()
    kept = labels.copy()
    a.rename_object(1, "nucleus")
    a.delete_object(1)
    assert a.state.object_ids == [2] and a.state.status == "Deleted nucleus."
    assert not (labels == 1).any() and (labels[3] == 2).any()
    assert list(a.layers.points.features["object"]) == [2]
    a.undo()
    assert a.state.object_ids == [1, 2]
    np.testing.assert_array_equal(a.layers.labels.data, kept)
    assert sorted(a.layers.points.features["object"]) == [1, 2]


def test_clear_slice_and_clear_object(annotated):
    viewer, a = annotated
    a.add_point(world(1, 30, 20))
    a.add_point(world(3, 30, 20))
    viewer.dims.set_point(0, world(1, 0, 0)[0])
    a.clear_slice()
    assert a.state.status == "Cleared object 1 on slice 1."
    labels = a.layers.labels.data
    assert not (labels[1] == 1).any() and (labels[3] == 1).any()
    assert len(a.layers.points.data) == 1
    a.clear_object()
    assert a.state.status == "Cleared object 1 on every slice."
    assert not (labels == 1).any() and len(a.layers.points.data) == 0
    assert a.state.object_ids == [1], "clear object keeps the object in the list"
    a.add_point(world(0, 30, 20))
    viewer.dims.set_point(0, world(0, 0, 0)[0])
    a.clear_slice()
    a.undo()
    assert a.state.status == "Undid clear slice.", "slice 0 is cleared as a slice"
    assert (labels[0] == 1).any()


def test_new_object_skips_painted_labels(annotated):
    viewer, a = annotated
    a.ensure_layers()
    a.layers.labels.data[0, 0, 0] = 7
    assert a.new_object() == 8


def test_brush_edit_becomes_a_mask_prompt_kept_by_propagation(model, stack):
    viewer, a = make(model, stack)
    a.add_point([2, 30, 20])
    viewer.dims.set_current_step(0, 2)
    labels = a.layers.labels
    ours = labels.data[2] == 1
    assert ours.sum() > 50
    # The user erases part of object 1 on slice 2 with napari's own brush (history recorded).
    rows, cols = np.nonzero(ours)
    erase = (np.full(rows.size // 2, 2), rows[: rows.size // 2], cols[: rows.size // 2])
    with labels.block_history():
        labels.data_setitem(erase, 0)
    edited = labels.data[2].copy()
    assert a.session().tracker.prompted_frames(1) == [2]
    assert a.state.status == "Painted object 1 on slice 2: it is that slice's prompt now."
    a.propagate("both")
    np.testing.assert_array_equal(labels.data[2], edited)  # the edit is never overwritten
    assert (labels.data[3] == 1).any()
    a.undo()  # the propagation
    a.undo()  # the brush edit
    np.testing.assert_array_equal(labels.data[2] == 1, ours)


def test_deleting_the_points_layer_keeps_prompts_and_pixels(annotated):
    viewer, a = annotated
    a.add_point(world(2, 30, 20))
    labels = a.layers.labels.data.copy()
    points = a.layers.points
    viewer.layers.remove(points)
    assert any("deleted with 1 prompt" in text for text in said(a, "warning"))
    a.propagate("forward", start=2)
    assert (a.layers.labels.data[2] == 1).sum() == (labels[2] == 1).sum()
    assert (a.layers.labels.data[3] == 1).any(), "the deleted layer's click still propagates"
    a.restore_layers()
    assert len(a.layers.points.data) == 1 and a.layers.points is not points


def test_switching_images_selects_their_own_prompt_layers(model, stack):
    viewer, a = make(model, stack)
    first = a.state.image
    a.add_point([2, 30, 20])
    second = viewer.add_image(stack[:, ::-1], name="flipped")
    a.state.image = second
    assert viewer.layers.selection.active is a.layers.points
    assert a.layers.points.name == "flipped SAM 2 points"
    assert a.state.object_ids == [] or a.state.object_ids == [1]
    a.state.image = first
    assert viewer.layers.selection.active.name == "cells SAM 2 points"
    assert a.state.object_ids == [1]


def test_another_orientation_never_reruns_the_prompts(model, stack):
    viewer, a = make(model, stack)
    a.add_point([2, 30, 20])
    before = a.layers.labels.data.copy()
    viewer.dims.order = (1, 0, 2)  # a coronal view: rows are z
    np.testing.assert_array_equal(a.layers.labels.data, before)
    assert any("another view orientation" in text for text in said(a, "warning"))
    assert not any("outside image" in text for text in said(a, "warning"))
    viewer.dims.order = (0, 1, 2)
    np.testing.assert_array_equal(a.layers.labels.data, before)


def test_gui_and_api_give_the_same_labels_for_the_same_prompts(model, stack):
    viewer, a = make(model, stack)
    a.add_point([1, 30, 20])
    a.new_object()
    a.add_point([1, 32, 24])  # overlaps object 1: the higher logit wins in both
    viewer.dims.set_current_step(0, 1)
    a.propagate("both")
    prompts = [Prompt(1, 1, [[20, 30]], [1]), Prompt(1, 2, [[24, 32]], [1])]
    expected = segment(stack, prompts=prompts, model=model, device="cpu", precision="float32")
    np.testing.assert_array_equal(a.layers.labels.data, expected)


def test_2d_image_segments_and_explains_why_it_cannot_propagate(model, stack):
    viewer, a = make(model, stack[0])
    a.add_point([30, 20])
    expected = headless(model, stack[0]).set_prompts(0, 1, points=[[20, 30]], labels=[1])[1] > 0
    np.testing.assert_array_equal(a.layers.labels.data == 1, expected)
    assert a.propagate("both") is None
    assert any("single 2-D slice" in text for text in said(a, "warning"))
    assert a.axis_choices() == []


def test_4d_tracks_t_and_holds_z(model):
    data = np.stack([np.roll(np.eye(64, dtype=np.float32) * 900, k, axis=1) for k in range(4)])
    data = np.stack([data * 0.5, data, data * 0.25], axis=1)  # (t=4, z=3, 64, 64)
    viewer = ViewerModel()
    image = viewer.add_image(data)
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 1)
    a = Annotator(viewer)
    a.state.update({"precision": "float32", "prefetch": False})
    a.set_model(model)
    a.state.image = image
    assert [text for text, _ in a.axis_choices()] == ["-4 (4)", "-3 (3)"]  # as the sliders
    a.add_point([1, 1, 32, 33])
    a.propagate("both")
    labels = a.layers.labels.data
    assert labels[:, [0, 2]].max() == 0, "labels leaked to z slices that were not tracked"
    engine = headless(model, data[:, 1])
    shadow = np.zeros((4, 64, 64), np.uint32)
    apply_masks(shadow, 1, engine.set_prompts(1, 1, points=[[33, 32]], labels=[1]))
    for frame, logits in engine.propagate(1, "both"):
        apply_masks(shadow, frame, logits)
    np.testing.assert_array_equal(labels[:, 1], shadow)


def test_intensity_modes_reach_the_engine(annotated):
    viewer, a = annotated
    a.state.image.contrast_limits = (300.0, 2000.0)
    a.state.intensity = "contrast limits"
    a.add_point(world(2, 30, 20))
    assert a.session().tracker.frames.intensity_range == pytest.approx((300.0, 2000.0))
    a.state.update({"intensity": "fixed", "fixed_range": (0.0, 4000.0)})
    assert a.session().tracker.frames.intensity_range == pytest.approx((0.0, 4000.0))
    a.state.fixed_range = (5.0, 1.0)
    with pytest.raises(ValueError, match="needs low < high"):
        a.session()


def test_prompts_made_before_a_model_are_segmented_once_it_loads(stack, model):
    viewer = ViewerModel()
    image = viewer.add_image(stack)
    a = Annotator(viewer)
    a.state.prefetch = False
    a.state.image = image
    a.add_point([2, 30, 20])
    assert any("No SAM 2 model" in text for text in said(a, "warning"))
    assert a.layers.labels.data.max() == 0
    a.set_model(model)
    assert (a.layers.labels.data[2] == 1).any()


def test_a_failing_job_reports_and_the_queue_goes_on(annotated, monkeypatch):
    viewer, a = annotated
    from napari_sam2.engine.tracker import Tracker

    def broken(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(Tracker, "set_prompts", broken)
    a.add_point(world(2, 30, 20))
    assert any("Out of memory" in text and "smaller input size" in text for text in said(a))
    assert not a.state.busy
    monkeypatch.undo()
    a.add_point(world(2, 31, 20))
    assert (a.layers.labels.data[2] == 1).any(), "the queue must go on after a failure"


def test_a_bad_checkpoint_keeps_the_model_and_says_so(annotated, model, tmp_path):
    viewer, a = annotated
    bogus = tmp_path / "notes.pt"
    bogus.write_text("this is not a checkpoint")
    a.state.update({"model_name": "sam2.1_hiera_tiny", "checkpoint": str(bogus), "device": "cpu"})
    a.load_model()
    assert a.model is model
    text = said(a)[-1]
    assert "notes.pt" in text and "is still in use" in text
    assert not a.state.busy and "Loading" not in a.state.status


def test_adapters_never_import_qt():
    import subprocess
    import sys

    code = (
        "import sys, napari_sam2._napari, napari_sam2._napari.model_loading;"
        "print([m for m in ('qtpy', 'PyQt5', 'napari._qt') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_save_and_load_prompts_round_trip_with_names_boxes_and_masks(model, stack, tmp_path):
    viewer, a = make(model, stack)
    a.add_point([1, 30, 20])
    a.rename_object(1, "nucleus")
    a.new_object()
    a.add_box([3, 10, 30], [3, 40, 60])
    viewer.dims.set_current_step(0, 2)
    labels = a.layers.labels
    with labels.block_history():  # the user paints object 1 on slice 2 with the brush
        labels.data_setitem((np.full(9, 2), np.arange(9) + 5, np.full(9, 7)), 1)
    assert a.session().tracker.prompted_frames(1) == [1, 2]
    path = tmp_path / "cells.sam2.json"
    assert a.save_prompts(path)
    assert not a.save_prompts(path), "an existing file is never replaced without overwrite"
    assert "already exists" in said(a)[-1] or "exists" in said(a)[-1]
    expected = labels.data.copy()

    other_viewer, b = make(model, stack)
    objects_before = b.state.objects
    assert b.load_prompts(path)
    assert [(o.id, o.name) for o in b.state.objects] == [(1, "nucleus"), (2, "object 2")]
    assert b.layers.shapes.nshapes == 1 and len(b.layers.points.data) == 1
    assert b.session().tracker.prompted_frames(1) == [1, 2]
    np.testing.assert_array_equal(b.layers.labels.data, expected)
    b.undo()
    assert b.state.objects == objects_before and b.layers.labels.data.max() == 0

    bad = tmp_path / "bad.sam2.json"
    bad.write_text("{not json")
    assert not b.load_prompts(bad)
    assert "bad.sam2.json" in said(b)[-1]


@pytest.mark.parametrize("roi", [False, True], ids=["whole slices", "regions"])
def test_the_cli_replays_the_prompt_file_to_the_same_labels(
    model, stack, tmp_path, monkeypatch, roi
):
    import tifffile

    from napari_sam2 import cli
    from napari_sam2.engine import region_tracker
    from napari_sam2.engine.prompt_store import read_prompt_file

    viewer, a = make(model, stack)
    a.state.roi = roi
    a.add_point([1, 30, 20])
    a.new_object()
    a.add_box([1, 10, 30], [1, 40, 60])
    viewer.dims.set_current_step(0, 1)
    a.propagate("both")
    prompts = tmp_path / "cells.sam2.json"
    assert a.save_prompts(prompts)
    settings = read_prompt_file(prompts).settings
    assert settings["roi"] is roi and settings["level"] == 0
    tifffile.imwrite(tmp_path / "cells.tif", stack)
    monkeypatch.setattr(cli, "_build_model", lambda *args: model)
    regions = []

    class CountedRegionTracker(region_tracker.RegionTracker):
        def __init__(self, *args, **kwargs):
            regions.append(kwargs.get("margin"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(region_tracker, "RegionTracker", CountedRegionTracker)

    def replay(*extra):
        out = tmp_path / f"labels{len(extra)}.tif"
        status = cli.main(
            ["segment", str(tmp_path / "cells.tif"), "--prompts", str(prompts), "--out", str(out),
             "--precision", "float32", "--device", "cpu", "-q", *extra]
        )  # fmt: skip
        assert status == 0
        return tifffile.imread(out)

    np.testing.assert_array_equal(replay(), a.layers.labels.data)
    assert len(regions) == int(roi), "the file's region setting is replayed"
    if roi:
        replay("--no-roi")
        assert len(regions) == 1, "--no-roi overrides the file"


LOOSE_AMG = {  # random weights: keep what the generator finds
    "points_per_side": 2,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}


def test_segment_everything_makes_objects_that_propagation_tracks(model, stack):
    viewer, a = make(model, stack)
    viewer.dims.set_current_step(0, 2)
    before = a.state.object_ids
    assert a.segment_everything(**LOOSE_AMG) is not None
    new = [i for i in a.state.object_ids if i not in before]
    assert len(new) >= 2, "the generator found objects"
    labels = a.layers.labels.data
    assert set(np.unique(labels[2])) - {0} == set(new)
    assert a.session().tracker.object_ids == new
    a.propagate("forward", max_frames=2)
    assert (labels[3] > 0).any() and not (labels[4] > 0).any()
    a.undo()
    a.undo()
    assert a.state.object_ids == before and labels.max() == 0
    assert a.segment_everything(points_per_side=0) is None
    assert "points_per_side" in said(a)[-1]
    # No stability score is above 1: a warning, and the status line says so too.
    assert a.segment_everything(**{**LOOSE_AMG, "stability_score_thresh": 1.5}) is not None
    assert "found no object on slice 2" in said(a, "warning")[-1]
    assert a.state.status == "Segment everything found no object on slice 2."


def test_objects_from_labels_keep_their_ids_on_every_seeded_slice(model, stack):
    viewer, a = make(model, stack)
    seeds = np.zeros(stack.shape, np.uint16)
    seeds[1, 10:20, 10:20] = 5
    seeds[3, 12:22, 12:22] = 5
    seeds[3, 40:50, 40:50] = 9
    layer = viewer.add_labels(seeds, name="seeds")
    made = a.objects_from_labels(layer)
    assert made == 2 and {5, 9} <= set(a.state.object_ids)
    tracker = a.session().tracker
    assert tracker.prompted_frames(5) == [1, 3] and tracker.prompted_frames(9) == [3]
    np.testing.assert_array_equal(a.layers.labels.data[1] == 5, seeds[1] == 5)
    assert a.objects_from_labels(layer, [3]) == 0  # known ids: more conditioning, no new object
    with pytest.raises(ValueError, match="has shape"):
        a.objects_from_labels(viewer.add_labels(np.zeros((2, 8, 8), np.uint8)))
