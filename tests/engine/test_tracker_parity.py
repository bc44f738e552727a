"""Parity of the Tracker with Meta's SAM2VideoPredictor: logits per frame and object.

Each scenario runs on a SAM 2.0 and a SAM 2.1 preset at an input size between 256 and 320,
with random weights whose object-score head is biased so that masks are neither empty nor full.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine._video_oracle import (
    SideBySide,
    assert_frame_outputs_match,
    assert_runs_match,
    mask_fraction,
    synthetic_stack,
)

CASES = [("sam2_hiera_tiny", 256), ("sam2.1_hiera_tiny", 320)]
CLICK = np.array([[40.0, 48.0]])


@pytest.fixture(params=CASES, ids=[f"{p}@{s}" for p, s in CASES])
def pair(request, monkeypatch):
    preset, size = request.param
    return SideBySide(
        preset, size, synthetic_stack(7), monkeypatch, corrections_as_conditioning=False
    )


@pytest.fixture(params=CASES, ids=[f"{p}@{s}" for p, s in CASES])
def pair_cond(request, monkeypatch):
    preset, size = request.param
    return SideBySide(
        preset, size, synthetic_stack(7), monkeypatch, corrections_as_conditioning=True
    )


@pytest.mark.slow
def test_click_then_forward_and_backward(pair):
    ours, theirs = pair.points(3, 1, CLICK, np.array([1]))
    assert_frame_outputs_match(ours, theirs, "click")
    forward = pair.propagate(3)
    assert_runs_match(*forward, "forward")
    backward = pair.propagate(3, reverse=True)
    assert_runs_match(*backward, "backward")
    assert 0.01 < mask_fraction(forward[0] + backward[0]) < 0.99


@pytest.mark.slow
def test_both_directions_equal_forward_then_backward(pair):
    pair.points(3, 1, CLICK, np.array([1]))
    ours = list(pair.tracker.propagate(3, "both"))
    theirs = []
    for reverse in (False, True):
        for frame, ids, masks in pair.oracle.propagate_in_video(pair.state, 3, reverse=reverse):
            theirs.append((frame, dict(zip(ids, masks[:, 0]))))
    # Ours visits the start frame once; Meta's second pass yields it again unchanged.
    theirs = theirs[:4] + theirs[5:]
    assert [f for f, _ in ours] == [3, 4, 5, 6, 2, 1, 0]
    assert_runs_match(ours, theirs, "both")


@pytest.mark.slow
def test_box_prompt_and_box_with_points(pair):
    ours, theirs = pair.points(0, 1, None, None, box=np.array([20.0, 25.0, 70.0, 75.0]))
    assert_frame_outputs_match(ours, theirs, "box")
    ours, theirs = pair.points(
        0, 1, np.array([[45.0, 50.0], [90.0, 20.0]]), np.array([1, 0]), box=[20, 25, 70, 75]
    )
    assert_frame_outputs_match(ours, theirs, "box+points")
    assert_runs_match(*pair.propagate(0, max_frames=4), "box propagate")


@pytest.mark.slow
def test_mask_prompt(pair):
    frames = synthetic_stack(7)
    mask = frames[2] > 2500
    ours, theirs = pair.mask(2, 1, mask)
    assert_frame_outputs_match(ours, theirs, "mask")
    assert_runs_match(*pair.propagate(2), "mask forward")


@pytest.mark.slow
def test_two_objects_one_added_after_propagation_started(pair):
    pair.points(0, 1, CLICK, np.array([1]))
    assert_runs_match(*pair.propagate(0, max_frames=3), "first object")
    ours, theirs = pair.points(3, 2, np.array([[100.0, 20.0]]), np.array([1]))
    assert sorted(ours) == [2]  # object 1 was not tracked to frame 3 yet
    assert_frame_outputs_match(ours, theirs, "second object")
    assert_runs_match(*pair.propagate(0), "both objects")


@pytest.mark.slow
def test_correction_on_tracked_frame_then_repropagation(pair):
    pair.points(0, 1, CLICK, np.array([1]))
    assert_runs_match(*pair.propagate(0), "initial")
    ours, theirs = pair.points(4, 1, np.array([[60.0, 48.0], [10.0, 10.0]]), np.array([1, 0]))
    assert_frame_outputs_match(ours, theirs, "correction")
    assert_runs_match(*pair.propagate(0), "re-propagation")


@pytest.mark.slow
def test_correction_as_conditioning_frame(pair_cond):
    pair = pair_cond
    pair.points(0, 1, CLICK, np.array([1]))
    assert_runs_match(*pair.propagate(0), "initial")
    ours, theirs = pair.points(4, 1, np.array([[60.0, 48.0]]), np.array([1]))
    assert_frame_outputs_match(ours, theirs, "correction")
    assert 4 in pair.tracker.prompted_frames(1)
    assert_runs_match(*pair.propagate(0), "re-propagation")
    assert_runs_match(*pair.propagate(6, reverse=True), "backward after correction")


@pytest.mark.slow
def test_remove_object_and_max_frames(pair):
    pair.points(1, 1, CLICK, np.array([1]))
    pair.points(1, 2, np.array([[100.0, 20.0]]), np.array([1]))
    assert_runs_match(*pair.propagate(1, max_frames=2), "two objects, two frames")
    pair.tracker.remove_object(2)
    pair.oracle.remove_object(pair.state, 2)
    ours, theirs = pair.propagate(1, max_frames=4)
    assert [f for f, _ in ours] == [1, 2, 3, 4]
    assert all(sorted(d) == [1] for _, d in ours)
    assert_runs_match(ours, theirs, "after removal")
