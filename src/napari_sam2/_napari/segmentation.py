"""Keeping the engine in step with the prompt layers, and writing its masks into the Labels layer.

After every prompt edit :meth:`Segmentation.resync` re-reads the prompt layers and sends the
engine only the (object, frame) groups that changed, each as a "segment" job; a job for a group
still waiting in the queue is replaced by the newer one. Every write goes through
:meth:`Segmentation.write_frame`, which other jobs (propagation, object deletion) share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from .annotation_layers import AnnotationLayers
from .geometry import current_frame
from .jobs import Job, JobQueue
from .labels import write_mask
from .prompts import FramePrompt, collect_prompts
from .session import NO_IMAGE, NO_MODEL, FrameSettings, Session, Sessions

__all__ = ["Segmentation", "failure_message"]


def failure_message(err: BaseException) -> str:
    """What to tell the user when a job's work raised ``err``."""
    if isinstance(err, ValueError):
        return str(err)
    if isinstance(err, MemoryError):
        return f"Out of memory: {err} Propagate fewer frames (a range) or use a smaller model."
    return (
        f"SAM 2 failed ({type(err).__name__}: {err}). Your prompts and labels are kept; "
        "try again, or report the problem with this message."
    )


@dataclass(eq=False)
class Segmentation:
    """Sends prompt changes to the engine and writes the resulting masks.

    Args:
        settings, sessions, layers, jobs: the annotator's parts this one reads and drives.
        notify: ``notify(level, text)`` shows a message.
        seen: called with every object id found in the prompts.

    Attributes:
        protect: when True, a mask never overwrites other objects' or hand-painted labels.
    """

    settings: FrameSettings
    sessions: Sessions
    layers: AnnotationLayers
    jobs: JobQueue
    _: KW_ONLY
    notify: Callable[[str, str], None]
    seen: Callable[[int], None]
    protect: bool = True
    _problems: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def viewer(self):
        return self.settings.viewer

    def report_failure(self, err: BaseException) -> None:
        """A job's ``on_error``: tell the user, unless the annotator is closed."""
        if not self.jobs.closed:
            self.notify("error", failure_message(err))

    def _warn_once(self, text: str) -> None:
        if text not in self._problems:
            self._problems.add(text)
            self.notify("warning", text)

    # ------------------------------------------------------------------ prompts -> engine
    def resync(self) -> None:
        """Send the engine every (object, frame) prompt group that changed since last time."""
        layers = self.layers
        if self.jobs.closed or self.settings.image is None:
            return
        if layers.points_layer is None and layers.shapes_layer is None:
            return
        try:
            session = self.sessions.ensure()
        except ValueError as err:
            if self.sessions.model is None and not layers.has_prompts():
                return
            self._warn_once(str(err))
            return
        groups, problems = collect_prompts(
            layers.points_layer, layers.shapes_layer, session.image, session.geometry
        )
        for text in problems:
            self._warn_once(text)
        self._problems &= set(problems) | {NO_MODEL, NO_IMAGE}
        for obj_id, _frame in groups:
            self.seen(obj_id)
        previous, self.sessions.sent = self.sessions.sent, dict(groups)
        for key in previous:
            if key not in groups:
                self._submit_segment(session, key, None)
        for key, prompt in groups.items():
            if previous.get(key) != prompt:
                self._submit_segment(session, key, prompt)

    def _submit_segment(
        self, session: Session, key: tuple[int, int], prompt: FramePrompt | None
    ) -> None:
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
            self.write_frame(session, *item, undo_step=True)

        def on_error(err: BaseException) -> None:
            # Forget the group so that the next edit sends it again.
            if self.sessions.sent.get(key) == prompt:
                self.sessions.sent.pop(key, None)
            self.report_failure(err)

        job = Job("segment", work, on_yield=on_yield, on_error=on_error, key=("segment", key))
        self.jobs.submit(job)

    def prefetch(self, frame: int | None = None) -> None:
        """Compute the image features of ``frame`` (default: the current slice) in the
        background, so the first click there answers at once."""
        try:
            session = self.sessions.ensure()
        except ValueError:
            return
        if frame is None:
            frame = current_frame(self.viewer, session.image, session.geometry)
        tracker = session.tracker

        def work():
            tracker.prepare(frame)
            yield frame

        self.jobs.submit(Job("prepare", work, on_error=self.report_failure, key="prepare"))

    def forget_object(self, obj_id: int) -> None:
        """Remove ``obj_id`` from the engine and erase its pixels (one undo step), in a job."""
        sent = self.sessions.sent
        self.sessions.sent = {key: p for key, p in sent.items() if key[0] != obj_id}
        session = self.sessions.current

        def work():
            if session is not None and obj_id in session.tracker.object_ids:
                session.tracker.remove_object(obj_id)
            yield None

        def on_yield(_) -> None:
            labels = self.layers.labels_layer
            if labels is None or labels not in self.viewer.layers:
                return
            index = np.nonzero(np.asarray(labels.data) == obj_id)
            if index[0].size:
                with labels.block_history():
                    labels.data_setitem(index, 0)

        self.jobs.submit(
            Job("delete object", work, on_yield=on_yield, on_error=self.report_failure)
        )

    def on_dims_changed(self, _event=None) -> None:
        """The viewer moved to another slice or view: follow a geometry change, warm the cache."""
        if self.jobs.closed or self.settings.image is None or self.sessions.model is None:
            return
        try:
            geometry = self.settings.geometry()
        except ValueError:
            return
        session = self.sessions.current
        if session is None or session.geometry.key() != geometry.key():
            self.resync()
        if not self.jobs.busy:
            self.prefetch()

    # ------------------------------------------------------------------ engine -> labels
    def write_frame(
        self,
        session: Session,
        frame: int,
        masks: dict[int, np.ndarray | None],
        *,
        undo_step: bool,
    ) -> bool:
        """Write the masks (frame-shaped bool, None: erase) of one frame into the Labels layer,
        as one undo step when ``undo_step``; False when the output layer is gone."""
        labels = self.layers.ensure_labels() if undo_step else self.layers.labels_layer
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

    def _shows(self, session: Session, frame: int) -> bool:
        """Whether the viewer currently displays ``frame`` of ``session``."""
        try:
            geometry = self.settings.geometry()
        except ValueError:
            return True
        if self.settings.image is not session.image or geometry.key() != session.geometry.key():
            return False
        return current_frame(self.viewer, session.image, geometry) == frame
