"""Reading stacks and writing results safely: shared by the command line and the Python API.

Reading (:func:`read_stack`): TIFF (memory-mapped when the file allows it), Zarr and OME-Zarr
folders, and NumPy ``.npy`` files, all opened lazily. A Zarr array whose filters or codecs can
run code when decoded (``pickle``, object arrays) is refused before any chunk is read, and a
``.npy`` holding Python objects is never unpickled.

Writing follows three rules, so that a run never destroys data:

- Every file goes to a temporary file in the same folder and is renamed into place only when it
  is complete (:func:`atomic_write`). An interrupted write, a full disk or a crash leaves the
  previous file as it was and no half-written file under the final name.
- Every output path is checked before any work starts (:func:`check_output_path`): a folder, a
  missing parent folder, a parent that is a file, a folder without write permission, an existing
  file without ``overwrite``, and an output that is one of the inputs (compared with
  ``os.path.samefile`` and with resolved paths, so ``./sub/../stack.tif`` is caught).
- Labels are written slice by slice (:func:`write_labels`), with no second full copy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TIFF_SUFFIXES",
    "InputFileError",
    "OutputPathError",
    "UnsafeDataError",
    "atomic_write",
    "check_output_path",
    "label_dtype_for",
    "read_stack",
    "write_labels",
]

TIFF_SUFFIXES = (".tif", ".tiff")
_TEMP_PREFIX = ".napari-sam2-tmp-"
_TILE = 256  # side of the compressed tiles of label TIFFs

# Codecs whose decoding can run code stored in the file. numcodecs' ``pickle`` unpickles chunks;
# an object-dtype array needs an object codec (pickle, or others that build Python objects) and
# is never image data anyway.
_UNSAFE_CODECS = frozenset({"pickle"})


class InputFileError(ValueError):
    """An input file that does not exist or cannot be read as an image."""


class OutputPathError(ValueError):
    """An output path that cannot or must not be written; raised before any work starts."""


class UnsafeDataError(InputFileError):
    """A file whose decoding could run code stored in it; it is refused, nothing is read."""


# ---------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, folder: bool = False) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary path beside it, renamed into place at the end.

    Args:
        path: the final file (or folder, with ``folder=True``, e.g. a ``.zarr`` store).
        folder: the result is a folder; the temporary path is created as an empty folder.

    Yields:
        A path in the same folder as ``path`` (so the rename cannot cross file systems) whose
        name starts with ``.napari-sam2-tmp-`` and keeps ``path``'s suffix, so writers that pick
        the format from the suffix work. Write the whole result there.

    When the block finishes, the temporary path replaces ``path`` with ``os.replace`` (an existing
    folder is moved aside first and removed only after the new one is in place). When the block
    raises (including KeyboardInterrupt), the temporary path is removed and ``path`` is left
    exactly as it was.
    """
    final = Path(path)
    parent = final.parent
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".ome.zarr") else final.suffix
    temp = _new_temp(parent, suffix, folder)
    try:
        yield temp
        if not folder:
            _fsync(temp)
        _replace(temp, final)
    except BaseException:
        _remove(temp)
        raise


def _new_temp(parent: Path, suffix: str, folder: bool) -> Path:
    """A new, empty file or folder in ``parent`` with the user's usual permissions (mkstemp
    would make it private, 0600, and the result unreadable for colleagues)."""
    for _ in range(100):
        temp = parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex[:12]}{suffix}"
        try:
            if folder:
                os.mkdir(temp, 0o777)  # the umask applies, as for any new folder
            else:
                os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(f"could not create a temporary file in {parent}")


def _fsync(path: Path) -> None:
    # The data must be on disk before the rename makes it the file users see.
    with contextlib.suppress(OSError), open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _replace(temp: Path, final: Path) -> None:
    if temp.is_dir() and final.is_dir():
        aside = final.with_name(f"{_TEMP_PREFIX}old-{final.name}")
        _remove(aside)
        os.replace(final, aside)
        try:
            os.replace(temp, final)
        except BaseException:
            os.replace(aside, final)
            raise
        _remove(aside)
    else:
        os.replace(temp, final)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_output_path(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    suffixes: Sequence[str] | None = None,
    what: str = "output",
) -> Path:
    """Check that ``path`` can be written, before any work is done.

    Args:
        path: the output file.
        inputs: the files (or folders) the run reads; the output must be none of them.
        overwrite: an existing output file may be replaced (atomically, at the end).
        suffixes: allowed suffixes (lower case, e.g. ``(".tif", ".tiff")``); None allows any.
        what: how the path is named in messages (e.g. ``"--out"``).

    Returns:
        ``path`` as a Path.

    Raises:
        OutputPathError: the path is an input, has the wrong suffix, is a folder, exists without
            ``overwrite``, lies under a file or a missing folder, or its folder is not writable.
            The message names the path and says what to do.
    """
    out = Path(path)
    for source in inputs:
        if source is not None and _same_file(out, Path(source)):
            raise OutputPathError(
                f"{what} {out} is the input {source}; writing there would destroy the input. "
                "Choose another output file"
            )
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise OutputPathError(
            f"{what} {out}: the file must end in {' or '.join(suffixes)}; use such a name"
        )
    if out.is_dir():
        raise OutputPathError(f"{what} {out} is a folder; give a file name inside it")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputPathError(
                f"{what} {out} already exists; pass --overwrite (overwrite=True) to replace it, "
                "or choose another name"
            )
        if not out.is_file():
            raise OutputPathError(f"{what} {out} exists and is not a regular file")
    parent = out.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputPathError(
                    f"{what} {out}: {ancestor} is a file, not a folder, so nothing can be "
                    "written under it"
                )
            break
    if not parent.exists():
        raise OutputPathError(f"{what} {out}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{what} {out}: no permission to write in the folder {parent}; choose a folder you "
            "can write to"
        )
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass  # one of them does not exist (yet)
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return os.path.abspath(a) == os.path.abspath(b)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def label_dtype_for(max_id: int) -> np.dtype:
    """The label dtype the writers use: uint16 when ``max_id`` fits, else uint32."""
    if max_id < 0 or max_id > np.iinfo(np.uint32).max:
        raise ValueError(f"object id {max_id} does not fit a uint32 label image")
    return np.dtype(np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32)


def write_labels(
    path: str | os.PathLike[str],
    labels: Any,
    *,
    overwrite: bool = True,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    description: dict | None = None,
) -> Path:
    """Write labels as a zlib-compressed TIFF, atomically and slice by slice.

    Args:
        path: a ``.tif``/``.tiff`` file.
        labels: (H, W) or (N, H, W) array of non-negative integer ids (numpy or a memmap).
        overwrite: an existing file may be replaced (default True for this function; the CLI
            passes its ``--overwrite`` flag).
        inputs: files the output must not be (see :func:`check_output_path`).
        description: small JSON-serialisable metadata stored in the TIFF's ImageDescription
            (e.g. which frames are finished in a partial result).

    The file is uint16 when every id fits, else uint32. Each slice is converted on its own while
    it is written, so memory holds one converted slice, never a second full copy of ``labels``.
    """
    import tifffile

    out = check_output_path(path, inputs=inputs, overwrite=overwrite, suffixes=TIFF_SUFFIXES)
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"labels must be (H, W) or (N, H, W), got shape {shape}")
    top = int(labels.max()) if labels.size else 0
    dtype = label_dtype_for(top)
    pages = labels[None] if len(shape) == 2 else labels

    height, width = shape[-2:]
    # tifffile compresses data from an iterator only tile by tile; each slice is cut into
    # tiles as it is converted, so one converted slice is all the extra memory.
    tile = (min(_TILE, _round_up(height, 16)), min(_TILE, _round_up(width, 16)))

    def tiles() -> Iterator[np.ndarray]:
        for index in range(pages.shape[0]):
            page = np.asarray(pages[index], dtype=dtype)
            padded = np.zeros((_round_up(height, tile[0]), _round_up(width, tile[1])), dtype=dtype)
            padded[:height, :width] = page
            for row in range(0, padded.shape[0], tile[0]):
                for col in range(0, padded.shape[1], tile[1]):
                    yield padded[row : row + tile[0], col : col + tile[1]]

    with atomic_write(out) as temp:
        tifffile.imwrite(
            temp,
            tiles(),
            shape=shape,
            dtype=dtype,
            tile=tile,
            compression="zlib",
            metadata=description,
        )
    return out


# ---------------------------------------------------------------------------------- reading


def read_stack(path: str | os.PathLike[str]) -> Any:
    """Open an image for lazy reading: TIFF (memory-mapped when possible), Zarr/OME-Zarr, .npy.

    For an OME-Zarr (or any Zarr group) the full-resolution array is used: the first dataset of
    the first ``multiscales`` entry, else the array named ``0``, else the first array found.

    Raises:
        InputFileError: the file does not exist, has an unsupported suffix, or cannot be read.
        UnsafeDataError: a Zarr array with a code-running codec or object dtype, or a ``.npy``
            of Python objects.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"input {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        if not path.is_dir():
            raise InputFileError(f"input {path}: a .zarr store is a folder, but this is a file")
        return _checked_image(_read_zarr(path), path)
    if path.is_dir():
        raise InputFileError(
            f"input {path} is a folder; give a .tif/.tiff or .npy file or a .zarr folder"
        )
    if suffix in TIFF_SUFFIXES:
        return _checked_image(_read_tiff(path), path)
    if suffix == ".npy":
        return _checked_image(_read_npy(path), path)
    raise InputFileError(
        f"cannot read {path}: supported inputs are TIFF (.tif, .tiff), Zarr/OME-Zarr folders "
        "(.zarr) and NumPy (.npy)"
    )


def _checked_image(array: Any, path: Path) -> Any:
    shape = tuple(array.shape)
    if len(shape) < 2 or 0 in shape:
        raise InputFileError(
            f"{path} holds no image: its array has shape {shape}; expected at least 2-D "
            "(H, W) data"
        )
    return array


def _read_npy(path: Path) -> Any:
    try:
        # allow_pickle=False: an object array is refused rather than unpickled.
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower() or "object" in str(err).lower():
            raise UnsafeDataError(
                f"{path} holds Python objects, whose loading can run code; it is not read. "
                "Save the image as a numeric array"
            ) from err
        raise InputFileError(f"cannot read NumPy file {path}: {err}") from err
    except (OSError, EOFError) as err:
        raise InputFileError(f"cannot read NumPy file {path}: {err}") from err


def _read_tiff(path: Path) -> Any:
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except Exception:  # noqa: S110 - compressed, tiled or not contiguous: read it below
        pass
    if importlib.util.find_spec("zarr") is not None:
        # compressed or tiled: decode frame by frame through tifffile's zarr view
        try:
            import zarr

            node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
            return _pick_zarr_array(node, path)
        except Exception:  # noqa: S110 - not every TIFF has a zarr view: read it whole below
            pass
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            needed = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
    except Exception as err:  # tifffile raises many types for broken files
        raise InputFileError(f"cannot read TIFF {path}: {_short(err)}") from err
    from .memory_estimate import USABLE_SHARE, InsufficientMemory, available_host_bytes

    free = available_host_bytes()
    if free is not None and needed > USABLE_SHARE * free:
        raise InsufficientMemory(
            f"{path} cannot be memory-mapped (it is compressed or tiled) and reading it whole "
            f"needs {needed / 2**20:,.0f} MiB, but only {free / 2**20:,.0f} MiB is free; install "
            "zarr (pip install zarr) to read it frame by frame, or save it uncompressed"
        )
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for broken files
        raise InputFileError(f"cannot read TIFF {path}: {_short(err)}") from err


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


def _read_zarr(path: Path) -> Any:
    if importlib.util.find_spec("zarr") is None:
        raise InputFileError(f"reading {path} needs the zarr package: pip install zarr")
    # Every array's metadata is checked before zarr parses any of it, so nothing is decoded.
    _check_zarr_tree(path)
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise InputFileError(f"cannot open Zarr {path}: {_short(err)}") from err
    try:
        array = _pick_zarr_array(node, path)
    except InputFileError:
        raise
    except Exception as err:  # zarr raises many types for broken metadata
        raise InputFileError(f"cannot open the array in Zarr {path}: {_short(err)}") from err
    if np.dtype(array.dtype).kind == "O":
        raise UnsafeDataError(
            f"the Zarr array in {path} holds Python objects; it is not an image and its codecs "
            "may run code, so it is not read"
        )
    return array


def _pick_zarr_array(node: Any, path: Path) -> Any:
    if hasattr(node, "shape"):
        return node
    multiscales = node.attrs.get("multiscales") if hasattr(node, "attrs") else None
    if multiscales:
        try:
            return node[multiscales[0]["datasets"][0]["path"]]
        except (KeyError, IndexError, TypeError):
            pass
    if "0" in node:
        return node["0"]
    for _, array in node.arrays():
        return array
    raise InputFileError(f"the Zarr group {path} holds no array")


_ZARR_METADATA_FILES = (".zarray", "zarr.json")


def _check_zarr_tree(root: Path) -> None:
    """:func:`check_zarr_metadata` on every group and array under ``root``; chunk folders are
    not entered (an array's folder is not searched below its metadata)."""
    pending = [root]
    while pending:
        folder = pending.pop()
        check_zarr_metadata(folder)
        if _is_zarr_array(folder):
            continue
        with os.scandir(folder) as entries:
            pending.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))


def _is_zarr_array(folder: Path) -> bool:
    if (folder / ".zarray").is_file():
        return True
    meta_file = folder / "zarr.json"
    if not meta_file.is_file():
        return False
    try:
        return json.loads(meta_file.read_text(encoding="utf-8")).get("node_type") == "array"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return True  # unreadable: check_zarr_metadata has already said so


def check_zarr_metadata(path: str | os.PathLike[str]) -> None:
    """Refuse a Zarr array whose codecs can run code when decoding, or that holds objects.

    Reads only the JSON metadata file of the array at ``path`` (``.zarray`` of Zarr v2,
    ``zarr.json`` of v3), never a chunk. A group's metadata passes. Raises
    :class:`UnsafeDataError` naming the array and the codec.
    """
    folder = Path(path)
    for name in _ZARR_METADATA_FILES:
        meta_file = folder / name
        if not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputFileError(
                f"cannot read the Zarr metadata {meta_file}: {_short(err)}"
            ) from err
        problem = _unsafe_part(meta)
        if problem is not None:
            raise UnsafeDataError(
                f"the Zarr array {folder} uses {problem}, whose decoding can run code stored in "
                "the file; it is refused and nothing was read. Re-save the image with a numeric "
                "dtype and standard compressors (e.g. zstd, blosc)"
            )


def _unsafe_part(meta: Any) -> str | None:
    """The first code-running codec or object dtype named anywhere in ``meta``, or None."""
    if isinstance(meta, dict):
        for key in ("id", "name"):
            value = meta.get(key)
            # v3 names numcodecs' codecs "numcodecs.pickle"; v2 says "pickle"
            if isinstance(value, str) and value.lower().rsplit(".", 1)[-1] in _UNSAFE_CODECS:
                return f"the {value!r} codec"
        dtype = meta.get("dtype", meta.get("data_type"))
        if isinstance(dtype, str) and dtype.lstrip("|<>=") in ("O", "object"):
            return "an object dtype"
        for key in ("object_codec", "filters", "compressor", "codecs", "configuration"):
            found = _unsafe_part(meta.get(key))
            if found is not None:
                return found
    elif isinstance(meta, list):
        for item in meta:
            found = _unsafe_part(item)
            if found is not None:
                return found
    return None
