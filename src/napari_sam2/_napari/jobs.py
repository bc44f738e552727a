"""Jobs: long work as a generator, run off the main thread by a runner, results on the main thread.

A :class:`Job` pairs a generator function (the work: it touches the engine only, never a layer)
with main-thread callbacks (they touch layers only). A runner executes the work and delivers
every yielded value to ``on_yield``, the return value to ``on_done`` and an exception to
``on_error``, always on the main thread, then calls ``on_finish``. A :class:`JobQueue` runs jobs
one at a time, in order, and calls each job's ``on_start`` just before its work starts.

:class:`SyncRunner` runs the work inline (scripts without an event loop). The Qt runner in
``napari_sam2._qt.runner`` runs it in a napari ``thread_worker``. Cancelling sets a flag that
the work checks between yields, so the engine's generator is closed in the worker thread and
the engine stays consistent.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Job", "JobQueue", "Runner", "SyncRunner"]


def _ignore(*_: object) -> None:
    return None


@dataclass(eq=False)
class Job:
    """One unit of background work.

    Attributes:
        name: what the job does, for messages ("propagate", "segment", ...).
        work: a callable returning a generator; it runs off the main thread.
        on_yield / on_done / on_error / on_finish: main-thread callbacks.
        on_start: main-thread callback a :class:`JobQueue` calls just before the work starts;
            an exception from it goes to ``on_error`` and the work never runs.
        key: jobs with equal non-None keys replace each other while queued.
    """

    name: str
    work: Callable[[], Generator[Any, None, Any]]
    on_yield: Callable[[Any], None] = _ignore
    on_done: Callable[[Any], None] = _ignore
    on_error: Callable[[BaseException], None] = _ignore
    on_finish: Callable[[], None] = _ignore
    on_start: Callable[[], None] = _ignore
    key: object = None
    cancelled: bool = False
    worker_thread: str | None = None
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Ask the work to stop at its next yield; results already delivered are kept."""
        self.cancelled = True

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until the work has left its thread (not the main-thread callbacks)."""
        return self._finished.wait(timeout)

    def run(self) -> Generator[Any, None, Any]:
        """The work wrapped so that a cancel closes it at the next yield, in its own thread."""
        self.worker_thread = threading.current_thread().name
        generator = self.work()
        try:
            while not self.cancelled:
                try:
                    item = next(generator)
                except StopIteration as stop:
                    return stop.value
                yield item
            return None
        finally:
            generator.close()
            self._finished.set()


class Runner(Protocol):
    """Executes jobs one at a time; see the module docstring for the contract."""

    def start(self, job: Job) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class SyncRunner:
    """Runs a job to completion inside :meth:`start` (no threads, no event loop needed)."""

    def start(self, job: Job) -> None:
        try:
            generator = job.run()
            while True:
                try:
                    item = next(generator)
                except StopIteration as stop:
                    if not job.cancelled:
                        job.on_done(stop.value)
                    break
                if not job.cancelled:
                    job.on_yield(item)
        except Exception as err:  # delivered to the job, like a worker's `errored`
            job.on_error(err)
        finally:
            job.on_finish()

    def wait(self, timeout: float | None = None) -> bool:
        return True


class JobQueue:
    """Runs jobs one at a time, in submission order, through a runner.

    A queued job is replaced by a later one with an equal non-None ``key``, so only the newest
    request of a kind waits. ``on_busy(True)`` is called when a job is submitted to an idle
    queue, ``on_busy(False)`` when the last job has finished. A closed queue accepts nothing.
    """

    def __init__(self, runner: Runner, on_busy: Callable[[bool], None]) -> None:
        self.runner = runner
        self.running: Job | None = None
        self.closed = False
        self._on_busy = on_busy
        self._queue: deque[Job] = deque()

    @property
    def busy(self) -> bool:
        """Whether a job is running or queued."""
        return self.running is not None or bool(self._queue)

    def submit(self, job: Job) -> None:
        if self.closed:
            return
        if job.key is not None:
            for index, queued in enumerate(self._queue):
                if queued.key == job.key:
                    self._queue[index] = job
                    return
        self._queue.append(job)
        if self.running is None:
            self._on_busy(True)
            self._start_next()

    def withdraw(self, job: Job) -> bool:
        """Take ``job`` out of the queue before it starts; False when it is not queued."""
        if job not in self._queue:
            return False
        self._queue.remove(job)
        return True

    def _start_next(self) -> None:
        if self.running is not None or self.closed:
            return
        if not self._queue:
            self._on_busy(False)
            return
        job = self._queue.popleft()
        self.running = job
        original_finish = job.on_finish

        def finish() -> None:
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
            job.on_error(err)
            job.on_finish()
            return
        self.runner.start(job)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running job's work has left its thread (no event processing)."""
        job = self.running
        return True if job is None else job.wait_finished(timeout)

    def close(self, timeout: float) -> None:
        """Cancel every job and accept no more; on the main thread, wait up to ``timeout``
        seconds for the running job's work to leave its thread."""
        running = self.running
        for job in list(self._queue):
            job.cancel()
        self._queue.clear()
        if running is not None:
            running.cancel()
        self.closed = True
        if running is not None and threading.current_thread() is threading.main_thread():
            running.wait_finished(timeout)
