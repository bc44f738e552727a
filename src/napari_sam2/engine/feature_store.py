"""Image features on disk: a zarr store of every frame's three feature levels.

Computing image features is the slow step of a first click and of every propagated frame. A
:class:`FeatureStore` keeps them in a folder, so that reopening a volume tomorrow, or on another
machine, reads them instead of computing them again. It is a zarr group with three arrays, the
levels the mask decoder and the memory attention read:

- ``s0``: (T, 32, S/4, S/4), the stride-4 map (already projected by the decoder's ``conv_s0``);
- ``s1``: (T, 64, S/8, S/8), the stride-8 map (``conv_s1``);
- ``top``: (T, 256, S/16, S/16), the stride-16 map;

with T frames and S the model's input size. Values are bfloat16. zarr has no bfloat16 type, so
the arrays hold the raw 16 bits as ``uint16`` (the group's attribute ``"dtype"`` says
``"bfloat16 as uint16 bits"``); :meth:`FeatureStore.read` gives them back as bfloat16 tensors.
Each frame of each array is one chunk, compressed with :data:`COMPRESSION` (Blosc zstd, level 1,
bit shuffle: measured in ``bench/feature_store.py``, see docs/benchmarks.md).

The store is keyed by a data signature (:func:`napari_sam2.engine.data_signature.data_signature`),
kept in the group's attributes. Opening a store whose signature differs raises
:class:`FeatureStoreMismatch`, which names the fields that differ.

Writes are atomic per frame, and several threads or processes may fill one store at once:

1. a writer takes the frame's file lock (``filelock``, in ``done/.locks/``; the system drops
   it when the process dies), then checks that the frame is still missing;
2. it writes the frame's three chunks (zarr's local store writes each chunk to a temporary file
   and renames it into place);
3. it then marks the frame done: an empty file ``done/<frame>`` (``done`` is an empty zarr
   group holding the marks and the lock files), written to a temporary name and
   moved into place with :func:`os.replace`.

Only frames with their mark count (:meth:`FeatureStore.has`), so a writer killed between 2 and 3
leaves a frame that is simply missing: the next writer computes and writes it again. A frame is
never written twice. The guarantee is against killed processes, not power loss (nothing is
fsync'ed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "COMPRESSION",
    "LEVELS",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureStoreMismatch",
    "level_shapes",
    "signature_differences",
]

#: The three feature levels, in the order of :meth:`FeatureStore.read` and the tracker's cache.
LEVELS = ("s0", "s1", "top")
#: Channels of each level (fixed by the SAM 2 architecture) and its stride.
_LEVEL_CHANNELS = {"s0": 32, "s1": 64, "top": 256}
_LEVEL_STRIDES = {"s0": 4, "s1": 8, "top": 16}

#: The chunk compression: Blosc with zstd at level 1 and bit shuffle. The sign and exponent
#: bits of bfloat16 features vary little and compress well, the mantissa bits barely do; bit
#: shuffle groups them. Measured (bench/feature_store.py size, docs/benchmarks.md): 1.8-2.1x
#: smaller than raw, the best of the codecs tried or within 2 % of it, decoding a 1024 frame in
#: about 15 ms; zstd levels above 1 gain 1 % for 2-5x the encoding time, lz4 decodes faster but
#: is 10 % larger.
COMPRESSION = {"codec": "blosc", "cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"}

#: Written into the group's attributes; bumped if the layout ever changes.
STORE_FORMAT = 1
_MARKER_KEY = "napari_sam2_feature_store"
_DTYPE_NOTE = "bfloat16 as uint16 bits"
# A zarr subgroup (so zarr tools list it without a warning) whose files are the done marks.
_DONE = "done"
_LOCKS = "done/.locks"
_LOCK_STRIPES = 64  # frames share lock files modulo this: few files, little contention

_INSTALL_HINT = "pip install 'napari-sam2[cluster]'"


class FeatureStoreError(ValueError):
    """A folder that cannot be used as a feature store (not one, damaged, unwritable)."""


class FeatureStoreMismatch(FeatureStoreError):
    """A feature store made for other data or another model.

    ``fields`` lists the signature fields that differ; the message says what they are here and
    there, and what to do.
    """

    def __init__(self, message: str, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields = list(fields)


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ImportError(
            f"feature stores need the zarr package, which is not installed: {_INSTALL_HINT}"
        ) from None
    return zarr


def _zarr_major(zarr) -> int:
    return int(str(zarr.__version__).split(".")[0])


def level_shapes(input_size: int) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of each level for one frame at the model's input size ``input_size``."""
    size = int(input_size)
    return {
        name: (_LEVEL_CHANNELS[name], size // _LEVEL_STRIDES[name], size // _LEVEL_STRIDES[name])
        for name in LEVELS
    }


def _normalised(signature: dict) -> dict:
    """The signature as JSON gives it back (tuples become lists), so stored and fresh ones
    compare equal."""
    try:
        return json.loads(json.dumps(signature, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"a feature store signature must be JSON-able: {err}") from None


# How a differing field is told to the user: (stored, current) -> words.
def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


_FIELD_WORDS = {
    "weights_hash": lambda a, b: f"model weights {_short(a)}, this model's are {_short(b)}",
    "model": lambda a, b: f"the model {a!r}, this one is {b!r}",
    "input_size": lambda a, b: f"input size {a}, this model uses {b}",
    "shape": lambda a, b: f"data of shape {tuple(a)}, this image has {tuple(b)}",
    "dtype": lambda a, b: f"data of dtype {a}, this image is {b}",
    "content_hash": lambda a, b: (
        f"other image content (sampled pixels hash to {_short(a)}, this image's to {_short(b)})"
    ),
    "intensity_range": lambda a, b: f"the intensity range {a}, this image is read with {b}",
    "axis": lambda a, b: f"tracked axis {a}, this image is tracked along axis {b}",
    "channel_axis": lambda a, b: f"channel axis {a}, this image's is {b}",
    "layout": lambda a, b: f"{a} frames, this image's are {b}",
}
# Most telling first.
_FIELD_ORDER = (
    "model",
    "weights_hash",
    "input_size",
    "shape",
    "dtype",
    "layout",
    "axis",
    "channel_axis",
    "intensity_range",
    "content_hash",
)


def signature_differences(stored: dict, current: dict) -> list[tuple[str, str]]:
    """``[(field, words), ...]`` for every field in which two signatures differ, the most
    telling first; empty when they match."""
    stored, current = _normalised(stored), _normalised(current)
    keys = [k for k in _FIELD_ORDER if k in stored or k in current]
    keys += sorted((set(stored) | set(current)) - set(keys))
    found = []
    for key in keys:
        a, b = stored.get(key), current.get(key)
        if a == b:
            continue
        words = _FIELD_WORDS.get(key)
        if words is None or a is None or b is None:
            text = f"{key} {a!r}, here it is {b!r}"
        else:
            text = words(a, b)
        found.append((key, text))
    return found


def _mismatch(path: Path, differences: list[tuple[str, str]]) -> FeatureStoreMismatch:
    told = "; ".join(f"made for {words}" for _, words in differences)
    return FeatureStoreMismatch(
        f"the feature store {str(path)!r} does not fit this image and model: it was {told}. "
        "Choose another folder or delete it",
        [field for field, _ in differences],
    )


def _compressor(zarr):
    """The chunk codec of :data:`COMPRESSION` for the installed zarr."""
    if _zarr_major(zarr) >= 3:
        from zarr.codecs import BloscCodec

        return BloscCodec(
            cname=COMPRESSION["cname"],
            clevel=COMPRESSION["clevel"],
            shuffle=COMPRESSION["shuffle"],
        )
    from numcodecs import Blosc

    return Blosc(
        cname=COMPRESSION["cname"], clevel=COMPRESSION["clevel"], shuffle=Blosc.BITSHUFFLE
    )


def _is_zarr_group(path: Path) -> bool:
    return (path / "zarr.json").is_file() or (path / ".zgroup").is_file()


class FeatureStore:
    """A zarr store of image features keyed by a data signature; see the module's docstring.

    Make one with :meth:`open`. ``path``: the store's folder. ``signature``: its data signature
    (JSON-able dict). ``num_frames`` and ``input_size`` come from the signature.

    Thread-safe, and several processes may write one store at once. A store pickles as its
    path and signature and reopens on unpickling (dask workers).
    """

    def __init__(self, path: Path, signature: dict, group) -> None:
        # Use FeatureStore.open; this takes an already opened and checked group.
        self.path = path
        self.signature = signature
        self.num_frames = int(signature["num_frames"])
        self.input_size = int(signature["input_size"])
        self._shapes = level_shapes(self.input_size)
        self._arrays = {name: group[name] for name in LEVELS}
        self._done_dir = path / _DONE
        self._done: set[int] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, path: str | os.PathLike, signature: dict, *, create: bool = True
    ) -> FeatureStore:
        """Open the feature store at ``path`` for data and a model with ``signature``.

        Creates it when absent (or an empty folder) and ``create`` is True. Safe when several
        processes open (and create) the same path at once: one creates it, the others open it.

        Raises:
            ImportError: zarr is not installed.
            FileNotFoundError: no store at ``path`` and ``create`` is False.
            FeatureStoreMismatch: the store was made for other data or another model.
            FeatureStoreError: ``path`` is something else (a file, a folder with other content,
                a zarr group that is not a feature store).
        """
        zarr = _zarr()
        path = Path(path).expanduser()
        signature = _normalised(signature)
        for key in ("num_frames", "input_size"):
            if not isinstance(signature.get(key), int) or signature[key] < 1:
                raise ValueError(
                    f"a feature store signature needs a positive integer {key!r}; got "
                    f"{signature.get(key)!r} (make signatures with data_signature())"
                )
        if not _is_zarr_group(path):
            if not create:
                raise FileNotFoundError(
                    f"there is no feature store at {str(path)!r}; give the folder of an existing "
                    "store, or let it be created"
                )
            cls._create(zarr, path, signature)
        group = cls._open_group(zarr, path)
        attrs = dict(group.attrs)
        stored = attrs.get("signature")
        if attrs.get(_MARKER_KEY) is None or not isinstance(stored, dict):
            raise FeatureStoreError(
                f"{str(path)!r} is a zarr group but not a napari-sam2 feature store; choose "
                "another folder"
            )
        if attrs[_MARKER_KEY] != STORE_FORMAT:
            raise FeatureStoreError(
                f"the feature store {str(path)!r} has format {attrs[_MARKER_KEY]}, this "
                f"napari-sam2 reads format {STORE_FORMAT}; delete it or choose another folder"
            )
        differences = signature_differences(stored, signature)
        if differences:
            raise _mismatch(path, differences)
        return cls(path, signature, group)

    def check_signature(self, signature: dict) -> None:
        """Raise :class:`FeatureStoreMismatch` unless ``signature`` equals this store's."""
        differences = signature_differences(self.signature, signature)
        if differences:
            raise _mismatch(self.path, differences)

    @staticmethod
    def read_signature(path: str | os.PathLike) -> dict | None:
        """The signature of the feature store at ``path``, or None if there is none there."""
        zarr = _zarr()
        path = Path(path).expanduser()
        if not _is_zarr_group(path):
            return None
        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception:  # a damaged or foreign group is not a store we can use
            return None
        stored = attrs.get("signature")
        return stored if attrs.get(_MARKER_KEY) is not None and isinstance(stored, dict) else None

    @staticmethod
    def _open_group(zarr, path: Path):
        try:
            return zarr.open_group(str(path), mode="r+")
        except Exception as err:
            raise FeatureStoreError(
                f"cannot open the feature store {str(path)!r} for writing ({err}); check the "
                "folder's permissions or choose another folder"
            ) from None

    @staticmethod
    def _create(zarr, path: Path, signature: dict) -> None:
        """Build the store in a temporary sibling folder, then rename it into place, so other
        processes never see a half-made store. Losing the race to another creator is fine."""
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            raise FeatureStoreError(
                f"{str(path)!r} exists and is not a napari-sam2 feature store; choose a new or "
                "empty folder for the features"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.parent / f".{path.name}.{uuid.uuid4().hex}.creating"
        try:
            num_frames = signature["num_frames"]
            kwargs: dict[str, Any] = {"mode": "w"}
            major = _zarr_major(zarr)
            if major >= 3:
                kwargs["zarr_format"] = 3
            group = zarr.open_group(str(staging), **kwargs)
            for name, (channels, height, width) in level_shapes(signature["input_size"]).items():
                shape = (num_frames, channels, height, width)
                chunks = (1, channels, height, width)
                if major >= 3:
                    group.create_array(
                        name,
                        shape=shape,
                        chunks=chunks,
                        dtype="uint16",
                        compressors=[_compressor(zarr)],
                        fill_value=0,
                    )
                else:
                    group.create_dataset(
                        name,
                        shape=shape,
                        chunks=chunks,
                        dtype="uint16",
                        compressor=_compressor(zarr),
                        fill_value=0,
                    )
            group.attrs.update(
                {
                    _MARKER_KEY: STORE_FORMAT,
                    "signature": signature,
                    "levels": list(LEVELS),
                    "dtype": _DTYPE_NOTE,
                    "compression": COMPRESSION,
                    "done": f"a frame counts once the file {_DONE}/<frame> exists",
                }
            )
            group.create_group(_DONE)
            (staging / _LOCKS).mkdir()
            try:
                # rename() replaces an empty folder and fails on a non-empty one, so a store
                # made meanwhile by another process wins.
                os.rename(staging, path)
            except OSError:
                if not _is_zarr_group(path):
                    raise
        except OSError as err:
            raise FeatureStoreError(
                f"cannot create the feature store {str(path)!r}: {err}; check that the folder "
                "is writable and the disk has room, or choose another folder"
            ) from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ pickling
    def __reduce__(self):
        return (_reopen, (str(self.path), self.signature))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, {self.num_frames} frames at {self.input_size})"

    # ------------------------------------------------------------------ frames
    def _check_frame(self, frame: int) -> int:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"frame must be an integer, got {frame!r}")
        if not 0 <= int(frame) < self.num_frames:
            raise IndexError(
                f"frame {frame} is outside the feature store {str(self.path)!r}, which holds "
                f"frames 0 to {self.num_frames - 1}"
            )
        return int(frame)

    def has(self, frame: int) -> bool:
        """Whether ``frame`` is fully written (its done mark exists)."""
        frame = self._check_frame(frame)
        if frame in self._done:
            return True
        if (self._done_dir / str(frame)).exists():
            with self._lock:
                self._done.add(frame)
            return True
        return False

    def missing(self, frames: Iterable[int] | None = None) -> list[int]:
        """The frames of ``frames`` (default: all) not fully written yet, sorted."""
        wanted = (
            range(self.num_frames) if frames is None else [self._check_frame(f) for f in frames]
        )
        done = set()
        for name in os.listdir(self._done_dir):
            if name.isdigit():
                done.add(int(name))
        with self._lock:
            self._done |= done
            done = set(self._done)
        return sorted({f for f in wanted if f not in done})

    def count(self) -> int:
        """How many frames are fully written."""
        return self.num_frames - len(self.missing())

    def read(self, frame: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``frame``'s levels (s0 (1, 32, S/4, S/4), s1 (1, 64, S/8, S/8), top (1, 256, S/16,
        S/16)) as bfloat16 tensors on the CPU, or None if the frame is not fully written."""
        if not self.has(frame):
            return None
        frame = int(frame)
        levels = []
        for name in LEVELS:
            bits = np.ascontiguousarray(self._arrays[name][frame], dtype=np.uint16)
            tensor = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
            levels.append(tensor[None])
        return tuple(levels)  # type: ignore[return-value]

    def write(self, frame: int, levels: Sequence[torch.Tensor]) -> bool:
        """Write ``frame``'s levels (as :meth:`read` returns them; any float dtype and device,
        rounded to bfloat16). Atomic: readers see the whole frame or none of it.

        Returns False, writing nothing, if the frame is already there (another writer may have
        finished it first).
        """
        frame = self._check_frame(frame)
        if self.has(frame):
            return False
        bits = self._encode(levels)
        from filelock import FileLock

        lock = FileLock(str(self.path / _LOCKS / f"{frame % _LOCK_STRIPES}.lock"))
        with lock:
            if self.has(frame):
                return False
            self._remove_partials(frame)
            for name, values in zip(LEVELS, bits):
                self._arrays[name][frame] = values
            self._mark_done(frame)
        return True

    def _encode(self, levels: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """The levels as uint16 arrays (C, H, W) of their bfloat16 bits, after checking shapes."""
        if len(levels) != len(LEVELS):
            raise ValueError(
                f"a frame's features are {len(LEVELS)} levels {LEVELS}, got {len(levels)}"
            )
        out = []
        for name, tensor in zip(LEVELS, levels):
            expected = self._shapes[name]
            shape = tuple(tensor.shape)
            if shape not in (expected, (1, *expected)):
                raise ValueError(
                    f"level {name} has shape {shape}; the feature store {str(self.path)!r} "
                    f"(input size {self.input_size}) holds (1, {', '.join(map(str, expected))})"
                )
            if not tensor.is_floating_point():
                raise TypeError(f"level {name} must be floating point, got {tensor.dtype}")
            half = tensor.detach().to("cpu", torch.bfloat16).reshape(expected).contiguous()
            out.append(half.view(torch.int16).numpy().view(np.uint16))
        return out

    def _mark_done(self, frame: int) -> None:
        final = self._done_dir / str(frame)
        staging = self._done_dir / f".{frame}.{uuid.uuid4().hex}.tmp"
        staging.write_bytes(b"")
        os.replace(staging, final)
        with self._lock:
            self._done.add(frame)

    def _remove_partials(self, frame: int) -> None:
        """Temporary chunk files that a writer killed mid-write left for ``frame``: zarr 3's
        ``<level>/c/<frame>/0/0/0.<id>.partial``, zarr 2's
        ``<level>/<frame>.0.0.0.<id>.partial``."""
        for name in LEVELS:
            level = self.path / name
            for leftover in (
                *(level / "c" / str(frame) / "0" / "0").glob("*.partial"),
                *level.glob(f"{frame}.0.0.0.*.partial"),
            ):
                leftover.unlink(missing_ok=True)

    @property
    def frame_nbytes(self) -> int:
        """Uncompressed bytes of one frame's three levels (bfloat16)."""
        return 2 * sum(math.prod(shape) for shape in self._shapes.values())


def _reopen(path: str, signature: dict) -> FeatureStore:
    return FeatureStore.open(path, signature, create=False)
