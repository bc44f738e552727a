"""precompute on a real LocalCluster of two worker processes: the store is filled by both
workers, an interrupted run resumes, a worker killed mid-run loses nothing, the CLI reports."""

import functools
import os
import signal
import threading
import time

import pytest
import torch

from napari_sam2 import cli
from napari_sam2.distributed.precompute import FeatureJob, precompute, split_chunks
from napari_sam2.distributed.worker import ModelOptions
from napari_sam2.engine.feature_store import FeatureStore
from napari_sam2.engine.io import read_stack
from napari_sam2.engine.tracker import Tracker
from napari_sam2.model import build_sam2

from .conftest import IMAGE_SIZE, RANGE, model_args, write_stack


def job_for(stack, store, checkpoint):
    return FeatureJob(
        stack=str(stack),
        store=str(store),
        model=ModelOptions("sam2.1_hiera_tiny", str(checkpoint), IMAGE_SIZE, "cpu"),
        precision="float32",
        intensity_range=RANGE,
    )


@functools.cache
def local_model(checkpoint):
    return build_sam2("sam2.1_hiera_tiny", checkpoint, image_size=IMAGE_SIZE)


def local_tracker(stack, store, checkpoint, **options):
    return Tracker(
        local_model(checkpoint),
        read_stack(stack),
        intensity_range=RANGE,
        precision="float32",
        feature_store=store,
        **options,
    )


def assert_every_frame_valid(store_path, tracker):
    store = tracker.feature_store
    assert store.missing() == []
    side = IMAGE_SIZE // 16
    for frame in range(tracker.num_frames):
        s0, s1, top = store.read(frame)
        assert s0.shape == (1, 32, 4 * side, 4 * side) and s1.shape == (1, 64, 2 * side, 2 * side)
        assert top.shape == (1, 256, side, side) and top.dtype == torch.bfloat16
        assert all(torch.isfinite(level.float()).all() for level in (s0, s1, top))


def test_split_chunks_keeps_runs_of_consecutive_frames():
    assert split_chunks([5, 0, 1, 2, 3, 7, 8], workers=1, size=2) == [[0, 1], [2, 3], [5], [7, 8]]
    chunks = split_chunks(range(100), workers=2)  # about four per worker
    assert [len(c) for c in chunks] == [13] * 7 + [9]
    assert sum(chunks, []) == list(range(100))
    assert max(map(len, split_chunks(range(1000), workers=1))) == 16
    assert split_chunks([], workers=2) == []


def test_interrupted_run_resumes_and_both_workers_fill_the_store(tmp_path, client, checkpoint):
    stack = write_stack(tmp_path / "stack.tif", 6)
    store = tmp_path / "features.zarr"
    job = job_for(stack, store, checkpoint)

    class Stop(KeyboardInterrupt):
        pass

    def stop_after_first_chunk(done, total):
        if done:
            raise Stop

    with pytest.raises(Stop):
        precompute(job, client=client, chunk_frames=1, progress=stop_after_first_chunk)
    # a chunk already running when the run stopped still finishes (a cancelled task's thread
    # is not interrupted): wait until no worker runs one
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        client.run(lambda dask_worker: len(dask_worker.active_threads)).values()
    ):
        time.sleep(0.05)
    before = 6 - len(FeatureStore.open(store, FeatureStore.read_signature(store)).missing())
    assert 1 <= before < 6

    seen = []
    report = precompute(job, client=client, chunk_frames=1, progress=lambda d, t: seen.append(d))
    assert report.num_frames == 6
    assert report.computed + report.skipped == 6
    assert report.skipped >= before  # nothing finished before was computed again
    assert seen[-1] == 6 - before  # the bar counts the frames missing at the start
    assert len(set(report.pids)) == 2  # both worker processes computed frames
    assert report.frames_per_second > 0

    # The workers' features are what this process computes, within one bfloat16 step (the
    # store holds bfloat16; the workers' one torch thread sums in another order than ours).
    tracker = local_tracker(stack, store, checkpoint, fill_feature_store=False)
    assert_every_frame_valid(store, tracker)
    plain = local_tracker(stack, None, checkpoint)
    with torch.inference_mode():
        mine = plain.model.encode_image(plain.frames.model_input(3, IMAGE_SIZE))
    stored = tracker.feature_store.read(3)
    for ours, theirs in zip((*mine.high_res, mine.top), stored):
        torch.testing.assert_close(theirs.float(), ours.float(), rtol=2**-7, atol=1e-6)
        assert (ours.to(torch.bfloat16) == theirs).float().mean() > 0.99


def test_a_worker_killed_mid_run_loses_and_repeats_nothing(tmp_path, client, checkpoint):
    stack = write_stack(tmp_path / "stack.tif", 10)
    store = tmp_path / "features.zarr"
    job = job_for(stack, store, checkpoint)
    outcome = {}

    def run():
        try:
            outcome["report"] = precompute(job, client=client, chunk_frames=2)
        except BaseException as err:  # handed to the test's thread
            outcome["error"] = err

    runner = threading.Thread(target=run)
    runner.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and runner.is_alive():
        done = store / "done"
        busy = [w for w, tasks in client.processing().items() if any(
            "compute_chunk" in str(t) for t in tasks)]  # fmt: skip
        if done.is_dir() and any(n.isdigit() for n in os.listdir(done)) and busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)  # mid-chunk: its frames are not all written
            killed = pid
        time.sleep(0.05)
    runner.join(timeout=120)
    assert killed is not None, "the run ended before a worker could be killed"
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report.computed + report.skipped == 10
    tracker = local_tracker(stack, store, checkpoint, fill_feature_store=False)
    assert_every_frame_valid(store, tracker)
    # The workers that finished their chunks never computed a frame twice.
    assert killed not in report.pids
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker


def test_cli_precompute_reports_throughput_and_refuses_another_stack(
    tmp_path, client, checkpoint, capsys
):
    stack = write_stack(tmp_path / "stack.tif", 4)
    store = tmp_path / "features.zarr"
    argv = ["precompute", stack, "--store", store, "--scheduler", client.scheduler.address,
            *model_args(checkpoint)]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    out, err = capsys.readouterr()
    assert "4 frame(s) computed, 0 already there" in out and "frames/s" in out
    assert "precomputing" in err  # the progress bar
    assert FeatureStore.read_signature(store)["num_frames"] == 4

    other = write_stack(tmp_path / "other.tif", 5)
    argv[1] = other
    assert cli.main([str(a) for a in argv]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("cluster: ")  # then one error line, no worker traceback
    last = err.splitlines()[1:]
    assert (
        len(last) == 1 and last[0].startswith("error: ") and "does not fit this image" in last[0]
    )


def test_cli_precompute_checks_before_starting_a_cluster(tmp_path, checkpoint, capsys):
    stack = write_stack(tmp_path / "stack.tif", 2)
    cases = [
        (["precompute", tmp_path / "none.tif", "--store", tmp_path / "f.zarr"], "does not exist"),
        (["precompute", stack, "--store", stack], "is the input STACK"),
        (["precompute", stack, "--store", tmp_path / "f.zarr", "--model", "sam9"], "sam9"),
        (
            [
                "precompute",
                stack,
                "--store",
                tmp_path / "f.zarr",
                "--workers",
                "2",
                "--scheduler",
                "tcp://127.0.0.1:1",
            ],
            "give one of the two",
        ),  # fmt: skip
    ]
    for argv, message in cases:
        assert cli.main([str(a) for a in argv]) == 2
        _, err = capsys.readouterr()
        assert err.startswith("error: ") and message in err, err
