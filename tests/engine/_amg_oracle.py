"""Meta's ``SAM2AutomaticMaskGenerator`` beside ours, on the same random weights.

Only tests and benchmarks import this module. Meta's generator imports torchvision for two box
helpers and three image transforms; the registry's torchvision does not load beside the CPU
torch build these machines carry, so :func:`install_torchvision_stand_in` puts a minimal module
of our own under that name (only when the real one cannot be imported). It also gives the
oracle's image predictor a CPU replacement for its CUDA connected-components kernel, so that
``min_mask_region_area`` does what it does on a GPU instead of being skipped with a warning.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from tests._oracle import ORACLE_CONFIGS, require_oracle, size_overrides

#: Added to the IoU head's output bias: random weights predict an IoU near sigmoid(0) = 0.5,
#: below the default threshold of 0.8, so nothing would survive the filters.
IOU_HEAD_BIAS = 2.0
#: Factor on the hypernetworks' last layer: sharper logits, so that some masks are stable
#: under the +-1 logit offset of the stability score.
MASK_LOGIT_GAIN = 40.0


def skimage_image(name: str) -> np.ndarray:
    """An image that ships with scikit-image (``cell.png`` grey, ``ihc.png`` RGB), as stored."""
    import skimage.data
    import skimage.io

    folder = Path(skimage.data.__file__).parent
    return skimage.io.imread(folder / name)


# ---------------------------------------------------------------------- torchvision stand-in


def _area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) x0, y0, x1, y1 -> (N,) width times height, as torchvision counts it."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _reference_nms(boxes, scores, idxs, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS per category with torchvision's semantics: a stable sort by decreasing
    score, suppression where IoU > threshold (float32), kept indices in decreasing score
    order. One kept box at a time against all later ones."""
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes.float()[order]
    groups = idxs[order]
    areas = _area(ranked)
    alive = torch.ones(len(order), dtype=torch.bool)
    kept = []
    for rank in range(len(order)):
        if not alive[rank]:
            continue
        kept.append(int(order[rank]))
        box, rest = ranked[rank], ranked[rank + 1 :]
        width = torch.minimum(box[2], rest[:, 2]) - torch.maximum(box[0], rest[:, 0])
        height = torch.minimum(box[3], rest[:, 3]) - torch.maximum(box[1], rest[:, 1])
        inter = width.clamp(min=0) * height.clamp(min=0)
        overlap = inter / (areas[rank] + areas[rank + 1 :] - inter)
        same_group = groups[rank + 1 :] == groups[rank]
        alive[rank + 1 :] &= ~((overlap > iou_threshold) & same_group)
    return torch.tensor(kept, dtype=torch.int64)


class _ToTensor:
    """(H, W, C) array -> (C, H, W) float tensor; uint8 is divided by 255, floats are kept."""

    def __call__(self, picture):
        array = np.asarray(picture)
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if tensor.dtype == torch.uint8:
            return tensor.float().div(255)
        return tensor.float()


class _Resize(torch.nn.Module):
    """Bilinear, antialiased resize of a (C, H, W) tensor, as torchvision does on tensors."""

    def __init__(self, size):
        super().__init__()
        self.size = [int(side) for side in size]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch = image.unsqueeze(0)
        resized = F.interpolate(
            batch, size=self.size, mode="bilinear", align_corners=False, antialias=True
        )
        return resized.squeeze(0)


class _Normalize(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


def install_torchvision_stand_in() -> bool:
    """Make ``import torchvision.ops.boxes`` and ``torchvision.transforms`` work for the
    oracle. Returns True when the stand-in was installed, False when a real torchvision
    loads (as on the GPU machine)."""
    try:
        import torchvision.ops.boxes  # noqa: F401
        import torchvision.transforms  # noqa: F401

        return False
    except Exception:  # not installed, or built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    root = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    boxes.batched_nms = _reference_nms
    boxes.box_area = _area
    ops.boxes = boxes
    ops.batched_nms = _reference_nms
    ops.box_area = _area
    transforms.ToTensor = _ToTensor
    transforms.Resize = _Resize
    transforms.Normalize = _Normalize
    root.ops = ops
    root.transforms = transforms
    root.__version__ = "0.0-stand-in"
    sys.modules.update(
        {
            "torchvision": root,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes,
            "torchvision.transforms": transforms,
        }
    )
    return True


def _connected_components(mask: torch.Tensor):
    """CPU stand-in for the oracle's CUDA kernel: (N, 1, H, W) binary -> 8-connected labels
    and, per pixel, the area of its component (0 outside the mask)."""
    from skimage.measure import label

    binary = mask.to(torch.bool).cpu().numpy()
    labels = np.zeros(binary.shape, dtype=np.int32)
    areas = np.zeros(binary.shape, dtype=np.int32)
    for index in range(binary.shape[0]):
        regions = label(binary[index, 0], connectivity=2)
        counts = np.bincount(regions.ravel())
        counts[0] = 0
        labels[index, 0] = regions
        areas[index, 0] = counts[regions]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


# ---------------------------------------------------------------------- the pair


def sharpen_for_filters_(model: torch.nn.Module) -> torch.nn.Module:
    """Bias the IoU head and sharpen the mask logits of random weights in place, so that a
    share of the grid's masks passes the default IoU and stability filters."""
    decoder = model.sam_mask_decoder
    with torch.no_grad():
        decoder.iou_prediction_head.layers[-1].bias.add_(IOU_HEAD_BIAS)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(MASK_LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(MASK_LOGIT_GAIN)
    return model


def build_amg_pair(preset: str, image_size: int):
    """(ours, oracle_base): our network and Meta's ``SAM2Base`` as ``build_sam2`` makes it for
    the generator (its post-processing defaults on), with identical random weights."""
    require_oracle()
    install_torchvision_stand_in()
    from sam2.build_sam import build_sam2 as build_oracle

    from napari_sam2.model import build_sam2

    torch.manual_seed(0)
    oracle = build_oracle(
        ORACLE_CONFIGS[preset],
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=size_overrides(image_size),
        apply_postprocessing=True,
    )
    sharpen_for_filters_(oracle)
    ours = build_sam2(preset, image_size=image_size)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    theirs = oracle.state_dict()
    for name, tensor in ours.state_dict().items():
        if not torch.equal(tensor, theirs[name]):
            raise AssertionError(f"weights differ after loading: {name}")
    return ours.eval(), oracle.eval()


def oracle_generator(oracle_base, **parameters):
    """Meta's generator on ``oracle_base``, fitted to its (non-1024) input size and given the
    CPU connected-components stand-in."""
    install_torchvision_stand_in()
    import sam2.utils.misc as misc
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(oracle_base, **parameters)
    side = oracle_base.image_size
    # The predictor assumes the 1024 input's feature grids.
    generator.predictor._bb_feat_sizes = [(side // 4,) * 2, (side // 8,) * 2, (side // 16,) * 2]
    generate = generator.generate

    def generate_with_stand_in(image):
        # Only while this generator runs: the video oracle of other tests must keep Meta's
        # CPU behaviour (hole filling skipped without the CUDA kernel).
        saved = misc.get_connected_components
        misc.get_connected_components = _connected_components
        try:
            return generate(image)
        finally:
            misc.get_connected_components = saved

    generator.generate = generate_with_stand_in
    return generator


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def compare_records(ours: list, theirs: list) -> dict:
    """Match our records to the oracle's (same position first, else the best unmatched mask)
    and summarise: counts, the lowest mask IoU, the largest differences of predicted IoU and
    stability, and whether boxes, crop boxes and points agree."""
    unused = set(range(len(theirs)))
    ious, iou_diffs, stability_diffs = [], [], []
    same_boxes = same_crops = same_points = True
    for index, mine in enumerate(ours):
        if not unused:
            break
        match = index if index in unused else None
        if match is None or _mask_iou(mine["segmentation"], theirs[match]["segmentation"]) < 0.99:
            match = max(
                unused, key=lambda j: _mask_iou(mine["segmentation"], theirs[j]["segmentation"])
            )
        unused.discard(match)
        ref = theirs[match]
        ious.append(_mask_iou(mine["segmentation"], ref["segmentation"]))
        iou_diffs.append(abs(mine["predicted_iou"] - ref["predicted_iou"]))
        stability_diffs.append(abs(mine["stability_score"] - ref["stability_score"]))
        same_boxes &= np.allclose(mine["bbox"], ref["bbox"])
        same_crops &= np.allclose(mine["crop_box"], ref["crop_box"])
        same_points &= np.allclose(mine["point_coords"], ref["point_coords"], atol=1e-3)
    return {
        "count": len(ours),
        "oracle_count": len(theirs),
        "min_iou": min(ious, default=1.0),
        "max_iou_pred_diff": max(iou_diffs, default=0.0),
        "max_stability_diff": max(stability_diffs, default=0.0),
        "same_boxes": bool(same_boxes),
        "same_crop_boxes": bool(same_crops),
        "same_points": bool(same_points),
    }
