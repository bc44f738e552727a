"""Memory attention (RoPE self- and cross-attention) against Meta's classes."""

from __future__ import annotations

import pytest
import torch

from napari_sam2.model.memory_attention import (
    RoPEAttention,
    apply_rotary,
    axial_rotary_angles,
    build_memory_attention,
)
from tests._oracle import assert_close, randomise_, require_oracle

MEM_DIM = 64


def oracle_memory_attention(side: int):
    """Meta's MemoryAttention with the yaml's parameters on a side x side grid."""
    require_oracle()
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.sam.transformer import RoPEAttention as OracleRoPE

    def rope(**extra):
        return OracleRoPE(
            rope_theta=10000.0,
            feat_sizes=[side, side],
            embedding_dim=256,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            **extra,
        )

    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=rope(rope_k_repeat=True, kv_in_dim=MEM_DIM),
        d_model=256,
        dim_feedforward=2048,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=rope(),
    )
    model = MemoryAttention(d_model=256, pos_enc_at_input=True, layer=layer, num_layers=4)
    return randomise_(model, seed=side).eval()


@pytest.fixture(scope="module")
def oracles():
    """Oracle modules by grid side, built once (each holds 4 layers of 256 x 2048 MLPs)."""
    return {side: oracle_memory_attention(side) for side in (16, 20)}


def test_state_dict_keys_and_shapes_match(oracles):
    ref = oracles[16].state_dict()
    ours = build_memory_attention(feat_size=(16, 16)).state_dict()
    assert list(ours) == list(ref)
    for key, value in ref.items():
        assert ours[key].shape == value.shape, key


@pytest.mark.parametrize(
    ("side", "batch", "num_frames", "num_ptr_tokens"),
    [
        (16, 1, 1, 0),
        (16, 2, 2, 4),
        (16, 1, 2, 0),
        (20, 1, 1, 4),
        (20, 2, 2, 0),
        (20, 2, 1, 4),
    ],
)
def test_forward_matches_oracle(oracles, side, batch, num_frames, num_ptr_tokens):
    ref_model = oracles[side]
    ours = build_memory_attention(feat_size=(side, side)).eval()
    ours.load_state_dict(ref_model.state_dict(), strict=True)

    gen = torch.Generator().manual_seed(100 * side + 10 * batch + num_frames + num_ptr_tokens)
    num_tokens = side * side
    num_mem = num_frames * num_tokens + num_ptr_tokens
    curr = torch.randn(num_tokens, batch, 256, generator=gen)
    curr_pos = torch.randn(num_tokens, batch, 256, generator=gen)
    memory = torch.randn(num_mem, batch, MEM_DIM, generator=gen)
    memory_pos = torch.randn(num_mem, batch, MEM_DIM, generator=gen)

    with torch.no_grad():
        expected = ref_model(
            curr=[curr],
            curr_pos=[curr_pos],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_ptr_tokens,
        )
        got = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=num_ptr_tokens)
    assert_close(got, expected, what=f"memory attention {side}x{side}")


def test_grid_follows_token_count_when_feat_size_differs(oracles):
    """Built for 1024 input (64x64 grid) but run at 320: the square grid is inferred."""
    ref_model = oracles[20]
    ours = build_memory_attention().eval()
    ours.load_state_dict(ref_model.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(7)
    curr, curr_pos = torch.randn(2, 400, 1, 256, generator=gen)
    memory, memory_pos = torch.randn(2, 800 + 4, 1, MEM_DIM, generator=gen)
    with torch.no_grad():
        expected = ref_model([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=4)
        got = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
    assert_close(got, expected, what="inferred grid")


def test_rotary_matches_oracle_complex_formulation():
    require_oracle()
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 48, 32, generator=gen)
    k = torch.randn(2, 1, 3 * 48, 32, generator=gen)
    # A non-square grid (6 rows x 8 columns); Meta's feat_sizes are [width, height].
    ref_q, ref_k = apply_rotary_enc(q, k, compute_axial_cis(32, 8, 6), repeat_freqs_k=True)
    angles = axial_rotary_angles(32, 6, 8)
    cos, sin = angles.cos(), angles.sin()
    assert_close(apply_rotary(q, cos, sin), ref_q, what="rotated queries")
    assert_close(apply_rotary(k, cos.repeat(3, 1), sin.repeat(3, 1)), ref_k, what="keys")


def test_object_pointer_tokens_are_not_rotated():
    """The last ``num_k_exclude_rope`` keys reach the attention as plain projections; the
    others (except token 0, whose angle is zero) are rotated."""
    torch.manual_seed(0)
    attn = RoPEAttention(32, 1, kv_in_dim=16, rope_k_repeat=True, feat_size=(4, 4)).eval()
    q = torch.randn(1, 16, 32)
    k = torch.randn(1, 32 + 2, 16)
    seen = {}
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(qh, kh, vh, **kwargs):
        seen["keys"] = kh
        return original(qh, kh, vh, **kwargs)

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        attn(q, k, k, num_k_exclude_rope=2)
    projected = attn.k_proj(k).unsqueeze(1)
    torch.testing.assert_close(seen["keys"][..., 32:, :], projected[..., 32:, :])
    assert not torch.allclose(seen["keys"][..., 1:32, :], projected[..., 1:32, :])


def test_rejects_memory_that_is_not_whole_frames():
    model = build_memory_attention(feat_size=(4, 4), num_layers=1).eval()
    curr = torch.randn(16, 1, 256)
    memory = torch.randn(20, 1, MEM_DIM)
    with pytest.raises(ValueError, match="num_obj_ptr_tokens"):
        model(curr, memory, curr, memory, num_obj_ptr_tokens=0)
    with pytest.raises(ValueError, match="batch size"):
        model(curr, torch.randn(16, 2, MEM_DIM), curr, None)


def test_bfloat16_memory_is_accepted_with_float32_frame():
    model = build_memory_attention(feat_size=(4, 4), num_layers=1).eval()
    curr = torch.randn(16, 1, 256)
    memory = torch.randn(32 + 4, 1, MEM_DIM)
    with torch.no_grad():
        exact = model(curr, memory, curr, memory, num_obj_ptr_tokens=4)
        low = model(curr, memory.bfloat16(), curr, memory.bfloat16(), num_obj_ptr_tokens=4)
    assert low.dtype == torch.float32
    assert_close(low, exact, rtol=3e-2, what="bfloat16 memory")


def test_real_rotation_equals_complex_rotation():
    """The real formulation (used on MPS) and the complex one (elsewhere) agree."""
    from napari_sam2.model.memory_attention import RotaryTable, axial_rotary_angles

    angles = axial_rotary_angles(32, 4, 6)
    table = RotaryTable.from_angles(angles)
    assert table.phasors is not None
    real_only = RotaryTable(table.cos, table.sin, None)
    tokens = torch.randn(2, 1, 3 * 24, 32, generator=torch.Generator().manual_seed(0))
    fast = table.rotate(tokens, repeats=3)
    slow = real_only.rotate(tokens, repeats=3)
    assert torch.allclose(fast, slow, atol=1e-6)
    assert not torch.allclose(fast, tokens)
