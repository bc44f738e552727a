"""Propagation: track every object through the stack and write the slices as they come.

One propagation runs at a time, as a "propagate" job. Its slices are written into the Labels
layer as one undo step, with a progress bar in napari's activity panel; a cancel keeps the
slices already written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from napari.utils import progress

from .annotation_layers import AnnotationLayers
from .geometry import current_frame
from .jobs import Job, JobQueue
from .segmentation import Segmentation
from .session import Sessions

__all__ = ["DIRECTIONS", "Propagation", "frames_to_visit"]

DIRECTIONS = ("forward", "backward", "both")


def frames_to_visit(num_frames: int, start: int, direction: str, max_frames: int | None) -> int:
    """How many frames a propagation from ``start`` yields (``max_frames``: per direction)."""
    if direction == "both":
        total = num_frames
    elif direction == "forward":
        total = num_frames - start
    else:
        total = start + 1
    if max_frames is not None:
        total = min(total, max_frames * (2 if direction == "both" else 1))
    return total


@dataclass(eq=False)
class Propagation:
    """Starts, cancels and finishes the annotator's propagation job.

    Args:
        sessions, layers, jobs, segmentation: the annotator's parts this one drives.
        notify: ``notify(level, text)`` shows a message.

    Attributes:
        job: the propagation queued or running, or None.
    """

    sessions: Sessions
    layers: AnnotationLayers
    jobs: JobQueue
    segmentation: Segmentation
    _: KW_ONLY
    notify: Callable[[str, str], None]
    job: Job | None = field(default=None, init=False)

    @property
    def viewer(self):
        return self.sessions.viewer

    def start(self, direction: str, start: int | None, max_frames: int | None) -> Job | None:
        """See :meth:`AnnotatorController.propagate`."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be forward, backward or both, not {direction!r}")
        if self.job is not None:
            self.notify("warning", "A propagation is already running; wait or press Cancel.")
            return None
        self.segmentation.resync()
        try:
            session = self.sessions.ensure()
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
        if not self.sessions.sent:
            self.notify(
                "warning",
                "Nothing to propagate yet: add a point (click) or a box on a slice first.",
            )
            return None
        if start is None:
            start = current_frame(self.viewer, session.image, session.geometry)
        tracker = session.tracker
        total = frames_to_visit(session.geometry.num_frames, start, direction, max_frames)
        state: dict = {}

        def work():
            frames = tracker.propagate(start, direction, max_frames)
            try:
                for frame, logits in frames:
                    yield frame, {obj_id: value > 0 for obj_id, value in logits.items()}
            finally:
                frames.close()

        def on_start() -> None:
            labels = self.layers.ensure_labels()
            state["labels"] = labels
            state["block"] = labels.block_history()
            state["block"].__enter__()
            state["bar"] = progress(total=total, desc=f"SAM 2: propagating {direction}")

        def on_yield(item) -> None:
            frame, masks = item
            if not self.segmentation.write_frame(session, frame, masks, undo_step=False):
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
            self.job = None
            block = state.pop("block", None)
            if block is not None:
                block.__exit__(None, None, None)
            if "bar" in state:
                state["bar"].close()
            if job.cancelled and not self.jobs.closed:
                self.notify("info", "Propagation cancelled; the slices already written are kept.")

        job = Job(
            "propagate",
            work,
            on_yield=on_yield,
            on_error=self.segmentation.report_failure,
            on_finish=on_finish,
            on_start=on_start,
        )
        self.job = job
        self.jobs.submit(job)
        return job

    def cancel(self) -> None:
        """Stop the propagation at its next slice; one still queued finishes at once."""
        job = self.job
        if job is not None:
            job.cancel()
            if self.jobs.withdraw(job):
                job.on_finish()

    def abandon(self) -> None:
        """Finish the propagation's main-thread part now (undo step, bar); the annotator closes."""
        if self.job is not None:
            self.job.on_finish()
