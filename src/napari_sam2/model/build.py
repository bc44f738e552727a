"""``build_sam2``: the one way to make a SAM 2 network."""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from .checkpoint import load_checkpoint
from .config import SAM2Config, get_config
from .devices import resolve_device
from .sam2 import SAM2


def build_sam2(
    name: str | SAM2Config,
    checkpoint: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    fill_hole_area: int = 8,
) -> SAM2:
    """Build a SAM 2 network in eval mode.

    ``name``: a preset from :data:`PRESET_NAMES` or a custom :class:`SAM2Config`.
    ``checkpoint``: None for random weights, a path to an official ``.pt`` file, or
    ``"download"`` to fetch the preset's official weights into the user cache.
    ``image_size``: another square input size (a multiple of 32), e.g. 512 for MedSAM2.
    ``device``: "cpu", "cuda", "mps" or "auto". ``fill_hole_area``: background holes in
    tracked masks up to this many low-resolution pixels are filled (0 turns it off).
    """
    config = name if isinstance(name, SAM2Config) else get_config(name)
    if image_size is not None:
        config = config.with_image_size(image_size)
    if fill_hole_area < 0:
        raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
    config = replace(config, fill_hole_area=int(fill_hole_area))

    model = SAM2(config)
    if checkpoint is not None:
        if isinstance(checkpoint, str) and checkpoint == "download":
            from .registry import fetch_checkpoint

            checkpoint = fetch_checkpoint(config.name)
        load_checkpoint(model, checkpoint, config)
    return model.to(resolve_device(device)).eval()
