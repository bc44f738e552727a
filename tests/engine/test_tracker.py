"""Behaviour of the Tracker: lazy reads, input types, bad input, cancel, directions, objects,
the feature cache, bounded state and batching.

Numerical parity with Meta's predictor is tested in test_tracker_parity.py; these tests check
what the engine promises beyond it. They use random weights at input size 256, with the
object-score head biased so that masks are not empty.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from napari_sam2.engine.memory_estimate import bytes_per_object_frame
from napari_sam2.engine.tracker import Tracker
from tests.engine.helpers import random_tiny_model

SIZE = 256
HEIGHT, WIDTH = 48, 64  # non-square frames, larger than napari's RGB guess threshold (30)
CLICK = np.array([[21.0, 24.0]])  # (x, y) on the disc of blob_stack's first frame
ELSEWHERE = np.array([[55.0, 8.0]])  # background, far from the disc
FOREGROUND = np.array([1])


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(SIZE)


def blob_stack(num_frames: int, dtype=np.uint16, offset: float = 0.0) -> np.ndarray:
    """(T, H, W) frames: a bright disc drifting right by a pixel a frame over noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    frames = []
    for t in range(num_frames):
        disc = (rows - HEIGHT / 2) ** 2 + (cols - WIDTH / 3 - t) ** 2 < (HEIGHT / 5) ** 2
        frames.append(offset + 200 + 300 * rng.random((HEIGHT, WIDTH)) + 3000 * disc)
    return np.stack(frames).astype(dtype)


class LazyStack:
    """An array-like that can only be read by indexing: it counts the reads of every frame and
    refuses to be converted to one numpy array."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.reads: collections.Counter[int] = collections.Counter()
        self.materialised = False

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        if not isinstance(first, (int, np.integer)):
            raise AssertionError(f"read more than one frame at once: {key!r}")
        self.reads[int(first)] += 1
        return self._data[key]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, *args, **kwargs):
        self.materialised = True
        raise AssertionError("the whole lazy stack was converted to a numpy array")


@contextlib.contextmanager
def counting_encoder(model):
    """Count the image encoder's calls (a list of batch sizes) while the block runs."""
    calls: list[int] = []
    original = model.encode_image

    def counted(images):
        calls.append(images.shape[0])
        return original(images)

    model.encode_image = counted
    try:
        yield calls
    finally:
        del model.encode_image


def frames_of(run) -> list[int]:
    return [frame for frame, _ in run]


def assert_valid_logits(logits: np.ndarray) -> None:
    assert logits.dtype == np.float32
    assert logits.shape == (HEIGHT, WIDTH)
    assert np.isfinite(logits).all()


# ---------------------------------------------------------------------- lazy frames


def test_lazy_stack_is_never_materialised_and_read_frame_by_frame(model):
    stack = LazyStack(blob_stack(40))
    tracker = Tracker(model, stack)
    assert stack.reads == {}  # nothing is read before it is needed
    tracker.set_prompts(10, 1, points=CLICK, labels=FOREGROUND)
    run = list(tracker.propagate(10, "both", max_frames=2))
    assert frames_of(run) == [10, 11, 9]

    sampled = set(tracker.frames.sample_indices())
    tracked = set(frames_of(run))
    assert len(sampled) <= 16
    assert not stack.materialised
    # Only the intensity sample and the frames the model needed were read, each once.
    assert set(stack.reads) <= sampled | tracked
    for index in tracked:
        assert stack.reads[index] == 1 + (index in sampled), (index, stack.reads)
    assert sum(stack.reads.values()) <= len(sampled) + len(tracked)


# ---------------------------------------------------------------------- input types


def _rgb_stack(num_frames: int) -> np.ndarray:
    grey = blob_stack(num_frames, np.float64) / 3500 * 255
    rgb = np.stack([grey, 0.5 * grey, 255 - grey], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _float_with_nans(num_frames: int) -> np.ndarray:
    frames = blob_stack(num_frames, np.float32) / 1000
    frames[:, ::7, ::5] = np.nan
    frames[1, 3, 3] = np.inf
    return frames


INPUTS = {
    "uint16": lambda n: blob_stack(n, np.uint16),
    "int16-ct": lambda n: blob_stack(n, np.int16, offset=-1200),  # air around -1000 HU
    "float32-nan": _float_with_nans,
    "rgb-uint8": _rgb_stack,
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_input_types_segment_and_propagate(model, kind):
    frames = INPUTS[kind](2)
    tracker = Tracker(model, frames)
    assert tracker.num_frames == 2 and tracker.frame_shape == (HEIGHT, WIDTH)
    first = tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    assert list(first) == [1]
    assert_valid_logits(first[1])
    assert (first[1] > 0).any()
    run = list(tracker.propagate(0))
    assert frames_of(run) == [0, 1]
    for _, outputs in run:
        assert list(outputs) == [1]
        assert_valid_logits(outputs[1])
    np.testing.assert_array_equal(run[0][1][1], first[1])
    if kind == "int16-ct":
        low, high = tracker.frames.intensity_range
        assert low < -800 and high > 1500  # negative values kept, not wrapped or clipped
    if kind == "rgb-uint8":
        assert tracker.frames.layout == "rgb"


def test_single_image_is_a_one_frame_video(model):
    image = blob_stack(1)[0]
    tracker = Tracker(model, image)
    assert tracker.num_frames == 1 and tracker.frame_shape == (HEIGHT, WIDTH)
    first = tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    assert list(first) == [1]
    assert_valid_logits(first[1])
    for direction in ("forward", "backward", "both"):
        run = list(tracker.propagate(0, direction))
        assert frames_of(run) == [0]
        np.testing.assert_array_equal(run[0][1][1], first[1])
    with pytest.raises(ValueError, match="frame index 1 is out of range"):
        tracker.set_prompts(1, 1, points=CLICK, labels=FOREGROUND)


# ---------------------------------------------------------------------- bad input


@pytest.fixture
def tracker(model):
    """A fresh tracker on 3 frames; nothing encoded yet."""
    return Tracker(model, blob_stack(3))


def test_points_outside_the_frame(tracker):
    with pytest.raises(ValueError, match=r"point \(x=70, y=5\) is outside the frame of width 64"):
        tracker.set_prompts(0, 1, points=[[10, 10], [70, 5]], labels=[1, 1])
    with pytest.raises(ValueError, match="outside the frame"):
        tracker.set_prompts(0, 1, points=[[10, -2]], labels=[1])
    assert tracker.object_ids == []  # a refused prompt creates no object


def test_labels_of_the_wrong_length(tracker):
    with pytest.raises(ValueError, match="got 2 points but 1 labels"):
        tracker.set_prompts(0, 1, points=[[10, 10], [20, 20]], labels=[1])
    with pytest.raises(ValueError, match="labels are missing"):
        tracker.set_prompts(0, 1, points=[[10, 10]])
    assert tracker.object_ids == []


@pytest.mark.parametrize(
    "prompt",
    [{}, {"points": np.zeros((0, 2)), "labels": np.zeros(0, dtype=int)}],
    ids=["nothing", "zero-points"],
)
def test_empty_prompt(tracker, prompt):
    with pytest.raises(ValueError, match="the prompt is empty: give at least one point"):
        tracker.set_prompts(0, 1, **prompt)
    assert tracker.object_ids == []


def test_frame_index_out_of_range(tracker):
    for frame in (3, -1):
        with pytest.raises(ValueError, match=rf"frame index {frame} is out of range.*3 frames"):
            tracker.set_prompts(frame, 1, points=CLICK, labels=FOREGROUND)
        with pytest.raises(ValueError, match=rf"frame index {frame} is out of range"):
            tracker.prepare(frame)
        with pytest.raises(ValueError, match=rf"frame index {frame} is out of range"):
            list(tracker.propagate(frame))
        with pytest.raises(ValueError, match=rf"frame index {frame} is out of range"):
            tracker.frame_logits(frame)
    assert tracker.object_ids == [] and len(tracker.features) == 0


def test_unknown_or_invalid_object_id(tracker):
    with pytest.raises(ValueError, match="unknown object id 7; the objects are: none"):
        tracker.remove_object(7)
    with pytest.raises(ValueError, match="unknown object id 7"):
        tracker.clear_prompts(7)
    with pytest.raises(ValueError, match="unknown object id 7"):
        tracker.prompted_frames(7)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="object id must be a positive integer"):
            tracker.set_prompts(0, bad, points=CLICK, labels=FOREGROUND)


def test_wrong_number_of_dimensions(model):
    with pytest.raises(ValueError, match=r"shape \(10,\).*at least 2-D"):
        Tracker(model, np.zeros(10, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(2, 2, 3, 40, 40\) \(5-D\).*channel_axis"):
        Tracker(model, np.zeros((2, 2, 3, 40, 40), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"4-D.*channel_axis"):
        Tracker(model, np.zeros((2, 5, 40, 40), dtype=np.uint16))


def test_nothing_to_propagate_and_bad_direction_arguments(tracker):
    with pytest.raises(ValueError, match="nothing to propagate: add a point, box or mask"):
        list(tracker.propagate(0))
    tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    with pytest.raises(ValueError, match=r"direction must be one of .*'sideways'"):
        list(tracker.propagate(0, "sideways"))
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"max_frames must be at least 1, got {bad}"):
            list(tracker.propagate(0, max_frames=bad))
    assert tracker._objects[1].tracked == {}  # the refused runs tracked nothing


@pytest.mark.parametrize(
    ("shape", "dtype"), [((2, HEIGHT, WIDTH), np.uint16), ((HEIGHT, WIDTH), np.float32)]
)
def test_constant_image_gives_finite_outputs(model, shape, dtype):
    tracker = Tracker(model, np.full(shape, 500, dtype=dtype))
    low, high = tracker.frames.intensity_range
    assert low == high == 500
    first = tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    assert_valid_logits(first[1])
    run = list(tracker.propagate(0))
    assert len(run) == tracker.num_frames
    for _, outputs in run:
        assert_valid_logits(outputs[1])


def test_all_nan_frame_is_refused_naming_the_frame(model):
    frames = blob_stack(4, np.float32)
    frames[2] = np.nan
    tracker = Tracker(model, frames)
    with pytest.raises(ValueError, match="frame 2 holds no finite values"):
        tracker.set_prompts(2, 1, points=CLICK, labels=FOREGROUND)
    tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    done = []
    with pytest.raises(ValueError, match="frame 2 holds no finite values"):
        for frame, _ in tracker.propagate(0):
            done.append(frame)
    assert done == [0, 1]
    assert list(tracker.frame_logits(1)) == [1]  # frames before it stay tracked
    assert 2 not in tracker._objects[1].tracked  # the failed frame leaves no trace


def test_all_nan_single_image_is_refused_naming_the_frame(model):
    tracker = Tracker(model, np.full((HEIGHT, WIDTH), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="frame 0 holds no finite values"):
        tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)


# ---------------------------------------------------------------------- propagation


def test_closing_the_generator_cancels_and_leaves_the_tracker_usable(model):
    tracker = Tracker(model, blob_stack(4))
    tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    run = tracker.propagate(0)
    done = [next(run), next(run)]
    run.close()
    assert frames_of(done) == [0, 1]
    with pytest.raises(StopIteration):
        next(run)

    state = tracker._objects[1]
    assert sorted(state.tracked) == [0, 1]
    assert sorted(state.conditioning) == [0] and sorted(state.recent) == [1]
    np.testing.assert_array_equal(tracker.frame_logits(1)[1], done[1][1][1])
    assert tracker.frame_logits(2) == {}  # never reached

    tracker.set_prompts(2, 2, points=ELSEWHERE, labels=FOREGROUND)
    again = list(tracker.propagate(0))
    assert frames_of(again) == [0, 1, 2, 3]
    for _, outputs in again:
        assert list(outputs) == [1, 2]
        assert_valid_logits(outputs[1])
        assert_valid_logits(outputs[2])
    np.testing.assert_array_equal(again[0][1][1], done[0][1][1])  # the prompt frame is kept
    assert sorted(tracker._objects[1].tracked) == [0, 1, 2, 3]
    assert sorted(tracker._objects[2].conditioning) == [2]


def test_directions_and_max_frames(model):
    tracker = Tracker(model, blob_stack(4))
    tracker.set_prompts(1, 1, points=CLICK, labels=FOREGROUND)
    both = list(tracker.propagate(1, "both"))
    assert frames_of(both) == [1, 2, 3, 0]  # the start frame once, then earlier frames
    state = tracker._objects[1]
    assert state.tracked == {0: True, 1: False, 2: False, 3: False}  # visited going which way
    assert frames_of(tracker.propagate(0, "backward")) == [0]
    assert frames_of(tracker.propagate(1, "forward", max_frames=2)) == [1, 2]
    assert frames_of(tracker.propagate(2, "backward", max_frames=2)) == [2, 1]
    assert state.tracked == {0: True, 1: True, 2: True, 3: False}
    assert frames_of(tracker.propagate(1, "both", max_frames=2)) == [1, 2, 0]
    assert frames_of(tracker.propagate(3, "forward", max_frames=9)) == [3]


def test_remove_object_reset_and_object_ids(model):
    tracker = Tracker(model, blob_stack(3))
    assert tracker.object_ids == []
    tracker.set_prompts(0, 3, points=ELSEWHERE, labels=FOREGROUND)
    outputs = tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    assert list(outputs) == [1, 3]  # every object with output on the frame, sorted
    assert tracker.object_ids == [1, 3]
    for _, outputs in tracker.propagate(0):
        assert list(outputs) == [1, 3]

    tracker.remove_object(3)
    assert tracker.object_ids == [1]
    assert list(tracker.frame_logits(1)) == [1]
    for _, outputs in tracker.propagate(0, max_frames=2):
        assert list(outputs) == [1]
    with pytest.raises(ValueError, match="unknown object id 3; the objects are: 1"):
        tracker.remove_object(3)

    cached = len(tracker.features)
    tracker.reset()
    assert tracker.object_ids == [] and tracker.state_nbytes == 0
    assert tracker.frame_logits(0) == {}
    with pytest.raises(ValueError, match="nothing to propagate"):
        list(tracker.propagate(0))
    assert len(tracker.features) == cached > 0  # image features stay valid after a reset


def test_clear_prompts(model):
    tracker = Tracker(model, blob_stack(4))
    tracker.set_prompts(0, 1, points=CLICK, labels=FOREGROUND)
    tracker.set_prompts(2, 1, points=CLICK + [2, 0], labels=FOREGROUND)
    assert tracker.prompted_frames(1) == [0, 2]
    list(tracker.propagate(0))
    state = tracker._objects[1]
    assert sorted(state.conditioning) == [0, 2]
    prompted_result = tracker.frame_logits(2)[1]

    tracker.clear_prompts(1, 2)
    assert tracker.prompted_frames(1) == [0]
    # The prompted frame becomes an ordinary tracked frame: its result is kept as a memory.
    assert sorted(state.conditioning) == [0] and 2 in state.recent
    np.testing.assert_array_equal(tracker.frame_logits(2)[1], prompted_result)
    with pytest.raises(ValueError, match="frame index 4 is out of range"):
        tracker.clear_prompts(1, 4)

    again = list(tracker.propagate(0))
    assert frames_of(again) == [0, 1, 2, 3]
    assert sorted(state.conditioning) == [0] and 2 in state.recent

    tracker.clear_prompts(1)
    assert tracker.prompted_frames(1) == [] and tracker.object_ids == [1]
    with pytest.raises(ValueError, match="object 1 has no prompts: add a point, box or mask"):
        list(tracker.propagate(0))


# ---------------------------------------------------------------------- feature cache


def test_second_prompt_on_a_frame_does_not_rerun_the_image_encoder(model):
    tracker = Tracker(model, blob_stack(3))
    with counting_encoder(model) as calls:
        tracker.set_prompts(1, 1, points=CLICK, labels=FOREGROUND)
        assert calls == [1]
        tracker.set_prompts(1, 1, points=CLICK + [2, 1], labels=FOREGROUND)
        tracker.set_prompts(1, 2, box=(5, 5, 40, 40))
        tracker.prepare(1)
        assert calls == [1]
        tracker.prepare(2)
        tracker.set_prompts(2, 1, points=CLICK, labels=FOREGROUND)
        assert calls == [1, 1]
        tracker.reset()
        tracker.set_prompts(1, 1, points=CLICK, labels=FOREGROUND)
        assert calls == [1, 1]


LONG = 6  # frames of the long run
OBJECTS = {1: CLICK, 2: ELSEWHERE, 3: CLICK}  # objects 1 and 3 overlap exactly


@dataclasses.dataclass
class LongRun:
    tracker: Tracker
    frames: np.ndarray
    cache_bound: int
    outputs: list[tuple[int, dict[int, np.ndarray]]]
    cache_bytes: list[int]
    cache_entries: list[int]
    state_bytes: list[int]
    encoder_calls: list[int]
    group_sizes: list[int]


@pytest.fixture(scope="module")
def long_run(model) -> LongRun:
    """Three objects tracked through LONG frames with a feature cache of 2.5 frames."""
    probe = Tracker(model, blob_stack(1))
    probe.prepare(0)
    bound = int(2.5 * probe.features.nbytes)

    frames = blob_stack(LONG)
    tracker = Tracker(model, frames, feature_cache_bytes=bound, batch_objects=True)
    group_sizes: list[int] = []
    run_group = tracker._run_group

    def recording_run_group(features, obj_ids, *args):
        group_sizes.append(len(obj_ids))
        return run_group(features, obj_ids, *args)

    tracker._run_group = recording_run_group
    record = LongRun(tracker, frames, bound, [], [], [], [], [], group_sizes)
    with counting_encoder(model) as calls:
        for obj_id, click in OBJECTS.items():
            tracker.set_prompts(0, obj_id, points=click, labels=FOREGROUND)
        for frame, outputs in tracker.propagate(0):
            record.outputs.append((frame, outputs))
            record.cache_bytes.append(tracker.features.nbytes)
            record.cache_entries.append(len(tracker.features))
            record.state_bytes.append(tracker.state_nbytes)
    record.encoder_calls = calls
    del tracker._run_group
    return record


def test_feature_cache_stays_under_its_bound(long_run):
    assert frames_of(long_run.outputs) == list(range(LONG))
    assert max(long_run.cache_bytes) <= long_run.cache_bound
    # Propagation reads each frame once and caches nothing: only the prompted frame stays.
    assert max(long_run.cache_entries) == 1
    assert list(long_run.tracker.features.keys()) == [0]
    assert len(long_run.encoder_calls) == LONG  # every frame was encoded only once


def test_feature_cache_is_bounded_in_bytes(model):
    probe = Tracker(model, blob_stack(1))
    probe.prepare(0)
    bound = int(2.5 * probe.features.nbytes)
    tracker = Tracker(model, blob_stack(5), feature_cache_bytes=bound)
    for frame in range(5):
        tracker.prepare(frame)
        assert tracker.features.nbytes <= bound
    assert list(tracker.features.keys()) == [3, 4]  # least recent frames were evicted


def test_state_grows_linearly_with_the_frames_tracked(long_run):
    per_frame = bytes_per_object_frame(SIZE) * len(OBJECTS)
    steps = np.diff(long_run.state_bytes)
    assert len(steps) == LONG - 1
    assert np.all(np.abs(steps - per_frame) <= 0.01 * per_frame), steps
    per_object_frame = long_run.state_bytes[-1] / (LONG * len(OBJECTS))
    assert abs(per_object_frame - bytes_per_object_frame(SIZE)) <= 0.01 * per_object_frame


def _tensors(value):
    """Every tensor reachable from dataclasses, dicts, lists and tuples in ``value``."""
    if isinstance(value, torch.Tensor):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            yield from _tensors(getattr(value, item.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def test_state_holds_no_frames_and_no_full_resolution_outputs(long_run):
    tracker = long_run.tracker
    for state in tracker._objects.values():
        outputs = [*state.conditioning.values(), *state.recent.values()]
        assert len(outputs) == LONG
        for out in outputs:
            assert out.low_res.shape == (1, 1, SIZE // 4, SIZE // 4)
            assert out.memory.shape == (1, 64, SIZE // 16, SIZE // 16)
            assert out.memory.dtype == torch.bfloat16
            assert out.pointer.shape == (1, 256) and out.score.shape == (1, 1)
        for tensor in _tensors(outputs):
            assert tensor.device == torch.device("cpu")
        for tensor in _tensors(state.prompts):
            assert tensor.numel() < 3 * SIZE * SIZE
    frame_sized = {3 * SIZE * SIZE, HEIGHT * WIDTH, 3 * HEIGHT * WIDTH}
    owned = {key: value for key, value in vars(tracker).items() if key != "model"}
    assert not any(t.numel() in frame_sized for t in _tensors(owned))


def test_batched_objects_match_unbatched(model, long_run):
    assert max(long_run.group_sizes) == len(OBJECTS)  # the run really batched the objects
    tracker = Tracker(model, long_run.frames, batch_objects=False)
    for obj_id, click in OBJECTS.items():
        tracker.set_prompts(0, obj_id, points=click, labels=FOREGROUND)
    unbatched = list(tracker.propagate(0, max_frames=3))
    assert frames_of(unbatched) == [0, 1, 2]
    for (frame, ours), (_, batched) in zip(unbatched, long_run.outputs):
        for obj_id in OBJECTS:
            scale = np.abs(ours[obj_id]).max()
            error = np.abs(ours[obj_id] - batched[obj_id]).max()
            assert error <= 1e-4 * scale, (frame, obj_id, error, scale)


def test_overlapping_objects_keep_their_own_outputs(long_run):
    """Objects 1 and 3 have the same click: the engine gives both the full mask, no merging."""
    for frame, outputs in long_run.outputs:
        assert list(outputs) == [1, 2, 3]
        first, third = outputs[1], outputs[3]
        assert (first > 0).any(), frame
        scale = np.abs(first).max()
        assert np.abs(first - third).max() <= 1e-4 * scale, frame
        assert np.array_equal(first > 0, third > 0)
        assert not np.array_equal(outputs[2], first)
