"""The parameters of segment everything: Meta's ``SAM2AutomaticMaskGenerator`` names and
defaults, checked on creation so a bad value fails before any work with a message that says
what to give instead."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .mask_records import layer_point_grids


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AutomaticMaskSettings:
    """The generator's parameters, with Meta's names and defaults; validated on creation.

    ``points_per_side`` clicks a side on the whole frame (None: give ``point_grids``, one
    (N, 2) array of (x, y) in [0, 1] per crop layer). ``points_per_batch`` clicks are decoded
    together. ``pred_iou_thresh`` and ``stability_score_thresh`` filter candidates (0 turns a
    filter off); ``stability_score_offset`` is the logit margin of the stability score and
    ``mask_threshold`` the logit that separates inside from outside. ``box_nms_thresh`` and
    ``crop_nms_thresh`` are the box IoU above which a duplicate is dropped within a crop and
    across crops. ``crop_n_layers`` adds layers of 2**i x 2**i crops that overlap by
    ``crop_overlap_ratio`` of the short side; layer i has ``points_per_side /
    crop_n_points_downscale_factor**i`` clicks a side. ``min_mask_region_area`` removes holes
    and islands (low-resolution pixels, see the module's notes). ``use_m2m`` decodes every
    candidate once more with its own mask as a prompt. ``multimask_output`` asks for three
    candidates per click. ``output_mode`` exists for compatibility; only "binary_mask".
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: list | None = field(default=None, compare=False)
    min_mask_region_area: float = 0
    output_mode: str = "binary_mask"
    use_m2m: bool = False
    multimask_output: bool = True

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_options(cls, **options: Any) -> AutomaticMaskSettings:
        """Settings from keyword options; an unknown name raises ValueError listing the
        valid ones."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise ValueError(
                f"unknown automatic-mask parameter(s) {', '.join(unknown)}; valid parameters "
                f"are: {', '.join(cls.names())}"
            )
        return cls(**options)

    def __post_init__(self) -> None:
        problems = []
        if (self.points_per_side is None) == (self.point_grids is None):
            problems.append("give exactly one of points_per_side and point_grids")
        if self.points_per_side is not None and not (
            _is_int(self.points_per_side) and self.points_per_side >= 1
        ):
            problems.append(
                f"points_per_side must be an integer >= 1, not {self.points_per_side!r}"
            )
        for name in ("points_per_batch", "crop_n_points_downscale_factor"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                problems.append(f"{name} must be an integer >= 1, not {value!r}")
        if not (_is_int(self.crop_n_layers) and self.crop_n_layers >= 0):
            problems.append(f"crop_n_layers must be an integer >= 0, not {self.crop_n_layers!r}")
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "stability_score_offset",
            "mask_threshold",
        ):
            if not _is_real(getattr(self, name)):
                problems.append(f"{name} must be a finite number, not {getattr(self, name)!r}")
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 <= value <= 1):
                problems.append(f"{name} must be an IoU in [0, 1], not {value!r}")
        if not (_is_real(self.crop_overlap_ratio) and 0 <= self.crop_overlap_ratio < 1):
            problems.append(
                f"crop_overlap_ratio must be in [0, 1), not {self.crop_overlap_ratio!r}"
            )
        if not (_is_real(self.min_mask_region_area) and self.min_mask_region_area >= 0):
            problems.append(
                f"min_mask_region_area must be a number >= 0, not {self.min_mask_region_area!r}"
            )
        if self.output_mode != "binary_mask":
            problems.append(f"output_mode must be 'binary_mask', not {self.output_mode!r}")
        for name in ("use_m2m", "multimask_output"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                problems.append(f"{name} must be True or False, not {getattr(self, name)!r}")
        if not problems:
            problems.extend(self._grid_problems())
        if problems:
            raise ValueError("bad automatic-mask parameters: " + "; ".join(problems))

    def _grid_problems(self) -> list[str]:
        if self.point_grids is None:
            sides = [
                int(self.points_per_side / self.crop_n_points_downscale_factor**layer)
                for layer in range(self.crop_n_layers + 1)
            ]
            if min(sides) < 1:
                return [
                    f"crop layer {sides.index(min(sides))} would have no points: lower "
                    "crop_n_points_downscale_factor or crop_n_layers, or raise points_per_side"
                ]
            return []
        grids = list(self.point_grids)
        if len(grids) != self.crop_n_layers + 1:
            return [f"point_grids needs one grid per crop layer ({self.crop_n_layers + 1})"]
        for layer, grid in enumerate(grids):
            grid = np.asarray(grid, dtype=np.float64)
            if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
                return [f"point_grids[{layer}] must be an (N, 2) array of (x, y), N >= 1"]
            if not (np.isfinite(grid).all() and (grid >= 0).all() and (grid <= 1).all()):
                return [f"point_grids[{layer}] must hold (x, y) in [0, 1]"]
        return []

    def grids(self) -> list[np.ndarray]:
        """The (N, 2) float64 grid of each crop layer, (x, y) in [0, 1]."""
        if self.point_grids is not None:
            return [np.asarray(grid, dtype=np.float64) for grid in self.point_grids]
        return layer_point_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )
