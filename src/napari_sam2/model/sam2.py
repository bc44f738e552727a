"""The SAM 2 network: image encoder, prompt encoder, mask decoder, memory encoder and memory
attention, with the per-frame steps that a tracker composes.

Submodule and parameter names equal those of Meta's ``SAM2Base`` so that official checkpoints
load unchanged. The network holds no per-video state: the tracker (``napari_sam2.engine``)
decides which memories each frame reads.

Shapes use B for the batch (objects), S for the input side, and h = w = S / 16 for the
lowest-resolution feature grid. Mask logits are float32; a pixel is inside when its logit > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .common import MLP, sine_encoding_1d, sine_position_encoding_2d
from .config import SAM2Config
from .mask_decoder import MaskDecoder
from .memory_attention import build_memory_attention
from .memory_encoder import build_memory_encoder
from .neck import build_image_encoder
from .prompt_encoder import PromptEncoder
from .two_way_transformer import TwoWayTransformer

#: Logit written where the object-score head says the object is absent.
NO_OBJECT_LOGIT = -1024.0

#: Logits that stand for a binary mask given as a prompt: sigmoid(+-10) is within 5e-5 of 0 or 1.
MASK_PROMPT_SCALE, MASK_PROMPT_BIAS = 20.0, -10.0


@dataclass
class FrameFeatures:
    """Image features of a batch of frames, as the decoder and memory consume them.

    ``high_res``: the stride-4 (B, 32, 4h, 4w) and stride-8 (B, 64, 2h, 2w) maps, already
    projected by the decoder's ``conv_s0`` / ``conv_s1``. ``top``: the stride-16 map
    (B, 256, h, w). ``top_pos``: its sine position encoding (B, 256, h, w).
    """

    high_res: list[torch.Tensor]
    top: torch.Tensor
    top_pos: torch.Tensor

    def expand(self, batch: int) -> FrameFeatures:
        """The same features viewed ``batch`` times along dim 0 (no copy)."""
        if self.top.shape[0] == batch:
            return self
        return FrameFeatures(
            [m.expand(batch, -1, -1, -1) for m in self.high_res],
            self.top.expand(batch, -1, -1, -1),
            self.top_pos.expand(batch, -1, -1, -1),
        )


@dataclass
class Prediction:
    """What the mask decoder says about one frame.

    ``low_res``: the chosen mask logits (B, 1, 4h, 4w). ``low_res_multi``: all candidates
    (B, M, 4h, 4w) with their predicted IoU ``ious`` (B, M). ``obj_ptr``: the object pointer
    (B, 256). ``object_score``: logit that the object is present (B, 1).
    """

    low_res: torch.Tensor
    low_res_multi: torch.Tensor
    ious: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor


@dataclass
class SpatialMemory:
    """One memory frame's encoded features (B, 64, h, w) and its slot ``t_pos``: 0 for a
    conditioning frame, 1..6 for recent frames (6 is the nearest)."""

    t_pos: int
    features: torch.Tensor


@dataclass
class PointerMemory:
    """One object pointer (B, 256) and its signed distance in frames from the current frame
    (positive for frames already passed in the tracking direction)."""

    offset: int
    pointer: torch.Tensor


def _init_trunc_normal(*params: nn.Parameter, std: float = 0.02) -> None:
    for param in params:
        nn.init.trunc_normal_(param, std=std)


class SAM2(nn.Module):
    """SAM 2 for images and videos. Build it with :func:`napari_sam2.model.build_sam2`."""

    def __init__(self, config: SAM2Config) -> None:
        super().__init__()
        self.config = config
        trunk = config.trunk
        side = config.feature_size
        self.image_size = config.image_size
        self.hidden_dim = 256
        self.mem_dim = 64
        self.num_maskmem = config.num_maskmem

        self.image_encoder = build_image_encoder(
            embed_dim=trunk.embed_dim,
            num_heads=trunk.num_heads,
            stages=trunk.stages,
            global_att_blocks=trunk.global_att_blocks,
            window_spec=trunk.window_spec,
            window_pos_embed_bkg_spatial_size=trunk.window_pos_embed_bkg_spatial_size,
            backbone_channel_list=trunk.channel_list,
        )
        self.memory_attention = build_memory_attention(
            d_model=self.hidden_dim, num_layers=4, feat_size=(side, side)
        )
        self.memory_encoder = build_memory_encoder()
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.hidden_dim,
            image_embedding_size=(side, side),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=self.hidden_dim, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=self.hidden_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=True,
            iou_prediction_use_sigmoid=True,
            pred_obj_scores=True,
            pred_obj_scores_mlp=True,
            use_multimask_token_for_obj_ptr=True,
            dynamic_multimask_via_stability=config.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=config.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=config.dynamic_multimask_stability_thresh,
        )

        # Learned embeddings; the names are those of Meta's checkpoints.
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(self.num_maskmem, 1, 1, self.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
        _init_trunc_normal(
            self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr
        )
        if config.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
            _init_trunc_normal(self.no_obj_embed_spatial)
        else:
            self.no_obj_embed_spatial = None
        # Turns a mask prompt (B, 1, S, S) into decoder mask input at stride 4.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
        if config.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)
        else:
            self.obj_ptr_tpos_proj = nn.Identity()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ image features
    def encode_image(self, images: torch.Tensor) -> FrameFeatures:
        """Run the image encoder on normalised frames (B, 3, S, S)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected frames of {self.image_size}x{self.image_size}, got "
                f"{tuple(images.shape[-2:])}; resize them to the model's input size first"
            )
        encoded = self.image_encoder(images)
        stride4, stride8, stride16 = encoded["backbone_fpn"]
        decoder = self.sam_mask_decoder
        return FrameFeatures(
            high_res=[decoder.conv_s0(stride4), decoder.conv_s1(stride8)],
            top=stride16,
            top_pos=encoded["vision_pos_enc"][-1],
        )

    # ------------------------------------------------------------------ mask decoding
    @staticmethod
    def wants_multimask(num_points: int) -> bool:
        """Whether the decoder should propose three candidates: the official presets do so for
        zero or one point (a box counts as two), on first frames and while tracking alike."""
        return num_points <= 1

    def decode(
        self,
        pixel_features: torch.Tensor,
        high_res: list[torch.Tensor],
        *,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Prompt encoder and mask decoder on (memory-conditioned) features.

        ``points``: coordinates (B, N, 2) in input-image pixels (x, y) and labels (B, N) int
        (1 positive, 0 negative, 2/3 box corners, -1 padding). ``mask_logits``: a dense
        prompt (B, 1, H', W'), resized to the decoder's mask-input size when it differs.
        """
        batch = pixel_features.shape[0]
        device = pixel_features.device
        if points is None:
            # The decoder needs at least one token: a padding point.
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = torch.full((batch, 1), -1, dtype=torch.int32, device=device)
        else:
            coords, labels = points
        dense_prompt = None
        if mask_logits is not None:
            target = self.sam_prompt_encoder.mask_input_size
            dense_prompt = mask_logits
            if tuple(mask_logits.shape[-2:]) != tuple(target):
                dense_prompt = F.interpolate(
                    mask_logits.float(),
                    size=target,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
        sparse, dense = self.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=dense_prompt
        )
        masks, ious, tokens, object_score = self.sam_mask_decoder(
            image_embeddings=pixel_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res,
        )
        present = object_score > 0
        # A hard choice, consistent with the mask the user sees.
        masks = torch.where(present[:, None, None], masks, NO_OBJECT_LOGIT).float()

        if multimask:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch, device=device)
            low_res = masks[rows, best].unsqueeze(1)
            token = tokens[rows, best] if tokens.shape[1] > 1 else tokens[:, 0]
        else:
            low_res = masks
            token = tokens[:, 0]
        pointer = self._gate_pointer(self.obj_ptr_proj(token), present.float())
        return Prediction(low_res, masks, ious, pointer, object_score)

    def _gate_pointer(self, pointer: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Replace the pointer of absent objects by the learned no-object pointer."""
        return present * pointer + (1 - present) * self.no_obj_ptr

    def mask_as_output(self, features: FrameFeatures, mask: torch.Tensor) -> Prediction:
        """A binary mask prompt (B, 1, S, S) taken as the prediction itself.

        The mask becomes +-10 logits; the decoder still runs once on the downsampled mask to
        produce an object pointer.
        """
        as_logits = mask.float() * MASK_PROMPT_SCALE + MASK_PROMPT_BIAS
        side = as_logits.shape[-1] // 4
        low_res = F.interpolate(
            as_logits, size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )
        from_decoder = self.decode(
            features.top, features.high_res, mask_logits=self.mask_downsample(as_logits)
        )
        present = (mask.flatten(1).float() > 0).any(dim=1, keepdim=True).float()
        pointer = self._gate_pointer(from_decoder.obj_ptr, present)
        ones = mask.new_ones(mask.shape[0], 1).float()
        object_score = present * MASK_PROMPT_SCALE + MASK_PROMPT_BIAS
        return Prediction(low_res, low_res, ones, pointer, object_score)

    def upsample_to_input(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits (B, 1, 4h, 4w) -> (B, 1, S, S), bilinear."""
        size = (self.image_size, self.image_size)
        return F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ memory
    def without_memory(self, features: FrameFeatures) -> torch.Tensor:
        """Features of a first conditioning frame: the no-memory embedding added (B, 256, h, w)."""
        return features.top + self.no_mem_embed.view(1, -1, 1, 1)

    def _pointer_positions(self, offsets: list[int], num_frames: int, device) -> torch.Tensor:
        """Temporal encoding of pointer offsets, (P, 64). Offsets are scaled by the widest
        reach of pointers, which short stacks shorten."""
        count = len(offsets)
        if not self.config.add_tpos_enc_to_obj_ptrs:
            return torch.zeros(count, self.mem_dim, device=device)
        # max(..., 1): a one-frame stack would otherwise divide zero by zero.
        span = max(min(num_frames, self.config.max_obj_ptrs_in_encoder) - 1, 1)
        scaled = torch.tensor(offsets, dtype=torch.float32, device=device) / span
        width = self.hidden_dim if self.config.proj_tpos_enc_in_obj_ptrs else self.mem_dim
        return self.obj_ptr_tpos_proj(sine_encoding_1d(scaled, width))

    def with_memory(
        self,
        features: FrameFeatures,
        spatial: list[SpatialMemory],
        pointers: list[PointerMemory],
        memory_pos: torch.Tensor,
        num_frames: int,
    ) -> torch.Tensor:
        """Condition a frame's features on memories through the memory attention.

        ``memory_pos``: the memory encoder's position encoding (1, 64, h, w), the same for every
        memory frame. ``num_frames``: the length of the stack, which scales pointer offsets.
        Stored features may be bfloat16; they are computed in float32. Returns (B, 256, h, w).
        """
        batch, channels, height, width = features.top.shape
        tokens, positions = [], []
        pos_tokens = memory_pos.flatten(2).permute(2, 0, 1)  # (hw, 1, 64)
        for memory in spatial:
            feats = memory.features.to(features.top.device, torch.float32)
            tokens.append(feats.flatten(2).permute(2, 0, 1))
            slot = self.maskmem_tpos_enc[self.num_maskmem - memory.t_pos - 1]
            positions.append((pos_tokens + slot).expand(-1, batch, -1))
        pointer_tokens = 0
        if pointers:
            stacked = torch.stack([p.pointer.float() for p in pointers], dim=0)  # (P, B, 256)
            offsets = [p.offset for p in pointers]
            pos = self._pointer_positions(offsets, num_frames, features.top.device)
            split = channels // self.mem_dim
            # Each 256-d pointer becomes four 64-d tokens that share one temporal encoding.
            stacked = stacked.reshape(len(pointers), batch, split, self.mem_dim)
            stacked = stacked.permute(0, 2, 1, 3).reshape(-1, batch, self.mem_dim)
            pos = pos.repeat_interleave(split, dim=0).unsqueeze(1).expand(-1, batch, -1)
            tokens.append(stacked)
            positions.append(pos)
            pointer_tokens = stacked.shape[0]
        fused = self.memory_attention(
            curr=[features.top.flatten(2).permute(2, 0, 1)],
            curr_pos=[features.top_pos.flatten(2).permute(2, 0, 1)],
            memory=torch.cat(tokens, dim=0),
            memory_pos=torch.cat(positions, dim=0),
            num_obj_ptr_tokens=pointer_tokens,
        )
        return fused.permute(1, 2, 0).reshape(batch, channels, height, width)

    def encode_memory(
        self,
        features: FrameFeatures,
        mask_logits: torch.Tensor,
        object_score: torch.Tensor,
        *,
        binarize: bool,
    ) -> torch.Tensor:
        """Encode a frame and its mask (B, 1, S, S logits) into memory features (B, 64, h, w).

        ``binarize`` feeds the hard mask instead of its sigmoid (official video setting for
        frames the user prompted).
        """
        prob = (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)
        prob = prob * self.config.sigmoid_scale_for_mem_enc + self.config.sigmoid_bias_for_mem_enc
        encoded = self.memory_encoder(features.top, prob, skip_mask_sigmoid=True)
        memory = encoded["vision_features"]
        if self.no_obj_embed_spatial is not None:
            absent = (object_score <= 0).float()[..., None, None]  # (B, 1, 1, 1)
            memory = memory + absent * self.no_obj_embed_spatial[..., None, None]
        return memory

    def memory_position(self, device) -> torch.Tensor:
        """Position encoding of memory features (1, 64, h, w); the same for every frame, so the
        tracker keeps one copy instead of one per frame and object."""
        side = self.config.feature_size
        return sine_position_encoding_2d(side, side, self.mem_dim, device=device)

    def forward(self, images: torch.Tensor) -> FrameFeatures:  # pragma: no cover - thin alias
        """Alias of :meth:`encode_image`, so the module can be called or traced."""
        return self.encode_image(images)
