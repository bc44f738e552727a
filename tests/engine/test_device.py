"""Device and precision choice. CUDA and MPS availability is faked where the machine lacks them."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from napari_sam2.engine import device as device_mod
from napari_sam2.engine.device import (
    autocast_context,
    autocast_dtype,
    available_devices,
    resolve_device,
)

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two fake CUDA GPUs (availability only; nothing runs on them) and MPS as well."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


@pytest.fixture
def fake_mps_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)


# --- resolve_device -----------------------------------------------------------------------------


def test_auto_is_cpu_without_accelerators(no_accelerators):
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert available_devices() == ["auto", "cpu"]


def test_auto_prefers_cuda(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(" CUDA ") == torch.device("cuda")
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert available_devices() == ["auto", "cuda", "cuda:0", "cuda:1", "mps", "cpu"]


def test_auto_picks_mps_and_enables_cpu_fallback(fake_mps_only):
    assert resolve_device("auto") == torch.device("mps")
    assert os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK") == "1"
    assert available_devices() == ["auto", "mps", "cpu"]


def test_mps_fallback_respects_users_setting(fake_mps_only, monkeypatch):
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "0")
    assert resolve_device("mps") == torch.device("mps")
    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "0"


def test_cpu_is_always_available(fake_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps", torch.device("cuda", 0)])
def test_unavailable_device_says_what_is_available(no_accelerators, name):
    with pytest.raises(ValueError, match="not available on this machine") as excinfo:
        resolve_device(name)
    message = str(excinfo.value)
    assert "'auto'" in message
    assert "'cpu'" in message
    assert "'cuda'" not in message.split("Available:")[1].split(".")[0]


def test_cuda_index_beyond_device_count(fake_cuda):
    with pytest.raises(ValueError, match="'cuda:2' is not available"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "", "cuda0"])
def test_unknown_name_lists_valid_choices(no_accelerators, name):
    with pytest.raises(ValueError, match="Unknown device") as excinfo:
        resolve_device(name)
    for choice in ("'auto'", "'cpu'", "'cuda'", "'cuda:N'", "'mps'"):
        assert choice in str(excinfo.value)


def test_non_string_device_is_a_type_error():
    with pytest.raises(TypeError, match="int"):
        resolve_device(0)  # type: ignore[arg-type]


# --- precision ----------------------------------------------------------------------------------


def test_autocast_is_a_noop_on_cpu():
    ctx = autocast_context(torch.device("cpu"))
    assert isinstance(ctx, contextlib.nullcontext)
    a = torch.randn(8, 8)
    with ctx:
        product = a @ a
    assert product.dtype == torch.float32
    assert torch.equal(product, a @ a)
    assert autocast_dtype("cpu") == torch.float32
    assert autocast_dtype("mps") == torch.float32


@pytest.mark.filterwarnings("ignore:.*CUDA is not available.*:UserWarning")
@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_autocast_on_cuda_uses_bf16_or_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: bf16)
    ctx = autocast_context(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda"
    assert ctx.fast_dtype == expected
    assert autocast_dtype("cuda:0") == expected


def test_bf16_check_works_with_older_torch_signature(monkeypatch):
    def old_signature():  # torch releases before `including_emulation` existed
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_signature)
    assert device_mod.autocast_dtype("cuda") == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_bf16_matmul_on_cuda():
    dev = resolve_device("auto")
    assert dev.type == "cuda"
    a = torch.randn(64, 64, device=dev)
    b = torch.randn(64, 64, device=dev)
    with autocast_context(dev):
        product = a @ b
    assert product.dtype == autocast_dtype(dev)
    assert product.dtype in (torch.bfloat16, torch.float16)
    reference = a @ b
    assert reference.dtype == torch.float32
    torch.testing.assert_close(product.float(), reference, atol=0.5, rtol=0.05)
