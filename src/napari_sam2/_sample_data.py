"""Sample data for the plugin: a small synthetic z-stack of cell-like objects, made in code.

Nothing is downloaded. The stack is seeded, so every call returns the same array.
"""

from __future__ import annotations

import numpy as np

__all__ = ["demo_stack", "make_demo_stack"]

_NUM_CELLS = 5


def make_demo_stack(
    shape: tuple[int, int, int] = (16, 128, 128), *, seed: int = 0, num_cells: int = _NUM_CELLS
) -> np.ndarray:
    """A (Z, Y, X) uint16 stack of bright, textured blobs that drift and grow through z.

    Each blob is an ellipse with a soft edge, a darker nucleus-like core and its own brightness.
    Along z it moves a few pixels and its radius swells then shrinks, as a cell does through
    focal planes. Camera-like noise and a dim uneven background sit on top.

    Args:
        shape: (Z, Y, X) of the result; Y and X at least 32.
        seed: random seed; the same seed gives the same stack.
        num_cells: how many blobs.

    Returns:
        uint16 array of ``shape`` with values roughly in 100..3000 (a 12-bit camera range).
    """
    depth, height, width = (int(n) for n in shape)
    if depth < 1 or height < 32 or width < 32:
        raise ValueError(f"shape must be (Z>=1, Y>=32, X>=32), got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    background = 200.0 + 60.0 * np.sin(rows / height * np.pi) * np.cos(cols / width * np.pi)
    stack = np.repeat(background[None], depth, axis=0).astype(np.float32)

    z = np.arange(depth, dtype=np.float32)
    centre_z = (depth - 1) / 2.0
    for _ in range(num_cells):
        radius = rng.uniform(0.08, 0.13) * min(height, width)
        row0 = rng.uniform(radius + 4, height - radius - 4)
        col0 = rng.uniform(radius + 4, width - radius - 4)
        drift = rng.uniform(-0.6, 0.6, size=2)  # pixels per slice
        elongation = rng.uniform(0.75, 1.25)
        brightness = rng.uniform(1200.0, 2400.0)
        for k in range(depth):
            # The blob is largest mid-stack, like a cell cut by focal planes.
            swell = 0.65 + 0.35 * np.cos((z[k] - centre_z) / max(depth, 2) * np.pi)
            r = radius * swell
            dr = (rows - (row0 + drift[0] * (k - centre_z))) / (r * elongation)
            dc = (cols - (col0 + drift[1] * (k - centre_z))) / (r / elongation)
            distance = np.sqrt(dr**2 + dc**2)
            body = 1.0 / (1.0 + np.exp((distance - 1.0) * 12.0))
            core = 0.35 / (1.0 + np.exp((distance - 0.45) * 14.0))
            stack[k] += brightness * (body - core)

    stack += rng.normal(0.0, 40.0, size=stack.shape).astype(np.float32)
    return np.clip(stack, 0, 65535).astype(np.uint16)


def demo_stack() -> list[tuple]:
    """napari sample-data provider: the demo stack as one image layer data tuple."""
    data = make_demo_stack()
    return [(data, {"name": "SAM 2 demo stack", "colormap": "gray"}, "image")]
