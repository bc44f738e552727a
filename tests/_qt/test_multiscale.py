"""A multiscale (pyramid) image in a real napari window: real clicks, the real thread worker.

The dock reads the level that fits the model, the mask shows on screen where the user clicked
(read back from the rendered canvas), and choosing another level in the dock segments there.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2._sample_data import make_demo_stack
from tests._napari.helpers import headless

from .test_widget import TIMEOUT_MS, dock, idle

pytestmark = pytest.mark.gui

SCALE = (1.0, 0.5, 0.5)
TRANSLATE = (0.0, 7.0, -5.0)


def screen_colour(user, world_rc) -> np.ndarray:
    """RGB the canvas shows now at world (row, col), from napari's rendered screenshot."""
    shot = user.viewer.screenshot(canvas_only=True, flash=False)
    x, y = user.canvas_xy(world_rc)
    ratio = shot.shape[1] / user.canvas.width()
    return shot[round(y * ratio), round(x * ratio), :3].astype(float)


def test_a_multiscale_layer_in_a_real_viewer(user, model, qtbot):
    viewer = user.viewer
    finest = make_demo_stack((3, 320, 320), seed=1)
    pyramid = [finest, finest[:, ::2, ::2].copy(), finest[:, ::4, ::4].copy()]
    viewer.add_image(
        pyramid, multiscale=True, name="cells", scale=SCALE, translate=TRANSLATE,
        contrast_limits=(0, 4000),
    )  # fmt: skip
    widget = dock(viewer, model)
    a = widget.annotator
    qtbot.waitUntil(lambda: a.layers is not None, timeout=TIMEOUT_MS)
    viewer.dims.set_current_step(0, 1)
    # The dock offers the levels; auto is level 1 (160 <= 256, the test model's input size).
    combo = widget.level.native
    assert widget.level.visible
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "auto (finest that fits the model)",
        "level 0 (320 × 320)",
        "level 1 (160 × 160)",
        "level 2 (80 × 80)",
    ]
    assert "Reads level 1 (160 × 160) of 3" in widget.level.tooltip
    # Loading the model changed "auto" from level 0 (input size 1024) to 1: no stale layer.
    assert [layer.name for layer in viewer.layers if "labels" in layer.name] == [
        "cells SAM 2 labels"
    ]
    points = a.layers.points
    click = user.world_of_data(points, (100, 60))  # level-0 pixel (row 100, col 60)
    user.click(click)
    qtbot.waitUntil(lambda: idle(widget) and (a.layers.labels.data == 1).any(), timeout=TIMEOUT_MS)
    labels = a.layers.labels
    assert labels.data.shape == (3, 160, 160)
    # The click landed at level-1 pixel (row 50, col 30) within the canvas's rounding.
    prompt = a.read_prompts().prompts[(1, 1)]
    np.testing.assert_allclose(prompt.points[0], (30, 50), atol=0.5 / viewer.camera.zoom)
    engine = headless(model, pyramid[1])
    expected = engine.set_prompts(1, 1, points=prompt.points, labels=[1])[1] > 0
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(labels.data[1] == 1, expected)

    # On screen: a pixel inside the mask is tinted with object 1's yellow, one outside is grey.
    inside, outside = _inside_and_outside(expected, away_from=(50, 30))
    tinted = screen_colour(user, user.world_of_data(labels, inside))
    grey = screen_colour(user, user.world_of_data(labels, outside))
    assert tinted[0] - tinted[2] > 60 and tinted[1] - tinted[2] > 40, tinted
    assert abs(grey[0] - grey[2]) < 25, grey

    # Level 0 chosen in the dock: the level-1 labels are kept, the mask is made at level 0.
    coarse = labels
    user.choose(combo, 1)
    qtbot.waitUntil(
        lambda: (
            idle(widget) and a.layers.labels is not coarse and (a.layers.labels.data == 1).any()
        ),
        timeout=TIMEOUT_MS,
    )
    fine = a.layers.labels
    assert fine.data.shape == (3, 320, 320)
    np.testing.assert_allclose(fine.scale, SCALE)
    assert coarse in viewer.layers and coarse.name == "cells SAM 2 labels (level 1)"
    prompt0 = a.read_prompts().prompts[(1, 1)]
    np.testing.assert_allclose(prompt0.points, prompt.points * 2)
    engine0 = headless(model, finest)
    expected0 = engine0.set_prompts(1, 1, points=prompt0.points, labels=[1])[1] > 0
    np.testing.assert_array_equal(fine.data[1] == 1, expected0)
    assert widget.state.level == 0 and a.level() == 0


def _inside_and_outside(mask: np.ndarray, away_from) -> tuple[tuple[int, int], tuple[int, int]]:
    """A (row, col) deep inside ``mask`` and one far outside it, both 3 pixels from any edge
    and 12 from ``away_from`` (the click, whose marker covers the image there)."""
    from scipy import ndimage

    rows, cols = np.indices(mask.shape)
    far = np.hypot(rows - away_from[0], cols - away_from[1]) > 12
    far[:3], far[-3:], far[:, :3], far[:, -3:] = False, False, False, False
    depth_in = ndimage.distance_transform_edt(mask) * far
    depth_out = ndimage.distance_transform_edt(~mask) * far
    inside = np.unravel_index(np.argmax(depth_in), mask.shape)
    outside = np.unravel_index(np.argmax(depth_out), mask.shape)
    assert depth_in[inside] >= 3 and depth_out[outside] >= 3
    return (int(inside[0]), int(inside[1])), (int(outside[0]), int(outside[1]))
