"""Fill a feature store with every frame's image features, on a dask cluster.

:func:`precompute` runs in three steps:

1. one task opens (or creates) the store for the stack and the model
   (:class:`~napari_sam2.engine.feature_store.FeatureStore`, keyed by the data signature) and
   lists the frames it lacks, with the stack's intensity range, so every later task reads the
   frames the same way without estimating the range again;
2. the missing frames are cut into chunks of consecutive frames, one task each, spread over the
   workers. A task reopens the stack lazily (a TIFF memory map, a zarr array), skips frames
   that are in the store by now, computes the others with the worker's cached network
   (:mod:`.worker`) and writes each one as it is done. Nothing but the chunk's current frame
   and the network is held, so a worker's memory does not grow with the stack's length;
3. the client follows the chunks as they finish (a progress bar) and reports the throughput.

Resuming is what the store gives: frames already in it are skipped, whether an earlier run
finished them or it was interrupted. A worker that dies mid-chunk (killed, out of memory) has its
chunk run again elsewhere by the scheduler; frames it finished are in the store and skipped, a
frame it was writing is not marked done and is computed again, and the store's per-frame lock
means no frame is written twice. A task that raises is retried (:data:`RETRIES`) before the run
fails.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .worker import ModelOptions, cached_model

__all__ = [
    "RETRIES",
    "ChunkResult",
    "FeatureJob",
    "PrecomputeReport",
    "StoreState",
    "compute_chunk",
    "open_store",
    "precompute",
    "split_chunks",
]

#: Times a chunk whose task raised is run again before the run fails.
RETRIES = 2
#: Largest default chunk (frames); small chunks spread the work and make a finer progress bar.
MAX_CHUNK_FRAMES = 16


@dataclass(frozen=True)
class FeatureJob:
    """Everything a worker needs to read a stack and fill its store (picklable).

    ``stack`` and ``store`` are paths the workers can reach (a shared file system on a real
    cluster). ``intensity_range`` None is estimated by the first task and then fixed for the
    others. ``precision`` is what the network computes in (the store holds bfloat16).
    """

    stack: str
    store: str
    model: ModelOptions = field(default_factory=ModelOptions)
    precision: str = "auto"
    axis: int = 0
    channel_axis: int | None = None
    intensity_range: tuple | None = None


@dataclass(frozen=True)
class StoreState:
    """What the first task found: the stack's frames, those missing from the store, and the
    intensity range every task uses."""

    num_frames: int
    missing: list[int]
    intensity_range: tuple


@dataclass(frozen=True)
class ChunkResult:
    """One chunk's work: frames computed and written, frames found in the store already, the
    task's seconds, and which worker process ran it."""

    computed: list[int]
    skipped: list[int]
    seconds: float
    pid: int


@dataclass(frozen=True)
class PrecomputeReport:
    """A finished run. ``frames_per_second`` counts computed frames over ``compute_seconds``,
    the time from the first chunk sent to the last one finished (building the networks on the
    workers included; the first task's store check is ``setup_seconds``)."""

    store: str
    num_frames: int
    computed: int
    skipped: int
    chunks: int
    setup_seconds: float
    compute_seconds: float
    workers: int
    pids: list[int]

    @property
    def frames_per_second(self) -> float:
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def summary(self) -> str:
        rate = f"{self.frames_per_second:.2f} frames/s" if self.computed else "nothing to compute"
        return (
            f"{self.store}: {self.computed} frame(s) computed, {self.skipped} already there, "
            f"{self.num_frames} in all; {self.compute_seconds:.1f} s on {self.workers} "
            f"worker(s) ({len(set(self.pids))} took part): {rate} (store check "
            f"{self.setup_seconds:.1f} s)"
        )


def _tracker(job: FeatureJob):
    """A tracker over the job's stack on this worker's network, with the store open; the RAM
    feature cache is off (each frame is computed once and goes to the store)."""
    from ..engine.io import read_stack
    from ..engine.tracker import Tracker

    return Tracker(
        cached_model(job.model),  # on the task's device (one GPU per worker)
        read_stack(job.stack),
        axis=job.axis,
        channel_axis=job.channel_axis,
        intensity_range=job.intensity_range,
        precision=job.precision,
        feature_cache_bytes=0,
        feature_store=job.store,
    )


def open_store(job: FeatureJob) -> StoreState:
    """Task: open (or create) the job's store and list the frames it lacks."""
    tracker = _tracker(job)
    try:
        return StoreState(
            tracker.num_frames,
            tracker.feature_store.missing(),
            tracker.frames.intensity_range,
        )
    finally:
        tracker.close()


def compute_chunk(job: FeatureJob, frames: Sequence[int]) -> ChunkResult:
    """Task: compute and store ``frames`` (those not in the store already)."""
    start = time.perf_counter()
    tracker = _tracker(job)  # the stack is reopened per chunk: its mapped pages go with it
    computed, skipped = [], []
    try:
        store = tracker.feature_store
        for frame in frames:
            if store.has(frame):
                skipped.append(int(frame))
                continue
            tracker.prepare(frame)
            computed.append(int(frame))
    finally:
        tracker.close()
    return ChunkResult(computed, skipped, time.perf_counter() - start, os.getpid())


def split_chunks(frames: Sequence[int], workers: int, size: int | None = None) -> list[list[int]]:
    """``frames`` cut into runs of consecutive frames: ``size`` each, or by default about four
    chunks per worker, 1 to :data:`MAX_CHUNK_FRAMES` frames each."""
    frames = sorted(int(f) for f in frames)
    if not frames:
        return []
    if size is None:
        size = min(MAX_CHUNK_FRAMES, max(1, math.ceil(len(frames) / (4 * max(1, workers)))))
    if size < 1:
        raise ValueError(f"chunks must hold at least one frame, got {size}")
    chunks: list[list[int]] = []
    for frame in frames:
        if chunks and len(chunks[-1]) < size and chunks[-1][-1] == frame - 1:
            chunks[-1].append(frame)
        else:
            chunks.append([frame])
    return chunks


def precompute(
    job: FeatureJob,
    *,
    client,
    chunk_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PrecomputeReport:
    """Compute every frame of ``job.stack`` that ``job.store`` lacks, on ``client``'s workers.

    Args:
        job: the stack, the store and the model.
        client: a connected :class:`distributed.Client` (see :func:`.cluster.connect`).
        chunk_frames: frames per task (default: see :func:`split_chunks`).
        progress: ``progress(done, total)`` over the missing frames, after each chunk.

    Returns:
        A :class:`PrecomputeReport`.

    Raises:
        FeatureStoreMismatch: the store at ``job.store`` was made for other data or another
            model (raised by the first task, before any frame is computed).
        KeyboardInterrupt: the run was interrupted; the chunks not finished are cancelled, the
            frames written so far stay in the store and a new run skips them.
    """
    from distributed import as_completed

    from .cluster import torch_threads_of

    threads = torch_threads_of(client)
    if threads is not None and job.model.torch_threads is None:
        job = replace(job, model=replace(job.model, torch_threads=threads))
    start = time.perf_counter()
    state = client.submit(open_store, job, pure=False).result()
    setup = time.perf_counter() - start
    job = replace(job, intensity_range=state.intensity_range)
    workers = max(1, len(client.nthreads()))
    chunks = split_chunks(state.missing, workers, chunk_frames)
    total = len(state.missing)
    computed, skipped, pids = 0, state.num_frames - total, []
    begin = time.perf_counter()
    futures = [
        client.submit(compute_chunk, job, chunk, retries=RETRIES, pure=False) for chunk in chunks
    ]
    if progress is not None and total:
        progress(0, total)
    done = 0
    try:
        for future in as_completed(futures):
            result = future.result()
            computed += len(result.computed)
            skipped += len(result.skipped)
            pids.append(result.pid)
            done += len(result.computed) + len(result.skipped)
            if progress is not None:
                progress(done, total)
    except BaseException:
        client.cancel(futures)
        raise
    return PrecomputeReport(
        store=job.store,
        num_frames=state.num_frames,
        computed=computed,
        skipped=skipped,
        chunks=len(chunks),
        setup_seconds=setup,
        compute_seconds=time.perf_counter() - begin,
        workers=workers,
        pids=pids,
    )
