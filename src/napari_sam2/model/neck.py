"""The FPN neck and the image encoder (Hiera trunk + neck) of SAM 2.

Parameter names (``trunk.*``, ``neck.convs.N.conv.*``) follow Meta's checkpoints, so an
:class:`ImageEncoder`'s state dict equals the ``image_encoder.*`` part of an official one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam2.model.common import SinePositionEncoding
from napari_sam2.model.hiera import Hiera


class LateralConv(nn.Module):
    """A 1x1 convolution from one trunk stage's channels to the neck's width.

    A module of its own only so that the weight lives under ``convs.N.conv``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features)


class FpnNeck(nn.Module):
    """Feature pyramid over the trunk's stages, without output convolutions.

    Every stage is projected to ``d_model`` channels by a 1x1 convolution. Levels listed in
    ``fpn_top_down_levels`` (indices into the trunk's outputs, 0 = highest resolution) also
    receive the 2x nearest-upsampled result of the level below them in resolution; the others
    keep their lateral projection only.

    Args:
        d_model: output channels of every level.
        backbone_channel_list: the trunk's channels per stage, lowest resolution first
            (``Hiera.channel_list``); ``convs.N`` projects that stage.
        fpn_top_down_levels: levels that get top-down features; None means all.
        position_encoding: module mapping a (B, d_model, H, W) map to its position encoding;
            defaults to the normalised 2-D sine encoding.

    ``forward`` takes the trunk's maps, highest resolution first, each (B, C_i, H_i, W_i), and
    returns (maps, encodings): two lists in the same order of (B, d_model, H_i, W_i) tensors.
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: Sequence[int],
        fpn_top_down_levels: Sequence[int] | None = None,
        position_encoding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList(
            LateralConv(channels, d_model) for channels in self.backbone_channel_list
        )
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)
        self.position_encoding = position_encoding or SinePositionEncoding(d_model)

    def forward(
        self, stage_maps: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        num_levels = len(self.convs)
        if len(stage_maps) != num_levels:
            raise ValueError(
                f"the neck expects {num_levels} feature maps (one per trunk stage), "
                f"got {len(stage_maps)}"
            )
        maps: list[torch.Tensor] = [None] * num_levels  # type: ignore[list-item]
        running = None
        # Coarsest level first, so each level can take the one below it.
        for level in reversed(range(num_levels)):
            # convs are ordered lowest resolution first, the stage maps the other way round.
            lateral = self.convs[num_levels - 1 - level](stage_maps[level])
            if running is not None and level in self.fpn_top_down_levels:
                # The reference upsamples in float32 (and so promotes the sum); kept for parity.
                top_down = F.interpolate(running.float(), scale_factor=2.0, mode="nearest")
                running = lateral + top_down
            else:
                running = lateral
            maps[level] = running
        encodings = [self.position_encoding(m).to(m.dtype) for m in maps]
        return maps, encodings


class ImageEncoder(nn.Module):
    """Trunk and neck: pixels to the multi-scale features SAM 2's heads consume.

    ``scalp`` drops that many of the lowest-resolution levels (SAM 2 uses 1, leaving
    strides 4, 8 and 16).

    ``forward(pixels)`` takes (B, 3, S, S) normalised float pixels and returns a dict:

    - ``"vision_features"``: (B, d_model, S/16, S/16), the lowest remaining level;
    - ``"vision_pos_enc"``: list of the remaining levels' position encodings, highest
      resolution first, each shaped like its level;
    - ``"backbone_fpn"``: list of the remaining levels, highest resolution first
      ((B, d_model, S/4, S/4), (B, d_model, S/8, S/8), (B, d_model, S/16, S/16)).
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                f"trunk channels {trunk.channel_list} do not match the neck's "
                f"backbone_channel_list {neck.backbone_channel_list}; give the neck the "
                "trunk's channel_list"
            )
        if not 0 <= scalp < len(neck.convs):
            raise ValueError(f"scalp={scalp} must lie in [0, {len(neck.convs) - 1}]")
        self.trunk = trunk
        self.scalp = scalp
        self.neck = neck

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        maps, encodings = self.neck(self.trunk(pixels))
        kept = len(maps) - self.scalp
        maps, encodings = maps[:kept], encodings[:kept]
        return {"vision_features": maps[-1], "vision_pos_enc": encodings, "backbone_fpn": maps}


def build_image_encoder(
    embed_dim: int,
    num_heads: int,
    stages: Sequence[int],
    global_att_blocks: Sequence[int],
    window_spec: Sequence[int],
    window_pos_embed_bkg_spatial_size: Sequence[int],
    backbone_channel_list: Sequence[int],
) -> ImageEncoder:
    """The SAM 2 image encoder for one trunk configuration.

    The neck is fixed as in every official preset: 256 channels, top-down features on
    levels 2 and 3, and the stride-32 level dropped (scalp 1).
    """
    trunk = Hiera(
        embed_dim=embed_dim,
        num_heads=num_heads,
        stages=stages,
        global_att_blocks=global_att_blocks,
        window_spec=window_spec,
        window_pos_embed_bkg_spatial_size=window_pos_embed_bkg_spatial_size,
    )
    neck = FpnNeck(
        d_model=256,
        backbone_channel_list=backbone_channel_list,
        fpn_top_down_levels=[2, 3],
    )
    return ImageEncoder(trunk, neck, scalp=1)
