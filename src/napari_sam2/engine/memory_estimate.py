"""Estimate the memory a propagation needs, and refuse one that would not fit.

Two levels:

- :func:`check_propagation_fits`: the per-object state a tracker keeps while propagating, checked
  by :meth:`Tracker.propagate` itself.
- :func:`estimate_run_bytes` and :func:`check_run_fits`: everything a whole headless run
  allocates (per-object state, the output label array, the buffer that writes it, the frame
  being read and prepared), checked by the command line before any model is built or frame
  read, so a run that would not fit is refused at once rather than killed after an hour.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tracker import Tracker

#: Share of the available memory a propagation may plan to use; the rest is headroom for the
#: frames being read, the viewer and everything else running.
USABLE_SHARE = 0.8


class InsufficientMemory(MemoryError):
    """A propagation was refused because its state would not fit in memory."""


def bytes_per_object_frame(image_size: int) -> int:
    """Stored bytes per object and tracked frame: float32 logits at S/4, bfloat16 memory
    (64 channels at S/16), a 256-d float32 pointer and a score."""
    low_res = (image_size // 4) ** 2 * 4
    memory = 64 * (image_size // 16) ** 2 * 2
    return low_res + memory + 256 * 4 + 4


def available_host_bytes() -> int | None:
    """Memory the operating system can still give this process, or None if unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_propagation_bytes(image_size: int, num_objects: int, num_frames: int) -> int:
    """Bytes of new state that tracking ``num_objects`` through ``num_frames`` frames keeps."""
    return bytes_per_object_frame(image_size) * num_objects * num_frames


def check_propagation_fits(
    tracker: Tracker, num_frames: int, available: int | None = None, *, extra_bytes: int = 0
):
    """Raise :class:`InsufficientMemory` when the state a propagation keeps would not fit.

    ``available`` overrides the measured free host memory (for tests). ``extra_bytes``: what the
    caller allocates besides the tracker's state (e.g. the output labels, see
    :func:`estimate_run_bytes`), counted in the same check.
    """
    objects = max(len(tracker.object_ids), 1)
    needed = estimate_propagation_bytes(tracker.model.image_size, objects, num_frames)
    needed += max(int(extra_bytes), 0)
    free = available_host_bytes() if available is None else available
    if free is None or needed <= USABLE_SHARE * free:
        return needed
    gib = 2**30
    raise InsufficientMemory(
        f"tracking {objects} object(s) through {num_frames} frames needs about "
        f"{needed / gib:.1f} GiB of memory, but only {free / gib:.1f} GiB is free. Propagate "
        "fewer frames at a time (max_frames), fewer objects, or use a smaller input size."
    )


@dataclass(frozen=True)
class RunEstimate:
    """Bytes a headless run allocates, by part. ``total`` is their sum.

    Attributes:
        state: per-object state kept while tracking (:func:`estimate_propagation_bytes`).
        labels: the output label array (num_frames x H x W of the label dtype).
        write_buffer: converting and compressing one slice while the labels are written.
        frame_work: one frame in flight: read, mapped to float64 per channel, resized to S x S.
        num_objects, num_frames, frame_shape, image_size: what the figures were computed for.
    """

    state: int
    labels: int
    write_buffer: int
    frame_work: int
    num_objects: int
    num_frames: int
    frame_shape: tuple[int, int]
    image_size: int

    @property
    def total(self) -> int:
        return self.state + self.labels + self.write_buffer + self.frame_work


def estimate_run_bytes(
    *,
    image_size: int,
    num_objects: int,
    num_frames: int,
    frame_shape: tuple[int, int],
    label_itemsize: int = 4,
    channels: int = 1,
) -> RunEstimate:
    """What a run that tracks ``num_objects`` through ``num_frames`` frames of ``frame_shape``
    (H, W) allocates, with labels of ``label_itemsize`` bytes a pixel and ``channels`` per frame.
    """
    for name, value in (
        ("image_size", image_size),
        ("num_objects", num_objects),
        ("num_frames", num_frames),
        ("label_itemsize", label_itemsize),
        ("channels", channels),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    height, width = (int(n) for n in frame_shape)
    pixels = height * width
    slice_bytes = pixels * label_itemsize
    return RunEstimate(
        state=estimate_propagation_bytes(image_size, max(num_objects, 1), num_frames),
        labels=num_frames * slice_bytes,
        # one converted slice, and zlib's output for it (at most about the same size)
        write_buffer=2 * slice_bytes,
        # the raw frame as float64 per channel (value and scaled copy), the model's 3 x S x S
        # float32 input before and after normalisation, and one float32 logit map per object
        frame_work=2 * pixels * max(channels, 1) * 8
        + 2 * 3 * image_size * image_size * 4
        + max(num_objects, 1) * pixels * 4,
        num_objects=num_objects,
        num_frames=num_frames,
        frame_shape=(height, width),
        image_size=image_size,
    )


def check_run_fits(estimate: RunEstimate, available: int | None = None) -> RunEstimate:
    """Raise :class:`InsufficientMemory` at once when ``estimate`` would not fit in memory.

    ``available`` overrides the measured free host memory (for tests). The message gives the
    parts of the estimate and what to change: a smaller input size, fewer frames (crop the stack
    along the tracked axis) or fewer objects.
    """
    free = available_host_bytes() if available is None else available
    if free is None or estimate.total <= USABLE_SHARE * free:
        return estimate
    mib = 2**20
    height, width = estimate.frame_shape
    # The largest number of frames that would fit with everything else unchanged.
    per_frame = (estimate.state + estimate.labels) / max(estimate.num_frames, 1)
    fixed = estimate.write_buffer + estimate.frame_work
    frames_fit = max(0, math.floor((USABLE_SHARE * free - fixed) / per_frame)) if per_frame else 0
    raise InsufficientMemory(
        f"this run needs about {estimate.total / mib:,.0f} MiB but only {free / mib:,.0f} MiB "
        f"of memory is free ({USABLE_SHARE:.0%} of it may be planned): "
        f"{estimate.state / mib:,.0f} MiB of tracking state for {estimate.num_objects} "
        f"object(s) x {estimate.num_frames} frames at input size {estimate.image_size}, "
        f"{estimate.labels / mib:,.0f} MiB of output labels ({estimate.num_frames} x {height} x "
        f"{width}), {(estimate.write_buffer + estimate.frame_work) / mib:,.0f} MiB for reading "
        f"and writing one frame. Use fewer frames (crop the stack along --axis; about "
        f"{frames_fit} would fit), fewer objects, or a smaller --image-size."
    )
