"""Per-object tracking state and the choice of memories a frame reads.

Only what later frames may read is kept, on the storage device (the CPU by default): per frame
the low-resolution logits, the object pointer, the object score and the memory features in
bfloat16. Frames and full-resolution outputs are never stored. Beyond a RAM budget, the oldest
outputs go to a temporary file (:mod:`napari_sam2.engine.state_store`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..model.sam2 import PointerMemory, SpatialMemory

if TYPE_CHECKING:
    from .state_store import StateStore


@dataclass
class EncodedPrompt:
    """Prompts of one object on one frame, in model input pixels.

    ``coords`` (1, N, 2) float32 (x, y) and ``labels`` (1, N) int32, box corners first with
    labels 2 and 3; or ``mask`` (1, 1, S, S) float32 in {0, 1}.
    """

    coords: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def num_points(self) -> int:
        return 0 if self.labels is None else int(self.labels.shape[1])


@dataclass
class FrameOutput:
    """What one frame's result leaves for later frames.

    ``low_res``: logits (1, 1, S/4, S/4) float32 after hole filling. ``pointer``: (1, 256).
    ``score``: object-score logit (1, 1). ``memory``: encoded memory (1, 64, S/16, S/16)
    bfloat16, or None until the memory encoder has run.
    """

    low_res: torch.Tensor
    pointer: torch.Tensor
    score: torch.Tensor
    memory: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        tensors = [self.low_res, self.pointer, self.score]
        if self.memory is not None:
            tensors.append(self.memory)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class ObjectState:
    """Everything the tracker knows about one object.

    ``conditioning``: outputs of prompted frames, which every frame attends to.
    ``recent``: outputs of tracked (non-conditioning) frames. ``pending``: outputs of prompts
    given since the last propagation, with whether they will become conditioning frames; their
    memory is encoded when propagation starts. ``tracked``: frames visited by propagation,
    mapped to whether that pass ran backward.

    ``conditioning`` and ``recent`` are plain dicts, or, made by :meth:`in_store`, maps whose
    outputs a :class:`~napari_sam2.engine.state_store.StateStore` keeps within its RAM budget.
    """

    prompts: dict[int, EncodedPrompt] = field(default_factory=dict)
    conditioning: MutableMapping[int, FrameOutput] = field(default_factory=dict)
    recent: MutableMapping[int, FrameOutput] = field(default_factory=dict)
    pending: dict[int, tuple[FrameOutput, bool]] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)

    @classmethod
    def in_store(cls, store: StateStore) -> ObjectState:
        """An empty state whose stored outputs ``store`` keeps (and may spill to disk)."""
        return cls(
            conditioning=store.frames(conditioning=True), recent=store.frames(conditioning=False)
        )

    def release(self) -> None:
        """Give the stored outputs back (RAM and disk slots); call before dropping the state."""
        self.conditioning.clear()
        self.recent.clear()
        self.pending.clear()

    def latest_output(self, frame: int) -> FrameOutput | None:
        """The newest output on ``frame``: a pending prompt result, else a stored one."""
        if frame in self.pending:
            return self.pending[frame][0]
        return self.conditioning.get(frame, self.recent.get(frame))

    @property
    def nbytes(self) -> int:
        """Bytes held in RAM (on the storage device); spilled outputs count their pointer and
        score only."""
        stored = _ram_nbytes(self.conditioning) + _ram_nbytes(self.recent)
        return stored + sum(out.nbytes for out, _ in self.pending.values())

    @property
    def spilled_nbytes(self) -> int:
        """Bytes of this object's outputs written to disk by a state store."""
        return sum(getattr(m, "disk_nbytes", 0) for m in (self.conditioning, self.recent))


def _ram_nbytes(outputs: MutableMapping[int, FrameOutput]) -> int:
    held = getattr(outputs, "ram_nbytes", None)  # a state store's map knows without reading
    return sum(out.nbytes for out in outputs.values()) if held is None else held


@dataclass
class MemoryPlan:
    """The memories one frame of one object reads: spatial memories with their slots and
    object pointers with their signed offsets. Objects with equal ``signature`` can share one
    batched forward pass."""

    spatial: list[tuple[int, FrameOutput]]
    pointers: list[tuple[int, FrameOutput]]

    @property
    def signature(self) -> tuple:
        return (tuple(t for t, _ in self.spatial), tuple(o for o, _ in self.pointers))


def plan_memory(
    state: ObjectState,
    frame: int,
    *,
    backward: bool,
    num_frames: int,
    num_maskmem: int = 7,
    max_pointers: int = 16,
    signed_offsets: bool = True,
) -> MemoryPlan:
    """Choose the memories for ``frame``, as SAM 2's video predictor does.

    All conditioning frames (slot 0); the ``num_maskmem - 1`` frames just before ``frame`` in
    the tracking direction (slot 6 is the nearest); pointers of conditioning frames not ahead of
    ``frame`` and of up to ``max_pointers - 1`` preceding tracked frames.
    """
    step = 1 if backward else -1  # towards the frames already passed
    spatial = [(0, out) for out in state.conditioning.values()]
    for slot in range(1, num_maskmem):
        distance = num_maskmem - slot
        out = state.recent.get(frame + step * distance)
        if out is not None:
            spatial.append((slot, out))

    pointers = []
    pointer_limit = min(num_frames, max_pointers)
    sign = -1 if backward else 1
    for cond_frame, out in state.conditioning.items():
        behind = cond_frame >= frame if backward else cond_frame <= frame
        if behind:
            offset = (frame - cond_frame) * sign if signed_offsets else abs(frame - cond_frame)
            pointers.append((offset, out))
    for distance in range(1, pointer_limit):
        other = frame + step * distance
        if not 0 <= other < num_frames:
            break
        out = state.recent.get(other)
        if out is not None:
            pointers.append((distance, out))
    return MemoryPlan(spatial, pointers)


def batch_memories(
    plans: list[MemoryPlan], device: torch.device
) -> tuple[list[SpatialMemory], list[PointerMemory]]:
    """Stack the memories of plans with one signature into batched model inputs."""
    first = plans[0]
    spatial = []
    for index, (slot, _) in enumerate(first.spatial):
        feats = torch.cat([plan.spatial[index][1].memory for plan in plans], dim=0)
        spatial.append(SpatialMemory(slot, feats.to(device, non_blocking=True)))
    pointers = []
    for index, (offset, _) in enumerate(first.pointers):
        ptr = torch.cat([plan.pointers[index][1].pointer for plan in plans], dim=0)
        pointers.append(PointerMemory(offset, ptr.to(device, non_blocking=True)))
    return spatial, pointers
