"""JobQueue.run_now: a short job runs at once on the calling thread, only when nothing else
waits or runs, and never while background work is still inside the engine."""

from __future__ import annotations

import threading
import time

from napari_sam2._napari.jobs import Job, JobQueue

from .helpers import ThreadedRunner


def running_background(work, inside: threading.Event) -> tuple[JobQueue, Job]:
    """A queue whose background job runs ``work`` in a thread and has set ``inside``."""
    queue = JobQueue(ThreadedRunner(), lambda _busy: None)
    background = Job("prefetch", work, background=True)
    queue.submit(background)
    assert inside.wait(5)
    return queue, background


def one_result(log: list, value="done"):
    def work():
        log.append(("work", threading.current_thread() is threading.main_thread()))
        yield value

    return work


def test_an_idle_queue_runs_the_job_here_without_turning_busy():
    busy, log = [], []
    queue = JobQueue(ThreadedRunner(), busy.append)
    job = Job("segment", one_result(log), on_yield=lambda v: log.append(("yield", v)))
    job.on_finish = lambda: log.append(("finish",))

    assert queue.run_now(job)
    assert log == [("work", True), ("yield", "done"), ("finish",)]
    assert busy == [] and queue.running is None


def test_a_running_or_queued_job_is_never_overtaken():
    release = threading.Event()

    def slow():
        release.wait(5)
        yield None

    queue = JobQueue(ThreadedRunner(), lambda _busy: None)
    queue.submit(Job("propagate", slow))
    log: list = []
    assert not queue.run_now(Job("segment", one_result(log)))
    queue.submit(Job("segment", one_result(log)))  # queued behind the propagation
    assert not queue.run_now(Job("segment", one_result(log)))
    assert log == [], "nothing ran beside the running job"
    release.set()


def test_background_work_is_stopped_and_waited_for_first():
    inside = threading.Event()

    def prefetch():
        inside.set()
        while True:  # stops at its next yield once cancelled
            time.sleep(0.005)
            yield None

    queue, background = running_background(prefetch, inside)
    log: list = []
    assert queue.run_now(Job("segment", one_result(log)))
    assert background.cancelled and background.finished, "the engine had one user at a time"
    assert log == [("work", True)]


def test_background_work_that_does_not_stop_in_time_sends_the_job_to_the_queue():
    release, inside = threading.Event(), threading.Event()

    def stubborn():
        inside.set()
        release.wait(5)  # one long step: the cancel is seen only after it
        yield None

    queue, background = running_background(stubborn, inside)
    log: list = []
    assert not queue.run_now(Job("segment", one_result(log)), wait_background=0.02)
    assert background.cancelled and log == []
    release.set()
