"""A user's hands for GUI tests: real Qt mouse and key events on napari's canvas and docks.

The events go through Qt's event system (``QTest`` and ``QApplication.notify``), so napari and
vispy build their own events from them, as they do for a person: vispy ``Key`` modifiers,
napari's world positions, its keymap handler, Qt's focus rules. No hand-made event object
stands in for what napari delivers.

Positions are *world* (row, col) coordinates of the displayed plane (napari's
``viewer.cursor.position`` order, restricted to the two displayed axes), mapped to canvas pixels
with napari's public camera: the camera's ``center`` lies at the middle of the canvas and one
world unit spans ``zoom`` canvas pixels. Qt and vispy both count in logical pixels, so the device
pixel ratio cancels out. Pixels are whole numbers, so a position is reached within half a canvas
pixel: ``0.5 / zoom`` world units.

vispy drops a mouse move that comes less than 10 ms after the previous one, so :class:`User`
waits a little between moves.

Typical use (see ``tests/_qt/test_user.py``)::

    viewer = make_napari_viewer(show=True)
    user = User(viewer, qtbot)
    user.click((12.0, 30.5), modifiers=Qt.ShiftModifier)
    user.drag((5, 5), (20, 40))
    user.key(Qt.Key_N)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QKeyEvent, QMouseEvent
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication, QWidget

__all__ = ["User", "key_text"]

#: vispy ignores mouse moves closer together than 10 ms; wait a bit longer between moves.
MOVE_GAP_MS = 15


class User:
    """Sends real mouse and key events to a napari viewer's canvas and dock widgets.

    Args:
        viewer: a napari Viewer whose window is shown (``make_napari_viewer(show=True)``);
            keyboard focus needs a visible, active window.
        qtbot: pytest-qt's fixture, for waiting.
    """

    def __init__(self, viewer, qtbot) -> None:
        self.viewer = viewer
        self.qtbot = qtbot
        self._buttons = Qt.NoButton
        self.activate()

    # Looked up each time: holding napari's Qt objects would keep the viewer alive after it is
    # closed, which napari's make_napari_viewer fixture reports as a leak.
    @property
    def window(self):
        """napari's main window (a QMainWindow)."""
        return self.viewer.window._qt_window

    @property
    def canvas(self) -> QWidget:
        """The canvas widget that receives mouse and key events."""
        return self.viewer.window._qt_viewer.canvas.native

    # ------------------------------------------------------------------ coordinates

    def canvas_point(self, world_rc: Sequence[float]) -> QPoint:
        """The canvas pixel (logical) of world (row, col) ``world_rc`` of the displayed plane."""
        x, y = self.canvas_xy(world_rc)
        return QPoint(round(x), round(y))

    def canvas_xy(self, world_rc: Sequence[float]) -> tuple[float, float]:
        """The exact (x, y) canvas position (logical pixels, not rounded) of world ``world_rc``."""
        if self.viewer.dims.ndisplay != 2:
            raise ValueError("User maps positions in 2-D views only; set viewer.dims.ndisplay = 2")
        row, col = (float(v) for v in world_rc)
        camera = self.viewer.camera
        center_row, center_col = camera.center[-2:]
        vertical, horizontal = (str(getattr(o, "value", o)) for o in camera.orientation2d)
        down = 1.0 if vertical == "down" else -1.0
        right = 1.0 if horizontal == "right" else -1.0
        x = self.canvas.width() / 2 + right * (col - center_col) * camera.zoom
        y = self.canvas.height() / 2 + down * (row - center_row) * camera.zoom
        return x, y

    def world_of_data(self, layer, data_rc: Sequence[float]) -> tuple[float, float]:
        """World (row, col) of ``layer``'s data (row, col) on the displayed axes (scale and
        translate applied, through the layer's own transform)."""
        point = np.zeros(layer.ndim)
        displayed = list(self.viewer.dims.displayed)[-2:]
        offset = self.viewer.dims.ndim - layer.ndim
        for axis, value in zip(displayed, data_rc):
            point[axis - offset] = value
        world = np.asarray(layer.data_to_world(point))
        return float(world[displayed[0] - offset]), float(world[displayed[1] - offset])

    # ------------------------------------------------------------------ mouse

    def move_to(self, world_rc: Sequence[float], modifiers=Qt.NoModifier) -> None:
        """Move the mouse over world (row, col) ``world_rc`` (with the buttons held now)."""
        self._move(self.canvas_point(world_rc), modifiers)

    def press(self, world_rc, button=Qt.LeftButton, modifiers=Qt.NoModifier) -> None:
        """Move to ``world_rc`` and press ``button`` there. Qt gives the canvas keyboard focus,
        as a person's click does."""
        point = self.canvas_point(world_rc)
        self._move(point, modifiers)
        self._buttons |= button
        QTest.mousePress(self.canvas, button, modifiers, point)
        self.qtbot.wait(MOVE_GAP_MS)

    def release(self, world_rc, button=Qt.LeftButton, modifiers=Qt.NoModifier) -> None:
        """Release ``button`` at ``world_rc``."""
        self._buttons &= ~button
        QTest.mouseRelease(self.canvas, button, modifiers, self.canvas_point(world_rc))
        self.qtbot.wait(MOVE_GAP_MS)

    def click(self, world_rc, button=Qt.LeftButton, modifiers=Qt.NoModifier) -> None:
        """Move to world (row, col) ``world_rc``, press and release ``button`` there, holding
        ``modifiers`` (e.g. ``Qt.ShiftModifier``, ``Qt.ShiftModifier | Qt.ControlModifier``)."""
        self.press(world_rc, button, modifiers)
        self.release(world_rc, button, modifiers)

    def drag(
        self, world_a, world_b, steps: int = 6, button=Qt.LeftButton, modifiers=Qt.NoModifier
    ):
        """Press at ``world_a``, move in ``steps`` steps to ``world_b``, release there (e.g. to
        draw a rectangle in a Shapes layer's ``add_rectangle`` mode)."""
        a = np.asarray(world_a, dtype=float)
        b = np.asarray(world_b, dtype=float)
        self.press(a, button, modifiers)
        for t in np.linspace(0, 1, steps + 1)[1:]:
            self.move_to(a + t * (b - a), modifiers)
        self.release(b, button, modifiers)

    def _move(self, point: QPoint, modifiers) -> None:
        # Presses and releases go through QTest, whose events Qt treats as coming from the
        # system (so a click moves keyboard focus). QTest.mouseMove in Qt 5 carries no buttons,
        # so a move is built here with the buttons held and delivered as QTest would.
        event = QMouseEvent(
            QEvent.MouseMove,
            QPointF(point),
            QPointF(self.canvas.mapToGlobal(point)),
            Qt.NoButton,
            self._buttons,
            modifiers,
        )
        QApplication.instance().notify(self.canvas, event)
        self.qtbot.wait(MOVE_GAP_MS)

    # ------------------------------------------------------------------ keyboard and focus

    def activate(self) -> None:
        """Show and activate the viewer's window, so keyboard focus works as on a desktop."""
        if not self.window.isVisible():
            self.window.show()
        self.window.raise_()
        self.window.activateWindow()
        self.qtbot.waitUntil(self.window.isActiveWindow, timeout=5000)

    def focus(self, widget: QWidget) -> None:
        """Give ``widget`` keyboard focus (as tabbing to it would) and wait until it has it."""
        self.activate()
        widget.setFocus(Qt.OtherFocusReason)
        self.qtbot.waitUntil(lambda: QApplication.focusWidget() is widget, timeout=5000)

    def press_in_dock(self, widget: QWidget) -> None:
        """Click the middle of ``widget`` (e.g. a button or combo box in a dock), which gives it
        focus the way a click does; a combo box opens its list (see :meth:`choose`)."""
        QTest.mouseClick(widget, Qt.LeftButton, Qt.NoModifier, widget.rect().center())
        self.qtbot.wait(MOVE_GAP_MS)

    def choose(self, combo, index: int) -> None:
        """Use a combo box as a person does: click it, pick item ``index`` in the open list with
        the arrow keys, press Return. Focus stays on the combo box afterwards, as in Qt."""
        self.press_in_dock(combo)
        view = combo.view()
        self.qtbot.waitUntil(view.isVisible, timeout=5000)
        steps = index - combo.currentIndex()
        arrow = Qt.Key_Down if steps > 0 else Qt.Key_Up
        for _ in range(abs(steps)):
            QTest.keyClick(view, arrow)
        QTest.keyClick(view, Qt.Key_Return)
        self.qtbot.waitUntil(lambda: not view.isVisible(), timeout=5000)
        self.qtbot.waitUntil(lambda: combo.currentIndex() == index, timeout=5000)

    def key(self, key, modifiers=Qt.NoModifier) -> None:
        """Give the canvas focus (as a click on it would, without clicking), then press and
        release ``key`` (a ``Qt.Key_*``) with ``modifiers`` there."""
        self.focus(self.canvas)
        self._key(self.canvas, key, modifiers)

    def type(self, key, modifiers=Qt.NoModifier) -> QWidget:
        """Press and release ``key`` wherever keyboard focus is now, as a keyboard does; returns
        the widget that received it (the active window when nothing has focus)."""
        target = QApplication.focusWidget() or self.window
        self._key(target, key, modifiers)
        return target

    def _key(self, target: QWidget, key, modifiers) -> None:
        # Built here rather than with QTest.keyClick, whose text ignores the modifiers ("p" for
        # Shift+P, "z" for Ctrl+Z): widgets such as QComboBox and QLineEdit act on the text.
        # Delivered through QApplication.notify, which offers a non-system key press to the
        # shortcuts first (ShortcutOverride) and passes an ignored key on to the parents.
        text = key_text(key, modifiers)
        app = QApplication.instance()
        for kind in (QEvent.KeyPress, QEvent.KeyRelease):
            app.notify(target, QKeyEvent(kind, key, modifiers, text))
        self.qtbot.wait(MOVE_GAP_MS)


def key_text(key, modifiers=Qt.NoModifier) -> str:
    """The text Qt reports on X11 for ``key`` with ``modifiers`` from a real keyboard (checked
    with xdotool under Xvfb): "n", "P" for Shift+P, "\\x1a" for Ctrl+Z (and Ctrl+Shift+Z),
    "\\r" for Return, "\\x1b" for Escape, "\\x7f" for Delete, "" for arrows and modifiers."""
    key = int(key)
    modifiers = Qt.KeyboardModifiers(modifiers)
    if int(Qt.Key_A) <= key <= int(Qt.Key_Z):
        if modifiers & Qt.ControlModifier:
            return chr(key - int(Qt.Key_A) + 1)
        letter = chr(key)
        return letter if modifiers & Qt.ShiftModifier else letter.lower()
    if int(Qt.Key_Space) <= key <= int(Qt.Key_AsciiTilde):
        return chr(key)
    return _SPECIAL_TEXT.get(key, "")


_SPECIAL_TEXT = {
    int(Qt.Key_Return): "\r",
    int(Qt.Key_Enter): "\r",
    int(Qt.Key_Escape): "\x1b",
    int(Qt.Key_Delete): "\x7f",
    int(Qt.Key_Backspace): "\x08",
    int(Qt.Key_Tab): "\t",
}
