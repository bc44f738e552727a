"""The data signature that keys a feature store: what it holds, what it reads, and that a store
whose signature differs in any field is refused with words that name the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sam2.engine.data_signature import (
    SAMPLE_FRAMES,
    content_hash,
    data_signature,
    weights_hash,
)
from napari_sam2.engine.frames import FrameSource
from napari_sam2.model import build_sam2

pytest.importorskip("zarr")

from napari_sam2.engine.feature_store import FeatureStore, FeatureStoreMismatch  # noqa: E402

SIZE = 256


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam2("sam2.1_hiera_tiny", image_size=SIZE)


def stack(frames: int = 6, height: int = 40, width: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (frames, height, width)).astype(np.uint16)


class RecordingStack:
    """An array-like that records every key it is indexed with."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.keys: list = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self._data[key]


def test_signature_is_json_and_holds_every_field(model):
    signature = data_signature(stack(), model)
    assert json.loads(json.dumps(signature)) == signature
    assert signature["shape"] == [6, 40, 50]
    assert signature["dtype"] == "uint16"
    assert (signature["axis"], signature["channel_axis"], signature["layout"]) == (0, None, "grey")
    assert (signature["num_frames"], signature["frame_shape"]) == (6, [40, 50])
    assert signature["model"] == "sam2.1_hiera_tiny"
    assert signature["input_size"] == SIZE
    assert len(signature["content_hash"]) == len(signature["weights_hash"]) == 64
    lo, hi = signature["intensity_range"]
    assert 0 <= lo < hi <= 4000


def test_same_data_gives_the_same_signature_whatever_the_array_type(model):
    dask = pytest.importorskip("dask.array")
    data = stack()
    numpy_signature = data_signature(data, model)
    assert data_signature(dask.from_array(data, chunks=(1, 40, 50)), model) == numpy_signature
    # big-endian storage of the same values hashes the same
    assert (
        data_signature(data.astype(">u2"), model)["content_hash"]
        == numpy_signature["content_hash"]
    )
    # a Tracker, a FrameSource and an array with options agree
    from napari_sam2.engine.tracker import Tracker

    assert data_signature(Tracker(model, data)) == numpy_signature
    assert data_signature(FrameSource(data), model) == numpy_signature


def test_content_hash_reads_a_strided_sample_of_a_few_frames():
    data = stack(frames=40, height=600, width=700)
    recording = RecordingStack(data)
    source = FrameSource(recording, intensity_range=(0, 4000))
    content_hash(source)
    frames = {key[0] for key in recording.keys}
    assert len(frames) == SAMPLE_FRAMES and {0, 39} <= frames
    for key in recording.keys:
        assert all(isinstance(part, slice) and part.step > 1 for part in key[1:])
    # about SAMPLE_PIXELS pixels per frame
    assert data[0, key[1], key[2]].size < 2 * 2**14


def test_weights_hash_is_cached_and_follows_weight_changes():
    torch.manual_seed(1)
    net = build_sam2("sam2.1_hiera_tiny", image_size=128)
    first = weights_hash(net)
    calls = []
    real = torch.Tensor.contiguous

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    torch.Tensor.contiguous = counting
    try:
        assert weights_hash(net) == first
    finally:
        torch.Tensor.contiguous = real
    assert calls == []  # the second call hashed nothing
    # the memory layout does not count, the values do
    assert weights_hash(net.to(memory_format=torch.channels_last)) == first
    # weights that do not make image features leave it (and the store) as it was
    with torch.no_grad():
        net.no_mem_embed.add_(1.0)
        net.sam_mask_decoder.iou_prediction_head.layers[0].weight.mul_(2.0)
    assert weights_hash(net) == first
    with torch.no_grad():
        net.sam_mask_decoder.conv_s1.bias.add_(1.0)
    assert weights_hash(net) != first


def _store_for(tmp_path, data, model, **options):
    return FeatureStore.open(tmp_path / "f.zarr", data_signature(data, model, **options))


def _refused(tmp_path, data, model, **options) -> FeatureStoreMismatch:
    with pytest.raises(FeatureStoreMismatch) as info:
        _store_for(tmp_path, data, model, **options)
    message = str(info.value)
    assert "f.zarr" in message and "delete it" in message
    return info.value


def test_a_store_is_refused_for_other_data_naming_the_field(tmp_path, model):
    data = stack()
    _store_for(tmp_path, data, model)
    _store_for(tmp_path, data.copy(), model)  # the same data opens it

    error = _refused(tmp_path, stack(frames=7), model)
    assert "shape" in error.fields and "(6, 40, 50)" in str(error)
    error = _refused(tmp_path, data.astype(np.int32), model)
    assert error.fields[0] == "dtype" and "uint16" in str(error)
    edited = data.copy()
    edited[0, 0, 0] += 1  # a sampled pixel
    error = _refused(tmp_path, edited, model)
    assert error.fields == ["content_hash"] and "other image content" in str(error)
    error = _refused(tmp_path, data, model, intensity_range=(0, 1000))
    assert error.fields == ["intensity_range"] and "intensity range" in str(error)


def test_a_store_is_refused_for_another_layout(tmp_path, model):
    data = np.random.default_rng(0).integers(0, 255, (4, 40, 50, 3)).astype(np.uint8)
    _store_for(tmp_path, data, model)
    error = _refused(tmp_path, data, model, rgb=False, channel_axis=3)
    assert "layout" in error.fields and "rgb frames" in str(error)
    error = _refused(tmp_path, data, model, axis=1, channel_axis=3)
    assert "axis" in error.fields and "tracked axis 0" in str(error)


def test_a_store_is_refused_for_another_model(tmp_path, model):
    data = stack()
    _store_for(tmp_path, data, model)
    torch.manual_seed(0)
    other_size = build_sam2("sam2.1_hiera_tiny", image_size=128)
    error = _refused(tmp_path, data, other_size)
    assert "input_size" in error.fields and "input size 256, this model uses 128" in str(error)

    torch.manual_seed(0)
    other_preset = build_sam2("sam2_hiera_tiny", image_size=SIZE)
    error = _refused(tmp_path, data, other_preset)
    assert error.fields[0] == "model" and "'sam2.1_hiera_tiny'" in str(error)

    torch.manual_seed(0)
    same_preset = build_sam2("sam2.1_hiera_tiny", image_size=SIZE)
    assert weights_hash(same_preset) == weights_hash(model)
    with torch.no_grad():
        same_preset.image_encoder.neck.convs[0].conv.weight.mul_(1.01)  # a fine-tune
    error = _refused(tmp_path, data, same_preset)
    assert error.fields == ["weights_hash"]
    assert f"model weights {weights_hash(model)[:12]}" in str(error)
    assert f"this model's are {weights_hash(same_preset)[:12]}" in str(error)
