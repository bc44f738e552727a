"""The dock's "keep image features on disk" in real napari windows: real clicks and keys, the
real thread worker. A second viewer on the same image finds the store, says so, and its first
click computes no image features."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_sam2.engine.tracker import Tracker
from tests._napari.test_feature_folder import EncoderCalls

from .test_widget import TIMEOUT_MS, click_data, dock, frames_with, idle
from .user import User

pytestmark = pytest.mark.gui
zarr = pytest.importorskip("zarr")

_KEYS = {"/": Qt.Key_Slash, "-": Qt.Key_Minus, "_": Qt.Key_Underscore, ".": Qt.Key_Period}


def type_text(user: User, text: str) -> None:
    """Type ``text`` (ASCII letters, digits, / - _ .) into the focused widget, key by key."""
    for char in text:
        shift = Qt.ShiftModifier if char.isupper() else Qt.NoModifier
        if char.isascii() and char.isalnum():
            key = getattr(Qt, f"Key_{char.upper()}")
        else:
            key = _KEYS[char]
        user.type(key, shift)


def keep_features_in(user: User, widget, folder) -> None:
    """Type the folder (Return), then tick "Keep image features on disk"."""
    line = widget.feature_folder.line_edit.native
    assert line.isVisible()
    user.press_in_dock(line)
    user.type(Qt.Key_A, Qt.ControlModifier)
    user.type(Qt.Key_Delete)
    type_text(user, str(folder))
    user.type(Qt.Key_Return)
    user.qtbot.waitUntil(lambda: widget.state.feature_folder == str(folder), timeout=5000)
    user.press_in_dock(widget.keep_features.native)
    user.qtbot.waitUntil(lambda: widget.state.feature_store, timeout=5000)


def open_image(user: User, model, stack, qtbot, folder):
    viewer = user.viewer
    viewer.add_image(stack, name="cells")
    widget = dock(viewer, model)
    qtbot.waitUntil(lambda: widget.annotator.layers is not None, timeout=TIMEOUT_MS)
    keep_features_in(user, widget, folder)
    qtbot.waitUntil(lambda: idle(widget) and bool(widget.state.store_note), timeout=TIMEOUT_MS)
    viewer.dims.set_current_step(0, 2)
    return widget


def test_a_second_session_finds_the_store_and_its_first_click_computes_nothing(
    make_napari_viewer, model, stack, qtbot, tmp_path, monkeypatch
):
    folder = tmp_path / "features"
    monkeypatch.setenv("NAPARI_SAM2_FEATURES", str(tmp_path / "default"))
    calls = EncoderCalls(model)
    try:
        first = User(make_napari_viewer(show=True), qtbot)
        widget = open_image(first, model, stack, qtbot, folder)
        assert "kept on disk" in widget.store_note.value
        assert widget.store_note.native.isVisible()
        a = widget.annotator
        click_data(first, a.layers.points, 30, 20)
        qtbot.waitUntil(
            lambda: idle(widget) and frames_with(a.layers.labels) == {2}, timeout=TIMEOUT_MS
        )
        assert calls.count == 1
        stores = list(folder.glob("*.zarr"))
        assert len(stores) == 1

        # A new viewer on the same image, as after a restart.
        calls.count = 0
        second = User(make_napari_viewer(show=True), qtbot)
        widget2 = open_image(second, model, stack.copy(), qtbot, folder)
        note = widget2.store_note.value
        assert "found on disk" in note and stores[0].name in note and "1 of 5" in note
        b = widget2.annotator
        click_data(second, b.layers.points, 30, 20)
        qtbot.waitUntil(
            lambda: idle(widget2) and frames_with(b.layers.labels) == {2}, timeout=TIMEOUT_MS
        )
        assert calls.count == 0, "the first click after reopening computed image features"
        # The mask is the engine's with the stored features (canvas rounding moves the click
        # a little between the two windows, so it is not compared with the first one's).
        prompt = b.read_prompts().prompts[(1, 2)]
        engine = Tracker(model, stack, feature_store=stores[0], fill_feature_store=False)
        expected = engine.set_prompts(2, 1, points=prompt.points, labels=prompt.labels)[1] > 0
        np.testing.assert_array_equal(np.asarray(b.layers.labels.data[2]) == 1, expected)
        assert calls.count == 0
        # A slice not in the store is computed once, and kept for the next session.
        second.viewer.dims.set_current_step(0, 4)
        click_data(second, b.layers.points, 30, 20)
        qtbot.waitUntil(
            lambda: idle(widget2) and 4 in frames_with(b.layers.labels), timeout=TIMEOUT_MS
        )
        assert calls.count == 1
        assert b.session().tracker.feature_store.has(4)
        # Unticking the setting hides the note.
        second.press_in_dock(widget2.keep_features.native)
        qtbot.waitUntil(lambda: not widget2.state.feature_store, timeout=5000)
        assert not widget2.store_note.native.isVisible()
        assert not (tmp_path / "default").exists(), "nothing went to the default folder"
    finally:
        calls.close()
