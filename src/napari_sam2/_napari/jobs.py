"""Jobs: long work as a generator, run off the main thread by a runner, results on the main thread.

A :class:`Job` pairs a generator function (the work: it touches the engine only, never a layer)
with main-thread callbacks (they touch layers only). A runner executes the work and delivers
every yielded value to ``on_yield``, the return value to ``on_done`` and an exception to
``on_error``, always on the main thread, then calls ``on_finish``.

:class:`SyncRunner` runs the work inline (scripts without an event loop). The Qt runner in
``napari_sam2._qt.runner`` runs it in a napari ``thread_worker``. Cancelling sets a flag that
the work checks between yields, so the engine's generator is closed in the worker thread and
the engine stays consistent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Job", "Runner", "SyncRunner"]


def _ignore(*_: object) -> None:
    return None


@dataclass(eq=False)
class Job:
    """One unit of background work.

    Attributes:
        name: what the job does, for messages ("propagate", "segment", ...).
        work: a callable returning a generator; it runs off the main thread.
        on_yield / on_done / on_error / on_finish: main-thread callbacks.
        key: jobs with equal non-None keys replace each other while queued.
    """

    name: str
    work: Callable[[], Generator[Any, None, Any]]
    on_yield: Callable[[Any], None] = _ignore
    on_done: Callable[[Any], None] = _ignore
    on_error: Callable[[BaseException], None] = _ignore
    on_finish: Callable[[], None] = _ignore
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
