"""The shared rules of the engine core: prompts, the frame rule, propagation plans, labels."""

import numpy as np
import pytest

from napari_sam2.engine.session import (
    DIRECTIONS,
    Prompt,
    group_prompts,
    inside_frame,
    label_frame,
    plan_propagation,
    rowcol_to_xy,
    start_frame,
)


def test_rowcol_to_xy_swaps_the_columns():
    assert rowcol_to_xy([[1, 2], [3.5, 4]]).tolist() == [[2, 1], [4, 3.5]]


def test_inside_is_the_pixel_area_rule():
    # Column 0 covers x in [-0.5, 0.5); the last column ends before W - 0.5.
    xy = [[-0.5, 0], [-0.51, 0], [9.49, 4.49], [9.5, 0], [0, 4.5], [np.nan, 0]]
    assert inside_frame(xy, (5, 10)).tolist() == [True, False, True, False, False, False]


@pytest.mark.parametrize(
    ("direction", "max_frames", "expected"),
    [
        ("forward", None, [3, 4, 5]),
        ("backward", None, [3, 2, 1, 0]),
        ("both", None, [3, 4, 5, 2, 1, 0]),
        ("both", 2, [3, 4, 2]),
        ("forward", 1, [3]),
        ("backward", 2, [3, 2]),
    ],
)
def test_plan_visits_each_frame_once_in_order(direction, max_frames, expected):
    plan = plan_propagation(6, 3, direction, max_frames)
    assert plan.frames == expected
    assert plan.total == len(expected)


def test_plan_refuses_bad_arguments():
    with pytest.raises(ValueError, match="direction must be one of both, forward, backward"):
        plan_propagation(5, 0, "sideways")
    with pytest.raises(ValueError, match="out of range"):
        plan_propagation(5, 5, "both")
    with pytest.raises(ValueError, match="at least 1"):
        plan_propagation(5, 0, "both", 0)
    with pytest.raises(ValueError, match="whole number"):
        plan_propagation(5, 1.5, "both")
    with pytest.raises(ValueError, match="integer"):
        plan_propagation(5, 0, "both", True)
    assert DIRECTIONS[0] == "both"


def test_start_frame_covers_the_stack():
    assert start_frame([4, 2, 7], "both") == 2
    assert start_frame([4, 2, 7], "forward") == 2
    assert start_frame([4, 2, 7], "backward") == 7
    with pytest.raises(ValueError, match="no prompts"):
        start_frame([], "both")


def test_prompt_equality_and_checks():
    a = Prompt(2, 1, [[3, 4]], [1])
    assert a.same_as(Prompt(2, 1, [[3.0, 4.0]], [1]))
    assert not a.same_as(Prompt(2, 1, [[3, 4]], [0]))
    assert not a.same_as(Prompt(3, 1, [[3, 4]], [1]))
    assert not a.same_as(None)
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    m = Prompt(0, 2, mask=mask)
    assert m.same_as(Prompt(0, 2, mask=mask.copy())) and not m.empty
    other = mask.copy()
    other[0, 0] = True
    assert not m.same_as(Prompt(0, 2, mask=other))
    assert m.engine_kwargs()["mask"] is not None and m.engine_kwargs()["points"] is None
    with pytest.raises(ValueError, match="not both"):
        Prompt(0, 2, [[1, 1]], [1], mask=mask)
    with pytest.raises(ValueError, match="whole number"):
        Prompt(1.9, 1)
    with pytest.raises(ValueError, match="integer"):
        Prompt(True, 1)


def test_group_prompts_merges_points_and_refuses_two_boxes():
    merged = group_prompts(
        [Prompt(1, 1, [[1, 1]], [1]), Prompt(0, 2, box=[0, 0, 2, 2])],
        [Prompt(1, 1, [[2, 2]], [0], box=[0, 0, 3, 3])],
    )
    assert [(p.frame, p.obj_id) for p in merged] == [(0, 2), (1, 1)]
    assert merged[1].labels.tolist() == [1, 0] and merged[1].box.tolist() == [0, 0, 3, 3]
    with pytest.raises(ValueError, match="two boxes"):
        group_prompts([Prompt(0, 1, box=[0, 0, 1, 1]), Prompt(0, 1, box=[0, 0, 2, 2])])


def test_label_frame_higher_logit_wins_and_protects_other_labels():
    current = np.array([[0, 9, 1, 2]], dtype=np.uint32)  # 9 was painted by hand
    logits = {
        1: np.array([[5.0, 5.0, -1.0, 1.0]]),
        2: np.array([[6.0, 1.0, -1.0, 2.0]]),
    }
    result = label_frame(current, logits)
    # object 2 wins pixel 0; 9 is kept; object 1 leaves pixel 2; object 2 keeps pixel 3
    assert result.tolist() == [[2, 9, 0, 2]]
    assert current.tolist() == [[0, 9, 1, 2]], "the input must not change"
    unprotected = label_frame(current, logits, protect=False)
    assert unprotected.tolist() == [[2, 1, 0, 2]]


def test_label_frame_painted_masks_are_kept_exactly_and_none_erases():
    current = np.array([[1, 1, 2, 0]], dtype=np.uint16)
    logits = {1: None, 2: np.array([[9.0, 9.0, 9.0, 9.0]])}
    painted = {3: np.array([[False, True, False, True]])}
    result = label_frame(current, logits, masks=painted)
    assert result.tolist() == [[2, 3, 2, 3]]
    assert label_frame(current, {1: None}).tolist() == [[0, 0, 2, 0]]
    with pytest.raises(ValueError, match="range of dtype uint16"):
        label_frame(current, {70000: None})
