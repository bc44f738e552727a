"""Load Meta's official SAM 2 checkpoint files, with errors that say what is wrong.

A checkpoint is a ``torch.save``-d dict ``{"model": state_dict}``. It is read with
``weights_only=True``, so no pickled code runs.
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
    """The network's state dict from a checkpoint file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {str(path)!r} does not exist; check the path, or pick a preset "
            "so that napari-sam2 downloads the official weights"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(
            f"{str(path)!r} is not a readable PyTorch checkpoint: it is truncated, damaged or "
            f"another kind of file ({type(err).__name__}: {str(err)[:200]}). Download it again "
            "or choose the right file."
        ) from err
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not isinstance(content, Mapping) or _TRUNK_PATCH_KEY not in content:
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch file but not a SAM 2 checkpoint: an official file holds "
            f"{{'model': state_dict}} with keys such as {_TRUNK_PATCH_KEY!r}."
        )
    return dict(content)


def identify_preset(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The official preset whose network has this state dict's shapes, or None."""
    embed_dim = state_dict[_TRUNK_PATCH_KEY].shape[0]
    block_ids = {
        int(key.split(".")[3])
        for key in state_dict
        if key.startswith("image_encoder.trunk.blocks.")
    }
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
    model.load_state_dict(state_dict, strict=True)


def _key_mismatch(expected: Mapping, given: Mapping) -> tuple[list[str], list[str]]:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    return missing, unexpected
