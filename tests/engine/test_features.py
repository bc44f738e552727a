"""FeatureCache: LRU order, byte bound, oversize values and thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_sam2.engine.features import FeatureCache, nested_nbytes


def _features(nbytes: int) -> dict:
    """A nested structure of uint8 tensors holding exactly ``nbytes``."""
    half = nbytes // 2
    return {
        "vision": [torch.zeros(half, dtype=torch.uint8)],
        "pos": (torch.ones(nbytes - half, dtype=torch.uint8),),
        "size": 3,
    }


def test_nested_nbytes_counts_tensors_and_arrays():
    value = {
        "a": torch.zeros(10, dtype=torch.float32),
        "b": [torch.zeros(4, dtype=torch.float16), (torch.zeros(2, dtype=torch.int64), None)],
        "c": np.zeros(3, dtype=np.uint8),
        "d": "text",
    }
    assert nested_nbytes(value) == 40 + 8 + 16 + 3


def test_get_put_contains_len():
    cache = FeatureCache(1000)
    assert cache.get("missing") is None and "missing" not in cache and len(cache) == 0
    value = _features(80)
    assert cache.put((0, 1), value)
    assert (0, 1) in cache and len(cache) == 1 and cache.nbytes == 80
    assert cache.get((0, 1)) is value


def test_least_recently_used_is_evicted():
    cache = FeatureCache(300)
    for key in "abc":
        cache.put(key, _features(100))
    assert cache.keys() == ["a", "b", "c"]
    cache.get("a")  # a is now the most recent
    assert "b" in cache  # a membership test is not a use
    cache.put("d", _features(100))
    assert cache.keys() == ["c", "a", "d"]
    assert "b" not in cache and cache.nbytes == 300


def test_byte_bound_evicts_as_many_as_needed():
    cache = FeatureCache(400)
    for key in range(4):
        cache.put(key, _features(100))
    assert cache.nbytes == 400
    cache.put("mid", _features(160))  # needs two 100-byte entries gone
    assert cache.keys() == [2, 3, "mid"] and cache.nbytes == 360
    cache.put("big", _features(320))
    assert cache.keys() == ["big"] and cache.nbytes == 320


def test_oversize_value_is_not_stored_and_drops_stale_entry():
    cache = FeatureCache(100)
    cache.put("k", _features(80))
    assert not cache.put("k", _features(160))
    assert "k" not in cache and cache.nbytes == 0 and len(cache) == 0


def test_replacing_a_key_updates_the_size():
    cache = FeatureCache(1000)
    cache.put("k", _features(80))
    cache.put("k", _features(160))
    assert len(cache) == 1 and cache.nbytes == 160


def test_clear_pop_and_zero_bound():
    cache = FeatureCache(1000)
    cache.put(1, _features(80))
    cache.put(2, _features(80))
    assert cache.pop(1) is not None and cache.pop(1) is None and cache.nbytes == 80
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    disabled = FeatureCache(0)
    assert not disabled.put("x", _features(8)) and len(disabled) == 0
    assert disabled.put("empty", {"n": 1})  # values without tensors weigh nothing


def test_get_or_compute_computes_once():
    cache = FeatureCache(1000)
    calls = []

    def compute():
        calls.append(1)
        return _features(80)

    first = cache.get_or_compute(5, compute)
    second = cache.get_or_compute(5, compute)
    assert first is second and len(calls) == 1


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_bound_raises(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(bad)


def test_thread_safety_smoke():
    cache = FeatureCache(64 * 40)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(400):
                key = int(rng.integers(0, 60))
                if rng.random() < 0.5:
                    cache.put(key, _features(64 * int(rng.integers(1, 4))))
                else:
                    value = cache.get(key)
                    assert value is None or isinstance(value, dict)
        except BaseException as error:  # noqa: BLE001 - reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.nbytes <= cache.max_bytes
    assert cache.nbytes == sum(nested_nbytes(cache.get(key)) for key in cache.keys())  # noqa: SIM118 - not a dict
