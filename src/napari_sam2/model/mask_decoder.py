"""SAM 2's mask decoder: prompt tokens plus image features to mask logits and scores.

Learned output tokens (an optional object-score token, an IoU token and 1 + 3 mask tokens) are
prepended to the prompt tokens and exchanged with the image features in a
:class:`~napari_sam2.model.two_way_transformer.TwoWayTransformer`. The image features are then
upscaled 4x (mixing in the backbone's high-resolution features), and each mask token, passed
through its own hypernetwork MLP, becomes a linear filter over the upscaled channels.

Token 0 predicts the single-mask answer, tokens 1-3 the three multimask candidates.
Parameter names follow Meta's checkpoints (``sam_mask_decoder.*``).
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sam2.model.common import MLP, LayerNorm2d


def stability_scores(mask_logits: torch.Tensor, delta: float) -> torch.Tensor:
    """Stability of masks: area above ``+delta`` over area above ``-delta``.

    Args:
        mask_logits: (..., H, W) float logits.
        delta: logit margin.

    Returns:
        (...,) float32 scores in [0, 1]; 1 where no pixel exceeds ``-delta``.
    """
    flat = mask_logits.flatten(-2)
    inner = (flat > delta).sum(dim=-1).float()
    outer = (flat > -delta).sum(dim=-1).float()
    return torch.where(outer > 0, inner / outer.clamp_min(1), torch.ones_like(inner))


def best_by_score(candidates: torch.Tensor, scores: torch.Tensor):
    """Pick, per batch item, the candidate with the highest score.

    Args:
        candidates: (B, K, H, W) mask logits.
        scores: (B, K) predicted IoU.

    Returns:
        the picked logits (B, 1, H, W) and their scores (B, 1).
    """
    best = scores.argmax(dim=-1, keepdim=True)
    picked_scores = scores.gather(1, best)
    rows = torch.arange(candidates.shape[0], device=candidates.device)
    picked_masks = candidates[rows, best[:, 0]].unsqueeze(1)
    return picked_masks, picked_scores


class MaskDecoder(nn.Module):
    """Predict masks from image features and prompt embeddings.

    Args:
        transformer_dim: channels of tokens and image features (256).
        transformer: the token/image transformer, a ``TwoWayTransformer``.
        num_multimask_outputs: candidate masks in multimask mode (3).
        activation: activation class of the upscaling path.
        iou_head_depth, iou_head_hidden_dim: shape of the IoU-prediction MLP.
        use_high_res_features: add the backbone's stride-4 and stride-8 features while
            upscaling; ``conv_s0`` and ``conv_s1`` exist for them, though SAM 2 applies them to
            the backbone features outside this module.
        iou_prediction_use_sigmoid: squash IoU predictions into (0, 1).
        dynamic_multimask_via_stability: in single-mask mode (and eval mode), replace an
            unstable single mask by the best multimask candidate.
        dynamic_multimask_stability_delta, dynamic_multimask_stability_thresh: the stability
            margin and the score below which a mask counts as unstable.
        pred_obj_scores: predict an "object present" logit from an extra token.
        pred_obj_scores_mlp: that head is a 3-layer MLP instead of a linear layer.
        use_multimask_token_for_obj_ptr: in multimask mode, return the three multimask tokens
            as SAM tokens instead of the single-mask token.
    """

    def __init__(
        self,
        *,
        transformer: nn.Module,
        transformer_dim: int,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        activation: type[nn.Module] = nn.GELU,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        super().__init__()
        dim = transformer_dim
        self.transformer_dim = dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.pred_obj_scores = pred_obj_scores
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.use_high_res_features = use_high_res_features
        # Stability fallback settings (read in forward).
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability

        # Registration order equals the checkpoints' key order.
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, dim)

        # Indices 0..4 are fixed by the checkpoints; forward runs them one by one.
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            activation(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        iou_shape = (dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self.iou_prediction_head = MLP(*iou_shape, sigmoid_output=iou_prediction_use_sigmoid)
        if pred_obj_scores:
            self.pred_obj_score_head = (
                MLP(dim, dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(dim, 1)
            )

    def _output_tokens(self) -> torch.Tensor:
        """(T, C) learned output tokens in the order [obj score], IoU, masks."""
        parts = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            parts.insert(0, self.obj_score_token.weight)
        return torch.cat(parts, dim=0)

    def _upscale(self, features: torch.Tensor, high_res_features) -> torch.Tensor:
        """(B, C, h, w) -> (B, C/8, 4h, 4w), adding stride-8 then stride-4 features if used."""
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        if not self.use_high_res_features:
            return act2(deconv2(act1(norm1(deconv1(features)))))
        if high_res_features is None or len(high_res_features) != 2:
            raise ValueError(
                "this decoder uses high-resolution features: pass high_res_features="
                "[feat_s0 (B, C/8, 4h, 4w), feat_s1 (B, C/4, 2h, 2w)], already projected by "
                "conv_s0 and conv_s1"
            )
        feat_s0, feat_s1 = high_res_features
        mid = act1(norm1(deconv1(features) + feat_s1))
        return act2(deconv2(mid) + feat_s0)

    def predict_masks(
        self,
        *,
        image_embeddings: torch.Tensor,
        high_res_features: list[torch.Tensor] | None = None,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions of every mask token, before any selection.

        Returns:
            masks: (B, 1 + M, 4h, 4w) logits, token 0 first.
            iou_pred: (B, 1 + M).
            mask_tokens_out: (B, 1 + M, C) the mask tokens after the transformer.
            object_score_logits: (B, 1); a constant 10 (object present) without an
                object-score head.
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = self._output_tokens().unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if repeat_image:
            image = torch.repeat_interleave(image_embeddings, batch, dim=0)
        elif image_embeddings.shape[0] != batch:
            raise ValueError(
                f"image_embeddings has batch {image_embeddings.shape[0]} but the prompts have "
                f"{batch}; pass repeat_image=True to share one image among the prompts"
            )
        else:
            image = image_embeddings
        image = image + dense_prompt_embeddings
        if image_pe.shape[0] != 1:
            raise ValueError(
                "image_pe must have batch size 1 (from get_dense_pe()); "
                f"got {tuple(image_pe.shape)}"
            )
        image_pos = torch.repeat_interleave(image_pe, batch, dim=0)
        _, channels, height, width = image.shape

        token_out, image_out = self.transformer(image, image_pos, tokens)
        first = int(self.pred_obj_scores)
        iou_token_out = token_out[:, first]
        mask_tokens_out = token_out[:, first + 1 : first + 1 + self.num_mask_tokens]

        features = image_out.transpose(1, 2).reshape(batch, channels, height, width)
        upscaled = self._upscale(features, high_res_features)

        filters = torch.stack(
            [
                mlp(mask_tokens_out[:, index])
                for index, mlp in enumerate(self.output_hypernetworks_mlps)
            ],
            dim=1,
        )  # (B, 1 + M, C/8)
        up_channels, up_height, up_width = upscaled.shape[1:]
        masks = torch.bmm(filters, upscaled.reshape(batch, up_channels, up_height * up_width))
        masks = masks.view(batch, -1, up_height, up_width)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(token_out[:, 0])
        else:
            object_score_logits = iou_pred.new_full((batch, 1), 10.0)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def select_stable_single_mask(
        self, all_masks: torch.Tensor, all_iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token 0's mask where it is stable, else the multimask candidate of highest IoU.

        Args:
            all_masks: (B, 1 + M, H, W) logits of every token.
            all_iou: (B, 1 + M) their predicted IoU.

        Returns:
            masks (B, 1, H, W) and IoU (B, 1).
        """
        single_masks, single_iou = all_masks[:, :1], all_iou[:, :1]
        best_masks, best_iou = best_by_score(all_masks[:, 1:], all_iou[:, 1:])
        stable = (
            stability_scores(single_masks, self.dynamic_multimask_stability_delta)
            >= self.dynamic_multimask_stability_thresh
        )  # (B, 1)
        masks = torch.where(stable[:, :, None, None], single_masks, best_masks)
        iou = torch.where(stable, single_iou, best_iou)
        return masks, iou

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        high_res_features: list[torch.Tensor] | None = None,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (B or 1, C, h, w) image features.
            high_res_features: [feat_s0 (B, C/8, 4h, 4w), feat_s1 (B, C/4, 2h, 2w)] when
                ``use_high_res_features``; ignored otherwise.
            image_pe: (1, C, h, w) from ``PromptEncoder.get_dense_pe()``.
            sparse_prompt_embeddings: (B, N, C) point and box tokens.
            dense_prompt_embeddings: (B, C, h, w) mask-prompt embedding.
            multimask_output: return the 3 candidates instead of one mask.
            repeat_image: repeat a single image's features over the B prompts.

        Returns:
            masks: (B, K, 4h, 4w) float logits, K = 3 in multimask mode, else 1.
            iou_pred: (B, K) predicted IoU.
            sam_tokens_out: (B, K', C) tokens for object pointers: the three multimask tokens
                in multimask mode with ``use_multimask_token_for_obj_ptr``, else token 0
                (K' = 1).
            object_score_logits: (B, 1) "object present" logit.
        """
        all_masks, all_iou, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings=image_embeddings,
            high_res_features=high_res_features,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=repeat_image,
        )
        if multimask_output:
            masks, iou_pred = all_masks[:, 1:], all_iou[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self.select_stable_single_mask(all_masks, all_iou)
        else:
            masks, iou_pred = all_masks[:, :1], all_iou[:, :1]

        # Token 0 is the object-pointer token except in multimask mode with the flag set: the
        # model was trained to track from single-mask tokens.
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, :1]
        return masks, iou_pred, sam_tokens_out, object_score_logits
