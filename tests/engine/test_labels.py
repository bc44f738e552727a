import numpy as np
import pytest

from napari_sam2.engine.labels import merge_logits, write_object


def test_merge_gives_overlap_to_higher_logit_and_ignores_negative_logits():
    a = np.full((4, 5), -3.0, dtype=np.float32)
    b = np.full((4, 5), -3.0, dtype=np.float32)
    a[:, :3] = 2.0  # object 2 covers columns 0..2
    b[:, 2:] = 1.0  # object 7 covers columns 2..4, weaker
    b[0, 2] = 5.0  # ... except one pixel where it is more confident
    a[3, :] = -0.5  # row 3: object 2 negative but larger than object 7's -3 on columns 0..1

    labels = merge_logits({7: b, 2: a})

    assert labels.dtype == np.uint32
    expected = np.array(
        [
            [2, 2, 7, 7, 7],
            [2, 2, 2, 7, 7],
            [2, 2, 2, 7, 7],
            [0, 0, 7, 7, 7],
        ]
    )
    np.testing.assert_array_equal(labels, expected)


def test_merge_zero_logit_is_background_and_ties_go_to_smaller_id():
    zero = np.zeros((2, 2), dtype=np.float32)
    tie = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    labels = merge_logits({5: tie, 3: tie.copy(), 9: zero})
    np.testing.assert_array_equal(labels, [[3, 0], [0, 0]])


def test_merge_empty_and_bad_input():
    np.testing.assert_array_equal(merge_logits({}, shape=(2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        merge_logits({})
    with pytest.raises(ValueError, match="same shape"):
        merge_logits({1: np.ones((2, 2)), 2: np.ones((3, 2))})
    with pytest.raises(ValueError, match="object id 0 is not in 1.."):
        merge_logits({0: np.ones((2, 2))})
    with pytest.raises(ValueError, match="positive integers"):
        merge_logits({1.5: np.ones((2, 2))})
    with pytest.raises(ValueError, match="range of dtype uint8"):
        merge_logits({300: np.ones((2, 2))}, dtype=np.uint8)


def test_write_object_never_touches_other_ids():
    labels = np.array(
        [
            [0, 0, 4, 4],
            [1, 1, 4, 4],
            [1, 1, 0, 0],
            [9, 0, 0, 1],
        ],
        dtype=np.uint16,
    )
    before = labels.copy()
    mask = np.zeros_like(labels, dtype=bool)
    mask[0:3, 1:4] = True  # overlaps 4's pixels and part of 1's old pixels

    changed = write_object(labels, 1, mask)

    others = (before != 0) & (before != 1)
    np.testing.assert_array_equal(labels[others], before[others])
    expected = np.array(
        [
            [0, 1, 4, 4],
            [0, 1, 4, 4],
            [0, 1, 1, 1],
            [9, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(changed, before != labels)


def test_write_object_without_protection_overwrites_and_is_idempotent():
    labels = np.array([[4, 4], [0, 2]], dtype=np.int32)
    mask = np.array([[True, False], [True, False]])
    changed = write_object(labels, 2, mask, protect=False)
    np.testing.assert_array_equal(labels, [[2, 4], [2, 0]])
    assert changed.sum() == 3
    again = write_object(labels, 2, mask, protect=False)
    assert not again.any()


def test_write_object_rejects_bad_input():
    labels = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        write_object(labels, 1, np.ones((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="1..255"):
        write_object(labels, 256, np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="integer array"):
        write_object(np.zeros((2, 2)), 1, np.ones((2, 2), dtype=bool))
