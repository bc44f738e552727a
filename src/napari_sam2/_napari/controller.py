"""The annotator's state and actions for one viewer, scriptable without any widget.

:class:`AnnotatorController` owns the prompt layers, the output Labels layer, the object list
and one engine :class:`~napari_sam2.engine.tracker.Tracker` (a *session*). The dock widget in
``napari_sam2._qt`` is a thin shell over it; scripts and tests drive it directly::

    controller = AnnotatorController(viewer, runner=ThreadRunner())
    controller.set_model(build_sam2("sam2.1_hiera_tiny"))
    controller.image_layer = viewer.layers["cells"]
    controller.add_point((5, 40, 60))        # world coordinates; segments slice 5
    controller.propagate("both")

It composes one part per job: :class:`~.session.FrameSettings` and :class:`~.session.Sessions`
(what is segmented, the tracker), :class:`~.objects.ObjectRegistry`,
:class:`~.annotation_layers.AnnotationLayers` (layers, prompt events, colours, keys),
:class:`~.jobs.JobQueue`, :class:`~.segmentation.Segmentation` (prompts to engine to labels)
and :class:`~.propagation.Propagation`.

Threading: every engine call runs in a :class:`~napari_sam2._napari.jobs.Job` executed by the
runner (one job at a time, in order); layers are written only from the jobs' main-thread
callbacks. Nothing here imports Qt.
"""

from __future__ import annotations

import contextlib

from napari.layers import Image
from napari.utils.events import EmitterGroup
from napari.utils.notifications import show_error, show_info, show_warning

from ..engine.tracker import Tracker
from .annotation_layers import AnnotationLayers
from .geometry import SliceGeometry
from .jobs import Job, JobQueue, Runner, SyncRunner
from .model_loading import model_loading_job
from .objects import ObjectActions, ObjectRegistry
from .propagation import Propagation
from .segmentation import Segmentation
from .session import INTENSITY_MODES, NO_IMAGE, FrameSettings, Sessions

__all__ = ["INTENSITY_MODES", "AnnotatorController"]


class _Forward:
    """An attribute of the controller that lives on one of its parts (read and write)."""

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name

    def __get__(self, owner, owner_type=None):
        if owner is None:
            return self
        return getattr(getattr(owner, self.part), self.name)

    def __set__(self, owner, value) -> None:
        setattr(getattr(owner, self.part), self.name, value)


class AnnotatorController:
    """Scriptable SAM 2 annotation of one napari viewer.

    Args:
        viewer: the napari viewer.
        runner: executes jobs; :class:`SyncRunner` (inline) by default, the Qt widget passes a
            thread runner.

    Events (``controller.events``): ``objects``, ``current_object``, ``busy``, ``model``,
    ``message`` (``level``, ``text``) and ``image``.
    """

    # Attributes kept by the parts: model (Sessions), runner (JobQueue), protect (Segmentation:
    # masks never overwrite other labels when True) and the three layers (AnnotationLayers).
    model = _Forward("_sessions", "model")
    runner = _Forward("_jobs", "runner")
    protect = _Forward("_segmentation", "protect")
    points_layer = _Forward("_layers", "points_layer")
    shapes_layer = _Forward("_layers", "shapes_layer")
    labels_layer = _Forward("_layers", "labels_layer")
    _on_points_press = _Forward("_layers", "on_points_press")

    def __init__(self, viewer, runner: Runner | None = None) -> None:
        self.viewer = viewer
        self.events = EmitterGroup(
            source=self,
            objects=None,
            current_object=None,
            busy=None,
            model=None,
            message=None,
            image=None,
        )
        self.model_name: str | None = None
        self.messages: list[tuple[str, str]] = []
        jobs = JobQueue(
            runner if runner is not None else SyncRunner(),
            lambda busy: self.events.busy(value=busy),
        )
        settings = FrameSettings(viewer)
        sessions = Sessions(settings)
        objects = ObjectRegistry()
        layers = AnnotationLayers(
            settings,
            objects,
            on_edit=self.resync,
            closed=lambda: jobs.closed,
            keys={"n": self.new_object, "Shift-P": lambda: self.propagate("both")},
            point_keys={"g": self.toggle_polarity},
        )
        segmentation = Segmentation(
            settings, sessions, layers, jobs, notify=self.notify, seen=self._register_object
        )
        self._propagation = Propagation(sessions, layers, jobs, segmentation, notify=self.notify)
        self._jobs, self._settings, self._sessions = jobs, settings, sessions
        self._objects, self._layers, self._segmentation = objects, layers, segmentation
        self._object_actions = ObjectActions(objects, layers, segmentation, self.events)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._segmentation.on_dims_changed)
        viewer.dims.events.ndisplay.connect(self._segmentation.on_dims_changed)

    def notify(self, level: str, text: str) -> None:
        """Show ``text`` as a napari notification (``level``: info, warning or error)."""
        self.messages.append((level, text))
        self.events.message(level=level, text=text)
        {"info": show_info, "warning": show_warning, "error": show_error}[level](text)

    # ------------------------------------------------------------------ settings
    @property
    def image_layer(self) -> Image | None:
        return self._settings.image

    @image_layer.setter
    def image_layer(self, layer: Image | None) -> None:
        if layer is not None and not isinstance(layer, Image):
            raise TypeError(
                f"image_layer must be a napari Image layer, got {type(layer).__name__}"
            )
        if layer is self._settings.image:
            return
        self._settings.choose_image(layer)
        self._sessions.drop()
        self._layers.forget_all()
        self._objects.clear()
        if layer is not None:
            self._object_actions.adopt(self._layers.adopt(layer))
        self.events.image(value=layer)
        self.events.objects(value=self.objects)

    def default_image_layer(self) -> Image | None:
        """The active layer if it is an image, else the top-most image layer, else None."""
        return self._settings.default_image()

    @property
    def tracked_axis(self) -> int | None:
        return self._settings.tracked_axis

    @tracked_axis.setter
    def tracked_axis(self, axis: int | None) -> None:
        self._settings.tracked_axis = None if axis is None else int(axis)
        self.reset_session()

    @property
    def channel_axis(self) -> int | None:
        return self._settings.channel_axis

    @channel_axis.setter
    def channel_axis(self, axis: int | None) -> None:
        self._settings.channel_axis = None if axis is None else int(axis)
        self.reset_session()

    def set_axes(self, tracked_axis: int | None, channel_axis: int | None) -> None:
        """Choose the tracked axis and the channel axis together (None: automatic / none)."""
        self._settings.set_axes(tracked_axis, channel_axis)
        self.reset_session()

    @property
    def intensity(self) -> str:
        return self._settings.intensity

    def set_intensity(self, mode: str, fixed_range: tuple[float, float] | None = None) -> None:
        """How frames map to SAM's [0, 1]: "auto" (one robust range for the whole stack),
        "contrast limits" (the layer's, what you see is what SAM sees) or "fixed" (lo, hi)."""
        self._settings.set_intensity(mode, fixed_range)
        self.reset_session()

    def axis_choices(self) -> list[int]:
        """Layer axes that can be tracked or hold channels: the non-displayed ones."""
        return self._settings.axis_choices()

    def geometry(self) -> SliceGeometry:
        """The current slice geometry of the image layer (raises ValueError without one)."""
        return self._settings.geometry()

    def current_frame(self) -> int:
        """Index of the slice the viewer shows along the tracked axis."""
        return self._settings.current_frame()

    # ------------------------------------------------------------------ model
    def set_model(self, model, name: str | None = None) -> None:
        """Use ``model`` (a built SAM 2 network) from now on; prompts are re-segmented with it."""
        self.model = model
        self.model_name = name or getattr(getattr(model, "config", None), "name", None)
        self._sessions.drop()
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

        def on_done(result) -> None:
            model, name = result
            self.set_model(model, name)
            self.notify("info", f"SAM 2 model {name} loaded on {model.device}.")

        def on_error(err: BaseException) -> None:
            kept = f" ({self.model_name})" if self.model_name else ""
            self.notify(
                "error", f"Could not load the model: {err} The previous model{kept} is kept."
            )

        job = model_loading_job(
            preset,
            checkpoint,
            device=device,
            image_size=image_size,
            on_done=on_done,
            on_error=on_error,
        )
        self._jobs.submit(job)
        return job

    # ------------------------------------------------------------------ layers and prompts
    def ensure_layers(self) -> bool:
        """Create the prompt layers and the output Labels layer for the image if missing.

        Returns False (after a notification) when there is no image layer.
        """
        image = self._settings.image
        if image is None or image not in self.viewer.layers:
            self.notify("error", NO_IMAGE)
            return False
        if self._objects.current is None:
            self.new_object()
        self._layers.ensure_prompt_layers()
        self._layers.ensure_labels()
        self._layers.apply_current_object()
        return True

    def add_point(self, world_position, positive: bool = True, obj_id: int | None = None) -> None:
        """Add a click at ``world_position`` (full world coordinates) for the current object."""
        if self.ensure_layers():
            self._layers.add_point(world_position, positive, obj_id)

    def add_box(self, world_corner_a, world_corner_b, obj_id: int | None = None) -> None:
        """Add a rectangle between two opposite world corners (on one slice) as a box."""
        if self.ensure_layers():
            self._layers.add_box(world_corner_a, world_corner_b, obj_id)

    def toggle_polarity(self) -> bool:
        """Switch whether new clicks are positive (True) or negative; returns the new state."""
        return self._layers.toggle_polarity()

    @property
    def positive(self) -> bool:
        return self._layers.positive

    def object_colour(self, obj_id: int) -> tuple[float, float, float, float]:
        """RGBA in [0, 1] of ``obj_id`` in the output Labels layer."""
        return self._layers.object_colour(obj_id)

    # ------------------------------------------------------------------ objects
    @property
    def objects(self) -> list[int]:
        """Label ids of the objects, in creation order."""
        return self._objects.ids

    @property
    def current_object(self) -> int | None:
        return self._objects.current

    def _register_object(self, obj_id: int) -> None:
        self._object_actions.register(obj_id)

    def new_object(self) -> int:
        """Start a new object with an id used by no object and no painted label; select it."""
        return self._object_actions.new()

    def select_object(self, obj_id: int) -> None:
        """Make ``obj_id`` current: new prompts belong to it and the Labels layer paints it."""
        self._object_actions.select(obj_id)

    def delete_object(self, obj_id: int) -> None:
        """Remove ``obj_id``: its prompts, its engine state and its pixels (one undo step)."""
        self._object_actions.delete(obj_id)

    # ------------------------------------------------------------------ engine
    @property
    def tracker(self) -> Tracker | None:
        """The engine tracker of the current session (None before the first segmentation)."""
        session = self._sessions.current
        return None if session is None else session.tracker

    def resync(self) -> None:
        """Send the engine every (object, frame) prompt group that changed since last time."""
        self._segmentation.resync()

    def segment(self) -> None:
        """Re-send every prompt group of the current image to the engine."""
        self._sessions.sent = {}
        self.resync()

    def reset_session(self) -> None:
        """Forget the engine's state (cached features, tracking) and re-send every prompt."""
        self._sessions.drop()
        self.resync()

    def prefetch(self, frame: int | None = None) -> None:
        """Compute the image features of ``frame`` (default: the current slice) in the
        background, so the first click there answers at once."""
        self._segmentation.prefetch(frame)

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
        return self._propagation.start(direction, start, max_frames)

    def cancel(self) -> None:
        """Stop the running propagation (or load) at the next slice; written slices are kept."""
        running = self._jobs.running
        if running is not None and running.name in ("propagate", "load model"):
            running.cancel()
        self._propagation.cancel()

    # ------------------------------------------------------------------ jobs
    @property
    def busy(self) -> bool:
        """Whether a job is running or queued."""
        return self._jobs.busy

    @property
    def running_job(self) -> Job | None:
        return self._jobs.running

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running job's work has left its thread (no event processing)."""
        return self._jobs.wait(timeout)

    # ------------------------------------------------------------------ teardown
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self._settings.image:
            if self._propagation.job is not None:
                self.notify("warning", "The image layer was removed, so propagation stopped.")
            self.cancel()
            self.image_layer = None
        elif layer is self.points_layer or layer is self.shapes_layer:
            self._layers.forget(layer)

    def close(self, timeout: float = 60.0) -> None:
        """Stop all work and disconnect from the viewer. Blocks until the worker has stopped."""
        if self._jobs.closed:
            return
        self._jobs.close(timeout)
        with contextlib.suppress(Exception):
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
            self.viewer.dims.events.current_step.disconnect(self._segmentation.on_dims_changed)
            self.viewer.dims.events.ndisplay.disconnect(self._segmentation.on_dims_changed)
        self._layers.disconnect()
        self._propagation.abandon()
        self._sessions.current = None
        self.model = None

    @property
    def closed(self) -> bool:
        return self._jobs.closed
