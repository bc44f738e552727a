"""The feature store: round trips, atomic frames under killed and concurrent writers, and the
tracker, API and CLI reading it (results equal those without a store; frames in the store are
not computed again)."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("zarr")

from napari_sam2.engine.feature_store import (  # noqa: E402
    LEVELS,
    FeatureStore,
    FeatureStoreError,
    FeatureStoreMismatch,
    level_shapes,
)
from napari_sam2.engine.tracker import Tracker  # noqa: E402
from tests.engine._video_oracle import synthetic_stack  # noqa: E402
from tests.engine.helpers import random_tiny_model  # noqa: E402
from tests.engine.test_tracker import counting_encoder  # noqa: E402

INPUT = 64  # store-only tests: small levels (32x16x16, 64x8x8, 256x4x4)
SIGNATURE = {"num_frames": 12, "input_size": INPUT, "model": "test", "weights_hash": "ab" * 32}
REPO = Path(__file__).resolve().parents[2]


def levels_of(frame: int, input_size: int = INPUT) -> tuple[torch.Tensor, ...]:
    """Deterministic float32 levels (1, C, H, W) for ``frame``."""
    generator = torch.Generator().manual_seed(1000 + frame)
    return tuple(
        torch.randn((1, *shape), generator=generator)
        for shape in level_shapes(input_size).values()
    )


def assert_frame_is(store: FeatureStore, frame: int) -> None:
    read = store.read(frame)
    assert read is not None, f"frame {frame} is missing"
    for got, made in zip(read, levels_of(frame)):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, made.to(torch.bfloat16)), f"frame {frame} differs"


# ---------------------------------------------------------------------- the store alone


def test_round_trip_marks_and_attributes(tmp_path):
    import zarr

    store = FeatureStore.open(tmp_path / "f.zarr", SIGNATURE)
    assert store.missing() == list(range(12)) and store.read(3) is None
    assert store.write(3, levels_of(3)) is True
    assert store.write(3, levels_of(4)) is False  # already there: never written twice
    assert_frame_is(store, 3)
    assert store.has(3) and not store.has(4)
    assert store.missing([2, 3, 4]) == [2, 4] and store.count() == 1
    assert [t.shape for t in store.read(3)] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 256, 4, 4)]
    assert store.frame_nbytes == 2 * (32 * 16 * 16 + 64 * 8 * 8 + 256 * 4 * 4)

    group = zarr.open_group(str(store.path), mode="r")
    assert group.attrs["dtype"] == "bfloat16 as uint16 bits"
    assert group.attrs["signature"]["weights_hash"] == "ab" * 32
    for name in LEVELS:
        assert group[name].dtype == np.uint16
        assert group[name].chunks == (1, *level_shapes(INPUT)[name])
    # reopening finds the frame; a pickled store reopens by path
    again = FeatureStore.open(store.path, SIGNATURE, create=False)
    assert_frame_is(again, 3)
    assert_frame_is(pickle.loads(pickle.dumps(store)), 3)


def test_bad_frames_and_levels_are_refused(tmp_path):
    store = FeatureStore.open(tmp_path / "f.zarr", SIGNATURE)
    with pytest.raises(IndexError, match="frames 0 to 11"):
        store.has(12)
    with pytest.raises(ValueError, match="level s1 has shape"):
        store.write(0, (levels_of(0)[0], torch.zeros(1, 64, 9, 9), levels_of(0)[2]))
    with pytest.raises(ValueError, match="3 levels"):
        store.write(0, levels_of(0)[:2])
    assert store.missing() == list(range(12))


def test_paths_that_are_not_stores(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore.open(tmp_path / "absent.zarr", SIGNATURE, create=False)
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(FeatureStoreError, match="not a napari-sam2 feature store"):
        FeatureStore.open(tmp_path / "file.zarr", SIGNATURE)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(FeatureStoreError, match="choose a new or empty folder"):
        FeatureStore.open(tmp_path / "full", SIGNATURE)
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(FeatureStoreError, match="zarr group but not"):
        FeatureStore.open(tmp_path / "other.zarr", SIGNATURE)
    (tmp_path / "empty").mkdir()
    assert FeatureStore.open(tmp_path / "empty", SIGNATURE).missing() == list(range(12))
    assert FeatureStore.read_signature(tmp_path / "empty")["model"] == "test"
    assert FeatureStore.read_signature(tmp_path / "full") is None
    bad = {**SIGNATURE, "weights_hash": "cd" * 32}
    with pytest.raises(FeatureStoreMismatch, match="model weights abababababab") as info:
        FeatureStore.open(tmp_path / "empty", bad)
    assert info.value.fields == ["weights_hash"]


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *args]


_CHILD_HEADER = f"""
import sys, os, torch
sys.path.insert(0, {str(REPO)!r})
from tests.engine.test_feature_store import SIGNATURE, levels_of
from napari_sam2.engine.feature_store import FeatureStore
"""


def test_a_writer_killed_between_chunks_and_mark_leaves_the_frame_missing(tmp_path):
    path = tmp_path / "f.zarr"
    store = FeatureStore.open(path, SIGNATURE)
    store.write(0, levels_of(0))
    # The child writes frame 5's chunks with other values, then dies before its mark, holding
    # the frame's lock: as a writer killed mid-frame.
    code = (
        _CHILD_HEADER
        + """
store = FeatureStore.open(sys.argv[1], SIGNATURE)
FeatureStore._mark_done = lambda self, frame: os._exit(3)
store.write(5, levels_of(7))
"""
    )
    done = subprocess.run(_python(code, str(path)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert any((path / "s0").rglob("*")), "the child wrote no chunk"
    reopened = FeatureStore.open(path, SIGNATURE)
    assert not reopened.has(5) and reopened.read(5) is None
    assert reopened.missing() == list(range(1, 12))
    # a chunk file half written when the writer died (zarr writes chunks to a temporary name)
    chunk = next(  # zarr 3: s0/c/5/0/0/0, zarr 2: s0/5.0.0.0
        p for p in (path / "s0").rglob("*") if p.is_file() and "5" in (p.name[:1], p.parts[-4])
    )
    leftover = chunk.with_name(chunk.name + ".0123abcd.partial")
    leftover.write_bytes(b"half")
    assert reopened.write(5, levels_of(5)) is True  # the dead writer's lock is free
    assert not leftover.exists()
    assert_frame_is(reopened, 5)
    assert_frame_is(reopened, 0)


def test_sigkill_at_any_moment_leaves_no_corrupt_frame(tmp_path):
    path = tmp_path / "f.zarr"
    FeatureStore.open(path, SIGNATURE)
    code = (
        _CHILD_HEADER
        + """
store = FeatureStore.open(sys.argv[1], SIGNATURE)
while True:
    for frame in range(12):
        store.write(frame, levels_of(frame))
"""
    )
    child = subprocess.Popen(_python(code, str(path)), stderr=subprocess.PIPE)
    store = FeatureStore.open(path, SIGNATURE)
    try:
        deadline = time.monotonic() + 60
        while len(store.missing()) > 8 and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    written = [f for f in range(12) if store.has(f)]
    assert written, child.stderr.read().decode()
    for frame in written:
        assert_frame_is(store, frame)
    for frame in store.missing():
        store.write(frame, levels_of(frame))
    for frame in range(12):
        assert_frame_is(store, frame)


def test_two_processes_fill_one_store_at_once(tmp_path):
    path = tmp_path / "new" / "f.zarr"  # both create it: one wins, the other opens it
    code = (
        _CHILD_HEADER
        + """
frames = list(range(12))
if sys.argv[2] == "backward":
    frames.reverse()
store = FeatureStore.open(sys.argv[1], SIGNATURE)
print(sum(store.write(frame, levels_of(frame)) for frame in frames))
"""
    )
    children = [
        subprocess.Popen(_python(code, str(path), order), stdout=subprocess.PIPE, text=True)
        for order in ("forward", "backward")
    ]
    written = [int(child.communicate(timeout=120)[0].strip()) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert sum(written) == 12  # each frame written once, by one of them
    store = FeatureStore.open(path, SIGNATURE, create=False)
    assert store.missing() == []
    for frame in range(12):
        assert_frame_is(store, frame)
    assert not [p for p in path.parent.iterdir() if p.name != "f.zarr"]  # no staging left


# ---------------------------------------------------------------------- the tracker

SIZE = 128
CLICK = np.array([[38.0, 48.0]])  # (x, y) on the disc of synthetic_stack's first frame


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(SIZE)


def small_disc_stack(num_frames: int = 3) -> np.ndarray:
    """(T, 96, 128) uint16: a bright disc drifting right over textured noise."""
    return synthetic_stack(num_frames)


def click_and_propagate(model, frames, precision="float32", **options) -> np.ndarray:
    tracker = Tracker(model, frames, precision=precision, **options)
    results = {0: tracker.set_prompts(0, 1, points=CLICK, labels=[1])[1]}
    results.update({frame: out[1] for frame, out in tracker.propagate(0)})
    return np.stack([results[f] for f in sorted(results)])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum()))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_results_with_the_store_equal_results_without(tmp_path, model, precision):
    frames = small_disc_stack()
    plain = click_and_propagate(model, frames, precision)
    path = tmp_path / "f.zarr"
    with counting_encoder(model) as filling:
        first = click_and_propagate(model, frames, precision, feature_store=path)
    with counting_encoder(model) as reading:
        second = click_and_propagate(model, frames, precision, feature_store=path)
    assert len(filling) == 3 and reading == []  # the second run computed nothing
    # the store gives the features it holds whether it was empty or full: the same to the bit
    np.testing.assert_array_equal(first, second)
    # against no store: within bf16 rounding of the features
    assert 0.05 < (plain[0] > 0).mean() < 0.6  # the clicked frame's mask: neither empty nor full
    assert mask_iou(plain[0], second[0]) > 0.98
    spread = np.abs(plain).max()
    assert np.abs(plain - second).max() < 0.02 * spread
    assert np.abs(plain - second).mean() < 0.002 * spread


def test_resume_computes_only_the_missing_frames(tmp_path, model):
    path = tmp_path / "f.zarr"
    frames = small_disc_stack(5)
    tracker = Tracker(model, frames, feature_store=path)
    for frame in (0, 3):
        tracker.prepare(frame)
    assert tracker.feature_store.missing() == [1, 2, 4]
    with counting_encoder(model) as calls:
        click_and_propagate(model, frames, feature_store=path)
    assert len(calls) == 3
    assert Tracker(model, frames, feature_store=path).feature_store.missing() == []


def test_without_filling_the_store_is_only_read(tmp_path, model):
    frames = small_disc_stack()
    path = tmp_path / "f.zarr"
    with pytest.raises(FileNotFoundError):
        Tracker(model, frames, feature_store=path, fill_feature_store=False)
    Tracker(model, frames, feature_store=path).prepare(2)
    tracker = Tracker(model, frames, feature_store=path, fill_feature_store=False)
    with counting_encoder(model) as calls:
        tracker.prepare(2)  # from the store
        tracker.prepare(1)  # computed, not written
    assert len(calls) == 1
    assert tracker.feature_store.missing() == [0, 1]


def test_the_ram_cache_stays_in_front_of_the_store(tmp_path, model):
    tracker = Tracker(model, small_disc_stack(), feature_store=tmp_path / "f.zarr")
    tracker.prepare(1)
    reads = []
    real = tracker.feature_store.read
    tracker.feature_store.read = lambda frame: reads.append(frame) or real(frame)
    tracker.prepare(1)
    tracker.set_prompts(1, 1, points=CLICK, labels=[1])
    assert reads == []
    tracker.features.clear()
    tracker.prepare(1)
    assert reads == [1]
    assert tracker.features.get(1)[0].dtype == torch.float32


def test_a_store_for_other_data_is_refused_by_the_tracker(tmp_path, model):
    path = tmp_path / "f.zarr"
    store = Tracker(model, small_disc_stack(), feature_store=path).feature_store
    with pytest.raises(FeatureStoreMismatch, match="data of shape"):
        Tracker(model, small_disc_stack(4), feature_store=path)
    with pytest.raises(FeatureStoreMismatch, match="intensity range"):
        Tracker(model, small_disc_stack(), intensity_range=(0, 10), feature_store=store)
    assert Tracker(model, small_disc_stack(), feature_store=store).feature_store is store


def test_store_trouble_warns_and_the_work_goes_on(tmp_path, model):
    frames = small_disc_stack()
    tracker = Tracker(model, frames, feature_store=tmp_path / "f.zarr")
    tracker.prepare(0)
    chunk = next(
        p
        for p in (tracker.feature_store.path / "top").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(b"damaged")
    fresh = Tracker(model, frames, feature_store=tracker.feature_store)
    with pytest.warns(RuntimeWarning, match="could not read frame 0"):
        fresh.prepare(0)

    def full_disk(frame, levels):
        raise OSError(28, "No space left on device")

    fresh.feature_store.write = full_disk
    with pytest.warns(RuntimeWarning, match="not filling it any more"):
        fresh.prepare(1)
    assert fresh.fill_feature_store is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.prepare(2)  # no second warning


# ---------------------------------------------------------------------- API and CLI


def test_segment_with_a_feature_store(tmp_path, model):
    from napari_sam2.api import segment

    frames = small_disc_stack()
    points = [[0, 48, 38]]
    path = tmp_path / "f.zarr"
    options = {"points": points, "model": model, "device": "cpu", "precision": "float32"}
    plain = segment(frames, **options)
    with counting_encoder(model) as calls:
        filled = segment(frames, **options, feature_store=path)
        again = segment(frames, **options, feature_store=path)
    assert len(calls) == 3
    np.testing.assert_array_equal(filled, again)
    assert mask_iou(plain, again) > 0.98 and again.any()


def test_cli_store_option_and_mismatch_error(tmp_path, model, monkeypatch, capsys):
    import tifffile

    from napari_sam2 import cli
    from napari_sam2.engine.prompt_files import Prompt, write_points_csv

    monkeypatch.setattr(cli, "_build_model", lambda *args: model)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, small_disc_stack())
    points = write_points_csv(tmp_path / "points.csv", [Prompt(0, 1, [[38, 48]], [1])])
    store = tmp_path / "features.zarr"
    argv = ["segment", stack, "--points", points, "--precision", "float32", "-q", "--store", store]
    assert cli.main([str(a) for a in [*argv, "--out", tmp_path / "a.tif"]]) == 0
    assert FeatureStore.open(store, FeatureStore.read_signature(store)).missing() == []
    with counting_encoder(model) as calls:
        assert cli.main([str(a) for a in [*argv, "--out", tmp_path / "b.tif"]]) == 0
    assert calls == []
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif")
    )
    capsys.readouterr()
    status = cli.main([str(a) for a in [*argv, "--out", tmp_path / "c.tif", "--range", 0, 9]])
    out, err = capsys.readouterr()
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the feature store")
    assert "intensity range" in lines[0] and "Traceback" not in err
    # segment-all takes --store too
    every = [
        "segment-all",
        stack,
        "--out",
        tmp_path / "d.tif",
        "-q",
        "--store",
        store,
        "--precision",
        "float32",
        "--frame",
        0,
        "--points-per-side",
        4,
        "--pred-iou-thresh",
        0,
        "--stability-score-thresh",
        0,
    ]
    with counting_encoder(model) as calls:
        status = cli.main([str(a) for a in every])
    assert status == 0, capsys.readouterr().err
    assert len(calls) <= 1  # propagation read the store (the generator encodes its key frame)


def test_store_is_not_an_input_of_the_cli(tmp_path, capsys):
    from napari_sam2 import cli

    stack = tmp_path / "stack.tif"
    import tifffile

    tifffile.imwrite(stack, small_disc_stack())
    status = cli.main(
        [
            "segment",
            str(stack),
            "--out",
            str(tmp_path / "o.tif"),
            "--points",
            str(stack),
            "--store",
            str(stack),
        ]
    )
    assert status == 2
    assert "give the store its own folder" in capsys.readouterr().err


def test_zarr_missing_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_zarr(name, *args, **kwargs):
        if name == "zarr" or name.startswith("zarr."):
            raise ImportError("No module named 'zarr'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zarr)
    with pytest.raises(ImportError, match=r"pip install 'napari-sam2\[cluster\]'"):
        FeatureStore.open(tmp_path / "f.zarr", SIGNATURE)
