"""Tracker misuse: objects changed during a propagation, two propagations at once, ids that do
not fit the labels. Each either works as documented or raises PropagationInvalidated / a
ValueError naming the problem, never a torch internals error."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2.engine.tracker import PropagationInvalidated, Tracker
from tests.test_api import CENTRE, biased_random_model, disc_stack

ROW, COL = CENTRE


@pytest.fixture(scope="module")
def model():
    return biased_random_model()


def _tracker(model, frames=5, **kwargs):
    tracker = Tracker(model, disc_stack(frames), intensity_range=(0, 4000), **kwargs)
    tracker.set_prompts(0, 1, points=[[COL, ROW]], labels=[1])
    return tracker


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.remove_object(1),  # the last object
        lambda t: t.reset(),
        lambda t: t.set_prompts(2, 7, points=[[COL, ROW]], labels=[1]),  # a new object
    ],
    ids=["remove the last object", "reset", "add an object"],
)
def test_changing_objects_during_propagation_ends_it_clearly(model, change):
    tracker = _tracker(model)
    generator = tracker.propagate(0)
    first, _ = next(generator)
    change(tracker)
    with pytest.raises(PropagationInvalidated, match="objects changed during propagation"):
        next(generator)
    assert isinstance(PropagationInvalidated("x"), ValueError)
    assert first == 0
    if tracker.object_ids:  # propagating again tracks the objects now present
        frames = [frame for frame, _ in tracker.propagate(0, max_frames=2)]
        assert frames == [0, 1]


def test_prompt_changes_on_an_existing_object_do_not_end_a_propagation(model):
    tracker = _tracker(model)
    generator = tracker.propagate(0)
    next(generator)
    tracker.set_prompts(3, 1, points=[[COL + 3, ROW]], labels=[1])
    frames = [frame for frame, _ in generator]
    assert frames == [1, 2, 3, 4]


def test_a_second_propagation_ends_the_first(model):
    tracker = _tracker(model)
    older = tracker.propagate(0)
    next(older)
    newer = tracker.propagate(0, max_frames=3)
    with pytest.raises(PropagationInvalidated, match="another propagate"):
        next(older)
    assert [frame for frame, _ in newer] == [0, 1, 2]
    with pytest.raises(StopIteration):
        next(older)  # a generator that raised is finished


def test_interleaved_generators_never_mix_their_state(model):
    tracker = _tracker(model)
    first = tracker.propagate(0, direction="forward")
    second = tracker.propagate(4, direction="backward")
    with pytest.raises(PropagationInvalidated):
        next(first)
    assert [frame for frame, _ in second] == [4, 3, 2, 1, 0]


def test_object_ids_are_checked_against_the_label_dtype(model):
    tracker = Tracker(model, disc_stack(2), intensity_range=(0, 4000), label_dtype=np.uint16)
    with pytest.raises(ValueError, match="does not fit the uint16 label image"):
        tracker.set_prompts(0, 70000, points=[[COL, ROW]], labels=[1])
    assert tracker.object_ids == []  # refused before anything ran or was stored
    tracker.set_prompts(0, 65535, points=[[COL, ROW]], labels=[1])
    assert tracker.object_ids == [65535]
    default = Tracker(model, disc_stack(2), intensity_range=(0, 4000))
    with pytest.raises(ValueError, match="uint32"):
        default.set_prompts(0, 2**32, points=[[COL, ROW]], labels=[1])
    with pytest.raises(ValueError, match="integer dtype"):
        Tracker(model, disc_stack(2), label_dtype=np.float32)


@pytest.mark.parametrize("bad", [1.5, 1.0, True, np.float64(2.0), "1", None, 0, -1])
def test_ids_and_frames_must_be_integers(model, bad):
    tracker = Tracker(model, disc_stack(2), intensity_range=(0, 4000))
    with pytest.raises(ValueError):
        tracker.set_prompts(0, bad, points=[[COL, ROW]], labels=[1])
    with pytest.raises(ValueError):
        tracker.set_prompts(bad if bad not in (0,) else 1.5, 1, points=[[COL, ROW]], labels=[1])
    assert tracker.object_ids == []
