"""The annotator's state and actions for one viewer, scriptable without any widget.

:class:`AnnotatorController` owns the prompt layers, the output Labels layer, the object list
and one engine :class:`~napari_sam2.engine.tracker.Tracker` (a *session*). The dock widget in
``napari_sam2._qt`` is a thin shell over it; scripts and tests drive it directly::

    controller = AnnotatorController(viewer, runner=ThreadRunner())
    controller.set_model(build_sam2("sam2.1_hiera_tiny"))
    controller.image_layer = viewer.layers["cells"]
    controller.add_point((5, 40, 60))        # world coordinates; segments slice 5
    controller.propagate("both")

Threading: every engine call runs in a :class:`~napari_sam2._napari.jobs.Job` executed by the
runner (one job at a time, in order); layers are written only from the jobs' main-thread
callbacks. Nothing here imports Qt.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils import progress
from napari.utils.events import EmitterGroup
from napari.utils.notifications import show_error, show_info, show_warning

from ..engine.tracker import Tracker
from .geometry import SliceGeometry, current_frame, geometry_for
from .jobs import Job, Runner, SyncRunner
from .labels import make_labels_layer, next_free_id, write_mask
from .prompts import (
    NEGATIVE_COLOUR,
    POSITIVE_COLOUR,
    FramePrompt,
    collect_prompts,
    make_points_layer,
    make_shapes_layer,
)

__all__ = ["INTENSITY_MODES", "AnnotatorController"]

INTENSITY_MODES = ("auto", "contrast limits", "fixed")
_ROLE_KEY = "napari_sam2_role"
_NO_IMAGE = (
    "No image layer to segment. Open an image (File > Open, or File > Open Sample > "
    "napari-sam2 > SAM 2 demo stack) and choose it under 'Image'."
)
_NO_MODEL = "No SAM 2 model is loaded yet. Choose a model and press 'Load model', then try again."


@dataclass
class _Session:
    """One tracker over the frames of one image at one geometry and intensity setting."""

    key: tuple
    geometry: SliceGeometry
    tracker: Tracker
    image: Image


class AnnotatorController:
    """Scriptable SAM 2 annotation of one napari viewer.

    Args:
        viewer: the napari viewer.
        runner: executes jobs; :class:`SyncRunner` (inline) by default, the Qt widget passes a
            thread runner.

    Events (``controller.events``): ``objects``, ``current_object``, ``busy``, ``model``,
    ``message`` (``level``, ``text``) and ``image``.
    """

    def __init__(self, viewer, runner: Runner | None = None) -> None:
        self.viewer = viewer
        self.runner: Runner = runner if runner is not None else SyncRunner()
        self.events = EmitterGroup(
            source=self,
            objects=None,
            current_object=None,
            busy=None,
            model=None,
            message=None,
            image=None,
        )
        self.model = None
        self.model_name: str | None = None
        self.protect = True
        self.messages: list[tuple[str, str]] = []
        self.points_layer: Points | None = None
        self.shapes_layer: Shapes | None = None
        self.labels_layer: Labels | None = None
        self._image: Image | None = None
        self._tracked_axis: int | None = None
        self._channel_axis: int | None = None
        self._intensity = "auto"
        self._fixed_range: tuple[float, float] | None = None
        self._objects: list[int] = []
        self._current: int | None = None
        self._positive = True
        self._session: _Session | None = None
        self._sent: dict[tuple[int, int], FramePrompt] = {}
        self._problems: set[str] = set()
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._muted = 0
        self._propagating: Job | None = None
        self._last_model_error: str | None = None
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_dims_changed)
        viewer.dims.events.ndisplay.connect(self._on_dims_changed)

    # ------------------------------------------------------------------ messages
    def notify(self, level: str, text: str) -> None:
        """Show ``text`` as a napari notification (``level``: info, warning or error)."""
        self.messages.append((level, text))
        self.events.message(level=level, text=text)
        {"info": show_info, "warning": show_warning, "error": show_error}[level](text)

    # ------------------------------------------------------------------ settings
    @property
    def image_layer(self) -> Image | None:
        return self._image

    @image_layer.setter
    def image_layer(self, layer: Image | None) -> None:
        if layer is not None and not isinstance(layer, Image):
            raise TypeError(
                f"image_layer must be a napari Image layer, got {type(layer).__name__}"
            )
        if layer is self._image:
            return
        self._image = layer
        self._tracked_axis = None
        self._channel_axis = None
        self._drop_session()
        self.points_layer = self.shapes_layer = self.labels_layer = None
        self._objects, self._current = [], None
        if layer is not None:
            self._adopt_existing_layers(layer)
        self.events.image(value=layer)
        self.events.objects(value=self.objects)

    def default_image_layer(self) -> Image | None:
        """The active layer if it is an image, else the top-most image layer, else None."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None

    @property
    def tracked_axis(self) -> int | None:
        return self._tracked_axis

    @tracked_axis.setter
    def tracked_axis(self, axis: int | None) -> None:
        self._tracked_axis = None if axis is None else int(axis)
        self._settings_changed()

    @property
    def channel_axis(self) -> int | None:
        return self._channel_axis

    @channel_axis.setter
    def channel_axis(self, axis: int | None) -> None:
        self._channel_axis = None if axis is None else int(axis)
        self._settings_changed()

    def set_axes(self, tracked_axis: int | None, channel_axis: int | None) -> None:
        """Choose the tracked axis and the channel axis together (None: automatic / none)."""
        if tracked_axis is not None and tracked_axis == channel_axis:
            raise ValueError("The tracked axis and the channel axis must differ; choose another.")
        self._tracked_axis = None if tracked_axis is None else int(tracked_axis)
        self._channel_axis = None if channel_axis is None else int(channel_axis)
        self._settings_changed()

    @property
    def intensity(self) -> str:
        return self._intensity

    def set_intensity(self, mode: str, fixed_range: tuple[float, float] | None = None) -> None:
        """How frames map to SAM's [0, 1]: "auto" (one robust range for the whole stack),
        "contrast limits" (the layer's, what you see is what SAM sees) or "fixed" (lo, hi)."""
        if mode not in INTENSITY_MODES:
            raise ValueError(f"intensity mode must be one of {INTENSITY_MODES}, got {mode!r}")
        if mode == "fixed":
            if fixed_range is None or not float(fixed_range[0]) < float(fixed_range[1]):
                raise ValueError(f"a fixed intensity range needs lo < hi, got {fixed_range!r}")
            self._fixed_range = (float(fixed_range[0]), float(fixed_range[1]))
        self._intensity = mode
        self._settings_changed()

    def axis_choices(self) -> list[int]:
        """Layer axes that can be tracked or hold channels: the non-displayed ones."""
        if self._image is None:
            return []
        try:
            return [a for a in range(self._image.ndim) if a not in self.geometry().frame_axes]
        except ValueError:
            return []

    def geometry(self) -> SliceGeometry:
        """The current slice geometry of the image layer (raises ValueError without one)."""
        if self._image is None:
            raise ValueError(_NO_IMAGE)
        return geometry_for(
            self.viewer,
            self._image,
            tracked_axis=self._tracked_axis,
            channel_axis=self._channel_axis,
        )

    def _settings_changed(self) -> None:
        self._drop_session()
        self.resync()

    # ------------------------------------------------------------------ model
    def set_model(self, model, name: str | None = None) -> None:
        """Use ``model`` (a built SAM 2 network) from now on; prompts are re-segmented with it."""
        self.model = model
        self.model_name = name or getattr(getattr(model, "config", None), "name", None)
        self._drop_session()
        self.events.model(value=model)
        self.resync()

    def load_model(
        self,
        preset: str,
        checkpoint: str | None = None,
        *,
        device: str = "auto",
        image_size: int | None = None,
    ) -> Job:
        """Load a model in the background: a local ``checkpoint`` file, or the official weights
        of ``preset`` (downloaded once, with progress in the activity panel)."""
        from .model_loading import load_model_steps

        bar: dict[str, progress] = {}

        def on_yield(step) -> None:
            kind, done, total = step
            if "bar" not in bar:
                bar["bar"] = progress(total=total or 0, desc=kind)
            pbar = bar["bar"]
            if total and pbar.total != total:
                pbar.total = total
            pbar.set_description(kind)
            if done > pbar.n:
                pbar.update(done - pbar.n)

        def on_done(result) -> None:
            model, name = result
            self.set_model(model, name)
            self.notify("info", f"SAM 2 model {name} loaded on {model.device}.")

        def on_error(err: BaseException) -> None:
            self.notify(
                "error",
                f"Could not load the model: {err} The previous model"
                f"{' (' + self.model_name + ')' if self.model_name else ''} is kept.",
            )

        def on_finish() -> None:
            if "bar" in bar:
                bar["bar"].close()

        job = Job(
            "load model",
            lambda: load_model_steps(
                preset,
                checkpoint,
                device=device,
                image_size=image_size,
                cancelled=lambda: job.cancelled,
            ),
            on_yield=on_yield,
            on_done=on_done,
            on_error=on_error,
            on_finish=on_finish,
        )
        self._submit(job)
        return job

    # ------------------------------------------------------------------ layers
    def _adopt_existing_layers(self, image: Image) -> None:
        for layer in self.viewer.layers:
            role = layer.metadata.get(_ROLE_KEY)
            if role is None or layer.metadata.get("napari_sam2_image") != image.name:
                continue
            setattr(self, f"{role}_layer", layer)
            self._bind_keys(layer)
            if role in ("points", "shapes"):
                self._connect_prompt_layer(layer)
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None and len(layer.data):
                for obj_id in np.unique(np.asarray(layer.features["object"], dtype=int)):
                    self._register_object(int(obj_id))
        if self._objects:
            self.select_object(self._objects[0])

    def ensure_layers(self) -> bool:
        """Create the prompt layers and the output Labels layer for the image if missing.

        Returns False (after a notification) when there is no image layer.
        """
        image = self._image
        if image is None or image not in self.viewer.layers:
            self.notify("error", _NO_IMAGE)
            return False
        if self._current is None:
            self.new_object()
        obj_id = self._current
        if self.shapes_layer is None or self.shapes_layer not in self.viewer.layers:
            self.shapes_layer = self._add_role_layer(
                make_shapes_layer(image, f"{image.name} SAM 2 boxes", obj_id), "shapes"
            )
            self._connect_prompt_layer(self.shapes_layer)
        if self.points_layer is None or self.points_layer not in self.viewer.layers:
            self.points_layer = self._add_role_layer(
                make_points_layer(image, f"{image.name} SAM 2 points", obj_id), "points"
            )
            self._connect_prompt_layer(self.points_layer)
            self.points_layer.mode = "add"
        self._ensure_labels()
        self._apply_current_object()
        return True

    def _ensure_labels(self) -> Labels | None:
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            return self.labels_layer
        image = self._image
        if image is None:
            return None
        geometry = self.geometry()
        active = self.viewer.layers.selection.active
        self.labels_layer = self._add_role_layer(
            make_labels_layer(image, geometry.shape, f"{image.name} SAM 2 labels"), "labels"
        )
        # Adding a layer makes it active; clicks should keep going to the points layer.
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self._apply_current_object()
        return self.labels_layer

    def _add_role_layer(self, layer, role: str):
        layer.metadata[_ROLE_KEY] = role
        layer.metadata["napari_sam2_image"] = self._image.name
        self.viewer.add_layer(layer)
        self._bind_keys(layer)
        return layer

    def _bind_keys(self, layer) -> None:
        layer.bind_key("n", lambda _layer: self.new_object(), overwrite=True)
        layer.bind_key("Shift-P", lambda _layer: self.propagate("both"), overwrite=True)
        if isinstance(layer, Points):
            layer.bind_key("g", lambda _layer: self.toggle_polarity(), overwrite=True)

    def _connect_prompt_layer(self, layer) -> None:
        layer.events.data.connect(self._on_prompt_data)
        if isinstance(layer, Points) and self._on_points_press not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.insert(0, self._on_points_press)

    def _on_points_press(self, layer: Points, event) -> None:
        # Runs before napari's add-mode callback, so the point added on release gets the
        # polarity chosen by the modifier held at press.
        negative = "Shift" in {str(m) for m in getattr(event, "modifiers", ())}
        label = int(self._positive != negative)
        layer.feature_defaults = {"object": self._current or 1, "label": label}

    def _on_prompt_data(self, event) -> None:
        if self._muted or self._closed:
            return
        action = str(getattr(event, "action", "changed"))
        if action not in ("added", "changed", "removed"):
            return
        self._restore_defaults()
        self._recolour_prompts()
        self.resync()

    def _restore_defaults(self) -> None:
        obj_id = self._current or 1
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {"object": obj_id, "label": int(self._positive)}
        if self.shapes_layer is not None:
            self.shapes_layer.feature_defaults = {"object": obj_id}

    def _object_colour(self, obj_id: int) -> np.ndarray:
        if self.labels_layer is not None:
            return np.asarray(self.labels_layer.get_color(obj_id), dtype=np.float32)
        return np.ones(4, dtype=np.float32)

    def object_colour(self, obj_id: int) -> tuple[float, float, float, float]:
        """RGBA in [0, 1] of ``obj_id`` in the output Labels layer."""
        return tuple(float(c) for c in self._object_colour(obj_id))

    def _recolour_prompts(self) -> None:
        self._muted += 1
        try:
            points = self.points_layer
            if points is not None and len(points.data):
                labels = np.asarray(points.features["label"], dtype=bool)
                points.face_color = np.where(labels[:, None], POSITIVE_COLOUR, NEGATIVE_COLOUR)
                objects = np.asarray(points.features["object"], dtype=int)
                points.border_color = np.array([self._object_colour(o) for o in objects])
            shapes = self.shapes_layer
            if shapes is not None and shapes.nshapes:
                objects = np.asarray(shapes.features["object"], dtype=int)
                shapes.edge_color = np.array([self._object_colour(o) for o in objects])
        finally:
            self._muted -= 1

    # ------------------------------------------------------------------ objects
    @property
    def objects(self) -> list[int]:
        """Label ids of the objects, in creation order."""
        return list(self._objects)

    @property
    def current_object(self) -> int | None:
        return self._current

    def _register_object(self, obj_id: int) -> None:
        if obj_id not in self._objects:
            self._objects.append(obj_id)
            self.events.objects(value=self.objects)

    def new_object(self) -> int:
        """Start a new object with an id used by no object and no painted label; select it."""
        obj_id = next_free_id(self.labels_layer, set(self._objects))
        self._register_object(obj_id)
        self.select_object(obj_id)
        return obj_id

    def select_object(self, obj_id: int) -> None:
        """Make ``obj_id`` current: new prompts belong to it and the Labels layer paints it."""
        obj_id = int(obj_id)
        if obj_id not in self._objects:
            raise ValueError(f"Object {obj_id} does not exist; the objects are {self._objects}.")
        self._current = obj_id
        self._apply_current_object()
        self.events.current_object(value=obj_id)

    def _apply_current_object(self) -> None:
        if self._current is None:
            return
        self._restore_defaults()
        if self.labels_layer is not None:
            self.labels_layer.selected_label = self._current

    def delete_object(self, obj_id: int) -> None:
        """Remove ``obj_id``: its prompts, its engine state and its pixels (one undo step)."""
        obj_id = int(obj_id)
        if obj_id not in self._objects:
            raise ValueError(f"Object {obj_id} does not exist; the objects are {self._objects}.")
        self._muted += 1
        try:
            for layer in (self.points_layer, self.shapes_layer):
                if layer is None or not len(layer.data):
                    continue
                mine = np.flatnonzero(np.asarray(layer.features["object"]) == obj_id)
                if mine.size:
                    if isinstance(layer, Points):
                        layer.selected_data = set(mine.tolist())
                        layer.remove_selected()
                    else:
                        layer.selected_data = set(mine.tolist())
                        layer.remove_selected()
        finally:
            self._muted -= 1
        self._sent = {key: p for key, p in self._sent.items() if key[0] != obj_id}
        self._objects.remove(obj_id)
        session = self._session

        def work():
            if session is not None and obj_id in session.tracker.object_ids:
                session.tracker.remove_object(obj_id)
            yield None

        def on_yield(_) -> None:
            labels = self.labels_layer
            if labels is None or labels not in self.viewer.layers:
                return
            index = np.nonzero(np.asarray(labels.data) == obj_id)
            if index[0].size:
                with labels.block_history():
                    labels.data_setitem(index, 0)

        self._submit(Job("delete object", work, on_yield=on_yield, on_error=self._job_error))
        if self._current == obj_id:
            self._current = self._objects[-1] if self._objects else None
            if self._current is None:
                self.new_object()
            else:
                self.select_object(self._current)
        self.events.objects(value=self.objects)

    def toggle_polarity(self) -> bool:
        """Switch whether new clicks are positive (True) or negative; returns the new state."""
        self._positive = not self._positive
        self._restore_defaults()
        return self._positive

    @property
    def positive(self) -> bool:
        return self._positive

    # ------------------------------------------------------------------ scripted prompts
    def add_point(self, world_position, positive: bool = True, obj_id: int | None = None) -> None:
        """Add a click at ``world_position`` (full world coordinates) for the current object."""
        if not self.ensure_layers():
            return
        points = self.points_layer
        points.feature_defaults = {"object": obj_id or self._current, "label": int(positive)}
        points.add(points.world_to_data(world_position))

    def add_box(self, world_corner_a, world_corner_b, obj_id: int | None = None) -> None:
        """Add a rectangle between two opposite world corners (on one slice) as a box."""
        if not self.ensure_layers():
            return
        shapes = self.shapes_layer
        a = np.asarray(shapes.world_to_data(world_corner_a), dtype=float)
        b = np.asarray(shapes.world_to_data(world_corner_b), dtype=float)
        geometry = self.geometry()
        row_axis, col_axis = geometry.frame_axes
        corners = []
        for row, col in ((a[row_axis], a[col_axis]), (a[row_axis], b[col_axis])):
            corners.append((row, col))
        corners += [(b[row_axis], b[col_axis]), (b[row_axis], a[col_axis])]
        vertices = np.repeat(a[None], 4, axis=0)
        for vertex, (row, col) in zip(vertices, corners, strict=True):
            vertex[row_axis], vertex[col_axis] = row, col
        shapes.feature_defaults = {"object": obj_id or self._current}
        shapes.add_rectangles(vertices)

    # ------------------------------------------------------------------ sessions
    def _intensity_range(self) -> tuple[float, float] | None:
        if self._intensity == "contrast limits":
            lo, hi = self._image.contrast_limits
            return (float(lo), float(hi))
        if self._intensity == "fixed":
            return self._fixed_range
        return None

    def _ensure_session(self) -> _Session:
        """The tracker for the current image, geometry and intensity; rebuilt when one changes."""
        if self._image is None or self._image not in self.viewer.layers:
            raise ValueError(_NO_IMAGE)
        if self.model is None:
            raise ValueError(_NO_MODEL)
        geometry = self.geometry()
        span = self._intensity_range()
        key = (id(self._image), geometry.key(), self._intensity, span, id(self.model))
        if self._session is not None and self._session.key == key:
            return self._session
        from .geometry import layer_array

        frames = layer_array(self._image)[geometry.frames_index()]
        axis, channel_axis = geometry.engine_axes()
        tracker = Tracker(
            self.model, frames, axis=axis, channel_axis=channel_axis, intensity_range=span
        )
        self._session = _Session(key, geometry, tracker, self._image)
        self._sent = {}
        return self._session

    @property
    def tracker(self) -> Tracker | None:
        """The engine tracker of the current session (None before the first segmentation)."""
        return None if self._session is None else self._session.tracker

    def _drop_session(self) -> None:
        self._session = None
        self._sent = {}

    def _on_dims_changed(self, _event=None) -> None:
        if self._closed or self._image is None or self.model is None:
            return
        try:
            geometry = self.geometry()
        except ValueError:
            return
        session = self._session
        if session is None or session.geometry.key() != geometry.key():
            self.resync()
        if not self.busy:
            self.prefetch()

    # ------------------------------------------------------------------ segmentation
    def resync(self) -> None:
        """Send the engine every (object, frame) prompt group that changed since last time."""
        if self._closed or self._image is None:
            return
        if self.points_layer is None and self.shapes_layer is None:
            return
        try:
            session = self._ensure_session()
        except ValueError as err:
            if self.model is None and not self._has_prompts():
                return
            self._warn_once(str(err))
            return
        groups, problems = collect_prompts(
            self.points_layer, self.shapes_layer, session.image, session.geometry
        )
        for text in problems:
            self._warn_once(text)
        self._problems &= set(problems) | {_NO_MODEL, _NO_IMAGE}
        for obj_id, _frame in groups:
            self._register_object(obj_id)
        previous, self._sent = self._sent, dict(groups)
        for key in previous:
            if key not in groups:
                self._submit_segment(session, key, None)
        for key, prompt in groups.items():
            if previous.get(key) != prompt:
                self._submit_segment(session, key, prompt)

    def _has_prompts(self) -> bool:
        return any(
            layer is not None and len(layer.data)
            for layer in (self.points_layer, self.shapes_layer)
        )

    def _warn_once(self, text: str) -> None:
        if text not in self._problems:
            self._problems.add(text)
            self.notify("warning", text)

    def _submit_segment(self, session: _Session, key: tuple[int, int], prompt) -> None:
        obj_id, frame = key
        tracker = session.tracker

        def work():
            if prompt is None or prompt.empty:
                if obj_id in tracker.object_ids:
                    tracker.clear_prompts(obj_id, frame)
                    if not tracker.prompted_frames(obj_id):
                        tracker.remove_object(obj_id)
                yield frame, {obj_id: None}
                return
            tracker.prepare(frame)
            logits = tracker.set_prompts(frame, obj_id, **prompt.engine_kwargs())
            yield frame, {obj_id: logits[obj_id] > 0}

        def on_yield(item) -> None:
            self._write_frame(session, *item, undo_step=True)

        def on_error(err: BaseException) -> None:
            # Forget the group so that the next edit sends it again.
            if self._sent.get(key) == prompt:
                self._sent.pop(key, None)
            self._job_error(err)

        job = Job("segment", work, on_yield=on_yield, on_error=on_error, key=("segment", key))
        self._submit(job)

    def segment(self) -> None:
        """Re-send every prompt group of the current image to the engine."""
        self._sent = {}
        self.resync()

    def reset_session(self) -> None:
        """Forget the engine's state (cached features, tracking) and re-send every prompt."""
        self._drop_session()
        self.resync()

    def prefetch(self, frame: int | None = None) -> None:
        """Compute the image features of ``frame`` (default: the current slice) in the
        background, so the first click there answers at once."""
        try:
            session = self._ensure_session()
        except ValueError:
            return
        if frame is None:
            frame = current_frame(self.viewer, session.image, session.geometry)
        tracker = session.tracker

        def work():
            tracker.prepare(frame)
            yield frame

        self._submit(Job("prepare", work, on_error=self._job_error, key="prepare"))

    def _write_frame(
        self,
        session: _Session,
        frame: int,
        masks: dict[int, np.ndarray | None],
        *,
        undo_step: bool,
    ) -> bool:
        """Write masks of one frame; False when the output layer is gone."""
        labels = self._ensure_labels() if undo_step else self.labels_layer
        if labels is None or labels not in self.viewer.layers:
            return False
        if labels.data.shape != session.geometry.shape:
            self.notify(
                "error",
                f"The Labels layer {labels.name!r} has shape {labels.data.shape}, not the "
                f"image's {session.geometry.shape}; delete it and segment again.",
            )
            return False
        # Redrawing costs a texture upload per write even for slices nobody looks at, which
        # slowed propagation down by a third on a CPU machine; refresh only the visible one.
        visible = self._shows(session, frame)
        block = labels.block_history() if undo_step else contextlib.nullcontext()
        with block:
            for obj_id, mask in masks.items():
                write_mask(
                    labels,
                    session.geometry,
                    frame,
                    obj_id,
                    mask,
                    protect=self.protect,
                    refresh=visible,
                )
        return True

    def _shows(self, session: _Session, frame: int) -> bool:
        """Whether the viewer currently displays ``frame`` of ``session``."""
        try:
            geometry = self.geometry()
        except ValueError:
            return True
        if self._image is not session.image or geometry.key() != session.geometry.key():
            return False
        return current_frame(self.viewer, session.image, geometry) == frame

    # ------------------------------------------------------------------ propagation
    def current_frame(self) -> int:
        """Index of the slice the viewer shows along the tracked axis."""
        return current_frame(self.viewer, self._image, self.geometry())

    def propagate(
        self,
        direction: str = "both",
        *,
        start: int | None = None,
        max_frames: int | None = None,
    ) -> Job | None:
        """Track every object from ``start`` (default: the current slice) through the stack.

        ``direction``: "forward", "backward" or "both"; ``max_frames`` limits the frames per
        direction (start included; None: the whole axis). Slices are written into the Labels
        layer as they come; the whole run is one undo step. Returns the job, or None after a
        notification when it cannot start.
        """
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be forward, backward or both, not {direction!r}")
        if self._propagating is not None:
            self.notify("warning", "A propagation is already running; wait or press Cancel.")
            return None
        self.resync()
        try:
            session = self._ensure_session()
        except ValueError as err:
            self.notify("error", str(err))
            return None
        if session.geometry.num_frames <= 1:
            self.notify(
                "warning",
                f"Image {session.image.name!r} is a single 2-D frame: there is nothing to "
                "propagate to. Your mask is already complete; for a stack, open a 3-D or 4-D "
                "image.",
            )
            return None
        if not self._sent:
            self.notify(
                "warning",
                "Nothing to propagate yet: add a point (click) or a box on a slice first.",
            )
            return None
        if start is None:
            start = current_frame(self.viewer, session.image, session.geometry)
        tracker = session.tracker
        if direction == "both":
            total = session.geometry.num_frames
        elif direction == "forward":
            total = session.geometry.num_frames - start
        else:
            total = start + 1
        if max_frames is not None:
            total = min(total, max_frames * (2 if direction == "both" else 1))
        state: dict = {}

        def work():
            frames = tracker.propagate(start, direction, max_frames)
            try:
                for frame, logits in frames:
                    yield frame, {obj_id: value > 0 for obj_id, value in logits.items()}
            finally:
                frames.close()

        def on_start() -> None:
            labels = self._ensure_labels()
            state["labels"] = labels
            state["block"] = labels.block_history()
            state["block"].__enter__()
            state["bar"] = progress(total=total, desc=f"SAM 2: propagating {direction}")

        def on_yield(item) -> None:
            frame, masks = item
            if not self._write_frame(session, frame, masks, undo_step=False):
                job.cancel()
                self.notify(
                    "warning",
                    "The output Labels layer was deleted, so propagation stopped. Your prompts "
                    "and objects are kept: press Propagate again to write into a new Labels "
                    "layer.",
                )
                return
            state["bar"].update(1)

        def on_finish() -> None:
            self._propagating = None
            block = state.pop("block", None)
            if block is not None:
                block.__exit__(None, None, None)
            if "bar" in state:
                state["bar"].close()
            if job.cancelled and not self._closed:
                self.notify("info", "Propagation cancelled; the slices already written are kept.")

        job = Job(
            "propagate",
            work,
            on_yield=on_yield,
            on_error=self._job_error,
            on_finish=on_finish,
        )
        job.on_start = on_start  # type: ignore[attr-defined]
        self._propagating = job
        self._submit(job)
        return job

    def cancel(self) -> None:
        """Stop the running propagation (or load) at the next slice; written slices are kept."""
        if self._running is not None and self._running.name in ("propagate", "load model"):
            self._running.cancel()
        if self._propagating is not None:
            self._propagating.cancel()
            if self._propagating in self._queue:
                self._queue.remove(self._propagating)
                self._propagating.on_finish()

    # ------------------------------------------------------------------ job queue
    @property
    def busy(self) -> bool:
        """Whether a job is running or queued."""
        return self._running is not None or bool(self._queue)

    @property
    def running_job(self) -> Job | None:
        return self._running

    def _submit(self, job: Job) -> None:
        if self._closed:
            return
        if job.key is not None:
            for index, queued in enumerate(self._queue):
                if queued.key == job.key:
                    self._queue[index] = job
                    return
        self._queue.append(job)
        was_busy = self._running is not None
        if not was_busy:
            self.events.busy(value=True)
            self._start_next()

    def _start_next(self) -> None:
        if self._running is not None or self._closed:
            return
        if not self._queue:
            self.events.busy(value=False)
            return
        job = self._queue.popleft()
        self._running = job
        original_finish = job.on_finish

        def finish() -> None:
            try:
                original_finish()
            finally:
                if self._running is job:
                    self._running = None
                    self._start_next()

        job.on_finish = finish
        if not self._closed:
            on_start = getattr(job, "on_start", None)
            if on_start is not None:
                try:
                    on_start()
                except Exception as err:  # e.g. the image vanished in between
                    job.on_error(err)
                    job.on_finish()
                    return
        self.runner.start(job)

    def _job_error(self, err: BaseException) -> None:
        if self._closed:
            return
        if isinstance(err, ValueError):
            self.notify("error", str(err))
        elif isinstance(err, MemoryError):
            self.notify(
                "error",
                f"Out of memory: {err} Propagate fewer frames (a range) or use a smaller model.",
            )
        else:
            self.notify(
                "error",
                f"SAM 2 failed ({type(err).__name__}: {err}). Your prompts and labels are kept; "
                "try again, or report the problem with this message.",
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running job's work has left its thread (no event processing)."""
        job = self._running
        return True if job is None else job.wait_finished(timeout)

    # ------------------------------------------------------------------ layer removal
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self._image:
            if self._propagating is not None:
                self.notify("warning", "The image layer was removed, so propagation stopped.")
            self.cancel()
            self.image_layer = None
        elif layer is self.points_layer or layer is self.shapes_layer:
            layer.events.data.disconnect(self._on_prompt_data)
            if layer is self.points_layer:
                self.points_layer = None
            else:
                self.shapes_layer = None

    # ------------------------------------------------------------------ teardown
    def close(self, timeout: float = 60.0) -> None:
        """Stop all work and disconnect from the viewer. Blocks until the worker has stopped."""
        if self._closed:
            return
        running = self._running
        for job in list(self._queue):
            job.cancel()
        self._queue.clear()
        if running is not None:
            running.cancel()
        self._closed = True
        if running is not None and threading.current_thread() is threading.main_thread():
            running.wait_finished(timeout)
        with contextlib.suppress(Exception):
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
            self.viewer.dims.events.current_step.disconnect(self._on_dims_changed)
            self.viewer.dims.events.ndisplay.disconnect(self._on_dims_changed)
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None:
                with contextlib.suppress(Exception):
                    layer.events.data.disconnect(self._on_prompt_data)
                with contextlib.suppress(ValueError):
                    layer.mouse_drag_callbacks.remove(self._on_points_press)
        if self._propagating is not None:
            self._propagating.on_finish()
        self._session = None
        self.model = None

    @property
    def closed(self) -> bool:
        return self._closed
