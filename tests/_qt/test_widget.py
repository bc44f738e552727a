"""The dock widget in a real napari viewer (Qt under Xvfb), with work in thread workers."""

import threading
import time

import numpy as np
import pytest

from napari_sam2._napari.model_loading import CHECKPOINT_FILE_CHOICE
from napari_sam2._qt.widget import AnnotatorWidget
from napari_sam2.engine.tracker import Tracker

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


@pytest.fixture
def annotator(make_napari_viewer, model, stack):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="cells")
    widget = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM 2 annotator")
    widget.controller.set_model(model)
    return viewer, widget, widget.controller


@pytest.fixture
def slow_tracking(monkeypatch):
    """Make each propagated frame take at least 0.3 s so a test can act mid-run."""
    original = Tracker._track_frame

    def slow(self, frame, backward):
        time.sleep(0.3)
        return original(self, frame, backward)

    monkeypatch.setattr(Tracker, "_track_frame", slow)


def frames_with(labels, obj_id=1):
    return {int(f) for f in np.flatnonzero((labels.data == obj_id).any(axis=(1, 2)))}


def idle(controller):
    return not controller.busy


def test_plugin_menu_widget_and_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam2", "demo_stack")
    assert viewer.layers[0].data.shape == (16, 128, 128)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 annotator")
    assert isinstance(widget, AnnotatorWidget)
    assert widget.image_combo.currentText() == "SAM 2 demo stack"
    assert widget.controller.image_layer is viewer.layers["SAM 2 demo stack"]
    names = [layer.name for layer in viewer.layers]
    assert "SAM 2 demo stack SAM 2 points" in names and "SAM 2 demo stack SAM 2 labels" in names
    assert widget.axis_combo.count() == 2  # auto + axis 0
    assert widget.model_combo.findText(CHECKPOINT_FILE_CHOICE) >= 0
    assert widget.model_combo.count() == 9


def test_scripted_annotation_runs_off_the_main_thread(annotator, qtbot, monkeypatch):
    viewer, widget, c = annotator
    on_main = []
    for name in ("prepare", "set_prompts", "_track_frame"):
        original = getattr(Tracker, name)

        def spy(self, *args, _original=original, **kwargs):
            on_main.append(threading.current_thread() is threading.main_thread())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Tracker, name, spy)

    viewer.dims.set_current_step(0, 2)
    c.add_point([2, 30, 20])
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    assert frames_with(c.labels_layer) == {2}
    qtbot.mouseClick(widget.propagate_button, 1)  # Qt.LeftButton
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    assert frames_with(c.labels_layer) == set(range(5))
    assert on_main and not any(on_main), "engine work ran on the main thread"
    c.labels_layer.undo()
    assert frames_with(c.labels_layer) == {2}


def test_cancel_keeps_the_slices_already_written(annotator, qtbot, slow_tracking):
    viewer, widget, c = annotator
    viewer.dims.set_current_step(0, 0)
    c.add_point([0, 30, 20])
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    widget.direction_combo.setCurrentText("forward")
    qtbot.mouseClick(widget.propagate_button, 1)
    qtbot.waitUntil(lambda: len(frames_with(c.labels_layer)) >= 2, timeout=TIMEOUT_MS)
    assert widget.cancel_button.isEnabled()
    qtbot.mouseClick(widget.cancel_button, 1)
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    written = frames_with(c.labels_layer)
    assert 2 <= len(written) < 5 and written == set(range(len(written)))
    assert any("cancelled" in text for _, text in c.messages)
    # The engine stays usable: propagating again finishes the stack.
    c.propagate("forward", start=0)
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    assert frames_with(c.labels_layer) == set(range(5))


def test_output_layer_deleted_mid_run(annotator, qtbot, slow_tracking):
    viewer, widget, c = annotator
    viewer.dims.set_current_step(0, 0)
    c.add_point([0, 30, 20])
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    c.propagate("forward")
    labels = c.labels_layer
    qtbot.waitUntil(lambda: len(frames_with(labels)) >= 2, timeout=TIMEOUT_MS)
    viewer.layers.remove(labels)
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    assert any("Labels layer was deleted" in text for level, text in c.messages)
    assert len(c.points_layer.data) == 1 and c.objects == [1]
    c.propagate("forward", start=0)
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    assert c.labels_layer is not labels
    assert frames_with(c.labels_layer) == set(range(5))


def test_closing_the_viewer_mid_run_stops_the_worker(make_napari_viewer, model, stack, qtbot,
                                                     slow_tracking):  # fmt: skip
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="cells")
    widget = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(widget)
    c = widget.controller
    c.set_model(model)
    c.add_point([0, 30, 20])
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    job = c.propagate("forward", start=0)
    qtbot.waitUntil(lambda: len(frames_with(c.labels_layer)) >= 2, timeout=TIMEOUT_MS)
    viewer.close()
    assert c.closed and job.finished, "the worker was still running after the viewer closed"
    qtbot.wait(100)


def test_removing_the_dock_mid_run_stops_the_worker(annotator, qtbot, slow_tracking):
    viewer, widget, c = annotator
    c.add_point([0, 30, 20])
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    job = c.propagate("forward", start=0)
    qtbot.waitUntil(lambda: len(frames_with(c.labels_layer)) >= 2, timeout=TIMEOUT_MS)
    viewer.window.remove_dock_widget(widget)
    assert c.closed and job.finished
    qtbot.wait(100)


def test_model_file_that_is_not_a_checkpoint(annotator, qtbot, tmp_path, model):
    viewer, widget, c = annotator
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"\x00garbage" * 10)
    widget.model_combo.setCurrentText(CHECKPOINT_FILE_CHOICE)
    assert not widget.file_row.isHidden()
    widget.checkpoint_edit.setText(str(bogus))
    qtbot.mouseClick(widget.load_button, 1)
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
    assert c.model is model
    assert any(level == "error" and "weights.pt" in text for level, text in c.messages)


def test_shortcuts_object_list_and_negative_clicks(annotator, qtbot):
    from napari.utils.key_bindings import KeyBinding

    viewer, widget, c = annotator
    points = c.points_layer
    points.keymap[KeyBinding.from_str("N")](points)
    assert c.objects == [1, 2] and c.current_object == 2
    assert widget.object_list.count() == 2
    assert c.labels_layer.selected_label == 2
    widget.object_list.setCurrentRow(0)
    assert c.current_object == 1 and c.labels_layer.selected_label == 1

    class ShiftPress:
        modifiers = ("Shift",)

    c._on_points_press(points, ShiftPress())
    points.add([2, 30, 20])
    assert list(points.features["label"]) == [0]
    np.testing.assert_allclose(points.face_color[0], [1.0, 0.2, 0.2, 1.0])
    points.keymap[KeyBinding.from_str("G")](points)
    assert not c.positive
    qtbot.waitUntil(lambda: idle(c), timeout=TIMEOUT_MS)
