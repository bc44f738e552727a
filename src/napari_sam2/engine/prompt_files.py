"""Prompts from napari's own CSV files, so an annotation made in napari replays on a cluster.

napari's built-in writer saves layers as CSV (File > Save Selected Layer(s), or ``layer.save``):

- Points: header ``index,axis-0,axis-1,...`` then one row per point; extra columns hold the
  layer's features (one column per feature, named after it). Every value is written by numpy, so
  numbers look like ``3.0``.
- Shapes: header ``index,shape-type,vertex-index,axis-0,axis-1,...`` then one row per vertex.
  napari writes no shape features.

Coordinates are in the layer's *data* coordinates, in napari's axis order: the non-spatial axes
first (e.g. z or t), then (row, col). They are not scaled to world units; the napari plugin saves
data coordinates, so pixel indices of the image are what the files hold.

Our convention on top of that format, both optional:

- a ``label`` column for points: 1 (positive, the default when the column is missing) or 0
  (negative); ``true``/``false`` and ``positive``/``negative`` are accepted too.
- an ``object`` column: the object id (a positive integer). Points default to object 1. Boxes
  default to ``index + 1`` (napari writes no shape features, so each rectangle is its own object
  unless an ``object`` column is added by hand).

Only rectangles become boxes (``shape-type`` ``rectangle``); the box is the min/max of the
rectangle's vertices, so a rotated rectangle becomes its bounding box.

The frame of a prompt is its coordinate on the tracked axis (``axis``, default 0) of 3-D files,
rounded to the nearest integer; in 2-D files every prompt is on frame 0. The two remaining axes are
(row, col), converted to SAM's (x, y) = (col, row).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .io import atomic_write
from .session import Prompt, group_prompts

__all__ = [
    "Prompt",
    "group_prompts",
    "read_boxes_csv",
    "read_points_csv",
    "read_prompts_csv",
    "write_boxes_csv",
    "write_points_csv",
]

_AXIS_PREFIX = "axis-"
_SHAPE_COLUMNS = ("index", "shape-type", "vertex-index")
_TRUE_WORDS = {"1", "true", "positive", "pos", "yes"}
_FALSE_WORDS = {"0", "false", "negative", "neg", "no"}


# ---------------------------------------------------------------------------------- reading


class _Table:
    """A CSV file's header and rows, with errors that name the file and the line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"prompt file {self.path} is a folder; give the path of a CSV file")
        if not self.path.is_file():
            raise FileNotFoundError(f"prompt file {self.path} does not exist")
        data = self.path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise self.error(
                line,
                f"byte {data[err.start]:#04x} is not UTF-8 text; save the file as UTF-8 (napari "
                "writes UTF-8) or check that it is a CSV file",
            ) from None
        if "\x00" in text:
            line = text[: text.index("\x00")].count("\n") + 1
            raise self.error(line, "holds a NUL character: this is not a text CSV file")
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(
                f"{self.path}: the file is empty; expected a napari CSV with a header line "
                "such as 'index,axis-0,axis-1'"
            ) from None
        except csv.Error as err:
            raise self.error(1, f"is not valid CSV ({err})") from None
        self.header = [name.strip() for name in header]
        seen: set[str] = set()
        for name in self.header:
            if name in seen:
                raise self.error(1, f"column {name!r} appears twice in the header")
            seen.add(name)
        # (line number, cells); blank lines are skipped, as napari's reader would fail on them
        self.rows = []
        try:
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                if len(row) > len(self.header):
                    raise self.error(
                        reader.line_num,
                        f"has {len(row)} values, but the header has {len(self.header)} columns",
                    )
                self.rows.append((reader.line_num, row))
        except csv.Error as err:
            raise self.error(reader.line_num, f"is not valid CSV ({err})") from None
        self.axis_columns = self._axis_columns()

    def _axis_columns(self) -> list[int]:
        by_number = {}
        for position, name in enumerate(self.header):
            if name.startswith(_AXIS_PREFIX):
                suffix = name[len(_AXIS_PREFIX) :]
                if not suffix.isdigit():
                    raise self.error(1, f"column {name!r} is not of the form 'axis-N'")
                by_number[int(suffix)] = position
        ndim = len(by_number)
        if ndim < 2 or sorted(by_number) != list(range(ndim)):
            raise self.error(
                1,
                "expected coordinate columns 'axis-0', 'axis-1', ... (as napari writes them); "
                f"the header is {','.join(self.header)!r}",
            )
        return [by_number[n] for n in range(ndim)]

    def error(self, line: int, message: str) -> ValueError:
        return ValueError(f"{self.path}, line {line}: {message}")

    def column(self, name: str) -> int | None:
        return self.header.index(name) if name in self.header else None

    def cell(self, line: int, row: list[str], position: int) -> str:
        if position >= len(row):
            raise self.error(
                line, f"has {len(row)} values, the header has {len(self.header)} columns"
            )
        return row[position].strip()

    def number(self, line: int, row: list[str], position: int) -> float:
        text = self.cell(line, row, position)
        try:
            value = float(text)
        except ValueError:
            raise self.error(
                line, f"column {self.header[position]!r} holds {text!r}, which is not a number"
            ) from None
        if not math.isfinite(value):
            raise self.error(line, f"column {self.header[position]!r} holds {text!r}")
        return value

    def coordinates(self, line: int, row: list[str]) -> list[float]:
        return [self.number(line, row, position) for position in self.axis_columns]

    def object_id(self, line: int, row: list[str], position: int) -> int:
        value = self.number(line, row, position)
        if value != round(value) or value < 1:
            raise self.error(line, f"object id {value:g} is not a positive integer")
        return int(round(value))

    def point_label(self, line: int, row: list[str], position: int) -> int:
        text = self.cell(line, row, position).lower()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            if number in (0.0, 1.0):
                return int(number)
        elif text in _TRUE_WORDS:
            return 1
        elif text in _FALSE_WORDS:
            return 0
        raise self.error(
            line, f"label {text!r} must be 1 (positive) or 0 (negative), or true/false"
        )


def _split_axes(ndim: int, axis: int, table: _Table) -> tuple[int | None, int, int]:
    """(frame column, row column, col column) positions among the coordinates."""
    if ndim == 2:
        return None, 0, 1
    if ndim != 3:
        raise table.error(
            1,
            f"the prompts are {ndim}-D; only 2-D (row, col) and 3-D (frame, row, col) prompts "
            "are supported. Slice the data to one 3-D stack and annotate that",
        )
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for the 3-D prompts in {table.path}")
    frame_axis = axis % ndim
    spatial = [d for d in range(ndim) if d != frame_axis]
    return frame_axis, spatial[0], spatial[1]


def _frame_of(value: float | None) -> int:
    return 0 if value is None else int(round(value))


def read_points_csv(path: str | os.PathLike[str], *, axis: int = 0) -> list[Prompt]:
    """Read positive/negative clicks from a napari Points CSV.

    Args:
        path: the CSV file (header ``index,axis-0,axis-1[,axis-2][,label][,object],...``).
        axis: which coordinate column is the tracked axis in 3-D files (``axis-<axis>``); the
            other two are (row, col). Ignored for 2-D files.

    Returns:
        Prompts grouped by (frame, object) and sorted by them; ``box`` is None. Points keep the
        file's order within a group.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed file (the message names the file, the line and the problem), or
            a Shapes file.
    """
    table = _Table(path)
    if table.column("shape-type") is not None:
        raise table.error(1, "this is a napari Shapes file; read it with read_boxes_csv")
    frame_axis, row_axis, col_axis = _split_axes(len(table.axis_columns), axis, table)
    label_column = table.column("label")
    object_column = table.column("object")

    prompts: dict[tuple[int, int], tuple[list[list[float]], list[int]]] = {}
    for line, row in table.rows:
        coords = table.coordinates(line, row)
        frame = _frame_of(None if frame_axis is None else coords[frame_axis])
        obj_id = 1 if object_column is None else table.object_id(line, row, object_column)
        label = 1 if label_column is None else table.point_label(line, row, label_column)
        points, labels = prompts.setdefault((frame, obj_id), ([], []))
        points.append([coords[col_axis], coords[row_axis]])
        labels.append(label)
    return [
        Prompt(frame, obj_id, np.array(points, dtype=np.float64), np.array(labels))
        for (frame, obj_id), (points, labels) in sorted(prompts.items())
    ]


def read_boxes_csv(path: str | os.PathLike[str], *, axis: int = 0) -> list[Prompt]:
    """Read boxes from the rectangles of a napari Shapes CSV.

    Args:
        path: the CSV file (header ``index,shape-type,vertex-index,axis-0,axis-1,...``).
        axis: which coordinate column is the tracked axis in 3-D files; see
            :func:`read_points_csv`.

    Returns:
        One prompt per rectangle, sorted by (frame, object), with no points. The object id is the
        ``object`` column when present, else the shape's ``index + 1``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed file, a shape that is not a rectangle, a rectangle whose vertices
            lie on different frames, or two boxes for the same object on the same frame.
    """
    table = _Table(path)
    missing = [name for name in _SHAPE_COLUMNS if name not in table.header]
    if missing:
        raise table.error(
            1,
            f"missing column(s) {', '.join(missing)}: not a napari Shapes file "
            "(a Points file goes to read_points_csv)",
        )
    frame_axis, row_axis, col_axis = _split_axes(len(table.axis_columns), axis, table)
    index_column = table.column("index")
    type_column = table.column("shape-type")
    object_column = table.column("object")

    shapes: dict[int, dict] = {}
    for line, row in table.rows:
        index_value = table.number(line, row, index_column)
        if index_value != round(index_value) or index_value < 0:
            raise table.error(line, f"shape index {index_value:g} is not an integer >= 0")
        index = int(index_value)
        kind = table.cell(line, row, type_column)
        if kind != "rectangle":
            raise table.error(
                line,
                f"shape {index} is a {kind!r}; only rectangles can be used as box prompts "
                "(delete the other shapes or save the rectangles to their own layer)",
            )
        coords = table.coordinates(line, row)
        obj_id = index + 1 if object_column is None else table.object_id(line, row, object_column)
        frame = _frame_of(None if frame_axis is None else coords[frame_axis])
        shape = shapes.setdefault(
            index, {"line": line, "frame": frame, "obj_id": obj_id, "rows": [], "cols": []}
        )
        if frame != shape["frame"]:
            raise table.error(
                line,
                f"rectangle {index} spans frames {shape['frame']} and {frame}; a box must lie "
                "in one frame",
            )
        if obj_id != shape["obj_id"]:
            raise table.error(line, f"rectangle {index} has more than one object id")
        shape["rows"].append(coords[row_axis])
        shape["cols"].append(coords[col_axis])

    prompts: dict[tuple[int, int], Prompt] = {}
    for index, shape in shapes.items():
        key = (shape["frame"], shape["obj_id"])
        if key in prompts:
            raise table.error(
                shape["line"],
                f"rectangle {index} is a second box for object {key[1]} on frame {key[0]}; SAM "
                "takes one box per object and frame",
            )
        box = [min(shape["cols"]), min(shape["rows"]), max(shape["cols"]), max(shape["rows"])]
        prompts[key] = Prompt(key[0], key[1], box=np.array(box))
    return [prompts[key] for key in sorted(prompts)]


def read_prompts_csv(path: str | os.PathLike[str], *, axis: int = 0) -> list[Prompt]:
    """Read a napari Points or Shapes CSV, whichever ``path`` is (told apart by its header)."""
    table = _Table(path)
    if table.column("shape-type") is not None:
        return read_boxes_csv(path, axis=axis)
    return read_points_csv(path, axis=axis)


# ---------------------------------------------------------------------------------- writing


def _napari_number(value: float) -> str:
    # napari's writer stacks everything into one float array, so every value prints as a float.
    return repr(float(value))


def _coordinate_row(frame: int, row: float, col: float, ndim: int, axis: int) -> list[float]:
    if ndim == 2:
        return [row, col]
    coords = [row, col]
    coords.insert(axis % 3, float(frame))
    return coords


def _check_ndim(prompts: Sequence[Prompt], ndim: int, axis: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if ndim == 3 and not -3 <= axis < 3:
        raise ValueError(f"axis={axis} is out of range for 3-D prompts")
    if ndim == 2 and any(p.frame != 0 for p in prompts):
        raise ValueError("2-D prompt files hold frame 0 only; use ndim=3 for a stack")


def write_points_csv(
    path: str | os.PathLike[str], prompts: Iterable[Prompt], *, ndim: int = 3, axis: int = 0
) -> Path:
    """Write the points of ``prompts`` as napari's Points CSV (with ``label`` and ``object``).

    Args:
        path: file to write (replaced atomically: a temporary file beside it is renamed into
            place once complete, so an interrupted write leaves the old file).
        prompts: prompts whose points are written; boxes are ignored (see
            :func:`write_boxes_csv`).
        ndim: 3 writes (frame, row, col) coordinates with the frame on ``axis``; 2 writes
            (row, col) and requires every prompt to be on frame 0.
        axis: position of the frame column among the coordinates when ``ndim`` is 3.

    Returns:
        ``path`` as a Path. napari opens the file as a Points layer with ``label`` and ``object``
        features, and :func:`read_points_csv` reads it back to the same prompts.
    """
    prompts = list(prompts)
    _check_ndim(prompts, ndim, axis)
    path = Path(path)
    header = ["index", *(f"{_AXIS_PREFIX}{n}" for n in range(ndim)), "label", "object"]
    with atomic_write(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        index = 0
        for prompt in prompts:
            for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
                coords = _coordinate_row(prompt.frame, y, x, ndim, axis)
                values = [index, *coords, label, prompt.obj_id]
                writer.writerow([_napari_number(v) for v in values])
                index += 1
    return path


def write_boxes_csv(
    path: str | os.PathLike[str], prompts: Iterable[Prompt], *, ndim: int = 3, axis: int = 0
) -> Path:
    """Write the boxes of ``prompts`` as napari's Shapes CSV of rectangles, plus ``object``.

    Vertices go in napari's order for an axis-aligned rectangle: (row0, col0), (row0, col1),
    (row1, col1), (row1, col0). Prompts without a box are skipped. Arguments as in
    :func:`write_points_csv`.
    """
    prompts = [p for p in prompts if p.box is not None]
    _check_ndim(prompts, ndim, axis)
    path = Path(path)
    header = [*_SHAPE_COLUMNS, *(f"{_AXIS_PREFIX}{n}" for n in range(ndim)), "object"]
    with atomic_write(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, prompt in enumerate(prompts):
            x0, y0, x1, y1 = (float(v) for v in prompt.box)
            corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
            for vertex, (row, col) in enumerate(corners):
                coords = _coordinate_row(prompt.frame, row, col, ndim, axis)
                writer.writerow(
                    [index, "rectangle", vertex, *(_napari_number(c) for c in coords),
                     prompt.obj_id]
                )  # fmt: skip
    return path
