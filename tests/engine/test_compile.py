"""The torch.compile option wires the compiled image encoder into the tracker."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam2.engine.tracker import Tracker
from napari_sam2.model import build_sam2


def test_compiled_encoder_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_tiny", image_size=256)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(4.0)
    frame = np.random.default_rng(1).normal(100, 20, size=(64, 80)).astype(np.float32)
    plain = Tracker(model, frame).set_prompts(0, 1, points=[[30, 30]], labels=[1])
    # "eager" traces through dynamo without generating code: it checks the wiring quickly.
    compiled = Tracker(model, frame, compile_backend="eager")
    assert compiled._compiled_encoder is not None
    logits = compiled.set_prompts(0, 1, points=[[30, 30]], labels=[1])
    np.testing.assert_allclose(logits[1], plain[1], rtol=1e-4, atol=1e-4)
    assert (logits[1] > 0).any()
