"""fill_small_holes: small background regions of mask logits become just-inside logits."""

from __future__ import annotations

import torch

from napari_sam2.engine.holes import FILLED_LOGIT, fill_small_holes

INSIDE, OUTSIDE = 5.0, -5.0


def _logit_map() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, 1, 32, 32) logits: inside everywhere except a 3-pixel and a 20-pixel hole.

    Returns the map and the bool (32, 32) masks of the small and the large hole.
    """
    logits = torch.full((1, 1, 32, 32), INSIDE)
    small = torch.zeros(32, 32, dtype=torch.bool)
    small[5, 5:8] = True  # 3 pixels in a row
    large = torch.zeros(32, 32, dtype=torch.bool)
    large[15:19, 15:20] = True  # 4 x 5 = 20 pixels
    logits[0, 0][small | large] = OUTSIDE
    return logits, small, large


def test_fills_only_holes_up_to_max_area():
    logits, small, large = _logit_map()
    filled = fill_small_holes(logits, 8)
    assert torch.all(filled[0, 0][small] == FILLED_LOGIT)
    assert FILLED_LOGIT == 0.1
    assert torch.all(filled[0, 0][large] == OUTSIDE)
    assert torch.all(filled[0, 0][~(small | large)] == INSIDE)
    assert filled.dtype == logits.dtype and filled.shape == logits.shape


def test_max_area_is_inclusive_and_zero_logits_count_as_background():
    logits = torch.full((1, 1, 16, 16), INSIDE)
    logits[0, 0, 3:5, 3:7] = 0.0  # 8 pixels at exactly 0: background (mask = logits > 0)
    assert torch.all(fill_small_holes(logits, 8)[0, 0, 3:5, 3:7] == FILLED_LOGIT)
    assert torch.all(fill_small_holes(logits, 7)[0, 0, 3:5, 3:7] == 0.0)


def test_input_is_not_modified():
    logits, _, _ = _logit_map()
    before = logits.clone()
    filled = fill_small_holes(logits, 8)
    assert torch.equal(logits, before)
    assert not torch.equal(filled, before)


def test_max_area_zero_is_a_no_op():
    logits, _, _ = _logit_map()
    assert torch.equal(fill_small_holes(logits, 0), logits)
    assert torch.equal(fill_small_holes(logits, -3), logits)


def test_regions_are_eight_connected():
    """Two 5-pixel blobs touching at a corner are one 10-pixel hole: too big for max_area 8.

    With 4-connectivity they would be two 5-pixel holes and both be filled.
    """
    logits = torch.full((1, 1, 16, 16), INSIDE)
    logits[0, 0, 2, 2:7] = OUTSIDE  # 5 pixels, columns 2..6
    logits[0, 0, 3, 7:12] = OUTSIDE  # 5 pixels, columns 7..11: touches (2, 6) diagonally
    filled = fill_small_holes(logits, 8)
    assert torch.equal(filled, logits)
    assert torch.all(fill_small_holes(logits, 10)[0, 0, 2:4] != OUTSIDE)


def test_background_touching_the_border_is_a_region_too():
    """A big outside region is kept; only small enclosed ones are filled."""
    logits = torch.full((1, 1, 16, 16), OUTSIDE)
    logits[0, 0, 4:12, 4:12] = INSIDE
    logits[0, 0, 7, 7] = OUTSIDE  # a 1-pixel hole inside the object
    filled = fill_small_holes(logits, 8)
    assert filled[0, 0, 7, 7] == FILLED_LOGIT
    assert torch.all(filled[0, 0, :4] == OUTSIDE)
    assert (filled == OUTSIDE).sum() == (logits == OUTSIDE).sum() - 1


def test_batch_items_are_filled_independently():
    first, small, large = _logit_map()
    second = torch.full((1, 1, 32, 32), INSIDE)
    second[0, 0, 20:22, 3] = OUTSIDE  # a 2-pixel hole elsewhere
    plain = torch.full((1, 1, 32, 32), INSIDE)
    batch = torch.cat([first, second, plain])
    filled = fill_small_holes(batch, 8)
    assert torch.equal(filled[0:1], fill_small_holes(first, 8))
    assert torch.all(filled[0, 0][large] == OUTSIDE)
    assert torch.all(filled[1, 0, 20:22, 3] == FILLED_LOGIT)
    assert (filled[1] == FILLED_LOGIT).sum() == 2
    assert torch.equal(filled[2], plain[0])
