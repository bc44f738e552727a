"""Shared helpers of the plugin tests: a tiny random-weight model and small stacks."""

from __future__ import annotations

import threading

import numpy as np
import torch

from napari_sam2._napari.jobs import Job
from napari_sam2._sample_data import make_demo_stack
from napari_sam2.engine.tracker import Tracker
from napari_sam2.model import build_sam2

IMAGE_SIZE = 256


def tiny_model():
    """Random-weight sam2.1 tiny at input size 256 whose object-score head says "object", so
    masks are neither empty nor absent."""
    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_tiny", image_size=IMAGE_SIZE)
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)
    return model


def small_stack(frames: int = 5, side: int = 64) -> np.ndarray:
    """(frames, side, side) uint16 demo stack."""
    return make_demo_stack((frames, side, side), seed=1)


def headless(model, frames, **kwargs) -> Tracker:
    """The engine alone on the same frames, for comparisons."""
    return Tracker(model, frames, **kwargs)


def apply_masks(shadow: np.ndarray, frame: int, logits_by_id: dict) -> None:
    """Write engine logits into a numpy labels stack by the engine's one overlap policy, to
    compare the plugin's Labels layer with the engine run alone."""
    from napari_sam2.engine.session import label_frame

    shadow[frame] = label_frame(shadow[frame], logits_by_id)


class ThreadedRunner:
    """Runs each job's work in a plain thread and keeps the deliveries for the test to make
    (the main-thread half of a real runner)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def start(self, job: Job) -> None:
        def drain() -> None:
            for _ in job.run():
                pass

        thread = threading.Thread(target=drain, daemon=True)
        self.threads.append(thread)
        thread.start()
