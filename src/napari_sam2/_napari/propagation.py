"""Propagation: track every object through the stack and write the slices as they come.

A propagation is one "propagate" job, bound when it is asked for to its image, plane, tracker,
Labels layer, painted masks and protection setting. Its slices are written into that Labels
layer inside one undo step, with a progress bar in the dock (slices done, seconds per slice and
left) and in napari's activity panel; painting the labels is held off meanwhile, so no brush
stroke joins the step. A cancel keeps the slices written; a short summary ends it.
"""

from __future__ import annotations

import contextlib
import time

from napari.utils import progress

from ..engine.session import DIRECTIONS, plan_propagation
from .jobs import Job
from .state import Progress
from .writer import write_frame

__all__ = ["PAINT_MODES", "start_propagation"]

#: Labels layer modes that change pixels.
PAINT_MODES = ("paint", "erase", "fill", "polygon")


def start_propagation(
    annotator, direction: str | None, start: int | None, max_frames: int | None
) -> Job | None:
    """Submit the propagation :meth:`Annotator.propagate` describes; None after a message when
    it cannot start."""
    state = annotator.state
    direction = direction or state.direction
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    max_frames = state.max_frames if max_frames is None else max_frames
    if not annotator.ensure_layers():
        return None
    annotator.sync()
    try:
        session = annotator.session()
    except ValueError as err:
        annotator.notify("error", str(err))
        return None
    if session.geometry.num_frames <= 1:
        annotator.notify(
            "warning",
            f"Image {session.image.name!r} is a single 2-D slice: there is nothing to "
            "propagate to. Your mask is already complete; for a stack, open a 3-D or 4-D "
            "image.",
        )
        return None
    if not any(not p.empty for p in session.sent.values()):
        annotator.notify(
            "warning", "Nothing to propagate yet: click or draw a box on a slice first."
        )
        return None
    start = annotator.current_frame() if start is None else start
    plan = plan_propagation(session.geometry.num_frames, start, direction, max_frames)
    work = annotator.work
    labels = work.layers.labels
    painted = dict(work.painted)
    protect = state.protect
    step = annotator.record_step("propagation")
    run: dict = {"written": 0}

    def job_work():
        frames = session.tracker.propagate(start, direction, max_frames)
        # The objects with prompts, not the list's entries (its current object may be empty).
        run["objects"] = len(session.tracker.object_ids)
        try:
            yield from frames
        finally:
            frames.close()

    def keep_from_painting(_event=None) -> None:
        if str(labels.mode) in PAINT_MODES:
            labels.mode = "pan_zoom"
            annotator.warn_once(
                "The labels cannot be painted while SAM 2 propagates; press Cancel to edit "
                "them now, or wait until it is done."
            )

    def on_start() -> None:
        if labels not in annotator.viewer.layers:
            raise ValueError("The output Labels layer is gone; press Propagate again.")
        # A brush stroke must not join the propagation's undo step: no painting meanwhile.
        # (Labels.editable = False would also wipe napari's undo history.)
        labels.events.mode.connect(keep_from_painting)
        keep_from_painting()
        run["block"] = labels.block_history()
        run["block"].__enter__()
        run["bar"] = progress(total=plan.total, desc=f"SAM 2: propagating {direction}")
        run["t0"] = time.perf_counter()
        state.progress = Progress(done=0, total=plan.total)
        state.status = f"Propagating {direction} from slice {start}…"

    def on_yield(item) -> None:
        frame, logits = item
        if labels not in annotator.viewer.layers:
            job.cancel()
            run["lost"] = True
            return
        masks = {k[0]: m for k, m in painted.items() if k[1] == frame}
        with work.layers.muted():
            write_frame(
                labels, session.geometry, frame, logits, masks=masks, protect=protect,
                refresh=annotator.shows(session, frame),
            )  # fmt: skip
        run["written"] += 1
        elapsed = time.perf_counter() - run["t0"]
        per = elapsed / run["written"]
        state.progress = Progress(
            done=run["written"],
            total=plan.total,
            seconds_per_slice=per,
            seconds_left=per * (plan.total - run["written"]),
        )
        # Last: napari's bar processes Qt events, which may finish the job meanwhile.
        run["bar"].update(1)

    def on_finish() -> None:
        annotator.propagation_job = None
        block = run.pop("block", None)
        if block is not None:
            with work.layers.muted():
                block.__exit__(None, None, None)
            if run["written"]:
                step.add_label_step(labels)
        with contextlib.suppress(Exception):
            labels.events.mode.disconnect(keep_from_painting)
        if "bar" in run:
            run["bar"].close()
        state.progress = None
        done = run["written"]
        seconds = time.perf_counter() - run.get("t0", time.perf_counter())
        if run.get("lost"):
            annotator.notify(
                "warning",
                "The output Labels layer was deleted, so propagation stopped; the slices it "
                "held went with it. Your prompts and objects are kept: press Propagate to "
                "write into a new Labels layer.",
            )
            state.status = "Propagation stopped: the Labels layer was deleted."
        elif job.failed is not None:
            state.status = f"Propagation failed after {done} of {plan.total} slices."
        elif job.cancelled:
            if not annotator.closed:
                annotator.notify(
                    "info", f"Propagation cancelled; the {done} slice(s) written are kept."
                )
            state.status = f"Propagation cancelled after {done} of {plan.total} slices."
        else:
            objects = run.get("objects", len(state.objects))
            summary = f"Propagated {objects} object(s) through {done} slice(s) in {seconds:.1f} s."
            annotator.notify("info", summary)  # also the dock's status line

    job = Job(
        "propagate",
        job_work,
        on_yield=on_yield,
        on_error=annotator.report_failure,
        on_finish=on_finish,
        on_start=on_start,
    )
    annotator.propagation_job = job
    annotator.jobs.submit(job)
    return job
