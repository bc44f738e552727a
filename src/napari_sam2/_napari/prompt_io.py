"""The annotator's prompts and settings <-> one prompt file (see ``engine.prompt_store``).

Saving writes the prompts of the plane being segmented (its clicks and box per object and
slice, and painted masks), every object with its name and colour, the plane, and the settings
the command line needs to replay them to the same labels. Loading replaces the image's prompts
and objects with the file's, as one undoable step.
"""

from __future__ import annotations

import numpy as np

from ..engine.prompt_store import ObjectRecord, Plane, PromptFile
from .geometry import SliceGeometry

__all__ = ["plane_of", "prompt_file_of", "prompts_to_layer_rows"]


def plane_of(geometry: SliceGeometry) -> Plane:
    """The prompt file's plane for a slice geometry (frame axes ascending, as the engine reads)."""
    return Plane(
        shape=tuple(geometry.shape),
        frame_axes=tuple(geometry.frame_axes),
        tracked_axis=geometry.tracked_axis,
        channel_axis=geometry.channel_axis,
        held=tuple(geometry.held),
    )


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgba[:3])


def prompt_file_of(annotator, prompts: dict) -> PromptFile:
    """The annotator's prompt file for ``prompts`` ({(obj_id, frame): Prompt}) of its plane."""
    state = annotator.state
    geometry = annotator.geometry()
    layers = annotator.layers
    objects = [
        ObjectRecord(info.id, info.name, _hex(layers.colour(info.id))) for info in state.objects
    ]
    mode = state.intensity
    settings = {
        "model": state.model_name,
        "checkpoint": state.checkpoint.strip() or None,
        "image_size": state.image_size,
        "intensity_range": None if mode == "auto" else list(annotator._intensity_range()),
        "intensity_mode": mode,
        "precision": state.precision,
    }
    ordered = [prompts[key] for key in sorted(prompts, key=lambda k: (k[1], k[0]))]
    return PromptFile(ordered, objects, plane_of(geometry), settings)


def prompts_to_layer_rows(prompt_file: PromptFile, geometry: SliceGeometry, plane_key: str):
    """The file's points and boxes as prompt-layer rows in the image's data coordinates.

    Returns ``(points, point_features, boxes, box_features, masks)``: points (N, ndim), their
    ``object``/``label``/``plane`` columns, rectangles (4, ndim) each with ``object``/``plane``,
    and ``{(obj_id, frame): mask}``.
    """
    row_axis, col_axis = geometry.frame_axes
    held = dict(geometry.held)

    def position(frame: int, row: float, col: float) -> np.ndarray:
        coords = np.zeros(geometry.ndim)
        for axis, index in held.items():
            coords[axis] = index
        if geometry.tracked_axis is not None:
            coords[geometry.tracked_axis] = frame
        coords[row_axis], coords[col_axis] = row, col
        return coords

    points, point_rows, boxes, box_rows, masks = [], [], [], [], {}
    for prompt in prompt_file.prompts:
        if prompt.mask is not None:
            masks[(prompt.obj_id, prompt.frame)] = prompt.mask
            continue
        for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
            points.append(position(prompt.frame, y, x))
            point_rows.append({"object": prompt.obj_id, "label": int(label), "plane": plane_key})
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
            boxes.append(np.array([position(prompt.frame, r, c) for r, c in corners]))
            box_rows.append({"object": prompt.obj_id, "plane": plane_key})
    return points, point_rows, boxes, box_rows, masks
