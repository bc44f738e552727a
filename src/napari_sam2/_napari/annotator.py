"""The SAM 2 annotator of one viewer: one evented state, and the actions a user takes.

:class:`Annotator` holds an :class:`~.state.AnnotatorState` (the only mutable UI state; the dock
widget binds to it both ways) and runs a one-way pipeline::

    prompt layers --(pure read)--> prompts --(sync: EngineLink)--> jobs --> labels writer

Scripts and tests drive it directly, without any widget::

    annotator = Annotator(viewer)
    annotator.set_model(build_sam2("sam2.1_hiera_tiny"))
    annotator.state.image = viewer.layers["cells"]
    annotator.add_point((5, 40, 60))        # world coordinates; segments slice 5
    annotator.propagate()

Threading: every engine call runs in a :class:`~.jobs.Job` of one queue; layers are written
only from the jobs' main-thread callbacks. Nothing here imports Qt.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils.events import EmitterGroup
from napari.utils.notifications import show_error, show_warning

from ..engine.precision import precision_name, resolve_precision
from . import everything, prompt_io, propagation
from .feature_folder import default_folder
from .geometry import SliceGeometry, current_frame, geometry_for
from .history import History, Snapshot, Step
from .jobs import Job, JobQueue, Runner, SyncRunner
from .layers import ImageLayers
from .messages import failure_message
from .model_loading import model_loading_job
from .multiscale import level_shapes, level_text, resolve_level
from .prompt_read import PromptSource, plane_key, read_prompts, source_of
from .state import INTENSITY_MODES, AnnotatorState, ObjectInfo
from .sync import NO_IMAGE, NO_MODEL, EngineLink, EngineSession
from .writer import erase_object, next_free_id, write_frame

__all__ = ["AUTO_LEVEL", "INTENSITY_MODES", "Annotator", "annotator_for"]

#: The dock's text of the automatic pyramid level (:func:`~.multiscale.default_level`).
AUTO_LEVEL = "auto (finest that fits the model)"

#: One annotator (state and model) per viewer, so reopening the dock restores the session.
_ANNOTATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def annotator_for(viewer, runner: Runner | None = None) -> Annotator:
    """The viewer's annotator: the open one, or a new one that keeps the closed one's state,
    model, objects and history."""
    viewer = _unwrapped(viewer)
    found = _ANNOTATORS.get(viewer)
    if found is not None and not found.closed:
        if runner is not None:
            found.jobs.runner = runner
        return found
    annotator = Annotator(viewer, runner, restore=found)
    _ANNOTATORS[viewer] = annotator
    return annotator


@dataclass(eq=False)
class _ImageWork:
    """What the annotator keeps per image: its layers, objects, painted masks and history."""

    layers: ImageLayers
    objects: tuple[ObjectInfo, ...] = ()
    current: int | None = None
    painted: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    history: History = field(default_factory=History)
    snapshot: Snapshot | None = None


class Annotator:
    """Scriptable SAM 2 annotation of one napari viewer.

    Args:
        viewer: the napari viewer.
        runner: executes jobs; :class:`SyncRunner` (inline) by default, the dock passes a
            thread runner.
        restore: a closed annotator of the same viewer whose state, model and work to keep.

    Attributes:
        state: the evented state. ``events.message`` (``level``, ``text``) reports messages;
        ``messages`` keeps them, newest last.
    """

    def __init__(self, viewer, runner: Runner | None = None, *, restore=None) -> None:
        # napari hands plugin widgets a proxy of the viewer whose layers are proxies too;
        # identity checks (is this our layer?) need the objects themselves.
        self.viewer = _unwrapped(viewer)
        self.events = EmitterGroup(source=self, message=None, layers_lost=None)
        self.messages: list[tuple[str, str]] = []
        self.state = AnnotatorState()
        self.jobs = JobQueue(runner or SyncRunner(), self._set_busy)
        self.engine = EngineLink(
            self.jobs,
            on_result=self._write_result,
            on_error=self.report_failure,
            on_note=self._on_store_note,
        )
        self._work: dict[int, _ImageWork] = {}
        self._warned: set[str] = set()
        self.propagation_job: Job | None = None
        self._model_name = "SAM 2"
        self._shown: Image | None = None
        self.closed = False
        if restore is not None:
            self._adopt(restore)
        self.state.events.image.connect(self._on_image)
        for name in (
            "tracked_axis", "channel_axis", "intensity", "fixed_range", "precision", "level",
            "feature_store", "feature_folder", "roi",
        ):  # fmt: skip
            getattr(self.state.events, name).connect(self._on_reading_settings)
        self.state.events.current_object.connect(self._on_current_object)
        self.state.events.precision.connect(self._describe_model)
        self.state.events.positive.connect(self._refresh_defaults)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.order.connect(self._on_view_changed)
        viewer.dims.events.ndisplay.connect(self._on_view_changed)
        viewer.dims.events.current_step.connect(self._on_step)
        if self.state.image is not None:
            self._enter_image(reset_axes=False)

    def _adopt(self, old: Annotator) -> None:
        """Carry a closed annotator's model, state and per-image work over to this one."""
        self.engine.model = old.engine.model
        self._model_name = old._model_name
        values = {name: getattr(old.state, name) for name in old.state.__fields__}
        values.update(busy=False, progress=None)
        if values["image"] is not None and values["image"] not in self.viewer.layers:
            values["image"] = None
        self.state.update(values)
        for key, work in old._work.items():
            work.layers.detach()
            if work.layers.image in self.viewer.layers:
                work.layers = self._make_layers(work.layers.image)
                self._work[key] = work

    # ------------------------------------------------------------------ messages
    def notify(self, level: str, text: str) -> None:
        """Tell the user ``text`` (``level``: info, warning or error). Warnings and errors are
        napari notifications; information goes to the viewer's status bar and the dock's status
        line, since a notification over the canvas makes every redraw repaint the window (a
        click on a cached slice took 35 ms longer on the CPU here while one was shown)."""
        self.messages.append((level, text))
        self.events.message(level=level, text=text)
        if level == "info":
            self.viewer.status = text
            self.state.status = text
            return
        {"warning": show_warning, "error": show_error}[level](text)

    def warn_once(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.notify("warning", text)

    def report_failure(self, err: BaseException) -> None:
        if not self.closed:
            self.notify("error", failure_message(err))

    def _set_busy(self, busy: bool) -> None:
        self.state.busy = busy

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        return self.engine.model

    def set_model(self, model, name: str | None = None) -> None:
        """Use ``model`` (a built SAM 2 network) from now on; prompts are segmented with it."""
        self.jobs.stop_background()
        self.engine.model = model
        self.engine.drop()
        name = name or getattr(getattr(model, "config", None), "name", None) or "SAM 2"
        self._model_name = name
        self._describe_model()
        self.state.status = f"Model {self.state.loaded}."
        self.sync()
        self.prefetch()

    def _describe_model(self, _event=None) -> None:
        """``state.loaded``: the model, its device and the precision it computes in."""
        model = self.model
        if model is None:
            return
        try:
            precision = precision_name(resolve_precision(self.state.precision, model.device))
        except ValueError as err:
            precision = f"precision not available: {err}"
        self.state.loaded = f"{self._model_name} on {model.device}, {precision}"

    def load_model(self) -> Job:
        """Load the model the state names (preset, or ``checkpoint`` file) in the background."""
        state = self.state
        checkpoint = state.checkpoint.strip() or None
        had = state.loaded
        state.status = f"Loading {checkpoint or state.model_name}…"

        def on_done(result) -> None:
            model, name = result
            self.set_model(model, name)
            self.notify("info", f"SAM 2 model {state.loaded} is ready.")

        def on_error(err: BaseException) -> None:
            kept = f" The model {had} is still in use." if had else ""
            state.status = "No model loaded." if not had else f"Model {had}."
            self.notify("error", f"Could not load the model: {failure_message(err)}{kept}")

        job = model_loading_job(
            state.model_name,
            checkpoint,
            device=state.device,
            image_size=state.image_size,
            on_done=on_done,
            on_error=on_error,
        )
        self.jobs.submit(job)
        return job

    # ------------------------------------------------------------------ image and layers
    def default_image(self) -> Image | None:
        """The active layer if it is an image, else the top-most image layer, else None."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None

    def _make_layers(self, image: Image) -> ImageLayers:
        return ImageLayers(
            self.viewer,
            image,
            on_edit=self._on_prompt_edit,
            on_paint=self._on_paint,
            defaults=self._defaults,
        )

    @property
    def work(self) -> _ImageWork | None:
        image = self.state.image
        return None if image is None else self._work.get(id(image))

    @property
    def layers(self) -> ImageLayers | None:
        """The current image's layers (points, shapes, labels), or None."""
        work = self.work
        return None if work is None else work.layers

    def _on_image(self, _event=None) -> None:
        self._enter_image(reset_axes=True)

    def _enter_image(self, *, reset_axes: bool) -> None:
        """Show the chosen image's objects and layers (after the state's image changed)."""
        self.jobs.stop_background()
        raw = _unwrapped(self.state.image)
        if raw is not self.state.image:
            self.state.image = raw  # comes back here with the layer itself
            return
        shown = self._work.get(id(self._shown)) if self._shown is not None else None
        if shown is not None and shown.layers.image is not self.state.image:
            shown.objects, shown.current = self.state.objects, self.state.current_object
        image = self._shown = self.state.image
        if image is None:
            self.state.update({"objects": (), "current_object": None})
            return
        if not isinstance(image, Image):
            raise TypeError(f"the image must be a napari Image layer, not {type(image).__name__}")
        work = self._work.get(id(image))
        if work is None:
            work = _ImageWork(self._make_layers(image))
            self._work[id(image)] = work
            found = work.layers.adopted_objects()
            work.objects = tuple(ObjectInfo(id=i, name=f"object {i}") for i in found)
            work.current = found[0] if found else None
        values = {"objects": work.objects, "current_object": work.current}
        if reset_axes and shown is not work:
            values.update(tracked_axis=None, channel_axis=None, level=None)
        self.state.update(values)
        self.ensure_layers()
        work.layers.select_prompts()
        work.snapshot = self.snapshot()
        self.sync()
        self.prefetch()

    def ensure_layers(self) -> bool:
        """Create the prompt layers and the output Labels layer of the image if missing; make
        sure there is a current object. False (after a message) without an image."""
        work = self.work
        if work is None or work.layers.image not in self.viewer.layers:
            self.notify("error", NO_IMAGE)
            return False
        if self.state.current_object is None:
            self.new_object()
        work.layers.ensure_prompt_layers()
        try:
            work.layers.ensure_labels(self.geometry().shape)
        except ValueError as err:
            self.notify("error", str(err))
            return False
        self._report_retired(work.layers)
        return True

    def _report_retired(self, layers: ImageLayers) -> None:
        while layers.retired:
            name = layers.retired.pop(0)
            self.notify(
                "info",
                f"The labels made at the other pyramid level are kept in the layer {name!r}; "
                f"masks at level {self.level()} go to a new Labels layer.",
            )

    def geometry(self) -> SliceGeometry:
        """The current slice geometry of the image (raises ValueError with what to do)."""
        state = self.state
        if state.image is None:
            raise ValueError(NO_IMAGE)
        return geometry_for(
            self.viewer,
            state.image,
            tracked_axis=state.tracked_axis,
            channel_axis=state.channel_axis,
            level=self.level(),
        )

    def input_size(self) -> int:
        """The model's square input side: the loaded model's, else the one chosen to load."""
        if self.model is not None:
            return int(self.model.image_size)
        return int(self.state.image_size or 1024)

    def level(self) -> int:
        """The pyramid level of the image the annotator reads (0 for a plain image): the
        state's ``level``, or for "auto" (None) the finest level whose frame fits the model's
        input size (:func:`~.multiscale.default_level`). Raises ValueError with what to do."""
        image = self.state.image
        if image is None or not getattr(image, "multiscale", False):
            return 0
        shapes = level_shapes(image)
        frame_axes = geometry_for(self.viewer, image).frame_axes
        return resolve_level(self.state.level, shapes, frame_axes, self.input_size(), image.name)

    def level_choices(self) -> list[tuple[str, int | None]]:
        """(text, level) of a multiscale image's levels, "auto" first (None); [] otherwise."""
        image = self.state.image
        if image is None or not getattr(image, "multiscale", False):
            return []
        shapes = level_shapes(image)
        try:
            frame_axes = geometry_for(self.viewer, image).frame_axes
        except ValueError:
            return []
        # One text for "auto" whatever it resolves to, so the dock's choice never changes
        # under the user when a model with another input size is loaded.
        return [
            (AUTO_LEVEL, None),
            *((level_text(shapes, k, frame_axes), k) for k in range(len(shapes))),
        ]

    def level_description(self) -> str:
        """What the annotator reads, e.g. "level 1 (512 × 512) of 3"; "" for a plain image."""
        image = self.state.image
        if image is None or not getattr(image, "multiscale", False):
            return ""
        try:
            frame_axes = geometry_for(self.viewer, image).frame_axes
            level = self.level()
        except ValueError as err:
            return str(err)
        shapes = level_shapes(image)
        return f"{level_text(shapes, level, frame_axes)} of {len(shapes)}"

    def axis_choices(self) -> list[tuple[str, int]]:
        """(text, layer axis) of the axes that can be tracked or hold channels, named as
        napari's sliders are (the viewer's axis labels), with their length."""
        image = self.state.image
        if image is None:
            return []
        try:
            frame_axes = geometry_for(self.viewer, image).frame_axes
        except ValueError:
            return []
        offset = self.viewer.dims.ndim - image.ndim
        labels = self.viewer.dims.axis_labels
        shape = image.data[0].shape if image.multiscale else image.data.shape
        return [
            (f"{labels[axis + offset]} ({shape[axis]})", axis)
            for axis in range(image.ndim)
            if axis not in frame_axes
        ]

    def current_frame(self) -> int:
        """Index of the slice the viewer shows along the tracked axis."""
        return current_frame(self.viewer, self.state.image, self.geometry())

    def intensity_range(self) -> tuple[float, float] | None:
        state = self.state
        if state.intensity == "contrast limits":
            lo, hi = state.image.contrast_limits
            return float(lo), float(hi)
        if state.intensity == "fixed":
            lo, hi = state.fixed_range or (None, None)
            if lo is None or not float(lo) < float(hi):
                raise ValueError(
                    f"The fixed intensity range {state.fixed_range} needs low < high; set it "
                    "under 'Intensity', or choose 'auto'."
                )
            return float(lo), float(hi)
        return None

    def session(self) -> EngineSession:
        """The engine session of the image at the current plane and settings."""
        state = self.state
        if state.image is None or state.image not in self.viewer.layers:
            raise ValueError(NO_IMAGE)
        folder = None
        if state.feature_store:
            folder = str(Path(state.feature_folder.strip() or default_folder()).expanduser())
        session = self.engine.session(
            state.image,
            self.geometry(),
            self.intensity_range(),
            state.precision,
            folder,
            roi=state.roi,
        )
        if folder is None:
            state.store_note = ""
        elif session.store_note:
            state.store_note = session.store_note  # a session made earlier: its store's note
        return session

    def _on_store_note(self, text: str) -> None:
        """A feature store was opened (found or new) or could not be: say so in the dock."""
        if self.closed or not self.state.feature_store:
            return
        self.state.store_note = text
        self.notify("info", text)

    # ------------------------------------------------------------------ defaults and events
    def _defaults(self) -> dict:
        try:
            plane = plane_key(self.geometry())
        except ValueError:
            plane = ""
        return {
            "object": self.state.current_object or 1,
            "label": int(self.state.positive),
            "plane": plane,
        }

    def _refresh_defaults(self, _event=None) -> None:
        layers = self.layers
        if layers is not None:
            layers.refresh_defaults()
            if layers.alive(layers.labels) and self.state.current_object is not None:
                layers.labels.selected_label = self.state.current_object

    def _on_current_object(self, _event=None) -> None:
        work = self.work
        if work is not None:
            work.current = self.state.current_object
        self._refresh_defaults()

    def _on_reading_settings(self, _event=None) -> None:
        self.jobs.stop_background()
        if self.state.image is not None and not self.closed:
            self.sync()
            self.prefetch()

    def _on_view_changed(self, _event=None) -> None:
        if self.closed or self.state.image is None:
            return
        self._refresh_defaults()
        self.sync()

    def _on_step(self, _event=None) -> None:
        self.prefetch()

    def prefetch(self) -> None:
        """Prepare the current slice and its neighbours while idle (if ``state.prefetch``)."""
        if self.closed or not self.state.prefetch or self.state.image is None:
            return
        if self.model is None:
            return
        try:
            session = self.session()
            frame = self.current_frame()
        except ValueError:
            return
        self.engine.prefetch(session, frame)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if self.closed:
            return
        if layer is self.state.image:
            if self.propagation_job is not None:
                self.notify("warning", "The image layer was removed, so propagation stopped.")
            self.cancel()
            self.engine.drop(layer)
            self._work.pop(id(layer), None)
            self.state.image = None
            return
        work = self.work
        if work is None:
            return
        if layer in (work.layers.points, work.layers.shapes):
            count = work.layers.forget(layer)
            if count:
                self.notify(
                    "warning",
                    f"The layer {layer.name!r} was deleted with {count} prompt(s). They are kept: "
                    "nothing is erased, and they come back in a new layer.",
                )
                self.events.layers_lost()
        elif layer is work.layers.labels:
            work.layers.forget(layer)

    def restore_layers(self) -> None:
        """Bring back deleted prompt layers with their prompts."""
        if self.work is not None and not self.closed:
            self.work.layers.ensure_prompt_layers()
            self.work.snapshot = self.snapshot()

    # ------------------------------------------------------------------ snapshots and undo
    def snapshot(self) -> Snapshot:
        work = self.work
        layers = work.layers
        return Snapshot(
            points=layers.content("points"),
            shapes=layers.content("shapes"),
            painted=dict(work.painted),
            objects=tuple((o.id, o.name) for o in self.state.objects),
            current=self.state.current_object,
        )

    def record_step(self, name: str, before: Snapshot | None = None) -> Step:
        """Record a step from the last snapshot (or ``before``) to now."""
        work = self.work
        before = before or work.snapshot or self.snapshot()
        after = self.snapshot()
        work.snapshot = after
        return work.history.push(Step(name, before, after))

    def restore_snapshot(self, snapshot: Snapshot) -> None:
        work = self.work
        layers = work.layers
        layers.restore("points", snapshot.points)
        layers.restore("shapes", snapshot.shapes)
        work.painted = dict(snapshot.painted)
        self.state.update(
            {
                "objects": tuple(ObjectInfo(id=i, name=n) for i, n in snapshot.objects),
                "current_object": snapshot.current,
            }
        )
        work.snapshot = snapshot

    def undo(self) -> None:
        """Undo the last segmentation, propagation, paint, object change or prompt edit."""
        self._undo_redo(undo=True)

    def redo(self) -> None:
        """Redo what :meth:`undo` undid."""
        self._undo_redo(undo=False)

    def _undo_redo(self, *, undo: bool) -> None:
        if self.propagation_job is not None:
            self.notify("warning", "A propagation is running: press Cancel first, then undo.")
            return
        work = self.work
        if work is None:
            return

        def apply() -> None:
            step = work.history.pop_undo() if undo else work.history.pop_redo()
            if step is None:
                self.notify("info", "Nothing to undo." if undo else "Nothing to redo.")
                return
            labels = step.labels
            if step.label_steps and labels is not None and labels in self.viewer.layers:
                for _ in range(step.label_steps):
                    labels.undo() if undo else labels.redo()
            elif step.label_steps:
                self.notify(
                    "warning",
                    "The Labels layer of that step was deleted; only its prompts are restored.",
                )
            self.restore_snapshot(step.before if undo else step.after)
            self.sync(write=False)
            self.state.status = f"{'Undid' if undo else 'Redid'} {step.name}."

        # After the work already asked for, so its pixels are in napari's history first.
        self.jobs.submit(Job("undo" if undo else "redo", None, on_start=apply))

    # ------------------------------------------------------------------ prompts
    def sync(self, *, write: bool = True, step: Step | None = None) -> None:
        """Send the engine every prompt group of the current plane that changed."""
        work = self.work
        if self.closed or work is None or self.model is None:
            return
        try:
            session = self.session()
        except ValueError as err:
            if work.layers.alive(work.layers.points) and len(work.layers.points.data):
                self.warn_once(str(err))
            return
        layers = work.layers
        read = self.read_prompts(session)
        for text in read.problems:
            self.warn_once(text)
        if read.other_plane:
            self.warn_once(
                f"{read.other_plane} prompt(s) were made in another view orientation; they are "
                "kept and used again when you return to it."
            )
        for obj_id, _ in read.prompts:
            self._register(obj_id)
        labels = layers.labels if layers.alive(layers.labels) else None
        if labels is not None and tuple(labels.data.shape) != tuple(session.geometry.shape):
            labels = layers.ensure_labels(session.geometry.shape)  # another pyramid level
            self._report_retired(layers)
        context = {"step": step, "labels": labels, "protect": self.state.protect}
        self.engine.send(session, read.prompts, context=context, write=write)

    def _register(self, obj_id: int) -> None:
        if obj_id not in self.state.object_ids:
            self.state.objects = (
                *self.state.objects,
                ObjectInfo(id=obj_id, name=f"object {obj_id}"),
            )

    def _on_prompt_edit(self) -> None:
        if self.closed or self.work is None:
            return
        step = self.record_step("prompt edit")
        if self.model is None:
            self.warn_once(NO_MODEL)
            return
        self.ensure_layers()
        self.sync(step=step)
        self.prefetch()

    def add_point(self, world_position, positive: bool | None = None) -> None:
        """Add a click at ``world_position`` (full world coordinates) for the current object."""
        if not self.ensure_layers():
            return
        defaults = self._defaults()
        if positive is not None:
            defaults["label"] = int(bool(positive))
        self.work.layers.add_point(world_position, defaults)

    def add_box(self, world_a, world_b) -> None:
        """Add a rectangle between two opposite world corners (on one slice) as a box."""
        if not self.ensure_layers():
            return
        self.work.layers.add_box(world_a, world_b, self.geometry().frame_axes, self._defaults())

    def toggle_polarity(self) -> bool:
        """Switch whether new clicks are positive (True) or negative; returns the new state."""
        self.state.positive = not self.state.positive
        return self.state.positive

    # ------------------------------------------------------------------ prompt files
    def read_prompts(self, session: EngineSession | None = None):
        """A pure read of the current plane's prompts (:class:`~.prompt_read.PromptRead`):
        the prompt layers, what a deleted prompt layer held, and the painted masks."""
        work = self.work
        session = session or self.session()
        layers = work.layers
        image = session.image
        points = source_of(layers.points, image) if layers.alive(layers.points) else None
        shapes = source_of(layers.shapes, image) if layers.alive(layers.shapes) else None
        if points is None and "points" in layers.lost:
            points = _lost_source(layers.lost["points"])
        if shapes is None and "shapes" in layers.lost:
            shapes = _lost_source(layers.lost["shapes"])
        painted = {
            key: mask
            for key, mask in work.painted.items()
            if mask.shape == session.geometry.frame_shape
        }
        return read_prompts(points, shapes, image, session.geometry, painted)

    def save_prompts(self, path, *, overwrite: bool = False) -> bool:
        """Write every object, the prompts of this plane and the settings to one prompt file
        (atomically); the command line replays it. False (after a message) on a problem."""
        return prompt_io.save_prompts(self, path, overwrite=overwrite)

    def load_prompts(self, path) -> bool:
        """Replace this image's objects and prompts with a prompt file's (one undo step)."""
        return prompt_io.load_prompts(self, path)

    # ------------------------------------------------------------------ many objects
    def segment_everything(self, **parameters) -> Job | None:
        """Find every object on the current slice in the background (SAM 2's automatic mask
        generator; ``parameters`` as Meta's, e.g. ``points_per_side``, ``pred_iou_thresh``,
        ``stability_score_thresh``, ``min_mask_region_area``); each becomes an object with a
        mask prompt there. One undo step."""
        return everything.segment_everything(self, **parameters)

    def objects_from_labels(self, layer, frames: list[int] | None = None) -> int:
        """Each label id of a Labels layer on ``frames`` (default: every labelled slice)
        becomes a mask prompt of the object with that id. One undo step; returns how many
        objects are new. Raises ValueError for a layer of another shape or without labels."""
        return everything.objects_from_labels(self, layer, frames)

    # ------------------------------------------------------------------ painting
    def _on_paint(self, atoms: list) -> None:
        """A brush stroke, fill or erase by the user: its slices become mask prompts."""
        work = self.work
        if work is None or self.closed:
            return
        labels = work.layers.labels
        try:
            geometry = self.geometry()
        except ValueError:
            return
        touched = _touched(atoms, geometry)
        before = work.snapshot or self.snapshot()
        objects = set(self.state.object_ids)
        edited = []
        for frame, ids in touched.items():
            frame_labels = np.asarray(labels.data[geometry.frame_slice(frame)])
            for obj_id in ids & objects:
                work.painted[(obj_id, frame)] = frame_labels == obj_id
                edited.append((obj_id, frame))
        if len(edited) == 1:
            obj_id, frame = edited[0]
            name = self.state.object_name(obj_id)
            self.state.status = f"Painted {name} on slice {frame}: it is that slice's prompt now."
        elif edited:
            self.state.status = f"Painted {len(edited)} object slices: each is a prompt now."
        step = self.record_step("paint", before)
        step.add_label_step(labels)
        self.sync(write=False)

    # ------------------------------------------------------------------ objects
    def new_object(self) -> int:
        """Start a new object with an id used by no object and no painted label; select it."""
        work = self.work
        labels = None if work is None else work.layers.labels
        if labels is not None and labels not in self.viewer.layers:
            labels = None
        obj_id = next_free_id(labels, set(self.state.object_ids))
        before = None if work is None else (work.snapshot or self.snapshot())
        self.state.objects = (*self.state.objects, ObjectInfo(id=obj_id, name=f"object {obj_id}"))
        self.state.current_object = obj_id
        if work is not None and before is not None:
            self.record_step("new object", before)
        return obj_id

    def select_object(self, obj_id: int) -> None:
        """Make ``obj_id`` current: new prompts belong to it and the Labels layer paints it."""
        if obj_id not in self.state.object_ids:
            raise ValueError(
                f"Object {obj_id} does not exist; the objects are {self.state.object_ids}."
            )
        self.state.current_object = int(obj_id)

    def rename_object(self, obj_id: int, name: str) -> None:
        """Give ``obj_id`` a name (kept in the prompt file)."""
        name = str(name).strip() or f"object {obj_id}"
        self.state.objects = tuple(
            ObjectInfo(id=o.id, name=name if o.id == obj_id else o.name)
            for o in self.state.objects
        )
        if self.work is not None:
            self.record_step("rename")

    def delete_object(self, obj_id: int) -> None:
        """Remove ``obj_id``: its prompts, painted masks, engine state and pixels (undoable)."""
        self._clear(obj_id, frame=None, keep_object=False)

    def clear_object(self, obj_id: int | None = None) -> None:
        """Remove every prompt and pixel of an object (default: the current one); it stays in
        the list."""
        self._clear(obj_id or self.state.current_object, frame=None, keep_object=True)

    def clear_slice(self, obj_id: int | None = None) -> None:
        """Remove an object's prompts, painted mask and pixels on the current slice."""
        self._clear(
            obj_id or self.state.current_object, frame=self.current_frame(), keep_object=True
        )

    def _clear(self, obj_id: int | None, *, frame: int | None, keep_object: bool) -> None:
        work = self.work
        if work is None or obj_id is None or obj_id not in self.state.object_ids:
            return
        before = work.snapshot or self.snapshot()
        shown_name = self.state.object_name(obj_id)
        geometry = self.geometry()
        frame_of = None
        if frame is not None:

            def frame_of(data_coords, _geometry=geometry, _frame=frame):
                # Prompt layers hold level-0 coordinates; the frame is counted at the level.
                return _geometry.frame_of(_geometry.to_level(data_coords)) == _frame

        work.layers.remove_prompts(obj_id, frame_of)
        work.painted = {
            key: mask
            for key, mask in work.painted.items()
            if not (key[0] == obj_id and (frame is None or key[1] == frame))
        }
        if not keep_object:
            remaining = [o for o in self.state.objects if o.id != obj_id]
            self.state.objects = tuple(remaining)
            if self.state.current_object == obj_id:
                self.state.current_object = remaining[-1].id if remaining else None
        if not keep_object:
            name = "delete object"
        else:  # slice 0 is a slice too
            name = "clear object" if frame is None else "clear slice"
        step = self.record_step(name, before)
        if not keep_object:
            self.state.status = f"Deleted {shown_name}."
        elif frame is None:
            self.state.status = f"Cleared {shown_name} on every slice."
        else:
            self.state.status = f"Cleared {shown_name} on slice {frame}."
        labels = work.layers.labels
        session = None
        with contextlib.suppress(ValueError):
            session = self.session()
        if session is not None and frame is None:
            self.engine.forget(session, obj_id)
        if session is not None:
            self.sync(write=False)

        def erase() -> None:
            if labels is None or labels not in self.viewer.layers:
                return
            index = None if frame is None else geometry.frame_slice(frame)
            if geometry.channel_axis is not None and frame is not None:
                index = tuple(
                    slice(None) if axis == geometry.channel_axis else part
                    for axis, part in enumerate(index)
                )
            with work.layers.muted(), labels.block_history():
                changed = erase_object(labels, obj_id, index)
            if changed:
                step.add_label_step(labels)

        self.jobs.submit(Job(name, None, on_start=erase))

    # ------------------------------------------------------------------ writing
    def _write_result(
        self, session: EngineSession, frame: int, logits: dict, context, obj_id: int
    ) -> None:
        labels = context.get("labels")
        work = self._work.get(id(session.image))
        if work is None:
            return
        if labels is None or labels not in self.viewer.layers:
            # Only a job made before any Labels layer existed may create one.
            if labels is None and work.layers.image is session.image:
                labels = work.layers.ensure_labels(session.geometry.shape)
            else:
                return
        masks = {k[0]: m for k, m in work.painted.items() if k[1] == frame}
        with work.layers.muted(), labels.block_history():
            changed = write_frame(
                labels,
                session.geometry,
                frame,
                logits,
                masks=masks,
                protect=context.get("protect", True),
                refresh=self.shows(session, frame),
            )
        step = context.get("step")
        if changed and step is not None:
            step.add_label_step(labels)
        self.state.status = _edit_status(self.state.object_name(obj_id), frame, logits.get(obj_id))

    def shows(self, session: EngineSession, frame: int) -> bool:
        """Whether the viewer displays ``frame`` of ``session`` now (only that slice needs a
        redraw: each redraw uploads a texture)."""
        if self.state.image is not session.image:
            return False
        try:
            geometry = self.geometry()
        except ValueError:
            return True
        if geometry.key() != session.geometry.key():
            return False
        return current_frame(self.viewer, session.image, geometry) == frame

    # ------------------------------------------------------------------ propagation
    def propagate(
        self,
        direction: str | None = None,
        *,
        start: int | None = None,
        max_frames: int | None = None,
    ) -> Job | None:
        """Track every object from ``start`` (default: the current slice) through the stack.

        ``direction`` (default: the state's): one of :data:`DIRECTIONS`; ``max_frames`` (default:
        the state's) limits the frames per direction, start included. Slices are written into
        the Labels layer as they come; the run is one undo step; a cancel keeps the slices
        written. Returns the job, or None after a message when it cannot start.
        """
        if self.propagation_job is not None:
            self.notify("warning", "A propagation is already running; wait or press Cancel.")
            return None
        return propagation.start_propagation(self, direction, start, max_frames)

    def cancel(self) -> None:
        """Stop the running propagation or model load at the next slice; written slices are
        kept."""
        running = self.jobs.running
        if running is not None and running.name in ("propagate", "load model"):
            running.cancel()
        job = self.propagation_job
        if job is not None:
            job.cancel()
            self.jobs.withdraw(job)

    # ------------------------------------------------------------------ teardown
    def close(self, timeout: float = 60.0) -> None:
        """Stop all work and disconnect from the viewer; the state and the work are kept for a
        dock opened again on this viewer. Blocks until the worker has stopped."""
        if self.closed:
            return
        self.closed = True
        work = self.work
        if work is not None:
            work.objects, work.current = self.state.objects, self.state.current_object
        self.jobs.close(timeout)
        if self.propagation_job is not None:
            self.propagation_job.deliver_finish()
        with contextlib.suppress(Exception):
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
            self.viewer.dims.events.order.disconnect(self._on_view_changed)
            self.viewer.dims.events.ndisplay.disconnect(self._on_view_changed)
            self.viewer.dims.events.current_step.disconnect(self._on_step)
        for work in self._work.values():
            work.layers.detach()


def _edit_status(name: str, frame: int, logits) -> str:
    """The status line after a prompt edit of object ``name`` on ``frame``, given its logits
    there (None when the object was removed from the slice)."""
    if logits is None:
        return f"Cleared {name} on slice {frame}."
    if not (logits > 0).any():
        return f"No mask for {name} on slice {frame}: click inside the object, or box it."
    return f"Segmented {name} on slice {frame}."


def _unwrapped(obj):
    """The object behind a napari ``PublicOnlyProxy`` (or ``obj`` itself)."""
    return getattr(obj, "__wrapped__", obj)


def _touched(atoms: list, geometry: SliceGeometry) -> dict[int, set[int]]:
    """``{frame: ids}`` that a Labels history item changed: old and new values per frame."""
    touched: dict[int, set[int]] = {}
    axis = geometry.tracked_axis
    for atom in atoms:
        if hasattr(atom, "slice_key"):
            key = atom.slice_key
            if axis is None:
                frames = [0]
            else:
                part = key[axis]
                frames = range(part.start, part.stop) if isinstance(part, slice) else [int(part)]
            ids = set(np.unique(np.asarray(atom.old_values)).tolist())
            ids |= set(np.unique(np.asarray(atom.new_value)).tolist())
        else:
            indices, old, new = atom
            frames = [0] if axis is None else np.unique(np.asarray(indices[axis])).tolist()
            ids = set(np.unique(np.asarray(old)).tolist()) | set(
                np.unique(np.asarray(new)).tolist()
            )
        for frame in frames:
            touched.setdefault(int(frame), set()).update(int(i) for i in ids if i)
    return touched


def _lost_source(content):
    """A deleted prompt layer's content as a prompt source (it was aligned with the image)."""
    if content.shape_type is not None:
        vertices = [np.asarray(v) for v in content.data]
        return PromptSource(vertices, content.features, list(content.shape_type))
    return PromptSource(np.asarray(content.data), content.features)
