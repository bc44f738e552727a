"""Memory attention: conditions the current frame's features on the memory bank.

The current frame's stride-16 tokens (HW of them, 256 channels) attend to themselves and then
to the memory: the spatial memories of earlier frames (64 channels, HW tokens each) followed by
a few object-pointer tokens. Both attentions use a 2-D axial rotary position encoding (RoPE)
over the feature grid. Object-pointer tokens have no grid position and are never rotated.

The rotary encoding is computed with real cosines and sines, not complex numbers, so that it
runs on every backend (MPS has poor complex support). Parameter names follow Meta's
checkpoints (``memory_attention.*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam2.model.attention import Attention
from napari_sam2.model.common import activation_by_name

__all__ = [
    "MemoryAttention",
    "MemoryAttentionLayer",
    "MemoryAttentionLayerConfig",
    "RoPEAttention",
    "apply_rotary",
    "axial_rotary_angles",
    "build_memory_attention",
]


def axial_rotary_angles(
    head_dim: int,
    height: int,
    width: int,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotation angles of a 2-D axial RoPE on a ``height`` x ``width`` grid.

    Tokens are numbered row-major (token ``t`` sits at row ``t // width``, column
    ``t % width``). Channels are rotated in adjacent pairs (2i, 2i+1); the first half of the
    pairs turn with the column index, the second half with the row index, each half with the
    frequencies ``theta ** (-4k / head_dim)`` for k = 0 .. head_dim/4 - 1.

    Returns a float32 tensor of shape (height * width, head_dim // 2).
    """
    if head_dim % 4 != 0:
        raise ValueError(f"axial RoPE needs a head dimension divisible by 4, got {head_dim}")
    exponents = torch.arange(head_dim // 4, dtype=torch.float32, device=device) * 4 / head_dim
    inv_freq = 1.0 / theta**exponents
    token = torch.arange(height * width, dtype=torch.float32, device=device)
    col = token % width
    row = torch.div(token, width, rounding_mode="floor")
    return torch.cat([torch.outer(col, inv_freq), torch.outer(row, inv_freq)], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` by the angles whose cos/sin are given.

    x: (..., N, D) in any float dtype; cos, sin: (N, D // 2) float32. The pair
    (x[2i], x[2i+1]) becomes (x[2i] cos - x[2i+1] sin, x[2i] sin + x[2i+1] cos), i.e. the
    complex product (x[2i] + j x[2i+1]) * e^(j angle). Computed in float32; returns x's dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


@dataclass(frozen=True)
class RotaryTable:
    """Rotation angles of a token grid, as cos and sin (N, D // 2) float32 and, where the
    backend supports complex numbers (not MPS), as unit phasors (N, D // 2) complex64: one
    complex product is several times faster than the real formulation and gives equal values."""

    cos: torch.Tensor
    sin: torch.Tensor
    phasors: torch.Tensor | None

    @classmethod
    def from_angles(cls, angles: torch.Tensor) -> RotaryTable:
        cos, sin = angles.cos(), angles.sin()
        phasors = (
            None if angles.device.type == "mps" else torch.polar(torch.ones_like(cos), angles)
        )
        return cls(cos, sin, phasors)

    def rotate(self, x: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Rotate (..., repeats * N, D) tokens; each block of N tokens turns like the grid."""
        if self.phasors is None:
            return apply_rotary(x, self.cos.repeat(repeats, 1), self.sin.repeat(repeats, 1))
        turns = self.phasors.repeat(repeats, 1)
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
        return torch.view_as_real(pairs * turns).flatten(-2).to(x.dtype)


class RoPEAttention(Attention):
    """Multi-head attention whose queries and keys carry a 2-D axial rotary encoding.

    Inputs are batch-first: q (B, Nq, embedding_dim), k and v (B, Nk, kv_in_dim); the output is
    (B, Nq, embedding_dim). The queries are the tokens of a grid of ``feat_size`` = (height,
    width); when Nq differs from height * width, a square grid of side sqrt(Nq) is assumed
    (this follows the model's input size: the grid is always S/16 x S/16).

    The last ``num_k_exclude_rope`` keys are left unrotated (object pointers). The other keys
    must be one grid (Nq of them) or, with ``rope_k_repeat``, several grids in a row (one per
    memory frame), each rotated like the queries.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        *,
        kv_in_dim: int | None = None,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_size: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__(
            embedding_dim,
            num_heads,
            downsample_rate=downsample_rate,
            dropout=dropout,
            kv_in_dim=kv_in_dim,
        )
        self.head_dim = self.internal_dim // num_heads
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.feat_size = (int(feat_size[0]), int(feat_size[1]))
        # A plain dict rather than buffers: the tables are derived data, must stay float32,
        # and must not appear in (or be overwritten through) the state dict.
        self._rotary_cache: dict[tuple, RotaryTable] = {}

    def _grid_for(self, num_tokens: int) -> tuple[int, int]:
        height, width = self.feat_size
        if height * width == num_tokens:
            return height, width
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(
                f"RoPE attention got {num_tokens} query tokens, which is neither the configured "
                f"grid {height}x{width} nor a square grid; set feat_size to the feature grid"
            )
        return side, side

    def _rotary_table(self, num_tokens: int, device) -> RotaryTable:
        """The rotation of a (num_tokens)-token grid on ``device``, computed once."""
        grid = self._grid_for(num_tokens)
        key = (grid, str(device))
        table = self._rotary_cache.get(key)
        if table is None:
            angles = axial_rotary_angles(self.head_dim, *grid, self.rope_theta, device)
            table = RotaryTable.from_angles(angles)
            self._rotary_cache[key] = table
        return table

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        queries = self.split_heads(self.q_proj(q))
        keys = self.split_heads(self.k_proj(k))
        values = self.split_heads(self.v_proj(v))

        num_q = queries.shape[-2]
        num_k_rotated = keys.shape[-2] - num_k_exclude_rope
        if num_k_exclude_rope < 0 or num_k_rotated < 0:
            raise ValueError(
                f"num_k_exclude_rope={num_k_exclude_rope} must lie in [0, {keys.shape[-2]}] "
                "(the number of keys)"
            )
        table = self._rotary_table(num_q, queries.device)
        queries = table.rotate(queries)
        if num_k_rotated > 0:
            repeats, leftover = divmod(num_k_rotated, num_q)
            if leftover or (repeats != 1 and not self.rope_k_repeat):
                raise ValueError(
                    f"{num_k_rotated} rotated keys do not match {num_q} query tokens"
                    + (" times a whole number of memory frames" if self.rope_k_repeat else "")
                    + "; check the memory layout and num_obj_ptr_tokens"
                )
            rotated = table.rotate(keys[..., :num_k_rotated, :], repeats)
            keys = torch.cat([rotated, keys[..., num_k_rotated:, :]], dim=-2)

        attended = self.attend(queries, keys, values)
        return self.out_proj(self.merge_heads(attended))


@dataclass(frozen=True)
class MemoryAttentionLayerConfig:
    """Hyper-parameters of one memory attention layer; defaults are every official preset's.

    ``feat_size`` is the (height, width) of the stride-16 feature grid, i.e. input size / 16.
    """

    d_model: int = 256
    dim_feedforward: int = 2048
    activation: str = "relu"
    dropout: float = 0.1
    num_heads: int = 1
    kv_in_dim: int = 64
    rope_theta: float = 10000.0
    feat_size: tuple[int, int] = (64, 64)
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    pos_enc_at_cross_attn_queries: bool = False


class MemoryAttentionLayer(nn.Module):
    """Pre-norm block: RoPE self-attention, RoPE cross-attention to memory, then an MLP.

    Batch-first: ``tgt`` (B, HW, d_model) with ``query_pos`` of the same shape; ``memory``
    (B, M, kv_in_dim) with ``pos`` of the same shape. Returns (B, HW, d_model).
    """

    def __init__(self, config: MemoryAttentionLayerConfig = MemoryAttentionLayerConfig()) -> None:
        super().__init__()
        self.config = config
        width = config.d_model
        self.self_attn = RoPEAttention(
            width,
            config.num_heads,
            dropout=config.dropout,
            rope_theta=config.rope_theta,
            feat_size=config.feat_size,
        )
        self.cross_attn_image = RoPEAttention(
            width,
            config.num_heads,
            dropout=config.dropout,
            kv_in_dim=config.kv_in_dim,
            rope_theta=config.rope_theta,
            rope_k_repeat=True,
            feat_size=config.feat_size,
        )
        self.linear1 = nn.Linear(width, config.dim_feedforward)
        self.linear2 = nn.Linear(config.dim_feedforward, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        self.activation = activation_by_name(config.activation)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.config.dropout, self.training)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        cfg = self.config

        normed = self.norm1(tgt)
        q_and_k = normed + query_pos if cfg.pos_enc_at_attn and query_pos is not None else normed
        tgt = tgt + self._dropout(self.self_attn(q_and_k, q_and_k, normed))

        normed = self.norm2(tgt)
        use_q_pos = cfg.pos_enc_at_cross_attn_queries and query_pos is not None
        use_k_pos = cfg.pos_enc_at_cross_attn_keys and pos is not None
        attended = self.cross_attn_image(
            normed + query_pos if use_q_pos else normed,
            memory + pos if use_k_pos else memory,
            memory,
            num_k_exclude_rope=num_k_exclude_rope,
        )
        tgt = tgt + self._dropout(attended)

        hidden = self._dropout(self.activation(self.linear1(self.norm3(tgt))))
        return tgt + self._dropout(self.linear2(hidden))


class MemoryAttention(nn.Module):
    """A stack of :class:`MemoryAttentionLayer` followed by a final LayerNorm.

    ``forward`` takes sequence-first tensors like Meta's code:

    - ``curr``: (HW, B, d_model), the current frame's stride-16 features, row-major tokens
      (a one-element list is accepted too, as the reference passes it);
    - ``memory``: (M, B, kv_in_dim), the spatial memories of the chosen frames one after
      another (HW tokens each), then ``num_obj_ptr_tokens`` object-pointer tokens;
    - ``curr_pos`` (HW, B, d_model) and ``memory_pos`` (M, B, kv_in_dim): position encodings.

    ``memory`` and ``memory_pos`` are cast to ``curr``'s dtype. Returns (HW, B, d_model) in
    ``curr``'s dtype.
    """

    def __init__(
        self,
        d_model: int = 256,
        pos_enc_at_input: bool = True,
        layer: MemoryAttentionLayerConfig = MemoryAttentionLayerConfig(),
        num_layers: int = 4,
    ) -> None:
        super().__init__()
        if layer.d_model != d_model:
            raise ValueError(f"layer config has d_model={layer.d_model}, expected {d_model}")
        self.d_model = d_model
        self.pos_enc_at_input = pos_enc_at_input
        self.layers = nn.ModuleList(MemoryAttentionLayer(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    @staticmethod
    def _single(x, name: str):
        if isinstance(x, (list, tuple)):
            if len(x) != 1:
                raise ValueError(f"{name} as a list must hold exactly one tensor, got {len(x)}")
            return x[0]
        return x

    def forward(
        self,
        curr: torch.Tensor,
        memory: torch.Tensor,
        curr_pos: torch.Tensor | None = None,
        memory_pos: torch.Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        curr = self._single(curr, "curr")
        curr_pos = self._single(curr_pos, "curr_pos")
        if curr.ndim != 3 or memory.ndim != 3:
            raise ValueError(
                "curr and memory must be sequence-first (tokens, batch, channels); got shapes "
                f"{tuple(curr.shape)} and {tuple(memory.shape)}"
            )
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(
                f"curr has batch size {curr.shape[1]} but memory has {memory.shape[1]}; "
                "they must match"
            )

        hidden = curr
        if self.pos_enc_at_input and curr_pos is not None:
            hidden = hidden + 0.1 * curr_pos

        def batch_first(x):
            return None if x is None else x.transpose(0, 1)

        # The memory bank may be stored in a lower precision (bfloat16) than the frame.
        memory = memory.to(curr.dtype)
        memory_pos = None if memory_pos is None else memory_pos.to(curr.dtype)
        hidden, query_pos = batch_first(hidden), batch_first(curr_pos)
        memory, memory_pos = batch_first(memory), batch_first(memory_pos)
        for block in self.layers:
            hidden = block(hidden, memory, memory_pos, query_pos, num_obj_ptr_tokens)
        return self.norm(hidden).transpose(0, 1)


def build_memory_attention(
    d_model: int = 256,
    num_layers: int = 4,
    feat_size: tuple[int, int] = (64, 64),
) -> MemoryAttention:
    """The memory attention of every official SAM 2 / 2.1 preset.

    ``feat_size`` is the stride-16 grid (input size // 16 on each side).
    """
    layer = MemoryAttentionLayerConfig(d_model=d_model, feat_size=tuple(feat_size))
    return MemoryAttention(d_model, pos_enc_at_input=True, layer=layer, num_layers=num_layers)
