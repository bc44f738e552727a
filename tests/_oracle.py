"""Meta's SAM 2 (the registry's ``sam2==1.1.0``) as a test oracle.

Only tests import this module. It builds random-weight official models at small input sizes
and copies weights between them and ours.
"""

from __future__ import annotations

import pytest
import torch

ORACLE_CONFIGS = {
    "sam2_hiera_tiny": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large": "configs/sam2/sam2_hiera_l.yaml",
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def require_oracle():
    """Skip the calling test when the oracle is not installed; return the ``sam2`` package."""
    return pytest.importorskip("sam2", reason="the SAM 2 oracle (sam2==1.1.0) is not installed")


def size_overrides(image_size: int) -> list[str]:
    """Hydra overrides that set the input size and the RoPE feature grids that follow it."""
    side = image_size // 16
    grid = f"[{side},{side}]"
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes={grid}",
        f"++model.memory_attention.layer.cross_attention.feat_sizes={grid}",
    ]


def build_oracle_video_predictor(preset: str, image_size: int, extra=()):
    """A random-weight ``SAM2VideoPredictor`` on the CPU, as ``build_sam2_video_predictor``
    makes it with its defaults (post-processing on)."""
    require_oracle()
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    return build_sam2_video_predictor(
        ORACLE_CONFIGS[preset],
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=size_overrides(image_size) + list(extra),
    )


def build_oracle_base(preset: str, image_size: int, extra=()):
    """A random-weight ``SAM2Base`` on the CPU, without the video post-processing overrides."""
    require_oracle()
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    return build_sam2(
        ORACLE_CONFIGS[preset],
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=size_overrides(image_size) + list(extra),
        apply_postprocessing=False,
    )


def randomise_(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Fill every parameter and float buffer with seeded noise, so that no weight is a trivial
    zero or one and parity checks exercise every path. Returns the module."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=gen) * scale
                tensor.copy_(noise.to(tensor.dtype))
    return module


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, what: str = ""):
    """Max abs difference within ``rtol`` of the reference's scale (its max abs value)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = ref.abs().max().clamp_min(1e-6)
    err = (ours.float() - ref.float()).abs().max()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} x scale {scale:.3g}"
