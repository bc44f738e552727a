"""Numerical precision of the network: a ``precision`` name resolved to a compute dtype per device.

Names accepted everywhere (tracker, Python API, CLI ``--precision``, dock): ``"auto"``,
``"float32"``, ``"bfloat16"`` and ``"float16"`` (also ``torch.float32`` and the like).

``"auto"`` picks what is both accurate enough and fastest on the device:

- CUDA: bfloat16, as Meta runs SAM 2; float16 on GPUs without native bfloat16 (before Ampere),
  where emulated bfloat16 is slower than float16.
- CPU: bfloat16 where the CPU has native bfloat16 matrix units (x86 AVX-512 BF16 or AMX-BF16,
  as torch reports them: recent Xeons, AMD Zen 4 and later); float32 elsewhere, because without
  those units bfloat16 is emulated and slower than float32.
- Apple MPS: float32. Half-precision autocast on MPS is neither measured nor tested here, so
  ``"auto"`` does not choose it; ``"float16"`` and ``"bfloat16"`` may still be asked for.

Reduced precision applies to the compute only, through ``torch.autocast``: the weights stay
float32, memory features are stored in bfloat16 whatever the precision (as Meta stores them),
and outputs (logits, object pointers, scores) are returned as float32.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "PRECISIONS",
    "autocast",
    "cpu_has_native_bf16",
    "describe",
    "precision_name",
    "resolve_precision",
    "suspend_autocast",
]

#: Names a user may give, in menu order.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
#: CPU features (names as in ``torch.cpu.get_capabilities()``) that compute bfloat16 natively.
_CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def _cpu_capabilities() -> dict:
    """What torch reports about the CPU: a mapping of feature names to booleans (torch >= 2.8
    has the public ``torch.cpu.get_capabilities``); an empty dict where it cannot tell."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return {}
    try:
        return dict(get())
    except Exception:  # an unknown CPU or a build without cpuinfo: assume no native bf16
        return {}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX-512 BF16 or AMX-BF16).

    Read from ``torch.cpu.get_capabilities()``; on older torch releases, from the private
    ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported`` where present; False
    when none of these is available (then ``"auto"`` stays float32, which is always safe).
    """
    capabilities = _cpu_capabilities()
    if capabilities:
        return any(bool(capabilities.get(name)) for name in _CPU_BF16_FEATURES)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None:
            try:
                if check():
                    return True
            except Exception:
                continue
    return False


def _cuda_has_native_bf16(device: torch.device) -> bool:
    """Native bfloat16 on this GPU: compute capability 8.0 (Ampere) or later, or any ROCm GPU
    torch supports. Older GPUs emulate bfloat16, more slowly than float16."""
    if getattr(torch.version, "hip", None):
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def _normalise(precision: str | torch.dtype) -> str:
    if isinstance(precision, torch.dtype):
        for name, dtype in _DTYPES.items():
            if dtype == precision:
                return name
        raise ValueError(
            f"precision {precision} is not supported; use one of {', '.join(PRECISIONS)}"
        )
    if not isinstance(precision, str):
        raise TypeError(
            f"precision must be a name such as 'auto' or 'float32', or a torch.dtype; got "
            f"{type(precision).__name__}"
        )
    text = precision.strip().lower()
    text = _ALIASES.get(text, text)
    if text not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; use one of {', '.join(map(repr, PRECISIONS))}"
        )
    return text


def resolve_precision(precision: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``.

    Args:
        precision: ``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"`` (case-insensitive;
            ``"fp32"``, ``"bf16"``, ``"fp16"`` also work) or one of those torch dtypes.
        device: the device the network runs on (a resolved device: ``"cpu"``, ``"cuda:0"``,
            ``"mps"``, ...; not ``"auto"``).

    Returns:
        ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``. ``"auto"`` follows the
        module's rules (bfloat16 on CUDA and on CPUs with native bfloat16, float32 elsewhere).

    Raises:
        ValueError: an unknown name, or a precision the device cannot run: float16 on the CPU
            (use "bfloat16" or "float32"), or bfloat16 on a CUDA GPU without bfloat16 support
            (use "float16").
        TypeError: ``precision`` is neither a string nor a torch dtype.
    """
    name = _normalise(precision)
    device = torch.device(device)
    kind = device.type
    if name == "float32":
        return torch.float32
    if kind == "cuda":
        if name == "auto":
            return torch.bfloat16 if _cuda_has_native_bf16(device) else torch.float16
        return _DTYPES[name]
    if kind == "mps":
        # Not measured here: "auto" keeps MPS in float32 (see the module docstring).
        return torch.float32 if name == "auto" else _DTYPES[name]
    if kind == "cpu":
        if name == "auto":
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        if name == "float16":
            raise ValueError(
                "precision 'float16' is not supported on the CPU (it is slow there and not "
                "tested); use 'bfloat16' on a CPU with AVX-512 BF16 or AMX, or 'float32'"
            )
        return torch.bfloat16
    raise ValueError(
        f"no precision rules for device {device}; use precision 'float32' there, or run on "
        "'cpu', 'cuda' or 'mps'"
    )


def precision_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the names :func:`resolve_precision` accepts)."""
    for name, known in _DTYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"{dtype} is not one of the precisions {', '.join(_DTYPES)}")


def autocast(device: str | torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """A context that runs the forward pass in ``dtype`` on ``device``.

    ``torch.autocast(device.type, dtype=dtype)`` for bfloat16 and float16; a no-op context for
    float32, so nothing is cast and results match a run without autocast bit for bit.
    """
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def describe(dtype: torch.dtype, device: str | torch.device) -> str:
    """A short line for a status bar or a log, e.g. ``"bfloat16 on cpu (native)"``."""
    device = torch.device(device)
    text = f"{precision_name(dtype)} on {device}"
    if device.type == "cpu" and dtype == torch.bfloat16:
        text += " (native)" if cpu_has_native_bf16() else " (emulated, slow)"
    return text


def suspend_autocast(
    device: str | torch.device, dtype: torch.dtype
) -> contextlib.AbstractContextManager:
    """A context that turns off the autocast :func:`autocast` (``device``, ``dtype``) turned on,
    for a part of the network that must compute in float32; a no-op for float32. Inputs made
    inside the autocast region must be cast to float32 by the caller."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, enabled=False)
