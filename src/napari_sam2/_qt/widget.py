"""The "SAM 2 annotator" dock widget: a thin Qt shell over :class:`AnnotatorController`.

Every callback here only reads a control and calls the controller; all state and logic live in
``napari_sam2._napari``. Work runs in napari thread workers through :class:`ThreadRunner`.
"""

from __future__ import annotations

import contextlib

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._napari.controller import INTENSITY_MODES, AnnotatorController
from .._napari.model_loading import CHECKPOINT_FILE_CHOICE
from ..engine.device import available_devices
from ..model import PRESET_NAMES
from .runner import ThreadRunner

__all__ = ["AnnotatorWidget"]

DEFAULT_PRESET = "sam2.1_hiera_tiny"
_AUTO_AXIS = "auto (first slider)"
_NO_CHANNEL = "none"


class AnnotatorWidget(QWidget):
    """Dock widget: image, model, slicing, objects, propagation.

    Args:
        napari_viewer: the viewer (napari passes it by this name).
        runner: job runner; a :class:`ThreadRunner` by default.
    """

    def __init__(self, napari_viewer, runner=None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.controller = AnnotatorController(napari_viewer, runner or ThreadRunner())
        self._refreshing = False
        self._watched: QObject | None = None
        self._build()
        self._connect()
        self._refresh_images()
        self._watch_window()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)

        self.image_combo = QComboBox()
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        layout.addLayout(form)

        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        self.model_combo = QComboBox()
        self.model_combo.addItems([*PRESET_NAMES, CHECKPOINT_FILE_CHOICE])
        self.model_combo.setCurrentText(DEFAULT_PRESET)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("path/to/checkpoint.pt")
        self.browse_button = QPushButton("Browse…")
        file_row = QHBoxLayout()
        file_row.addWidget(self.checkpoint_edit)
        file_row.addWidget(self.browse_button)
        self.file_row = QWidget()
        self.file_row.setLayout(file_row)
        file_row.setContentsMargins(0, 0, 0, 0)
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.size_spin = QSpinBox()
        self.size_spin.setRange(0, 4096)
        self.size_spin.setSingleStep(32)
        self.size_spin.setSpecialValueText("preset (1024)")
        self.load_button = QPushButton("Load model")
        self.model_status = QLabel("No model loaded.")
        self.model_status.setWordWrap(True)
        model_form.addRow("Model", self.model_combo)
        self.file_label = QLabel("File")
        model_form.addRow(self.file_label, self.file_row)
        model_form.addRow("Device", self.device_combo)
        model_form.addRow("Input size", self.size_spin)
        model_form.addRow(self.load_button)
        model_form.addRow(self.model_status)
        layout.addWidget(model_box)
        self._on_model_choice()

        slicing = QGroupBox("Slices")
        slicing_form = QFormLayout(slicing)
        self.axis_combo = QComboBox()
        self.channel_combo = QComboBox()
        self.intensity_combo = QComboBox()
        self.intensity_combo.addItems(list(INTENSITY_MODES))
        self.low_spin = QDoubleSpinBox()
        self.high_spin = QDoubleSpinBox()
        for spin in (self.low_spin, self.high_spin):
            spin.setRange(-1e12, 1e12)
            spin.setDecimals(3)
            spin.setEnabled(False)
        self.high_spin.setValue(1.0)
        range_row = QHBoxLayout()
        range_row.addWidget(self.low_spin)
        range_row.addWidget(self.high_spin)
        slicing_form.addRow("Tracked axis", self.axis_combo)
        slicing_form.addRow("Channel axis", self.channel_combo)
        slicing_form.addRow("Intensity", self.intensity_combo)
        slicing_form.addRow("Fixed range", range_row)
        layout.addWidget(slicing)

        objects = QGroupBox("Objects")
        objects_layout = QVBoxLayout(objects)
        self.object_list = QListWidget()
        self.object_list.setMaximumHeight(120)
        buttons = QHBoxLayout()
        self.new_button = QPushButton("New object (N)")
        self.delete_button = QPushButton("Delete object")
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.delete_button)
        self.negative_check = QCheckBox("Clicks are negative (G; Shift-click flips one)")
        self.protect_check = QCheckBox("Never overwrite other labels")
        self.protect_check.setChecked(True)
        objects_layout.addWidget(self.object_list)
        objects_layout.addLayout(buttons)
        objects_layout.addWidget(self.negative_check)
        objects_layout.addWidget(self.protect_check)
        layout.addWidget(objects)

        propagation = QGroupBox("Propagation")
        propagation_form = QFormLayout(propagation)
        self.direction_combo = QComboBox()
        self.direction_combo.addItems(["both", "forward", "backward"])
        self.frames_spin = QSpinBox()
        self.frames_spin.setRange(0, 1_000_000)
        self.frames_spin.setSpecialValueText("whole axis")
        self.propagate_button = QPushButton("Propagate (Shift+P)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        run_row = QHBoxLayout()
        run_row.addWidget(self.propagate_button)
        run_row.addWidget(self.cancel_button)
        propagation_form.addRow("Direction", self.direction_combo)
        propagation_form.addRow("Frames per direction", self.frames_spin)
        propagation_form.addRow(run_row)
        layout.addWidget(propagation)
        layout.addStretch(1)

    def _connect(self) -> None:
        c = self.controller
        self.image_combo.currentIndexChanged.connect(self._on_image_choice)
        self.model_combo.currentTextChanged.connect(self._on_model_choice)
        self.browse_button.clicked.connect(self._browse)
        self.load_button.clicked.connect(self._load_model)
        self.axis_combo.currentIndexChanged.connect(self._on_axes_choice)
        self.channel_combo.currentIndexChanged.connect(self._on_axes_choice)
        self.intensity_combo.currentTextChanged.connect(self._on_intensity_choice)
        self.low_spin.editingFinished.connect(self._on_intensity_choice)
        self.high_spin.editingFinished.connect(self._on_intensity_choice)
        self.object_list.currentItemChanged.connect(self._on_object_choice)
        self.new_button.clicked.connect(self._new_object)
        self.delete_button.clicked.connect(self._delete_object)
        self.negative_check.toggled.connect(self._on_polarity_choice)
        self.protect_check.toggled.connect(lambda on: setattr(c, "protect", bool(on)))
        self.propagate_button.clicked.connect(self._propagate)
        self.cancel_button.clicked.connect(c.cancel)

        layers = self.viewer.layers.events
        layers.inserted.connect(self._refresh_images)
        layers.removed.connect(self._refresh_images)
        layers.moved.connect(self._refresh_images)
        self.viewer.dims.events.order.connect(self._refresh_axes)
        self.viewer.dims.events.ndisplay.connect(self._refresh_axes)
        c.events.objects.connect(self._refresh_objects)
        c.events.current_object.connect(self._refresh_objects)
        c.events.busy.connect(self._on_busy)
        c.events.model.connect(self._on_model_loaded)
        c.events.image.connect(self._refresh_axes)

    # ------------------------------------------------------------------ images
    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, _event=None) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        try:
            images = self._image_layers()
            current = self.controller.image_layer
            if current not in images:
                current = self.controller.default_image_layer()
            self.image_combo.clear()
            for layer in images:
                self.image_combo.addItem(layer.name)
            if current is not None:
                self.image_combo.setCurrentIndex(images.index(current))
        finally:
            self._refreshing = False
        self._on_image_choice()

    def _on_image_choice(self, _index=None) -> None:
        if self._refreshing:
            return
        images = self._image_layers()
        index = self.image_combo.currentIndex()
        layer = images[index] if 0 <= index < len(images) else None
        if layer is self.controller.image_layer:
            return
        self._refreshing = True
        try:
            self.controller.image_layer = layer
            if layer is not None:
                self.controller.ensure_layers()
                self.low_spin.setValue(float(layer.contrast_limits[0]))
                self.high_spin.setValue(float(layer.contrast_limits[1]))
        finally:
            self._refreshing = False
        self._refresh_axes()
        self._refresh_objects()

    def _refresh_axes(self, _event=None) -> None:
        layer = self.controller.image_layer
        choices = self.controller.axis_choices()
        shape = () if layer is None else layer.data.shape
        self._refreshing = True
        try:
            self.axis_combo.clear()
            self.axis_combo.addItem(_AUTO_AXIS, None)
            self.channel_combo.clear()
            self.channel_combo.addItem(_NO_CHANNEL, None)
            for axis in choices:
                text = f"axis {axis} ({shape[axis]} slices)"
                self.axis_combo.addItem(text, axis)
                self.channel_combo.addItem(f"axis {axis} ({shape[axis]} channels)", axis)
            tracked = self.controller.tracked_axis
            channel = self.controller.channel_axis
            self.axis_combo.setCurrentIndex(max(self.axis_combo.findData(tracked), 0))
            self.channel_combo.setCurrentIndex(max(self.channel_combo.findData(channel), 0))
        finally:
            self._refreshing = False

    def _on_axes_choice(self, _index=None) -> None:
        if self._refreshing:
            return
        tracked = self.axis_combo.currentData()
        channel = self.channel_combo.currentData()
        try:
            self.controller.set_axes(tracked, channel)
        except ValueError as err:
            self.controller.notify("warning", str(err))

    def _on_intensity_choice(self, _value=None) -> None:
        mode = self.intensity_combo.currentText()
        fixed = mode == "fixed"
        self.low_spin.setEnabled(fixed)
        self.high_spin.setEnabled(fixed)
        try:
            self.controller.set_intensity(
                mode, (self.low_spin.value(), self.high_spin.value()) if fixed else None
            )
        except ValueError as err:
            self.controller.notify("error", f"{err}. Set the fixed range's low below its high.")

    # ------------------------------------------------------------------ model
    def _on_model_choice(self, _text=None) -> None:
        wants_file = self.model_combo.currentText() == CHECKPOINT_FILE_CHOICE
        self.file_row.setVisible(wants_file)
        self.file_label.setVisible(wants_file)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM 2 checkpoint", "", "PyTorch checkpoints (*.pt *.pth);;All files (*)"
        )
        if path:
            self.checkpoint_edit.setText(path)

    def _load_model(self) -> None:
        choice = self.model_combo.currentText()
        checkpoint = None
        preset = choice
        if choice == CHECKPOINT_FILE_CHOICE:
            checkpoint = self.checkpoint_edit.text().strip()
            if not checkpoint:
                self.controller.notify(
                    "warning", "Choose a checkpoint file (Browse…) or pick a preset to download."
                )
                return
            preset = DEFAULT_PRESET
        size = self.size_spin.value() or None
        self.model_status.setText(f"Loading {checkpoint or preset}…")
        self.controller.load_model(
            preset, checkpoint, device=self.device_combo.currentText(), image_size=size
        )

    def _on_model_loaded(self, _event=None) -> None:
        model = self.controller.model
        if model is None:
            self.model_status.setText("No model loaded.")
        else:
            self.model_status.setText(f"{self.controller.model_name} on {model.device}")

    # ------------------------------------------------------------------ objects
    def _refresh_objects(self, _event=None) -> None:
        c = self.controller
        self._refreshing = True
        try:
            self.object_list.clear()
            for obj_id in c.objects:
                item = QListWidgetItem(f"Object {obj_id}")
                item.setData(Qt.UserRole, obj_id)
                colour = QColor.fromRgbF(*c.object_colour(obj_id))
                pixmap = QPixmap(14, 14)
                pixmap.fill(colour)
                item.setIcon(QIcon(pixmap))
                self.object_list.addItem(item)
                if obj_id == c.current_object:
                    self.object_list.setCurrentItem(item)
        finally:
            self._refreshing = False

    def _on_object_choice(self, item, _previous=None) -> None:
        if self._refreshing or item is None:
            return
        self.controller.select_object(int(item.data(Qt.UserRole)))

    def _new_object(self) -> None:
        if self.controller.ensure_layers():
            self.controller.new_object()

    def _delete_object(self) -> None:
        obj_id = self.controller.current_object
        if obj_id is not None:
            self.controller.delete_object(obj_id)

    def _on_polarity_choice(self, negative: bool) -> None:
        if self.controller.positive == bool(negative):
            self.controller.toggle_polarity()

    # ------------------------------------------------------------------ propagation
    def _propagate(self) -> None:
        frames = self.frames_spin.value() or None
        self.controller.propagate(self.direction_combo.currentText(), max_frames=frames)

    def _on_busy(self, event=None) -> None:
        busy = bool(getattr(event, "value", self.controller.busy))
        self.cancel_button.setEnabled(busy)
        self.load_button.setEnabled(not busy)

    # ------------------------------------------------------------------ teardown
    def _watch_window(self) -> None:
        """Watch the top-level window this widget is docked in, to stop the worker when
        napari's main window closes (the dock itself is not closed then)."""
        try:
            window = self.window()
        except RuntimeError:  # the C++ widget is already gone
            return
        if window is self or window is self._watched:
            return
        if self._watched is not None:
            with contextlib.suppress(RuntimeError):
                self._watched.removeEventFilter(self)
        window.installEventFilter(self)
        self._watched = window

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if watched is self._watched and event.type() == QEvent.Close:
            self.shutdown()
        return super().eventFilter(watched, event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.ParentChange:
            if self.parent() is None and self._watched is not None:
                # Removing the dock reparents this widget to None: treat that as closing.
                self.shutdown()
            else:
                # Docking finishes after this event; look for the main window afterwards.
                QTimer.singleShot(0, self._watch_window)
        return super().event(event)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Cancel running work, wait for the worker thread and disconnect from the viewer."""
        if self.controller.closed:
            return
        self.controller.close()
        with contextlib.suppress(Exception):
            layers = self.viewer.layers.events
            layers.inserted.disconnect(self._refresh_images)
            layers.removed.disconnect(self._refresh_images)
            layers.moved.disconnect(self._refresh_images)
            self.viewer.dims.events.order.disconnect(self._refresh_axes)
            self.viewer.dims.events.ndisplay.disconnect(self._refresh_axes)
        if self._watched is not None:
            with contextlib.suppress(RuntimeError):
                self._watched.removeEventFilter(self)
            self._watched = None
