"""What a worker process keeps between tasks: one SAM 2 network, built on its first task.

Tasks run in worker processes (see :mod:`.cluster`); building the network and loading its
checkpoint take seconds, so each process keeps the last one it built and reuses it for every
task with the same model options. Only one is kept, so a worker's memory holds one copy of the
weights whatever the tasks ask for.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

__all__ = [
    "ModelOptions",
    "cached_model",
    "state_ram_share",
    "task_device",
    "tasks_per_host",
    "use_threads",
]

_lock = threading.Lock()  # tasks may share a process on clusters run with several threads
_cached: tuple[ModelOptions, object] | None = None


@dataclass(frozen=True)
class ModelOptions:
    """The network a task runs: preset, checkpoint (None: the official weights, downloaded into
    the user cache on first use), input size (None: the preset's), device ("auto": CUDA, MPS,
    else the CPU) and the torch threads of each task (None: leave the worker's setting)."""

    model: str = "sam2.1_hiera_tiny"
    checkpoint: str | None = None
    image_size: int | None = None
    device: str = "auto"
    torch_threads: int | None = None


def use_threads(threads: int | None) -> None:
    """Set torch's intra-op threads in this process (None: leave them)."""
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def task_device(device: str) -> str:
    """The device a task uses: with several GPUs in one machine and ``device="auto"`` (or
    "cuda"), worker ``i`` of a local cluster takes GPU ``i % count`` so each GPU has its own
    worker; otherwise ``device`` as given."""
    if device.strip().lower() not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return device
    index = _worker_index()
    return device if index is None else f"cuda:{index % count}"


def _worker_index() -> int | None:
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not inside a dask worker
        return None
    try:
        return int(name)
    except (TypeError, ValueError):
        return None


def cached_model(options: ModelOptions):
    """This process's network for ``options``: built on the first call, then reused.

    A call with other options builds the new network and drops the previous one.
    """
    global _cached
    use_threads(options.torch_threads)
    key = ModelOptions(
        options.model, options.checkpoint, options.image_size, task_device(options.device)
    )
    with _lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        _cached = None  # free the old weights before loading the new ones
        from ..model import build_sam2

        checkpoint = "download" if key.checkpoint is None else os.fspath(key.checkpoint)
        model = build_sam2(
            key.model, checkpoint=checkpoint, image_size=key.image_size, device=key.device
        )
        _cached = (key, model)
        return model


def tasks_per_host(client) -> int:
    """The most tasks ``client``'s cluster runs at once on one machine: the worker threads
    (task slots) of its busiest host, at least 1."""
    slots: dict[str, int] = {}
    for info in client.scheduler_info(n_workers=-1)["workers"].values():
        host = info.get("host", "")
        slots[host] = slots.get(host, 0) + int(info.get("nthreads", 1))
    return max([1, *slots.values()])


def state_ram_share(tasks: int, available: int | None = None) -> int:
    """A batch task's tracking-state RAM budget (bytes) when ``tasks`` run at once on this
    machine: half of this machine's available memory (``available``, default: now) split
    between them, capped at the tracker's default
    (:func:`~napari_sam2.engine.memory_estimate.default_state_ram_bytes`). Without it each
    task would take the single-process default and N workers would overcommit the machine;
    state beyond the budget goes to disk."""
    from ..engine.memory_estimate import available_host_bytes, default_state_ram_bytes

    free = available_host_bytes() if available is None else available
    if free is None:
        return default_state_ram_bytes()
    return default_state_ram_bytes(free // max(1, int(tasks)))
