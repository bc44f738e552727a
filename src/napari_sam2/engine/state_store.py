"""Per-object tracking state held within a RAM budget, the rest spilled to a temporary file.

Tracking N objects through F frames keeps N x F frame outputs (:class:`FrameOutput`): at input
size 1024 about 0.75 MiB each, so 200 objects over 100 frames hold 15 GiB. SAM 2 may read any of
them again (re-propagation, corrections, the result of a frame), so none is dropped. Instead a
:class:`StateStore` keeps the outputs in RAM up to ``ram_bytes`` and writes the oldest ones'
large tensors (the low-resolution logits and the memory features) to a file in a temporary
folder; reading such an output back gives the same bits.

Which outputs leave RAM: tracked ("recent") outputs first, oldest inserted first, so the frames
a propagation reads next (the 6 spatial memories and 15 pointers just behind it) stay in RAM;
conditioning outputs, which every frame reads, leave only once no tracked output is left in RAM.
An output's pointer and score (1 KiB) always stay in RAM.

The disk side is one plain file per record size, written and read at slot offsets. Not a numpy
memmap on purpose: the pages of a mapped file count toward the process's resident set while
they are cached, which would defeat the budget; file writes go to the page cache, which the
kernel can drop. The folder is a :class:`tempfile.TemporaryDirectory` made on the first spill,
removed by :meth:`StateStore.close` or, at the latest, when the store is garbage collected or
the interpreter exits. Beware a temporary folder on a RAM disk (tmpfs): give ``spill_dir``.

Each object's conditioning and tracked outputs are a :class:`FrameMap`, a dict of frame index to
:class:`FrameOutput` in insertion order, so the tracker code reads them like plain dicts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

import torch

from .memory_estimate import default_state_ram_bytes
from .objects import FrameOutput

#: Spilled bytes after which the C heap's free pages go back to the system (see _trim_heap).
TRIM_EVERY_BYTES = 64 * 2**20


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _load_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system.

    Spilled outputs are freed, but glibc keeps the freed heap pages (outputs of 256 KiB and
    512 KiB are above its initial mmap threshold, which it then raises, so they live on the
    heap), and the holes are not reused well by the next frames' aligned allocations: measured,
    200 objects x 20 frames at 1024 with a 1 GiB budget peaked at 1.9 GiB above the start
    without this, 1.1 GiB with it. A no-op off glibc.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True)
class _Spilled:
    """Where a spilled output's logits and memory lie, with what stays in RAM."""

    size: int  # record bytes: logits then memory
    slot: int
    low_res_shape: tuple[int, ...]
    memory_shape: tuple[int, ...]
    memory_dtype: torch.dtype
    device: torch.device
    pointer: torch.Tensor
    score: torch.Tensor

    @property
    def ram_nbytes(self) -> int:
        return _tensor_bytes(self.pointer) + _tensor_bytes(self.score)


class _SpillFiles:
    """Fixed-size records in files of a temporary folder, made on first use.

    Separate from :class:`StateStore` so that the store's finalizer can hold it without holding
    the store.
    """

    def __init__(self, parent: str | os.PathLike | None) -> None:
        self.parent = None if parent is None else os.fspath(parent)
        self.folder: tempfile.TemporaryDirectory | None = None
        # record size -> [file, next unused slot, freed slots]
        self.files: dict[int, list] = {}
        self.lock = threading.Lock()

    @property
    def path(self) -> str | None:
        return None if self.folder is None else self.folder.name

    def _file(self, size: int) -> list:
        entry = self.files.get(size)
        if entry is None:
            if self.folder is None:
                if self.parent is not None and not os.path.isdir(self.parent):
                    raise FileNotFoundError(
                        f"the spill folder {self.parent} for tracking state does not exist: "
                        "create it or give another state_spill_dir"
                    )
                self.folder = tempfile.TemporaryDirectory(
                    prefix="napari-sam2-state-", dir=self.parent
                )
            path = os.path.join(self.folder.name, f"records-{size}.bin")
            entry = self.files[size] = [open(path, "w+b", buffering=0), 0, []]  # noqa: SIM115
        return entry

    def write(self, size: int, chunks: list[torch.Tensor]) -> int:
        with self.lock:
            entry = self._file(size)
            if entry[2]:
                slot = entry[2].pop()
            else:
                slot, entry[1] = entry[1], entry[1] + 1
            handle = entry[0]
            handle.seek(slot * size)
            for chunk in chunks:
                handle.write(chunk.contiguous().view(torch.uint8).numpy())
        return slot

    def read(self, size: int, slot: int) -> bytearray:
        buffer = bytearray(size)
        with self.lock:
            handle = self.files[size][0]
            handle.seek(slot * size)
            got = handle.readinto(buffer)
        if got != size:
            raise OSError(
                f"the tracking state file in {self.path} is short ({got} of {size} bytes at "
                f"slot {slot}); was the temporary folder removed while tracking?"
            )
        return buffer

    def free(self, size: int, slot: int) -> None:
        with self.lock:
            if size in self.files:
                self.files[size][2].append(slot)

    def close(self) -> None:
        """Close the files and remove the folder (a later spill makes a new one)."""
        with self.lock:
            for handle, _, _ in self.files.values():
                handle.close()
            self.files.clear()
            if self.folder is not None:
                self.folder.cleanup()
                self.folder = None


class StateStore:
    """RAM budget and disk spill shared by every object of one tracker.

    ``ram_bytes``: the budget for the spillable part of the stored outputs (logits and memory);
    None takes :func:`~napari_sam2.engine.memory_estimate.default_state_ram_bytes` (4 GiB, or
    half the memory available when that is less). ``spill_dir``: where the temporary folder is
    made (default: the system's temporary directory, ``TMPDIR``).
    """

    def __init__(
        self, ram_bytes: int | None = None, *, spill_dir: str | os.PathLike | None = None
    ) -> None:
        if ram_bytes is None:
            ram_bytes = default_state_ram_bytes()
        if isinstance(ram_bytes, bool) or not isinstance(ram_bytes, int) or ram_bytes < 0:
            raise ValueError(
                f"state_ram_bytes must be a non-negative integer of bytes, got {ram_bytes!r}"
            )
        self.ram_budget = ram_bytes
        self._files = _SpillFiles(spill_dir)
        self._finalizer = weakref.finalize(self, self._files.close)
        # RAM-held outputs in insertion order, tracked ones and conditioning ones apart:
        # (map id, frame) -> map.
        self._resident: dict[bool, OrderedDict] = {False: OrderedDict(), True: OrderedDict()}
        #: Bytes of logits and memory held in RAM (what the budget bounds).
        self.ram_nbytes = 0
        #: Bytes of logits and memory written to disk.
        self.disk_nbytes = 0
        self.spill_count = 0
        self._spilled_since_trim = 0

    @property
    def spill_dir(self) -> str | None:
        """The temporary folder in use, or None while nothing was spilled."""
        return self._files.path

    @property
    def spill_parent(self) -> str:
        """The folder the temporary folder is (or will be) made in."""
        return self._files.parent or tempfile.gettempdir()

    def frames(self, *, conditioning: bool) -> FrameMap:
        """A new, empty map of frame -> output whose entries this store keeps."""
        return FrameMap(self, conditioning)

    def close(self) -> None:
        """Remove the temporary folder. Maps that still hold spilled outputs must be cleared
        first (the tracker does so); the store stays usable."""
        self._files.close()

    # ---------------------------------------------------------------- bookkeeping
    @staticmethod
    def spillable(out: FrameOutput) -> bool:
        return out.memory is not None

    @staticmethod
    def spillable_nbytes(out: FrameOutput) -> int:
        return _tensor_bytes(out.low_res) + _tensor_bytes(out.memory)

    def _admit(self, fmap: FrameMap, frame: int, out: FrameOutput) -> None:
        if self.spillable(out):
            self._resident[fmap.conditioning][(id(fmap), frame)] = fmap
            self.ram_nbytes += self.spillable_nbytes(out)
            self._enforce()

    def _forget_resident(self, fmap: FrameMap, frame: int, out: FrameOutput) -> None:
        if self._resident[fmap.conditioning].pop((id(fmap), frame), None) is not None:
            self.ram_nbytes -= self.spillable_nbytes(out)

    def _enforce(self) -> None:
        """Spill the oldest outputs, tracked ones first, until RAM is within the budget."""
        while self.ram_nbytes > self.ram_budget:
            queue = self._resident[False] or self._resident[True]
            if not queue:
                return
            (_, frame), fmap = queue.popitem(last=False)
            out = fmap._entries[frame]
            fmap._entries[frame] = self._spill(out)
            freed = self.spillable_nbytes(out)
            self.ram_nbytes -= freed
            self._spilled_since_trim += freed
            del out
            if self._spilled_since_trim >= TRIM_EVERY_BYTES:
                self._spilled_since_trim = 0
                _trim_heap()

    def _spill(self, out: FrameOutput) -> _Spilled:
        size = self.spillable_nbytes(out)
        slot = self._files.write(size, [out.low_res.cpu(), out.memory.cpu()])
        self.disk_nbytes += size
        self.spill_count += 1
        return _Spilled(
            size=size,
            slot=slot,
            low_res_shape=tuple(out.low_res.shape),
            memory_shape=tuple(out.memory.shape),
            memory_dtype=out.memory.dtype,
            device=out.low_res.device,
            # Fresh copies: the originals sit in the heap between the logits and the memory
            # just freed, and would keep those holes from joining into one that the next
            # frame's outputs can reuse (measured: RSS 2x the budget without the copies).
            pointer=out.pointer.clone(),
            score=out.score.clone(),
        )

    def _load(self, spilled: _Spilled) -> FrameOutput:
        buffer = self._files.read(spilled.size, spilled.slot)
        low_count = 1
        for side in spilled.low_res_shape:
            low_count *= side
        low_res = torch.frombuffer(buffer, dtype=torch.float32, count=low_count)
        memory = torch.frombuffer(buffer, dtype=spilled.memory_dtype, offset=low_count * 4)
        return FrameOutput(
            low_res=low_res.reshape(spilled.low_res_shape).to(spilled.device),
            pointer=spilled.pointer,
            score=spilled.score,
            memory=memory.reshape(spilled.memory_shape).to(spilled.device),
        )

    def _release(self, entry: FrameOutput | _Spilled) -> None:
        if isinstance(entry, _Spilled):
            self._files.free(entry.size, entry.slot)
            self.disk_nbytes -= entry.size


class FrameMap(MutableMapping):
    """frame index -> :class:`FrameOutput` of one object, some of them spilled to disk.

    Iterates in insertion order like a dict (replacing a value keeps its place). Reading a
    spilled output reads it back from disk, without taking it back into RAM. Membership tests
    and ``keys()`` never read from disk.
    """

    def __init__(self, store: StateStore, conditioning: bool) -> None:
        self._store = store
        self.conditioning = conditioning
        self._entries: dict[int, FrameOutput | _Spilled] = {}

    def __getitem__(self, frame: int) -> FrameOutput:
        entry = self._entries[frame]
        if isinstance(entry, _Spilled):
            return self._store._load(entry)
        return entry

    def __setitem__(self, frame: int, out: FrameOutput) -> None:
        if frame in self._entries:
            self._drop(frame)
        self._entries[frame] = out
        self._store._admit(self, frame, out)

    def __delitem__(self, frame: int) -> None:
        self._drop(frame)
        del self._entries[frame]

    def _drop(self, frame: int) -> None:
        entry = self._entries[frame]
        if isinstance(entry, _Spilled):
            self._store._release(entry)
        else:
            self._store._forget_resident(self, frame, entry)

    def __contains__(self, frame: object) -> bool:
        return frame in self._entries

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        for frame in list(self._entries):
            self._drop(frame)
        self._entries.clear()

    def is_spilled(self, frame: int) -> bool:
        return isinstance(self._entries[frame], _Spilled)

    @property
    def ram_nbytes(self) -> int:
        """Bytes of this map's outputs held in RAM (spilled ones keep pointer and score)."""
        return sum(
            entry.ram_nbytes if isinstance(entry, _Spilled) else entry.nbytes
            for entry in self._entries.values()
        )

    @property
    def disk_nbytes(self) -> int:
        """Bytes of this map's outputs on disk."""
        return sum(e.size for e in self._entries.values() if isinstance(e, _Spilled))

    def __repr__(self) -> str:
        spilled = sum(isinstance(e, _Spilled) for e in self._entries.values())
        return f"FrameMap({len(self)} frames, {spilled} on disk)"
