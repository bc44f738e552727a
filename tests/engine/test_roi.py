"""Regions of interest (issue 10, item 5): the geometry, the region tracker against the plain
one on a full-frame region (to the bit), results pasted back at full resolution and position,
and a region following a disc across a 2048 x 2048 frame.

The following and growing tests run the region tracker over a stand-in for the network (an
object is where its crop is brighter than half), so the placement of every region can be
checked exactly and fast; the tests with the network use random weights at input size 256.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_sam2.engine.frames import FrameSource
from napari_sam2.engine.region_tracker import RegionTracker
from napari_sam2.engine.roi import (
    OUTSIDE_LOGIT,
    Extent,
    Region,
    follow,
    grown,
    mask_extent,
    place,
    prompt_extent,
    region_for,
    region_size,
    touches_inner_edge,
)
from napari_sam2.engine.session import label_frame, plan_propagation
from napari_sam2.engine.tracker import PropagationInvalidated, Tracker
from tests._napari.helpers import IMAGE_SIZE as SIZE
from tests._napari.helpers import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()  # random weights at input size 256, biased towards "object"


# ---------------------------------------------------------------------- geometry


def test_prompt_extent_covers_points_box_and_mask_on_their_pixels():
    shape = (100, 200)
    # (x, y) = (column, row); a point lies on the pixel whose centre is nearest.
    assert prompt_extent(shape, points=[[10.4, 20.6]]) == Extent(21, 10, 22, 11)
    assert prompt_extent(shape, points=[[10, 20], [30, 5]]) == Extent(5, 10, 21, 31)
    assert prompt_extent(shape, box=[10.5, 20.0, 40.2, 30.0]) == Extent(20, 10, 30, 41)
    mask = np.zeros(shape, bool)
    mask[50:60, 150:170] = True
    assert prompt_extent(shape, mask=mask) == Extent(50, 150, 60, 170)
    both = prompt_extent(shape, points=[[0, 0]], box=[100, 90, 250, 120])
    assert both == Extent(0, 0, 100, 200)  # clipped to the frame
    assert prompt_extent(shape, mask=np.zeros(shape, bool)) is None
    assert mask_extent(np.zeros((3, 3), bool)) is None


def test_region_size_margin_minimum_and_frame():
    extent = Extent(0, 0, 100, 40)
    assert region_size(extent, (4096, 4096), margin=0.5, min_side=64) == (200, 200)
    assert region_size(extent, (4096, 4096), margin=0.0, min_side=64) == (100, 100)
    assert region_size(extent, (4096, 4096), margin=0.5, min_side=1024) == (1024, 1024)
    assert region_size(None, (4096, 4096), margin=0.5, min_side=256) == (256, 256)  # a click
    assert region_size(extent, (150, 4096), margin=0.5, min_side=64) == (150, 200)


def test_place_centres_and_stays_inside_the_frame():
    assert place((500, 600), (100, 200), (1000, 1000)) == Region(450, 500, 100, 200)
    assert place((10, 990), (100, 200), (1000, 1000)) == Region(0, 800, 100, 200)
    assert place((10, 10), (5000, 200), (1000, 1000)) == Region(0, 0, 1000, 200)
    assert region_for(None, (1000, 800), margin=0.5, min_side=100) == Region(450, 350, 100, 100)


@settings(max_examples=60, deadline=None)
@given(
    frame=st.tuples(st.integers(1, 3000), st.integers(1, 3000)),
    corner=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    span=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    margin=st.floats(0, 2),
    min_side=st.integers(1, 2048),
)
def test_a_region_lies_in_the_frame_and_holds_its_prompts(frame, corner, span, margin, min_side):
    height, width = frame
    row0, col0 = int(corner[0] * (height - 1)), int(corner[1] * (width - 1))
    row1 = row0 + 1 + int(span[0] * (height - row0 - 1))
    col1 = col0 + 1 + int(span[1] * (width - col0 - 1))
    extent = Extent(row0, col0, row1, col1)
    region = region_for(extent, frame, margin=margin, min_side=min_side)
    assert region.top >= 0 and region.bottom <= height
    assert region.left >= 0 and region.right <= width
    assert region.contains(extent)
    assert region.shape == region_size(extent, frame, margin=margin, min_side=min_side)
    assert min(region.shape) >= min(min_side, height, width)


def test_follow_moves_only_near_an_inner_edge():
    frame = (2048, 2048)
    region = Region(1000, 1000, 256, 256)
    centred = Extent(100, 100, 156, 156)
    assert follow(region, centred, frame) is region
    assert follow(region, None, frame) is region  # an empty mask leaves the region
    near_right = Extent(100, 200, 156, 240)  # 16 px from the right edge: < 256 / 8
    moved = follow(region, near_right, frame)
    assert moved.shape == region.shape and moved != region
    assert moved == place((1128, 1220), (256, 256), frame)  # the mask's box is centred
    # An edge of the region that is an edge of the frame does not count.
    corner = Region(0, 0, 256, 256)
    assert follow(corner, Extent(0, 0, 40, 40), frame) is corner


def test_touching_an_inner_edge_and_growing():
    frame = (2048, 2048)
    region = Region(500, 500, 256, 256)
    assert touches_inner_edge(region, Extent(0, 10, 50, 50), frame)
    assert not touches_inner_edge(region, Extent(1, 1, 255, 255), frame)
    assert not touches_inner_edge(Region.whole(frame), Extent(0, 0, 2048, 2048), frame)
    bigger = grown(region, Extent(0, 0, 256, 256), frame)
    assert bigger.shape == (512, 512)
    assert bigger.top <= region.top and region.bottom <= bigger.bottom
    assert bigger.left <= region.left and region.right <= bigger.right


def test_paste_puts_the_crop_at_its_place_and_a_very_negative_logit_elsewhere():
    region = Region(10, 20, 3, 4)
    crop = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    full = region.paste(crop, (40, 50))
    assert full.shape == (40, 50) and full.dtype == np.float32
    np.testing.assert_array_equal(full[10:13, 20:24], crop)
    outside = np.ones((40, 50), bool)
    outside[10:13, 20:24] = False
    assert (full[outside] == OUTSIDE_LOGIT).all()
    with pytest.raises(ValueError, match=r"region is \(3, 4\)"):
        region.paste(np.zeros((4, 4)), (40, 50))


# ---------------------------------------------------------------------- a stand-in network


class BrightTracker:
    """Tracker-shaped stand-in: an object is where its crop is brighter than half of the
    stack's intensity range. It reads its frames as a Tracker does (a FrameSource over the crop
    view, with the range it is given) and records which frames it read."""

    def __init__(self, model, frames, *, axis, channel_axis, intensity_range, **options):
        self.source = FrameSource(
            frames, axis=axis, channel_axis=channel_axis, intensity_range=intensity_range
        )
        self.options = options
        self.outputs: dict[int, np.ndarray] = {}
        self.prompts: dict[int, dict] = {}
        self.obj_id = None
        self.reads: list[int] = []
        self.state_nbytes = self.state_spilled_nbytes = 0

    def _segment(self, frame: int) -> np.ndarray:
        self.reads.append(frame)
        bright = self.source.read(frame)[..., 0] > 0.5
        return np.where(bright, 8.0, -8.0).astype(np.float32)

    def set_prompts(self, frame, obj_id, points=None, labels=None, box=None, mask=None):
        height, width = self.source.frame_shape
        if points is not None:  # what the crop received must lie on the crop
            assert ((points >= -0.5) & (points < [width - 0.5, height - 0.5])).all()
        self.obj_id = obj_id
        self.prompts[frame] = {"points": points, "box": box, "mask": mask}
        self.outputs[frame] = self._segment(frame)
        return {obj_id: self.outputs[frame]}

    def frame_logits(self, frame):
        return {self.obj_id: self.outputs[frame]} if frame in self.outputs else {}

    def prompted_frames(self, obj_id):
        return sorted(self.prompts)

    def clear_prompts(self, obj_id, frame=None):
        for index in list(self.prompts) if frame is None else [frame]:
            self.prompts.pop(index, None)

    def reset(self):
        self.outputs.clear()
        self.prompts.clear()

    def propagate(self, start, direction="forward", max_frames=None):
        plan = plan_propagation(self.source.num_frames, start, direction, max_frames)

        def run():
            for frame in plan.frames:
                if frame not in self.prompts:
                    self.outputs[frame] = self._segment(frame)
                yield frame, {self.obj_id: self.outputs[frame]}

        return run()


class MovingDisc:
    """A lazy (T, 2048, 2048) uint8 stack of a bright disc moving right and down; computes
    only the pixels it is asked for and records each read's (rows, cols) size."""

    def __init__(self, frames=16, side=2048, radius=40, start=(300, 200), step=(25, 60)):
        self.shape = (frames, side, side)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.radius, self.start, self.step = radius, start, step
        self.reads: list[tuple[int, int]] = []

    def centre(self, frame: int) -> tuple[int, int]:
        return self.start[0] + frame * self.step[0], self.start[1] + frame * self.step[1]

    def disc(self, frame: int) -> np.ndarray:
        """The disc's pixels on ``frame`` (bool, the whole frame; not counted as a read)."""
        return self._pixels(frame, slice(None), slice(None)) > 128

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (list(key[1:]) + [slice(None), slice(None)])[:2]
        pixels = self._pixels(int(key[0]), rows, cols)
        self.reads.append(pixels.shape)
        return pixels

    def _pixels(self, frame: int, rows, cols) -> np.ndarray:
        r = np.arange(self.shape[1])[rows]
        c = np.arange(self.shape[2])[cols]
        cr, cc = self.centre(frame)
        inside = (r[:, None] - cr) ** 2 + (c[None, :] - cc) ** 2 < self.radius**2
        return np.where(inside, 220, 20).astype(np.uint8)


def bright(model=None, stack=None, **options):
    return RegionTracker(
        model or _NoNetwork(), stack, make_tracker=BrightTracker, intensity_range=(0, 255),
        **options,
    )  # fmt: skip


class _NoNetwork:
    """What RegionTracker reads of a model when the stand-in does the work."""

    class config:  # noqa: N801 - mirrors the model's attribute
        image_size = SIZE

    image_size = SIZE
    device = torch.device("cpu")


def test_a_region_follows_a_disc_across_a_2048_frame_at_full_resolution():
    stack = MovingDisc()
    tracker = bright(stack=stack, min_side=SIZE)
    row, col = stack.centre(0)
    logits = tracker.set_prompts(0, 1, points=[[col, row]], labels=[1])
    assert tracker.region(1, 0) == place((row + 0.5, col + 0.5), (SIZE, SIZE), (2048, 2048))
    assert logits[1].shape == (2048, 2048)
    np.testing.assert_array_equal(logits[1] > 0, stack.disc(0))

    regions = []
    for frame, found in tracker.propagate(0, "forward"):
        region = tracker.region(1, frame)
        regions.append(region)
        assert region.shape == (SIZE, SIZE)
        # Pasted back at full resolution and at its place: exactly the disc, to the pixel.
        np.testing.assert_array_equal(found[1] > 0, stack.disc(frame))
        assert (found[1][~stack.disc(frame)] <= -8).all()
        cr, cc = stack.centre(frame)
        r = stack.radius
        assert region.contains(Extent(cr - r, cc - r, cr + r, cc + r))
    # It moved with the disc: from near the start to near the end, 900 px to the right.
    assert regions[-1].left - regions[0].left > 800
    assert len(set(regions)) > 8
    # Each region came from the slice before it by the documented rule.
    for before, after, frame in zip(regions, regions[1:], range(1, 16)):
        local = mask_extent(before.crop(stack.disc(frame - 1)))
        assert after == follow(before, local, (2048, 2048))
    # Only regions were read (besides nothing else: the range was given).
    assert set(stack.reads) == {(SIZE, SIZE)}


def test_crops_use_the_whole_stack_intensity_range_not_their_own():
    stack = np.full((2, 400, 400), 100, np.uint16)
    stack[:, 300:320, 300:320] = 3000
    stack[:, 10:20, 10:20] = 110  # a faint patch, dim on the stack's range
    tracker = RegionTracker(_NoNetwork(), stack, make_tracker=BrightTracker, min_side=64)
    tracker.set_prompts(0, 1, points=[[15, 15]], labels=[1])
    inner = tracker._objects[1].tracker
    whole = tracker.frames
    assert inner.source.intensity_range == whole.intensity_range
    region = tracker.region(1, 0)
    np.testing.assert_array_equal(inner.source.read(0), region.crop(whole.read(0)))
    # Normalised on its own, the faint patch would be the crop's brightest: it is not an object.
    assert not (tracker.frame_logits(0)[1] > 0).any()


def test_a_cut_first_mask_grows_the_region_until_the_object_fits():
    stack = MovingDisc(frames=1, radius=300, start=(1000, 1000), step=(0, 0))
    tracker = bright(stack=stack, min_side=SIZE)
    logits = tracker.set_prompts(0, 1, points=[[1000, 1000]], labels=[1])
    assert tracker.region(1, 0).shape == (1024, 1024)  # 256, cut; 512, cut; 1024 holds it
    np.testing.assert_array_equal(logits[1] > 0, stack.disc(0))
    assert (
        bright(stack=stack, min_side=SIZE, max_growth=0)
        .set_prompts(0, 1, points=[[1000, 1000]], labels=[1])[1]
        .sum()
        < logits[1].sum()
    )


def test_a_prompt_outside_the_region_starts_the_object_afresh():
    stack = MovingDisc(frames=6)
    tracker = bright(stack=stack, min_side=SIZE)
    row, col = stack.centre(0)
    tracker.set_prompts(0, 1, points=[[col, row]], labels=[1])
    assert [frame for frame, _ in tracker.propagate(0, "forward", max_frames=3)] == [0, 1, 2]
    assert set(tracker.frame_logits(2)) == {1}
    run = tracker.propagate(0, "forward")
    next(run)
    tracker.set_prompts(0, 2, box=[1500, 1500, 1600, 1600])  # a new object ends the run
    with pytest.raises(PropagationInvalidated, match="objects changed"):
        next(run)
    before = tracker.region(1, 0)
    # A negative click far outside object 1's region: a larger region from all its prompts.
    tracker.set_prompts(0, 1, points=[[col, row], [col + 400, row]], labels=[1, 0])
    after = tracker.region(1, 0)
    assert after.width > before.width and after.contains(Extent(row, col, row + 1, col + 401))
    assert tracker.prompted_frames(1) == [0]
    assert set(tracker.frame_logits(2)) == set()  # its propagated slices need propagating again
    assert [frame for frame, _ in tracker.propagate(0, "forward", max_frames=3)] == [0, 1, 2]
    assert set(tracker.frame_logits(2)) == {1, 2}
    tracker.clear_prompts(2, 0)
    assert tracker.prompted_frames(2) == []
    tracker.remove_object(2)
    assert tracker.object_ids == [1]
    with pytest.raises(ValueError, match="unknown object id 2"):
        tracker.region(2, 0)


def test_a_mask_prompt_reaches_each_region_as_its_crop():
    stack = MovingDisc(frames=2)
    disc = stack.disc(0)
    tracker = bright(stack=stack, min_side=SIZE)
    tracker.set_prompts(0, 1, mask=disc)
    region = tracker.region(1, 0)
    inner = tracker._objects[1].tracker
    np.testing.assert_array_equal(inner.prompts[0]["mask"], region.crop(disc))
    # A larger mask does not fit: the object starts afresh on a larger region, and the mask
    # kept for it (its extent's pixels only) is cropped to that region.
    wider = disc.copy()
    wider[280:300, 600:620] = True
    tracker.set_prompts(0, 1, mask=wider.astype(np.float32))  # float masks: >= 0.5 is inside
    bigger = tracker.region(1, 0)
    assert bigger.width > region.width
    inner = tracker._objects[1].tracker
    np.testing.assert_array_equal(inner.prompts[0]["mask"], bigger.crop(wider))
    np.testing.assert_array_equal(tracker.frame_logits(0)[1] > 0, disc)


def test_options_are_checked():
    stack = np.zeros((2, 64, 64), np.uint8)
    with pytest.raises(ValueError, match="margin"):
        bright(stack=stack, margin=-1)
    with pytest.raises(ValueError, match="feature store"):
        bright(stack=stack, feature_store="features.zarr")
    with pytest.raises(ValueError, match="nothing to propagate"):
        bright(stack=stack).propagate(0)


# ---------------------------------------------------------------------- with the network


def test_a_full_frame_region_equals_the_plain_tracker_to_the_bit(model):
    stack = np.random.default_rng(3).integers(100, 400, (3, 48, 64)).astype(np.uint16)
    stack[:, 15:33, 12:30] += 3000
    prompts = [
        (1, 1, {"points": np.array([[21.0, 24.0]]), "labels": np.array([1])}),
        (1, 2, {"box": np.array([40.0, 5.0, 60.0, 20.0])}),
        (2, 1, {"points": np.array([[22.0, 24.0], [50.0, 40.0]]), "labels": np.array([1, 0])}),
        (0, 2, {"mask": stack[0] > 2000}),
    ]
    runs = []
    for make in (Tracker, RegionTracker):
        tracker = make(model, stack)  # a 48 x 64 frame is within one 256 region: the whole
        firsts = [tracker.set_prompts(f, o, **p) for f, o, p in prompts]
        runs.append((firsts, list(tracker.propagate(1, "both")), tracker.frame_logits(2)))
        if make is RegionTracker:
            assert tracker.region(1, 0) == Region.whole((48, 64))
    (plain_first, plain_run, plain_last), (roi_first, roi_run, roi_last) = runs
    for a, b in zip(plain_first, roi_first):
        assert a.keys() == b.keys()
        for obj_id in a:
            np.testing.assert_array_equal(a[obj_id], b[obj_id])
    assert [f for f, _ in plain_run] == [f for f, _ in roi_run] == [1, 2, 0]
    for (_, a), (_, b) in zip(plain_run, roi_run):
        assert a.keys() == b.keys() == {1, 2}
        for obj_id in a:
            np.testing.assert_array_equal(a[obj_id], b[obj_id])
    assert all(np.array_equal(plain_last[k], roi_last[k]) for k in (1, 2))
    areas = [int((logits > 0).sum()) for _, found in roi_run for logits in found.values()]
    assert any(0 < area < 48 * 64 for area in areas)  # masks neither empty nor full


def test_network_results_are_pasted_back_at_full_resolution_in_place(model):
    side = 1024
    rows, cols = np.mgrid[:side, :side]
    stack = np.full((3, side, side), 200, np.uint16)
    for t in range(3):
        stack[t][(rows - 600) ** 2 + (cols - 300 - 30 * t) ** 2 < 50**2] = 3000
    tracker = RegionTracker(model, stack, max_growth=0)
    click = np.array([[300.0, 600.0]])
    logits = tracker.set_prompts(0, 1, points=click, labels=np.array([1]))[1]
    region = tracker.region(1, 0)
    assert region == place((600.5, 300.5), (SIZE, SIZE), (side, side))
    assert logits.shape == (side, side) and logits.dtype == np.float32
    outside = np.ones((side, side), bool)
    outside[region.slices] = False
    assert (logits[outside] == OUTSIDE_LOGIT).all()
    # The same crop segmented by a plain tracker, with the stack's intensity range: the
    # region's logits are exactly those, at the crop's full resolution.
    crop = stack[:, region.slices[0], region.slices[1]]
    plain = Tracker(model, crop, intensity_range=tracker.frames.intensity_range)
    local = plain.set_prompts(0, 1, points=click - [region.left, region.top], labels=[1])[1]
    np.testing.assert_array_equal(logits[region.slices], local)
    assert local.std() > 0  # a real result, not a constant
    labels = label_frame(np.zeros((side, side), np.uint32), {1: logits})
    assert not labels[outside].any() and labels[region.slices].any()
    # Propagated slices: each region follows from the slice before it.
    masks, previous = {}, region
    for frame, found in tracker.propagate(0, "forward"):
        now = tracker.region(1, frame)
        if frame:
            local = mask_extent(previous.crop(masks[frame - 1]))
            assert now == follow(previous, local, (side, side))
        masks[frame] = found[1] > 0
        outside = np.ones((side, side), bool)
        outside[now.slices] = False
        assert (found[1][outside] == OUTSIDE_LOGIT).all()
        previous = now
    assert sorted(masks) == [0, 1, 2]
