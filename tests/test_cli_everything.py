"""Every object from the command line and the Python API: ``segment-all`` on key frames, and
``segment --masks`` / ``segment(masks=)`` seeded from labels."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2.api import segment, segment_all
from tests.engine._amg_oracle import sharpen_for_filters_
from tests.test_api import CENTRE, biased_random_model, disc_stack

#: Random weights pass the generator's filters with these (see tests/engine/test_automatic.py).
LOOSE = {
    "points_per_side": 2,
    "pred_iou_thresh": 0.5,
    "stability_score_thresh": 0.5,
    "box_nms_thresh": 1.0,
}
LOOSE_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in LOOSE.items()]


@pytest.fixture(scope="module")
def model():
    return sharpen_for_filters_(biased_random_model())


@pytest.fixture
def built(monkeypatch, model):
    """The model the CLI builds: ours, counted."""
    calls = []

    def fake_build(name, checkpoint, image_size, device):
        calls.append(name)
        return model

    monkeypatch.setattr(cli, "_build_model", fake_build)
    return calls


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, disc_stack(3))
    return path


def seeds(frames: int = 3) -> np.ndarray:
    """(frames, 64, 64) uint16 labels: id 4 on the disc of slice 0, id 9 in a corner of
    slices 0 and 2."""
    rows, cols = np.mgrid[:64, :64]
    labels = np.zeros((frames, 64, 64), np.uint16)
    labels[0][(rows - CENTRE[0]) ** 2 + (cols - CENTRE[1]) ** 2 < 10**2] = 4
    labels[0][:10, :10] = 9
    labels[2][:10, :12] = 9
    return labels


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, *fragments):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------------- segment-all


def test_segment_all_two_key_frames(tmp_path, stack_file, built, capsys):
    out_file = tmp_path / "labels.tif"
    argv = ["segment-all", stack_file, "--frame", 2, "--frame", 0, "--out", out_file]
    status, out, err = run([*argv, "--range", 0, 4000, *LOOSE_ARGS], capsys)
    assert status == 0, err
    assert built == ["sam2.1_hiera_tiny"]
    labels = tifffile.imread(out_file)
    assert labels.shape == (3, 64, 64) and labels.dtype == np.uint16
    count = int(re.search(r"(\d+) object\(s\)", out).group(1))
    assert count >= 2, out
    assert 0 < labels.max() <= count
    assert "segmenting" in err  # the progress bar
    # never over an existing output without --overwrite
    status, _, err = run([*argv, *LOOSE_ARGS], capsys)
    assert_one_line_error(status, err, "already exists")


def test_segment_all_interrupted_keeps_finished_frames(
    tmp_path, stack_file, built, capsys, monkeypatch
):
    seen = []
    original = cli._ProgressBar.update

    def update(self, done, total):
        original(self, done, total)
        seen.append(done)
        if done == 2:  # the final pass (one key frame: the only pass) has finished 2 frames
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._ProgressBar, "update", update)
    out_file = tmp_path / "labels.tif"
    argv = ["segment-all", stack_file, "--frame", 0, "--out", out_file, "-q", *LOOSE_ARGS]
    status, _, err = run(argv, capsys)
    assert status == cli.EXIT_INTERRUPTED, err
    assert not out_file.exists()
    partial = cli.partial_path(out_file)
    with tifffile.TiffFile(partial) as tif:
        kept = tif.asarray()
        description = json.loads(tif.pages[0].description)
    assert description["finished_frames"] == [0, 1]
    assert kept[2].max() == 0 and kept[0].max() > 0


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--frame", 3], ["--frame 3 is out of range", "3 frame(s)"]),
        (["--frame", 0, "--same-object-iou", 2], ["--same-object-iou"]),
        (["--frame", 0, "--points-per-side", 0], ["points_per_side"]),
        (["--frame", 0, "--model", "sam9"], ["sam9"]),
    ],
)
def test_segment_all_bad_input_fails_before_the_model(
    tmp_path, stack_file, built, capsys, extra, fragments
):
    argv = ["segment-all", stack_file, "--out", tmp_path / "labels.tif", *extra]
    status, _, err = run(argv, capsys)
    assert_one_line_error(status, err, *fragments)
    assert built == []


def test_segment_all_never_writes_over_the_input(stack_file, built, capsys):
    argv = ["segment-all", stack_file, "--frame", 0, "--out", stack_file, "--overwrite"]
    status, _, err = run(argv, capsys)
    assert_one_line_error(status, err, "is the input")
    assert built == [] and tifffile.imread(stack_file).shape == (3, 64, 64)


def test_segment_all_usage_needs_a_frame(tmp_path, stack_file, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        cli.main(["segment-all", str(stack_file), "--out", str(tmp_path / "x.tif")])
    assert exit_info.value.code == 2
    assert_one_line_error(2, capsys.readouterr().err, "required: --frame")


# ---------------------------------------------------------------------- segment --masks


def test_segment_seeded_from_a_label_tiff(tmp_path, stack_file, built, capsys):
    seed_file = tmp_path / "seeds.tif"
    tifffile.imwrite(seed_file, seeds())
    out_file = tmp_path / "labels.tif"
    argv = ["segment", stack_file, "--masks", seed_file, "--out", out_file, "-q"]
    status, _, err = run([*argv, "--range", 0, 4000], capsys)
    assert status == 0, err
    labels = tifffile.imread(out_file)
    assert labels.shape == (3, 64, 64)
    assert set(np.unique(labels)) <= {0, 4, 9} and {4, 9} <= set(np.unique(labels[1]))
    assert labels[0, CENTRE[0], CENTRE[1]] == 4  # the seed's id is kept
    # one slice with --mask-frame
    slice_file = tmp_path / "slice.tif"
    tifffile.imwrite(slice_file, seeds()[2])
    one = tmp_path / "one.tif"
    argv = ["segment", stack_file, "--masks", slice_file, "--mask-frame", 2, "--out", one, "-q"]
    status, _, err = run(argv, capsys)
    assert status == 0, err
    assert set(np.unique(tifffile.imread(one))) <= {0, 9}


@pytest.mark.parametrize(
    ("labels", "extra", "fragments"),
    [
        (np.zeros((2, 64, 64), np.uint16), [], ["have shape (2, 64, 64)", "(3, 64, 64)"]),
        (np.ones((3, 64, 64), np.float32), [], ["dtype float32", "must be integers"]),
        (seeds()[0], [], ["one slice", "mask frame"]),
        (seeds()[0], ["--mask-frame", 5], ["seed frame 5 is out of range"]),
        (np.zeros((3, 64, 64), np.uint8), [], ["no labels on the chosen slices"]),
    ],
)
def test_segment_bad_seed_labels(tmp_path, stack_file, built, capsys, labels, extra, fragments):
    seed_file = tmp_path / "seeds.tif"
    tifffile.imwrite(seed_file, labels)
    argv = ["segment", stack_file, "--masks", seed_file, "--out", tmp_path / "o.tif", *extra]
    status, _, err = run(argv, capsys)
    assert_one_line_error(status, err, *fragments)
    assert built == []


def test_segment_masks_path_rules(tmp_path, stack_file, built, capsys):
    seed_file = tmp_path / "seeds.tif"
    tifffile.imwrite(seed_file, seeds())
    argv = ["segment", stack_file, "--masks", seed_file, "--out", seed_file, "--overwrite"]
    status, _, err = run(argv, capsys)
    assert_one_line_error(status, err, "is the input")
    argv = ["segment", stack_file, "--mask-frame", 0, "--out", tmp_path / "o.tif"]
    status, _, err = run(argv, capsys)
    assert_one_line_error(status, err, "give prompts")
    assert built == []


# ---------------------------------------------------------------------- Python API


def test_api_segment_with_masks_and_segment_all(model):
    stack = disc_stack(3)
    labels = segment(stack, model=model, masks=seeds(), mask_frames=[0], precision="float32")
    assert labels.shape == (3, 64, 64) and set(np.unique(labels)) <= {0, 4, 9}
    assert labels[0, CENTRE[0], CENTRE[1]] == 4  # the seed's own slice keeps its id
    with pytest.raises(ValueError, match="one slice"):
        segment(stack, model=model, masks=seeds()[0])
    with pytest.raises(ValueError, match="no ids on the chosen slices"):
        segment(stack, model=model, masks=seeds(), mask_frames=[1])

    image = stack[0]
    found = segment_all(image, model=model, frames=[0], precision="float32", **LOOSE)
    assert found.shape == (64, 64) and found.max() >= 2
    with pytest.raises(ValueError, match="unknown automatic-mask parameter"):
        segment_all(image, model=model, points_per_edge=3)
