"""Segment a bright disc through a synthetic z-stack with the Python API.

Runs in a few seconds on a CPU with random weights, so it needs no download:

    python examples/segment_stack.py

Random weights predict "no object" by default; biasing the object-score head makes them draw
masks, which is enough to see shapes, ids and the propagation at work (the masks themselves mean
nothing). With the official weights, drop the model building and bias and write:

    labels = segment(stack, points=[[3, 32, 36]], model="sam2.1_hiera_tiny")
    # checkpoint="download" (the default) fetches the weights into the user cache on first use;
    # checkpoint="/path/to/file.pt" loads a local file, e.g. a fine-tune such as MedSAM2.
"""

import numpy as np
import torch

from napari_sam2.api import segment
from napari_sam2.model import build_sam2


def disc_stack(frames: int = 6, size: int = 64) -> np.ndarray:
    """(frames, size, size) uint16 stack: a bright disc on a dim background, drifting right."""
    rows, cols = np.mgrid[:size, :size]
    stack = np.full((frames, size, size), 100, dtype=np.uint16)
    for z in range(frames):
        stack[z][(rows - 32) ** 2 + (cols - 30 - z) ** 2 < 12**2] = 3000
    return stack


def main() -> None:
    stack = disc_stack()
    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_tiny", checkpoint=None, image_size=256)
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)

    labels = segment(
        stack,
        points=[[3, 32, 36]],  # napari order: (frame, row, col)
        labels=[1],  # 1 = inside the object, 0 = outside
        model=model,
        device="cpu",
        progress=lambda done, total: print(f"\rframe {done}/{total}", end="", flush=True),
    )
    print()
    print(f"labels: shape {labels.shape}, dtype {labels.dtype}, ids {np.unique(labels).tolist()}")
    print("pixels per frame:", [int(n) for n in (labels > 0).sum(axis=(1, 2))])


if __name__ == "__main__":
    main()
