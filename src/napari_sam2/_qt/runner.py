"""Run :class:`~napari_sam2._napari.jobs.Job` work in napari ``thread_worker`` threads."""

from __future__ import annotations

from napari.qt.threading import GeneratorWorker, create_worker
from qtpy.QtGui import QMovie
from qtpy.QtWidgets import QApplication, QLabel

from .._napari.jobs import Job

__all__ = ["ThreadRunner", "paused_spinners"]

#: Jobs long enough for the spinner's cost to matter.
_QUIET_JOBS = ("propagate",)


def paused_spinners() -> list[QMovie]:
    """Pause every running animated label (napari's activity spinner) and return them.

    The spinner repaints many times a second on the main thread. On a CPU-only machine that
    steals enough of the cores from propagation to make it about a third slower (measured by
    bench/gui_responsiveness.py); the progress bars themselves keep updating.
    """
    paused = []
    for window in QApplication.topLevelWidgets():
        for label in window.findChildren(QLabel):
            movie = label.movie()
            if movie is not None and movie.state() == QMovie.MovieState.Running:
                movie.setPaused(True)
                paused.append(movie)
    return paused


class ThreadRunner:
    """Starts each job's generator in a napari :class:`GeneratorWorker`.

    ``yielded`` values reach :meth:`Job.deliver_yield` on the main thread (Qt queues the
    signal), the return value (or the :class:`~napari_sam2._napari.jobs.Failed` that stands for
    an exception) :meth:`Job.deliver_return`; ``finished`` calls :meth:`Job.deliver_finish`.
    ``errored`` is connected too, as a safety net: :meth:`Job.run` never raises.
    """

    def __init__(self) -> None:
        self.workers: list[GeneratorWorker] = []

    def start(self, job: Job) -> None:
        worker = create_worker(job.run, _start_thread=False, _ignore_errors=True)
        quiet: list[QMovie] = []

        def on_started() -> None:
            if job.name in _QUIET_JOBS:
                quiet.extend(paused_spinners())

        def on_finished() -> None:
            for movie in quiet:
                if movie.state() == QMovie.MovieState.Paused:
                    movie.setPaused(False)
            if worker in self.workers:
                self.workers.remove(worker)
            job.deliver_finish()

        worker.yielded.connect(job.deliver_yield)
        worker.returned.connect(job.deliver_return)
        worker.errored.connect(job.deliver_error)
        worker.started.connect(on_started)
        worker.finished.connect(on_finished)
        self.workers.append(worker)
        worker.start()
