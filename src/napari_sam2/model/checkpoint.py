"""Load Meta's official SAM 2 checkpoint files, with errors that say what is wrong.

A checkpoint is a ``torch.save``-d dict ``{"model": state_dict}``. It is read with
``weights_only=True``, so no pickled code runs, and every crafted or damaged file (not a dict,
non-string keys, non-tensor values, wrong ranks or shapes, complex or non-finite values,
truncated, pickled code) raises :class:`CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import PRESETS, SAM2Config

_TRUNK_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"
_SAM21_ONLY_KEY = "no_obj_embed_spatial"


class CheckpointError(ValueError):
    """A file that is not a usable SAM 2 checkpoint for the requested model."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's state dict from a checkpoint file, on the CPU.

    The file is read with ``torch.load(..., weights_only=True)``: only tensors and plain
    containers are rebuilt, so no code stored in the file runs. The content must be
    ``{"model": {name: tensor}}`` (or the state dict itself) with string keys and tensor values.

    Raises:
        FileNotFoundError: ``path`` does not exist or is a folder.
        CheckpointError: anything else wrong with the file; the message names the file and the
            problem (truncated, not a PyTorch file, holds Python objects, wrong content).
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(
            f"checkpoint path {str(path)!r} is a folder, not a file; give the path of the .pt file"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {str(path)!r} does not exist; check the path, or pick a preset "
            "so that napari-sam2 downloads the official weights"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        # torch's own message suggests loading without weights_only, i.e. running the file's
        # code; it is never shown. We say what kind of problem it is instead.
        raise CheckpointError(f"{str(path)!r} {_load_problem(path, err)}") from None
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch file but not a SAM 2 checkpoint: it holds a "
            f"{type(content).__name__}, while an official file holds {{'model': state_dict}} "
            f"with keys such as {_TRUNK_PATCH_KEY!r}."
        )
    for key, value in content.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"{str(path)!r} is not a SAM 2 checkpoint: its state dict has a key {key!r} of "
                f"type {type(key).__name__}; every key must be a parameter name (a string)."
            )
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{str(path)!r} is damaged or not a SAM 2 checkpoint: {key!r} holds a "
                f"{type(value).__name__}, not a tensor."
            )
    if _TRUNK_PATCH_KEY not in content:
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch file but not a SAM 2 checkpoint: an official file holds "
            f"{{'model': state_dict}} with keys such as {_TRUNK_PATCH_KEY!r}."
        )
    patch = content[_TRUNK_PATCH_KEY]
    if patch.ndim != 4:
        raise CheckpointError(
            f"{str(path)!r} is damaged or not a SAM 2 checkpoint: {_TRUNK_PATCH_KEY} has shape "
            f"{tuple(patch.shape)}, expected 4 dimensions (channels, 3, 7, 7)."
        )
    return dict(content)


def _load_problem(path: Path, err: BaseException) -> str:
    """What kind of problem ``torch.load`` had with ``path``, in our words."""
    text = str(err)
    if path.stat().st_size == 0:
        return "is empty (0 bytes): the download or copy did not finish. Download it again."
    if "weights_only" in text.lower() or "weights only" in text.lower():
        return (
            "holds Python objects other than tensors (custom classes or code), so it was not "
            "loaded: loading it could run code from the file. A SAM 2 checkpoint holds only "
            "tensors; use an official file or re-save the weights as a plain state dict."
        )
    if isinstance(err, (EOFError, RuntimeError)) and any(
        word in text.lower() for word in ("zip", "eof", "central directory", "stream")
    ):
        return (
            "is truncated or damaged (an incomplete PyTorch archive). Download it again or "
            "choose the right file."
        )
    return (
        f"is not a readable PyTorch checkpoint: it is truncated, damaged or another kind of file "
        f"({type(err).__name__}). Download it again or choose the right file."
    )


def identify_preset(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The official preset whose network has this state dict's shapes, or None."""
    patch = state_dict.get(_TRUNK_PATCH_KEY)
    if not isinstance(patch, torch.Tensor) or patch.ndim < 1:
        return None
    embed_dim = patch.shape[0]
    prefix = "image_encoder.trunk.blocks."
    block_ids = set()
    for key in state_dict:
        if isinstance(key, str) and key.startswith(prefix):
            index = key[len(prefix) :].split(".", 1)[0]
            if index.isdigit():
                block_ids.add(int(index))
    version = "2.1" if _SAM21_ONLY_KEY in state_dict else "2.0"
    for name, config in PRESETS.items():
        trunk = config.trunk
        if (
            config.version == version
            and trunk.embed_dim == embed_dim
            and sum(trunk.stages) == len(block_ids)
        ):
            return name
    return None


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, config: SAM2Config) -> None:
    """Load ``path`` into ``model`` (built from ``config``) strictly.

    Raises :class:`CheckpointError` naming the file and, where it can tell, the preset the file
    was made for.
    """
    state_dict = read_state_dict(path)
    found = identify_preset(state_dict)
    wanted = config.name if config.name in PRESETS else None
    if wanted is not None and found is not None and found != wanted:
        raise CheckpointError(
            f"{str(path)!r} holds the weights of {found}, not {wanted}; "
            f"choose the model {found!r} or another file."
        )
    missing, unexpected = _key_mismatch(model.state_dict(), state_dict)
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r} does not fit the {config.name} network: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})."
        )
    expected = model.state_dict()
    wrong = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"{str(path)!r} does not fit the {config.name} network: {len(wrong)} tensors have "
            f"other shapes, e.g. {key} is {tuple(state_dict[key].shape)}, expected "
            f"{tuple(expected[key].shape)}."
        )
    for key, value in state_dict.items():
        if value.is_complex():
            raise CheckpointError(
                f"{str(path)!r} is damaged: {key} is {value.dtype}, expected real numbers."
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{str(path)!r} is damaged: {key} holds NaN or infinite values. Download it "
                "again or choose the right file."
            )
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{str(path)!r} does not fit the {config.name} network: {str(err)[:300]}"
        ) from None


def _key_mismatch(expected: Mapping, given: Mapping) -> tuple[list[str], list[str]]:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    return missing, unexpected
