"""Prompt checks and their conversion to model input pixels (validate_prompt and friends)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2.engine.prompts import validate_frame_index, validate_object_id, validate_prompt

FRAME = (100, 200)  # (H, W): a non-square frame
SIZE = 256


def test_point_coordinates_are_scaled_per_axis_to_the_square_input():
    prompt = validate_prompt(FRAME, SIZE, points=[[100, 50], [-0.5, 99]], labels=[1, 0])
    assert prompt.mask is None
    assert prompt.coords.dtype == torch.float32 and prompt.coords.shape == (1, 2, 2)
    # x is scaled by 256 / 200 (width), y by 256 / 100 (height).
    expected = torch.tensor([[[128.0, 128.0], [-0.5 * 1.28, 99 * 2.56]]])
    assert torch.allclose(prompt.coords, expected)
    assert prompt.labels.dtype == torch.int32
    assert prompt.labels.tolist() == [[1, 0]]
    assert prompt.num_points == 2


def test_box_comes_first_with_labels_2_and_3_then_points():
    prompt = validate_prompt(FRAME, SIZE, points=[[50, 25]], labels=[0], box=(20, 10, 120, 90))
    assert prompt.labels.tolist() == [[2, 3, 0]]
    sx, sy = SIZE / FRAME[1], SIZE / FRAME[0]
    expected = torch.tensor([[[20 * sx, 10 * sy], [120 * sx, 90 * sy], [50 * sx, 25 * sy]]])
    assert torch.allclose(prompt.coords, expected)


def test_box_alone_and_box_partly_outside_is_clipped():
    prompt = validate_prompt(FRAME, SIZE, box=[-10, -5, 50, 500])
    assert prompt.labels.tolist() == [[2, 3]]
    expected = torch.tensor([[[0.0, 0.0], [50 * SIZE / 200, SIZE]]])
    assert torch.allclose(prompt.coords, expected)


@pytest.mark.parametrize(
    ("box", "match"),
    [
        ((50, 10, 50, 90), "need x1 > x0"),
        ((60, 10, 40, 90), "need x1 > x0"),
        ((10, 90, 60, 20), "y1 > y0"),
        ((10, 20, 30), "four finite numbers"),
        ((10, 20, np.nan, 40), "four finite numbers"),
        ((300, 10, 400, 50), "outside the frame"),
    ],
)
def test_bad_boxes(box, match):
    with pytest.raises(ValueError, match=match):
        validate_prompt(FRAME, SIZE, box=box)


def test_labels_must_be_zero_or_one():
    with pytest.raises(ValueError, match=r"labels must be 1 \(inside\) or 0 \(outside\)"):
        validate_prompt(FRAME, SIZE, points=[[10, 10], [20, 20]], labels=[1, 2])
    with pytest.raises(ValueError, match="labels must be 1"):
        validate_prompt(FRAME, SIZE, points=[[10, 10]], labels=[-1])


def test_labels_missing_or_of_the_wrong_length():
    with pytest.raises(ValueError, match="labels are missing"):
        validate_prompt(FRAME, SIZE, points=[[10, 10]])
    with pytest.raises(ValueError, match="got 2 points but 3 labels"):
        validate_prompt(FRAME, SIZE, points=[[10, 10], [20, 20]], labels=[1, 1, 0])


@pytest.mark.parametrize(
    "point", [[-1, 10], [10, -0.51], [199.5, 10], [10, 99.5], [1e6, 1e6]], ids=str
)
def test_points_outside_the_frame(point):
    with pytest.raises(ValueError, match="outside the frame of width 200 and height 100"):
        validate_prompt(FRAME, SIZE, points=[[5, 5], point], labels=[1, 1])


def test_points_on_the_far_edges_are_inside():
    # pixel-area rule: pixel i covers [i - 0.5, i + 0.5), so x runs from -0.5 to below 199.5
    prompt = validate_prompt(FRAME, SIZE, points=[[199.25, 99.25]], labels=[1])
    scale = torch.tensor([SIZE / FRAME[1], SIZE / FRAME[0]])
    assert torch.allclose(prompt.coords, torch.tensor([[[199.25, 99.25]]]) * scale)
    with pytest.raises(ValueError, match="outside the frame"):
        validate_prompt(FRAME, SIZE, points=[[200, 100]], labels=[1])


def test_points_of_the_wrong_shape_or_not_finite():
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        validate_prompt(FRAME, SIZE, points=[10, 20, 30], labels=[1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        validate_prompt(FRAME, SIZE, points=[[np.nan, 20]], labels=[1])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"points": np.zeros((0, 2)), "labels": np.zeros(0)}, {"points": [], "labels": []}],
    ids=["nothing", "zero-points", "empty-list"],
)
def test_empty_prompt(kwargs):
    with pytest.raises(ValueError, match="the prompt is empty"):
        validate_prompt(FRAME, SIZE, **kwargs)


def test_mask_is_resized_to_the_input_and_binarised():
    mask = np.zeros(FRAME, dtype=bool)
    mask[25:75, 50:150] = True  # the middle half of each axis
    prompt = validate_prompt(FRAME, SIZE, mask=mask)
    assert prompt.coords is None and prompt.labels is None and prompt.num_points == 0
    assert prompt.mask.shape == (1, 1, SIZE, SIZE) and prompt.mask.dtype == torch.float32
    assert set(prompt.mask.unique().tolist()) == {0.0, 1.0}
    inside = prompt.mask[0, 0]
    assert inside[64:192, 64:192].all() and not inside[:60].any() and not inside[:, :60].any()


def test_mask_of_the_input_size_is_used_as_is():
    mask = np.random.default_rng(0).random((SIZE, SIZE)) > 0.5
    prompt = validate_prompt((SIZE, SIZE), SIZE, mask=mask)
    assert torch.equal(prompt.mask[0, 0], torch.from_numpy(mask).float())


def test_mask_shape_must_match_the_frame():
    with pytest.raises(
        ValueError, match=r"mask has shape \(200, 100\) but frames are \(100, 200\)"
    ):
        validate_prompt(FRAME, SIZE, mask=np.zeros((200, 100), dtype=bool))


def test_mask_cannot_be_combined_with_points_or_a_box():
    mask = np.ones(FRAME, dtype=bool)
    with pytest.raises(ValueError, match="either a mask, or points and/or a box, not both"):
        validate_prompt(FRAME, SIZE, mask=mask, points=[[10, 10]], labels=[1])
    with pytest.raises(ValueError, match="not both"):
        validate_prompt(FRAME, SIZE, mask=mask, box=(0, 0, 10, 10))


def test_frame_index_checks():
    assert validate_frame_index(np.int64(4), 5) == 4
    for bad in (5, -1):
        with pytest.raises(ValueError, match=rf"frame index {bad} is out of range.*0 to 4"):
            validate_frame_index(bad, 5)
    for bad in (1.0, True, "2"):
        with pytest.raises(ValueError, match="frame index must be an integer"):
            validate_frame_index(bad, 5)


def test_object_id_checks():
    assert validate_object_id(np.int32(3)) == 3
    for bad in (0, -2, 1.5, True, "1"):
        with pytest.raises(ValueError, match="object id must be a positive integer"):
            validate_object_id(bad)
