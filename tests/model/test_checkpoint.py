"""Crafted and damaged checkpoints: every one gets a CheckpointError naming the file and the
problem, torch's advice to load without ``weights_only`` is never shown, no code runs."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

from napari_sam2.model import build_sam2
from napari_sam2.model.checkpoint import (
    CheckpointError,
    identify_preset,
    load_checkpoint,
    read_state_dict,
)
from napari_sam2.model.config import get_config

PATCH = "image_encoder.trunk.patch_embed.proj.weight"


@pytest.fixture(scope="module")
def tiny():
    config = get_config("sam2.1_hiera_tiny", 256)
    return build_sam2(config), config


def _saved(tmp_path, content, name="ck.pt"):
    path = tmp_path / name
    torch.save(content, path)
    return path


def _error(path, load=None) -> str:
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path) if load is None else load(path)
    message = str(info.value)
    assert path.name in message
    assert "weights_only" not in message and "weights only" not in message.lower()
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([1, 2, 3], "holds a list"),
        (torch.zeros(3), "holds a Tensor"),
        ({"model": {1: torch.zeros(1)}}, "key 1 of type int"),
        ({"model": {(1, 2): torch.zeros(1)}}, "key (1, 2)"),
        ({"model": {PATCH: "text"}}, "holds a str, not a tensor"),
        ({"model": {PATCH: [1.0, 2.0]}}, "holds a list, not a tensor"),
        ({"model": {PATCH: None}}, "holds a NoneType"),
        ({"model": {PATCH: torch.zeros(())}}, "expected 4 dimensions"),
        ({"model": {PATCH: torch.zeros(96)}}, "has shape (96,)"),
        ({"model": {"other.weight": torch.zeros(2)}}, "not a SAM 2 checkpoint"),
        ({}, "not a SAM 2 checkpoint"),
    ],
)
def test_crafted_state_dicts_are_named(tmp_path, content, expected):
    assert expected in _error(_saved(tmp_path, content))


def test_damaged_files_are_named(tmp_path, tiny):
    model, _ = tiny
    whole = _saved(tmp_path, {"model": model.state_dict()}, "whole.pt")
    data = whole.read_bytes()
    for name, payload, expected in [
        ("empty.pt", b"", "is empty"),
        ("cut.pt", data[: len(data) // 3], "truncated"),
        ("tail.pt", data[len(data) // 2 :], "pt"),
        ("text.pt", b"these are not weights\n", "not a readable PyTorch checkpoint"),
        ("zero.pt", b"\x00" * 4096, "pt"),
    ]:
        path = tmp_path / name
        path.write_bytes(payload)
        assert expected in _error(path)


def test_a_pickle_with_code_never_runs(tmp_path):
    marker = tmp_path / "PWNED"

    class Trap:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": Trap()}))
    zipped = _saved(tmp_path, {"model": Trap()}, "zipped.pt")
    for path in (raw, zipped):
        message = _error(path)
        assert "could run code" in message
    assert not marker.exists()


def test_a_zip_with_a_foreign_pickle_never_runs(tmp_path):
    marker = tmp_path / "PWNED"

    class Trap:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(Trap()))
        archive.writestr("archive/version", "3\n")
    _error(path)
    assert not marker.exists()


def _load_into(tiny):
    model, config = tiny

    def load(path):
        load_checkpoint(model, path, config)

    return load


def test_wrong_ranks_complex_and_non_finite_values_are_named(tmp_path, tiny):
    model, _ = tiny
    good = {k: v.clone() for k, v in model.state_dict().items()}
    key = "sam_mask_decoder.iou_token.weight"
    cases = []
    wrong_rank = dict(good)
    wrong_rank[key] = good[key].reshape(-1)
    cases.append((wrong_rank, "tensors have other shapes"))
    with_nan = dict(good)
    with_nan[key] = good[key].clone()
    with_nan[key][0, 0] = float("nan")
    cases.append((with_nan, "NaN or infinite"))
    complex_values = dict(good)
    complex_values[key] = good[key].to(torch.complex64)
    cases.append((complex_values, "expected real numbers"))
    missing = dict(good)
    missing.pop(key)
    cases.append((missing, "missing keys"))
    for content, expected in cases:
        path = _saved(tmp_path, {"model": content})
        assert expected in _error(path, _load_into(tiny))
    assert identify_preset(good) == "sam2.1_hiera_tiny"


def test_identify_preset_never_raises_on_odd_keys():
    odd = {PATCH: torch.zeros(96, 3, 7, 7), "image_encoder.trunk.blocks.x.attn": torch.zeros(1)}
    assert identify_preset(odd) is None
    assert identify_preset({PATCH: torch.zeros(())}) is None
    assert identify_preset({}) is None


# ---------------------------------------------------------------------------- fuzzing

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TENSORS = st.builds(
    lambda shape, kind: torch.zeros(shape, dtype=kind),
    st.lists(st.integers(0, 3), max_size=4).map(tuple),
    st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.complex64]),
)
_KEYS = st.one_of(
    st.sampled_from(
        [
            PATCH,
            "no_obj_embed_spatial",
            "image_encoder.trunk.blocks.0.attn.qkv.weight",
            "image_encoder.trunk.blocks.z.x",
            "model",
        ]
    ),  # fmt: skip
    st.text(max_size=8),
    st.integers(),
    st.none(),
)
_LEAVES = st.one_of(_TENSORS, st.integers(), st.floats(), st.text(max_size=5), st.none())
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)
    ),
    max_leaves=6,
)
_CONTENTS = st.one_of(
    st.dictionaries(_KEYS, _VALUES, max_size=4),
    st.builds(lambda d: {"model": d}, st.dictionaries(_KEYS, _VALUES, max_size=4)),
    # a plausible trunk tensor beside fuzzed entries, so some files pass the first checks
    st.builds(
        lambda d, n: {"model": {PATCH: torch.zeros(n, 3, 7, 7), **d}},
        st.dictionaries(st.text(max_size=8), _VALUES, max_size=4),
        st.sampled_from([96, 112, 144]),
    ),
    _VALUES,
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(content=_CONTENTS)
def test_fuzz_checkpoint_contents(tmp_path_factory, tiny, content):
    """Any content torch can save: a state dict of string keys and tensors, or a
    CheckpointError naming the file. Nothing else escapes, and nothing is loaded loosely."""
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.pt"
    torch.save(content, path)
    try:
        state = read_state_dict(path)
    except CheckpointError as err:
        assert "fuzz.pt" in str(err) and "weights_only" not in str(err)
        event("refused by read_state_dict")
        return
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    assert state[PATCH].ndim == 4
    identify_preset(state)
    with pytest.raises(CheckpointError, match="fuzz.pt"):
        _load_into(tiny)(path)
    event("read, refused by load_checkpoint")
