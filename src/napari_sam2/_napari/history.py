"""Undo and redo as one story: pixels, prompts, painted masks and the object list together.

napari's Labels layer keeps its own undo history of pixel writes. Every step the annotator
records here (a prompt edit and its segmentation, a propagation, a brush stroke, deleting or
clearing an object) says how many of those Labels steps it made, and what the prompts and the
objects were before and after. Undo rewinds the Labels steps and puts the prompts and objects
back, so the next propagation uses exactly what the user sees.

Steps are recorded when their job is submitted and jobs run in submission order, so the Labels
steps of the annotator arrive in the same order as this history's steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from napari.layers import Labels

from .layers import LayerContent

__all__ = ["History", "Snapshot", "Step"]

HISTORY_LIMIT = 200


@dataclass
class Snapshot:
    """The prompts and objects at one moment.

    Attributes:
        points / shapes: the prompt layers' contents (None: empty).
        painted: ``{(obj_id, frame): bool (H, W)}`` masks painted by hand.
        objects: ``((id, name), ...)`` in creation order; ``current``: the current object.
    """

    points: LayerContent | None
    shapes: LayerContent | None
    painted: dict[tuple[int, int], np.ndarray]
    objects: tuple[tuple[int, str], ...]
    current: int | None


@dataclass(eq=False)
class Step:
    """One undoable action.

    Attributes:
        name: what it was, for messages ("segment", "propagate", "paint", ...).
        before / after: the prompts and objects around it.
        labels: the Labels layer its pixels went into (None: no pixels yet).
        label_steps: how many napari Labels undo steps it made.
        plane: the plane key the pixels were written in (for messages only).
    """

    name: str
    before: Snapshot
    after: Snapshot
    labels: Labels | None = None
    label_steps: int = 0
    plane: str = ""
    extra: dict = field(default_factory=dict)

    def add_label_step(self, labels: Labels) -> None:
        """The step wrote pixels into ``labels`` as one more napari undo step."""
        self.labels = labels
        self.label_steps += 1


class History:
    """The annotator's undo and redo stacks of :class:`Step`."""

    def __init__(self) -> None:
        self.undo_stack: list[Step] = []
        self.redo_stack: list[Step] = []

    def push(self, step: Step) -> Step:
        """Record ``step``; a new step clears the redo stack, as napari does for pixels."""
        self.undo_stack.append(step)
        del self.undo_stack[:-HISTORY_LIMIT]
        self.redo_stack.clear()
        return step

    def pop_undo(self) -> Step | None:
        if not self.undo_stack:
            return None
        step = self.undo_stack.pop()
        self.redo_stack.append(step)
        return step

    def pop_redo(self) -> Step | None:
        if not self.redo_stack:
            return None
        step = self.redo_stack.pop()
        self.undo_stack.append(step)
        return step

    def clear(self) -> None:
        self.undo_stack.clear()
        self.redo_stack.clear()
