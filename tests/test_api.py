"""The Python API end to end, on a small synthetic stack with a random-weight network."""

import numpy as np
import pytest
import torch

from napari_sam2.api import Prompt, prompts_from_arrays, segment
from napari_sam2.engine.session import plan_propagation
from napari_sam2.model import build_sam2

CENTRE = (30, 34)  # (row, col) of the bright disc


def disc_stack(frames: int = 4, size: int = 64) -> np.ndarray:
    """(frames, size, size) uint16: a dim background with a bright disc that drifts right."""
    rows, cols = np.mgrid[:size, :size]
    stack = np.full((frames, size, size), 100, dtype=np.uint16)
    for t in range(frames):
        disc = (rows - CENTRE[0]) ** 2 + (cols - CENTRE[1] - t) ** 2 < 12**2
        stack[t][disc] = 3000
    return stack


def biased_random_model():
    """Tiny SAM 2.1 at input 256 with random weights; the object-score head is biased so that
    masks are not empty (random weights otherwise predict "no object")."""
    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_tiny", image_size=256)
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)
    return model


@pytest.fixture(scope="module")
def model():
    return biased_random_model()


def test_prompts_from_arrays_converts_napari_order_to_sam_xy():
    prompts = prompts_from_arrays(
        points=[[2, 10, 20], [2, 11, 21], [0, 5, 6]],
        labels=[1, 0, 1],
        boxes=[[2, 30, 40, 10, 50], [1, 0, 0, 4, 4]],
    )
    assert [(p.frame, p.obj_id) for p in prompts] == [(0, 1), (1, 2), (2, 1)]
    np.testing.assert_allclose(prompts[0].points, [[6, 5]])
    frame2 = prompts[2]
    np.testing.assert_allclose(frame2.points, [[20, 10], [21, 11]])
    np.testing.assert_array_equal(frame2.labels, [1, 0])
    np.testing.assert_allclose(frame2.box, [40, 10, 50, 30])  # corners sorted, (x0, y0, x1, y1)
    # 2-D forms: (row, col) points and (row0, col0, row1, col1) boxes are on frame 0
    (single,) = prompts_from_arrays(points=[[3, 4]], boxes=[[0, 1, 5, 6]])
    assert single.frame == 0
    np.testing.assert_allclose(single.points, [[4, 3]])
    np.testing.assert_allclose(single.box, [1, 0, 6, 5])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": [[1, 2, 3, 4]]}, r"points must have shape \(N, 3\)"),
        ({"points": [[1, 2, 3]], "labels": [1, 1]}, "1 points but 2 labels"),
        ({"points": [[1, 2, 3]], "labels": [2]}, "labels must be 1 or 0"),
        ({"labels": [1]}, "labels were given without points"),
        ({"boxes": [[1, 2, 3]]}, r"boxes must have shape \(N, 5\)"),
    ],
)
def test_prompts_from_arrays_rejects_bad_arrays(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prompts_from_arrays(**kwargs)


def test_segment_rejects_bad_calls_before_building_a_model():
    stack = disc_stack()
    with pytest.raises(ValueError, match="no prompts"):
        segment(stack, checkpoint=None)
    with pytest.raises(ValueError, match="not both"):
        segment(stack, points=[[0, 1, 1]], prompts=[Prompt(0, 1, [[1, 1]], [1])])
    with pytest.raises(ValueError, match="direction"):
        segment(stack, points=[[0, 1, 1]], direction="sideways")


def test_segment_stack_end_to_end(model):
    stack = disc_stack(3)
    calls = []
    labels = segment(
        stack,
        points=[[1, *CENTRE]],
        boxes=[[1, 0, 0, 10, 10]],  # object 2 in a corner of the same frame
        model=model,
        device="cpu",
        progress=lambda done, total: calls.append((done, total)),
    )
    assert labels.shape == stack.shape
    assert labels.dtype == np.uint32
    assert set(np.unique(labels)) <= {0, 1, 2}
    row, col = CENTRE
    assert (labels[1, row - 2 : row + 3, col - 2 : col + 3] == 1).any()
    # both directions cover the frame before the prompt and the one after
    assert all(labels[t].any() for t in range(len(stack)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


class FakeTracker:
    """Stands in for the Tracker to check what segment() asks of it, without a network.

    Every object's logits are its id on the frame, plus 10 in a square at (row 2*id, col 2*id),
    so larger ids win everywhere except in the squares of smaller ones.
    """

    instances: list["FakeTracker"] = []

    def __init__(self, model, frames, **kwargs):
        self.shape = frames.shape
        self.kwargs = kwargs
        self.calls = []
        self.frames = type("Frames", (), {"layout": "grey"})()
        FakeTracker.instances.append(self)

    num_frames = property(lambda self: self.shape[0] if len(self.shape) == 3 else 1)
    object_ids = property(lambda self: self.ids)
    model = type("Model", (), {"image_size": 256})()
    frame_shape = property(lambda self: self.shape[-2:])

    def _logits(self, obj_id):
        logits = np.full(self.frame_shape, float(obj_id) - 3.5, dtype=np.float32)
        logits[2 * obj_id : 2 * obj_id + 2, 2 * obj_id : 2 * obj_id + 2] = 10.0
        return logits

    def set_prompts(self, frame, obj_id, points=None, labels=None, box=None, mask=None):
        assert mask is None
        self.calls.append(("set", frame, obj_id, points, labels, box))
        self.ids = sorted({c[2] for c in self.calls if c[0] == "set"})

    def frame_logits(self, frame):
        return {i: self._logits(i) for i in self.ids}

    def plan(self, start, direction, max_frames=None):
        return plan_propagation(self.num_frames, start, direction, max_frames)

    def propagate(self, start, direction, max_frames=None):
        self.calls.append(("propagate", start, direction))
        for frame in self.plan(start, direction, max_frames).frames:
            yield frame, self.frame_logits(frame)


@pytest.fixture
def fake_tracker(monkeypatch):
    import napari_sam2.engine.tracker as tracker_module

    FakeTracker.instances.clear()
    monkeypatch.setattr(tracker_module, "Tracker", FakeTracker)
    return FakeTracker


@pytest.mark.parametrize(
    ("direction", "start", "covered"),
    [("both", 1, [0, 1, 2, 3, 4]), ("forward", 1, [1, 2, 3, 4]), ("backward", 3, [0, 1, 2, 3])],
)
def test_segment_starts_from_the_right_frame_and_merges(
    fake_tracker, model, direction, start, covered
):
    stack = np.zeros((5, 12, 12), dtype=np.uint8)
    prompts = [
        Prompt(3, 4, [[1, 2]], [1]),
        Prompt(1, 2, [[5, 6], [7, 8]], [1, 0]),
        Prompt(3, 2, box=[0, 0, 5, 5]),
    ]
    progress = []
    labels = segment(
        stack,
        prompts=prompts,
        model=model,
        axis=0,
        direction=direction,
        progress=lambda d, t: progress.append((d, t)),
    )
    (tracker,) = fake_tracker.instances
    sets = [c for c in tracker.calls if c[0] == "set"]
    assert [(c[1], c[2]) for c in sets] == [(1, 2), (3, 2), (3, 4)]
    np.testing.assert_allclose(sets[0][3], [[5, 6], [7, 8]])
    assert sets[0][5] is None and sets[1][3] is None  # a box-only prompt sends no points
    np.testing.assert_allclose(sets[1][5], [0, 0, 5, 5])
    assert tracker.calls[-1] == ("propagate", start, direction)
    assert tracker.kwargs["device"] is None  # a built model with device="auto" stays put

    expected = np.full((12, 12), 4, dtype=np.uint32)  # id 4 has the higher logit (0.5 > -1.5)
    expected[4:6, 4:6] = 2  # object 2's confident square
    for frame in range(5):
        want = expected if frame in covered else np.zeros_like(expected)
        np.testing.assert_array_equal(labels[frame], want)
    assert progress[-1] == (len(covered), len(covered))


def test_segment_single_image_uses_frame_logits(fake_tracker, model):
    labels = segment(np.zeros((12, 12)), points=[[4, 5]], model=model)
    (tracker,) = fake_tracker.instances
    assert not any(c[0] == "propagate" for c in tracker.calls)
    np.testing.assert_allclose(tracker.calls[0][3], [[5, 4]])  # (row, col) -> (x, y)
    expected = np.zeros((12, 12), dtype=np.uint32)
    expected[2:4, 2:4] = 1
    np.testing.assert_array_equal(labels, expected)


def test_segment_single_image(model):
    image = disc_stack(1)[0]
    labels = segment(image, points=[CENTRE], model=model)
    assert labels.shape == image.shape
    assert labels[CENTRE] == 1
    with pytest.raises(ValueError, match="single 2-D frame"):
        segment(image, points=[[3, *CENTRE]], model=model)


def test_segment_prompt_outside_stack(model):
    with pytest.raises(ValueError, match="frame 9, but the stack has 4 frames"):
        segment(disc_stack(), points=[[9, *CENTRE]], model=model)


def test_segment_refuses_a_run_whose_labels_would_not_fit(monkeypatch):
    import napari_sam2.engine.memory_estimate as estimate

    monkeypatch.setattr("napari_sam2.engine.tracker.Tracker", FakeTracker)
    stack = np.zeros((50, 1000, 1000), dtype=np.uint8)  # labels: 50 x 1000 x 1000 x 4 B = 200 MB
    state = estimate.estimate_propagation_bytes(256, 1, 50)
    monkeypatch.setattr(estimate, "available_host_bytes", lambda: int((state + 50e6) / 0.8))
    with pytest.raises(estimate.InsufficientMemory, match="needs about"):
        segment(stack, points=[[0, 5, 5]], model=torch.nn.Identity())
