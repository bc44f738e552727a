"""Parity of our MaskDecoder and TwoWayTransformer with Meta's, on randomised weights."""

from __future__ import annotations

import pytest
import torch

from napari_sam2.model.attention import Attention
from napari_sam2.model.mask_decoder import MaskDecoder, stability_scores
from napari_sam2.model.two_way_transformer import TwoWayTransformer
from tests._oracle import assert_close, build_oracle_base, randomise_, require_oracle

DIM = 256
GRID = 16
BATCH = 2

# Every official config (SAM 2.0 and 2.1, all four sizes) sets these same decoder flags; the
# state-dict test below checks that 2.0 and 2.1 decoders have the same keys and shapes.
OFFICIAL = dict(
    use_high_res_features=True,
    iou_prediction_use_sigmoid=True,
    pred_obj_scores=True,
    pred_obj_scores_mlp=True,
    use_multimask_token_for_obj_ptr=True,
)
# SAM2Base's own defaults: no high-res path, no object-score head, IoU without a sigmoid.
BASE_DEFAULTS = dict(
    use_high_res_features=False,
    iou_prediction_use_sigmoid=False,
    pred_obj_scores=False,
    pred_obj_scores_mlp=False,
    use_multimask_token_for_obj_ptr=False,
)
LINEAR_OBJ_HEAD = dict(OFFICIAL, pred_obj_scores_mlp=False, use_multimask_token_for_obj_ptr=False)
CONFIGS = {
    "official": OFFICIAL,
    "base_defaults": BASE_DEFAULTS,
    "linear_obj_head": LINEAR_OBJ_HEAD,
}
# Weight seeds under which every mask token yields a mask that is neither empty nor full.
BALANCED_SEED = {"official": 0, "base_defaults": 5, "linear_obj_head": 0}

DYNAMIC = dict(
    dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05,
    dynamic_multimask_stability_thresh=0.98,
)


def make_pair(flags: dict, seed: int = 0):
    """(ours, oracle) decoders with the same randomised weights, in eval mode."""
    require_oracle()
    from sam2.modeling.sam.mask_decoder import MaskDecoder as OracleDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer as OracleTransformer

    oracle = OracleDecoder(
        transformer_dim=DIM,
        transformer=OracleTransformer(depth=2, embedding_dim=DIM, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        **flags,
    )
    randomise_(oracle, seed=seed).eval()
    ours = MaskDecoder(
        transformer_dim=DIM,
        transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        **flags,
    ).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return ours, oracle


def make_inputs(seed: int = 1, image_batch: int = 1) -> dict:
    """Decoder inputs for BATCH prompts at a 16x16 embedding grid (input size 256)."""
    gen = torch.Generator().manual_seed(seed)

    def noise(*shape):
        return torch.randn(*shape, generator=gen)

    return dict(
        image_embeddings=noise(image_batch, DIM, GRID, GRID),
        image_pe=noise(1, DIM, GRID, GRID),
        sparse_prompt_embeddings=noise(BATCH, 3, DIM),
        dense_prompt_embeddings=noise(BATCH, DIM, GRID, GRID),
        repeat_image=image_batch == 1,
        high_res_features=[
            noise(BATCH, DIM // 8, 4 * GRID, 4 * GRID),
            noise(BATCH, DIM // 4, 2 * GRID, 2 * GRID),
        ],
    )


def run_both(ours, oracle, inputs, multimask_output):
    with torch.no_grad():
        got = ours(multimask_output=multimask_output, **inputs)
        ref = oracle(multimask_output=multimask_output, **inputs)
    for name, mine, theirs in zip(("masks", "iou", "tokens", "object score"), got, ref):
        assert_close(mine, theirs, what=name)
    return got, ref


def single_mask_stability(decoder, inputs) -> torch.Tensor:
    """(B,) stability score of token 0's mask, the quantity the fallback tests."""
    with torch.no_grad():
        all_masks = decoder.predict_masks(**inputs)[0]
    return stability_scores(all_masks[:, 0], decoder.dynamic_multimask_stability_delta)


@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_decoder_matches_oracle(config, multimask_output):
    ours, oracle = make_pair(CONFIGS[config], seed=BALANCED_SEED[config])
    (masks, iou, tokens, obj), _ = run_both(ours, oracle, make_inputs(), multimask_output)

    count = 3 if multimask_output else 1
    assert masks.shape == (BATCH, count, 4 * GRID, 4 * GRID)
    assert iou.shape == (BATCH, count)
    uses_multimask_tokens = multimask_output and CONFIGS[config]["use_multimask_token_for_obj_ptr"]
    assert tokens.shape == (BATCH, 3 if uses_multimask_tokens else 1, DIM)
    assert obj.shape == (BATCH, 1)
    # The comparison means something only if the masks are neither empty nor full.
    positive = (masks > 0).float().mean(dim=(-2, -1))
    assert ((positive > 0.02) & (positive < 0.98)).all(), positive
    if CONFIGS[config]["pred_obj_scores"]:
        assert obj.abs().max() < 10
    else:
        assert torch.equal(obj, torch.full((BATCH, 1), 10.0))
    if CONFIGS[config]["iou_prediction_use_sigmoid"]:
        assert ((iou > 0) & (iou < 1)).all()


def test_decoder_without_repeat_image_matches_oracle():
    ours, oracle = make_pair(OFFICIAL, seed=5)
    inputs = make_inputs(seed=6, image_batch=BATCH)
    run_both(ours, oracle, inputs, multimask_output=True)
    run_both(ours, oracle, inputs, multimask_output=False)


def test_stability_fallback_triggers_and_matches_oracle():
    ours, oracle = make_pair(dict(OFFICIAL, **DYNAMIC))
    inputs = make_inputs()
    stability = single_mask_stability(ours, inputs)
    assert (stability < 0.98).all(), f"fallback should trigger; stability {stability}"

    (masks, iou, _, _), _ = run_both(ours, oracle, inputs, multimask_output=False)
    with torch.no_grad():
        all_masks, all_iou, _, _ = ours.predict_masks(**inputs)
    best = all_iou[:, 1:].argmax(dim=1)
    rows = torch.arange(BATCH)
    assert torch.equal(masks[:, 0], all_masks[:, 1:][rows, best])
    assert torch.equal(iou[:, 0], all_iou[:, 1:][rows, best])
    assert not torch.equal(masks[:, 0], all_masks[:, 0])


def test_stability_fallback_stays_off_for_stable_masks_and_matches_oracle():
    ours, oracle = make_pair(dict(OFFICIAL, **DYNAMIC))
    # Sharper single-mask logits leave few pixels within +-delta of zero: a stable mask.
    with torch.no_grad():
        for decoder in (ours, oracle):
            last = decoder.output_hypernetworks_mlps[0].layers[-1]
            last.weight.mul_(20)
            last.bias.mul_(20)
    inputs = make_inputs()
    stability = single_mask_stability(ours, inputs)
    assert (stability >= 0.98).all(), f"fallback should not trigger; stability {stability}"

    (masks, iou, _, _), _ = run_both(ours, oracle, inputs, multimask_output=False)
    with torch.no_grad():
        all_masks, all_iou, _, _ = ours.predict_masks(**inputs)
    assert torch.equal(masks, all_masks[:, :1])
    assert torch.equal(iou, all_iou[:, :1])


def test_stability_selection_per_item_matches_oracle():
    """A batch with one stable and one unstable single mask picks per item."""
    ours, oracle = make_pair(dict(OFFICIAL, **DYNAMIC))
    logits = torch.full((2, 4, 8, 8), -5.0)
    logits[0, 0, :4] = 5.0  # sharp edges: stable
    logits[1, 0, :4] = 0.01  # inside the +-delta band: unstable
    logits[:, 1:, :2] = 3.0
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.2], [0.5, 0.7, 0.3, 0.6]])

    masks, iou = ours.select_stable_single_mask(logits, scores)
    ref_masks, ref_iou = oracle._dynamic_multimask_via_stability(logits, scores)
    assert torch.equal(masks, ref_masks)
    assert torch.equal(iou, ref_iou)
    assert torch.equal(masks[0, 0], logits[0, 0])
    assert torch.equal(masks[1, 0], logits[1, 1])
    assert torch.equal(iou, scores[[0, 1], [0, 1]].unsqueeze(1))


def test_stability_scores_of_empty_mask_is_one():
    assert stability_scores(torch.full((1, 4, 4), -1.0), 0.05).item() == 1.0


def test_training_mode_skips_stability_fallback():
    ours, _ = make_pair(dict(OFFICIAL, **DYNAMIC))
    ours.train()
    inputs = make_inputs()
    with torch.no_grad():
        masks = ours(multimask_output=False, **inputs)[0]
        all_masks = ours.predict_masks(**inputs)[0]
    assert torch.equal(masks, all_masks[:, :1])


def test_missing_high_res_features_raise_value_error():
    ours, _ = make_pair(OFFICIAL)
    inputs = dict(make_inputs(), high_res_features=None)
    with pytest.raises(ValueError, match="high_res_features"):
        ours(multimask_output=True, **inputs)


def test_image_batch_mismatch_raises_value_error():
    ours, _ = make_pair(BASE_DEFAULTS)
    inputs = dict(make_inputs(image_batch=3), repeat_image=False)
    with pytest.raises(ValueError, match="repeat_image"):
        ours(multimask_output=True, **inputs)


def test_attention_with_kv_in_dim_matches_oracle():
    require_oracle()
    from sam2.modeling.sam.transformer import Attention as OracleAttention

    oracle = randomise_(OracleAttention(DIM, 8, downsample_rate=2, kv_in_dim=64), seed=2)
    ours = Attention(DIM, 8, downsample_rate=2, kv_in_dim=64)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, DIM, generator=gen)
    kv = torch.randn(2, 7, 64, generator=gen)
    with torch.no_grad():
        assert_close(ours(q, kv, kv), oracle(q, kv, kv), what="attention")


@pytest.mark.parametrize("preset", ["sam2_hiera_tiny", "sam2.1_hiera_tiny"])
def test_state_dict_keys_and_shapes_equal_official_model(preset):
    oracle = build_oracle_base(preset, 256)
    prefix = "sam_mask_decoder."
    expected = {
        key[len(prefix) :]: tuple(value.shape)
        for key, value in oracle.state_dict().items()
        if key.startswith(prefix)
    }
    ours = MaskDecoder(
        transformer_dim=DIM,
        transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, num_heads=8, mlp_dim=2048),
        **OFFICIAL,
    )
    assert list(ours.state_dict()) == list(expected)
    assert {key: tuple(value.shape) for key, value in ours.state_dict().items()} == expected
    ours.load_state_dict(oracle.sam_mask_decoder.state_dict(), strict=True)
