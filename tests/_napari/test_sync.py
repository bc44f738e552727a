"""EngineLink: which segmentations run at once on the main thread and which in the worker."""

from __future__ import annotations

import threading

import pytest

from napari_sam2._napari import sync
from napari_sam2._napari.jobs import JobQueue
from napari_sam2._napari.sync import EngineLink, EngineSession
from napari_sam2.engine.session import Prompt
from napari_sam2.engine.tracker import Tracker

from .helpers import ThreadedRunner, small_stack, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def link_and_session(model, monkeypatch):
    """A link on a threaded queue, and a session whose slice 1 has its features cached; the
    thread of every ``set_prompts`` is recorded in ``decoded_on`` (True: the main thread)."""
    decoded_on: list[bool] = []
    decode = Tracker.set_prompts

    def spy(self, *args, **kwargs):
        decoded_on.append(threading.current_thread() is threading.main_thread())
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Tracker, "set_prompts", spy)
    monkeypatch.setattr(sync, "INLINE_BUDGET_S", 60.0)  # a loaded CI machine is no reason here
    runner = ThreadedRunner()
    written: list[int] = []
    link = EngineLink(
        JobQueue(runner, lambda _busy: None),
        on_result=lambda _s, frame, _logits, _c, _obj: written.append(frame),
        on_error=lambda err: pytest.fail(f"the job failed: {err}"),
    )
    tracker = Tracker(model, small_stack())
    tracker.prepare(1)
    session = EngineSession(key=("test",), image=None, geometry=None, build=lambda: tracker)
    session.tracker  # noqa: B018 - built, as after the first click
    return link, session, runner, decoded_on, written


def click(obj_id: int, x: float = 20.0) -> Prompt:
    return Prompt(frame=1, obj_id=obj_id, points=[[x, 30.0]], labels=[1])


def test_one_click_on_a_cached_slice_is_decoded_and_written_at_once(link_and_session):
    link, session, runner, decoded_on, written = link_and_session
    assert link.send(session, {(1, 1): click(1)}) == 1
    assert decoded_on == [True] and written == [1], "decoded and written before send returns"
    assert runner.threads == []


def test_many_groups_at_once_go_to_the_worker(link_and_session):
    link, session, runner, decoded_on, _written = link_and_session
    # A loaded prompt file or an undo changes several groups: never many decodings here.
    assert link.send(session, {(1, 1): click(1), (2, 1): click(2, x=40.0)}) == 2
    assert runner.threads, "the first group went to the worker"
    runner.threads[0].join(30)
    assert decoded_on[:1] == [False]


def test_an_uncached_slice_goes_to_the_worker(link_and_session):
    link, session, runner, decoded_on, _written = link_and_session
    other = Prompt(frame=3, obj_id=1, points=[[20.0, 30.0]], labels=[1])
    link.send(session, {(1, 3): other})
    assert runner.threads and decoded_on == []
    runner.threads[0].join(60)
    assert decoded_on == [False]


def test_two_slow_decodings_send_the_next_clicks_to_the_worker(link_and_session, monkeypatch):
    link, session, runner, decoded_on, _written = link_and_session
    monkeypatch.setattr(sync, "INLINE_BUDGET_S", 0.0)
    link.send(session, {(1, 1): click(1)})
    link.send(session, {(1, 1): click(1, x=22.0)})
    assert decoded_on == [True, True] and session.inline_pause == sync.INLINE_RETRY_AFTER
    link.send(session, {(1, 1): click(1, x=24.0)})
    assert runner.threads, "the third click went to the worker"
    runner.threads[0].join(30)
    assert decoded_on == [True, True, False]
