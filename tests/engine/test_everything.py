"""Many objects at once: seeding from labels, key-slice matching, tracking everything found by
the automatic mask generator, and many-object propagation against Meta's video predictor."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2.engine.automatic import AutomaticMaskGenerator, labels_from_records
from napari_sam2.engine.everything import (
    SAME_OBJECT_RULE,
    iter_track_everything,
    masks_from_records,
    match_key_slice,
    objects_from_labels,
    track_everything,
    track_everything_total,
)
from napari_sam2.engine.session import label_frame, plan_propagation
from napari_sam2.engine.tracker import Tracker
from tests.engine._amg_oracle import sharpen_for_filters_
from tests.engine._video_oracle import (
    SideBySide,
    assert_frame_outputs_match,
    assert_runs_match,
    synthetic_stack,
)
from tests.test_api import biased_random_model, disc_stack

#: Random weights pass the generator's filters with these (see test_automatic.py).
LOOSE_AMG = {
    "points_per_side": 2,
    "box_nms_thresh": 1.0,
    "pred_iou_thresh": 0.5,
    "stability_score_thresh": 0.5,
}


@pytest.fixture(scope="module")
def model():
    """Random tiny SAM 2.1 at input 256 whose masks are not empty and pass the AMG filters."""
    return sharpen_for_filters_(biased_random_model())


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2


# ---------------------------------------------------------------------- seeding from labels


def test_objects_from_labels_keep_ids_and_make_conditioning_frames(model):
    stack = disc_stack(3)
    seeds = np.zeros((3, 64, 64), dtype=np.uint16)
    seeds[0][_disc((64, 64), (30, 34), 10)] = 7
    seeds[0][:8, :8] = 300
    seeds[2][_disc((64, 64), (30, 36), 10)] = 7
    prompts = objects_from_labels({0: seeds[0], 1: seeds[1], 2: seeds[2]})
    assert [(p.frame, p.obj_id) for p in prompts] == [(0, 7), (0, 300), (2, 7)]
    assert np.array_equal(prompts[0].mask, seeds[0] == 7)
    assert prompts[1].mask.sum() == 64 and prompts[1].box is None

    tracker = Tracker(model, stack, precision="float32")
    for prompt in prompts:
        tracker.set_prompts(prompt.frame, prompt.obj_id, **prompt.engine_kwargs())
    assert tracker.object_ids == [7, 300]
    assert tracker.prompted_frames(7) == [0, 2]  # two slices: two conditioning frames
    assert tracker.prompted_frames(300) == [0]
    frames = dict(tracker.propagate(0, "forward"))
    assert sorted(frames) == [0, 1, 2] and sorted(frames[1]) == [7, 300]
    # a conditioning frame gives its seed back (to the low-resolution mask's accuracy)
    labels = label_frame(np.zeros((64, 64), np.uint16), frames[2])
    seed = seeds[2] == 7
    assert np.count_nonzero((labels == 7) & seed) / np.count_nonzero((labels == 7) | seed) > 0.9


@pytest.mark.parametrize(
    ("slices", "message"),
    [
        ({0: np.zeros((4, 4, 2), np.uint8)}, r"one \(H, W\) slice"),
        ({0: np.ones((4, 4), np.float32)}, "must be integers"),
        ({0: np.ones((4, 4), bool)}, "must be integers"),
        ({0: -np.ones((4, 4), np.int16)}, "negative"),
        ({0: np.zeros((4, 4), np.uint8), 1: np.zeros((5, 4), np.uint8)}, "other slices"),
        ({-1: np.zeros((4, 4), np.uint8)}, "non-negative integers"),
        ({0: np.full((4, 4), 70000, np.int64)}, "does not fit the uint16"),
    ],
)
def test_objects_from_labels_rejects_bad_slices(slices, message):
    with pytest.raises(ValueError, match=message):
        objects_from_labels(slices, label_dtype=np.uint16)


def test_objects_from_labels_empty_slices_give_nothing():
    assert objects_from_labels({3: np.zeros((4, 4), np.uint8)}) == []


# ---------------------------------------------------------------------- key-slice matching


def test_match_key_slice_matched_and_new():
    shape = (40, 40)
    propagated = np.zeros(shape, np.uint16)
    propagated[0:10, 0:10] = 1  # 100 px
    propagated[20:30, 20:30] = 2
    propagated[0:10, 30:40] = 5  # an object no mask finds
    same = propagated == 1  # IoU 1 with object 1
    shifted = np.zeros(shape, bool)
    shifted[22:32, 20:30] = True  # 80 px overlap, IoU 80 / 120 = 0.667 with object 2
    elsewhere = np.zeros(shape, bool)
    elsewhere[30:40, 0:10] = True  # overlaps nothing
    matched, new = match_key_slice([same, shifted, elsewhere], propagated, [1, 2, 5])
    assert sorted(matched) == [1, 2]
    assert matched[1] is same and matched[2] is shifted
    assert len(new) == 1 and new[0] is elsewhere
    # above 0.667 the shifted mask is a new object; existing_ids limits the candidates
    matched, new = match_key_slice([same, shifted, elsewhere], propagated, None, 0.7)
    assert sorted(matched) == [1] and len(new) == 2
    matched, new = match_key_slice([same, shifted], propagated, [2])
    assert sorted(matched) == [2] and new[0] is same
    assert "same_object_iou" in SAME_OBJECT_RULE


def test_match_key_slice_threshold_edge_is_strict():
    propagated = np.zeros((10, 10), np.uint8)
    propagated[:, :4] = 3  # 40 px
    half = np.zeros((10, 10), bool)
    half[:, :2] = True  # IoU exactly 20 / 40 = 0.5
    matched, new = match_key_slice([half], propagated, [3], same_object_iou=0.5)
    assert matched == {} and len(new) == 1  # "above" the threshold: 0.5 is not
    matched, new = match_key_slice([half], propagated, [3], same_object_iou=0.49)
    assert list(matched) == [3] and new == []
    # one object takes one mask: the one with the higher IoU; the other is new
    more = np.zeros((10, 10), bool)
    more[:, :3] = True  # IoU 0.75
    matched, new = match_key_slice([half, more], propagated, [3], same_object_iou=0.4)
    assert matched[3] is more and new[0] is half
    with pytest.raises(ValueError, match=r"same_object_iou must be a number in \[0, 1\]"):
        match_key_slice([half], propagated, [3], same_object_iou=1.5)
    with pytest.raises(ValueError, match="has shape"):
        match_key_slice([np.zeros((3, 3), bool)], propagated)


def test_masks_from_records_are_disjoint_smaller_first():
    big = np.zeros((8, 8), bool)
    big[:6, :6] = True
    small = np.zeros((8, 8), bool)
    small[4:8, 4:8] = True
    records = [{"segmentation": big, "area": 36}, {"segmentation": small, "area": 16}]
    masks = masks_from_records(records, (8, 8))
    assert len(masks) == 2 and not (masks[0] & masks[1]).any()
    assert masks[1].sum() == 16 and masks[0].sum() == 32  # the small one wins the overlap
    assert np.array_equal(masks[0] | masks[1], big | small)


# ---------------------------------------------------------------------- track everything


class ScriptedGenerator:
    """Stands in for the generator: frame -> masks, or a function of the tracker's labels
    there at call time (to find the objects propagated to a later key frame)."""

    def __init__(self, tracker, masks_by_frame):
        self.tracker, self.masks_by_frame, self.calls = tracker, masks_by_frame, []

    def generate(self, source, frame):
        self.calls.append(frame)
        masks = self.masks_by_frame[frame]
        if callable(masks):
            empty = np.zeros(self.tracker.frame_shape, np.uint32)
            masks = masks(label_frame(empty, self.tracker.frame_logits(frame)))
        return [{"segmentation": m, "area": int(m.sum())} for m in masks]


def test_track_everything_matches_on_later_key_frame(model):
    stack = disc_stack(3)
    tracker = Tracker(model, stack, precision="float32")
    first = [_disc((64, 64), (30, 34), 12), _disc((64, 64), (8, 8), 5)]
    extra = np.zeros((64, 64), bool)
    extra[50:60, 50:60] = True

    def on_frame_2(labels):
        # what was propagated there as object 1 (found again), plus something new
        return [(labels == 1) & ~extra, extra]

    generator = ScriptedGenerator(tracker, {0: first, 2: on_frame_2})
    done = []
    report = lambda d, t: done.append((d, t))  # noqa: E731
    steps = list(iter_track_everything(tracker, generator, [2, 0], progress=report))
    assert generator.calls == [0, 2]
    # objects 1..N in the records' order, then a fresh id for the new mask
    assert tracker.object_ids == [1, 2, 3]
    assert tracker.prompted_frames(1) == [0, 2] and tracker.prompted_frames(2) == [0]
    assert tracker.prompted_frames(3) == [2]
    assert [s.frame for s in steps if not s.final] == [0, 1, 2]  # carried to the key frame
    assert [s.frame for s in steps if s.final] == plan_propagation(3, 0).frames
    total = track_everything_total(3, [0, 2])
    assert total == 3 + 3 and done[-1] == (total, total) and len(done) == total


def test_track_everything_with_the_generator(model):
    stack = disc_stack(3)
    tracker = Tracker(model, stack, precision="float32")
    generator = AutomaticMaskGenerator(model, **LOOSE_AMG)
    records = generator.generate(tracker.frames, 1)
    expected = labels_from_records(records, (64, 64))
    count = int(expected.max())
    assert count >= 2, "random weights must leave masks that pass the filters"

    labels = track_everything(tracker, generator, [1])
    assert labels.shape == (3, 64, 64) and labels.dtype == np.uint32
    assert tracker.object_ids == list(range(1, count + 1))
    assert all(tracker.prompted_frames(i) == [1] for i in tracker.object_ids)
    assert set(np.unique(labels)) <= set(range(count + 1))
    assert np.count_nonzero(labels == 0) < labels.size  # every frame was written
    # On the key frame the labels are the masks found there, to the accuracy of a mask prompt
    # (SAM 2 resamples it to the decoder's low resolution, which loses thin edges).
    for obj_id in tracker.object_ids:
        kept = labels[1] == obj_id
        assert np.count_nonzero(kept & (expected == obj_id)) >= 0.95 * np.count_nonzero(kept)
    agree = np.count_nonzero(labels[1] == expected) / expected.size
    assert agree > 0.85, agree


def test_track_everything_rejects_bad_calls(model):
    tracker = Tracker(model, disc_stack(3), precision="float32")
    nothing = ScriptedGenerator(tracker, {0: [], 2: []})
    with pytest.raises(ValueError, match="found no mask on key frame"):
        track_everything(tracker, nothing, [0, 2])
    with pytest.raises(ValueError, match="key frame 5 is out of range"):
        track_everything(tracker, nothing, [5])
    with pytest.raises(ValueError, match="at least one key frame"):
        track_everything(tracker, nothing, [])
    with pytest.raises(ValueError, match="direction"):
        track_everything(tracker, nothing, [0], direction="up")
    with pytest.raises(ValueError, match="same_object_iou"):
        track_everything(tracker, nothing, [0], same_object_iou=-0.1)


# ---------------------------------------------------------------------- parity, 8 objects


def _eight_prompts(frame: np.ndarray):
    """Four mask prompts and four box prompts spread over a (96, 128) frame."""
    shape = frame.shape
    masks = {
        1: frame > 2500,  # the bright disc
        2: _disc(shape, (15, 15), 9),
        3: _disc(shape, (80, 110), 10),
        4: np.zeros(shape, bool),
    }
    masks[4][60:90, 10:40] = True
    boxes = {
        5: [60.0, 5.0, 100.0, 30.0],
        6: [5.0, 40.0, 30.0, 60.0],
        7: [90.0, 50.0, 125.0, 75.0],
        8: [40.0, 70.0, 80.0, 92.0],
    }
    return masks, boxes


@pytest.mark.slow
def test_eight_objects_match_meta_both_ways(monkeypatch):
    frames = synthetic_stack(5)
    pair = SideBySide(
        "sam2.1_hiera_tiny", 256, frames, monkeypatch, corrections_as_conditioning=True
    )
    masks, boxes = _eight_prompts(frames[2])
    for obj_id, mask in masks.items():
        assert_frame_outputs_match(*pair.mask(2, obj_id, mask), f"mask {obj_id}")
    for obj_id, box in boxes.items():
        ours, theirs = pair.points(2, obj_id, None, None, box=np.array(box))
        assert_frame_outputs_match(ours, theirs, f"box {obj_id}")
    assert pair.tracker.object_ids == list(range(1, 9))
    forward = pair.propagate(2)
    assert_runs_match(*forward, "8 objects forward")
    backward = pair.propagate(2, reverse=True)
    assert_runs_match(*backward, "8 objects backward")
    runs = forward[0] + backward[0]
    assert [f for f, _ in runs] == [2, 3, 4, 2, 1, 0]
    fractions = {
        obj_id: float(np.mean([(out[obj_id] > 0).mean() for _, out in runs]))
        for obj_id in range(1, 9)
    }
    assert all(0.001 < f < 0.99 for f in fractions.values()), fractions
