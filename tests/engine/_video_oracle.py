"""Run our Tracker and Meta's SAM2VideoPredictor side by side on the same weights and frames."""

from __future__ import annotations

import numpy as np
import torch

from napari_sam2.model import build_sam2
from tests._oracle import build_oracle_video_predictor, require_oracle

#: Bias of the object-score head so random weights predict an object (DESIGN.md section 4).
OBJECT_SCORE_BIAS = 4.0


def synthetic_stack(num_frames: int = 8, height: int = 96, width: int = 128, seed: int = 0):
    """uint16 frames (T, H, W) with a bright disc drifting right over textured noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    frames = rng.normal(800, 120, size=(num_frames, height, width))
    for t in range(num_frames):
        cy, cx = height * 0.5, width * 0.3 + t * 4
        inside = (rows - cy) ** 2 + (cols - cx) ** 2 < (height * 0.18) ** 2
        frames[t][inside] += 3000
    return np.clip(frames, 0, 65535).astype(np.uint16)


def _upcast_oracle_memory(oracle) -> None:
    """Meta's predictor stores memories in bfloat16 and crashes on the CPU (bf16 x fp32 matmul)
    when a frame reads no object pointer, whose float32 tokens would otherwise upcast them.
    Upcasting first is what the concatenation does in every other case."""
    attention = oracle.memory_attention
    original = attention.forward

    def forward(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        return original(
            curr=curr,
            memory=memory.float(),
            curr_pos=curr_pos,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )

    attention.forward = forward


class SideBySide:
    """Our network and tracker, Meta's predictor and state, sharing weights and input frames."""

    def __init__(self, preset, image_size, frames, monkeypatch, *, corrections_as_conditioning):
        require_oracle()
        import sam2.sam2_video_predictor as video_module

        from napari_sam2.engine.tracker import Tracker

        extra = []
        if corrections_as_conditioning:
            extra.append("++model.add_all_frames_to_correct_as_cond=true")
        self.oracle = build_oracle_video_predictor(preset, image_size, extra=extra)
        with torch.no_grad():
            head = self.oracle.sam_mask_decoder.pred_obj_score_head.layers[-1]
            head.bias.fill_(OBJECT_SCORE_BIAS)
        _upcast_oracle_memory(self.oracle)
        self.model = build_sam2(preset, image_size=image_size, fill_hole_area=0)
        self.model.load_state_dict(self.oracle.state_dict(), strict=True)
        # Parity is checked in float32, whatever "auto" would choose on this machine.
        self.tracker = Tracker(
            self.model,
            frames,
            corrections_as_conditioning=corrections_as_conditioning,
            precision="float32",
        )
        height, width = self.tracker.frame_shape
        inputs = torch.cat(
            [self.tracker.frames.model_input(t, image_size) for t in range(len(frames))]
        )
        monkeypatch.setattr(
            video_module, "load_video_frames", lambda *a, **k: (inputs, height, width)
        )
        self.state = self.oracle.init_state(video_path="unused")

    # ---- prompts on both sides
    def points(self, frame, obj_id, points, labels=None, box=None):
        ours = self.tracker.set_prompts(frame, obj_id, points=points, labels=labels, box=box)
        _, ids, masks = self.oracle.add_new_points_or_box(
            self.state, frame, obj_id, points=points, labels=labels, box=box
        )
        return ours, dict(zip(ids, masks[:, 0]))

    def mask(self, frame, obj_id, mask):
        ours = self.tracker.set_prompts(frame, obj_id, mask=mask)
        _, ids, masks = self.oracle.add_new_mask(self.state, frame, obj_id, mask)
        return ours, dict(zip(ids, masks[:, 0]))

    def propagate(self, start, reverse=False, max_frames=None):
        """Both sides from ``start`` in one direction; returns lists of per-frame dicts."""
        direction = "backward" if reverse else "forward"
        ours = list(self.tracker.propagate(start, direction, max_frames))
        limit = None if max_frames is None else max_frames - 1
        theirs = [
            (frame, dict(zip(ids, masks[:, 0])))
            for frame, ids, masks in self.oracle.propagate_in_video(
                self.state, start, max_frame_num_to_track=limit, reverse=reverse
            )
        ]
        return ours, theirs


def assert_frame_outputs_match(ours: dict, theirs: dict, where: str = ""):
    """Logits within 1e-2 of their scale and masks with IoU >= 0.99, object by object."""
    for obj_id, ref in theirs.items():
        if obj_id not in ours:
            assert float(ref.max()) <= -1000, f"{where}: object {obj_id} missing"
            continue
        got = torch.as_tensor(ours[obj_id])
        ref = ref.float()
        scale = float(ref.abs().max())
        err = float((got - ref).abs().max())
        assert err <= 1e-2 * max(scale, 1.0), f"{where} object {obj_id}: max error {err}"
        ours_mask, ref_mask = got > 0, ref > 0
        union = (ours_mask | ref_mask).sum().item()
        if union:
            iou = (ours_mask & ref_mask).sum().item() / union
            assert iou >= 0.99, f"{where} object {obj_id}: IoU {iou:.4f}"


def assert_runs_match(ours, theirs, where=""):
    assert [f for f, _ in ours] == [f for f, _ in theirs], f"{where}: frame order differs"
    for (frame, got), (_, ref) in zip(ours, theirs):
        assert sorted(got) == sorted(int(i) for i in ref), f"{where} frame {frame}: objects"
        assert_frame_outputs_match(got, ref, f"{where} frame {frame}")


def mask_fraction(outputs) -> float:
    """Mean share of pixels inside over all frames and objects (to prove masks are real)."""
    fractions = [float((np.asarray(v) > 0).mean()) for _, d in outputs for v in d.values()]
    return float(np.mean(fractions))
