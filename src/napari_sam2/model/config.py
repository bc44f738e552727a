"""Presets for the eight official SAM 2 checkpoints, and custom configurations.

The values restate the facts of Meta's YAML files (``configs/sam2`` and ``configs/sam2.1``) as
plain dataclasses, so no hydra or yaml is needed at run time. SAM 2.0 and 2.1 share the trunk
sizes; 2.1 adds a spatial no-object embedding and a signed, projected temporal encoding of the
object pointers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TrunkConfig:
    """Hiera trunk sizes. ``stages`` counts blocks per stage; block indices in
    ``global_att_blocks`` attend globally, the others within windows of ``window_spec``."""

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int]

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Channels of the trunk's four outputs, lowest resolution first (the neck's order)."""
        return tuple(self.embed_dim * 2**level for level in (3, 2, 1, 0))


@dataclass(frozen=True)
class SAM2Config:
    """Everything needed to build one SAM 2 network.

    ``image_size`` is the square input side in pixels; it must be a multiple of 32. The memory
    attention's rotary grid follows it (``image_size // 16`` a side).
    """

    name: str
    trunk: TrunkConfig
    version: str = "2.1"
    image_size: int = 1024
    # Memory: one conditioning slot plus six recent frames.
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    # Differences between SAM 2.0 and 2.1.
    no_obj_embed_spatial: bool = True
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    # Settings that the video predictor applies by default (``apply_postprocessing=True``).
    binarize_mask_from_pts_for_mem_enc: bool = True
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    fill_hole_area: int = 8

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(
                f"image_size must be a positive multiple of 32 (got {self.image_size}); "
                "the Hiera trunk downsamples by 32"
            )
        if self.version not in ("2.0", "2.1"):
            raise ValueError(f"version must be '2.0' or '2.1', not {self.version!r}")

    @property
    def feature_size(self) -> int:
        """Side of the lowest-resolution feature map (stride 16)."""
        return self.image_size // 16

    def with_image_size(self, image_size: int) -> SAM2Config:
        """The same network at another input size (as MedSAM2 uses 512)."""
        return replace(self, image_size=image_size)


_TINY = TrunkConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7))
_SMALL = TrunkConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7))
_BASE_PLUS = TrunkConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14))
_LARGE = TrunkConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7))

_SAM20_FLAGS = {
    "version": "2.0",
    "no_obj_embed_spatial": False,
    "add_tpos_enc_to_obj_ptrs": False,
    "proj_tpos_enc_in_obj_ptrs": False,
    "use_signed_tpos_enc_to_obj_ptrs": False,
}


def _presets() -> dict[str, SAM2Config]:
    table = {}
    for size, trunk in (
        ("tiny", _TINY),
        ("small", _SMALL),
        ("base_plus", _BASE_PLUS),
        ("large", _LARGE),
    ):
        name = f"sam2_hiera_{size}"
        table[name] = SAM2Config(name=name, trunk=trunk, **_SAM20_FLAGS)
    for size, trunk in (
        ("tiny", _TINY),
        ("small", _SMALL),
        ("base_plus", _BASE_PLUS),
        ("large", _LARGE),
    ):
        name = f"sam2.1_hiera_{size}"
        table[name] = SAM2Config(name=name, trunk=trunk)
    return table


PRESETS: dict[str, SAM2Config] = _presets()
PRESET_NAMES: list[str] = list(PRESETS)


def unknown_preset(name: object) -> ValueError:
    """The one error for a name that is not a preset (the model, the registry and the CLI)."""
    return ValueError(
        f"unknown SAM 2 model {name!r}; the presets are {', '.join(PRESET_NAMES)} "
        "(napari-sam2 models lists them)"
    )


def get_config(name: str, image_size: int | None = None) -> SAM2Config:
    """The preset called ``name``, optionally at another input size."""
    if name not in PRESETS:
        raise unknown_preset(name)
    config = PRESETS[name]
    return config if image_size is None else config.with_image_size(image_size)
