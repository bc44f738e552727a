"""The "SAM 2 annotator" dock widget: a view of the annotator's state and buttons for its actions.

The form is built with magicgui (layer picker, choices, numbers), each control bound both ways
to a field of :class:`~napari_sam2._napari.state.AnnotatorState`; the object list is plain Qt.
All logic lives in :class:`~napari_sam2._napari.annotator.Annotator`. Work runs in napari thread
workers through :class:`ThreadRunner`.
"""

from __future__ import annotations

import contextlib

import napari.layers
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .._napari.annotator import annotator_for
from .._napari.feature_folder import default_folder
from .._napari.model_loading import CHECKPOINT_FILE_CHOICE
from .._napari.state import INTENSITY_MODES
from ..engine.device import available_devices
from ..engine.session import DIRECTIONS
from ..model import PRESET_NAMES
from .bindings import bind
from .object_list import ObjectList
from .runner import ThreadRunner
from .shortcuts import install_shortcuts
from .steady_label import set_text, steady_label

__all__ = ["AnnotatorWidget"]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_AUTO = "auto (first slider)"
_NONE = "none"


def _none_if_zero(value):
    return None if not value else int(value)


def _zero_if_none(value):
    return 0 if value is None else int(value)


class AnnotatorWidget(QWidget):
    """Dock widget: image, model, slices, objects, propagation.

    Args:
        napari_viewer: the viewer (napari passes it by this name).
        runner: job runner; a :class:`ThreadRunner` by default.
    """

    def __init__(self, napari_viewer, runner=None) -> None:
        super().__init__()
        self.annotator = annotator_for(napari_viewer, runner or ThreadRunner())
        self.viewer = self.annotator.viewer
        self.state = self.annotator.state
        self._unbind: list = []
        self._shortcuts: list = []
        self._watched: QObject | None = None
        self._build()
        self._connect()
        self._on_model_choice()
        self._on_busy()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        state = self.state
        # napari's dock does not scroll: on a 1000-pixel screen the propagation and undo buttons
        # were below the window's edge, out of reach. The form scrolls inside the dock instead.
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        self.scroll_area.setWidget(content)
        outer.addWidget(self.scroll_area)
        layout = QVBoxLayout(content)

        self.image_picker = create_widget(annotation=napari.layers.Image, label="Image")
        self.model_choice = ComboBox(
            label="Model", choices=[*PRESET_NAMES, CHECKPOINT_FILE_CHOICE]
        )
        self.checkpoint = FileEdit(label="File", mode="r", filter="*.pt *.pth")
        self.device = ComboBox(label="Device", choices=available_devices())
        self.image_size = SpinBox(label="Input size", min=0, max=4096, step=32)
        self.image_size.tooltip = "0 keeps the preset's size (1024)"
        self.image_size.native.setSpecialValueText("preset (1024)")
        self.precision = ComboBox(label="Precision", choices=list(PRECISIONS))
        self.load_button = PushButton(text="Load model")
        self.model_status = steady_label(state.status)
        self.form = Container(
            widgets=[
                self.image_picker,
                self.model_choice,
                self.checkpoint,
                self.device,
                self.image_size,
                self.precision,
                self.load_button,
                self.model_status,
            ]
        )
        layout.addWidget(self.form.native)

        self.tracked_axis = ComboBox(label="Tracked axis", choices=self._axis_choices)
        self.channel_axis = ComboBox(label="Channel axis", choices=self._channel_choices)
        self.level = ComboBox(label="Pyramid level", choices=self._level_choices)
        self.intensity = ComboBox(label="Intensity", choices=list(INTENSITY_MODES))
        self.low = FloatSpinBox(label="Fixed low", min=-1e12, max=1e12, step=1.0)
        self.high = FloatSpinBox(label="Fixed high", min=-1e12, max=1e12, step=1.0, value=1.0)
        self.keep_features = CheckBox(text="Keep image features on disk")
        self.keep_features.tooltip = (
            "Store each slice's image features in a folder, one store per image, so opening the "
            "image again makes the first click as fast as a cached one."
        )
        self.feature_folder = FileEdit(label="Feature folder", mode="d")
        self.store_note = steady_label("", lines=3)
        self.slices = Container(
            widgets=[
                self.tracked_axis, self.channel_axis, self.level, self.intensity, self.low,
                self.high, self.keep_features, self.feature_folder, self.store_note,
            ]
        )  # fmt: skip
        slices_box = QGroupBox("Slices")
        QVBoxLayout(slices_box).addWidget(self.slices.native)
        layout.addWidget(slices_box)

        objects_box = QGroupBox("Objects")
        objects_layout = QVBoxLayout(objects_box)
        self.object_list = ObjectList(self.annotator)
        objects_layout.addWidget(self.object_list)
        row = QHBoxLayout()
        self.new_button = QPushButton("New (N)")
        self.delete_button = QPushButton("Delete")
        self.clear_slice_button = QPushButton("Clear slice")
        self.clear_object_button = QPushButton("Clear object")
        for button in (
            self.new_button,
            self.delete_button,
            self.clear_slice_button,
            self.clear_object_button,
        ):
            row.addWidget(button)
        objects_layout.addLayout(row)
        self.negative = CheckBox(text="Clicks are negative (G; Shift+click flips one)")
        self.protect = CheckBox(text="Never overwrite other labels")
        self.prefetch = CheckBox(text="Prepare neighbouring slices while idle")
        self.roi = CheckBox(text="Work on a region around the object")
        self.roi.tooltip = (
            "For slices much larger than the model's input: each object is segmented and "
            "tracked on a crop around it, at full resolution, instead of the whole slice "
            "squashed. Costs one image encoding per object and slice."
        )
        self.object_options = Container(
            widgets=[self.negative, self.protect, self.prefetch, self.roi]
        )
        objects_layout.addWidget(self.object_options.native)
        layout.addWidget(objects_box)

        everything_box = QGroupBox("Every object")
        everything_layout = QVBoxLayout(everything_box)
        self.points_per_side = SpinBox(label="Points per side", min=1, max=128, value=32)
        self.iou_threshold = FloatSpinBox(label="IoU threshold", min=0.0, max=1.0, step=0.05,
                                          value=0.8)  # fmt: skip
        self.stability_threshold = FloatSpinBox(
            label="Stability threshold", min=0.0, max=1.0, step=0.05, value=0.95
        )
        self.min_area = SpinBox(label="Minimum area", min=0, max=10_000_000, value=0)
        self.everything_options = Container(
            widgets=[
                self.points_per_side,
                self.iou_threshold,
                self.stability_threshold,
                self.min_area,
            ]
        )
        everything_layout.addWidget(self.everything_options.native)
        self.advanced = QGroupBox("Advanced")
        self.advanced.setCheckable(True)
        self.advanced.setChecked(False)
        self.box_nms = FloatSpinBox(label="Box NMS threshold", min=0.0, max=1.0, step=0.05,
                                    value=0.7)  # fmt: skip
        self.crop_layers = SpinBox(label="Crop layers", min=0, max=3, value=0)
        self.points_per_batch = SpinBox(label="Points per batch", min=1, max=1024, value=64)
        self.advanced_options = Container(
            widgets=[self.box_nms, self.crop_layers, self.points_per_batch]
        )
        QVBoxLayout(self.advanced).addWidget(self.advanced_options.native)
        self.advanced_options.visible = False
        self.advanced.toggled.connect(lambda on: setattr(self.advanced_options, "visible", on))
        everything_layout.addWidget(self.advanced)
        self.everything_button = QPushButton("Segment everything on this slice")
        everything_layout.addWidget(self.everything_button)
        self.seed_picker = create_widget(annotation=napari.layers.Labels, label="Labels")
        self.seed_slices = LineEdit(label="Slices", value="all")
        self.seed_slices.tooltip = "all, or slices such as 3, 7, 10-12"
        self.seed_form = Container(widgets=[self.seed_picker, self.seed_slices])
        everything_layout.addWidget(self.seed_form.native)
        self.seed_button = QPushButton("Objects from labels")
        everything_layout.addWidget(self.seed_button)
        layout.addWidget(everything_box)

        run_box = QGroupBox("Propagation")
        run_layout = QVBoxLayout(run_box)
        self.direction = ComboBox(label="Direction", choices=list(DIRECTIONS))
        self.max_frames = SpinBox(label="Slices per direction", min=0, max=1_000_000)
        self.max_frames.tooltip = "0 propagates through the whole axis"
        self.run_options = Container(widgets=[self.direction, self.max_frames])
        run_layout.addWidget(self.run_options.native)
        buttons = QHBoxLayout()
        self.propagate_button = QPushButton("Propagate (Shift+P)")
        self.cancel_button = QPushButton("Cancel")
        buttons.addWidget(self.propagate_button)
        buttons.addWidget(self.cancel_button)
        run_layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.progress_text = steady_label("", lines=1)
        run_layout.addWidget(self.progress_bar)
        run_layout.addWidget(self.progress_text.native)
        history = QHBoxLayout()
        self.undo_button = QPushButton("Undo (Ctrl+Z)")
        self.redo_button = QPushButton("Redo")
        self.save_button = QPushButton("Save prompts…")
        self.open_button = QPushButton("Load prompts…")
        for button in (self.undo_button, self.redo_button, self.save_button, self.open_button):
            history.addWidget(button)
        run_layout.addLayout(history)
        layout.addWidget(run_box)
        self.status = steady_label(state.status, lines=3)
        layout.addWidget(self.status.native)
        layout.addStretch(1)

    def _connect(self) -> None:
        state, a = self.state, self.annotator
        warn = self._warn
        if state.image is None:
            state.image = a.default_image()
        self._unbind += [
            bind(self.image_picker, state, "image"),
            bind(self.model_choice, state, "model_name", to_widget=self._model_text,
                 to_state=self._model_value),
            bind(self.device, state, "device"),
            bind(self.image_size, state, "image_size", to_widget=_zero_if_none,
                 to_state=_none_if_zero),
            bind(self.precision, state, "precision"),
            bind(self.tracked_axis, state, "tracked_axis", on_error=warn),
            bind(self.channel_axis, state, "channel_axis", on_error=warn),
            bind(self.level, state, "level", on_error=warn),
            bind(self.keep_features, state, "feature_store"),
            bind(self.intensity, state, "intensity"),
            bind(self.negative, state, "positive", to_widget=lambda v: not v,
                 to_state=lambda v: not v),
            bind(self.protect, state, "protect"),
            bind(self.prefetch, state, "prefetch"),
            bind(self.roi, state, "roi"),
            bind(self.direction, state, "direction"),
            bind(self.max_frames, state, "max_frames", to_widget=_zero_if_none,
                 to_state=_none_if_zero),
        ]  # fmt: skip
        self.model_choice.changed.connect(self._on_model_choice)
        self.checkpoint.changed.connect(self._on_checkpoint)
        self.low.changed.connect(self._on_fixed_range)
        self.high.changed.connect(self._on_fixed_range)
        self.intensity.changed.connect(self._on_fixed_range)
        self.load_button.changed.connect(self._load)
        self.new_button.clicked.connect(self._new_object)
        self.delete_button.clicked.connect(self._delete_object)
        self.clear_slice_button.clicked.connect(self._guarded(a.clear_slice))
        self.clear_object_button.clicked.connect(self._guarded(a.clear_object))
        self.propagate_button.clicked.connect(self._guarded(a.propagate))
        self.cancel_button.clicked.connect(a.cancel)
        self.undo_button.clicked.connect(a.undo)
        self.redo_button.clicked.connect(a.redo)
        self.everything_button.clicked.connect(self._segment_everything)
        self.seed_button.clicked.connect(self._objects_from_labels)
        self.save_button.clicked.connect(self._save_prompts)
        self.open_button.clicked.connect(self._load_prompts)
        state.events.busy.connect(self._on_busy)
        state.events.status.connect(self._on_status)
        state.events.loaded.connect(self._on_status)
        state.events.progress.connect(self._on_progress)
        state.events.image.connect(self._on_image)
        state.events.loaded.connect(self._on_level)  # "auto" follows the model's input size
        state.events.level.connect(self._on_level)
        # The folder is taken when its editing is finished (or chosen in the dialog), not at
        # each keystroke, which would make a store in every partial path.
        self.feature_folder.line_edit.native.editingFinished.connect(self._on_feature_folder)
        self.feature_folder.choose_btn.changed.connect(self._on_feature_folder)
        state.events.feature_folder.connect(self._show_feature_folder)
        state.events.feature_store.connect(self._on_store_note)
        state.events.store_note.connect(self._on_store_note)
        self._show_feature_folder()
        self._on_store_note()
        a.events.layers_lost.connect(self._on_layers_lost)
        self.viewer.dims.events.order.connect(self.reset_choices)
        self.viewer.dims.events.ndisplay.connect(self.reset_choices)
        self._on_image()

    # ------------------------------------------------------------------ helpers
    def _warn(self, err: Exception) -> None:
        self.annotator.notify("warning", str(err))

    def _guarded(self, action):
        def run(*_args) -> None:
            try:
                action()
            except ValueError as err:
                self.annotator.notify("warning", str(err))

        return run

    def reset_choices(self, _event=None) -> None:
        """Follow the viewer's layers and axes (napari calls this on layer changes)."""
        for container in (self.form, self.slices, self.seed_form):
            container.reset_choices()
        if self.state.image is None and self.image_picker.value is not None:
            self.state.image = self.image_picker.value
        self._on_image()

    def _axis_choices(self, _widget=None):
        return [(_AUTO, None), *self.annotator.axis_choices()]

    def _channel_choices(self, _widget=None):
        return [(_NONE, None), *self.annotator.axis_choices()]

    def _level_choices(self, _widget=None):
        return self.annotator.level_choices() or [("level 0", None)]

    @staticmethod
    def _model_text(name: str) -> str:
        return name

    def _model_value(self, text: str) -> str:
        if text == CHECKPOINT_FILE_CHOICE:
            return self.state.model_name
        self.state.checkpoint = ""
        return text

    # ------------------------------------------------------------------ reactions
    def _on_image(self, _event=None) -> None:
        self.tracked_axis.reset_choices()
        self.channel_axis.reset_choices()
        stack = len(self.annotator.axis_choices()) > 0
        self.tracked_axis.visible = stack
        self.channel_axis.visible = stack
        self._on_level()
        image = self.state.image
        if image is not None:
            lo, hi = (float(v) for v in image.contrast_limits)
            self.low.value, self.high.value = lo, hi

    def _on_level(self, _event=None) -> None:
        """The pyramid level choice: shown for a multiscale image, with the level read."""
        self.level.reset_choices()
        self.level.visible = bool(self.annotator.level_choices())
        self.level.tooltip = (
            f"Reads {self.annotator.level_description()}. Auto: the finest level whose slices "
            "fit the model's input size. The labels are made at the level read."
        )

    def _show_feature_folder(self, _event=None) -> None:
        shown = self.state.feature_folder or str(default_folder())
        if str(self.feature_folder.value) != shown:
            self.feature_folder.value = shown

    def _on_feature_folder(self, _value=None) -> None:
        text = str(self.feature_folder.value or "").strip()
        text = "" if text in ("", ".") or text == str(default_folder()) else text
        if text != self.state.feature_folder:
            self.state.feature_folder = text

    def _on_store_note(self, _event=None) -> None:
        on = self.state.feature_store
        self.store_note.visible = on
        set_text(self.store_note, self.state.store_note if on else "")

    def _on_model_choice(self, _value=None) -> None:
        wants_file = self.model_choice.value == CHECKPOINT_FILE_CHOICE
        self.checkpoint.visible = wants_file

    def _on_checkpoint(self, value=None) -> None:
        self.state.checkpoint = str(self.checkpoint.value or "")

    def _on_fixed_range(self, _value=None) -> None:
        fixed = self.intensity.value == "fixed"
        self.low.enabled = self.high.enabled = fixed
        if fixed:
            self.state.fixed_range = (float(self.low.value), float(self.high.value))

    def _load(self, _value=None) -> None:
        if self.model_choice.value == CHECKPOINT_FILE_CHOICE:
            path = str(self.checkpoint.value or "").strip()
            if not path or path == ".":
                self.annotator.notify(
                    "warning", "Choose a checkpoint file (the folder button) or pick a preset."
                )
                return
            self.state.checkpoint = path
        self.annotator.load_model()

    def _on_busy(self, _event=None) -> None:
        busy = self.state.busy
        self.cancel_button.setEnabled(busy)
        self.load_button.enabled = not busy

    def _on_status(self, _event=None) -> None:
        set_text(self.status, self.state.status)
        set_text(self.model_status, self.state.loaded or "No model loaded.")

    def _on_progress(self, _event=None) -> None:
        progress = self.state.progress
        self.progress_bar.setVisible(progress is not None)
        if progress is None:
            set_text(self.progress_text, "")
            return
        self.progress_bar.setMaximum(max(progress.total, 1))
        self.progress_bar.setValue(progress.done)
        set_text(self.progress_text, progress.text())

    def _on_layers_lost(self, _event=None) -> None:
        QTimer.singleShot(0, self.annotator.restore_layers)

    def _new_object(self) -> None:
        if self.annotator.ensure_layers():
            self.annotator.new_object()

    def _delete_object(self) -> None:
        obj_id = self.state.current_object
        if obj_id is None:
            return
        name = self.state.object_name(obj_id)
        answer = QMessageBox.question(
            self,
            "Delete object",
            f"Delete {name} (label {obj_id}) with its prompts and pixels? Undo brings it back.",
        )
        if answer == QMessageBox.Yes:
            self.annotator.delete_object(obj_id)

    def amg_parameters(self) -> dict:
        """The automatic mask generator's parameters set in the dock."""
        return {
            "points_per_side": int(self.points_per_side.value),
            "pred_iou_thresh": float(self.iou_threshold.value),
            "stability_score_thresh": float(self.stability_threshold.value),
            "min_mask_region_area": int(self.min_area.value),
            "box_nms_thresh": float(self.box_nms.value),
            "crop_n_layers": int(self.crop_layers.value),
            "points_per_batch": int(self.points_per_batch.value),
        }

    def _segment_everything(self) -> None:
        self.annotator.segment_everything(**self.amg_parameters())

    def _objects_from_labels(self) -> None:
        from .._napari.everything import parse_slices

        layer = self.seed_picker.value
        if layer is None:
            self.annotator.notify("warning", "Choose a Labels layer to take the objects from.")
            return
        try:
            frames = parse_slices(self.seed_slices.value, self.annotator.geometry().num_frames)
            self.annotator.objects_from_labels(layer, frames)
        except ValueError as err:
            self.annotator.notify("warning", str(err))

    def _save_prompts(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save prompts", "", "SAM 2 prompts (*.sam2.json *.json)"
        )
        if path:
            self.annotator.save_prompts(path, overwrite=True)

    def _load_prompts(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load prompts", "", "SAM 2 prompts (*.sam2.json *.json);;All files (*)"
        )
        if path:
            self.annotator.load_prompts(path)

    # ------------------------------------------------------------------ docking and teardown
    def _watch_window(self) -> None:
        """Watch the main window: its shortcuts, and closing it stops the worker (napari does
        not close the dock then)."""
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
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self._shortcuts = install_shortcuts(window, self.annotator)
        self.reset_choices()

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
        """Cancel running work, wait for the worker thread and disconnect from the viewer; the
        annotator's state is kept for a dock opened again on this viewer."""
        if self.annotator.closed:
            return
        self.annotator.close()
        for unbind in self._unbind:
            with contextlib.suppress(Exception):
                unbind()
        self._unbind.clear()
        with contextlib.suppress(Exception):
            self.object_list.disconnect_state()
            self.viewer.dims.events.order.disconnect(self.reset_choices)
            self.viewer.dims.events.ndisplay.disconnect(self.reset_choices)
        for shortcut in self._shortcuts:
            with contextlib.suppress(RuntimeError):
                shortcut.setEnabled(False)
        if self._watched is not None:
            with contextlib.suppress(RuntimeError):
                self._watched.removeEventFilter(self)
            self._watched = None
