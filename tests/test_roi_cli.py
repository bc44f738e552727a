"""The region-of-interest option of the Python API (``segment(roi=True, roi_margin=...)``) and of
the command line (``napari-sam2 segment --roi --roi-margin``), with a random-weight network."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2.api import Prompt, segment
from napari_sam2.engine.prompt_files import write_points_csv
from napari_sam2.engine.roi import mask_extent
from tests.test_api import CENTRE, biased_random_model, disc_stack

SIDE = 2048  # 8 times the network's input (256): a click's region starts at 256 x 256
CLICK = (300, 200)  # (row, col) of the disc of big_stack on frame 1
#: The largest region a click may end up with: 256, doubled at most twice (random weights
#: give masks that fill their region, so it grows).
LARGEST = 1024


@pytest.fixture(scope="module")
def model():
    return biased_random_model()


def big_stack(frames: int = 3) -> np.ndarray:
    rows, cols = np.mgrid[:SIDE, :SIDE]
    stack = np.full((frames, SIDE, SIDE), 100, np.uint16)
    for t in range(frames):
        stack[t][(rows - CLICK[0]) ** 2 + (cols - CLICK[1] - 10 * t) ** 2 < 30**2] = 3000
    return stack


def test_segment_roi_on_small_slices_is_the_plain_result(model):
    stack = disc_stack(3)  # 64 x 64: one region is the whole slice
    points = [[1, *CENTRE]]
    plain = segment(stack, points=points, model=model, precision="float32")
    roi = segment(stack, points=points, model=model, precision="float32", roi=True)
    np.testing.assert_array_equal(roi, plain)
    assert plain.any()


@pytest.fixture(scope="module")
def roi_run(model):
    """(stack, labels) of segment(roi=True, roi_margin=0.25) from one click on frame 1."""
    stack = big_stack()
    row, col = CLICK
    prompts = [Prompt(1, 3, [[col, row]], [1])]
    return stack, segment(stack, prompts=prompts, model=model, roi=True, roi_margin=0.25)


def test_segment_roi_keeps_each_object_in_its_region_at_full_size(roi_run):
    stack, labels = roi_run
    assert labels.shape == stack.shape and labels.dtype == np.uint32
    for frame in range(len(stack)):
        extent = mask_extent(labels[frame] == 3)
        assert extent is not None
        # The whole slice squashed would give masks spanning it; a region holds them.
        assert extent.height <= LARGEST and extent.width <= LARGEST
    assert labels[1, CLICK[0], CLICK[1]] == 3


def test_roi_options_are_checked(model):
    with pytest.raises(ValueError, match="pass roi=True"):
        segment(disc_stack(2), points=[[0, *CENTRE]], model=model, roi_margin=0.2)
    with pytest.raises(ValueError, match="margin"):
        segment(disc_stack(2), points=[[0, *CENTRE]], model=model, roi=True, roi_margin=-1)


def test_cli_roi_writes_what_the_api_computes(tmp_path, model, roi_run, monkeypatch, capsys):
    stack, expected = roi_run
    tifffile.imwrite(tmp_path / "big.tif", stack)
    row, col = CLICK
    points = write_points_csv(tmp_path / "points.csv", [Prompt(1, 3, [[col, row]], [1])])
    monkeypatch.setattr(cli, "_build_model", lambda *args: model)
    out = tmp_path / "labels.tif"
    argv = ["segment", tmp_path / "big.tif", "--points", points, "--out", out]
    status = cli.main([str(a) for a in [*argv, "--roi", "--roi-margin", "0.25", "-q"]])
    assert status == 0, capsys.readouterr().err
    written = tifffile.imread(out)
    np.testing.assert_array_equal(written, expected)
    assert written.any() and set(np.unique(written)) == {0, 3}

    status = cli.main([str(a) for a in [*argv, "--overwrite", "--roi-margin", "0.25"]])
    assert status == 2 and "add --roi" in capsys.readouterr().err
    store = ["--overwrite", "--roi", "--store", tmp_path / "features.zarr"]
    status = cli.main([str(a) for a in [*argv, *store]])
    assert status == 2 and "one or the other" in capsys.readouterr().err
