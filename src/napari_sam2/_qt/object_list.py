"""The object list of the dock: one row per object, its colour, and an editable name.

magicgui has no list widget with editable rows, so this part is plain Qt. It mirrors the
state's ``objects`` and ``current_object`` and sends selections and renames back as actions.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem

__all__ = ["ObjectList"]


class ObjectList(QListWidget):
    """The annotator's objects; double-click (or F2) a row to rename it."""

    def __init__(self, annotator, parent=None) -> None:
        super().__init__(parent)
        self.annotator = annotator
        self.setMaximumHeight(140)
        self.setEditTriggers(
            QAbstractItemView.DoubleClicked
            | QAbstractItemView.EditKeyPressed
            | QAbstractItemView.SelectedClicked
        )
        self._refreshing = False
        state = annotator.state
        state.events.objects.connect(self.refresh)
        state.events.current_object.connect(self.refresh)
        self.currentItemChanged.connect(self._on_choice)
        self.itemChanged.connect(self._on_rename)
        self.refresh()

    def disconnect_state(self) -> None:
        state = self.annotator.state
        state.events.objects.disconnect(self.refresh)
        state.events.current_object.disconnect(self.refresh)

    def refresh(self, _event=None) -> None:
        self._refreshing = True
        try:
            self.clear()
            annotator = self.annotator
            layers = annotator.layers
            for info in annotator.state.objects:
                item = QListWidgetItem(info.name)
                item.setData(Qt.UserRole, info.id)
                item.setFlags(item.flags() | Qt.ItemIsEditable)
                item.setToolTip(f"label {info.id}")
                rgba = layers.colour(info.id) if layers is not None else (1, 1, 1, 1)
                pixmap = QPixmap(14, 14)
                pixmap.fill(QColor.fromRgbF(*[float(c) for c in rgba]))
                item.setIcon(QIcon(pixmap))
                self.addItem(item)
                if info.id == annotator.state.current_object:
                    self.setCurrentItem(item)
        finally:
            self._refreshing = False

    def _on_choice(self, item, _previous=None) -> None:
        if self._refreshing or item is None:
            return
        self.annotator.select_object(int(item.data(Qt.UserRole)))

    def _on_rename(self, item) -> None:
        if self._refreshing or item is None:
            return
        self.annotator.rename_object(int(item.data(Qt.UserRole)), item.text())
