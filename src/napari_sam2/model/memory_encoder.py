"""Memory encoder: turns a frame's features and its predicted mask into a memory entry.

The mask (at the model's input size S) is shrunk to the stride-16 grid by a small conv stack,
added to a projection of the frame's 256-channel features, mixed by two ConvNeXt-style blocks
and projected to 64 channels. A DETR sine encoding of the grid comes with it. Parameter names
follow Meta's checkpoints (``memory_encoder.*``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_sam2.model.common import LayerNorm2d, SinePositionEncoding

__all__ = ["CXBlock", "Fuser", "MaskDownSampler", "MemoryEncoder", "build_memory_encoder"]


class MaskDownSampler(nn.Module):
    """Shrinks a (B, 1, S, S) mask to (B, embed_dim, S / total_stride, S / total_stride).

    Each stage is a strided conv that multiplies the channels by ``stride**2`` (so no
    information is dropped), a channel LayerNorm and a GELU; a 1x1 conv maps to ``embed_dim``.
    ``encoder`` is an ``nn.Sequential`` so the parameter indices match Meta's checkpoints
    (conv, norm, act per stage; the final conv last).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        total_stride: int = 16,
    ) -> None:
        super().__init__()
        num_stages = round(math.log(total_stride, stride))
        if stride**num_stages != total_stride:
            raise ValueError(f"total_stride={total_stride} is not a power of stride={stride}")
        stages: list[nn.Module] = []
        channels = 1
        for _ in range(num_stages):
            widened = channels * stride**2
            stages.append(nn.Conv2d(channels, widened, kernel_size, stride, padding))
            stages.append(LayerNorm2d(widened))
            stages.append(nn.GELU())
            channels = widened
        stages.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*stages)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block on (B, dim, H, W): depthwise conv, channel norm, pointwise MLP (x4
    expansion, GELU) scaled per channel by ``gamma``, added back to the input. Shape-keeping.
    """

    def __init__(
        self,
        dim: int = 256,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        groups = dim if use_dwconv else 1
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=padding, groups=groups)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        hidden = 4 * dim
        self.pwconv1 = nn.Linear(dim, hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        # Layer scale: a learned per-channel factor on the residual branch (off when <= 0).
        self.gamma: nn.Parameter | None = None
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The pointwise layers are Linear (as in the checkpoints), so work channels-last.
        mixed = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        mixed = self.pwconv2(self.act(self.pwconv1(mixed)))
        if self.gamma is not None:
            mixed = mixed * self.gamma
        return x + mixed.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """An optional 1x1 input projection then ``num_layers`` :class:`CXBlock` on (B, dim, H, W)."""

    def __init__(
        self,
        dim: int = 256,
        num_layers: int = 2,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
        input_projection: bool = False,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size=1) if input_projection else nn.Identity()
        self.layers = nn.ModuleList(
            CXBlock(dim, kernel_size, padding, layer_scale_init_value, use_dwconv)
            for _ in range(num_layers)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mixed = self.proj(features)
        for block in self.layers:
            mixed = block(mixed)
        return mixed


class MemoryEncoder(nn.Module):
    """Encodes one frame's features plus mask into a memory entry.

    ``forward(pix_feat, masks, skip_mask_sigmoid)``:

    - ``pix_feat``: (B, in_dim, h, w) float, the frame's stride-16 features;
    - ``masks``: (B, 1, S, S) float with S = 16 h, mask logits (or, with
      ``skip_mask_sigmoid=True``, values already mapped by the caller);
    - returns ``{"vision_features": (B, out_dim, h, w), "vision_pos_enc": [(B, out_dim, h, w)]}``.
    """

    def __init__(
        self,
        out_dim: int = 64,
        mask_downsampler: MaskDownSampler | None = None,
        fuser: Fuser | None = None,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler or MaskDownSampler(embed_dim=in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser or Fuser(dim=in_dim)
        self.position_encoding = SinePositionEncoding(out_dim)
        self.out_proj = (
            nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()
        )

    def forward(
        self,
        pix_feat: torch.Tensor,
        masks: torch.Tensor,
        skip_mask_sigmoid: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks must be (B, 1, S, S); got shape {tuple(masks.shape)}")
        mask_input = masks if skip_mask_sigmoid else torch.sigmoid(masks)
        mask_tokens = self.mask_downsampler(mask_input)
        if mask_tokens.shape[-2:] != pix_feat.shape[-2:]:
            raise ValueError(
                f"masks of size {tuple(masks.shape[-2:])} shrink to "
                f"{tuple(mask_tokens.shape[-2:])}, but pix_feat is {tuple(pix_feat.shape[-2:])}; "
                "pass masks at the model's input size (16 x the feature grid)"
            )
        fused = self.pix_feat_proj(pix_feat.to(mask_tokens.device)) + mask_tokens
        features = self.out_proj(self.fuser(fused))
        # A fresh tensor, not a view of the encoder's cache, so callers may modify it in place.
        pos = self.position_encoding(features).to(features.dtype)
        pos = pos.clone(memory_format=torch.contiguous_format)
        return {"vision_features": features, "vision_pos_enc": [pos]}


def build_memory_encoder() -> MemoryEncoder:
    """The memory encoder of every official SAM 2 / 2.1 preset (64 output channels)."""
    return MemoryEncoder(
        out_dim=64,
        mask_downsampler=MaskDownSampler(embed_dim=256, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(dim=256, num_layers=2, kernel_size=7, padding=3, layer_scale_init_value=1e-6),
        in_dim=256,
    )
