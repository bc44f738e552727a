"""Parity of our PromptEncoder with Meta's, and its input checks."""

from __future__ import annotations

import re

import pytest
import torch

from napari_sam2.model.prompt_encoder import PromptEncoder
from tests._oracle import assert_close, build_oracle_base, randomise_, require_oracle

EMBED = 256
GRID = (16, 16)
INPUT = (256, 256)


@pytest.fixture(scope="module")
def encoders():
    """(ours, oracle) prompt encoders with the same randomised weights, in eval mode."""
    require_oracle()
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as OraclePromptEncoder

    oracle = OraclePromptEncoder(
        embed_dim=EMBED, image_embedding_size=GRID, input_image_size=INPUT, mask_in_chans=16
    )
    # A wider frequency matrix than randomise_'s default makes the encoding vary across pixels.
    randomise_(oracle, seed=3, scale=0.5).eval()
    ours = PromptEncoder(EMBED, GRID, INPUT, mask_in_chans=16).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return ours, oracle


def _points(batch: int, count: int, labels: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, count, 2, generator=gen) * (INPUT[1] - 1)
    label_tensor = torch.tensor(labels, dtype=torch.int32).repeat(batch, 1)
    return coords, label_tensor


def _compare(ours, oracle, points, boxes, masks):
    with torch.no_grad():
        sparse, dense = ours(points=points, boxes=boxes, masks=masks)
        ref_sparse, ref_dense = oracle(points=points, boxes=boxes, masks=masks)
    if ref_sparse.numel():
        assert_close(sparse, ref_sparse, what="sparse")
    else:  # assert_close needs a non-empty reference
        assert sparse.shape == ref_sparse.shape
    assert_close(dense, ref_dense, what="dense")
    return sparse, dense


def test_points_only_matches_oracle_and_appends_padding(encoders):
    ours, oracle = encoders
    points = _points(2, 3, [1, 0, 1])
    sparse, dense = _compare(ours, oracle, points, None, None)
    assert sparse.shape == (2, 4, EMBED)
    # The appended padding token is exactly the learned "not a point" embedding.
    assert torch.equal(sparse[:, -1], ours.not_a_point_embed.weight.expand(2, -1))
    assert torch.equal(dense, ours.no_mask_embed.weight.view(1, -1, 1, 1).expand(2, -1, *GRID))


def test_box_only_matches_oracle(encoders):
    ours, oracle = encoders
    boxes = torch.tensor([[10.0, 20.0, 200.0, 150.0], [0.0, 0.0, 255.0, 255.0]])
    sparse, _ = _compare(ours, oracle, None, boxes, None)
    assert sparse.shape == (2, 2, EMBED)


def test_points_and_box_match_oracle_without_padding(encoders):
    ours, oracle = encoders
    points = _points(2, 2, [1, 0], seed=1)
    boxes = torch.tensor([[30.0, 40.0, 120.0, 220.0], [5.0, 60.0, 100.0, 90.0]])
    sparse, _ = _compare(ours, oracle, points, boxes, None)
    assert sparse.shape == (2, 4, EMBED)


def test_box_corner_labels_match_oracle(encoders):
    """SAM 2's predictors pass boxes as points labelled 2 and 3."""
    ours, oracle = encoders
    points = _points(1, 4, [2, 3, 1, 0], seed=2)
    _compare(ours, oracle, points, None, None)


def test_mask_input_matches_oracle(encoders):
    ours, oracle = encoders
    gen = torch.Generator().manual_seed(4)
    masks = torch.randn(2, 1, *ours.mask_input_size, generator=gen) * 5
    points = _points(2, 1, [1], seed=5)
    _, dense = _compare(ours, oracle, points, None, masks)
    assert dense.shape == (2, EMBED, *GRID)
    _compare(ours, oracle, None, None, masks)


def test_explicit_padding_labels_match_oracle(encoders):
    """Padding points (label -1) ignore their coordinates."""
    ours, oracle = encoders
    coords, labels = _points(2, 3, [1, -1, -1], seed=6)
    sparse, _ = _compare(ours, oracle, (coords, labels), None, None)
    moved = coords.clone()
    moved[:, 1:] = 17.0
    with torch.no_grad():
        sparse_moved, _ = ours(points=(moved, labels), boxes=None, masks=None)
    assert torch.equal(sparse, sparse_moved)


def test_no_prompt_and_dense_pe_match_oracle(encoders):
    ours, oracle = encoders
    sparse, dense = _compare(ours, oracle, None, None, None)
    assert sparse.shape == (1, 0, EMBED)
    assert_close(ours.get_dense_pe(), oracle.get_dense_pe(), what="dense pe")
    assert ours.get_dense_pe().shape == (1, EMBED, *GRID)
    assert ours.mask_input_size == (64, 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": (torch.zeros(1, 2, 2), torch.tensor([[1, 5]])), "boxes": None}, "labels"),
        ({"points": (torch.zeros(1, 2), torch.tensor([[1]])), "boxes": None}, "(B, N, 2)"),
        ({"points": (torch.zeros(1, 2, 2), torch.tensor([1, 1])), "boxes": None}, "(B, N)"),
        ({"points": None, "boxes": torch.zeros(2, 3)}, "(B, 4)"),
        (
            {"points": (torch.zeros(2, 1, 2), torch.ones(2, 1)), "boxes": torch.zeros(3, 4)},
            "batch",
        ),
    ],
)
def test_bad_prompts_raise_value_error(kwargs, message):
    encoder = PromptEncoder(EMBED, GRID, INPUT, mask_in_chans=16)
    with pytest.raises(ValueError, match=re.escape(message)):
        encoder(masks=None, **kwargs)


def test_wrong_mask_size_raises_value_error():
    encoder = PromptEncoder(EMBED, GRID, INPUT, mask_in_chans=16)
    with pytest.raises(ValueError, match="mask_input_size"):
        encoder(points=None, boxes=None, masks=torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("preset", ["sam2_hiera_tiny", "sam2.1_hiera_tiny"])
def test_state_dict_keys_and_shapes_equal_official_model(preset):
    oracle = build_oracle_base(preset, 256)
    prefix = "sam_prompt_encoder."
    expected = {
        key[len(prefix) :]: tuple(value.shape)
        for key, value in oracle.state_dict().items()
        if key.startswith(prefix)
    }
    ours = PromptEncoder(EMBED, GRID, INPUT, mask_in_chans=16)
    assert list(ours.state_dict()) == list(expected)
    assert {key: tuple(value.shape) for key, value in ours.state_dict().items()} == expected
    ours.load_state_dict(oracle.sam_prompt_encoder.state_dict(), strict=True)
