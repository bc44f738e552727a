"""Device choice for the network: CUDA, Apple MPS or CPU, picked automatically or by name.

Names accepted everywhere (GUI menu, CLI, Python API): ``"auto"``, ``"cpu"``, ``"cuda"``,
``"cuda:N"`` and ``"mps"``, or a ``torch.device``. ``"auto"`` prefers CUDA, then MPS, then the
CPU, so the same call runs on a workstation GPU, a Mac and a laptop.

This lives in the model package because :func:`napari_sam2.model.build_sam2` places the network
with it and the model layer imports nothing from the engine; :mod:`napari_sam2.engine.device`
re-exports it.
"""

from __future__ import annotations

import os
import re

import torch

__all__ = ["available_devices", "resolve_device"]

_CUDA_INDEXED = re.compile(r"cuda:(\d+)")


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device names usable on this machine, for a device menu.

    Returns:
        ``["auto", ...]`` followed by ``"cuda"`` and ``"cuda:0"`` .. ``"cuda:N-1"`` when CUDA is
        available (only ``"cuda"`` if a single GPU), ``"mps"`` when Apple's backend is, and
        always ``"cpu"`` last.
    """
    names = ["auto"]
    if _cuda_available():
        names.append("cuda")
        count = torch.cuda.device_count()
        if count > 1:
            names.extend(f"cuda:{index}" for index in range(count))
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def _not_available(requested: str) -> ValueError:
    usable = ", ".join(repr(n) for n in available_devices())
    return ValueError(
        f"Device {requested!r} is not available on this machine. Available: {usable}. "
        "Use 'auto' to pick the best one, or 'cpu'."
    )


def _enable_mps_cpu_fallback() -> None:
    # Some operators the image encoder needs (parts of Hiera's pooling in older torch releases)
    # have no MPS kernel; with this flag torch runs them on the CPU instead of raising. It must
    # be set before the first such operator runs, and a user's explicit choice is respected.
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists here.

    Args:
        name: ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"``, or a ``torch.device`` of those types. Case and surrounding spaces are
            ignored.

    Returns:
        The device. Choosing MPS also sets ``PYTORCH_ENABLE_MPS_FALLBACK=1`` unless it is set.

    Raises:
        ValueError: the device is not available on this machine (the message lists those that
            are), or the name is not a device name (the message lists the valid forms).
        TypeError: ``name`` is neither a string nor a ``torch.device``.
    """
    if isinstance(name, torch.device):
        text = str(name)
    elif isinstance(name, str):
        text = name.strip().lower()
    else:
        raise TypeError(
            f"device must be a string such as 'auto' or a torch.device, got {type(name).__name__}."
        )

    if text == "auto":
        if _cuda_available():
            return torch.device("cuda")
        if _mps_available():
            _enable_mps_cpu_fallback()
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text in ("mps", "mps:0"):
        if not _mps_available():
            raise _not_available(text)
        _enable_mps_cpu_fallback()
        return torch.device("mps")
    if text == "cuda":
        if not _cuda_available():
            raise _not_available(text)
        return torch.device("cuda")
    indexed = _CUDA_INDEXED.fullmatch(text)
    if indexed:
        index = int(indexed.group(1))
        if not _cuda_available() or index >= torch.cuda.device_count():
            raise _not_available(text)
        return torch.device("cuda", index)
    raise ValueError(
        f"Unknown device {name!r}. Valid choices: 'auto', 'cpu', 'cuda', 'cuda:N' (N a GPU "
        f"index) or 'mps'; on this machine: {', '.join(available_devices())}."
    )
