"""The dock in a real napari window: real Qt mouse and key events, the real thread worker.

Each test follows what a user does (tests/_qt/user.py sends the events); jobs run through the
dock's own ThreadRunner, and the tests wait with qtbot.waitUntil.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QMessageBox

from napari_sam2._qt.widget import AnnotatorWidget

from .user import User

pytestmark = pytest.mark.gui
TIMEOUT_MS = 90_000


class SlowStack:
    """A lazy (dask) stack whose frames take ``delay`` seconds to read off the main thread once
    ``slow`` is set: a long propagation, through the public frame-reading path."""

    def __init__(self, data: np.ndarray, delay: float = 0.3) -> None:
        import dask.array as da

        self.delay, self.slow = delay, False
        self.array = da.from_array(data, chunks=(1, *data.shape[1:])).map_blocks(
            self._read, dtype=data.dtype
        )

    def _read(self, block: np.ndarray) -> np.ndarray:
        if self.slow and threading.current_thread() is not threading.main_thread():
            time.sleep(self.delay)
        return block


def dock(viewer, model=None, precision="float32", prefetch=False):
    from qtpy.QtWidgets import QApplication

    widget = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM 2 annotator")
    for _ in range(5):  # let the dock settle and the canvas take its new size
        QApplication.processEvents()
        time.sleep(0.02)
    widget.state.prefetch = prefetch
    if model is not None:
        widget.state.precision = precision
        widget.annotator.set_model(model)
    return widget


def idle(widget):
    return not widget.state.busy


def frames_with(labels, obj_id=1):
    data = np.asarray(labels.data)
    return {int(f) for f in np.flatnonzero((data == obj_id).any(axis=(1, 2)))}


def said(widget, level=None):
    return [t for lvl, t in widget.annotator.messages if level is None or lvl == level]


@pytest.fixture
def annotating(user, model, stack, qtbot):
    """A shown viewer with the stack, the dock and the model; slice 2 in view."""
    viewer = user.viewer
    viewer.add_image(stack, name="cells")
    widget = dock(viewer, model)
    qtbot.waitUntil(lambda: widget.annotator.layers is not None, timeout=TIMEOUT_MS)
    viewer.dims.set_current_step(0, 2)
    return user, widget


def first_click(user, widget, qtbot) -> None:
    """Click object 1 on slice 2 and wait for its mask."""
    a = widget.annotator
    click_data(user, a.layers.points, 30, 20)
    qtbot.waitUntil(
        lambda: idle(widget) and frames_with(a.layers.labels) == {2}, timeout=TIMEOUT_MS
    )


def propagate_with_shift_p(user, widget, qtbot) -> list[str]:
    """Press Shift+P and wait until the propagation has ended and its bar is hidden; returns
    the dock's progress texts shown meanwhile."""
    seen = []
    widget.state.events.progress.connect(
        lambda e: seen.append(widget.progress_text.value) if e.value is not None else None
    )
    user.key(Qt.Key_P, Qt.ShiftModifier)
    qtbot.waitUntil(
        lambda: idle(widget) and not widget.progress_bar.isVisible(), timeout=TIMEOUT_MS
    )
    return seen


def click_data(user, layer, row, col, **kwargs):
    user.click(user.world_of_data(layer, (row, col)), **kwargs)


def test_plugin_menu_widget_sample_and_the_form(make_napari_viewer):
    import warnings

    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam2", "demo_stack")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 annotator")
    assert not [w for w in caught if "private" in str(w.message)], "no private-API warnings"
    assert isinstance(widget, AnnotatorWidget)
    image = viewer.layers["SAM 2 demo stack"]
    assert widget.image_picker.value is image and widget.state.image is image
    names = [layer.name for layer in viewer.layers]
    assert "SAM 2 demo stack SAM 2 points" in names and "SAM 2 demo stack SAM 2 labels" in names
    # The tracked axis is named as napari's slider is, with its length.
    assert [c for c in widget.tracked_axis.choices] == [None, 0]
    combo = widget.tracked_axis.native
    assert [combo.itemText(i) for i in range(combo.count())] == ["auto (first slider)", "-3 (16)"]
    labels = viewer.layers["SAM 2 demo stack SAM 2 labels"]
    r, g, b, _ = labels.get_color(1)
    assert min(r, g) > 0.8, "object 1 must stand out on grey, not be dark brown"
    assert labels.opacity >= 0.6
    # A 2-D image hides the axis choices; the image picker follows the viewer's layers.
    flat = viewer.add_image(np.zeros((32, 32), np.uint8), name="flat")
    assert flat in widget.image_picker.choices
    widget.image_picker.value = flat
    assert widget.state.image is flat and not widget.tracked_axis.visible


def test_click_shift_click_box_and_keys_as_a_user(annotating, qtbot):
    user, widget = annotating
    a = widget.annotator
    points = a.layers.points
    assert user.viewer.layers.selection.active is points and points.mode == "add"
    click_data(user, points, 30, 20)
    qtbot.waitUntil(
        lambda: idle(widget) and frames_with(a.layers.labels) == {2}, timeout=TIMEOUT_MS
    )
    click_data(user, points, 10, 10, modifiers=Qt.ShiftModifier)
    qtbot.waitUntil(lambda: len(points.data) == 2 and idle(widget), timeout=TIMEOUT_MS)
    assert points.features["label"].tolist() == [1, 0], "Shift+click must add a negative point"
    assert not widget.negative.value

    user.key(Qt.Key_G)
    assert widget.negative.value and not widget.state.positive, "G and the checkbox are one state"
    click_data(user, points, 40, 40)
    qtbot.waitUntil(lambda: len(points.data) == 3 and idle(widget), timeout=TIMEOUT_MS)
    assert points.features["label"].tolist()[-1] == 0
    qtbot.mouseClick(widget.negative.native, Qt.LeftButton)
    assert widget.state.positive

    # N after using a combo box in the dock: the shortcut still reaches the annotator.
    user.choose(widget.direction.native, 1)
    assert widget.state.direction == "forward"
    user.type(Qt.Key_N)
    assert a.state.object_ids == [1, 2] and a.state.current_object == 2
    assert widget.state.direction == "forward", "N must not change the combo box"

    # A box: drag a rectangle in the Shapes layer.
    shapes = a.layers.shapes
    user.viewer.layers.selection.active = shapes
    shapes.mode = "add_rectangle"
    user.drag(user.world_of_data(shapes, (10, 30)), user.world_of_data(shapes, (40, 60)))
    qtbot.waitUntil(lambda: shapes.nshapes == 1 and idle(widget), timeout=TIMEOUT_MS)
    assert shapes.features["object"].tolist() == [2]
    assert frames_with(a.layers.labels, 2) == {2}
    assert not [t for t in said(widget) if "outside" in t]

    # Ctrl+Z with the Shapes layer active undoes the box: pixels and the box itself.
    user.key(Qt.Key_Z, Qt.ControlModifier)
    qtbot.waitUntil(lambda: shapes.nshapes == 0 and idle(widget), timeout=TIMEOUT_MS)
    assert frames_with(a.layers.labels, 2) == set()
    user.key(Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    qtbot.waitUntil(lambda: shapes.nshapes == 1 and idle(widget), timeout=TIMEOUT_MS)
    assert frames_with(a.layers.labels, 2) == {2}


def test_a_click_on_a_cached_slice_is_segmented_at_once_and_slow_ones_go_to_the_worker(
    annotating, qtbot, monkeypatch
):
    from napari_sam2._napari import sync
    from napari_sam2.engine.tracker import Tracker

    user, widget = annotating
    a = widget.annotator
    monkeypatch.setattr(sync, "INLINE_BUDGET_S", 60.0)  # a loaded CI machine is no reason here
    first_click(user, widget, qtbot)  # slice 2's features are now in memory
    on_main = []
    decode = Tracker.set_prompts

    def spy(self, *args, **kwargs):
        on_main.append(threading.current_thread() is threading.main_thread())
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Tracker, "set_prompts", spy)
    user.type(Qt.Key_N)
    click_data(user, a.layers.points, 12, 44)
    # No waiting: the mask is in the layer when the click's event returns.
    assert on_main == [True] and idle(widget)
    assert frames_with(a.layers.labels, 2) == {2}
    assert widget.state.status == "Segmented object 2 on slice 2."

    # Decodings slower than the budget, twice in a row: the next clicks go to the worker.
    monkeypatch.setattr(sync, "INLINE_BUDGET_S", 0.0)
    click_data(user, a.layers.points, 14, 44)
    click_data(user, a.layers.points, 16, 44)
    assert on_main == [True, True, True]
    click_data(user, a.layers.points, 18, 44)
    qtbot.waitUntil(lambda: len(on_main) == 4 and idle(widget), timeout=TIMEOUT_MS)
    assert on_main[-1] is False, "after two slow decodings the click runs in the worker"
    assert len(a.layers.points.data) == 5 and frames_with(a.layers.labels, 2) == {2}


def test_shift_p_propagates_with_progress_and_undo_in_the_worker(annotating, qtbot):
    user, widget = annotating
    a = widget.annotator
    first_click(user, widget, qtbot)
    seen = propagate_with_shift_p(user, widget, qtbot)
    assert frames_with(a.layers.labels) == set(range(5))
    assert any("/ 5 slices" in text and "s per slice" in text for text in seen)
    assert "Propagated 1 object(s) through 5 slice(s)" in widget.status.value
    user.key(Qt.Key_Z, Qt.ControlModifier)  # the Points layer is active
    qtbot.waitUntil(lambda: frames_with(a.layers.labels) == {2}, timeout=TIMEOUT_MS)


def test_a_job_writes_where_it_started_even_if_the_user_switches(user, model, stack, qtbot):
    viewer = user.viewer
    slow = SlowStack(stack)
    first = viewer.add_image(slow.array, name="slow")
    widget = dock(viewer, model)
    a = widget.annotator
    viewer.dims.set_current_step(0, 0)
    click_data(user, a.layers.points, 30, 20)
    qtbot.waitUntil(lambda: idle(widget) and a.layers.labels is not None, timeout=TIMEOUT_MS)
    labels = a.layers.labels
    slow.slow = True
    qtbot.mouseClick(widget.propagate_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(frames_with(labels)) >= 2, timeout=TIMEOUT_MS)
    other = viewer.add_image(stack[:, ::-1].copy(), name="other")
    widget.image_picker.value = other
    viewer.dims.order = (1, 0, 2)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    assert frames_with(labels) == set(range(5)), "the job must finish in its own labels layer"
    other_labels = viewer.layers["other SAM 2 labels"]
    assert not np.asarray(other_labels.data).any(), "nothing may be written into the other image"
    viewer.dims.order = (0, 1, 2)
    widget.image_picker.value = first
    assert viewer.layers.selection.active is a.layers.points


def test_cancel_keeps_the_slices_written_and_the_engine_usable(user, model, stack, qtbot):
    viewer = user.viewer
    slow = SlowStack(stack)
    viewer.add_image(slow.array, name="slow")
    widget = dock(viewer, model)
    a = widget.annotator
    viewer.dims.set_current_step(0, 0)
    click_data(user, a.layers.points, 30, 20)
    qtbot.waitUntil(lambda: idle(widget) and a.layers.labels is not None, timeout=TIMEOUT_MS)
    slow.slow = True
    user.choose(widget.direction.native, 1)  # forward
    qtbot.mouseClick(widget.propagate_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(frames_with(a.layers.labels)) >= 2, timeout=TIMEOUT_MS)
    assert widget.cancel_button.isEnabled()
    qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    written = frames_with(a.layers.labels)
    assert 2 <= len(written) < 5 and written == set(range(len(written)))
    assert any("cancelled" in t and "kept" in t for t in said(widget))
    slow.slow = False
    a.propagate("forward", start=0)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    assert frames_with(a.layers.labels) == set(range(5))


def test_a_failed_load_never_locks_the_dock(annotating, qtbot, monkeypatch):
    from napari.utils import progress

    import napari_sam2.model.registry as registry

    user, widget = annotating

    def offline(*args, **kwargs):
        raise RuntimeError("Could not download: no route to host")

    monkeypatch.setattr(registry, "fetch_checkpoint", offline)
    widget.model_choice.value = "sam2.1_hiera_small"
    qtbot.mouseClick(widget.load_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    assert widget.load_button.enabled and not widget.cancel_button.isEnabled()
    errors = said(widget, "error")
    assert errors and "no route to host" in errors[-1] and "still in use" in errors[-1]
    assert "Loading" not in widget.status.value
    assert not [bar for bar in progress._all_instances if "Download" in str(bar.desc)]
    # The queue goes on: a click still segments.
    click_data(user, widget.annotator.layers.points, 30, 20)
    qtbot.waitUntil(lambda: idle(widget) and frames_with(widget.annotator.layers.labels) == {2},
                    timeout=TIMEOUT_MS)  # fmt: skip


def test_delete_object_asks_and_undo_brings_it_back(annotating, qtbot, monkeypatch):
    user, widget = annotating
    a = widget.annotator
    first_click(user, widget, qtbot)
    asked = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda *args, **kw: asked.append(args) or QMessageBox.Yes
    )
    qtbot.mouseClick(widget.delete_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    assert asked and a.state.object_ids == [] or a.state.object_ids == [2]
    assert frames_with(a.layers.labels) == set()
    user.key(Qt.Key_Z, Qt.ControlModifier)
    qtbot.waitUntil(lambda: 1 in a.state.object_ids and idle(widget), timeout=TIMEOUT_MS)
    assert frames_with(a.layers.labels) == {2}
    assert widget.object_list.count() == len(a.state.object_ids)


def test_object_names_are_editable_and_the_session_survives_reopening(annotating, qtbot):
    user, widget = annotating
    a = widget.annotator
    click_data(user, a.layers.points, 30, 20)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    item = widget.object_list.item(0)
    item.setText("nucleus")
    assert a.state.object_name(1) == "nucleus"
    viewer = user.viewer
    viewer.window.remove_dock_widget(widget)
    again = dock(viewer)
    assert again.annotator is not a and again.annotator.model is a.model
    assert again.annotator.state.object_name(1) == "nucleus"
    assert again.object_list.item(0).text() == "nucleus"


def test_deleting_the_prompt_layer_restores_it_and_erases_nothing(annotating, qtbot):
    user, widget = annotating
    a = widget.annotator
    first_click(user, widget, qtbot)
    before = np.asarray(a.layers.labels.data).copy()
    user.viewer.layers.remove(a.layers.points)
    qtbot.waitUntil(lambda: a.layers.alive(a.layers.points), timeout=TIMEOUT_MS)
    assert len(a.layers.points.data) == 1
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    np.testing.assert_array_equal(np.asarray(a.layers.labels.data), before)


def test_closing_the_viewer_mid_run_stops_the_worker(make_napari_viewer, model, stack, qtbot):
    viewer = make_napari_viewer(show=True)
    slow = SlowStack(stack)
    viewer.add_image(slow.array, name="slow")
    widget = dock(viewer, model)
    user = User(viewer, qtbot)
    a = widget.annotator
    viewer.dims.set_current_step(0, 0)
    click_data(user, a.layers.points, 30, 20)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    slow.slow = True
    job = a.propagate("forward", start=0)
    qtbot.waitUntil(lambda: len(frames_with(a.layers.labels)) >= 2, timeout=TIMEOUT_MS)
    viewer.close()
    assert a.closed and job.finished, "the worker was still running after the viewer closed"


def test_idle_prefetch_prepares_neighbours_and_yields_to_a_click(user, model, qtbot):
    from tests._napari.helpers import small_stack

    viewer = user.viewer
    viewer.add_image(small_stack(frames=14), name="long")
    widget = dock(viewer, model, prefetch=True)
    a = widget.annotator
    assert "float32" in widget.model_status.value, "the dock shows the precision in use"
    viewer.dims.set_current_step(0, 2)
    tracker = a.session().tracker
    qtbot.waitUntil(lambda: {1, 2, 3} <= set(tracker.features.keys()), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: a.jobs.running is None, timeout=TIMEOUT_MS)
    assert len(tracker.features) <= 2 + 7, "prefetch is bounded (and stops when the slice changes)"
    # Moving to slice 10 prepares its neighbours; a click there stops that at its next slice,
    # and the dock never shows busy for prefetching.
    viewer.dims.set_current_step(0, 10)
    prefetching = a.jobs.running
    assert prefetching is not None and prefetching.background
    assert not widget.cancel_button.isEnabled()
    click_data(user, a.layers.points, 30, 20)
    assert prefetching.cancelled, "a click stops prefetching"
    qtbot.waitUntil(lambda: idle(widget) and frames_with(a.layers.labels) == {10},
                    timeout=TIMEOUT_MS)  # fmt: skip
    qtbot.waitUntil(lambda: {9, 11} <= set(tracker.features.keys()), timeout=TIMEOUT_MS)
    widget.prefetch.value = False
    assert not widget.state.prefetch


def test_deleting_the_labels_layer_mid_run_says_what_went(user, model, stack, qtbot):
    viewer = user.viewer
    slow = SlowStack(stack)
    viewer.add_image(slow.array, name="slow")
    widget = dock(viewer, model)
    a = widget.annotator
    viewer.dims.set_current_step(0, 0)
    click_data(user, a.layers.points, 30, 20)
    qtbot.waitUntil(lambda: idle(widget) and a.layers.labels is not None, timeout=TIMEOUT_MS)
    labels = a.layers.labels
    slow.slow = True
    a.propagate("forward", start=0)
    qtbot.waitUntil(lambda: len(frames_with(labels)) >= 2, timeout=TIMEOUT_MS)
    viewer.layers.remove(labels)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    warning = [t for t in said(widget, "warning") if "Labels layer was deleted" in t]
    assert warning and "went with it" in warning[-1] and "kept" not in warning[-1].split(";")[0]
    assert len(a.layers.points.data) == 1 and a.state.object_ids == [1]
    slow.slow = False
    a.propagate("forward", start=0)
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    assert a.layers.labels is not labels and frames_with(a.layers.labels) == set(range(5))


def test_every_object_buttons_in_the_dock(annotating, qtbot):
    user, widget = annotating
    a = widget.annotator
    viewer = user.viewer
    widget.points_per_side.value = 2
    widget.iou_threshold.value = 0.0
    widget.stability_threshold.value = 0.0
    widget.advanced.setChecked(True)
    widget.box_nms.value = 1.0
    before = set(a.state.object_ids)
    qtbot.mouseClick(widget.everything_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: idle(widget) and len(a.state.object_ids) > len(before) + 1,
                    timeout=TIMEOUT_MS)  # fmt: skip
    found = set(a.state.object_ids) - before
    assert widget.object_list.count() == len(a.state.object_ids)
    assert set(np.unique(np.asarray(a.layers.labels.data)[2])) - {0} == found

    # Propagate tracks every found object at once, in the worker, with progress and one undo.
    seen = propagate_with_shift_p(user, widget, qtbot)
    data = np.asarray(a.layers.labels.data)
    for obj_id in found:
        assert frames_with(a.layers.labels, obj_id) - {2}, f"object {obj_id} was not tracked"
    tracked = a.session().tracker.object_ids
    assert found <= set(tracked)
    assert f"Propagated {len(tracked)} object(s)" in widget.status.value
    assert any("/ 5 slices" in text for text in seen)
    user.key(Qt.Key_Z, Qt.ControlModifier)  # the propagation, in one step
    qtbot.waitUntil(
        lambda: not np.asarray(a.layers.labels.data)[[0, 1, 3, 4]].any(), timeout=TIMEOUT_MS
    )
    assert (np.asarray(a.layers.labels.data)[2] == data[2]).all()
    user.key(Qt.Key_Z, Qt.ControlModifier)  # then segment everything, in one step
    qtbot.waitUntil(lambda: set(a.state.object_ids) == before, timeout=TIMEOUT_MS)

    seeds = np.zeros(np.asarray(a.layers.labels.data).shape, np.uint8)
    seeds[3, 10:20, 10:20] = 40
    layer = viewer.add_labels(seeds, name="seeds")
    widget.seed_picker.value = layer
    widget.seed_slices.value = "3"
    qtbot.mouseClick(widget.seed_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: 40 in a.state.object_ids and idle(widget), timeout=TIMEOUT_MS)
    assert a.session().tracker.prompted_frames(40) == [3]
    widget.seed_slices.value = "3-99"
    qtbot.mouseClick(widget.seed_button, Qt.LeftButton)
    assert "not within 0 to 4" in said(widget, "warning")[-1]


def test_the_dock_scrolls_so_every_button_is_in_reach(annotating, qtbot):
    from qtpy.QtCore import QPoint

    user, widget = annotating
    user.viewer.window._qt_window.resize(1200, 700)  # a laptop screen: the form is taller
    qtbot.wait(100)
    area = widget.scroll_area
    assert area.verticalScrollBar().maximum() > 0
    for button in (widget.propagate_button, widget.undo_button, widget.everything_button):
        area.ensureWidgetVisible(button)
        qtbot.wait(20)
        top = button.mapTo(area.viewport(), QPoint(0, 0)).y()
        assert top >= 0 and top + button.height() <= area.viewport().height()
