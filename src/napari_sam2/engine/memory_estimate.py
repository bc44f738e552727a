"""Estimate the memory a propagation needs, and refuse one that would not fit."""

from __future__ import annotations

import os
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


def check_propagation_fits(tracker: Tracker, num_frames: int, available: int | None = None):
    """Raise :class:`InsufficientMemory` when the state a propagation keeps would not fit.

    ``available`` overrides the measured free host memory (for tests).
    """
    objects = max(len(tracker.object_ids), 1)
    needed = estimate_propagation_bytes(tracker.model.image_size, objects, num_frames)
    free = available_host_bytes() if available is None else available
    if free is None or needed <= USABLE_SHARE * free:
        return needed
    gib = 2**30
    raise InsufficientMemory(
        f"tracking {objects} object(s) through {num_frames} frames needs about "
        f"{needed / gib:.1f} GiB of memory, but only {free / gib:.1f} GiB is free. Propagate "
        "fewer frames at a time (max_frames), fewer objects, or use a smaller input size."
    )
