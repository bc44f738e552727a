"""Shared pieces of the benchmarks: synthetic frames, the two trackers, memory probes.

Both trackers run the same random weights (Meta's initialisation, object-score head biased so
that masks are real) on the same frames. Our side reads frames lazily through its
:class:`~napari_sam2.engine.frames.FrameSource`; Meta's ``SAM2VideoPredictor`` receives the very
same model inputs through a replaced ``load_video_frames``, as the parity tests do.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the oracle recipe lives in tests/
    sys.path.insert(0, str(REPO_ROOT))

#: Bias of the object-score head so random weights predict an object (DESIGN.md section 4).
OBJECT_SCORE_BIAS = 4.0
#: Disc centres as (row, column) fractions of the frame; one click per object on the first frame.
DISC_CENTRES = ((0.5, 0.3), (0.3, 0.6), (0.72, 0.55))
DISC_RADIUS = 0.08
#: More objects than discs (up to 13): further clicks on the textured background, as (row,
#: column) fractions, away from the discs' paths.
EXTRA_CLICKS = tuple((r, c) for r in (0.1, 0.9) for c in (0.1, 0.3, 0.5, 0.7, 0.9))
MAX_OBJECTS = len(DISC_CENTRES) + len(EXTRA_CLICKS)
DRIFT_PIXELS = 2  # per frame, bouncing so that any number of frames stays inside


class SyntheticStack:
    """A lazy (T, H, W) uint16 stack: frame t is made on demand from one noise image.

    Bright discs drift across textured noise. Only one noise image (H, W) is held, so a stack
    of any length costs the same memory; ``__array__`` raises so nothing can load it whole.
    """

    def __init__(self, num_frames: int, height: int = 1024, width: int = 1024, seed: int = 0):
        self.shape = (int(num_frames), int(height), int(width))
        self.dtype = np.dtype(np.uint16)
        self.ndim = 3
        rng = np.random.default_rng(seed)
        self._noise = rng.normal(800, 120, size=(height, width)).clip(0, 65535).astype(np.uint16)
        radius = max(2, int(DISC_RADIUS * min(height, width)))
        rows, cols = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        self._disc = ((rows**2 + cols**2) <= radius**2).astype(np.uint16) * 3000
        self._radius = radius

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, *args, **kwargs):
        raise RuntimeError("SyntheticStack is lazy and must never be materialised whole")

    def centres(self, frame: int) -> list[tuple[int, int]]:
        """(row, column) pixel centres of the discs on ``frame``."""
        _, height, width = self.shape
        span = max(1, width - 2 * self._radius - 2 - int(0.6 * width))
        shift = (frame * DRIFT_PIXELS) % (2 * span)
        shift = shift if shift < span else 2 * span - shift
        return [(int(r * height), int(c * width) + shift) for r, c in DISC_CENTRES]

    def clicks(self, num_objects: int) -> list[np.ndarray]:
        """One (1, 2) point per object on frame 0, as (x, y): the disc centres first, then
        points on the background (at most :data:`MAX_OBJECTS`)."""
        if not 1 <= num_objects <= MAX_OBJECTS:
            raise ValueError(f"num_objects must be 1..{MAX_OBJECTS}, got {num_objects}")
        _, height, width = self.shape
        extra = [(int(r * height), int(c * width)) for r, c in EXTRA_CLICKS]
        points = [*self.centres(0), *extra][:num_objects]
        return [np.array([[col, row]], dtype=np.float32) for row, col in points]

    def frame(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"frame {index} out of range for {self.shape[0]} frames")
        image = self._noise.copy()
        size = self._disc.shape[0]
        for row, col in self.centres(index):
            top, left = row - self._radius, col - self._radius
            image[top : top + size, left : left + size] += self._disc
        return image

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        return self.frame(int(key[0]))[key[1:]]


# ---------------------------------------------------------------------- models


def build_pair(preset: str, image_size: int, device: torch.device):
    """(ours, oracle): our network and Meta's video predictor with identical random weights."""
    from tests._oracle import build_oracle_video_predictor
    from tests.engine._video_oracle import _upcast_oracle_memory

    from napari_sam2.model import build_sam2

    oracle = build_oracle_video_predictor(preset, image_size)
    with torch.no_grad():
        oracle.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(OBJECT_SCORE_BIAS)
    _upcast_oracle_memory(oracle)
    ours = build_sam2(preset, image_size=image_size, fill_hole_area=0)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return ours.to(device).eval(), oracle.to(device).eval()


def random_model(preset: str, image_size: int, *, object_bias: float | None = 5.0):
    """Our network with seed-0 random weights; ``object_bias`` fills the object-score head's
    last bias so that masks are neither empty nor absent (None: left as initialised). The
    benchmarks that drive the dock or the command line save it as a checkpoint file."""
    from napari_sam2.model import build_sam2

    torch.manual_seed(0)
    model = build_sam2(preset, image_size=image_size)
    if object_bias is not None:
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(object_bias)
    return model


def feed_oracle_frames(frame_source, image_size: int, device: torch.device, cache=None):
    """Replace the oracle's video loader: it gets (T, 3, S, S) float32 from ``frame_source``,
    our own preprocessing, on ``device`` as its loader would put them. ``cache`` (a dict) keeps
    the tensor between calls so repeated ``init_state`` calls skip the work."""
    import sam2.sam2_video_predictor as video_module

    height, width = frame_source.frame_shape

    def load_video_frames(*args, **kwargs):
        if cache is not None and "frames" in cache:
            return cache["frames"], height, width
        frames = torch.cat(
            [frame_source.model_input(t, image_size) for t in range(frame_source.num_frames)]
        ).to(device)
        if cache is not None:
            cache["frames"] = frames
        return frames, height, width

    video_module.load_video_frames = load_video_frames
    video_module.tqdm = lambda steps, **kwargs: steps  # no progress bar in the output


def oracle_autocast(device: torch.device):
    """bfloat16 autocast for the oracle on CUDA, as Meta's notebooks run it; none on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------- memory probes


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mib() -> float:
    """Resident set size now, MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident set size since start or the last :func:`reset_peak_rss`, MiB."""
    return _status_mib("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
