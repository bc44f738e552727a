"""Segment everything on one frame: SAM 2's automatic mask generator, on our network.

The frame (or each crop of it) is encoded once in image mode (the learned no-memory embedding
added to the top features). A grid of single positive clicks is decoded in batches, each click
giving three candidate masks (multimask output). Candidates are kept when their predicted IoU
exceeds ``pred_iou_thresh`` and their stability score reaches ``stability_score_thresh``;
masks cut off by a crop's inner edge are dropped; duplicates are removed by box non-maximum
suppression within each crop and, when there are several crops, across crops (smaller crops
win). The parameters, their defaults and the records returned are those of Meta's
``SAM2AutomaticMaskGenerator`` (release of 2024-12).

Two facts of the reference worth knowing:

- ``min_mask_region_area`` works on the decoder's low-resolution logits (input size / 4 a
  side, areas counted in those pixels): holes and islands of at most that area are removed
  before the masks are upsampled, judged at logit 0 whatever ``mask_threshold`` is.
- In image mode the object-score head is ignored: every click gives masks.

Coordinates follow SAM: points (x, y), boxes in records (x, y, width, height) where the width
of a mask's box is its last column minus its first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..model.sam2 import SAM2, FrameFeatures
from .automatic_settings import AutomaticMaskSettings
from .device import autocast_context, resolve_device
from .frames import FrameSource
from .mask_records import (
    Candidates,
    box_nms,
    crop_boxes,
    cut_by_crop,
    mask_boxes,
    remove_small_regions,
    stability_score,
)

#: Low-resolution logits given back as a mask prompt by ``use_m2m`` are clamped to this
#: magnitude, as the reference's image predictor does.
MASK_PROMPT_CLAMP = 32.0
#: Upsampled logits are handled in chunks of at most this many float32 values (256 MiB).
CHUNK_VALUES = 64 * 2**20


class AutomaticMaskGenerator:
    """Find every object on a frame. ``model``: our SAM 2 network; ``settings`` or keyword
    options: see :class:`AutomaticMaskSettings`; ``device``: where to run (default: the
    model's)."""

    def __init__(
        self,
        model: SAM2,
        settings: AutomaticMaskSettings | None = None,
        *,
        device: str | torch.device | None = None,
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise ValueError("give either settings or keyword options, not both")
        self.settings = settings or AutomaticMaskSettings.from_options(**options)
        self.device = model.device if device is None else resolve_device(device)
        self.model = model if model.device == self.device else model.to(self.device)
        self._grids = self.settings.grids()

    # ------------------------------------------------------------------ public
    def generate(
        self, source: FrameSource, frame: int = 0, *, features: FrameFeatures | None = None
    ) -> list[dict[str, Any]]:
        """Records of the masks found on ``frame`` of ``source``, as Meta's generator returns
        them with ``output_mode="binary_mask"``: ``segmentation`` bool (H, W), ``area`` int,
        ``bbox`` [x, y, w, h], ``predicted_iou``, ``stability_score``, ``point_coords``
        [[x, y]] and ``crop_box`` [x, y, w, h]. ``features``: the whole frame's image features
        at the model's input size when already computed (e.g. by a tracker)."""
        return self.records(self.candidates(source, frame, features=features), source.frame_shape)

    def candidates(
        self, source: FrameSource, frame: int = 0, *, features: FrameFeatures | None = None
    ) -> Candidates:
        """The kept masks as compact :class:`Candidates`, in the order of the records."""
        settings = self.settings
        height, width = source.frame_shape
        crops = crop_boxes(height, width, settings.crop_n_layers, settings.crop_overlap_ratio)
        normalised = None
        found = []
        for box, layer in crops:
            if layer == 0:
                whole = features
                image = (
                    None
                    if whole is not None
                    else source.model_input(frame, self.model.image_size, device=self.device)
                )
            else:
                if normalised is None:
                    normalised = source.read(frame)
                x0, y0, x1, y1 = box
                image, whole = self._crop_input(normalised[y0:y1, x0:x1]), None
            found.append(self._crop(image, whole, box, self._grids[layer], (height, width)))
        kept = Candidates.concat(found)
        if len(crops) > 1 and len(kept):
            crop_areas = (kept.crops[:, 2] - kept.crops[:, 0]) * (
                kept.crops[:, 3] - kept.crops[:, 1]
            )
            # Prefer masks from smaller crops, which saw their object at a higher resolution.
            keep = box_nms(kept.boxes, 1 / crop_areas, settings.crop_nms_thresh)
            kept = kept.select(keep)
        return kept

    def records(self, kept: Candidates, frame_shape: tuple[int, int]) -> list[dict[str, Any]]:
        """Full-size masks and their record fields, one dict per candidate."""
        masks = self.full_masks(kept, frame_shape)
        boxes = kept.boxes.cpu().numpy()
        crops = kept.crops.cpu().numpy()
        ious = kept.ious.cpu().tolist()
        stability = kept.stability.cpu().tolist()
        points = kept.points.cpu().tolist()
        out = []
        for index, mask in enumerate(masks):
            x0, y0, x1, y1 = (float(v) for v in boxes[index])
            cx0, cy0, cx1, cy1 = (float(v) for v in crops[index])
            out.append(
                {
                    "segmentation": mask,
                    "area": int(mask.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": ious[index],
                    "point_coords": [points[index]],
                    "stability_score": stability[index],
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        return out

    def full_masks(self, kept: Candidates, frame_shape: tuple[int, int]) -> list[np.ndarray]:
        """Each candidate's bool mask (H, W) of the whole frame."""
        masks: list[np.ndarray | None] = [None] * len(kept)
        crops = kept.crops.cpu()
        for crop in torch.unique(crops, dim=0).tolist():
            rows = torch.nonzero((crops == torch.tensor(crop)).all(dim=1))[:, 0]
            x0, y0, x1, y1 = crop
            for part, logits in self._upsampled(
                kept.low_res[rows.to(kept.low_res.device)], (y1 - y0, x1 - x0)
            ):
                inside = (logits > self.settings.mask_threshold).cpu().numpy()
                for row, crop_mask in zip(rows[part].tolist(), inside):
                    full = np.zeros(frame_shape, dtype=bool)
                    full[y0:y1, x0:x1] = crop_mask
                    masks[row] = full
        return masks

    # ------------------------------------------------------------------ steps
    def _crop_input(self, crop: np.ndarray) -> torch.Tensor:
        """A crop of the normalised frame (h, w, 3) in [0, 1] -> model input (1, 3, S, S)."""
        reader = FrameSource(crop, rgb=True, intensity_range=(0.0, 1.0))
        return reader.model_input(0, self.model.image_size, device=self.device)

    def _crop(self, image, features, box, grid, frame_shape) -> Candidates:
        """Every kept mask of one crop, after its own non-maximum suppression."""
        x0, y0, x1, y1 = box
        size = (y1 - y0, x1 - x0)
        with torch.inference_mode(), autocast_context(self.device):
            if features is None:
                features = self.model.encode_image(image)
            embedding = self.model.without_memory(features)
            # Grid points in the crop's pixels, float64 then float32, as the reference scales.
            points = grid * np.array([size[1], size[0]], dtype=np.float64)
            batch = self.settings.points_per_batch
            found = [
                self._batch(
                    embedding,
                    features.high_res,
                    points[start : start + batch],
                    box,
                    size,
                    frame_shape,
                )
                for start in range(0, len(points), batch)
            ]
        kept = Candidates.concat(found)
        return kept.select(box_nms(kept.boxes, kept.ious, self.settings.box_nms_thresh))

    def _decode(self, embedding, high_res, coords, mask_logits=None, multimask=True):
        """(B, 2) model-input points, optional (B, 1, h, w) mask prompts -> logits (B, K, h, w)
        and predicted IoU (B, K), without the object-score gating of video mode."""
        prompts = self.model.sam_prompt_encoder
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int32, device=coords.device)
        sparse, dense = prompts(points=(coords[:, None], labels), boxes=None, masks=mask_logits)
        # A broadcast view of the one image: the decoder's first add makes the only copy.
        logits, ious, _, _ = self.model.sam_mask_decoder(
            image_embeddings=embedding.expand(coords.shape[0], -1, -1, -1),
            image_pe=prompts.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res,
        )
        return logits.float(), ious.float()

    def _batch(self, embedding, high_res, points, box, size, frame_shape) -> Candidates:
        settings = self.settings
        crop_points = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        scale = torch.tensor([size[1], size[0]], dtype=torch.float32, device=self.device)
        coords = crop_points / scale * self.model.image_size
        logits, ious = self._decode(
            embedding, high_res, coords, multimask=settings.multimask_output
        )
        per_click = logits.shape[1]
        logits, ious = logits.flatten(0, 1), ious.flatten(0, 1)
        crop_points = crop_points.repeat_interleave(per_click, dim=0)
        if settings.use_m2m:
            logits, ious = self._refine(
                embedding, high_res, coords.repeat_interleave(per_click, dim=0), logits
            )
        keep = torch.ones_like(ious, dtype=torch.bool)
        if settings.pred_iou_thresh > 0:
            keep = ious > settings.pred_iou_thresh
        logits = remove_small_regions(logits[keep], settings.min_mask_region_area)
        ious, crop_points = ious[keep], crop_points[keep]

        offset = torch.tensor([box[0], box[1], box[0], box[1]], device=self.device)
        frame_box = (0, 0, frame_shape[1], frame_shape[0])
        stability, boxes, alive = [], [], []
        for part, upsampled in self._upsampled(logits, size):
            score = stability_score(
                upsampled, settings.mask_threshold, settings.stability_score_offset
            )
            stable = torch.ones_like(score, dtype=torch.bool)
            if settings.stability_score_thresh > 0:
                stable = score >= settings.stability_score_thresh
            inside = upsampled > settings.mask_threshold
            mask_box = mask_boxes(inside if bool(stable.all()) else inside[stable]) + offset
            whole = ~cut_by_crop(mask_box, box, frame_box)
            rows = torch.arange(part.start, part.stop, device=self.device)[stable][whole]
            stability.append(score[stable][whole])
            boxes.append(mask_box[whole])
            alive.append(rows)
        rows = torch.cat(alive) if alive else torch.zeros(0, dtype=torch.int64, device=self.device)
        count = len(rows)
        return Candidates(
            low_res=logits[rows],
            ious=ious[rows],
            stability=torch.cat(stability) if stability else ious.new_zeros(0),
            points=crop_points[rows] + offset[:2],
            boxes=torch.cat(boxes) if boxes else offset.new_zeros(0, 4),
            crops=torch.tensor([box], dtype=torch.int64, device=self.device).expand(count, -1),
        )

    def _refine(self, embedding, high_res, coords, logits):
        """Decode each candidate again with its own clamped logits as a mask prompt."""
        prompts = logits.clamp(-MASK_PROMPT_CLAMP, MASK_PROMPT_CLAMP)[:, None]
        batch = self.settings.points_per_batch
        refined, scores = [], []
        for start in range(0, len(coords), batch):
            stop = start + batch
            masks, ious = self._decode(
                embedding, high_res, coords[start:stop], prompts[start:stop], multimask=False
            )
            refined.append(masks[:, 0])
            scores.append(ious[:, 0])
        return torch.cat(refined), torch.cat(scores)

    def _upsampled(self, logits: torch.Tensor, size: tuple[int, int]):
        """Yield ``(rows, logits upsampled to size)`` over chunks of low-res logits (N, h, w);
        ``rows`` is the chunk's slice of the N rows."""
        per_chunk = max(1, CHUNK_VALUES // (size[0] * size[1]))
        for start in range(0, logits.shape[0], per_chunk):
            part = slice(start, min(start + per_chunk, logits.shape[0]))
            upsampled = F.interpolate(
                logits[part, None], size=size, mode="bilinear", align_corners=False
            )
            yield part, upsampled[:, 0]


def single_frame(
    image: Any, *, channel_axis: int | None = None, intensity_range=None
) -> FrameSource:
    """A :class:`FrameSource` over one 2-D frame (grey, RGB(A) or multichannel, any dtype);
    ValueError for anything else, such as a stack or an empty image."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(image.shape)
    if len(shape) < 2 or 0 in shape:
        raise ValueError(
            f"segment everything needs one non-empty 2-D frame (H, W), (H, W, 3|4) or "
            f"multichannel with channel_axis; got shape {shape}"
        )
    source = FrameSource(image, channel_axis=channel_axis, intensity_range=intensity_range)
    frame_rank = 2 if source.layout == "grey" else 3
    if len(shape) != frame_rank:
        raise ValueError(
            f"segment everything works on one 2-D frame, but the array of shape {shape} is a "
            f"stack of {source.num_frames} frames; pass one slice, e.g. image[k]"
        )
    return source


def labels_from_records(records: list[dict[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """One uint32 label image (H, W) from mask records: smaller masks are painted over larger
    ones (of equal areas, the earlier record wins); ids run 1..N over the masks left with at
    least one pixel, in the records' order."""
    painted = np.zeros(shape, dtype=np.int64)
    by_area = sorted(range(len(records)), key=lambda i: (-int(records[i]["area"]), -i))
    for index in by_area:  # largest first, so smaller masks win where they overlap
        painted[records[index]["segmentation"]] = index + 1
    present = np.unique(painted)
    present = present[present > 0]
    renumber = np.zeros(len(records) + 1, dtype=np.uint32)
    renumber[present] = np.arange(1, len(present) + 1, dtype=np.uint32)
    return renumber[painted]
