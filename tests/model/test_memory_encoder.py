"""Memory encoder against Meta's classes."""

from __future__ import annotations

import pytest
import torch

from napari_sam2.model.memory_encoder import build_memory_encoder
from tests._oracle import assert_close, randomise_, require_oracle


@pytest.fixture(scope="module")
def oracle_encoder():
    """Meta's MemoryEncoder with the yaml's parameters, random weights."""
    require_oracle()
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    model = MemoryEncoder(
        out_dim=64,
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(
            CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6),
            num_layers=2,
        ),
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=64, normalize=True, scale=None, temperature=10000
        ),
    )
    return randomise_(model, seed=1).eval()


def test_state_dict_keys_and_shapes_match(oracle_encoder):
    ref = oracle_encoder.state_dict()
    ours = build_memory_encoder().state_dict()
    assert list(ours) == list(ref)
    for key, value in ref.items():
        assert ours[key].shape == value.shape, key


@pytest.mark.parametrize(
    ("side", "batch", "skip_mask_sigmoid"),
    [(16, 1, False), (16, 2, True), (20, 2, False), (20, 1, True)],
)
def test_forward_matches_oracle(oracle_encoder, side, batch, skip_mask_sigmoid):
    ours = build_memory_encoder().eval()
    ours.load_state_dict(oracle_encoder.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(side + batch)
    pix_feat = torch.randn(batch, 256, side, side, generator=gen)
    # Logits spread widely, or (as the model feeds it) a scaled, shifted sigmoid.
    masks = 8 * torch.randn(batch, 1, 16 * side, 16 * side, generator=gen)
    if skip_mask_sigmoid:
        masks = torch.sigmoid(masks) * 20.0 - 10.0

    with torch.no_grad():
        expected = oracle_encoder(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
        got = ours(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)

    assert set(got) == {"vision_features", "vision_pos_enc"}
    assert_close(got["vision_features"], expected["vision_features"], what="features")
    assert len(got["vision_pos_enc"]) == 1
    assert_close(got["vision_pos_enc"][0], expected["vision_pos_enc"][0], what="pos enc")


def test_sigmoid_switch_changes_the_result(oracle_encoder):
    ours = build_memory_encoder().eval()
    ours.load_state_dict(oracle_encoder.state_dict(), strict=True)
    pix_feat = torch.randn(1, 256, 4, 4)
    masks = torch.randn(1, 1, 64, 64) * 5
    with torch.no_grad():
        with_sigmoid = ours(pix_feat, masks)["vision_features"]
        without = ours(pix_feat, masks, skip_mask_sigmoid=True)["vision_features"]
    assert not torch.allclose(with_sigmoid, without)


def test_pos_enc_is_a_fresh_tensor():
    encoder = build_memory_encoder().eval()
    with torch.no_grad():
        first = encoder(torch.randn(1, 256, 4, 4), torch.randn(1, 1, 64, 64))
        first["vision_pos_enc"][0].zero_()
        second = encoder(torch.randn(1, 256, 4, 4), torch.randn(1, 1, 64, 64))
    assert second["vision_pos_enc"][0].abs().max() > 0.5


def test_rejects_mask_of_wrong_size():
    encoder = build_memory_encoder().eval()
    with pytest.raises(ValueError, match="input size"):
        encoder(torch.randn(1, 256, 4, 4), torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        encoder(torch.randn(1, 256, 4, 4), torch.randn(1, 64, 64))
