"""The memory estimate of a propagation, and refusing one that would not fit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_sam2.engine import memory_estimate
from napari_sam2.engine.memory_estimate import (
    USABLE_SHARE,
    InsufficientMemory,
    bytes_per_object_frame,
    check_propagation_fits,
    estimate_propagation_bytes,
)
from napari_sam2.engine.tracker import Tracker
from tests.engine.helpers import random_tiny_model


def _expected_bytes(size: int) -> int:
    """float32 logits at S/4, bfloat16 memory of 64 channels at S/16, 256-d pointer, score."""
    return (size // 4) ** 2 * 4 + 64 * (size // 16) ** 2 * 2 + 256 * 4 + 4


def test_bytes_per_object_frame():
    assert bytes_per_object_frame(256) == 64 * 64 * 4 + 64 * 16 * 16 * 2 + 1028 == 50180
    assert bytes_per_object_frame(1024) == 256 * 256 * 4 + 64 * 64 * 64 * 2 + 1028 == 787460
    # Far below Meta's ~0.75 MiB + a 12 MiB frame per object and frame at 1024.
    assert bytes_per_object_frame(1024) < 0.76 * 2**20
    for size in (512, 320):
        assert bytes_per_object_frame(size) == _expected_bytes(size)


def test_estimate_scales_with_objects_and_frames():
    one = bytes_per_object_frame(256)
    assert estimate_propagation_bytes(256, 3, 100) == 300 * one
    assert estimate_propagation_bytes(256, 1, 0) == 0


def _fake_tracker(num_objects: int, image_size: int = 1024):
    model = SimpleNamespace(image_size=image_size)
    return SimpleNamespace(model=model, object_ids=list(range(1, num_objects + 1)))


def test_refuses_with_a_message_that_says_what_to_do():
    tracker = _fake_tracker(2)
    with pytest.raises(InsufficientMemory) as info:
        check_propagation_fits(tracker, 5000, available=2**30)
    message = str(info.value)
    assert "GiB" in message and "max_frames" in message
    assert "2 object(s)" in message and "5000 frames" in message
    needed = estimate_propagation_bytes(1024, 2, 5000) / 2**30
    assert f"{needed:.1f} GiB" in message
    assert isinstance(info.value, MemoryError)


def test_passes_when_it_fits_and_returns_the_estimate():
    tracker = _fake_tracker(2)
    needed = estimate_propagation_bytes(1024, 2, 100)
    assert check_propagation_fits(tracker, 100, available=2**40) == needed
    # The bound is a share of what is free, not all of it.
    check_propagation_fits(tracker, 100, available=int(needed / USABLE_SHARE) + 1)
    with pytest.raises(InsufficientMemory):
        check_propagation_fits(tracker, 100, available=int(needed / USABLE_SHARE) - 1000)


def test_no_objects_counts_as_one_and_unknown_free_memory_passes(monkeypatch):
    with pytest.raises(InsufficientMemory, match="1 object"):
        check_propagation_fits(_fake_tracker(0), 10, available=1)
    monkeypatch.setattr(memory_estimate, "available_host_bytes", lambda: None)
    assert check_propagation_fits(_fake_tracker(3), 10**6) > 0


def test_available_host_bytes_is_plausible():
    free = memory_estimate.available_host_bytes()
    assert free is None or 2**20 < free < 2**50


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(256)


def test_tracker_refuses_before_yielding_anything(model, monkeypatch):
    frames = np.random.default_rng(0).integers(0, 4000, (4, 48, 64), dtype=np.uint16)
    tracker = Tracker(model, frames)
    tracker.set_prompts(0, 1, points=[[30, 20]], labels=[1])
    monkeypatch.setattr(memory_estimate, "available_host_bytes", lambda: 1024)
    with pytest.raises(InsufficientMemory, match=r"4 frames.*GiB.*max_frames"):
        for _ in tracker.propagate(0):
            pytest.fail("propagation yielded a frame although memory was short")
    # Nothing changed: the prompt is still waiting, no frame was tracked.
    state = tracker._objects[1]
    assert list(state.pending) == [0] and not state.conditioning and not state.tracked
    assert tracker.state_nbytes == tracker._objects[1].pending[0][0].nbytes

    # With memory again, the same tracker propagates; a short run fits where a long one not.
    per_frame = bytes_per_object_frame(256)
    monkeypatch.setattr(
        memory_estimate, "available_host_bytes", lambda: int(2.5 * per_frame / USABLE_SHARE)
    )
    with pytest.raises(InsufficientMemory):
        tracker.propagate(0, max_frames=3)
    assert [frame for frame, _ in tracker.propagate(0, max_frames=2)] == [0, 1]


# ---------------------------------------------------------------------------- whole runs

from napari_sam2.engine.memory_estimate import (  # noqa: E402
    RunEstimate,
    check_run_fits,
    estimate_run_bytes,
)


def test_a_run_estimate_counts_state_labels_and_the_write_buffer():
    estimate = estimate_run_bytes(
        image_size=256, num_objects=3, num_frames=100, frame_shape=(512, 600), label_itemsize=2
    )
    assert isinstance(estimate, RunEstimate)
    assert estimate.state == estimate_propagation_bytes(256, 3, 100)
    assert estimate.labels == 100 * 512 * 600 * 2
    assert estimate.write_buffer == 2 * 512 * 600 * 2
    assert estimate.frame_work > 512 * 600 * 8  # the frame in float64, at least
    assert estimate.total == (
        estimate.state + estimate.labels + estimate.write_buffer + estimate.frame_work
    )
    wider = estimate_run_bytes(
        image_size=256, num_objects=3, num_frames=100, frame_shape=(512, 600), label_itemsize=4
    )
    assert wider.labels == 2 * estimate.labels


def test_labels_alone_can_make_a_run_not_fit():
    # tiny state (a small input size) but 2000 frames of 2048 x 2048 uint32 labels: 32 GiB
    estimate = estimate_run_bytes(
        image_size=256, num_objects=1, num_frames=2000, frame_shape=(2048, 2048)
    )
    assert estimate.state < 2**30 and estimate.labels == 2000 * 2048 * 2048 * 4
    with pytest.raises(InsufficientMemory) as info:
        check_run_fits(estimate, available=16 * 2**30)
    message = str(info.value)
    assert "output labels (2000 x 2048 x 2048)" in message
    assert "--axis" in message and "fewer objects" in message and "--image-size" in message
    frames_fit = int(message.split("about ")[-1].split()[0].replace(",", ""))
    assert 0 < frames_fit < 2000
    fitting = estimate_run_bytes(
        image_size=256, num_objects=1, num_frames=frames_fit, frame_shape=(2048, 2048)
    )
    assert check_run_fits(fitting, available=16 * 2**30) is fitting


@pytest.mark.parametrize(
    "bad",
    [{"num_frames": 1.5}, {"num_objects": -1}, {"image_size": True}, {"label_itemsize": "4"}],
)
def test_run_estimate_arguments_are_integers(bad):
    kwargs = {"image_size": 256, "num_objects": 1, "num_frames": 3, "frame_shape": (8, 8)}
    with pytest.raises(ValueError, match="integer"):
        estimate_run_bytes(**{**kwargs, **bad})


def test_extra_bytes_join_the_tracker_check():
    tracker = _fake_tracker(1, image_size=256)
    state = estimate_propagation_bytes(256, 1, 10)
    assert check_propagation_fits(tracker, 10, available=2**40, extra_bytes=5) == state + 5
    with pytest.raises(InsufficientMemory):
        check_propagation_fits(tracker, 10, available=state * 2, extra_bytes=state * 4)
