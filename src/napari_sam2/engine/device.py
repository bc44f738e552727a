"""Device and precision choice: CUDA, Apple MPS or CPU, picked automatically or by name.

Names accepted everywhere (GUI menu, CLI, Python API): ``"auto"``, ``"cpu"``, ``"cuda"``,
``"cuda:N"`` and ``"mps"``, or a ``torch.device``. ``"auto"`` prefers CUDA, then MPS, then the
CPU, so the same call runs on a workstation GPU, a Mac and a laptop.

Precision: :func:`autocast_dtype` and :func:`autocast_context` give the device's default half
precision (bfloat16 on CUDA, float16 where the GPU lacks bf16, float32 elsewhere). The Tracker,
the API, the CLI and the dock use the ``precision`` option of :mod:`.precision` instead, whose
"auto" also picks bfloat16 on CPUs with native bfloat16.
"""

from __future__ import annotations

import contextlib

import torch

# Device names and resolution live with the model (the builder needs them and the model layer
# imports nothing from the engine); they are re-exported here for the engine, API and GUI.
from ..model.devices import available_devices, resolve_device

__all__ = ["autocast_context", "autocast_dtype", "available_devices", "resolve_device"]


def _cuda_has_native_bf16() -> bool:
    # Pre-Ampere GPUs can emulate bf16, but emulated bf16 is slower than float16, so ask for
    # native support where this torch release lets us tell the two apart.
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return bool(torch.cuda.is_bf16_supported())


def autocast_dtype(device: str | torch.device) -> torch.dtype:
    """Compute dtype the network runs in on ``device``.

    bfloat16 on CUDA GPUs that support it, float16 on older CUDA GPUs, float32 elsewhere (MPS
    and CPU autocast are slower or less accurate than plain float32 for this network).
    """
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if _cuda_has_native_bf16() else torch.float16


def autocast_context(device: str | torch.device) -> contextlib.AbstractContextManager[object]:
    """Context manager that runs the forward pass in :func:`autocast_dtype` of ``device``.

    Returns:
        ``torch.autocast("cuda", dtype=...)`` on CUDA; a no-op ``contextlib.nullcontext()``
        elsewhere, so tensors stay float32.
    """
    dtype = autocast_dtype(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)
