"""Precision choice (``engine.precision``) and bfloat16 runs of the Tracker against float32.

The resolution rules are checked with the CPU's and the GPU's capabilities mocked both ways, so
they run on any machine. The agreement tests run the same scenarios in float32 and in bfloat16
on the CPU and need a CPU that computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere
bfloat16 is emulated, slow, and never chosen by "auto", so they are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2.engine import precision as precision_mod
from napari_sam2.engine.precision import (
    PRECISIONS,
    autocast,
    cpu_has_native_bf16,
    describe,
    precision_name,
    resolve_precision,
)
from napari_sam2.engine.tracker import Tracker
from tests.engine._video_oracle import synthetic_stack
from tests.engine.helpers import random_tiny_model

SIZE = 256
#: A seed whose random weights give masks of about a tenth of the frame on synthetic_stack,
#: neither empty nor full (each scenario asserts it).
SEED = 2
CLICK = np.array([[40.0, 48.0]])  # (x, y) on the disc of synthetic_stack's frame 0
OTHER = np.array([[100.0, 20.0]])  # background, far from the disc
MIN_IOU = 0.97

needs_native_bf16 = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU has no native bfloat16 (AVX-512 BF16 or AMX)"
)


# ---------------------------------------------------------------------- resolution rules


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what torch reports about the CPU: ``cpu_bf16(True)`` or ``cpu_bf16(False)``."""

    def set_native(native: bool):
        caps = {"avx512_f": True, "avx512_bf16": native, "amx_bf16": False}
        monkeypatch.setattr(precision_mod, "_cpu_capabilities", lambda: caps)

    return set_native


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bf16(cpu_bf16, native):
    cpu_bf16(native)
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_precision("auto", "cpu") == expected
    assert cpu_has_native_bf16() is native


def test_amx_alone_counts_as_native(monkeypatch):
    monkeypatch.setattr(precision_mod, "_cpu_capabilities", lambda: {"amx_bf16": True})
    assert resolve_precision("auto", "cpu") == torch.bfloat16


def test_older_torch_falls_back_to_private_probes(monkeypatch):
    # torch releases before get_capabilities: the private probes decide, and without any
    # probe the answer is the safe float32.
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_native_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert resolve_precision("auto", "cpu") == torch.float32
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_has_native_bf16() is False


def test_failing_capability_query_means_float32(monkeypatch):
    def broken():
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    assert resolve_precision("auto", "cpu") == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_explicit_names_on_cpu(cpu_bf16, native):
    cpu_bf16(native)
    assert resolve_precision("float32", "cpu") == torch.float32
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    assert resolve_precision(" BF16 ", "cpu") == torch.bfloat16
    assert resolve_precision(torch.float32, "cpu") == torch.float32


def test_float16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="float16.*CPU.*bfloat16"):
        resolve_precision("float16", "cpu")


@pytest.mark.parametrize(
    "major, expected", [(8, torch.bfloat16), (9, torch.bfloat16), (7, torch.float16)]
)
def test_auto_on_cuda_follows_compute_capability(monkeypatch, major, expected):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert resolve_precision("auto", "cuda:0") == expected
    assert resolve_precision("float16", "cuda") == torch.float16
    assert resolve_precision("float32", "cuda") == torch.float32


def test_mps_auto_stays_float32():
    assert resolve_precision("auto", "mps") == torch.float32
    assert resolve_precision("float16", "mps") == torch.float16


@pytest.mark.parametrize("bad", ["double", "float64", "", "int8", "automatic"])
def test_unknown_names_are_refused_with_the_valid_ones(bad):
    with pytest.raises(ValueError, match="unknown precision.*'auto', 'float32'"):
        resolve_precision(bad, "cpu")


def test_bad_types_and_dtypes():
    with pytest.raises(TypeError, match="precision must be"):
        resolve_precision(16, "cpu")
    with pytest.raises(ValueError, match="float64 is not supported"):
        resolve_precision(torch.float64, "cpu")
    with pytest.raises(ValueError, match="no precision rules"):
        resolve_precision("bfloat16", "meta")
    assert resolve_precision("float32", "meta") == torch.float32


def test_names_round_trip_and_description(cpu_bf16):
    cpu_bf16(True)
    for name in PRECISIONS[1:]:
        assert precision_name(resolve_precision(name, "cuda")) == name
    assert describe(torch.bfloat16, "cpu") == "bfloat16 on cpu (native)"
    cpu_bf16(False)
    assert describe(torch.bfloat16, "cpu") == "bfloat16 on cpu (emulated, slow)"
    assert describe(torch.float32, "cpu") == "float32 on cpu"


def test_autocast_context_casts_only_below_float32():
    a = torch.randn(4, 4)
    with autocast("cpu", torch.float32):
        assert (a @ a).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


# ---------------------------------------------------------------------- the Tracker


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(SIZE, seed=SEED).eval()


def test_tracker_reports_its_precision(model, cpu_bf16):
    frames = synthetic_stack(2)
    assert Tracker(model, frames, precision="float32").precision == "float32"
    assert Tracker(model, frames, precision="bf16").precision == "bfloat16"
    cpu_bf16(False)
    assert Tracker(model, frames, precision="auto").precision == "float32"
    cpu_bf16(True)
    assert Tracker(model, frames, precision="auto").precision == "bfloat16"
    with pytest.raises(ValueError, match="float16"):
        Tracker(model, frames, precision="float16")


def test_bfloat16_keeps_float32_outputs_and_bf16_memory(model):
    tracker = Tracker(model, synthetic_stack(3), precision="bfloat16")
    logits = tracker.set_prompts(0, 1, points=CLICK, labels=[1])
    assert logits[1].dtype == np.float32
    outputs = list(tracker.propagate(0))
    assert all(out[1].dtype == np.float32 for _, out in outputs)
    state = tracker._objects[1]
    stored = [*state.conditioning.values(), *state.recent.values()]
    assert stored and all(out.memory.dtype == torch.bfloat16 for out in stored)
    assert all(out.low_res.dtype == torch.float32 for out in stored)


def _run(model, precision, scenario):
    tracker = Tracker(model, synthetic_stack(7), precision=precision)
    return scenario(tracker)


def _click_forward(tracker):
    results = [(0, tracker.set_prompts(0, 1, points=CLICK, labels=[1]))]
    return results + list(tracker.propagate(0, "forward"))


def _box_forward(tracker):
    results = [(0, tracker.set_prompts(0, 1, box=[20.0, 25.0, 70.0, 75.0]))]
    return results + list(tracker.propagate(0, "forward"))


def _two_objects_both_directions(tracker):
    results = [(3, tracker.set_prompts(3, 1, points=CLICK + [12.0, 0.0], labels=[1]))]
    results.append((3, tracker.set_prompts(3, 2, points=OTHER, labels=[1])))
    return results + list(tracker.propagate(3, "both"))


def _correction(tracker):
    tracker.set_prompts(0, 1, points=CLICK, labels=[1])
    list(tracker.propagate(0))
    fix = tracker.set_prompts(4, 1, points=[[56.0, 48.0], [10.0, 10.0]], labels=[1, 0])
    results = [(4, fix)] + list(tracker.propagate(0))
    return results + list(tracker.propagate(6, "backward"))


SCENARIOS = {
    "click": _click_forward,
    "box": _box_forward,
    "two-objects-both": _two_objects_both_directions,
    "correction": _correction,
}


@needs_native_bf16
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_bfloat16_agrees_with_float32(model, name):
    reference = _run(model, "float32", SCENARIOS[name])
    reduced = _run(model, "bfloat16", SCENARIOS[name])
    assert [f for f, _ in reduced] == [f for f, _ in reference]
    fractions: dict[int, list[float]] = {}
    for (frame, ref), (_, got) in zip(reference, reduced):
        assert sorted(got) == sorted(ref), f"{name} frame {frame}: objects differ"
        for obj_id, ref_logits in ref.items():
            ref_mask, got_mask = ref_logits > 0, got[obj_id] > 0
            fractions.setdefault(obj_id, []).append(float(ref_mask.mean()))
            union = np.logical_or(ref_mask, got_mask).sum()
            iou = np.logical_and(ref_mask, got_mask).sum() / union if union else 1.0
            assert iou >= MIN_IOU, f"{name} frame {frame} object {obj_id}: IoU {iou:.4f}"
    # The comparison means something only if the masks are real: neither empty nor full.
    for obj_id, values in fractions.items():
        assert 0.01 < float(np.mean(values)) < 0.9, f"{name} object {obj_id}: {values}"
        assert max(values) < 0.99, f"{name} object {obj_id}: a mask fills the frame"
