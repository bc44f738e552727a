"""CUDA checks: run only where a GPU is present (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2.engine.tracker import Tracker
from napari_sam2.model import build_sam2
from tests.engine._video_oracle import synthetic_stack

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _biased_model(device):
    model = build_sam2("sam2.1_hiera_tiny", image_size=256, device=device)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(4.0)
    return model


def test_cuda_tracking_agrees_with_cpu():
    frames = synthetic_stack(6)
    torch.manual_seed(0)
    cpu_model = _biased_model("cpu")
    gpu_model = _biased_model("cuda")
    gpu_model.load_state_dict(cpu_model.state_dict())
    results = []
    for model in (cpu_model, gpu_model):
        tracker = Tracker(model, frames)
        tracker.set_prompts(0, 1, points=[[40, 48]], labels=[1])
        results.append({f: out[1] > 0 for f, out in tracker.propagate(0)})
    for frame, cpu_mask in results[0].items():
        gpu_mask = results[1][frame]
        union = np.logical_or(cpu_mask, gpu_mask).sum()
        if union:
            iou = np.logical_and(cpu_mask, gpu_mask).sum() / union
            assert iou > 0.9, f"frame {frame}: IoU {iou:.3f} between bf16 CUDA and fp32 CPU"


def test_gpu_memory_stays_flat_with_stack_length():
    model = _biased_model("cuda")
    peaks = []
    for length in (8, 24):
        tracker = Tracker(model, synthetic_stack(length), feature_cache_bytes=0)
        tracker.set_prompts(0, 1, points=[[40, 48]], labels=[1])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in tracker.propagate(0):
            pass
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] <= peaks[0] * 1.05 + 2**20, f"peak grew from {peaks[0]} to {peaks[1]} bytes"
