"""Jobs: long work as a generator, run off the main thread by a runner, results on the main thread.

A :class:`Job` pairs a generator function (the work: it touches the engine only, never a layer)
with main-thread callbacks (they touch layers only). A runner executes :meth:`Job.run` and
hands every yielded value to :meth:`Job.deliver_yield`, the return value to
:meth:`Job.deliver_return` and, at the end, calls :meth:`Job.deliver_finish`, always on the main
thread. A :class:`JobQueue` runs jobs one at a time, in order.

Failures never escape the work: :meth:`Job.run` catches every exception (``RuntimeError`` and
torch's out-of-memory error included) and returns it wrapped in :class:`Failed`. superqt's
worker treats a ``RuntimeError`` raised in a thread as an aborted thread and then emits neither
``errored`` nor ``finished``; returning the failure as a value means ``on_error`` and
``on_finish`` always run, so the annotator never stays busy. Exceptions raised by the
main-thread callbacks are caught too and reported through ``on_error``.

:class:`SyncRunner` runs the work inline (pure controller tests, scripts without an event
loop). The Qt runner in ``napari_sam2._qt.runner`` runs it in a napari ``thread_worker``.
Cancelling sets a flag that the work checks between yields, so the engine's generator is closed
in the worker thread and the engine stays consistent.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Failed", "Job", "JobQueue", "Runner", "SyncRunner"]


def _ignore(*_: object) -> None:
    return None


@dataclass(frozen=True)
class Failed:
    """What :meth:`Job.run` returns when the work raised: the exception and its traceback."""

    error: BaseException
    trace: str = ""


@dataclass(eq=False)
class Job:
    """One unit of background work.

    Attributes:
        name: what the job does, for messages ("propagate", "segment", ...).
        work: a callable returning a generator; it runs off the main thread. None for a job
            that only runs ``on_start`` on the main thread, in its turn in the queue.
        on_yield / on_done / on_error / on_finish: main-thread callbacks. ``on_finish`` always
            runs last, after success, failure or cancel.
        on_start: main-thread callback a :class:`JobQueue` calls just before the work starts;
            an exception from it goes to ``on_error`` and the work never runs.
        key: jobs with equal non-None keys replace each other while queued.
        background: work for idle time (preparing neighbouring slices). It waits behind every
            other job, stops at its next yield as soon as another job is submitted (so a click
            waits for one step at most), and never makes the queue busy.
    """

    name: str
    work: Callable[[], Generator[Any, None, Any]] | None
    on_yield: Callable[[Any], None] = _ignore
    on_done: Callable[[Any], None] = _ignore
    on_error: Callable[[BaseException], None] = _ignore
    on_finish: Callable[[], None] = _ignore
    on_start: Callable[[], None] = _ignore
    key: object = None
    background: bool = False
    failed: BaseException | None = None
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)
    _cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    _delivered_finish: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        """Ask the work to stop at its next yield; results already delivered are kept."""
        self._cancel_requested.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel_requested.is_set()

    def sleep(self, seconds: float) -> bool:
        """In the work: wait ``seconds``, or less if the job is cancelled meanwhile; returns
        whether it was cancelled."""
        return self._cancel_requested.wait(max(seconds, 0.0))

    @property
    def finished(self) -> bool:
        """Whether the work has left its thread."""
        return self._finished.is_set()

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until the work has left its thread (not the main-thread callbacks)."""
        return self._finished.wait(timeout)

    def run(self) -> Generator[Any, None, Any]:
        """The work, stopped at the next yield after a cancel; returns its value or
        :class:`Failed`. Never raises."""
        generator = None
        try:
            generator = self.work()
            while not self.cancelled:
                try:
                    item = next(generator)
                except StopIteration as stop:
                    return stop.value
                yield item
            return None
        except Exception as err:  # handed to the main thread as a value, see the module doc
            return Failed(err, traceback.format_exc())
        finally:
            if generator is not None:
                # A failure while closing must not hide the outcome.
                with contextlib.suppress(Exception):
                    generator.close()
            self._finished.set()

    # ---------------------------------------------------------------- main-thread delivery
    def deliver_yield(self, item: Any) -> None:
        if self.cancelled or self.failed is not None or self._delivered_finish:
            return
        self._guarded(self.on_yield, item)

    def deliver_return(self, value: Any) -> None:
        if isinstance(value, Failed):
            self.deliver_error(value.error)
        elif not self.cancelled and self.failed is None:
            self._guarded(self.on_done, value)

    def deliver_error(self, error: BaseException) -> None:
        if self.failed is not None:
            return
        self.failed = error
        self.cancel()
        try:
            self.on_error(error)
        except Exception:  # noqa: BLE001 - a broken reporter must not lock the queue
            traceback.print_exc()

    def deliver_finish(self) -> None:
        if self._delivered_finish:
            return
        self._delivered_finish = True
        try:
            self.on_finish()
        except Exception as err:  # noqa: BLE001
            self.deliver_error(err)

    def _guarded(self, callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception as err:  # noqa: BLE001 - reported to the user, the job stops
            self.deliver_error(err)


class Runner(Protocol):
    """Executes jobs one at a time; see the module docstring for the contract."""

    def start(self, job: Job) -> None: ...


class SyncRunner:
    """Runs a job to completion inside :meth:`start` (no threads, no event loop needed)."""

    def start(self, job: Job) -> None:
        generator = job.run()
        while True:
            try:
                item = next(generator)
            except StopIteration as stop:
                job.deliver_return(stop.value)
                break
            job.deliver_yield(item)
        job.deliver_finish()


_INLINE = SyncRunner()


class JobQueue:
    """Runs jobs one at a time, in submission order, through a runner.

    A queued job is withdrawn when a later one with an equal non-None ``key`` arrives, so only
    the newest request of a kind waits. ``on_busy(True)`` is called when a job is submitted to
    an idle queue, ``on_busy(False)`` when the last job has finished. A closed queue accepts
    nothing.
    """

    def __init__(self, runner: Runner, on_busy: Callable[[bool], None]) -> None:
        self.runner = runner
        self.running: Job | None = None
        self.closed = False
        self._on_busy = on_busy
        self._was_busy = False
        self._queue: deque[Job] = deque()
        self._background: deque[Job] = deque()

    @property
    def busy(self) -> bool:
        """Whether a job other than background work is running or queued."""
        running = self.running is not None and not self.running.background
        return running or bool(self._queue)

    def _tell_busy(self) -> None:
        busy = self.busy
        if busy != self._was_busy:
            self._was_busy = busy
            self._on_busy(busy)

    def stop_background(self) -> None:
        """Drop queued background work and stop the running one at its next yield."""
        for job in list(self._background):
            self._background.remove(job)
            job.cancel()
            job.deliver_finish()
        if self.running is not None and self.running.background:
            self.running.cancel()

    @property
    def queued(self) -> list[Job]:
        return list(self._queue)

    def submit(self, job: Job) -> None:
        if self.closed:
            return
        queue = self._background if job.background else self._queue
        if job.key is not None:
            # The older request goes and the newer one waits at the end, so jobs still run in
            # the order their requests were made (the undo history relies on it).
            for queued in [q for q in queue if q.key == job.key]:
                self.withdraw(queued)
        if not job.background:
            self.stop_background()
        queue.append(job)
        self._tell_busy()
        if self.running is None:
            self._start_next()

    def run_now(self, job: Job, *, wait_background: float = 0.05) -> bool:
        """Run ``job`` to the end here, on the calling (main) thread, when nothing else waits
        or runs. Returns False otherwise, and the caller submits it (a submit would have
        stopped the background work too).

        Background work that is running is stopped and given ``wait_background`` seconds to
        leave its thread (it stops before its next step), so the engine is never used by two
        threads at once. The job is not queued: it makes the queue neither busy nor idle.
        """
        if self.closed or self._queue:
            return False
        running = self.running
        if running is not None and not running.background:
            return False
        self.stop_background()
        if running is not None and not running.wait_finished(wait_background):
            return False
        _INLINE.start(job)
        return True

    def withdraw(self, job: Job) -> bool:
        """Take ``job`` out of the queue before it starts, finishing it; False when it is not
        queued."""
        queue = self._background if job in self._background else self._queue
        if job not in queue:
            return False
        queue.remove(job)
        job.cancel()
        job.deliver_finish()
        return True

    def _start_next(self) -> None:
        while self.running is None and not self.closed:
            self._tell_busy()
            queue = self._queue or self._background
            if not queue:
                return
            job = queue.popleft()
            self.running = job
            original_finish = job.on_finish

            def finish(job=job, original_finish=original_finish) -> None:
                try:
                    original_finish()
                finally:
                    if self.running is job:
                        self.running = None
                        self._start_next()

            job.on_finish = finish
            try:
                job.on_start()
            except Exception as err:  # e.g. the image vanished in between
                job.deliver_error(err)
                job.deliver_finish()
                continue
            if job.work is None or job.cancelled:
                job._finished.set()
                job.deliver_finish()
                continue
            self.runner.start(job)
            return

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running job's work has left its thread (no event processing)."""
        job = self.running
        return True if job is None else job.wait_finished(timeout)

    def close(self, timeout: float) -> None:
        """Cancel every job and accept no more; on the main thread, wait up to ``timeout``
        seconds for the running job's work to leave its thread."""
        running = [self.running] if self.running is not None else []
        for job in [*self._queue, *self._background, *running]:
            job.cancel()
        self._queue.clear()
        self._background.clear()
        self.closed = True
        if threading.current_thread() is threading.main_thread():
            for job in running:
                job.wait_finished(timeout)
