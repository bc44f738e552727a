"""Multi-head attention with optional channel reduction, shared by the mask decoder's two-way
transformer and the memory attention. Parameter names follow Meta's checkpoints
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the channel count.

    Queries, keys and values are projected from their input widths to
    ``internal_dim = embedding_dim // downsample_rate`` channels, split into ``num_heads`` heads,
    combined by scaled dot-product attention and projected back to ``embedding_dim``.

    Args:
        embedding_dim: channels of the queries and of the output.
        num_heads: attention heads; must divide ``internal_dim``.
        kv_in_dim: channels of the keys and values; ``embedding_dim`` when None.
        downsample_rate: divisor of ``embedding_dim`` giving the internal width.
        dropout: attention dropout probability, used in training mode only.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        *,
        kv_in_dim: int | None = None,
        downsample_rate: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads != 0:
            raise ValueError(
                f"num_heads={num_heads} must divide the internal width {internal_dim} "
                f"(embedding_dim={embedding_dim} // downsample_rate={downsample_rate})"
            )
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = internal_dim
        self.num_heads = num_heads
        self.dropout_p = dropout

        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * d) -> (B, heads, N, d)."""
        batch, tokens, channels = x.shape
        return x.view(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) -> (B, N, heads * d)."""
        batch, heads, tokens, width = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * width)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of head-split tensors (B, heads, N, d); subclasses may adjust q and k."""
        dropout = self.dropout_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend queries (B, Nq, embedding_dim) to keys/values (B, Nk, kv_in_dim).

        Returns (B, Nq, embedding_dim).
        """
        heads_q = self.split_heads(self.q_proj(q))
        heads_k = self.split_heads(self.k_proj(k))
        heads_v = self.split_heads(self.v_proj(v))
        return self.out_proj(self.merge_heads(self.attend(heads_q, heads_k, heads_v)))
