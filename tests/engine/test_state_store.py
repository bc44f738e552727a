"""The state store: per-object outputs beyond a RAM budget go to a temporary folder and come back
bit for bit; the tracker's results do not depend on the budget; the estimate counts what spills;
hundreds of objects run, reading each frame's features once.

Random weights at input size 256, the object-score head biased so that masks are not empty.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

from napari_sam2.engine import memory_estimate
from napari_sam2.engine.memory_estimate import (
    DEFAULT_STATE_RAM_BYTES,
    USABLE_SHARE,
    InsufficientDisk,
    InsufficientMemory,
    bytes_per_object_frame,
    check_propagation_fits,
    default_state_ram_bytes,
    estimate_run_bytes,
    spillable_bytes_per_object_frame,
    split_state_bytes,
)
from napari_sam2.engine.objects import FrameOutput
from napari_sam2.engine.state_store import StateStore
from napari_sam2.engine.tracker import Tracker
from tests.engine.helpers import random_tiny_model
from tests.engine.test_tracker import counting_encoder

SIZE = 256
HEIGHT, WIDTH = 48, 64


def _output(seed: int, size: int = SIZE) -> FrameOutput:
    gen = torch.Generator().manual_seed(seed)
    return FrameOutput(
        low_res=torch.randn(1, 1, size // 4, size // 4, generator=gen) * 10,
        pointer=torch.randn(1, 256, generator=gen),
        score=torch.randn(1, 1, generator=gen),
        memory=torch.randn(1, 64, size // 16, size // 16, generator=gen).to(torch.bfloat16),
    )


def _same(a: FrameOutput, b: FrameOutput) -> bool:
    return all(
        torch.equal(x, y) and x.dtype == y.dtype and x.shape == y.shape
        for x, y in zip(
            (a.low_res, a.pointer, a.score, a.memory), (b.low_res, b.pointer, b.score, b.memory)
        )
    )


# ---------------------------------------------------------------------------- the store alone


def test_outputs_beyond_the_budget_spill_and_read_back_bit_for_bit(tmp_path):
    one = StateStore.spillable_nbytes(_output(0))
    store = StateStore(3 * one, spill_dir=tmp_path)
    cond = store.frames(conditioning=True)
    recent = store.frames(conditioning=False)
    cond[0] = _output(100)
    for frame in range(1, 8):
        recent[frame] = _output(frame)
        assert store.ram_nbytes <= store.ram_budget
    # The oldest tracked outputs left RAM; the conditioning one and the 2 newest stayed.
    assert [f for f in recent if recent.is_spilled(f)] == [1, 2, 3, 4, 5]
    assert not cond.is_spilled(0)
    assert store.disk_nbytes == 5 * one == recent.disk_nbytes
    assert store.spill_dir is not None and os.path.dirname(store.spill_dir) == str(tmp_path)
    for frame in range(1, 8):
        assert _same(recent[frame], _output(frame))
    assert list(recent) == list(range(1, 8))  # insertion order, as a dict
    assert 3 in recent and 99 not in recent and recent.get(99) is None
    # RAM keeps pointer and score of spilled outputs.
    assert recent.ram_nbytes == 2 * _output(0).nbytes + 5 * (256 * 4 + 4)

    # Replacing a spilled value keeps its place; freed disk slots are reused.
    recent[2] = _output(22)
    assert list(recent) == list(range(1, 8)) and _same(recent[2], _output(22))
    del recent[1]
    assert recent.pop(3) is not None and store.disk_nbytes <= 5 * one
    recent[9] = _output(9)
    files = os.listdir(store.spill_dir)
    assert len(files) == 1
    assert os.path.getsize(os.path.join(store.spill_dir, files[0])) <= 6 * one
    recent.clear()
    cond.clear()
    assert store.ram_nbytes == 0 and store.disk_nbytes == 0


def test_conditioning_outputs_spill_only_when_no_tracked_one_is_left(tmp_path):
    one = StateStore.spillable_nbytes(_output(0))
    store = StateStore(one, spill_dir=tmp_path)
    cond = store.frames(conditioning=True)
    recent = store.frames(conditioning=False)
    cond[0] = _output(0)
    recent[1] = _output(1)
    assert recent.is_spilled(1) and not cond.is_spilled(0)
    cond[5] = _output(5)  # two conditioning outputs cannot both fit: the older goes
    assert cond.is_spilled(0) and not cond.is_spilled(5)
    assert _same(cond[0], _output(0)) and list(cond) == [0, 5]


def test_the_folder_is_removed_on_close_and_on_garbage_collection(tmp_path):
    store = StateStore(0, spill_dir=tmp_path)
    recent = store.frames(conditioning=False)
    recent[0] = _output(0)
    folder = store.spill_dir
    assert os.path.isdir(folder) and recent.is_spilled(0)
    recent.clear()
    store.close()
    assert not os.path.exists(folder) and store.spill_dir is None

    store = StateStore(0, spill_dir=tmp_path)
    recent = store.frames(conditioning=False)
    recent[0] = _output(0)
    folder = store.spill_dir
    del store, recent
    gc.collect()
    assert not os.path.exists(folder)
    assert os.listdir(tmp_path) == []


def test_outputs_without_memory_stay_in_ram_and_bad_budgets_are_refused(tmp_path):
    store = StateStore(0, spill_dir=tmp_path)
    recent = store.frames(conditioning=False)
    out = _output(0)
    out.memory = None
    recent[0] = out
    assert not recent.is_spilled(0) and store.spill_dir is None
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="state_ram_bytes"):
            StateStore(bad)
    missing = StateStore(0, spill_dir=tmp_path / "absent").frames(conditioning=False)
    with pytest.raises(FileNotFoundError, match="state_spill_dir"):
        missing[0] = _output(0)


def test_the_default_budget_is_4_gib_or_half_the_free_memory():
    assert default_state_ram_bytes(64 * 2**30) == DEFAULT_STATE_RAM_BYTES == 4 * 2**30
    assert default_state_ram_bytes(4 * 2**30) == 2 * 2**30
    assert StateStore().ram_budget <= DEFAULT_STATE_RAM_BYTES


# ---------------------------------------------------------------------------- the estimate


def test_the_estimate_splits_state_between_ram_and_disk():
    total = bytes_per_object_frame(1024) * 200 * 100
    assert split_state_bytes(1024, 200, 100, None) == (total, 0)
    ram, disk = split_state_bytes(1024, 200, 100, 8 * 2**30)
    assert ram + disk == total
    assert disk == spillable_bytes_per_object_frame(1024) * 20000 - 8 * 2**30
    assert ram == 8 * 2**30 + 20000 * (256 * 4 + 4)
    # What is already held counts against the budget.
    assert split_state_bytes(256, 1, 10, 10**9, held_ram=10**9)[1] > 0

    run = estimate_run_bytes(
        image_size=1024,
        num_objects=200,
        num_frames=100,
        frame_shape=(1024, 1024),
        state_ram_bytes=8 * 2**30,
    )
    assert (run.state, run.state_spilled) == (ram, disk)
    assert run.total == run.state + run.labels + run.write_buffer + run.frame_work


# ---------------------------------------------------------------------------- the tracker


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(SIZE)


def _stack(num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:height, :width]
    frames = []
    for t in range(num_frames):
        discs = ((rows - height / 2) ** 2 + (cols - width / 4 - t) ** 2 < 64) | (
            (rows - height / 3) ** 2 + (cols - 3 * width / 4 + t) ** 2 < 36
        )
        frames.append(200 + 300 * rng.random((height, width)) + 3000 * discs)
    return np.stack(frames).astype(np.uint16)


def _track(model, frames, state_ram_bytes, spill_dir):
    """Three objects, prompted on frames 2 and 4, tracked both ways; then a correction on a
    tracked frame and a second forward pass, which reads spilled frames back."""
    tracker = Tracker(model, frames, state_ram_bytes=state_ram_bytes, state_spill_dir=spill_dir)
    tracker.set_prompts(2, 1, points=[[16, 24]], labels=[1])
    tracker.set_prompts(2, 2, box=[40, 10, 54, 22])
    tracker.set_prompts(4, 3, points=[[30, 30], [5, 5]], labels=[1, 0])
    results = [
        (f, {k: v.copy() for k, v in out.items()}) for f, out in tracker.propagate(2, "both")
    ]
    spilled = tracker.state_spilled_nbytes
    results.append((-1, tracker.set_prompts(1, 1, points=[[17, 24]], labels=[1])))
    results += list(tracker.propagate(0))
    results.append((-2, tracker.frame_logits(3)))
    return tracker, results, spilled


def test_a_tiny_budget_gives_the_same_logits_as_a_large_one(model, tmp_path):
    frames = _stack(6)
    _, large, large_spilled = _track(model, frames, 2**34, tmp_path)
    assert large_spilled == 0 and os.listdir(tmp_path) == []
    tracker, tiny, tiny_spilled = _track(model, frames, 0, tmp_path)
    assert tiny_spilled > 0 and tracker.state_store.spill_count > 0
    folder = tracker.state_store.spill_dir
    assert os.path.dirname(folder) == str(tmp_path) and os.listdir(folder)
    assert [f for f, _ in tiny] == [f for f, _ in large]
    for (_, a), (_, b) in zip(tiny, large):
        assert a.keys() == b.keys()
        for obj_id in a:
            assert np.array_equal(a[obj_id], b[obj_id])  # equal to the bit
    assert any((logits > 0).any() for _, out in tiny for logits in out.values())
    # With a budget of 0, RAM keeps only pointers, scores and the pending prompt.
    assert tracker.state_store.ram_nbytes == 0
    tracker.close()
    assert not os.path.exists(folder) and tracker.state_spilled_nbytes == 0


def test_removing_objects_gives_their_disk_slots_back(model, tmp_path):
    tracker = Tracker(model, _stack(3), state_ram_bytes=0, state_spill_dir=tmp_path)
    for obj_id in (1, 2):
        tracker.set_prompts(0, obj_id, box=[10 * obj_id, 10, 10 * obj_id + 12, 30])
    list(tracker.propagate(0))
    per_object = tracker._objects[1].spilled_nbytes
    assert per_object == 3 * spillable_bytes_per_object_frame(SIZE)
    assert tracker.state_store.disk_nbytes == 2 * per_object
    tracker.remove_object(1)
    assert tracker.state_store.disk_nbytes == per_object == tracker.state_spilled_nbytes
    tracker.reset()
    assert tracker.state_store.disk_nbytes == 0


def test_the_tracker_check_counts_only_the_budget_as_memory(model, tmp_path, monkeypatch):
    frames = _stack(4)
    per_frame = bytes_per_object_frame(SIZE)
    free = int(2 * per_frame / USABLE_SHARE)  # room for 2 object-frames, 4 are needed
    monkeypatch.setattr(memory_estimate, "available_host_bytes", lambda: free)

    roomy = Tracker(model, frames, state_ram_bytes=2**34, state_spill_dir=tmp_path)
    roomy.set_prompts(0, 1, points=[[16, 24]], labels=[1])
    with pytest.raises(InsufficientMemory) as info:
        roomy.propagate(0)
    assert not isinstance(info.value, InsufficientDisk) and "state_ram_bytes" in str(info.value)

    small = Tracker(model, frames, state_ram_bytes=per_frame, state_spill_dir=tmp_path)
    small.set_prompts(0, 1, points=[[16, 24]], labels=[1])
    counted = check_propagation_fits(small, 4)
    assert counted == per_frame + 4 * (256 * 4 + 4)  # the budget, plus 4 pointers and scores
    assert [f for f, _ in small.propagate(0)] == [0, 1, 2, 3]
    assert small.state_spilled_nbytes == 3 * spillable_bytes_per_object_frame(SIZE)

    monkeypatch.setattr(memory_estimate, "free_disk_bytes", lambda folder=None: 1000)
    with pytest.raises(InsufficientDisk, match="spill") as info:
        check_propagation_fits(small, 4)
    assert str(tmp_path) in str(info.value)


def test_two_hundred_objects_share_each_frame_read(model, tmp_path):
    frames = _stack(2, 64, 64)
    tracker = Tracker(model, frames, state_ram_bytes=2**34, state_spill_dir=tmp_path)
    ids = list(range(1, 201))
    with counting_encoder(model) as calls:
        for obj_id in ids:
            row, col = divmod(obj_id - 1, 15)
            x, y = 2 + 4 * col, 2 + 4 * row
            tracker.set_prompts(0, obj_id, box=[x, y, x + 3, y + 3])
        outputs = dict(tracker.propagate(0))
    assert sorted(outputs) == [0, 1]
    assert sorted(outputs[1]) == ids and outputs[1][200].shape == (64, 64)
    assert calls == [1, 1]  # one image encoding per frame for all 200 objects
    assert tracker.state_nbytes >= 2 * 200 * bytes_per_object_frame(SIZE)
