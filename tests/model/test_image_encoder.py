"""Parity of our Hiera trunk, FPN neck and image encoder with Meta's SAM 2 (the oracle)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from napari_sam2.model.hiera import Hiera, max_pool_tokens, merge_windows, split_into_windows
from napari_sam2.model.neck import FpnNeck, ImageEncoder, build_image_encoder
from tests._oracle import ORACLE_CONFIGS, assert_close, randomise_, require_oracle

_DEFAULT_WINDOWS = [8, 4, 14, 7]

#: Trunk hyper-parameters per preset, read off the official configs (base_plus relies on the
#: Hiera defaults for everything but width and heads).
TRUNKS = {
    "tiny": dict(
        embed_dim=96,
        num_heads=1,
        stages=[1, 2, 7, 2],
        global_att_blocks=[5, 7, 9],
        window_spec=_DEFAULT_WINDOWS,
        window_pos_embed_bkg_spatial_size=[7, 7],
        backbone_channel_list=[768, 384, 192, 96],
    ),
    "small": dict(
        embed_dim=96,
        num_heads=1,
        stages=[1, 2, 11, 2],
        global_att_blocks=[7, 10, 13],
        window_spec=_DEFAULT_WINDOWS,
        window_pos_embed_bkg_spatial_size=[7, 7],
        backbone_channel_list=[768, 384, 192, 96],
    ),
    "base_plus": dict(
        embed_dim=112,
        num_heads=2,
        stages=[2, 3, 16, 3],
        global_att_blocks=[12, 16, 20],
        window_spec=_DEFAULT_WINDOWS,
        window_pos_embed_bkg_spatial_size=[14, 14],
        backbone_channel_list=[896, 448, 224, 112],
    ),
    "large": dict(
        embed_dim=144,
        num_heads=2,
        stages=[2, 6, 36, 4],
        global_att_blocks=[23, 33, 43],
        window_spec=[8, 4, 16, 8],
        window_pos_embed_bkg_spatial_size=[7, 7],
        backbone_channel_list=[1152, 576, 288, 144],
    ),
}


def trunk_of(preset: str) -> dict:
    return TRUNKS[preset.rsplit("_hiera_", 1)[1]]


def oracle_image_encoder(preset: str) -> nn.Module:
    """The oracle's ImageEncoder instantiated from the preset's official yaml, alone."""
    sam2 = require_oracle()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = os.path.join(os.path.dirname(sam2.__file__), ORACLE_CONFIGS[preset])
    return instantiate(OmegaConf.load(path).model.image_encoder)


def compare_encoders(ours: nn.Module, ref: nn.Module, pixels: torch.Tensor) -> dict:
    """Assert that every output of ``ours`` matches ``ref`` on ``pixels``; return ours."""
    with torch.no_grad():
        mine, theirs = ours(pixels), ref(pixels)
    assert set(mine) == set(theirs)
    assert_close(mine["vision_features"], theirs["vision_features"], what="vision_features")
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(mine[key]) == len(theirs[key]) == 3
        for level, (a, b) in enumerate(zip(mine[key], theirs[key], strict=True)):
            assert_close(a, b, what=f"{key}[{level}]")
    return mine


@pytest.mark.parametrize("preset", ["sam2_hiera_tiny", "sam2.1_hiera_tiny"])
def test_preset_encoder_matches_oracle(preset):
    ref = randomise_(oracle_image_encoder(preset), seed=1).eval()
    ours = build_image_encoder(**trunk_of(preset)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    out = compare_encoders(ours, ref, pixels)
    assert out["vision_features"].shape == (1, 256, 16, 16)
    assert [m.shape[-1] for m in out["backbone_fpn"]] == [64, 32, 16]


def test_large_window_spec_encoder_matches_oracle():
    """A shallow trunk with large's windows and heads. At 320 px the stage grids (80, 40, 20,
    10) need padding for the 16- and 8-token windows, also in the pooling block of stage 4."""
    require_oracle()
    from sam2.modeling.backbones.hieradet import Hiera as RefHiera
    from sam2.modeling.backbones.image_encoder import FpnNeck as RefNeck
    from sam2.modeling.backbones.image_encoder import ImageEncoder as RefEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    trunk_args = dict(
        embed_dim=16,
        num_heads=2,
        stages=[1, 2, 3, 2],
        global_att_blocks=[4],
        window_spec=[8, 4, 16, 8],
        window_pos_embed_bkg_spatial_size=[7, 7],
    )
    channels = [128, 64, 32, 16]
    ref = RefEncoder(
        RefHiera(**trunk_args),
        RefNeck(
            PositionEmbeddingSine(256),
            d_model=256,
            backbone_channel_list=channels,
            fpn_top_down_levels=[2, 3],
            fpn_interp_model="nearest",
        ),
        scalp=1,
    )
    randomise_(ref, seed=3).eval()
    ours = build_image_encoder(**trunk_args, backbone_channel_list=channels).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    pixels = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(4))
    compare_encoders(ours, ref, pixels)


def test_trunk_without_last_pooling_matches_oracle():
    """q_pool=2: the last stage widens its channels without halving the grid."""
    require_oracle()
    from sam2.modeling.backbones.hieradet import Hiera as RefHiera

    args = dict(embed_dim=16, num_heads=1, q_pool=2, stages=[1, 1, 2, 1], global_att_blocks=[3])
    args.update(window_spec=[8, 4, 8, 4], window_pos_embed_bkg_spatial_size=[5, 5])
    ref = randomise_(RefHiera(**args), seed=5).eval()
    ours = Hiera(**args).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.channel_list == ref.channel_list
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        mine, theirs = ours(pixels), ref(pixels)
    assert [m.shape[-1] for m in theirs] == [32, 16, 8, 8]
    for stage, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert_close(a, b, what=f"stage {stage}")


@pytest.fixture
def no_weight_init(monkeypatch):
    """Skip weight initialisation, so the oracle's large trunk builds in a moment."""
    for cls in (nn.Linear, nn.Conv2d, nn.LayerNorm):
        monkeypatch.setattr(cls, "reset_parameters", lambda self: None)


@pytest.mark.parametrize("preset", list(ORACLE_CONFIGS))
def test_state_dict_and_block_layout_match_oracle(preset, no_weight_init):
    ref = oracle_image_encoder(preset)
    with torch.device("meta"):
        ours = build_image_encoder(**trunk_of(preset))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes
    assert ours.trunk.channel_list == ref.trunk.channel_list
    # Window sizes, pooling and heads are not visible in the shapes: compare them per block.
    for index, (mine, theirs) in enumerate(zip(ours.trunk.blocks, ref.trunk.blocks, strict=True)):
        mine_layout = (mine.window_size, mine.q_stride, mine.attn.num_heads)
        theirs_layout = (
            theirs.window_size,
            tuple(theirs.q_stride) if theirs.q_stride else None,
            theirs.attn.num_heads,
        )
        assert mine_layout == theirs_layout, f"block {index}"


def test_max_pool_tokens_equals_max_pool2d_on_strided_input():
    grid = torch.randn(2, 5, 9, 7).permute(0, 2, 3, 1)  # (B, H, W, C), not contiguous
    expected = F.max_pool2d(grid.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)
    assert torch.equal(max_pool_tokens(grid, (2, 2)), expected)


def test_windows_round_trip_with_padding():
    grid = torch.randn(2, 10, 13, 3)
    windows, window_grid = split_into_windows(grid, 4)
    assert windows.shape == (2 * 3 * 4, 4, 4, 3)
    assert window_grid == (3, 4)
    assert torch.equal(windows[0], grid[0, :4, :4])
    assert torch.equal(merge_windows(windows, window_grid, (10, 13)), grid)


def test_bad_inputs_are_rejected():
    trunk = Hiera(embed_dim=8, num_heads=1, stages=[1, 1, 1, 1], global_att_blocks=[])
    with pytest.raises(ValueError, match="multiple of 32"):
        trunk(torch.zeros(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        trunk(torch.zeros(1, 1, 64, 64))
    with pytest.raises(TypeError):
        trunk([[0.0]])
    with pytest.raises(ValueError, match="one entry per stage"):
        Hiera(stages=[1, 1, 1], window_spec=[8, 4, 14, 7])
    with pytest.raises(ValueError, match="backbone_channel_list"):
        ImageEncoder(trunk, FpnNeck(256, [64, 32, 16, 9]))


def test_position_embedding_cache_follows_new_weights():
    """The eval-mode cache of the resized position embedding is dropped when weights change."""
    from napari_sam2.model.hiera import Hiera

    trunk = Hiera(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(2,)).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        first = trunk(pixels)[0].clone()
        again = trunk(pixels)[0]
    assert torch.equal(first, again)
    with torch.no_grad():
        trunk.pos_embed.add_(1.0)
    with torch.inference_mode():
        changed = trunk(pixels)[0]
    assert not torch.allclose(first, changed)
    with torch.no_grad():
        trunk.pos_embed.sub_(1.0)
        fresh = trunk(pixels)[0]
    assert torch.allclose(first, fresh, atol=1e-6)
