"""A label volume kept on disk while it is made, so that RAM does not grow with stack length.

``segment`` finishes one (H, W) label frame at a time. Holding the whole (N, H, W) volume in
RAM costs N x H x W x itemsize bytes (200 frames of 1024 x 1024 uint32: 800 MiB) per process,
so a batch worker's memory would grow with the length of its volume. :class:`LabelBuffer`
writes each finished frame into a raw file in a temporary folder beside the output, with plain
file I/O (``os.pwrite``/``os.pread``, no memory map): the bytes go to the page cache, which
the kernel may drop, and never count in the process's resident memory. Frames not yet written
read as 0 (the file is created sparse at its full size).

It is array-like enough for :func:`napari_sam2.engine.io.write_labels`: ``shape``, ``dtype``,
``size``, ``ndim``, ``max()`` (kept as frames arrive, so no pass over the file is needed) and
``buffer[i]`` reading frame ``i``, so the final TIFF (and the partial file of an interrupted
run) is written frame by frame in order, identical to the file written from an in-RAM array.

Use it as a context manager; the folder and its file are removed on exit::

    with LabelBuffer(out, (num_frames, height, width), np.uint16) as labels:
        labels[frame] = finished_frame
        write_labels(out, labels)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DISK_LABELS_BYTES",
    "LabelBuffer",
    "label_volume",
    "labels_on_disk",
    "release_mapped_pages",
]

DISK_LABELS_BYTES = 256 * 2**20
"""Label volumes larger than this (bytes) are kept on disk by the CLI's segment path."""


class LabelBuffer:
    """An (N, H, W) label volume in a raw file beside ``out``; see the module docstring.

    Args:
        out: the output file the labels are for; the temporary folder is made in its folder
            (same file system, and never inside the input's folder unless the output is).
        shape: (N, H, W).
        dtype: the label dtype (uint16 or uint32, :func:`~napari_sam2.engine.io.label_dtype_for`).
    """

    def __init__(self, out: str | os.PathLike[str], shape: tuple[int, int, int], dtype) -> None:
        if len(shape) != 3:
            raise ValueError(f"a label buffer is (N, H, W), got shape {tuple(shape)}")
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.size = int(np.prod(self.shape))
        self._frame_shape = self.shape[1:]
        self._frame_bytes = int(np.prod(self._frame_shape)) * self.dtype.itemsize
        out = Path(out)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.labels-", dir=out.parent))
        self.path = self.folder / "labels.raw"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, self.shape[0] * self._frame_bytes)  # sparse: unwritten = 0
        self._max = 0

    # ------------------------------------------------------------------ array-like

    def __len__(self) -> int:
        return self.shape[0]

    def _offset(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"a label buffer is indexed by one frame number, got {index!r}")
        index = int(index)
        if index < 0:
            index += self.shape[0]
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"frame {index} is out of range for {self.shape[0]} frame(s)")
        return index * self._frame_bytes

    def __setitem__(self, index: int, frame: Any) -> None:
        """Write one (H, W) frame (converted to the buffer's dtype)."""
        offset = self._offset(index)
        data = np.ascontiguousarray(frame, dtype=self.dtype)
        if data.shape != self._frame_shape:
            raise ValueError(f"a frame of this buffer is {self._frame_shape}, got {data.shape}")
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            written += os.pwrite(self._checked_fd(), view[written:], offset + written)
        if data.size:
            self._max = max(self._max, int(data.max()))

    def __getitem__(self, index: int) -> np.ndarray:
        """Frame ``index`` as a new (H, W) array (0 where it was never written)."""
        offset = self._offset(index)
        raw = bytearray(self._frame_bytes)
        view = memoryview(raw)
        done = 0
        while done < len(raw):
            chunk = os.pread(self._checked_fd(), len(raw) - done, offset + done)
            if not chunk:
                break  # past the end: never here, the file has its full size
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        return np.frombuffer(raw, dtype=self.dtype).reshape(self._frame_shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole volume in RAM (for small volumes and tests only)."""
        whole = np.stack([self[i] for i in range(self.shape[0])])
        return whole if dtype is None else whole.astype(dtype)

    def max(self) -> int:
        """The largest label written so far (0 for none)."""
        return self._max

    # ------------------------------------------------------------------ lifetime

    def _checked_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the label buffer {self.path} is closed")
        return self._fd

    def close(self) -> None:
        """Remove the temporary folder and its file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LabelBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # a buffer never closed still leaves no folder behind
        with contextlib.suppress(Exception):
            self.close()


class _InRam:
    """The in-RAM volume with the same context-manager shape as :class:`LabelBuffer`."""

    def __init__(self, shape, dtype) -> None:
        self.array = np.zeros(shape, dtype=dtype)

    def __enter__(self) -> np.ndarray:
        return self.array

    def __exit__(self, *exc_info: object) -> None:
        self.array = None


def label_volume(
    out: str | os.PathLike[str],
    shape: tuple[int, int, int],
    dtype,
    *,
    on_disk: bool | None = None,
    threshold: int | None = None,
):
    """A context manager giving an (N, H, W) zero label volume: a :class:`LabelBuffer` beside
    ``out`` when ``on_disk`` (None: when the volume is larger than ``threshold`` bytes, default
    :data:`DISK_LABELS_BYTES`), else a
    numpy array."""
    if labels_on_disk(shape, dtype, on_disk, threshold=threshold):
        return LabelBuffer(out, shape, dtype)
    return _InRam(shape, dtype)


def labels_on_disk(shape, dtype, on_disk: bool | None = None, *, threshold: int | None = None):
    """Whether :func:`label_volume` keeps a volume of ``shape`` and ``dtype`` on disk."""
    if on_disk is not None:
        return bool(on_disk)
    limit = DISK_LABELS_BYTES if threshold is None else threshold
    return int(np.prod(shape)) * np.dtype(dtype).itemsize > limit


def release_mapped_pages(array: Any) -> bool:
    """Drop the resident pages of a memory-mapped input (``np.memmap``, as
    :func:`~napari_sam2.engine.io.read_stack` opens an uncompressed TIFF) from this process.

    Pages of a read-only file mapping stay mapped once read, so a run through a memory-mapped
    stack would count every frame it has read in its RSS (2 MiB a 1024 x 1024 uint16 frame).
    ``MADV_DONTNEED`` unmaps them; the data stays in the file (and the page cache) and is read
    again if needed. Returns whether anything was released (False for any other array).
    """
    import mmap

    handle = getattr(array, "_mmap", None)
    if handle is None or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    try:
        handle.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed, or not allowed on this mapping
        return False
    return True
