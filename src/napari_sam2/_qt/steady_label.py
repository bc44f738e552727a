"""Status labels whose text changes never re-lay out the napari window.

A QLabel whose text changes asks its parents for a new layout. In a napari window that request
climbs to the main window, whose relayout (every dock, the canvas) took about 20 ms per label
change on the CPU here, on the main thread, while the worker computes the mask: it made a click on
a cached slice 2.8x slower in the dock than in the engine alone (bench/gui_responsiveness.py). A
label of fixed height whose width the layout ignores keeps the dock's size hint steady, so the
request stops at the dock.
"""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtWidgets import QSizePolicy

__all__ = ["steady_label", "set_text"]


def steady_label(text: str = "", lines: int = 2) -> Label:
    """A word-wrapped magicgui Label ``lines`` lines high that takes the width it is given."""
    label = Label(value=text)
    native = label.native
    native.setWordWrap(True)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    margins = native.contentsMargins()
    height = native.fontMetrics().lineSpacing() * lines + margins.top() + margins.bottom()
    native.setFixedHeight(height)
    native.setToolTip(text)
    return label


def set_text(label: Label, text: str) -> None:
    """Show ``text`` (the whole of it in the tooltip, in case it needs more lines); no-op when the
    text is already shown, so nothing is repainted for nothing."""
    if label.value == text:
        return
    label.value = text
    label.native.setToolTip(text)
