"""The SAM 2 network in plain torch. Imports torch only: never napari, Qt or magicgui."""

from .build import build_sam2
from .config import PRESET_NAMES, PRESETS, SAM2Config, TrunkConfig, get_config
from .sam2 import SAM2

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "SAM2",
    "SAM2Config",
    "TrunkConfig",
    "build_sam2",
    "get_config",
]
