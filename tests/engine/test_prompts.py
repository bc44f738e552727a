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


# ---------------------------------------------------------------------------- masks and ids


def test_a_float_mask_is_thresholded_at_one_half():
    soft = np.full(FRAME, 0.3)
    soft[10:40, 20:60] = 0.7
    prompt = validate_prompt(FRAME, SIZE, mask=soft)
    assert prompt.mask.shape == (1, 1, SIZE, SIZE)
    mask = prompt.mask[0, 0].numpy()
    assert 0 < mask.mean() < 0.2  # only the 0.7 block is foreground; 0.3 is background
    assert not validate_prompt(FRAME, SIZE, mask=np.full(FRAME, 0.3)).mask.any()
    assert validate_prompt(FRAME, SIZE, mask=np.full(FRAME, 0.5)).mask.all()
    with pytest.raises(ValueError, match="NaN"):
        validate_prompt(FRAME, SIZE, mask=np.full(FRAME, np.nan))
    labels = np.zeros(FRAME, dtype=np.int32)
    labels[:, :100] = 3  # integer masks: non-zero is foreground
    assert 0.4 < validate_prompt(FRAME, SIZE, mask=labels).mask.float().mean() < 0.6


def test_object_ids_are_checked_against_the_label_dtype():
    assert validate_object_id(65535, np.uint16) == 65535
    with pytest.raises(ValueError, match="does not fit the uint16 label image"):
        validate_object_id(65536, np.uint16)
    with pytest.raises(ValueError, match="uint32"):
        validate_object_id(2**32, np.uint32)
    for bad in (1.0, 1.5, True, np.float32(3), "2"):
        with pytest.raises(ValueError, match="positive integer"):
            validate_object_id(bad)
    for bad in (1.0, 0.5, True, np.float64(1)):
        with pytest.raises(ValueError, match="integer"):
            validate_frame_index(bad, 5)


# ---------------------------------------------------------------------------- fuzzing

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -0.5, 199.49, 199.5, 99.5, 1e308, -1e308, 3.4e38]),
)
_POINT_TABLES = st.one_of(
    st.lists(st.tuples(st.floats(-1, 201), st.floats(-1, 101)), min_size=1, max_size=2),
    st.lists(st.lists(_NUMBERS, min_size=0, max_size=3), max_size=4),
    st.lists(_NUMBERS, max_size=4),
    st.none(),
    st.text(max_size=3),
)
_LABELS = st.one_of(
    st.lists(st.sampled_from([0, 1]), min_size=1, max_size=2),
    st.none(),
    st.lists(
        st.one_of(st.integers(-2, 3), st.floats(), st.booleans(), st.text(max_size=1)), max_size=4
    ),  # fmt: skip
)


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(
    points=_POINT_TABLES,
    labels=_LABELS,
    box=st.one_of(st.none(), st.lists(_NUMBERS, max_size=5)),
    frame=st.one_of(st.integers(0, 4), st.integers(-3, 8), st.floats(), st.booleans(), st.none()),
    obj_id=st.one_of(
        st.integers(1, 9), st.integers(-3, 2**33), st.floats(), st.booleans(), st.text(max_size=2)
    ),
)
def test_fuzz_prompts_are_encoded_or_refused(points, labels, box, frame, obj_id):
    """Any points, labels, box, frame and id: each either checked (a frame in range, an id
    that fits uint16, coordinates finite and near the model's square, labels in {0, 1, 2, 3}),
    or a ValueError with a message."""
    outcomes = []
    try:
        checked = validate_frame_index(frame, 5)
        assert isinstance(checked, int) and 0 <= checked < 5 and checked == frame
        outcomes.append("frame ok")
    except ValueError as err:
        assert str(err)
    try:
        checked = validate_object_id(obj_id, np.uint16)
        assert isinstance(checked, int) and 1 <= checked <= 65535 and checked == obj_id
        outcomes.append("id ok")
    except ValueError as err:
        assert str(err)
    try:
        prompt = validate_prompt(FRAME, SIZE, points=points, labels=labels, box=box)
    except ValueError as err:
        assert str(err)
    else:
        outcomes.append("prompt encoded")
        coords = prompt.coords.numpy()
        assert np.isfinite(coords).all()
        assert coords.min() >= -SIZE and coords.max() <= 2 * SIZE
        assert set(np.unique(prompt.labels.numpy())) <= {0, 1, 2, 3}
        assert coords.shape[1] == prompt.labels.shape[1] >= 1
    for outcome in outcomes or ["all refused"]:
        event(outcome)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(
    st.one_of(
        st.sampled_from(["bool", "uint8", "int64", "float32", "float64"]).flatmap(
            lambda dtype: st.builds(
                lambda fill: np.full(FRAME, fill).astype(dtype), st.floats(-2, 2)
            )
        ),
        st.builds(np.zeros, st.sampled_from([(100, 201), (2, 100, 200), (0,)])),
        st.just(np.full(FRAME, np.nan)),
        st.just(np.full(FRAME, "x")),
    )
)
def test_fuzz_masks_follow_the_documented_threshold(mask):
    try:
        prompt = validate_prompt(FRAME, SIZE, mask=mask)
    except ValueError as err:
        assert str(err)
        event("refused")
        return
    event("encoded")
    values = np.unique(prompt.mask.numpy())
    assert set(values) <= {0.0, 1.0}
    fill = np.asarray(mask).flat[0]
    expected = fill >= 0.5 if np.asarray(mask).dtype.kind == "f" else bool(fill)
    assert bool(prompt.mask.all()) == bool(expected)
