"""The annotator's prompts and settings <-> one prompt file (see ``engine.prompt_store``).

Saving writes the prompts of the plane being segmented (its clicks and box per object and
slice, and painted masks), every object with its name and colour, the plane, and the settings
the command line needs to replay them to the same labels. Loading replaces the image's prompts
and objects with the file's, as one undoable step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..engine.prompt_store import (
    ObjectRecord,
    Plane,
    PromptFile,
    read_prompt_file,
    write_prompt_file,
)
from .geometry import SliceGeometry
from .history import Snapshot
from .layers import LayerContent, point_features, shape_features
from .prompt_read import plane_key
from .sync import NO_IMAGE

__all__ = ["load_prompts", "plane_of", "prompt_file_of", "prompts_to_layer_rows", "save_prompts"]


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
        "intensity_range": None if mode == "auto" else list(annotator.intensity_range()),
        "intensity_mode": mode,
        "precision": state.precision,
        "roi": bool(state.roi),  # regions around the objects give other labels than whole slices
        "level": geometry.level,  # the pyramid level whose coordinates the file holds
    }
    ordered = [prompts[key] for key in sorted(prompts, key=lambda k: (k[1], k[0]))]
    return PromptFile(ordered, objects, plane_of(geometry), settings)


def prompts_to_layer_rows(prompt_file: PromptFile, geometry: SliceGeometry, plane_key: str):
    """The file's points and boxes as prompt-layer rows in the image's (level-0) data
    coordinates; the file holds them at ``geometry``'s level.

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
        return geometry.to_level0(coords)

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


def save_prompts(annotator, path, *, overwrite: bool = False) -> bool:
    """See :meth:`Annotator.save_prompts`."""
    try:
        read = annotator.read_prompts()
        written = write_prompt_file(
            path, prompt_file_of(annotator, read.prompts), overwrite=overwrite
        )
    except (ValueError, OSError) as err:
        annotator.notify("error", f"Could not save the prompts: {err}")
        return False
    extra = ""
    if read.other_plane:
        extra = f" ({read.other_plane} of another orientation are not in it)"
    annotator.notify(
        "info",
        f"Saved {len(read.prompts)} prompt group(s) of {len(annotator.state.objects)} object(s) "
        f"to {written}{extra}.",
    )
    return True


def load_prompts(annotator, path) -> bool:
    """See :meth:`Annotator.load_prompts`."""
    work = annotator.work
    try:
        if work is None:
            raise ValueError(NO_IMAGE)
        loaded = read_prompt_file(path)
        plane = loaded.plane
        if plane is not None and tuple(plane.shape) != tuple(annotator.geometry().shape):
            raise ValueError(
                f"{path} was made on an image of shape {tuple(plane.shape)}, but "
                f"{annotator.state.image.name!r} has shape {tuple(annotator.geometry().shape)}"
            )
        if plane is not None:
            annotator.state.update(
                {"tracked_axis": plane.tracked_axis, "channel_axis": plane.channel_axis}
            )
        geometry = annotator.geometry()
        if plane is not None and tuple(plane.frame_axes) != tuple(geometry.frame_axes):
            raise ValueError(
                f"{path} holds prompts of the plane with axes {tuple(plane.frame_axes)}; "
                f"the viewer shows axes {tuple(geometry.frame_axes)}. Change the view "
                "(the axis order) to that plane and load again."
            )
    except (ValueError, OSError) as err:
        annotator.notify("error", f"Could not load the prompts: {err}")
        return False
    points, point_rows, boxes, box_rows, masks = prompts_to_layer_rows(
        loaded, geometry, plane_key(geometry)
    )
    ndim = geometry.ndim
    point_table = pd.DataFrame(point_rows) if point_rows else point_features()
    box_table = pd.DataFrame(box_rows) if box_rows else shape_features()
    objects = tuple((o.obj_id, o.name or f"object {o.obj_id}") for o in loaded.objects)
    snapshot = Snapshot(
        points=LayerContent(np.asarray(points).reshape(-1, ndim), point_table),
        shapes=LayerContent(boxes, box_table, ["rectangle"] * len(boxes)),
        painted=masks,
        objects=objects,
        current=objects[0][0] if objects else None,
    )
    before = work.snapshot or annotator.snapshot()
    annotator.ensure_layers()
    annotator.restore_snapshot(snapshot)
    step = annotator.record_step("load prompts", before)
    annotator.sync(step=step)
    annotator.notify(
        "info", f"Loaded {len(loaded.prompts)} prompt group(s) of {len(objects)} object(s)."
    )
    return True
