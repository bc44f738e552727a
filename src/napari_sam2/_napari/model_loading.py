"""Model loading as a generator of progress steps, for a background worker.

The download (pooch, sha256-checked) runs in a helper thread so that this generator can keep
yielding ``(description, done_bytes, total_bytes)`` to the main thread, which shows them in
napari's activity panel. A cancel makes the download's progress callback raise, which aborts the
transfer without leaving a partial file under the final name. :func:`model_loading_job` wraps
it in a :class:`~napari_sam2._napari.jobs.Job` that shows those steps as a progress bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from pathlib import Path

from napari.utils import progress

from .jobs import Job

__all__ = ["CHECKPOINT_FILE_CHOICE", "load_model_steps", "model_loading_job"]

CHECKPOINT_FILE_CHOICE = "checkpoint file…"
_POLL_SECONDS = 0.1


class _DownloadCancelled(Exception):
    pass


def _download(
    preset: str, cancelled: Callable[[], bool]
) -> Generator[tuple[str, int, int], None, Path]:
    """Download ``preset``'s checkpoint, yielding ``(description, done, total)`` meanwhile."""
    from ..model.registry import checkpoint_path, fetch_checkpoint

    status = {"done": 0, "total": 0, "stop": False}
    outcome: dict[str, object] = {}

    def on_bytes(done: int, total: int | None) -> None:
        if status["stop"] or cancelled():
            raise _DownloadCancelled
        status["done"], status["total"] = int(done), int(total or 0)

    def fetch() -> None:
        try:
            outcome["path"] = fetch_checkpoint(preset, progress=on_bytes)
        except BaseException as err:  # handed to the generator, raised there
            outcome["error"] = err

    thread = threading.Thread(target=fetch, name=f"napari-sam2 download {preset}", daemon=True)
    thread.start()
    description = f"Downloading {preset} to {checkpoint_path(preset).parent}"
    try:
        while thread.is_alive():
            thread.join(_POLL_SECONDS)
            yield description, status["done"], status["total"]
    finally:
        # When the consumer stops early (cancel, closing napari) the next progress callback
        # raises, which aborts the transfer; wait for the helper thread to end.
        status["stop"] = True
        thread.join(30.0)
    error = outcome.get("error")
    if isinstance(error, _DownloadCancelled):
        raise RuntimeError("The download was cancelled.")
    if error is not None:
        raise error  # type: ignore[misc]
    return outcome["path"]  # type: ignore[return-value]


def load_model_steps(
    preset: str,
    checkpoint: str | None = None,
    *,
    device: str = "auto",
    image_size: int | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Generator[tuple[str, int, int], None, tuple[object, str]]:
    """Load a SAM 2 network, yielding progress steps; returns ``(model, preset name)``.

    Args:
        preset: one of the official preset names; with ``checkpoint`` it is only a fallback
            when the file's preset cannot be recognised.
        checkpoint: a local ``.pt`` file (for offline machines and fine-tunes), or None to use
            the preset's official weights (downloaded once into the user cache).
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        image_size: the network's square input size, None for the preset's (1024).
        cancelled: polled during the download.

    Raises:
        FileNotFoundError, ValueError (CheckpointError): a missing or unusable checkpoint file,
        with a message naming the file and what to do; CheckpointUnavailable: no network.
    """
    from ..model import build_sam2
    from ..model.checkpoint import identify_preset, read_state_dict
    from ..model.registry import resolve_checkpoint

    if checkpoint:
        path = resolve_checkpoint(None, checkpoint)
        yield f"Reading {path.name}", 0, 0
        found = identify_preset(read_state_dict(path))
        name = found or preset
    else:
        name = preset
        path = yield from _download(preset, cancelled)
    yield f"Building {name}", 0, 0
    model = build_sam2(name, checkpoint=path, image_size=image_size, device=device)
    return model, name


def model_loading_job(
    preset: str,
    checkpoint: str | None,
    *,
    device: str,
    image_size: int | None,
    on_done: Callable[[tuple[object, str]], None],
    on_error: Callable[[BaseException], None],
) -> Job:
    """A "load model" job running :func:`load_model_steps` (same arguments), its steps shown
    as a bar in napari's activity panel; ``on_done`` gets ``(model, preset name)``."""
    bar: dict[str, progress] = {}

    def on_yield(step) -> None:
        kind, done, total = step
        if "bar" not in bar:
            bar["bar"] = progress(total=total or 0, desc=kind)
        pbar = bar["bar"]
        if total and pbar.total != total:
            pbar.total = total
        pbar.set_description(kind)
        if done > pbar.n:
            pbar.update(done - pbar.n)

    def on_finish() -> None:
        if "bar" in bar:
            bar["bar"].close()

    job = Job(
        "load model",
        lambda: load_model_steps(
            preset,
            checkpoint,
            device=device,
            image_size=image_size,
            cancelled=lambda: job.cancelled,
        ),
        on_yield=on_yield,
        on_done=on_done,
        on_error=on_error,
        on_finish=on_finish,
    )
    return job
