"""SAM's prompt encoder: points, boxes and mask prompts as tokens and a dense map.

Coordinates follow SAM: a point is (x, y) = (column, row) in pixels of the model's square input
image (``input_image_size``), a box is (x0, y0, x1, y1). Parameter names follow Meta's
checkpoints (``sam_prompt_encoder.*``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_sam2.model.common import LayerNorm2d

#: Point labels understood by :class:`PromptEncoder`.
LABEL_PADDING = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class RandomFourierEncoding(nn.Module):
    """Position encoding by random spatial frequencies (Tancik et al., "Fourier features").

    A position p in [0, 1]^2 (x, y) maps to ``[sin(f), cos(f)]`` with
    ``f = 2 * pi * (2p - 1) @ G`` and G a fixed Gaussian (2, num_pos_feats) matrix, so the
    encoding has ``2 * num_pos_feats`` channels.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats)
        )

    def encode_unit(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode (..., 2) float positions in [0, 1] (x, y); returns (..., 2 * num_pos_feats)."""
        centred = coords * 2 - 1
        phase = (centred @ self.positional_encoding_gaussian_matrix) * (2 * math.pi)
        return torch.cat([phase.sin(), phase.cos()], dim=-1)

    def encode_pixels(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode (..., 2) float (x, y) positions in an image of ``image_size`` = (H, W) pixels."""
        height, width = image_size
        extent = torch.tensor([width, height], dtype=torch.float32, device=coords.device)
        return self.encode_unit(coords.float() / extent)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the cell centres of an (H, W) grid, shape (2 * num_pos_feats, H, W)."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        centres = torch.stack(
            [xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1
        )
        return self.encode_unit(centres).permute(2, 0, 1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Same as :meth:`grid`."""
        return self.grid(size)


class PromptEncoder(nn.Module):
    """Embed point, box and mask prompts for the mask decoder.

    Args:
        embed_dim: channels of every embedding (256 in SAM 2).
        image_embedding_size: (h, w) of the image features the decoder sees (input size / 16).
        input_image_size: (H, W) of the model's input image, the frame of point coordinates.
        mask_in_chans: hidden channels of the mask-prompt downscaler (16 in SAM 2).
        activation: activation class of the mask-prompt downscaler.

    Point labels: -1 padding (not a point), 0 negative click, 1 positive click, 2 a box's top-left
    corner, 3 its bottom-right corner.
    """

    num_point_embeddings = 4

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)

        # Indexed by label: 0 negative, 1 positive, 2 and 3 box corners.
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        quarter = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, quarter, kernel_size=2, stride=2),
            LayerNorm2d(quarter),
            activation(),
            nn.Conv2d(quarter, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, 1),  # 1x1 lift to the token width
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, embed_dim, h, w) float32."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def _label_table(self) -> torch.Tensor:
        """(5, embed_dim): row ``label + 1`` is added to a point of that label."""
        return torch.cat(
            [self.not_a_point_embed.weight] + [emb.weight for emb in self.point_embeddings], dim=0
        )

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """Embed (B, N, 2) pixel (x, y) points with (B, N) labels into (B, N [+1], embed_dim).

        ``pad`` appends one padding point per batch item; SAM does so when no box is given.
        """
        if pad:
            batch = coords.shape[0]
            coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((batch, 1), LABEL_PADDING)], dim=1)
        # +0.5: a pixel index names the pixel's centre.
        encoded = self.pe_layer.encode_pixels(coords + 0.5, self.input_image_size)
        labels = labels.long()
        # Padding points carry no position, only their own learned embedding.
        encoded = encoded.masked_fill((labels == LABEL_PADDING).unsqueeze(-1), 0.0)
        return encoded + self._label_table()[labels + 1]

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Embed (B, 4) pixel (x0, y0, x1, y1) boxes into two corner tokens, (B, 2, embed_dim)."""
        corners = boxes.reshape(-1, 2, 2) + 0.5
        encoded = self.pe_layer.encode_pixels(corners, self.input_image_size)
        top_left = self.point_embeddings[LABEL_BOX_TOP_LEFT].weight
        bottom_right = self.point_embeddings[LABEL_BOX_BOTTOM_RIGHT].weight
        corner_table = torch.cat((top_left, bottom_right))
        return encoded + corner_table

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Embed (B, 1, 4h, 4w) mask logits into (B, embed_dim, h, w)."""
        return self.mask_downscaling(masks)

    def _check_inputs(self, points, boxes, masks) -> None:
        if points is not None:
            if not isinstance(points, (tuple, list)) or len(points) != 2:
                raise TypeError("points must be a (coords, labels) pair of tensors, or None")
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(
                    f"point coords must have shape (B, N, 2) as (x, y); got {tuple(coords.shape)}"
                )
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point labels must have shape (B, N) = {tuple(coords.shape[:2])}; "
                    f"got {tuple(labels.shape)}"
                )
            if labels.numel() and bool(((labels < -1) | (labels > 3)).any()):
                raise ValueError(
                    "point labels must be -1 (padding), 0 (negative), 1 (positive), "
                    f"2 or 3 (box corners); got values {sorted(set(labels.flatten().tolist()))}"
                )
        if boxes is not None and (boxes.shape[-1] != 4 or boxes.numel() // 4 != boxes.shape[0]):
            raise ValueError(
                f"boxes must have shape (B, 4) as (x0, y0, x1, y1); got {tuple(boxes.shape)}"
            )
        if masks is not None and (
            masks.ndim != 4
            or masks.shape[1] != 1
            or tuple(masks.shape[-2:]) != self.mask_input_size
        ):
            raise ValueError(
                f"mask prompts must have shape (B, 1, {self.mask_input_size[0]}, "
                f"{self.mask_input_size[1]}); got {tuple(masks.shape)}. Resize them to "
                "mask_input_size first."
            )
        sizes = {
            name: tensor.shape[0]
            for name, tensor in (
                ("points", None if points is None else points[0]),
                ("boxes", boxes),
                ("masks", masks),
            )
            if tensor is not None
        }
        if len(set(sizes.values())) > 1:
            raise ValueError(f"prompts disagree on the batch size: {sizes}")

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the given prompts.

        Args:
            points: ``(coords, labels)``: float (B, N, 2) pixel (x, y) in the input image and
                integer (B, N) labels, or None.
            boxes: float (B, 4) pixel (x0, y0, x1, y1), or None.
            masks: float (B, 1, 4h, 4w) mask logits (see ``mask_input_size``), or None.

        Returns:
            sparse: (B, N', embed_dim) point then box tokens. Points without a box get one
                padding token appended, so N' = N + 1; a box adds 2 tokens.
            dense: (B, embed_dim, h, w) mask embedding, or the learned "no mask" embedding
                broadcast over the grid.
        """
        self._check_inputs(points, boxes, masks)
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1

        weight = self.no_mask_embed.weight
        pieces = [weight.new_empty(batch, 0, self.embed_dim)]
        if points is not None:
            pieces.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            pieces.append(self.embed_boxes(boxes))
        sparse = torch.cat(pieces, dim=1)

        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = weight.view(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
