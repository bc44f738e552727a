"""The annotator's prompt file: every object, prompt, plane and setting of a session in one file.

"Save prompts" in the dock writes it, "Load prompts" reads it back, and the command line and the
Python API replay it, so the same prompts give the same labels everywhere. The file is UTF-8 JSON
(suggested suffix ``.sam2.json``; any name is accepted)::

    {
      "format": "napari-sam2 prompts",
      "version": 1,
      "plane": {"shape": [40, 256, 256], "frame_axes": [1, 2], "tracked_axis": 0,
                "channel_axis": null, "held": []},
      "settings": {"model": "sam2.1_hiera_tiny", "checkpoint": null, "image_size": 1024,
                   "intensity_range": [0.0, 4095.0], "precision": "auto"},
      "objects": [{"id": 1, "name": "liver", "color": "#ff7f0e"}],
      "prompts": [
        {"frame": 12, "object": 1, "points": [[130.0, 88.5]], "labels": [1],
         "box": [100.0, 60.0, 170.0, 120.0]},
        {"frame": 20, "object": 1, "mask": {"shape": [256, 256], "runs": [6000, 12, 244, ...]}}
      ]
    }

Conventions:

- Coordinates are pixels of the layer's *data* (not world units), in SAM's (x, y) =
  (column, row) order of the plane the prompts were made in: x runs along ``plane.frame_axes[1]``
  and y along ``plane.frame_axes[0]``. A box is (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1.
- ``frame`` is the index along ``plane.tracked_axis`` (0 when there is none: a single image).
- A mask is stored as run lengths over its pixels in row-major (C) order, starting with a run of
  False (which may be 0 long); the runs add up to H * W. It round-trips to the bit.
- Floats are written with Python's shortest exact representation, so float64 values come back
  bit for bit; NaN and infinity are refused.
- ``settings`` holds what the replay needs (:data:`SETTINGS`); the axes are in ``plane`` only.
  Keys this version does not know are kept as they are.

Every problem found on reading (a missing file, not UTF-8, not JSON, a newer version, a missing or
bad field, a mask of the wrong size, duplicate object ids, a prompt for an unlisted object) raises
:class:`PromptFileError`, a ValueError whose message names the file and the entry, e.g.
``prompts[3].box``. Writing checks the same rules first, so every file written can be read back.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write, check_output_path
from .precision import PRECISIONS
from .session import Prompt

__all__ = [
    "FORMAT",
    "SETTINGS",
    "SUFFIX",
    "VERSION",
    "EngineAxes",
    "ObjectRecord",
    "Plane",
    "PromptFile",
    "PromptFileError",
    "decode_mask",
    "encode_mask",
    "engine_axes",
    "prompts_for_engine",
    "read_prompt_file",
    "write_prompt_file",
]

FORMAT = "napari-sam2 prompts"
VERSION = 1
#: The suffix the dock suggests; any name is read and written.
SUFFIX = ".sam2.json"
_COLOR = re.compile(r"#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?")


class PromptFileError(ValueError):
    """A prompt file (or a :class:`PromptFile` about to be written) that breaks the format."""


# ------------------------------------------------------------------------------ the records


@dataclass(frozen=True)
class ObjectRecord:
    """One object of the annotator's list.

    Attributes:
        obj_id: positive integer id (the label value).
        name: the name the user gave it (any text, may be empty).
        color: ``"#rrggbb"`` or ``"#rrggbbaa"``, or None for the annotator's default colour.
    """

    obj_id: int
    name: str = ""
    color: str | None = None


@dataclass(frozen=True)
class Plane:
    """The plane (view orientation) the prompts were made in, as axes of the image layer's data.

    Attributes:
        shape: the layer data's shape.
        frame_axes: the two displayed axes, (row axis, column axis) as napari shows them.
        tracked_axis: the axis a propagation runs along (z or t), or None for a single plane.
        channel_axis: the axis of colour channels (e.g. RGB, last), or None.
        held: ``((axis, index), ...)``, sorted by axis: every other axis, fixed at the index the
            slider was at (e.g. the time point of a 4-D stack tracked through z).

    Every axis of ``shape`` is exactly one of: a frame axis, the tracked axis, the channel axis or
    a held axis.
    """

    shape: tuple[int, ...]
    frame_axes: tuple[int, int]
    tracked_axis: int | None = None
    channel_axis: int | None = None
    held: tuple[tuple[int, int], ...] = ()

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of a frame as displayed: the lengths of the row and column axes."""
        return self.shape[self.frame_axes[0]], self.shape[self.frame_axes[1]]

    @property
    def num_frames(self) -> int:
        """Frames along the tracked axis (1 without one)."""
        return 1 if self.tracked_axis is None else self.shape[self.tracked_axis]


@dataclass
class PromptFile:
    """Everything a prompt file holds.

    Attributes:
        prompts: at most one :class:`Prompt` per (frame, object) (combine clicks and a box of one
            object and frame with :func:`napari_sam2.engine.session.group_prompts`); each with
            points, a box or a mask. Coordinates are those of ``plane`` (see the module).
        objects: every object, in list order; each prompt's object must be among them.
        plane: where the prompts were made, or None when unknown (then frames and masks are not
            checked against an image).
        settings: :data:`SETTINGS` keys and any others (JSON values).
    """

    prompts: list[Prompt] = field(default_factory=list)
    objects: list[ObjectRecord] = field(default_factory=list)
    plane: Plane | None = None
    settings: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ masks


def encode_mask(mask: np.ndarray) -> dict:
    """A bool (H, W) mask as ``{"shape": [H, W], "runs": [...]}``: run lengths in row-major order,
    the first run False (possibly 0 long), then alternating."""
    flat = np.asarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs.insert(0, 0)
    return {"shape": [int(n) for n in np.shape(mask)], "runs": runs}


def decode_mask(shape: Sequence[int], runs: Sequence[int]) -> np.ndarray:
    """The bool mask of :func:`encode_mask`'s ``shape`` and ``runs``. Raises ValueError when the
    runs are negative or do not add up to the shape's size."""
    counts = np.asarray(runs, dtype=np.int64).reshape(-1)
    if (counts < 0).any():
        raise ValueError("run lengths must not be negative")
    size = int(np.prod(shape, dtype=np.int64))
    if int(counts.sum()) != size:
        raise ValueError(
            f"the runs add up to {int(counts.sum())} pixels, but a {shape[0]} x {shape[1]} mask "
            f"has {size}"
        )
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(tuple(shape))


# ------------------------------------------------------------------------------ settings


def _text_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"must be text or null, got {_show(value)}")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"must be text, got {_show(value)}")


def _input_size(value: Any) -> int | None:
    if value is None:
        return None
    size = _integer(value)
    if size < 1:
        raise ValueError(f"must be a positive integer, got {size}")
    return size


def _intensity_range(value: Any) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"must be [low, high] or null, got {_show(value)}")
    low, high = (_finite(v) for v in value)
    if not low < high:
        raise ValueError(f"low must be below high, got [{low!r}, {high!r}]")
    return [low, high]


def _precision(value: Any) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"must be one of {', '.join(PRECISIONS)}, got {_show(value)}")
    return value


#: Settings this version checks, and what each holds. Others are kept as they are.
SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model": ("the model preset's name", _text),
    "checkpoint": ("the checkpoint file's path, or null for the preset's weights", _text_or_none),
    "image_size": ("the network's input size in pixels, or null for the preset's", _input_size),
    "intensity_range": ("[low, high] mapped to black and white, or null", _intensity_range),
    "intensity_mode": ("how the range was chosen (e.g. 'percentiles', 'layer')", _text_or_none),
    "precision": ("the compute precision: " + ", ".join(PRECISIONS), _precision),
}


# ------------------------------------------------------------------------------ parsing helpers


def _show(value: Any) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _integer(value: Any) -> int:
    """A JSON integer (an integral float such as 3.0 is accepted; bools are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be an integer, got {_show(value)}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"must be a whole number, got {_show(value)}")
    return int(value)


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {value!r}")
    return number


class _Reader:
    """Parses the decoded JSON of one file, naming ``where`` in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> PromptFileError:
        return PromptFileError(f"{self.source}: {where}: {message}")

    def get(self, entry: Mapping, key: str, where: str, *, default: Any = ...) -> Any:
        if key in entry:
            return entry[key]
        if default is ...:
            raise self.fail(where, f"the field {key!r} is missing")
        return default

    def check(self, where: str, convert: Callable[[Any], Any], value: Any) -> Any:
        try:
            return convert(value)
        except PromptFileError:
            raise
        except (TypeError, ValueError) as err:
            raise self.fail(where, str(err)) from None

    def mapping(self, value: Any, where: str, allowed: Iterable[str]) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a JSON object, got {_show(value)}")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise self.fail(
                where,
                f"unknown field {unknown[0]!r} (expected {', '.join(repr(k) for k in allowed)})",
            )
        return value

    def array(self, value: Any, where: str) -> list:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a JSON array, got {_show(value)}")
        return value

    def axis(self, value: Any, where: str, ndim: int) -> int:
        axis = self.check(where, _integer, value)
        if not 0 <= axis < ndim:
            raise self.fail(where, f"axis {axis} is out of range for {ndim}-D data")
        return axis

    # ---------------------------------------------------------------------- sections

    def document(self, data: Any) -> PromptFile:
        top = self.mapping(
            data, "the file", ("format", "version", "plane", "settings", "objects", "prompts")
        )
        if top.get("format") != FORMAT:
            raise self.fail(
                "format",
                f"expected {FORMAT!r}, got {_show(top.get('format'))}: this is not "
                "a napari-sam2 prompt file",
            )
        version = self.check("version", _integer, self.get(top, "version", "the file"))
        if version > VERSION:
            raise self.fail(
                "version",
                f"the file has version {version}, written by a newer napari-sam2; this one reads "
                f"version {VERSION}: update napari-sam2",
            )
        if version < 1:
            raise self.fail("version", f"must be 1 or more, got {version}")
        plane_data = self.get(top, "plane", "the file", default=None)
        plane = None if plane_data is None else self.plane(plane_data)
        settings = self.settings(self.get(top, "settings", "the file", default={}))
        objects = self.objects(self.get(top, "objects", "the file"))
        known = {record.obj_id for record in objects}
        prompts = self.prompts(self.get(top, "prompts", "the file"), known, plane)
        return PromptFile(prompts=prompts, objects=objects, plane=plane, settings=settings)

    def plane(self, data: Any) -> Plane:
        fields = ("shape", "frame_axes", "tracked_axis", "channel_axis", "held")
        entry = self.mapping(data, "plane", fields)
        shape_data = self.array(self.get(entry, "shape", "plane"), "plane.shape")
        shape = []
        for i, length in enumerate(shape_data):
            length = self.check(f"plane.shape[{i}]", _integer, length)
            if length < 1:
                raise self.fail(f"plane.shape[{i}]", f"must be at least 1, got {length}")
            shape.append(length)
        ndim = len(shape)
        if ndim < 2:
            raise self.fail("plane.shape", f"an image has at least 2 axes, got {shape}")
        frame_data = self.array(self.get(entry, "frame_axes", "plane"), "plane.frame_axes")
        if len(frame_data) != 2:
            raise self.fail("plane.frame_axes", f"must be [row axis, column axis]: {frame_data}")
        frame_axes = tuple(
            self.axis(a, f"plane.frame_axes[{i}]", ndim) for i, a in enumerate(frame_data)
        )
        special = {}
        for name in ("tracked_axis", "channel_axis"):
            value = self.get(entry, name, "plane", default=None)
            special[name] = None if value is None else self.axis(value, f"plane.{name}", ndim)
        held = []
        held_data = self.array(self.get(entry, "held", "plane", default=[]), "plane.held")
        for i, pair in enumerate(held_data):
            where = f"plane.held[{i}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise self.fail(where, f"must be [axis, index], got {_show(pair)}")
            axis = self.axis(pair[0], where, ndim)
            index = self.check(where, _integer, pair[1])
            if not 0 <= index < shape[axis]:
                raise self.fail(
                    where, f"index {index} is out of range for axis {axis} of length {shape[axis]}"
                )
            held.append((axis, index))
        used = [*frame_axes, *(a for a in special.values() if a is not None)]
        used += [axis for axis, _ in held]
        if sorted(used) != list(range(ndim)):
            raise self.fail(
                "plane",
                f"every axis of the {ndim}-D data must be exactly one of the frame axes, the "
                f"tracked axis, the channel axis or a held axis; got frame_axes "
                f"{list(frame_axes)}, tracked_axis {special['tracked_axis']}, channel_axis "
                f"{special['channel_axis']}, held axes {[a for a, _ in held]}",
            )
        return Plane(
            shape=tuple(shape),
            frame_axes=frame_axes,
            tracked_axis=special["tracked_axis"],
            channel_axis=special["channel_axis"],
            held=tuple(sorted(held)),
        )

    def settings(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise self.fail("settings", f"must be a JSON object, got {_show(data)}")
        settings = {}
        for key, value in data.items():
            if key in SETTINGS:
                value = self.check(f"settings.{key}", SETTINGS[key][1], value)
            elif not _jsonable(value):
                raise self.fail(f"settings.{key}", f"is not a JSON value: {_show(value)}")
            settings[key] = value
        return settings

    def objects(self, data: Any) -> list[ObjectRecord]:
        records = []
        seen: dict[int, int] = {}
        for i, item in enumerate(self.array(data, "objects")):
            where = f"objects[{i}]"
            entry = self.mapping(item, where, ("id", "name", "color"))
            obj_id = self.check(f"{where}.id", _integer, self.get(entry, "id", where))
            if obj_id < 1:
                raise self.fail(f"{where}.id", f"must be a positive integer, got {obj_id}")
            if obj_id in seen:
                raise self.fail(
                    f"{where}.id",
                    f"object id {obj_id} is also objects[{seen[obj_id]}]'s; "
                    "object ids must be unique",
                )
            seen[obj_id] = i
            name = self.check(f"{where}.name", _text, self.get(entry, "name", where, default=""))
            color = self.get(entry, "color", where, default=None)
            if color is not None and not (isinstance(color, str) and _COLOR.fullmatch(color)):
                raise self.fail(
                    f"{where}.color", f"must be '#rrggbb', '#rrggbbaa' or null, got {_show(color)}"
                )
            records.append(ObjectRecord(obj_id, name, color))
        return records

    def prompts(self, data: Any, known: set[int], plane: Plane | None) -> list[Prompt]:
        prompts = []
        seen: dict[tuple[int, int], int] = {}
        for i, item in enumerate(self.array(data, "prompts")):
            prompt = self.prompt(item, f"prompts[{i}]", known, plane)
            if prompt.key in seen:
                raise self.fail(
                    f"prompts[{i}]",
                    f"object {prompt.obj_id} on frame {prompt.frame} is also prompts"
                    f"[{seen[prompt.key]}]; give one prompt per object and frame (combine them "
                    "with group_prompts)",
                )
            seen[prompt.key] = i
            prompts.append(prompt)
        return prompts

    def prompt(self, data: Any, where: str, known: set[int], plane: Plane | None) -> Prompt:
        entry = self.mapping(data, where, ("frame", "object", "points", "labels", "box", "mask"))
        frame = self.check(f"{where}.frame", _integer, self.get(entry, "frame", where))
        if plane is not None and not 0 <= frame < plane.num_frames:
            span = (
                "there is no tracked axis, so it must be 0"
                if plane.tracked_axis is None
                else (f"the tracked axis {plane.tracked_axis} has {plane.num_frames} frames")
            )
            raise self.fail(f"{where}.frame", f"frame {frame} is out of range: {span}")
        if frame < 0:
            raise self.fail(f"{where}.frame", f"must not be negative, got {frame}")
        obj_id = self.check(f"{where}.object", _integer, self.get(entry, "object", where))
        if obj_id not in known:
            raise self.fail(
                f"{where}.object",
                f"object {obj_id} is not in the file's object list; add it to 'objects'",
            )
        points = self.array(self.get(entry, "points", where, default=[]), f"{where}.points")
        xy = np.zeros((len(points), 2), dtype=np.float64)
        for n, pair in enumerate(points):
            if not isinstance(pair, list) or len(pair) != 2:
                raise self.fail(f"{where}.points[{n}]", f"must be [x, y], got {_show(pair)}")
            xy[n] = [self.check(f"{where}.points[{n}]", _finite, v) for v in pair]
        labels_data = self.get(entry, "labels", where, default=[1] * len(points))
        labels_data = self.array(labels_data, f"{where}.labels")
        if len(labels_data) != len(points):
            raise self.fail(
                f"{where}.labels", f"{len(labels_data)} labels for {len(points)} points"
            )
        labels = np.zeros(len(points), dtype=np.int64)
        for n, value in enumerate(labels_data):
            label = self.check(f"{where}.labels[{n}]", _integer, value)
            if label not in (0, 1):
                raise self.fail(
                    f"{where}.labels[{n}]", f"must be 1 (positive) or 0 (negative), got {label}"
                )
            labels[n] = label
        box = self.get(entry, "box", where, default=None)
        if box is not None:
            if not isinstance(box, list) or len(box) != 4:
                raise self.fail(f"{where}.box", f"must be [x0, y0, x1, y1], got {_show(box)}")
            box = np.array([self.check(f"{where}.box", _finite, v) for v in box])
            if not (box[0] <= box[2] and box[1] <= box[3]):
                raise self.fail(f"{where}.box", f"needs x0 <= x1 and y0 <= y1, got {box.tolist()}")
        mask = self.get(entry, "mask", where, default=None)
        if mask is not None:
            mask = self.mask(mask, f"{where}.mask", plane)
            if len(points) or box is not None:
                raise self.fail(where, "give a mask, or points and/or a box, not both")
        if not len(points) and box is None and mask is None:
            raise self.fail(where, "has no points, box or mask")
        return Prompt(frame, obj_id, xy, labels, box, mask)

    def mask(self, data: Any, where: str, plane: Plane | None) -> np.ndarray:
        entry = self.mapping(data, where, ("shape", "runs"))
        shape = self.array(self.get(entry, "shape", where), f"{where}.shape")
        if len(shape) != 2:
            raise self.fail(f"{where}.shape", f"must be [H, W], got {_show(shape)}")
        shape = [self.check(f"{where}.shape", _integer, v) for v in shape]
        if min(shape) < 1:
            raise self.fail(f"{where}.shape", f"both sides must be at least 1, got {shape}")
        if plane is not None and tuple(shape) != plane.frame_shape:
            raise self.fail(
                f"{where}.shape",
                f"the mask is {shape[0]} x {shape[1]}, but a frame of the plane is "
                f"{plane.frame_shape[0]} x {plane.frame_shape[1]}",
            )
        runs = self.array(self.get(entry, "runs", where), f"{where}.runs")
        counts = [self.check(f"{where}.runs", _integer, v) for v in runs]
        return self.check(f"{where}.runs", lambda c: decode_mask(shape, c), counts)


# ------------------------------------------------------------------------------ encoding


def _encode(prompt_file: PromptFile) -> dict:
    """The JSON document of ``prompt_file`` (not yet checked: :func:`_validate` does that)."""
    plane = prompt_file.plane
    document: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if plane is not None:
        document["plane"] = {
            "shape": [int(n) for n in plane.shape],
            "frame_axes": [int(a) for a in plane.frame_axes],
            "tracked_axis": None if plane.tracked_axis is None else int(plane.tracked_axis),
            "channel_axis": None if plane.channel_axis is None else int(plane.channel_axis),
            "held": [[int(a), int(i)] for a, i in sorted(plane.held)],
        }
    else:
        document["plane"] = None
    settings = dict(prompt_file.settings)
    for key in settings:
        if not isinstance(key, str):
            raise ValueError(f"settings keys must be text, got {key!r}")
    document["settings"] = settings
    objects = []
    for record in prompt_file.objects:
        entry: dict[str, Any] = {"id": _plain(record.obj_id), "name": record.name}
        if record.color is not None:
            entry["color"] = record.color
        objects.append(entry)
    document["objects"] = objects
    prompts = []
    for prompt in prompt_file.prompts:
        entry = {"frame": int(prompt.frame), "object": int(prompt.obj_id)}
        if prompt.mask is not None:
            entry["mask"] = encode_mask(prompt.mask)
        else:
            if len(prompt.points):
                entry["points"] = prompt.points.tolist()
                entry["labels"] = prompt.labels.tolist()
            if prompt.box is not None:
                entry["box"] = prompt.box.tolist()
        prompts.append(entry)
    document["prompts"] = prompts
    return document


def _plain(value: Any) -> Any:
    """numpy integers as Python ints (so an id from an array is written); others unchanged."""
    return int(value) if isinstance(value, np.integer) else value


def _serialize(prompt_file: PromptFile, source: str) -> str:
    """The file's text; raises PromptFileError for what :func:`read_prompt_file` would refuse."""
    try:
        document = _encode(prompt_file)
        text = _layout(document)
    except (TypeError, ValueError, AttributeError) as err:
        raise PromptFileError(f"{source}: cannot write these prompts: {err}") from None
    # Reading the text back checks every rule once, in one place, and proves it can be read.
    _parse(text, source)
    return text


def _layout(document: dict) -> str:
    """JSON text with one line per top-level field, object and prompt (a mask's runs stay on
    its prompt's line), so a file reads and diffs well."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    lines = []
    for key, value in document.items():
        if key in ("objects", "prompts") and value:
            items = ",\n".join(f"  {one(item)}" for item in value)
            lines.append(f" {one(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {one(key)}: {one(value)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse(text: str, source: str) -> PromptFile:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise PromptFileError(
            f"{source}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); is "
            "this a napari-sam2 prompt file?"
        ) from None
    except (ValueError, RecursionError) as err:
        raise PromptFileError(f"{source}: not a valid prompt file: {err}") from None
    return _Reader(source).document(data)


# ------------------------------------------------------------------------------ files


def write_prompt_file(
    path: str | os.PathLike[str], prompt_file: PromptFile, *, overwrite: bool = False
) -> Path:
    """Write ``prompt_file`` to ``path`` as UTF-8 JSON, atomically.

    The whole file goes to a temporary file in the same folder, renamed over ``path`` only when
    complete: a failure leaves any previous file as it was.

    Returns:
        ``path`` as a Path.

    Raises:
        PromptFileError (a ValueError): the prompts break a rule of the format (the message names
            the entry, e.g. ``prompts[2].box``); nothing is written.
        OutputPathError (a ValueError): ``path`` exists and ``overwrite`` is False, is a folder,
            or its folder is missing or not writable.
    """
    out = check_output_path(path, overwrite=overwrite, what="prompt file")
    text = _serialize(prompt_file, str(out))
    with atomic_write(out) as temp, open(temp, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
        handle.write("\n")
    return out


def read_prompt_file(path: str | os.PathLike[str]) -> PromptFile:
    """Read a prompt file written by :func:`write_prompt_file` (or by hand, following the module's
    format).

    Raises:
        PromptFileError (a ValueError) naming the file and the entry: the file is missing, a
        folder, unreadable, not UTF-8, not JSON, of a newer version, or breaks a rule.
    """
    source = Path(path)
    if source.is_dir():
        raise PromptFileError(f"{source} is a folder; give the prompt file inside it")
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"{source}: no such file; check the path") from None
    except OSError as err:
        raise PromptFileError(f"{source}: cannot be read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PromptFileError(
            f"{source}: not UTF-8 text (byte {err.start}); a prompt file is UTF-8 JSON"
        ) from None
    return _parse(text, str(source))


# ------------------------------------------------------------------------------ the engine


@dataclass(frozen=True)
class EngineAxes:
    """How to hand a plane's image to the engine (``Tracker`` or ``api.segment``).

    Attributes:
        index: index the layer data with it (``data[index]``): the held axes fixed, every other
            axis whole (``slice(None)``).
        axis: the tracked axis of ``data[index]``, or None for a single image (pass 0).
        channel_axis: the channel axis of ``data[index]``, or None.
        transposed: the plane shows rows along a later data axis than columns (napari's dims
            order was swapped), so the engine's frames are the transpose of the displayed ones.
            :func:`prompts_for_engine` turns the prompts accordingly; the engine's labels are in
            the data's own axis order either way.
    """

    index: tuple[int | slice, ...]
    axis: int | None
    channel_axis: int | None
    transposed: bool


def engine_axes(plane: Plane) -> EngineAxes:
    """The engine's view of ``plane``'s image: see :class:`EngineAxes`."""
    held = dict(plane.held)
    index = tuple(held.get(axis, slice(None)) for axis in range(len(plane.shape)))
    kept = [axis for axis in range(len(plane.shape)) if axis not in held]

    def position(axis: int | None) -> int | None:
        return None if axis is None else kept.index(axis)

    return EngineAxes(
        index=index,
        axis=position(plane.tracked_axis),
        channel_axis=position(plane.channel_axis),
        transposed=plane.frame_axes[0] > plane.frame_axes[1],
    )


def prompts_for_engine(prompt_file: PromptFile) -> list[Prompt]:
    """The file's prompts in the engine's frame coordinates, sorted by (frame, object).

    The engine reads each frame in the data's axis order. When the plane was displayed with its
    axes swapped (:attr:`EngineAxes.transposed`), x and y of points and boxes are exchanged and
    masks transposed; otherwise the prompts are copies of the file's.
    """
    swap = prompt_file.plane is not None and engine_axes(prompt_file.plane).transposed
    result = []
    for prompt in sorted(prompt_file.prompts, key=lambda p: (p.frame, p.obj_id)):
        points = prompt.points[:, ::-1] if swap else prompt.points
        box = prompt.box
        if box is not None and swap:
            box = box[[1, 0, 3, 2]]
        mask = prompt.mask
        if mask is not None and swap:
            mask = mask.T
        result.append(
            Prompt(
                prompt.frame,
                prompt.obj_id,
                points.copy(),
                prompt.labels.copy(),
                None if box is None else box.copy(),
                None if mask is None else np.ascontiguousarray(mask),
            )
        )
    return result
