"""The rules every front end shares: prompts, coordinates, propagation plans and labels.

The Python API, the command line and the napari annotator all go through this module, so that
the same prompts give the same labels wherever they are made:

- :class:`Prompt`, the one prompt type: one object's points, box or mask on one frame, in SAM's
  (x, y) = (column, row) pixel coordinates.
- :func:`rowcol_to_xy` and :func:`inside_frame`, the one conversion from napari's (row, col) and
  the one rule for "on the frame": a pixel's centre is at an integer coordinate and its area
  spans +-0.5 around it, so column 0 covers x in [-0.5, 0.5).
- :data:`DIRECTIONS` and :func:`plan_propagation`: which frames a propagation visits, in which
  order. Progress bars and the memory estimate read the same plan.
- :func:`label_frame`, the one overlap policy (see there).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DIRECTIONS",
    "MASK_THRESHOLD",
    "OVERLAP_POLICY",
    "PropagationPlan",
    "Prompt",
    "group_prompts",
    "inside_frame",
    "label_frame",
    "mask_to_bool",
    "plan_propagation",
    "rowcol_to_xy",
    "start_frame",
]

#: A float mask prompt is foreground where it is at least this.
MASK_THRESHOLD = 0.5

#: Propagation directions, the default first.
DIRECTIONS = ("both", "forward", "backward")

OVERLAP_POLICY = (
    "Each pixel goes to the tracked object with the highest logit there (ties to the smaller "
    "id); a mask the user painted counts as certain. Labels of objects that are not being "
    "written (painted by hand, or other objects) are kept unless protection is off."
)


# ------------------------------------------------------------------------------ coordinates


def rowcol_to_xy(rowcol) -> np.ndarray:
    """(N, 2) (row, col) pixel coordinates -> (N, 2) float64 (x, y) = (col, row)."""
    table = np.asarray(rowcol, dtype=np.float64).reshape(-1, 2)
    return table[:, ::-1].copy()


def inside_frame(xy, frame_shape: tuple[int, int]) -> np.ndarray:
    """Whether each (x, y) of ``xy`` (N, 2) lies on a frame of ``frame_shape`` (H, W).

    A pixel covers +-0.5 around its integer centre: x in [-0.5, W - 0.5), y in [-0.5, H - 0.5).
    Returns a bool array (N,); non-finite coordinates are outside.
    """
    table = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    height, width = frame_shape
    with np.errstate(invalid="ignore"):
        x_ok = (table[:, 0] >= -0.5) & (table[:, 0] < width - 0.5)
        y_ok = (table[:, 1] >= -0.5) & (table[:, 1] < height - 0.5)
    return x_ok & y_ok


# ------------------------------------------------------------------------------ prompts


@dataclass(eq=False)
class Prompt:
    """All prompts of one object on one frame, in SAM's coordinates.

    Attributes:
        frame: index along the tracked axis (0 for a single image).
        obj_id: object id, a positive integer (it becomes the label value).
        points: (N, 2) float64 (x, y) = (column, row) pixel coordinates; N may be 0.
        labels: (N,) int64, 1 for a positive click and 0 for a negative one.
        box: (4,) float64 (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, or None.
        mask: bool (H, W) of the frame (a painted or seeded mask), or None. A mask prompt
            carries no points or box.
    """

    frame: int
    obj_id: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.frame = _whole(self.frame, "frame")
        self.obj_id = _whole(self.obj_id, "object id")
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.labels.shape[0] != self.points.shape[0]:
            raise ValueError(
                f"Prompt on frame {self.frame}, object {self.obj_id}: {self.points.shape[0]} "
                f"points but {self.labels.shape[0]} labels"
            )
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        if self.mask is not None:
            self.mask = mask_to_bool(self.mask)
            if self.mask.ndim != 2:
                raise ValueError(
                    f"Prompt on frame {self.frame}, object {self.obj_id}: a mask must be "
                    f"(H, W), got shape {self.mask.shape}"
                )
            if len(self.points) or self.box is not None:
                raise ValueError(
                    f"Prompt on frame {self.frame}, object {self.obj_id}: give a mask, or "
                    "points and/or a box, not both"
                )

    @property
    def key(self) -> tuple[int, int]:
        """(obj_id, frame)."""
        return self.obj_id, self.frame

    @property
    def empty(self) -> bool:
        return not len(self.points) and self.box is None and self.mask is None

    def same_as(self, other: Prompt | None) -> bool:
        """Whether ``other`` prompts the same object on the same frame in the same way."""
        if other is None or self.key != other.key:
            return False

        def same(a, b) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and bool(np.array_equal(a, b))

        return (
            same(self.points, other.points)
            and same(self.labels, other.labels)
            and same(self.box, other.box)
            and same(self.mask, other.mask)
        )

    def engine_kwargs(self) -> dict:
        """Keyword arguments of ``Tracker.set_prompts``: points, labels, box, mask (None when
        absent)."""
        if self.mask is not None:
            return {"points": None, "labels": None, "box": None, "mask": self.mask}
        has_points = len(self.points) > 0
        return {
            "points": self.points.astype(np.float32) if has_points else None,
            "labels": self.labels.astype(np.int32) if has_points else None,
            "box": None if self.box is None else self.box.astype(np.float32),
            "mask": None,
        }


def mask_to_bool(mask) -> np.ndarray:
    """A mask prompt as bool: bool as is, integers where non-zero, floats where
    >= :data:`MASK_THRESHOLD` (0.5). ValueError for NaN, or a dtype that is not a number."""
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if array.dtype.kind in "iu":
        return array != 0
    if array.dtype.kind == "f":
        if np.isnan(array).any():
            raise ValueError("the mask contains NaN; give a bool mask or numbers in [0, 1]")
        return array >= MASK_THRESHOLD
    raise ValueError(f"a mask must be bool, integer or float, got dtype {array.dtype}")


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"the {name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral) and float(value) != round(float(value)):
        raise ValueError(f"the {name} must be a whole number, got {value!r}")
    return int(value)


def group_prompts(*prompt_lists: Iterable[Prompt]) -> list[Prompt]:
    """Combine prompts of the same (frame, object) into one, e.g. clicks and boxes from two files.

    Points are concatenated in order. Raises ValueError if one (frame, object) gets two boxes,
    or a mask beside anything else. Returns new prompts sorted by (frame, object); the inputs
    are not modified.
    """
    merged: dict[tuple[int, int], Prompt] = {}
    for prompts in prompt_lists:
        for prompt in prompts:
            key = (prompt.frame, prompt.obj_id)
            into = merged.get(key)
            if into is None:
                merged[key] = Prompt(
                    prompt.frame,
                    prompt.obj_id,
                    prompt.points.copy(),
                    prompt.labels.copy(),
                    None if prompt.box is None else prompt.box.copy(),
                    None if prompt.mask is None else prompt.mask.copy(),
                )
                continue
            if into.mask is not None or prompt.mask is not None:
                raise ValueError(
                    f"object {key[1]} has a mask and other prompts on frame {key[0]}; a mask "
                    "prompt stands alone"
                )
            into.points = np.concatenate([into.points, prompt.points])
            into.labels = np.concatenate([into.labels, prompt.labels])
            if prompt.box is not None:
                if into.box is not None:
                    raise ValueError(
                        f"object {key[1]} has two boxes on frame {key[0]}; SAM takes one box per "
                        "object and frame"
                    )
                into.box = prompt.box.copy()
    return [merged[key] for key in sorted(merged)]


# ------------------------------------------------------------------------------ propagation


@dataclass(frozen=True)
class PropagationPlan:
    """The frames a propagation visits.

    Attributes:
        passes: ``((frames, backward), ...)``: each pass's frames in visiting order and whether
            it runs backward. "both" is a forward pass from the start, then a backward pass from
            the frame before it.
    """

    passes: tuple[tuple[tuple[int, ...], bool], ...]

    @property
    def total(self) -> int:
        """How many frames the propagation yields."""
        return sum(len(frames) for frames, _ in self.passes)

    @property
    def frames(self) -> list[int]:
        """Every frame in the order it is visited."""
        return [frame for frames, _ in self.passes for frame in frames]


def plan_propagation(
    num_frames: int, start: int, direction: str = "both", max_frames: int | None = None
) -> PropagationPlan:
    """Plan a propagation of a stack of ``num_frames`` from ``start``.

    ``max_frames`` limits the frames visited in each direction, ``start`` included (None: the
    whole axis). Raises ValueError for an unknown direction or a bad start or limit.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    num_frames = _whole(num_frames, "number of frames")
    start = _whole(start, "start frame")
    if not 0 <= start < num_frames:
        raise ValueError(
            f"the start frame {start} is out of range: the stack has {num_frames} frames "
            f"(0 to {num_frames - 1})"
        )
    if max_frames is not None:
        max_frames = _whole(max_frames, "max_frames")
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    limit = num_frames if max_frames is None else max_frames
    passes = []
    if direction in ("forward", "both"):
        passes.append((tuple(range(start, min(start + limit, num_frames))), False))
    if direction in ("backward", "both"):
        first = start - 1 if direction == "both" else start
        count = limit - 1 if direction == "both" else limit
        passes.append((tuple(range(first, max(first - count, -1), -1)), True))
    return PropagationPlan(tuple(passes))


def start_frame(prompted_frames: Iterable[int], direction: str = "both") -> int:
    """Where a headless run starts: the latest prompted frame going backward, else the earliest
    (so "both" covers the whole stack)."""
    frames = sorted(set(prompted_frames))
    if not frames:
        raise ValueError("there are no prompts: add a point, box or mask first")
    return frames[-1] if direction == "backward" else frames[0]


# ------------------------------------------------------------------------------ labels


def label_frame(
    current: np.ndarray,
    logits_by_id: Mapping[int, np.ndarray | None],
    *,
    masks: Mapping[int, np.ndarray] | None = None,
    protect: bool = True,
) -> np.ndarray:
    """One frame's labels after writing the objects of ``logits_by_id``: :data:`OVERLAP_POLICY`.

    Args:
        current: (H, W) integer labels of the frame as they are now (not modified).
        logits_by_id: ``{obj_id: float logits (H, W)}`` (mask = logits > 0) of the objects
            being written; None removes that object from the frame.
        masks: ``{obj_id: bool (H, W)}`` painted masks that replace those objects' logits: they
            are kept to the pixel.
        protect: keep pixels of ids that are not being written; False lets the written objects
            take them.

    Returns:
        new (H, W) labels of ``current``'s dtype.
    """
    current = np.asarray(current)
    if current.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {current.dtype}")
    masks = dict(masks or {})
    ids = sorted(set(logits_by_id) | set(masks))
    limit = np.iinfo(current.dtype).max
    for obj_id in ids:
        if isinstance(obj_id, bool) or not isinstance(obj_id, numbers.Integral):
            raise ValueError(f"object ids must be positive integers, got {obj_id!r}")
        if not 0 < int(obj_id) <= limit:
            raise ValueError(
                f"object id {obj_id} is not in 1..{limit}, the range of dtype {current.dtype}"
            )
    written = np.isin(current, ids) if ids else np.zeros(current.shape, dtype=bool)
    result = np.where(written, 0, current).astype(current.dtype, copy=False)
    best = np.zeros(current.shape, dtype=np.float32)
    winner = np.zeros(current.shape, dtype=current.dtype)
    for obj_id in ids:
        if obj_id in masks:
            mask = np.asarray(masks[obj_id], dtype=bool)
            score = np.where(mask, np.float32(np.inf), np.float32(-np.inf))
        elif logits_by_id[obj_id] is None:
            continue
        else:
            score = np.asarray(logits_by_id[obj_id], dtype=np.float32)
        if score.shape != current.shape:
            raise ValueError(
                f"object {obj_id}'s output has shape {score.shape}, the frame {current.shape}"
            )
        wins = score > best
        winner[wins] = obj_id
        best[wins] = score[wins]
    taken = winner > 0
    if protect:
        taken &= result == 0
    result[taken] = winner[taken]
    return result
