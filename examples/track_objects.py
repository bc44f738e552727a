"""Track two objects through a time series with the engine, correct one frame, re-propagate.

    python examples/track_objects.py [path/to/sam2.1_hiera_tiny.pt]

Without a checkpoint it runs on random weights (biased to draw masks), which shows the API at
work in seconds on a CPU; the masks mean something only with the official weights.
"""

import sys

import numpy as np
import torch

from napari_sam2.engine.tracker import Tracker
from napari_sam2.model import build_sam2


def moving_cells(frames: int = 10, size: int = 96) -> np.ndarray:
    """(t, y, x) uint16: two bright discs crossing the field, on textured background."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:size, :size]
    stack = rng.normal(500, 60, size=(frames, size, size))
    for t in range(frames):
        for cy, cx in ((30, 20 + 4 * t), (70, 80 - 4 * t)):
            stack[t][(rows - cy) ** 2 + (cols - cx) ** 2 < 10**2] += 2500
    return np.clip(stack, 0, 65535).astype(np.uint16)


def main(checkpoint: str | None = None) -> None:
    model = build_sam2("sam2.1_hiera_tiny", checkpoint, image_size=None if checkpoint else 256)
    if checkpoint is None:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(4.0)
    stack = moving_cells()
    tracker = Tracker(model, stack)  # frames are read lazily, one at a time

    # Points are (x, y) = (column, row); labels 1 inside, 0 outside.
    tracker.set_prompts(0, obj_id=1, points=[[20, 30]], labels=[1])
    tracker.set_prompts(0, obj_id=2, box=[68, 58, 92, 82])
    for frame, logits in tracker.propagate(0, "forward"):
        areas = {obj: int((lg > 0).sum()) for obj, lg in logits.items()}
        print(f"frame {frame}: mask areas {areas}")

    # A correction on a tracked frame becomes a conditioning frame; propagate again from it.
    tracker.set_prompts(6, obj_id=1, points=[[44, 30], [70, 70]], labels=[1, 0])
    for frame, logits in tracker.propagate(6, "both", max_frames=3):
        print(f"re-propagated frame {frame}: objects {sorted(logits)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
