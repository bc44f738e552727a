"""Tracking on a region of interest around each object, for slices much larger than the model.

:class:`RegionTracker` has the public methods of :class:`~napari_sam2.engine.tracker.Tracker`
that the API, the command line and the annotator use (``set_prompts``, ``frame_logits``,
``propagate``, ``plan``, ``clear_prompts``, ``remove_object``, ``reset``, ``prepare``,
``object_ids``, ``prompted_frames``, ``num_frames``, ``frame_shape``, ``precision``, ``close``,
``frames``, ``model``, ...), so it can stand in for one. It works by composition: each object
gets its own plain :class:`Tracker` over a lazy crop view of the frames, whose window on each
frame is that object's :class:`~napari_sam2.engine.roi.Region` there. How the regions are sized,
placed, grown and moved is documented in :mod:`napari_sam2.engine.roi`.

What stays the same as with a plain tracker:

- the frames are read lazily, one crop at a time (only the window is indexed, so a chunked zarr
  or dask stack reads the chunks under the region);
- the intensity range is the whole stack's (:attr:`frames`' range, estimated on the whole
  frames), never the crop's, so a crop's brightness matches the frame it comes from;
- outputs are float32 logits (H, W) of the whole frame (the crop's logits at full resolution,
  :data:`~napari_sam2.engine.roi.OUTSIDE_LOGIT` elsewhere), so the engine's overlap policy
  (:func:`~napari_sam2.engine.session.label_frame`) works unchanged;
- with a region covering the whole frame the results equal the plain tracker's, to the bit.

What differs:

- cost: one image encoding per object and slice during propagation (objects do not share a
  frame's features unless their regions coincide); encoded crops are kept in one feature cache
  shared by all objects, keyed by frame and region;
- :meth:`prepare` computes nothing ahead: an object's region on a slice is known only once a
  prompt lands there or propagation reaches it, so :attr:`features` reports every slice as
  prepared (the annotator's idle prefetch then has nothing to do);
- a prompt that does not fit the object's region on its slice (a click outside it, a box
  larger than the region) starts the object afresh on a larger region from all its prompts:
  its propagated slices need propagating again, and a running propagation ends
  (:class:`~napari_sam2.engine.tracker.PropagationInvalidated`), as when an object is added;
- no feature store: its features are of whole frames.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .device import resolve_device
from .features import FeatureCache
from .frames import FrameSource
from .memory_estimate import check_propagation_fits
from .precision import precision_name, resolve_precision
from .prompts import validate_frame_index, validate_object_id, validate_prompt
from .roi import (
    DEFAULT_MARGIN,
    FOLLOW_EDGE,
    MAX_GROWTH,
    Extent,
    Region,
    follow,
    grown,
    mask_extent,
    prompt_extent,
    region_for,
    region_size,
    touches_inner_edge,
)
from .session import PropagationPlan, mask_to_bool, plan_propagation
from .state_store import StateStore
from .tracker import PropagationInvalidated, Tracker

__all__ = ["RegionTracker"]


class _RegionReader:
    """Reads one frame's region straight from the original array (only the window is indexed),
    channels last: (h, w) or (h, w, C), the array's dtype."""

    def __init__(self, frames: Any, source: FrameSource, axis: int, channel_axis: int | None):
        ndim = len(frames.shape)
        rank = 2 if source.layout == "grey" else 3
        single = source.num_frames == 1 and ndim == rank
        self.tracked = None if single else axis % ndim
        if source.layout == "channels":
            self.colour = channel_axis % ndim
        elif source.layout == "rgb":
            self.colour = ndim - 1
        else:
            self.colour = None
        self.spatial = [d for d in range(ndim) if d not in (self.tracked, self.colour)]
        self.ndim = ndim
        self.frames = frames
        self.num_frames = source.num_frames
        self.channels = None if self.colour is None else int(frames.shape[self.colour])
        self.dtype = np.dtype(frames.dtype)

    def read(self, index: int, region: Region) -> np.ndarray:
        key: list[Any] = [slice(None)] * self.ndim
        if self.tracked is not None:
            key[self.tracked] = int(index)
        rows, cols = region.slices
        key[self.spatial[0]], key[self.spatial[1]] = rows, cols
        crop = np.asarray(self.frames[tuple(key)])
        if self.colour is not None:
            below = self.tracked is not None and self.tracked < self.colour
            crop = np.moveaxis(crop, self.colour - 1 if below else self.colour, -1)
        expected = region.shape if self.channels is None else (*region.shape, self.channels)
        if crop.shape != expected:
            raise ValueError(
                f"reading frame {index} in rows {rows.start}:{rows.stop}, columns "
                f"{cols.start}:{cols.stop} gave shape {crop.shape}, expected {expected}; the "
                "array's reader does not index as numpy does"
            )
        return crop


class _CropView:
    """One object's frames as an array-like (T, h, w) or (T, h, w, C) for a plain Tracker:
    frame ``t`` is the crop of the object's region on ``t`` (``windows[t]``), read when the
    tracker indexes it."""

    def __init__(self, reader: _RegionReader, size, windows: dict[int, Region], as_channel):
        self._reader = reader
        self._windows = windows
        self._as_channel = as_channel  # a grey crop as one channel (never guessed as RGB)
        self.size = (int(size[0]), int(size[1]))
        channels = (1,) if as_channel else () if reader.channels is None else (reader.channels,)
        self.shape = (reader.num_frames, *self.size, *channels)
        self.dtype = reader.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        parts = key if isinstance(key, tuple) else (key,)
        index, rest = parts[0], parts[1:]
        if not isinstance(index, numbers.Integral) or any(p != slice(None) for p in rest):
            raise TypeError(f"a region's frames are read one whole frame at a time, not {key!r}")
        window = self._windows.get(int(index))
        if window is None or window.shape != self.size:
            raise RuntimeError(f"no region of size {self.size} is set for frame {index}")
        crop = self._reader.read(int(index), window)
        return crop[..., None] if self._as_channel else crop


class _SharedSizes:
    """The sizes of the shared feature cache ``_shared``, as a FeatureCache reports them."""

    _shared: FeatureCache

    @property
    def max_bytes(self) -> int:
        return self._shared.max_bytes

    @property
    def nbytes(self) -> int:
        return self._shared.nbytes

    def __len__(self) -> int:
        return len(self._shared)


class _WindowedFeatures(_SharedSizes, FeatureCache):
    """One object's view of the feature cache that every object shares: the object's tracker
    asks for frame ``t``, and the view looks up ``(t, region of the object on t)``, so objects
    whose regions coincide share features and a moved region never reads stale ones."""

    def __init__(self, shared: FeatureCache, windows: dict[int, Region]) -> None:
        super().__init__(0)
        self._shared = shared
        self._windows = windows

    def _key(self, frame):
        window = self._windows.get(frame)
        return None if window is None else (frame, window)

    def __contains__(self, frame) -> bool:
        key = self._key(frame)
        return key is not None and key in self._shared

    def keys(self) -> list:
        return [frame for frame in list(self._windows) if frame in self]

    def get(self, frame):
        key = self._key(frame)
        return None if key is None else self._shared.get(key)

    def put(self, frame, value) -> bool:
        key = self._key(frame)
        return False if key is None else self._shared.put(key, value)

    def get_or_compute(self, frame, compute):
        value = self.get(frame)
        if value is None:
            value = compute()
            self.put(frame, value)
        return value

    def pop(self, frame):
        key = self._key(frame)
        return None if key is None else self._shared.pop(key)

    def clear(self) -> None:
        for frame in self.keys():
            self.pop(frame)


class RegionFeatures(_SharedSizes):
    """What :attr:`RegionTracker.features` reports to the annotator's prefetch: every slice is
    "prepared" (see :meth:`RegionTracker.prepare`); the sizes are those of the cache shared by
    all objects (``shared``), which holds encoded crops keyed by (frame, region)."""

    def __init__(self, shared: FeatureCache) -> None:
        self._shared = shared

    @property
    def shared(self) -> FeatureCache:
        return self._shared

    def __contains__(self, frame) -> bool:
        return True


@dataclass(eq=False)
class _Entry:
    """One object: its tracker over its crop view, and where its region is on each frame.

    ``windows``: the region of the object's output (or prompt) on each frame. ``boxes``: the
    extent of its latest mask there, in crop pixels (None: empty). ``prompts``: the prompts as
    given, in frame coordinates, so they can be replayed on a larger region.
    """

    obj_id: int
    tracker: Tracker
    size: tuple[int, int]
    windows: dict[int, Region]
    boxes: dict[int, Extent | None] = field(default_factory=dict)
    prompts: dict[int, dict] = field(default_factory=dict)


@contextlib.contextmanager
def _placed(entry: _Entry, frame: int, region: Region):
    """Sets ``entry``'s region on ``frame`` for the block; a failing block puts the old one
    back, so a region always describes the output the object has there."""
    previous = entry.windows.get(frame)
    entry.windows[frame] = region
    try:
        yield
    except BaseException:
        if previous is None:
            entry.windows.pop(frame, None)
        else:
            entry.windows[frame] = previous
        raise


@dataclass(frozen=True)
class _Mask:
    """A mask prompt kept as the pixels of its extent: a frame-sized copy per object and slice
    would hold 16 MiB each on a 4096 x 4096 slice."""

    extent: Extent | None
    pixels: np.ndarray  # bool (extent.height, extent.width)

    @classmethod
    def of(cls, mask) -> _Mask:
        full = mask_to_bool(mask)
        extent = mask_extent(full)
        if extent is None:
            return cls(None, np.zeros((0, 0), bool))
        return cls(extent, full[extent.row0 : extent.row1, extent.col0 : extent.col1].copy())

    def in_region(self, region: Region) -> np.ndarray:
        """The mask on ``region``'s crop, bool (h, w)."""
        local = np.zeros(region.shape, dtype=bool)
        if self.extent is None:
            return local
        e = self.extent
        row0, row1 = max(e.row0, region.top), min(e.row1, region.bottom)
        col0, col1 = max(e.col0, region.left), min(e.col1, region.right)
        if row0 < row1 and col0 < col1:
            top, left = region.top, region.left
            into = np.s_[row0 - top : row1 - top, col0 - left : col1 - left]
            local[into] = self.pixels[row0 - e.row0 : row1 - e.row0, col0 - e.col0 : col1 - e.col0]
        return local


def _given(points, labels, box, mask) -> dict:
    """The prompt as keyword arguments of ``set_prompts``, copied (frame coordinates; a mask
    as a :class:`_Mask`)."""
    given: dict[str, Any] = {}
    if points is not None and np.asarray(points).size:
        given["points"] = np.asarray(points, dtype=np.float64).reshape(-1, 2).copy()
        given["labels"] = np.asarray(labels).reshape(-1).copy()
    if box is not None:
        given["box"] = np.asarray(box, dtype=np.float64).reshape(4).copy()
    if mask is not None:
        given["mask"] = _Mask.of(mask)
    return given


def _local(given: dict, region: Region) -> dict:
    """``given`` in the crop's coordinates."""
    local = dict(given)
    if "points" in given:
        local["points"] = region.local_points(given["points"])
    if "box" in given:
        local["box"] = region.local_box(given["box"])
    if "mask" in given:
        local["mask"] = given["mask"].in_region(region)
    return local


def _extent(given: dict, frame_shape: tuple[int, int]) -> Extent | None:
    """The pixels a prompt covers (points of either label, the box, the mask)."""
    found = prompt_extent(frame_shape, points=given.get("points"), box=given.get("box"))
    mask = given.get("mask")
    if mask is not None and mask.extent is not None:
        found = mask.extent.union(found)
    return found


class RegionTracker:
    """A tracker that follows each object on a region of interest around it.

    Args:
        model, frames, axis, channel_axis, intensity_range, device, label_dtype,
            feature_cache_bytes, state_ram_bytes, state_spill_dir: as for
            :class:`~napari_sam2.engine.tracker.Tracker`. The feature cache and the state's RAM
            budget are shared by all objects.
        margin: share of an object's size added on each side of it (rule 1 of
            :mod:`napari_sam2.engine.roi`), at least 0.
        min_side: the smallest side of a region, in frame pixels; None: the model's input size
            (the crop then reaches the model at its native resolution). At least the frame's
            longer side: every region is the whole frame and the results are the plain
            tracker's.
        follow_edge: how near (a share of the side) a mask may come to an inner edge of its
            region before the region moves with it (rule 4); 0 keeps regions where they are.
        max_growth: how many times a new object's region may double when its first mask is cut
            by it (rule 3); 0 never.
        tracker_options: passed on to each object's Tracker (``precision``,
            ``storage_device``, ``corrections_as_conditioning``, ``compile_backend``, ...).
        make_tracker: builds an object's tracker, ``make_tracker(model, frames, **options)``
            (default :class:`Tracker`; tests pass stand-ins).
    """

    def __init__(
        self,
        model,
        frames,
        *,
        axis: int = 0,
        channel_axis: int | None = None,
        intensity_range: tuple[float, float] | None = None,
        margin: float = DEFAULT_MARGIN,
        min_side: int | None = None,
        follow_edge: float = FOLLOW_EDGE,
        max_growth: int = MAX_GROWTH,
        device: str | torch.device | None = None,
        precision: str | torch.dtype = "float32",
        label_dtype: np.dtype | type = np.uint32,
        feature_cache_bytes: int = 256 * 2**20,
        state_ram_bytes: int | None = None,
        state_spill_dir: str | os.PathLike | None = None,
        make_tracker: Callable[..., Tracker] | None = None,
        **tracker_options: Any,
    ) -> None:
        if tracker_options.get("feature_store") is not None:
            raise ValueError(
                "a feature store holds the features of whole frames, so it cannot serve a "
                "region tracker: leave out feature_store, or turn the region off"
            )
        tracker_options.pop("feature_store", None)
        tracker_options.pop("fill_feature_store", None)
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real):
            raise ValueError(f"the region margin must be a number, got {margin!r}")
        if not math.isfinite(margin) or margin < 0:
            raise ValueError(
                f"the region margin must be a finite share of the object's size, at least 0 "
                f"(0.5 adds half the object's size on each side); got {margin!r}"
            )
        if not 0 <= follow_edge < 0.5:
            raise ValueError(f"follow_edge must be in [0, 0.5), got {follow_edge!r}")
        if isinstance(max_growth, bool) or not isinstance(max_growth, numbers.Integral):
            raise ValueError(f"max_growth must be a whole number, got {max_growth!r}")
        self.label_dtype = np.dtype(label_dtype)
        if self.label_dtype.kind not in "iu":
            raise ValueError(f"label_dtype must be an integer dtype, got {self.label_dtype}")
        self.model = model
        self.device = model.device if device is None else resolve_device(device)
        if self.device != model.device:
            self.model = model.to(self.device)
        self._precision = precision_name(resolve_precision(precision, self.device))
        self._image_size = int(model.config.image_size)
        if min_side is None:
            min_side = self._image_size
        if isinstance(min_side, bool) or not isinstance(min_side, numbers.Integral):
            raise ValueError(f"min_side must be a whole number of pixels, got {min_side!r}")
        if min_side < 1:
            raise ValueError(f"min_side must be at least 1 pixel, got {min_side}")
        self.margin = float(margin)
        self.min_side = int(min_side)
        self.follow_edge = float(follow_edge)
        self.max_growth = int(max_growth)
        self.frames = FrameSource(
            frames, axis=axis, channel_axis=channel_axis, intensity_range=intensity_range
        )
        self._reader = _RegionReader(frames, self.frames, axis, channel_axis)
        self._shared_features = FeatureCache(feature_cache_bytes)
        self.features = RegionFeatures(self._shared_features)
        self.state_store = StateStore(state_ram_bytes, spill_dir=state_spill_dir)
        self.feature_store = None
        self._make_tracker = make_tracker or Tracker
        self._options = dict(tracker_options, precision=precision)
        self._objects: dict[int, _Entry] = {}
        self._objects_version = 0
        self._propagation_token: object | None = None

    # ------------------------------------------------------------------ properties
    @property
    def precision(self) -> str:
        """The precision the network computes in: "float32", "bfloat16" or "float16"."""
        return self._precision

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one frame."""
        return self.frames.frame_shape

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    def prompted_frames(self, obj_id: int) -> list[int]:
        """Frames on which ``obj_id`` has prompts, sorted."""
        entry = self._entry(obj_id)
        return entry.tracker.prompted_frames(obj_id)

    def region(self, obj_id: int, frame: int) -> Region | None:
        """The region ``obj_id`` has (or last had) output in on ``frame``, None if none yet."""
        return self._entry(obj_id).windows.get(frame)

    @property
    def state_nbytes(self) -> int:
        """Bytes of per-object state held on the storage device (not what went to disk)."""
        return sum(entry.tracker.state_nbytes for entry in self._objects.values())

    @property
    def state_spilled_nbytes(self) -> int:
        """Bytes of per-object state beyond the RAM budget, in the temporary spill folder."""
        return sum(entry.tracker.state_spilled_nbytes for entry in self._objects.values())

    def close(self) -> None:
        """Forget every object (as :meth:`reset`) and remove the spill folder."""
        self.reset()
        self.state_store.close()

    def prepare(self, frame: int) -> None:
        """Check ``frame``; nothing is computed ahead, since a region's place on a slice is
        known only once a prompt lands there or propagation reaches it."""
        validate_frame_index(frame, self.num_frames)

    # ------------------------------------------------------------------ objects
    def _entry(self, obj_id: int) -> _Entry:
        if obj_id not in self._objects:
            known = ", ".join(map(str, self.object_ids)) or "none"
            raise ValueError(f"unknown object id {obj_id!r}; the objects are: {known}")
        return self._objects[obj_id]

    def _new_entry(self, obj_id: int, size: tuple[int, int]) -> _Entry:
        windows: dict[int, Region] = {}
        as_channel = self._reader.channels is None and size[1] in (3, 4)
        view = _CropView(self._reader, size, windows, as_channel)
        tracker = self._make_tracker(
            self.model,
            view,
            axis=0,
            channel_axis=3 if view.ndim == 4 else None,
            intensity_range=self.frames.intensity_range,  # the whole stack's, not the crop's
            device=self.device,
            label_dtype=self.label_dtype,
            **self._options,
        )
        # One feature cache and one state budget for all objects.
        tracker.features = _WindowedFeatures(self._shared_features, windows)
        tracker.state_store = self.state_store
        return _Entry(obj_id, tracker, view.size, windows)

    def _send(self, entry: _Entry, frame: int, given: dict, region: Region) -> np.ndarray:
        """Segment ``given`` on ``frame`` in ``region``; the object's crop logits (h, w)."""
        with _placed(entry, frame, region):
            result = entry.tracker.set_prompts(frame, entry.obj_id, **_local(given, region))
        entry.prompts[frame] = given
        local = result[entry.obj_id]
        entry.boxes[frame] = mask_extent(local > 0)
        return local

    def _region(self, extent: Extent | None, size: tuple[int, int] | None = None) -> Region:
        """The region for prompts covering ``extent`` (rules 1 and 2), of ``size`` if given."""
        return region_for(
            extent, self.frame_shape, margin=self.margin, min_side=self.min_side, size=size
        )

    @staticmethod
    def _reference(entry: _Entry, frame: int, came_from: int | None = None) -> int:
        """The frame whose region ``frame`` starts from: ``came_from`` (the slice before it in
        the direction of travel) if it has one, else ``frame`` itself, else the nearest frame
        with a region (the earlier of two equally near)."""
        for candidate in (came_from, frame):
            if candidate is not None and candidate in entry.windows:
                return candidate
        return min(entry.windows, key=lambda f: (abs(f - frame), f))

    def set_prompts(
        self,
        frame: int,
        obj_id: int,
        points=None,
        labels=None,
        box=None,
        mask=None,
    ) -> dict[int, np.ndarray]:
        """Replace ``obj_id``'s prompts on ``frame`` and segment that frame in its region.

        Arguments as :meth:`Tracker.set_prompts`, in pixels of the whole frame. Returns float32
        logits (H, W) of the whole frame for every object with output on ``frame``.
        """
        frame = validate_frame_index(frame, self.num_frames)
        obj_id = validate_object_id(obj_id, self.label_dtype)
        # Checked against the whole frame, so errors speak of the frame the user sees.
        validate_prompt(
            self.frame_shape, self._image_size, points=points, labels=labels, box=box, mask=mask
        )
        given = _given(points, labels, box, mask)
        extent = _extent(given, self.frame_shape)
        entry = self._objects.get(obj_id)
        if entry is None:
            self._first_prompt(obj_id, frame, given, extent)
            return self.frame_logits(frame)
        window = entry.windows.get(frame)
        if window is None:
            if extent is None:
                window = entry.windows[self._reference(entry, frame)]
            else:
                window = self._region(extent, entry.size)
        if extent is None or window.contains(extent):
            self._send(entry, frame, given, window)
        else:
            self._rebuild(entry, frame, given)
        return self.frame_logits(frame)

    def _first_prompt(self, obj_id: int, frame: int, given: dict, extent: Extent | None):
        """A new object: its region from the prompt, grown while its mask is cut (rule 3)."""
        region = self._region(extent)
        for attempt in range(self.max_growth + 1):
            entry = self._new_entry(obj_id, region.shape)
            self._send(entry, frame, given, region)
            box = entry.boxes[frame]
            if attempt == self.max_growth or not touches_inner_edge(region, box, self.frame_shape):
                break
            bigger = grown(region, box, self.frame_shape)
            if bigger.shape == region.shape:
                break
            entry.tracker.reset()
            region = bigger
        self._objects[obj_id] = entry
        self._objects_version += 1

    def _rebuild(self, entry: _Entry, frame: int, given: dict) -> None:
        """Start ``entry``'s object afresh on a region large enough for all its prompts."""
        prompts = dict(entry.prompts)
        prompts[frame] = given
        extents = {index: _extent(part, self.frame_shape) for index, part in prompts.items()}
        union = None
        for found in extents.values():
            if found is not None:
                union = found.union(union)
        needed = region_size(union, self.frame_shape, margin=self.margin, min_side=self.min_side)
        size = (max(needed[0], entry.size[0]), max(needed[1], entry.size[1]))
        fresh = self._new_entry(entry.obj_id, size)
        for index in sorted(prompts):
            region = self._region(extents[index], size)
            self._send(fresh, index, prompts[index], region)
        entry.tracker.reset()
        self._objects[entry.obj_id] = fresh
        self._objects_version += 1

    def frame_logits(self, frame: int) -> dict[int, np.ndarray]:
        """Logits (H, W) of the whole frame on ``frame`` of every object that has output
        there; :data:`~napari_sam2.engine.roi.OUTSIDE_LOGIT` outside its region."""
        validate_frame_index(frame, self.num_frames)
        found = {}
        for obj_id in self.object_ids:
            entry = self._objects[obj_id]
            local = entry.tracker.frame_logits(frame).get(obj_id)
            if local is not None:
                found[obj_id] = entry.windows[frame].paste(local, self.frame_shape)
        return found

    def clear_prompts(self, obj_id: int, frame: int | None = None) -> None:
        """Remove ``obj_id``'s prompts on ``frame`` (all frames if None), as
        :meth:`Tracker.clear_prompts`."""
        entry = self._entry(obj_id)
        entry.tracker.clear_prompts(obj_id, frame)
        frames = list(entry.prompts) if frame is None else [frame]
        for index in frames:
            entry.prompts.pop(index, None)
            if obj_id not in entry.tracker.frame_logits(index):
                entry.windows.pop(index, None)  # no output left there: the region is free
                entry.boxes.pop(index, None)

    def remove_object(self, obj_id: int) -> None:
        """Forget ``obj_id`` entirely."""
        self._entry(obj_id).tracker.reset()
        del self._objects[obj_id]
        self._objects_version += 1

    def reset(self) -> None:
        """Forget every object and prompt; encoded crops stay in the cache."""
        for entry in self._objects.values():
            entry.tracker.reset()
        self._objects.clear()
        self._objects_version += 1

    # ------------------------------------------------------------------ propagation
    def plan(
        self, start: int, direction: str = "forward", max_frames: int | None = None
    ) -> PropagationPlan:
        """The frames :meth:`propagate` with these arguments visits, in order."""
        validate_frame_index(start, self.num_frames)
        return plan_propagation(self.num_frames, start, direction, max_frames)

    def propagate(
        self, start: int, direction: str = "forward", max_frames: int | None = None
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Track every object from ``start``; yields ``(frame, {obj_id: logits (H, W)})``.

        As :meth:`Tracker.propagate` (directions, ``max_frames``, cancelling by closing the
        generator, one propagation at a time). Before each slice, each object's region there
        is set from the slice before it (rule 4 of :mod:`napari_sam2.engine.roi`).
        """
        plan = self.plan(start, direction, max_frames)
        if not self._objects:
            raise ValueError("there is nothing to propagate: add a point, box or mask first")
        check_propagation_fits(self, plan.total)
        token = object()
        self._propagation_token = token
        runs = []
        try:
            for obj_id in self.object_ids:
                entry = self._objects[obj_id]
                runs.append((entry, entry.tracker.propagate(start, direction, max_frames)))
        except BaseException:
            for _, run in runs:
                run.close()
            raise
        return self._propagation(plan, runs, token, self._objects_version)

    def _propagation(self, plan: PropagationPlan, runs, token, version):
        try:
            for order, backward in plan.passes:
                for frame in order:
                    self._check_still_valid(token, version)
                    results = {}
                    for entry, run in runs:
                        results[entry.obj_id] = self._step(entry, run, frame, backward)
                    self._check_still_valid(token, version)
                    yield frame, results
        finally:
            for _, run in runs:
                run.close()

    def _step(self, entry: _Entry, run, frame: int, backward: bool) -> np.ndarray:
        """Place ``entry``'s region on ``frame`` and let its tracker track that frame."""
        window = entry.windows.get(frame)
        if frame not in entry.prompts:  # prompted slices keep the region of their prompts
            reference = self._reference(entry, frame, frame + 1 if backward else frame - 1)
            window = entry.windows[reference]
            if self.follow_edge > 0:
                window = follow(
                    window, entry.boxes.get(reference), self.frame_shape, edge=self.follow_edge
                )
        with _placed(entry, frame, window):
            tracked, logits = next(run)
        if tracked != frame:
            raise RuntimeError(f"object {entry.obj_id} tracked frame {tracked}, not {frame}")
        local = logits[entry.obj_id]
        entry.boxes[frame] = mask_extent(local > 0)
        return entry.windows[frame].paste(local, self.frame_shape)

    def _check_still_valid(self, token, version) -> None:
        if self._propagation_token is not token:
            raise PropagationInvalidated(
                "another propagate() started on this tracker, which ends this one; its finished "
                "frames are kept. Run one propagation at a time (close the old generator first)"
            )
        if self._objects_version != version:
            raise PropagationInvalidated(
                "the objects changed during propagation (an object was added, removed or "
                "started afresh on a larger region, or the tracker was reset), which ends it; "
                "finished frames are kept. Call propagate() again to track the objects now "
                f"present ({self.object_ids or 'none'})"
            )
