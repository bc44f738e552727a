"""The annotator's keyboard shortcuts, active wherever the keyboard focus is in the window.

napari's layer and viewer key bindings only fire while the canvas has the focus, so after a
user picks something in a combo box of the dock they stop working. Qt shortcuts with window
context fire whatever widget has the focus, except where a text field takes the key (typing an
object's name). Ctrl+Z and Ctrl+Shift+Z act on the annotator when one of its layers or its image
is active, and on the active Labels layer of the user otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QShortcut

__all__ = ["SHORTCUTS", "install_shortcuts"]

#: key sequence -> (annotator method name, description)
SHORTCUTS = {
    "N": ("new_object", "new object"),
    "G": ("toggle_polarity", "toggle negative clicks"),
    "Shift+P": ("propagate", "propagate from the current slice"),
    "Ctrl+Z": ("undo", "undo"),
    "Ctrl+Shift+Z": ("redo", "redo"),
}


def _ours(annotator, layer) -> bool:
    layers = annotator.layers
    if layer is None or layer is annotator.state.image:
        return True
    return layers is not None and layer in (layers.points, layers.shapes, layers.labels)


def _action(annotator, name: str) -> Callable[[], None]:
    def run() -> None:
        if annotator.closed:
            return
        active = annotator.viewer.layers.selection.active
        if name in ("undo", "redo") and not _ours(annotator, active):
            method = getattr(active, name, None)
            if callable(method):
                method()
            return
        if name == "new_object" and not annotator.ensure_layers():
            return
        try:
            getattr(annotator, name)()
        except ValueError as err:  # e.g. no image, or a slice the plan refuses
            annotator.notify("warning", str(err))

    return run


def install_shortcuts(window, annotator) -> list[QShortcut]:
    """Create the shortcuts on ``window`` (napari's main window) for ``annotator``."""
    made = []
    for sequence, (name, _) in SHORTCUTS.items():
        shortcut = QShortcut(QKeySequence(sequence), window)
        shortcut.setContext(Qt.WindowShortcut)
        shortcut.activated.connect(_action(annotator, name))
        made.append(shortcut)
    return made
