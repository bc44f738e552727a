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
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tracker import Tracker

#: Share of the available memory a propagation may plan to use; the rest is headroom for the
#: frames being read, the viewer and everything else running.
USABLE_SHARE = 0.8


#: The state store's RAM budget when none is given: at most this much, and at most
#: :data:`DEFAULT_STATE_RAM_SHARE` of the memory available when the tracker is made.
DEFAULT_STATE_RAM_BYTES = 4 * 2**30
DEFAULT_STATE_RAM_SHARE = 0.5

#: Bytes per object and frame that always stay in RAM, spilled or not: the float32 pointer
#: (256) and score.
RESIDENT_BYTES_PER_OBJECT_FRAME = 256 * 4 + 4


class InsufficientMemory(MemoryError):
    """A propagation was refused because its state would not fit in memory."""


class InsufficientDisk(InsufficientMemory):
    """A propagation was refused because the state it spills would not fit on disk."""


def bytes_per_object_frame(image_size: int) -> int:
    """Stored bytes per object and tracked frame: float32 logits at S/4, bfloat16 memory
    (64 channels at S/16), a 256-d float32 pointer and a score."""
    low_res = (image_size // 4) ** 2 * 4
    memory = 64 * (image_size // 16) ** 2 * 2
    return low_res + memory + 256 * 4 + 4


def spillable_bytes_per_object_frame(image_size: int) -> int:
    """The part of :func:`bytes_per_object_frame` that may go to disk: logits and memory."""
    return bytes_per_object_frame(image_size) - RESIDENT_BYTES_PER_OBJECT_FRAME


def default_state_ram_bytes(available: int | None = None) -> int:
    """The default RAM budget of the tracking state: 4 GiB, or half of ``available`` (default:
    the memory available now) when that is less. 4 GiB holds 200 objects x 27 frames at input
    size 1024, or 50 objects x 430 frames at 512, before anything goes to disk."""
    free = available_host_bytes() if available is None else available
    if free is None:
        return DEFAULT_STATE_RAM_BYTES
    return max(0, min(DEFAULT_STATE_RAM_BYTES, int(DEFAULT_STATE_RAM_SHARE * free)))


def split_state_bytes(
    image_size: int,
    num_objects: int,
    num_frames: int,
    ram_budget: int | None,
    *,
    held_ram: int = 0,
) -> tuple[int, int]:
    """(RAM, disk) bytes that tracking ``num_objects`` through ``num_frames`` more frames adds,
    with ``held_ram`` spillable bytes already in RAM under a budget of ``ram_budget`` (None:
    no budget, everything in RAM). Pointers and scores always count as RAM."""
    total = estimate_propagation_bytes(image_size, num_objects, num_frames)
    if ram_budget is None:
        return total, 0
    spillable = spillable_bytes_per_object_frame(image_size) * num_objects * num_frames
    room = max(int(ram_budget) - int(held_ram), 0)
    to_disk = max(spillable - room, 0)
    return total - to_disk, to_disk


def free_disk_bytes(folder: str | os.PathLike | None = None) -> int | None:
    """Free bytes on the file system of ``folder`` (default: the temporary directory)."""
    try:
        return shutil.disk_usage(folder or tempfile.gettempdir()).free
    except OSError:
        return None


def _check_disk(to_disk: int, folder, what: str) -> None:
    if to_disk <= 0:
        return
    free = free_disk_bytes(folder)
    if free is None or to_disk <= USABLE_SHARE * free:
        return
    gib = 2**30
    raise InsufficientDisk(
        f"{what} spills about {to_disk / gib:.1f} GiB of tracking state to disk in "
        f"{folder or tempfile.gettempdir()}, but only {free / gib:.1f} GiB is free there. Give a "
        "larger state RAM budget (state_ram_bytes), another spill folder (state_spill_dir or "
        "TMPDIR), fewer frames or objects, or a smaller input size."
    )


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
    :func:`estimate_run_bytes`), counted in the same check. With a state store (a real
    :class:`Tracker`), only what stays within its RAM budget counts as memory; the rest is
    checked against the free space of its spill folder (:class:`InsufficientDisk`). Returns the
    bytes of memory counted.
    """
    objects = max(len(tracker.object_ids), 1)
    store = getattr(tracker, "state_store", None)
    needed, to_disk = split_state_bytes(
        tracker.model.image_size,
        objects,
        num_frames,
        None if store is None else store.ram_budget,
        held_ram=0 if store is None else store.ram_nbytes,
    )
    needed += max(int(extra_bytes), 0)
    free = available_host_bytes() if available is None else available
    if free is None or needed <= USABLE_SHARE * free:
        if store is not None:
            _check_disk(
                to_disk,
                store.spill_parent,
                f"tracking {objects} object(s) through {num_frames} frames",
            )
        return needed
    gib = 2**30
    raise InsufficientMemory(
        f"tracking {objects} object(s) through {num_frames} frames needs about "
        f"{needed / gib:.1f} GiB of memory, but only {free / gib:.1f} GiB is free. Propagate "
        "fewer frames at a time (max_frames), fewer objects, use a smaller input size, or a "
        "smaller state RAM budget (state_ram_bytes) so that more goes to disk."
    )


@dataclass(frozen=True)
class RunEstimate:
    """Bytes a headless run allocates, by part. ``total`` is their sum.

    Attributes:
        state: per-object state kept in RAM while tracking (:func:`estimate_propagation_bytes`,
            up to the state RAM budget).
        labels: the output label array (num_frames x H x W of the label dtype).
        write_buffer: converting and compressing one slice while the labels are written.
        frame_work: one frame in flight: read, mapped to float64 per channel, resized to S x S.
        num_objects, num_frames, frame_shape, image_size: what the figures were computed for.
        state_spilled: per-object state beyond the RAM budget, written to disk (not in
            ``total``, which counts memory).
    """

    state: int
    labels: int
    write_buffer: int
    frame_work: int
    num_objects: int
    num_frames: int
    frame_shape: tuple[int, int]
    image_size: int
    state_spilled: int = 0

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
    state_ram_bytes: int | None = None,
) -> RunEstimate:
    """What a run that tracks ``num_objects`` through ``num_frames`` frames of ``frame_shape``
    (H, W) allocates, with labels of ``label_itemsize`` bytes a pixel and ``channels`` per frame.
    ``state_ram_bytes``: the tracker's state RAM budget (None: the tracker's default,
    :func:`default_state_ram_bytes`); state beyond it is counted as ``state_spilled``.
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
    if state_ram_bytes is None:
        state_ram_bytes = default_state_ram_bytes()
    state, spilled = split_state_bytes(
        image_size, max(num_objects, 1), num_frames, state_ram_bytes
    )
    return RunEstimate(
        state=state,
        state_spilled=spilled,
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
        _check_disk(
            estimate.state_spilled,
            None,
            f"tracking {estimate.num_objects} object(s) x {estimate.num_frames} frames",
        )
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
