"""The two-way transformer of SAM's mask decoder.

Prompt tokens and image tokens update each other: in every block the tokens attend to themselves,
then to the image, pass an MLP, and finally the image attends back to the tokens. Module and
parameter names follow Meta's checkpoints (``sam_mask_decoder.transformer.*``).

Tensors here are token sequences ``(batch, tokens, channels)`` in the model's float dtype, except
for the image inputs of :class:`TwoWayTransformer`, which are feature maps ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sam2.model.attention import Attention
from napari_sam2.model.common import MLP


class TwoWayAttentionBlock(nn.Module):
    """One round of token/image exchange, each step followed by a residual add and a LayerNorm.

    1. tokens self-attend (``self_attn``, ``norm1``);
    2. tokens attend to the image (``cross_attn_token_to_image``, ``norm2``);
    3. an MLP on the tokens (``mlp``, ``norm3``);
    4. the image attends to the tokens (``cross_attn_image_to_token``, ``norm4``).

    Positional encodings are added to queries and keys, never to values. The first block of the
    stack (``skip_first_layer_pe``) runs step 1 on the raw tokens and, as Meta's model does,
    replaces the tokens by the attention output instead of adding it: at that point the tokens
    already are their own positional encoding.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        *,
        skip_first_layer_pe: bool = False,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        dim, heads, rate = embedding_dim, num_heads, attention_downsample_rate
        # Registration order equals the checkpoints' key order.
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample_rate=rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, depth=2, activation=activation)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample_rate=rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update tokens (B, Nq, C) and image tokens (B, Nk, C); the encodings match them."""
        if self.skip_first_layer_pe:
            queries = self.norm1(self.self_attn(q=queries, k=queries, v=queries))
        else:
            located = queries + query_pe
            queries = self.norm1(queries + self.self_attn(q=located, k=located, v=queries))

        located_keys = keys + key_pe
        to_image = self.cross_attn_token_to_image(q=queries + query_pe, k=located_keys, v=keys)
        queries = self.norm2(queries + to_image)

        queries = self.norm3(queries + self.mlp(queries))

        to_tokens = self.cross_attn_image_to_token(q=located_keys, k=queries + query_pe, v=queries)
        keys = self.norm4(keys + to_tokens)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """A stack of :class:`TwoWayAttentionBlock` and a last token-to-image attention.

    Args:
        embedding_dim: channels of tokens and image features.
        num_heads: attention heads.
        depth: number of blocks.
        mlp_dim: hidden width of each block's MLP.
        attention_downsample_rate: channel divisor inside the cross-attentions.
        activation: the MLP's activation class.
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        depth: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.depth, self.mlp_dim = depth, mlp_dim
        self.embedding_dim, self.num_heads = embedding_dim, num_heads
        rate = attention_downsample_rate
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                skip_first_layer_pe=index == 0,
                mlp_dim=mlp_dim,
                attention_downsample_rate=rate,
                activation=activation,
            )
            for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the stack.

        Args:
            image_embedding: (B, C, H, W) image features.
            image_pe: (B, C, H, W) positional encoding of the image grid.
            point_embedding: (B, N, C) prompt and output tokens; they double as their own
                positional encoding.

        Returns:
            tokens (B, N, C) and image tokens (B, H*W, C), in row-major (y, x) order.
        """
        if image_embedding.shape != image_pe.shape:
            raise ValueError(
                f"image_pe shape {tuple(image_pe.shape)} must equal the image embedding's "
                f"{tuple(image_embedding.shape)}"
            )
        image_tokens = image_embedding.flatten(2).transpose(1, 2)
        image_pos = image_pe.flatten(2).transpose(1, 2)

        tokens = point_embedding
        for block in self.layers:
            tokens, image_tokens = block(
                queries=tokens, keys=image_tokens, query_pe=point_embedding, key_pe=image_pos
            )

        final = self.final_attn_token_to_image(
            q=tokens + point_embedding, k=image_tokens + image_pos, v=image_tokens
        )
        tokens = self.norm_final_attn(tokens + final)
        return tokens, image_tokens
