"""Parity of the assembled network's per-frame steps with Meta's SAM2Base, at 1e-4 of scale:
image features, decoding with points/box/mask, mask-as-output, memory encoding, and memory
attention with object pointers, on a SAM 2.0 and a SAM 2.1 preset at input size 256."""

from __future__ import annotations

import pytest
import torch

from napari_sam2.model import build_sam2
from napari_sam2.model.sam2 import PointerMemory, SpatialMemory
from tests._oracle import assert_close, build_oracle_video_predictor, randomise_

PRESETS = ["sam2_hiera_tiny", "sam2.1_hiera_tiny"]
SIZE = 256


@pytest.fixture(scope="module", params=PRESETS)
def pair(request):
    # The video predictor: SAM2Base with the post-processing settings our presets carry.
    oracle = build_oracle_video_predictor(request.param, SIZE)
    randomise_(oracle, seed=3, scale=0.05)
    with torch.no_grad():
        oracle.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(2.0)
    ours = build_sam2(request.param, image_size=SIZE, fill_hole_area=0)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs_out = oracle.forward_image(image)
        _, feats, pos, sizes = oracle._prepare_backbone_features(theirs_out)
        features = ours.encode_image(image)
    return oracle, ours, features, (feats, pos, sizes)


def _oracle_high_res(feats, sizes):
    return [
        x.permute(1, 2, 0).view(x.size(1), x.size(2), *s) for x, s in zip(feats[:-1], sizes[:-1])
    ]


def test_image_features_match(pair):
    _, _, features, (feats, pos, sizes) = pair
    top = feats[-1].permute(1, 2, 0).view(1, 256, *sizes[-1])
    assert_close(features.top, top, what="top features")
    for ours_map, ref in zip(features.high_res, _oracle_high_res(feats, sizes)):
        assert_close(ours_map, ref, what="high-res features")
    assert_close(features.top_pos, pos[-1].permute(1, 2, 0).view(1, 256, *sizes[-1]), what="pos")


@pytest.mark.parametrize("prompt", ["click", "box+click", "two clicks with mask"])
def test_decoding_matches(pair, prompt):
    oracle, ours, features, (feats, _, sizes) = pair
    coords = torch.tensor([[[100.0, 120.0]]])
    labels = torch.tensor([[1]], dtype=torch.int32)
    mask = None
    if prompt == "box+click":
        coords = torch.tensor([[[60.0, 70.0], [180.0, 200.0], [100.0, 120.0]]])
        labels = torch.tensor([[2, 3, 1]], dtype=torch.int32)
    elif prompt == "two clicks with mask":
        coords = torch.tensor([[[100.0, 120.0], [20.0, 30.0]]])
        labels = torch.tensor([[1, 0]], dtype=torch.int32)
        mask = torch.randn(1, 1, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(2))
    multimask = ours.wants_multimask(labels.shape[1])
    pix = ours.without_memory(features)
    with torch.no_grad():
        got = ours.decode(
            pix, features.high_res, points=(coords, labels), mask_logits=mask, multimask=multimask
        )
        ref = oracle._forward_sam_heads(
            backbone_features=pix,
            point_inputs={"point_coords": coords, "point_labels": labels},
            mask_inputs=mask,
            high_res_features=_oracle_high_res(feats, sizes),
            multimask_output=multimask,
        )
    low_multi, _, ious, low, _, ptr, score = ref
    assert_close(got.low_res_multi, low_multi, what="candidate masks")
    assert_close(got.ious, ious, what="IoU predictions")
    assert_close(got.low_res, low, what="chosen mask")
    assert_close(got.obj_ptr, ptr, what="object pointer")
    assert_close(got.object_score, score, what="object score")
    assert torch.equal(got.low_res > 0, low > 0)
    inside = (low > 0).float().mean().item()
    assert 0.0 < inside < 1.0, "the parity scenario must compare a real mask"


def test_mask_as_output_matches(pair):
    oracle, ours, features, (feats, _, sizes) = pair
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 60:150, 80:200] = 1
    with torch.no_grad():
        got = ours.mask_as_output(features, mask)
        ref = oracle._use_mask_as_output(features.top, _oracle_high_res(feats, sizes), mask)
    assert_close(got.low_res, ref[3], what="mask logits")
    assert_close(got.obj_ptr, ref[5], what="pointer")
    assert_close(got.object_score, ref[6], what="score")


@pytest.mark.parametrize("binarize", [True, False])
@pytest.mark.parametrize("present", [True, False])
def test_memory_encoding_matches(pair, binarize, present):
    oracle, ours, features, (feats, _, sizes) = pair
    logits = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 5
    score = torch.tensor([[3.0 if present else -3.0]])
    with torch.no_grad():
        got = ours.encode_memory(features, logits, score, binarize=binarize)
        ref, ref_pos = oracle._encode_new_memory(feats, sizes, logits, score, binarize)
    assert_close(got, ref, what="memory features")
    assert_close(ours.memory_position("cpu"), ref_pos[-1], what="memory position")


@pytest.mark.parametrize("backward", [False, True])
def test_memory_attention_with_pointers_matches(pair, backward):
    oracle, ours, features, (feats, pos, sizes) = pair
    gen = torch.Generator().manual_seed(5)
    side = SIZE // 16

    def memory():
        return {
            "maskmem_features": torch.randn(1, 64, side, side, generator=gen).to(torch.bfloat16),
            "maskmem_pos_enc": [ours.memory_position("cpu")],
            "obj_ptr": torch.randn(1, 256, generator=gen),
        }

    step = 1 if backward else -1
    current = 5
    cond_frame = current + 5 * step  # the prompt lies five frames behind
    cond = {cond_frame: memory()}
    recent = {current + step: memory(), current + 2 * step: memory()}
    with torch.no_grad():
        ref = oracle._prepare_memory_conditioned_features(
            frame_idx=current,
            is_init_cond_frame=False,
            current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:],
            feat_sizes=sizes[-1:],
            output_dict={"cond_frame_outputs": cond, "non_cond_frame_outputs": recent},
            num_frames=11,
            track_in_reverse=backward,
        )
        sign = -1 if backward else 1
        offset = (current - cond_frame) * sign if ours.config.version == "2.1" else 5
        spatial = [
            SpatialMemory(0, cond[cond_frame]["maskmem_features"]),
            SpatialMemory(5, recent[current + 2 * step]["maskmem_features"]),
            SpatialMemory(6, recent[current + step]["maskmem_features"]),
        ]
        pointers = [
            PointerMemory(offset, cond[cond_frame]["obj_ptr"]),
            PointerMemory(1, recent[current + step]["obj_ptr"]),
            PointerMemory(2, recent[current + 2 * step]["obj_ptr"]),
        ]
        got = ours.with_memory(
            features, spatial, pointers, ours.memory_position("cpu"), num_frames=11
        )
    assert_close(got, ref, what="memory-conditioned features")
