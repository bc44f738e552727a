"""Hiera, the hierarchical vision transformer that SAM 2 uses as its image trunk.

Tokens travel through the trunk channels-last, as (B, H, W, C) float tensors. Four stages
work at strides 4, 8, 16 and 32 of the input; the first block of each later stage halves the
token grid by max-pooling its queries ("q-pooling") and widens the channels. Most blocks attend
within square windows; a few listed blocks attend globally.

Parameter names (``pos_embed``, ``pos_embed_window``, ``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.layers.N, proj}``) follow Meta's checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam2.model.common import MLP

#: The patch embedding's stride: the trunk's first stage sees a grid 4x smaller than the input.
PATCH_STRIDE = 4


def max_pool_tokens(tokens: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Max over non-overlapping ``stride`` cells of a channels-last grid.

    (B, H, W, C) -> (B, H // sh, W // sw, C), dropping trailing rows and columns that do not
    fill a cell (like ``nn.MaxPool2d(stride, stride)``). Built as the elementwise maximum of the
    strided sub-grids, which accepts non-contiguous input on every backend (MPS included) and is
    an order of magnitude faster on the CPU than a reduction over a reshaped view.
    """
    _, height, width, _ = tokens.shape
    step_h, step_w = stride
    out_h, out_w = height // step_h, width // step_w
    pooled = None
    for row in range(step_h):
        for col in range(step_w):
            part = tokens[:, row : out_h * step_h : step_h, col : out_w * step_w : step_w]
            pooled = part if pooled is None else torch.maximum(pooled, part)
    return pooled.contiguous()


def split_into_windows(tokens: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a channels-last grid into ``size`` x ``size`` windows.

    (B, H, W, C) -> ((B * nh * nw, size, size, C), (nh, nw)). The grid is zero-padded at the
    bottom and right up to a multiple of ``size``; the padded tokens take part in attention, as
    in the reference, so that results match it.
    """
    batch, height, width, channels = tokens.shape
    pad_h, pad_w = -height % size, -width % size
    if pad_h or pad_w:
        tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // size, (width + pad_w) // size
    grid = tokens.reshape(batch, rows, size, cols, size, channels).transpose(2, 3)
    return grid.reshape(batch * rows * cols, size, size, channels), (rows, cols)


def merge_windows(
    windows: torch.Tensor, window_grid: tuple[int, int], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`split_into_windows`: stitch windows back and crop the padding.

    ``windows`` is (B * nh * nw, s, s, C) with ``window_grid`` = (nh, nw); the window side ``s``
    is read from the tensor, so windows shrunk by q-pooling are stitched just as well.
    Returns (B, H, W, C) with (H, W) = ``out_hw``.
    """
    rows, cols = window_grid
    side = windows.shape[1]
    batch = windows.shape[0] // (rows * cols)
    grid = windows.reshape(batch, rows, cols, side, side, -1).transpose(2, 3)
    grid = grid.reshape(batch, rows * side, cols * side, -1)
    height, width = out_hw
    return grid[:, :height, :width]


class PatchEmbed(nn.Module):
    """A 7x7 stride-4 convolution from pixels to tokens: (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, embed_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels, embed_dim, kernel_size=7, stride=PATCH_STRIDE, padding=3
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a channels-last grid, optionally with pooled queries.

    (B, H, W, in_dim) -> (B, H', W', out_dim), where (H', W') = (H, W) without ``q_stride``
    and the max-pooled query grid with it. Keys and values always cover the full grid.
    """

    def __init__(
        self, in_dim: int, out_dim: int, heads: int, q_stride: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"{out_dim} channels cannot be split evenly into {heads} heads")
        self.num_heads = heads
        self.head_dim = out_dim // heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(in_dim, 3 * out_dim)
        self.proj = nn.Linear(out_dim, out_dim)

    def _heads_first(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, H, W, heads, head_dim) -> (B, heads, H*W, head_dim) for SDPA."""
        return grid.flatten(1, 2).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, height, width, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(dim=3)
        if self.q_stride is not None:
            # Pooling is per channel, so it can run with the heads folded into the channels.
            pooled = max_pool_tokens(query.flatten(3), self.q_stride)
            height, width = pooled.shape[1:3]
            query = pooled.unflatten(3, (self.num_heads, self.head_dim))
        attended = F.scaled_dot_product_attention(
            self._heads_first(query), self._heads_first(key), self._heads_first(value)
        )
        attended = attended.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(attended)


class MultiScaleBlock(nn.Module):
    """One pre-norm transformer block of Hiera: (B, H, W, in_dim) -> (B, H', W', out_dim).

    ``window_size`` 0 means global attention. With ``q_stride`` the block halves the grid (for
    stride 2): its queries and its residual branch are max-pooled. When the width changes, the
    residual goes through the linear ``proj`` (applied to the normalised input, as in the
    reference).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int,
        window_size: int = 0,
        q_stride: tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if q_stride is not None and window_size % q_stride[0]:
            raise ValueError(
                f"a q-pooling block's window size ({window_size}) must be a multiple of its "
                f"stride ({q_stride[0]}); change window_spec"
            )
        self.dim, self.dim_out = in_dim, out_dim
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(in_dim, eps=1e-6)
        self.attn = MultiScaleAttention(in_dim, out_dim, heads, q_stride=q_stride)
        self.norm2 = nn.LayerNorm(out_dim, eps=1e-6)
        hidden = int(out_dim * mlp_ratio)
        self.mlp = MLP(out_dim, hidden, out_dim, depth=2, activation=nn.GELU)
        if out_dim != in_dim:
            self.proj = nn.Linear(in_dim, out_dim)

    def _residual(self, normed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The skip branch, brought to the output's width and grid."""
        residual = tokens if self.dim == self.dim_out else self.proj(normed)
        if self.q_stride is not None:
            residual = max_pool_tokens(residual, self.q_stride)
        return residual

    def _attend(self, normed: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """Attention, windowed unless ``window_size`` is 0; the result has grid ``out_hw``."""
        if self.window_size == 0:
            return self.attn(normed)
        windows, window_grid = split_into_windows(normed, self.window_size)
        return merge_windows(self.attn(windows), window_grid, out_hw)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(tokens)
        residual = self._residual(normed, tokens)
        # With q-pooling the residual already has the output's (smaller) grid.
        tokens = residual + self._attend(normed, tuple(residual.shape[1:3]))
        return tokens + self.mlp(self.norm2(tokens))


class Hiera(nn.Module):
    """The Hiera image trunk (https://arxiv.org/abs/2306.00989) as SAM 2 configures it.

    Args:
        embed_dim: channels of the first stage; each later stage multiplies them by ``dim_mul``.
        num_heads: attention heads of the first stage; each later stage multiplies by
            ``head_mul``.
        q_pool: how many stage transitions halve the grid (from the second stage on).
        q_stride: the pooling stride at those transitions.
        stages: blocks per stage.
        dim_mul, head_mul: growth of channels and heads at each stage transition.
        window_pos_embed_bkg_spatial_size: grid of the background position embedding, which is
            resized bicubically to the token grid.
        window_spec: attention window side per stage. The first block of a stage still uses
            the previous stage's window (it sees the grid before pooling).
        global_att_blocks: indices of the blocks that attend globally.

    ``forward`` maps (B, 3, H, W) float pixels to one (B, C_i, H / 4 / 2^i, W / 4 / 2^i) map per
    stage, highest resolution first. ``channel_list`` gives the stages' channels lowest
    resolution first, the order the FPN neck expects.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] | None = (12, 16, 20),
    ) -> None:
        super().__init__()
        stages, window_spec = list(stages), list(window_spec)
        if len(stages) != len(window_spec):
            raise ValueError(
                f"stages {stages} and window_spec {window_spec} must have one entry per stage"
            )
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool={q_pool} must lie in [0, {len(stages) - 1}]")
        self.q_stride = tuple(q_stride)
        self.q_pool = q_pool
        self.window_spec = window_spec
        self.global_att_blocks = set(global_att_blocks or ())
        self.stage_ends = [sum(stages[: k + 1]) - 1 for k in range(len(stages))]
        stage_starts = [end + 1 for end in self.stage_ends[:-1]]
        pooling_blocks = set(stage_starts[:q_pool])

        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size)
        )
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, window_spec[0], window_spec[0])
        )

        stage_of_block = [k for k, count in enumerate(stages) for _ in range(count)]
        self.blocks = nn.ModuleList()
        dim, heads = embed_dim, num_heads
        for index in range(len(stage_of_block)):
            dim_out = dim
            if index in stage_starts:
                dim_out = int(dim * dim_mul)
                heads = int(heads * head_mul)
            # The window lags a block behind the stage: it is that of the previous block.
            window = window_spec[stage_of_block[max(index - 1, 0)]]
            if index in self.global_att_blocks:
                window = 0
            q_stride_here = self.q_stride if index in pooling_blocks else None
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, window, q_stride_here))
            dim = dim_out

        self.channel_list = [self.blocks[end].dim_out for end in reversed(self.stage_ends)]

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this (tiling of the window embedding, pooling)."""
        pooling = self.q_stride[0] ** self.q_pool
        return PATCH_STRIDE * math.lcm(self.window_spec[0], pooling)

    def _check_input(self, pixels: torch.Tensor) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of pixels, got {type(pixels).__name__}")
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"expected pixels shaped (B, 3, H, W), got {tuple(pixels.shape)}; "
                "repeat grey images into three channels"
            )
        multiple = self.input_multiple
        if pixels.shape[2] % multiple or pixels.shape[3] % multiple:
            raise ValueError(
                f"input size {tuple(pixels.shape[2:])} is not a multiple of {multiple}; "
                f"resize the image to a side divisible by {multiple} (e.g. 1024)"
            )

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """Windowed absolute position embedding for a (height, width) token grid.

        The background embedding is resized bicubically to the grid and the per-window
        embedding is tiled over it. Returns (1, height, width, C).
        """
        background = self.pos_embed
        try:
            background = F.interpolate(background, size=(height, width), mode="bicubic")
        except NotImplementedError:
            # Some backends (MPS in older torch) lack bicubic resizing; the tensor is tiny.
            resized = F.interpolate(background.cpu(), size=(height, width), mode="bicubic")
            background = resized.to(self.pos_embed.device)
        window = self.pos_embed_window
        repeats = (height // window.shape[2], width // window.shape[3])
        tiled = window.repeat(1, 1, *repeats)
        return (background + tiled).permute(0, 2, 3, 1)

    def _cached_position_embedding(self, height: int, width: int) -> torch.Tensor:
        """:meth:`position_embedding`, computed once per grid in eval mode (the bicubic resize
        costs several milliseconds a frame). The key holds the parameters' version counters,
        so loading new weights invalidates it."""
        if self.training or torch.is_grad_enabled():
            return self.position_embedding(height, width)
        key = (
            height,
            width,
            self.pos_embed.device,
            self.pos_embed._version,
            self.pos_embed_window._version,
        )
        cache = self.__dict__.setdefault("_position_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = self.position_embedding(height, width)
        return cache[key]

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(pixels)
        tokens = self.patch_embed(pixels)
        tokens = tokens + self._cached_position_embedding(tokens.shape[1], tokens.shape[2])
        stage_outputs = []
        stage_ends = set(self.stage_ends)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in stage_ends:
                stage_outputs.append(tokens.permute(0, 3, 1, 2).contiguous())
        return stage_outputs
