"""Segment many volumes on a dask cluster: one task per row of a jobs CSV.

The jobs file has the header ``stack,points,boxes,prompts,out`` (any column order) and one row
per volume::

    stack,points,boxes,prompts,out
    scans/ct01.tif,,,prompts/ct01.sam2.json,labels/ct01.tif
    scans/ct02.tif,clicks/ct02.csv,boxes/ct02.csv,,labels/ct02.tif

- ``stack``: the image (TIFF, Zarr/OME-Zarr folder or .npy), read lazily by the worker.
- ``prompts``: the annotator's prompt file (Save prompts…); or ``points`` and/or ``boxes``:
  napari Points/Shapes CSV files, as ``napari-sam2 segment`` takes them. Empty cells are fine.
- ``out``: the label TIFF written, atomically (a temporary file renamed into place when
  complete), so an output that exists is a finished one: a second run skips it (resume).

Relative paths are relative to the folder of the jobs file. The file is checked as a whole
before any task starts (:func:`read_jobs`); a row that fails later (a missing file, a prompt
outside the stack, a crash) is reported in the summary and does not stop the other rows.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "JOB_COLUMNS",
    "BatchRow",
    "JobsFileError",
    "RowResult",
    "format_summary",
    "read_jobs",
    "run_batch",
    "store_for",
]

JOB_COLUMNS = ("stack", "points", "boxes", "prompts", "out")
_INPUT_COLUMNS = ("stack", "points", "boxes", "prompts")
_OUT_SUFFIXES = (".tif", ".tiff")
STORE_SUFFIX = ".features.zarr"
"""With a store folder, a row's feature store is ``<folder>/<stack name>.features.zarr``."""


class JobsFileError(ValueError):
    """A jobs CSV that cannot be run; the message names the file, line and column."""


@dataclass(frozen=True)
class BatchRow:
    """One row of the jobs file; paths are absolute (resolved against the file's folder)."""

    line: int
    stack: str
    points: str | None
    boxes: str | None
    prompts: str | None
    out: str

    @property
    def volume(self) -> str:
        return Path(self.stack).name

    def inputs(self) -> list[str]:
        """Every file the row reads."""
        return [value for value in (self.stack, self.points, self.boxes, self.prompts) if value]


@dataclass(frozen=True)
class RowResult:
    """What happened to one row. ``status``: "done", "skipped" (its output existed) or
    "failed" (``message`` says why, in one line). ``objects`` and ``frames`` (segmented) are
    None when not known."""

    line: int
    volume: str
    status: str
    objects: int | None = None
    frames: int | None = None
    seconds: float | None = None
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def read_jobs(path: str | os.PathLike[str]) -> list[BatchRow]:
    """Read and check a jobs CSV.

    Raises:
        JobsFileError: a missing or unreadable file, a header that is not
            ``stack,points,boxes,prompts,out``, a row with the wrong number of cells, an empty
            ``stack`` or ``out``, a row without prompts or with both ``prompts`` and
            ``points``/``boxes``, an ``out`` that is not a .tif, that two rows share, or that
            is an input of any row. The message names the line and column and says what to do.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise JobsFileError(f"jobs file {path} {what}; give a CSV file with the header "
                            f"{','.join(JOB_COLUMNS)}")  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise JobsFileError(f"cannot read the jobs file {path}: {err}") from err
    lines = list(csv.reader(text.splitlines()))
    header = [cell.strip().lower() for cell in lines[0]] if lines else []
    _check_header(path, header)
    base = path.parent
    rows: list[BatchRow] = []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # blank lines are allowed
        if len(cells) != len(header):
            raise JobsFileError(
                f"{path}, line {number}: {len(cells)} cell(s), but the header has "
                f"{len(header)} columns ({','.join(header)}); give every row {len(header)} "
                "cells, empty ones included (e.g. 'a.tif,,,a.sam2.json,a_labels.tif')"
            )
        values = {name: cell.strip() or None for name, cell in zip(header, cells)}
        rows.append(_row(path, number, values, base))
    if not rows:
        raise JobsFileError(f"{path} holds no rows after its header; add one row per volume")
    _check_across_rows(path, rows)
    return rows


def _check_header(path: Path, header: list[str]) -> None:
    expected = ",".join(JOB_COLUMNS)
    if not header or header == [""]:
        raise JobsFileError(f"{path} is empty; its first line must be the header {expected}")
    unknown = [name for name in header if name not in JOB_COLUMNS]
    missing = [name for name in JOB_COLUMNS if name not in header]
    repeated = sorted({name for name in header if header.count(name) > 1})
    problems = []
    if unknown:
        problems.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
    if missing:
        problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
    if repeated:
        problems.append(f"repeated column(s) {', '.join(map(repr, repeated))}")
    if problems:
        raise JobsFileError(
            f"{path}, line 1 (the header): {'; '.join(problems)}; the header must be "
            f"{expected} (empty cells are allowed in the rows)"
        )


def _row(path: Path, number: int, values: dict[str, str | None], base: Path) -> BatchRow:
    where = f"{path}, line {number}"
    for name, need in (
        ("stack", "the image stack to segment"),
        ("out", "the label TIFF to write"),
    ):
        if values[name] is None:
            raise JobsFileError(f"{where}, column '{name}': empty; every row needs {need}")
    if values["prompts"] is None and values["points"] is None and values["boxes"] is None:
        raise JobsFileError(
            f"{where}: no prompts; fill 'prompts' (the annotator's prompt file) or 'points' "
            "and/or 'boxes' (napari Points/Shapes CSV files)"
        )
    if values["prompts"] is not None and (values["points"] or values["boxes"]):
        raise JobsFileError(
            f"{where}: give either 'prompts' or 'points'/'boxes', not both; empty the cells "
            "you do not mean"
        )
    if Path(values["out"]).suffix.lower() not in _OUT_SUFFIXES:
        raise JobsFileError(
            f"{where}, column 'out': {values['out']!r} must end in .tif or .tiff (a label TIFF)"
        )
    resolved = {
        name: None if value is None else os.path.normpath(base / os.path.expanduser(value))
        for name, value in values.items()
    }
    return BatchRow(number, **resolved)


def _check_across_rows(path: Path, rows: list[BatchRow]) -> None:
    """No two rows write one file, and no row writes a file that any row reads."""
    writers: dict[str, BatchRow] = {}
    for row in rows:
        key = _identity(row.out)
        if key in writers:
            raise JobsFileError(
                f"{path}, lines {writers[key].line} and {row.line}: both write {row.out}; give "
                "each row its own 'out' file"
            )
        writers[key] = row
    for row in rows:
        for column in _INPUT_COLUMNS:
            value = getattr(row, column)
            writer = writers.get(_identity(value)) if value else None
            if writer is not None:
                raise JobsFileError(
                    f"{path}, line {writer.line}, column 'out': {writer.out} is the "
                    f"'{column}' input of line {row.line}; writing it would destroy that input. "
                    "Choose another output file"
                )


def _identity(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def store_for(row: BatchRow, store_dir: str | os.PathLike[str] | None) -> str | None:
    """The feature store of ``row`` under ``store_dir``: ``<store_dir>/<stack name>.features.zarr``
    (a stack's store is found again by its name, e.g. one filled by ``precompute``); None
    without a folder."""
    if store_dir is None:
        return None
    return os.fspath(Path(store_dir) / f"{Path(row.stack).name}{STORE_SUFFIX}")


def check_stores(rows: Sequence[BatchRow], store_dir: str | os.PathLike[str]) -> None:
    """Two different stacks of the same name would share one store: refuse them.

    Raises:
        JobsFileError: naming the two lines.
    """
    owners: dict[str, BatchRow] = {}
    for row in rows:
        store = store_for(row, store_dir)
        first = owners.setdefault(store, row)
        if _identity(first.stack) != _identity(row.stack):
            raise JobsFileError(
                f"lines {first.line} and {row.line}: the stacks {first.stack} and {row.stack} "
                f"have the same name, so they would share the feature store {store}; rename "
                "one, or run without --store"
            )
        if any(_identity(store) == _identity(name) for name in row.inputs()):
            raise JobsFileError(f"line {row.line}: the feature store {store} is an input")


RunRow = Callable[[BatchRow, Any, "str | None"], RowResult]
"""``run_row(row, options, store) -> RowResult``: runs on a worker; catches its own errors."""


def run_batch(
    rows: Sequence[BatchRow],
    run_row: RunRow,
    options: Any,
    *,
    client,
    store_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[RowResult]:
    """Run every unfinished row as one task on ``client``'s workers.

    Args:
        rows: from :func:`read_jobs`.
        run_row: the task, a module-level function (workers import it by name).
        options: picklable settings handed to every ``run_row`` call.
        client: a connected :class:`distributed.Client` (see :func:`.cluster.connect`).
        store_dir: a folder of feature stores, one per stack (:func:`store_for`).
        progress: ``progress(done, total)`` after each row, skipped ones included.

    Returns:
        One :class:`RowResult` per row, in the rows' order. A row whose ``out`` exists is
        skipped without a task. A task that raises, or whose worker dies more often than the
        scheduler allows, is a failed row; the others go on. Ctrl-C cancels the tasks not yet
        finished (their outputs are not written) and re-raises.
    """
    from distributed import as_completed

    if store_dir is not None:
        check_stores(rows, store_dir)
    results: dict[int, RowResult] = {}
    futures = {}
    for row in rows:
        if os.path.exists(row.out):
            results[row.line] = _skipped(row)
            continue
        future = client.submit(
            run_row, row, options, store_for(row, store_dir), pure=False,
            key=f"napari-sam2-batch-line{row.line}-{os.urandom(4).hex()}",
        )  # fmt: skip
        futures[future] = row
    total = len(rows)
    if progress is not None:
        progress(len(results), total)
    try:
        for future in as_completed(futures):
            row = futures[future]
            try:
                results[row.line] = future.result()
            except Exception as err:  # the task never returned: a dead worker, a pickling error
                results[row.line] = RowResult(
                    row.line, row.volume, "failed", message=f"{type(err).__name__}: {_short(err)}"
                )
            if progress is not None:
                progress(len(results), total)
    except BaseException:
        client.cancel(list(futures))
        raise
    return [results[row.line] for row in rows]


def _skipped(row: BatchRow) -> RowResult:
    frames = None
    try:
        import tifffile

        with tifffile.TiffFile(row.out) as tif:
            shape = tif.series[0].shape
            frames = int(shape[0]) if len(shape) == 3 else 1
    except Exception:  # noqa: BLE001 - only for the table; the file is left alone
        pass
    return RowResult(row.line, row.volume, "skipped", frames=frames, message="output exists")


def timed_row(row: BatchRow, work: Callable[[], tuple[int, int]]) -> RowResult:
    """Run ``work() -> (objects, frames)`` for ``row``: a :class:`RowResult` with its time, or
    a failed one whose message is the error in one line (the other rows go on)."""
    start = time.perf_counter()
    try:
        objects, frames = work()
    except Exception as err:  # one row's failure is reported, not raised
        return RowResult(
            row.line, row.volume, "failed", seconds=time.perf_counter() - start,
            message=_short(err),
        )  # fmt: skip
    return RowResult(row.line, row.volume, "done", objects, frames, time.perf_counter() - start)


def _short(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def format_summary(results: Sequence[RowResult]) -> str:
    """The summary table: volume, objects, frames, seconds, status (with the reason of a
    failure), then one line of totals."""
    header = ("line", "volume", "objects", "frames", "seconds", "status")
    table = [header]
    for result in results:
        status = result.status
        if result.failed:
            status = f"failed: {result.message}"
        elif result.status == "skipped":
            status = f"skipped ({result.message})"
        table.append((
            str(result.line),
            result.volume,
            "-" if result.objects is None else str(result.objects),
            "-" if result.frames is None else str(result.frames),
            "-" if result.seconds is None else f"{result.seconds:.1f}",
            status,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for row in table:
        cells = [
            cell.rjust(width) if i in (0, 2, 3, 4) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(
        f"{len(results)} volume(s): {counts['done']} done, {counts['skipped']} skipped "
        f"(already written), {counts['failed']} failed"
    )
    return "\n".join(lines)
