"""The dock's "Work on a region around the object" checkbox, with real clicks in a real napari
window and the dock's own thread worker (issue 10, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_sam2.engine.region_tracker import RegionTracker
from napari_sam2.engine.tracker import Tracker
from tests.test_roi_cli import CLICK, SIDE, big_stack  # a disc on 2048 x 2048 slices

from .test_widget import TIMEOUT_MS, click_data, dock, frames_with, idle

pytestmark = pytest.mark.gui


def outside(region) -> np.ndarray:
    mask = np.ones((SIDE, SIDE), bool)
    mask[region.slices] = False
    return mask


def test_the_region_checkbox_segments_and_propagates_in_regions(user, model, qtbot):
    viewer = user.viewer
    viewer.add_image(big_stack(), name="large")
    widget = dock(viewer, model)
    a = widget.annotator
    qtbot.waitUntil(lambda: a.layers is not None, timeout=TIMEOUT_MS)
    viewer.dims.set_current_step(0, 1)
    assert not widget.roi.value and not widget.state.roi

    qtbot.mouseClick(widget.roi.native, Qt.LeftButton)  # a person ticks the box
    assert widget.roi.value and widget.state.roi
    click_data(user, a.layers.points, *CLICK)
    labels = a.layers.labels
    qtbot.waitUntil(lambda: idle(widget) and frames_with(labels) == {1}, timeout=TIMEOUT_MS)
    tracker = a.session().tracker
    assert isinstance(tracker, RegionTracker)
    region = tracker.region(1, 1)
    assert region.height <= SIDE // 2 and region.width <= SIDE // 2
    data = np.asarray(labels.data)
    assert data[1][region.slices].any()
    assert not data[1][outside(region)].any(), "the mask stays inside the object's region"

    qtbot.mouseClick(widget.propagate_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: idle(widget) and frames_with(labels) == {0, 1, 2}, timeout=TIMEOUT_MS)
    data = np.asarray(labels.data)
    for frame in range(3):
        assert not data[frame][outside(tracker.region(1, frame))].any()

    # Unticked: the same prompts go to a plain tracker over the whole slices.
    qtbot.mouseClick(widget.roi.native, Qt.LeftButton)
    assert not widget.state.roi
    qtbot.waitUntil(lambda: idle(widget), timeout=TIMEOUT_MS)
    plain = a.session().tracker
    assert type(plain) is Tracker and plain.object_ids == [1]
