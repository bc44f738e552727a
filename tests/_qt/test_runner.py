"""The Qt runner pauses animated spinners while a propagation runs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_running_spinners_are_paused_and_others_left_alone(qtbot):
    from napari.resources._icons import LOADING_GIF_PATH
    from qtpy.QtGui import QMovie
    from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

    from napari_sam2._qt.runner import paused_spinners

    window = QWidget()
    qtbot.addWidget(window)
    layout = QVBoxLayout(window)
    running, idle = QLabel(), QLabel()
    for label in (running, idle):
        label.setMovie(QMovie(LOADING_GIF_PATH))
        layout.addWidget(label)
    running.movie().start()
    window.show()

    paused = paused_spinners()
    assert running.movie() in paused
    assert running.movie().state() == QMovie.MovieState.Paused
    assert idle.movie() not in paused
    assert idle.movie().state() == QMovie.MovieState.NotRunning
