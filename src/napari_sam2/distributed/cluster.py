"""Where precompute and batch run: a local cluster of worker processes, or an existing cluster.

:func:`connect` is the one entry point::

    with connect() as client:                          # LocalCluster on this machine
        ...
    with connect("tcp://10.0.0.5:8786") as client:     # the cluster behind that scheduler
        ...

The local default runs worker *processes* (``processes=True``), each with one dask thread: SAM 2's
image encoder holds the GIL for long stretches between its torch calls, so threads in one
process would not scale, and one model per process keeps each worker's memory to one copy of
the weights plus the frames it works on. The core count is split between the workers' torch
threads (:func:`local_layout`) so that N workers x T threads never exceeds the cores: the count
goes into the workers' ``OMP_NUM_THREADS`` and every task sets it in torch
(:func:`napari_sam2.distributed.worker.use_threads`).

On an existing cluster the workers are as its administrator started them (``dask worker
ADDRESS --nworkers N --nthreads 1`` is the layout that suits these tasks; with dask-cuda, one
worker per GPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from . import require_distributed

__all__ = ["LocalLayout", "connect", "cpu_count", "local_layout", "torch_threads_of"]

#: CPU workers of the default local cluster, at most (more copies of the model cost memory and
#: gain little once each worker has a few cores for its torch threads).
MAX_CPU_WORKERS = 4


#: The dask setting that would give worker processes ``MALLOC_TRIM_THRESHOLD_``; unset.
UNSET_ENVIRON = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def cpu_count() -> int:
    """The cores this process may run on (the affinity mask, as containers and taskset set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class LocalLayout:
    """How the local cluster is cut: ``workers`` processes with ``torch_threads`` each."""

    workers: int
    torch_threads: int
    gpus: int

    def describe(self) -> str:
        kind = f"{self.gpus} GPU(s)" if self.gpus else f"{cpu_count()} CPU core(s)"
        return (
            f"{self.workers} worker process(es) x {self.torch_threads} torch thread(s) on {kind}"
        )


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install means: no GPU here
        return 0


def local_layout(
    workers: int | None = None, *, gpus: int | None = None, threads: int | None = None
) -> LocalLayout:
    """The default local cluster: one worker per GPU when torch sees GPUs, else one per core up
    to :data:`MAX_CPU_WORKERS`; the cores are shared out as torch threads.

    Args:
        workers: the number of worker processes instead of the default (at least 1).
        gpus: the GPUs to plan for (default: what torch sees).
        threads: torch threads per worker instead of the cores shared out (at least 1).
    """
    _check_count("the number of workers", workers)
    _check_count("torch threads per worker", threads)
    gpus = _gpu_count() if gpus is None else int(gpus)
    cores = cpu_count()
    if workers is None:
        workers = gpus if gpus else min(cores, MAX_CPU_WORKERS)
    share = max(1, cores // int(workers)) if threads is None else int(threads)
    return LocalLayout(int(workers), share, gpus)


def _check_count(what: str, value) -> None:
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise ValueError(f"{what} must be a whole number >= 1, got {value!r}")


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    threads: int | None = None,
    quiet: bool = True,
) -> Iterator:
    """A :class:`distributed.Client` on a local cluster of processes, or on ``scheduler``.

    Args:
        scheduler: the address of a running scheduler (``tcp://host:8786``); None starts a
            :class:`distributed.LocalCluster` on this machine, closed again on exit.
        workers: worker processes of the local cluster (default: :func:`local_layout`); not
            allowed with ``scheduler``, whose workers are already running.
        threads: torch threads per local worker (default: the cores shared out).
        quiet: keep the cluster's log lines (worker start and stop) off the terminal.

    Worker processes are started with the ``spawn`` method: a script that calls this must
    guard its entry point with ``if __name__ == "__main__":``.

    Yields:
        The connected client; ``client.napari_sam2_layout`` is the :class:`LocalLayout` of a
        local cluster, None on an existing one.

    Raises:
        napari_sam2.distributed.ClusterUnavailable: dask.distributed is not installed.
        ValueError: ``workers`` with ``scheduler``, or a bad number of workers.
        OSError: the scheduler cannot be reached (the message names the address).
    """
    distributed = require_distributed()
    if scheduler is not None:
        if workers is not None or threads is not None:
            raise ValueError(
                "the number of workers is set for a local cluster only; an existing cluster "
                f"({scheduler}) uses the workers it was started with"
            )
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise OSError(
                f"cannot reach the dask scheduler at {scheduler}: {err}; check the address "
                "(tcp://host:port) and that the scheduler is running"
            ) from err
        client.napari_sam2_layout = None
        try:
            yield client
        finally:
            client.close()
        return

    import dask

    layout = local_layout(workers, threads=threads)
    threads = str(layout.torch_threads)
    # dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive
    # mmap threshold: every large torch temporary is then mmap'ed and unmapped again, which
    # made the image encoder 1.5-2.8x slower here (docs/benchmarks.md). Without it, a worker's
    # memory still stays flat with stack length.
    with dask.config.set({UNSET_ENVIRON: None}):
        cluster = distributed.LocalCluster(
            n_workers=layout.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: several clusters may run side by side
            # the errors that matter come back to the client with the task's exception
            silence_logs=logging.CRITICAL if quiet else logging.WARNING,
            env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        )
    try:
        client = distributed.Client(cluster)
        try:
            client.napari_sam2_layout = layout
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def torch_threads_of(client) -> int | None:
    """The torch threads each task should use on ``client``'s workers: the local layout's
    share of the cores, None on an existing cluster (its workers keep their own setting)."""
    layout = getattr(client, "napari_sam2_layout", None)
    return None if layout is None else layout.torch_threads
