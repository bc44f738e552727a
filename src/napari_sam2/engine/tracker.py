"""One tracking engine for single images, z-stacks and time series.

SAM 2 treats slices or time points as the frames of a video. The :class:`Tracker` reads frames
lazily from any array-like, keeps a bounded cache of image features and a compact per-object
state, and follows the semantics of Meta's ``SAM2VideoPredictor`` (release of 2024-12, with the
defaults of ``build_sam2_video_predictor``).

Coordinates follow SAM: points are (x, y) = (column, row) pixels of the original frame, boxes
(x0, y0, x1, y1). Outputs are float32 logits (H, W) at the frame's original size; mask =
logits > 0.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from ..model.common import sine_position_encoding_2d
from ..model.sam2 import SAM2, FrameFeatures, Prediction
from .device import resolve_device
from .feature_store import FeatureStore
from .features import FeatureCache
from .frames import FrameSource
from .holes import fill_small_holes
from .memory_estimate import check_propagation_fits
from .objects import (
    FrameOutput,
    MemoryPlan,
    ObjectState,
    batch_memories,
    plan_memory,
)
from .precision import autocast, precision_name, resolve_precision, suspend_autocast
from .prompts import validate_frame_index, validate_object_id, validate_prompt
from .session import PropagationPlan, plan_propagation
from .state_store import StateStore

#: Previous logits fed back with new clicks are clamped, as the reference does, to avoid rare
#: numerical trouble with very confident masks.
PREVIOUS_LOGIT_CLAMP = 32.0


class PropagationInvalidated(ValueError):
    """A propagation generator can no longer go on, raised at its next step.

    Semantics (documented on :meth:`Tracker.propagate`): adding an object, removing one or
    :meth:`Tracker.reset` while a propagation runs, or starting another :meth:`Tracker.propagate`
    on the same tracker, ends the running one. Frames it finished stay tracked; call
    ``propagate`` again to continue with the new objects. Prompt changes on existing objects do
    not end it.
    """


class Tracker:
    """Prompts on any frame, many objects, propagation both ways, corrections.

    ``frames``: anything with ``shape``, ``dtype``, ``ndim`` and integer indexing along
    ``axis`` (numpy, dask, zarr, a tifffile memmap). A 2-D array is a one-frame video. A
    trailing axis of 3 or 4 is RGB(A); ``channel_axis`` names a channel axis otherwise.
    ``intensity_range=(lo, hi)`` maps lo to 0 and hi to 1; None takes one range for the whole
    stack from robust percentiles of a sample of frames.

    ``device``: where the model runs (default: the model's device). ``storage_device``: where
    per-frame state lives (default: the CPU, so GPU memory stays flat with stack length).
    ``feature_cache_bytes`` bounds the cache of image features. ``batch_objects`` runs objects
    whose memories line up in one forward pass (default: on CUDA only, where it pays; on the
    CPU a batch is slower than the same objects one by one). ``compile_backend`` (e.g.
    "inductor") compiles the image encoder with ``torch.compile``; the first frame then takes
    longer.
    ``precision``: what the network computes in, "auto", "float32", "bfloat16" or "float16"
    (see :mod:`napari_sam2.engine.precision`; "auto" is bfloat16 on CUDA and on CPUs with native
    bfloat16, float32 elsewhere). Memory features are stored in bfloat16 and outputs are float32
    whatever the precision; :attr:`precision` tells which one is in use.
    ``corrections_as_conditioning``: prompts on a frame that was already tracked make it a
    conditioning frame that later propagation keeps (True), or, as Meta's default, only a
    memory frame that re-propagation may overwrite (False).
    ``state_ram_bytes``: RAM budget of the per-object state (logits and memory of every tracked
    frame; 0.75 MiB per object and frame at input size 1024); beyond it the oldest outputs go to
    a temporary folder in ``state_spill_dir`` (default: the system's, ``TMPDIR``) and are read
    back when needed, with the same results. None: 4 GiB, or half the memory available now when
    that is less (:func:`~napari_sam2.engine.memory_estimate.default_state_ram_bytes`).
    :meth:`close` removes the folder; so does garbage collection.

    ``feature_store``: a folder (or an open
    :class:`~napari_sam2.engine.feature_store.FeatureStore`) that keeps image features on
    disk, keyed by the data signature of these frames and this model
    (:func:`~napari_sam2.engine.data_signature.data_signature`); a store made for other data
    or another model raises :class:`~napari_sam2.engine.feature_store.FeatureStoreMismatch`.
    A frame's features come from the RAM cache, else from the store, else they are computed,
    and with ``fill_feature_store`` (default) computed frames are written to the store (which
    is created when absent; without ``fill_feature_store`` it must exist and is only read).
    The store holds bfloat16: with a store, features are always used as the store gives them
    (computed ones rounded to bfloat16 first), so results are the same whether a frame was in
    the store or not, and within bfloat16 rounding of the results without a store. Levels read
    back are cast to the precision in use (the stride-16 level to float32, as the encoder
    gives it). :attr:`feature_store` is the open store or None.
    """

    def __init__(
        self,
        model: SAM2,
        frames,
        *,
        axis: int = 0,
        channel_axis: int | None = None,
        intensity_range: tuple[float, float] | None = None,
        device: str | torch.device | None = None,
        storage_device: str | torch.device = "cpu",
        feature_cache_bytes: int = 256 * 2**20,
        corrections_as_conditioning: bool = True,
        batch_objects: bool | None = None,
        compile_backend: str | None = None,
        precision: str | torch.dtype = "float32",
        label_dtype: np.dtype | type = np.uint32,
        state_ram_bytes: int | None = None,
        state_spill_dir: str | os.PathLike | None = None,
        feature_store: str | os.PathLike | FeatureStore | None = None,
        fill_feature_store: bool = True,
    ) -> None:
        self.label_dtype = np.dtype(label_dtype)
        if self.label_dtype.kind not in "iu":
            raise ValueError(f"label_dtype must be an integer dtype, got {self.label_dtype}")
        # Bumped whenever the set of objects changes; a running propagation checks it.
        self._objects_version = 0
        self._propagation_token: object | None = None
        self.model = model
        self.device = model.device if device is None else resolve_device(device)
        if self.device != model.device:
            self.model = model.to(self.device)
        self._dtype = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            # Convolution weights in channels-last layout (the values stay the same): measured
            # on the CPU, sam2.1 tiny at 512, 9-13 % less time per frame in float32 and 23-26 %
            # in bfloat16 (docs/benchmarks.md). The model is changed in place, as by .to(device).
            self.model = self.model.to(memory_format=torch.channels_last)
        self.storage_device = torch.device(storage_device)
        self.frames = FrameSource(
            frames, axis=axis, channel_axis=channel_axis, intensity_range=intensity_range
        )
        self.features = FeatureCache(feature_cache_bytes)
        self.state_store = StateStore(state_ram_bytes, spill_dir=state_spill_dir)
        self.corrections_as_conditioning = corrections_as_conditioning
        if batch_objects is None:
            batch_objects = self.device.type == "cuda"
        self.batch_objects = batch_objects
        self._objects: dict[int, ObjectState] = {}
        self._compiled_encoder = None
        if compile_backend is not None:
            self._compiled_encoder = torch.compile(
                self.model.encode_image, backend=compile_backend, dynamic=False
            )
        config = model.config
        self._image_size = config.image_size
        self._fill_hole_area = config.fill_hole_area
        self._signed_offsets = config.use_signed_tpos_enc_to_obj_ptrs
        side = config.feature_size
        self._top_pos = sine_position_encoding_2d(side, side, model.hidden_dim, device=self.device)
        self._memory_pos = model.memory_position(self.device)
        self.fill_feature_store = bool(fill_feature_store)
        self.feature_store: FeatureStore | None = None
        if feature_store is not None:
            self.feature_store = self._open_feature_store(feature_store)

    # ------------------------------------------------------------------ properties
    @property
    def precision(self) -> str:
        """The precision the network computes in here: "float32", "bfloat16" or "float16"."""
        return precision_name(self._dtype)

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
        return sorted(self._state(obj_id).prompts)

    @property
    def state_nbytes(self) -> int:
        """Bytes of per-object state held on the storage device (not what went to disk)."""
        return sum(state.nbytes for state in self._objects.values())

    @property
    def state_spilled_nbytes(self) -> int:
        """Bytes of per-object state beyond the RAM budget, in the temporary spill folder."""
        return sum(state.spilled_nbytes for state in self._objects.values())

    def close(self) -> None:
        """Forget every object (as :meth:`reset`) and remove the spill folder. Cached image
        features stay; the tracker stays usable."""
        self.reset()
        self.state_store.close()

    # ------------------------------------------------------------------ features
    def prepare(self, frame: int) -> None:
        """Compute and cache ``frame``'s image features (the slow step of a first click); with
        a feature store, read them from it, or compute them and write them to it when filling."""
        validate_frame_index(frame, self.num_frames)
        self._features(frame)

    def _features(self, frame: int, *, remember: bool = True) -> FrameFeatures:
        """The frame's image features: from the RAM cache, else the feature store, else
        computed (and written to the store when filling it). ``remember=False`` (used by
        propagation, which reads each frame once) leaves the cache as it was, so memory stays
        flat however long the stack."""
        cached = self.features.get(frame)
        if cached is None:
            cached = self._stored_features(frame)
            if cached is None:
                image = self.frames.model_input(frame, self._image_size, device=self.device)
                with torch.inference_mode(), self._autocast():
                    encode = self._compiled_encoder or self.model.encode_image
                    encoded = encode(image)
                # The position encoding is the same for every frame: keep one copy.
                cached = (*encoded.high_res, encoded.top)
                if self.feature_store is not None:
                    cached = self._through_store(frame, cached)
            if remember:
                self.features.put(frame, cached)
        s0, s1, top = cached
        return FrameFeatures([s0, s1], top, self._top_pos.to(top.dtype))

    # ------------------------------------------------------------------ feature store
    def _open_feature_store(self, store: str | os.PathLike | FeatureStore) -> FeatureStore:
        from .data_signature import data_signature

        signature = data_signature(self.frames, self.model)
        if isinstance(store, FeatureStore):
            store.check_signature(signature)
            return store
        return FeatureStore.open(store, signature, create=self.fill_feature_store)

    def _stored_features(self, frame: int) -> tuple[torch.Tensor, ...] | None:
        """The frame's levels from the feature store, on the device and in the precision in
        use, or None (no store, or the frame is not in it)."""
        if self.feature_store is None:
            return None
        try:
            levels = self.feature_store.read(frame)
        except Exception as err:  # a damaged chunk: compute the frame rather than fail
            warnings.warn(
                f"could not read frame {frame} from the feature store "
                f"{str(self.feature_store.path)!r} ({err}); computing it instead (delete the "
                "store to have it written again)",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return None if levels is None else self._from_store(levels)

    def _from_store(self, levels) -> tuple[torch.Tensor, ...]:
        """bfloat16 levels -> the device, s0 and s1 in the precision in use and top in float32,
        in the memory layout the encoder gives (the dtypes and layout the decoder is fastest
        with: on the CPU, a click on channels-last features takes 20 % less time)."""
        layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        dtypes = (self._dtype, self._dtype, torch.float32)
        return tuple(
            level.to(self.device, dtype).contiguous(memory_format=layout)
            for level, dtype in zip(levels, dtypes)
        )

    def _through_store(self, frame: int, computed) -> tuple[torch.Tensor, ...]:
        """Computed levels rounded to bfloat16 as the store holds them (written to it when
        filling), so a frame gives the same results whether it was in the store or not."""
        halves = tuple(level.detach().to(torch.bfloat16) for level in computed)
        if self.fill_feature_store:
            try:
                self.feature_store.write(frame, halves)
            except OSError as err:  # a full disk or lost permission must not stop the work
                warnings.warn(
                    f"could not write frame {frame} to the feature store "
                    f"{str(self.feature_store.path)!r} ({err}); not filling it any more",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.fill_feature_store = False
        return self._from_store(halves)

    # ------------------------------------------------------------------ prompts
    def set_prompts(
        self,
        frame: int,
        obj_id: int,
        points=None,
        labels=None,
        box=None,
        mask=None,
    ) -> dict[int, np.ndarray]:
        """Replace ``obj_id``'s prompts on ``frame`` and segment that frame.

        ``points`` (N, 2) as (x, y) pixels, ``labels`` (N,) with 1 foreground and 0 background,
        ``box`` (x0, y0, x1, y1), ``mask`` bool (H, W). Returns float32 logits (H, W) for every
        object with output on ``frame``.
        """
        validate_frame_index(frame, self.num_frames)
        validate_object_id(obj_id, self.label_dtype)
        prompt = validate_prompt(
            self.frame_shape, self._image_size, points=points, labels=labels, box=box, mask=mask
        )
        if int(obj_id) not in self._objects:
            self._objects_version += 1
            self._objects[int(obj_id)] = ObjectState.in_store(self.state_store)
        state = self._objects[int(obj_id)]
        first_visit = frame not in state.tracked
        backward = False if first_visit else state.tracked[frame]
        becomes_conditioning = first_visit or self.corrections_as_conditioning

        with torch.inference_mode(), self._autocast():
            features = self._features(frame)
            if prompt.mask is not None:
                with self._float32():
                    as_float = FrameFeatures(
                        [h.float() for h in features.high_res],
                        features.top.float(),
                        features.top_pos.float(),
                    )
                    prediction = self.model.mask_as_output(as_float, prompt.mask.to(self.device))
            else:
                previous = state.latest_output(frame)
                previous_logits = None
                if previous is not None:
                    previous_logits = previous.low_res.to(self.device).clamp(
                        -PREVIOUS_LOGIT_CLAMP, PREVIOUS_LOGIT_CLAMP
                    )
                if first_visit:
                    conditioned = self.model.without_memory(features)
                else:
                    plan = self._plan(state, frame, backward)
                    conditioned = self._with_memory(features, [plan])
                prediction = self._decode(
                    conditioned,
                    features.high_res,
                    points=(prompt.coords.to(self.device), prompt.labels.to(self.device)),
                    mask_logits=previous_logits,
                    multimask=self.model.wants_multimask(prompt.num_points),
                )
        state.prompts[frame] = prompt
        state.pending[frame] = (self._store(prediction), becomes_conditioning)
        return self.frame_logits(frame)

    def frame_logits(self, frame: int) -> dict[int, np.ndarray]:
        """Logits (H, W) on ``frame`` of every object that has output there."""
        validate_frame_index(frame, self.num_frames)
        found = {}
        for obj_id in self.object_ids:
            out = self._objects[obj_id].latest_output(frame)
            if out is not None:
                found[obj_id] = out.low_res
        if not found:
            return {}
        stacked = torch.cat(list(found.values()), dim=0)
        full = self._to_frame_size(stacked)
        return dict(zip(found, full))

    def clear_prompts(self, obj_id: int, frame: int | None = None) -> None:
        """Remove ``obj_id``'s prompts on ``frame`` (all frames if None). A prompted frame's
        result is kept as an ordinary tracked frame."""
        state = self._state(obj_id)
        frames = list(state.prompts) if frame is None else [frame]
        for index in frames:
            validate_frame_index(index, self.num_frames)
            state.prompts.pop(index, None)
            state.pending.pop(index, None)
            out = state.conditioning.pop(index, None)
            if out is not None:
                state.recent[index] = out
                state.tracked.pop(index, None)

    def remove_object(self, obj_id: int) -> None:
        """Forget ``obj_id`` entirely."""
        self._state(obj_id)
        self._objects.pop(obj_id).release()
        self._objects_version += 1

    def reset(self) -> None:
        """Forget every object and prompt; cached image features stay valid and are kept."""
        for state in self._objects.values():
            state.release()
        self._objects.clear()
        self._objects_version += 1

    def _state(self, obj_id: int) -> ObjectState:
        if obj_id not in self._objects:
            known = ", ".join(map(str, self.object_ids)) or "none"
            raise ValueError(f"unknown object id {obj_id!r}; the objects are: {known}")
        return self._objects[obj_id]

    # ------------------------------------------------------------------ propagation
    def propagate(
        self, start: int, direction: str = "forward", max_frames: int | None = None
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Track every object from ``start``; yields ``(frame, {obj_id: logits (H, W)})``.

        ``direction``: "forward", "backward" or "both" (forward from ``start``, then backward
        from the frame before it). ``max_frames`` limits the frames visited in each direction,
        ``start`` included. Closing the generator cancels; finished frames stay tracked and the
        tracker stays usable.

        One propagation at a time: calling ``propagate`` again, or adding or removing an object
        (or :meth:`reset`) while a generator is unfinished, makes that generator raise
        :class:`PropagationInvalidated` at its next step (its finished frames stay tracked).
        """
        plan = self.plan(start, direction, max_frames)
        check_propagation_fits(self, plan.total)
        self._commit_pending()
        token = object()
        self._propagation_token = token
        return self._propagation(plan.passes, token, self._objects_version)

    def plan(
        self, start: int, direction: str = "forward", max_frames: int | None = None
    ) -> PropagationPlan:
        """The frames :meth:`propagate` with these arguments visits, in order."""
        validate_frame_index(start, self.num_frames)
        return plan_propagation(self.num_frames, start, direction, max_frames)

    def _propagation(self, passes, token, version) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        for order, backward in passes:
            for frame in order:
                self._check_still_valid(token, version)
                try:
                    result = self._track_frame(frame, backward)
                except (KeyError, RuntimeError) as err:
                    # another thread changed the objects mid-frame: say so, not torch's words
                    self._check_still_valid(token, version, cause=err)
                    raise
                self._check_still_valid(token, version)
                yield frame, result

    def _check_still_valid(self, token, version, cause: BaseException | None = None) -> None:
        if self._propagation_token is not token:
            raise PropagationInvalidated(
                "another propagate() started on this tracker, which ends this one; its finished "
                "frames are kept. Run one propagation at a time (close the old generator first)"
            ) from cause
        if self._objects_version != version:
            raise PropagationInvalidated(
                "the objects changed during propagation (an object was added or removed, or the "
                "tracker was reset), which ends it; finished frames are kept. Call propagate() "
                f"again to track the objects now present ({self.object_ids or 'none'})"
            ) from cause

    def _commit_pending(self) -> None:
        """Encode the memory of frames prompted since the last propagation and file them."""
        if not self._objects:
            raise ValueError("there is nothing to propagate: add a point, box or mask first")
        for obj_id, state in self._objects.items():
            if not state.pending and not state.conditioning:
                raise ValueError(
                    f"object {obj_id} has no prompts: add a point, box or mask, "
                    "or remove the object"
                )
        with torch.inference_mode(), self._autocast():
            for state in self._objects.values():
                for frame, (out, conditioning) in state.pending.items():
                    if out.memory is None:
                        features = self._features(frame)
                        high_res = self.model.upsample_to_input(out.low_res.to(self.device))
                        memory = self.model.encode_memory(
                            features, high_res, out.score.to(self.device), binarize=True
                        )
                        out.memory = self._to_storage(memory, torch.bfloat16)
                    target = state.conditioning if conditioning else state.recent
                    target[frame] = out
                state.pending.clear()
                for frame in state.conditioning:
                    state.recent.pop(frame, None)

    def _track_frame(self, frame: int, backward: bool) -> dict[int, np.ndarray]:
        results: dict[int, torch.Tensor] = {}
        to_run: list[int] = []
        for obj_id in self.object_ids:
            state = self._objects[obj_id]
            if frame in state.conditioning:
                results[obj_id] = state.conditioning[frame].low_res
            else:
                to_run.append(obj_id)
        if to_run:
            with torch.inference_mode(), self._autocast():
                features = self._features(frame, remember=False)
                for obj_ids, plans in self._groups(to_run, frame, backward):
                    results.update(self._run_group(features, obj_ids, plans, frame))
        # Marked only once the frame has its results, so a failed read leaves no trace.
        for state in self._objects.values():
            state.tracked[frame] = backward
        ordered = [results[obj_id] for obj_id in self.object_ids]
        full = self._to_frame_size(torch.cat(ordered, dim=0))
        return dict(zip(self.object_ids, full))

    def _groups(
        self, obj_ids: list[int], frame: int, backward: bool
    ) -> list[tuple[list[int], list[MemoryPlan]]]:
        """The objects' memory plans, grouped so that objects whose memories line up share
        one batched forward pass."""
        plans = {obj_id: self._plan(self._objects[obj_id], frame, backward) for obj_id in obj_ids}
        if not self.batch_objects:
            return [([obj_id], [plan]) for obj_id, plan in plans.items()]
        groups: dict[tuple, tuple[list[int], list[MemoryPlan]]] = {}
        for obj_id, plan in plans.items():
            ids, members = groups.setdefault(plan.signature, ([], []))
            ids.append(obj_id)
            members.append(plan)
        return list(groups.values())

    def _plan(self, state: ObjectState, frame: int, backward: bool):
        return plan_memory(
            state,
            frame,
            backward=backward,
            num_frames=self.num_frames,
            num_maskmem=self.model.num_maskmem,
            max_pointers=self.model.config.max_obj_ptrs_in_encoder,
            signed_offsets=self._signed_offsets,
        )

    def _with_memory(self, features: FrameFeatures, plans: list[MemoryPlan]) -> torch.Tensor:
        """Features conditioned on each plan's memories, one batch row per plan."""
        batched = features.expand(len(plans))
        spatial, pointers = batch_memories(plans, self.device)
        return self.model.with_memory(
            batched, spatial, pointers, self._memory_pos, self.num_frames
        )

    def _run_group(
        self, features: FrameFeatures, obj_ids: list[int], plans: list[MemoryPlan], frame: int
    ) -> dict[int, torch.Tensor]:
        states = [self._objects[obj_id] for obj_id in obj_ids]
        batched = features.expand(len(states))
        conditioned = self._with_memory(features, plans)
        prediction = self._decode(
            conditioned, batched.high_res, multimask=self.model.wants_multimask(0)
        )
        high_res = self.model.upsample_to_input(prediction.low_res)
        memory = self.model.encode_memory(
            batched, high_res, prediction.object_score, binarize=False
        )
        memory = self._to_storage(memory, torch.bfloat16)
        stored = self._store(prediction)
        outputs = {}
        for row, (obj_id, state) in enumerate(zip(obj_ids, states)):
            out = FrameOutput(
                low_res=stored.low_res[row : row + 1],
                pointer=stored.pointer[row : row + 1],
                score=stored.score[row : row + 1],
                memory=memory[row : row + 1],
            )
            state.recent[frame] = out
            outputs[obj_id] = out.low_res
        return outputs

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        """The forward passes' autocast context (a no-op in float32)."""
        return autocast(self.device, self._dtype)

    def _float32(self):
        """Suspends reduced-precision autocast inside :meth:`_autocast` (a no-op in float32)."""
        return suspend_autocast(self.device, self._dtype)

    def _decode(self, conditioned: torch.Tensor, high_res: list[torch.Tensor], **options):
        """The mask decoder, always in float32: it draws the mask's boundary. In bfloat16 the
        masks drift from float32 ones (IoU down to 0.95 on small masks at input size 256; 0.98
        or more with the decoder in float32), and the decoder is a small share of a frame."""
        with self._float32():
            return self.model.decode(conditioned.float(), [h.float() for h in high_res], **options)

    def _store(self, prediction: Prediction) -> FrameOutput:
        """Hole-fill the chosen logits and move the prediction to the storage device."""
        low_res = fill_small_holes(prediction.low_res.float(), self._fill_hole_area)
        return FrameOutput(
            low_res=self._to_storage(low_res, torch.float32),
            pointer=self._to_storage(prediction.obj_ptr, torch.float32),
            score=self._to_storage(prediction.object_score, torch.float32),
        )

    def _to_storage(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return tensor.detach().to(self.storage_device, dtype).clone()

    def _to_frame_size(self, low_res: torch.Tensor) -> list[np.ndarray]:
        """(B, 1, S/4, S/4) logits -> B float32 arrays (H, W), bilinear."""
        full = F.interpolate(
            low_res.float(), size=self.frame_shape, mode="bilinear", align_corners=False
        )
        return list(full[:, 0].cpu().numpy())
