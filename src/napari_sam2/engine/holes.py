"""Fill small background holes in mask logits, on any device.

Meta's video predictor does this with a CUDA extension and silently skips it elsewhere; here it
runs on the CPU with scikit-image, on the low-resolution logits only (at most 256 x 256).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import label as label_components

#: Logit given to filled pixels: just inside the mask, as the official post-processing does.
FILLED_LOGIT = 0.1


def fill_small_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Raise background regions (logit <= 0) of at most ``max_area`` pixels to inside.

    ``logits``: (B, 1, H, W) float. Regions are 8-connected. Returns a new tensor on the same
    device; the input is not modified. ``max_area <= 0`` returns the input unchanged.
    """
    if max_area <= 0:
        return logits
    background = (logits <= 0).cpu().numpy()
    fill = np.zeros_like(background)
    for index in range(background.shape[0]):
        regions = label_components(background[index, 0], connectivity=2)
        if regions.max() == 0:
            continue
        areas = np.bincount(regions.ravel())
        small = areas <= max_area
        small[0] = False  # label 0 is the foreground, never a hole
        fill[index, 0] = small[regions]
    if not fill.any():
        return logits
    hole = torch.from_numpy(fill).to(logits.device)
    return torch.where(hole, torch.full_like(logits, FILLED_LOGIT), logits)
