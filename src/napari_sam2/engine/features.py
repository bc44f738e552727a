"""A bounded, thread-safe least-recently-used cache for image features.

The image encoder is the most expensive part of SAM 2, so the tracker keeps the features of recent
frames. Keeping all of them is what makes long stacks run out of memory, so this cache holds at
most ``max_bytes`` and forgets the frames used least recently.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch


def nested_nbytes(value: Any) -> int:
    """Bytes held by the tensors (and numpy arrays) in a nested dict/list/tuple structure.

    Other leaves (numbers, strings, None) count as 0. Tensors that share storage are counted once
    per appearance, so views make the estimate an upper bound.
    """
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(nested_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nested_nbytes(item) for item in value)
    return 0


class FeatureCache:
    """LRU cache of nested tensor structures bounded by their total size in bytes.

    Args:
        max_bytes: the most bytes the stored values may hold together (see :func:`nested_nbytes`).
            0 disables caching.

    Keys are any hashable (the tracker uses e.g. ``(frame_index, batch)``). Values are stored as
    given, not copied: callers must not modify a tensor after putting it. All methods take a lock,
    so a GUI worker thread and the main thread may share one cache.
    """

    def __init__(self, max_bytes: int) -> None:
        if int(max_bytes) != max_bytes or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, got {max_bytes!r}")
        self._max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def max_bytes(self) -> int:
        """The byte bound given at construction."""
        return self._max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes currently held by all stored values."""
        with self._lock:
            return self._nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is stored; does not count as a use."""
        with self._lock:
            return key in self._entries

    def keys(self) -> list[Hashable]:
        """Stored keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable) -> Any | None:
        """The value stored under ``key`` (now the most recently used), or None if absent."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store ``value`` under ``key`` as the most recently used entry.

        Least recently used entries are evicted until the total fits ``max_bytes``. A value larger
        than ``max_bytes`` on its own is not stored (and any older value under ``key`` is dropped,
        since it is stale). Returns whether the value was stored.
        """
        size = nested_nbytes(value)
        with self._lock:
            self._discard(key)
            if size > self._max_bytes:
                return False
            while self._entries and self._nbytes + size > self._max_bytes:
                oldest = next(iter(self._entries))
                self._discard(oldest)
            self._entries[key] = (value, size)
            self._nbytes += size
            return True

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value for ``key``, or ``compute()`` stored and returned.

        ``compute`` runs without the lock held, so two threads may both compute a missing key;
        the later result replaces the earlier one.
        """
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def pop(self, key: Hashable) -> Any | None:
        """Remove ``key`` and return its value, or None if it was not stored."""
        with self._lock:
            entry = self._entries.get(key)
            self._discard(key)
            return None if entry is None else entry[0]

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def _discard(self, key: Hashable) -> None:
        """Remove ``key`` if present; the caller holds the lock."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._nbytes -= entry[1]
