"""Shared helpers of the engine tests."""

from __future__ import annotations

import torch

from napari_sam2.model import build_sam2


def random_tiny_model(image_size: int, seed: int = 0):
    """sam2.1 tiny with random weights (seeded) at ``image_size``. The object-score head is
    biased so that masks are not empty: random weights otherwise predict "no object"."""
    torch.manual_seed(seed)
    net = build_sam2("sam2.1_hiera_tiny", image_size=image_size)
    net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(4.0)
    return net
