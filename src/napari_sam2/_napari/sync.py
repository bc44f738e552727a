"""The sync step: the one place that knows what the engine was last sent.

:class:`EngineLink` keeps one engine :class:`~napari_sam2.engine.tracker.Tracker` per image,
plane and reading settings (an :class:`EngineSession`), and sends it the (object, frame) prompt
groups that changed since the last call, each as a "segment" job. A job is bound to the session
it was made for: its image, plane, tracker and Labels layer are fixed when it is submitted, so
switching the image or the view orientation meanwhile never writes anywhere else.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from napari.layers import Image

from ..engine.region_tracker import RegionTracker
from ..engine.session import Prompt
from ..engine.tracker import Tracker
from .feature_folder import use_feature_folder
from .geometry import SliceGeometry, layer_array
from .jobs import Job, JobQueue
from .multiscale import lazy_index

__all__ = ["NO_IMAGE", "NO_MODEL", "EngineLink", "EngineSession", "nearest_frames"]

NO_IMAGE = (
    "No image layer to segment. Open an image (File > Open, or File > Open Sample > "
    "napari-sam2 > SAM 2 demo stack) and choose it under 'Image'."
)
NO_MODEL = "No SAM 2 model is loaded yet. Choose a model and press 'Load model', then try again."
#: Why a feature folder is not used while working on regions around the objects.
ROI_WITHOUT_STORE = (
    "Image features are not kept on disk while working on a region around each object: the "
    "store holds features of whole slices, and the regions' crops change as objects move."
)
#: Trackers kept for other planes or settings, so switching back keeps their cached features.
KEPT_SESSIONS = 3
#: Neighbouring slices prepared at most while the annotator is idle.
MAX_PREFETCH = 6
#: Seconds without a request before neighbouring slices are prepared.
IDLE_SECONDS = 0.6
#: Longest segmentation of a slice with cached features that runs on the main thread.
INLINE_BUDGET_S = 0.075
#: Clicks sent to the worker, after a main-thread one took too long, before trying again.
INLINE_RETRY_AFTER = 8


class _Stopped(Exception):
    """Raised between two image-encoder layers to stop a background feature computation."""


@contextlib.contextmanager
def _stoppable(encoder: torch.nn.Module, stopped: Callable[[], bool]):
    """While inside, each innermost layer of ``encoder`` first checks ``stopped()`` and raises
    :class:`_Stopped`. One image encoding takes 0.5-1.3 s at input size 1024 on this CPU and its
    first Hiera block 110 ms, while its slowest single layer takes about 25 ms
    (docs/benchmarks.md): checking before every layer, not every block, is what keeps a click
    from waiting behind a neighbour's features."""
    blocks = [module for module in encoder.modules() if not any(True for _ in module.children())]

    def check(_module, _inputs) -> None:
        if stopped():
            raise _Stopped

    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def nearest_frames(frame: int, num_frames: int):
    """``frame``, then its neighbours by distance: +1, -1, +2, -2, ... within the stack."""
    yield frame
    for distance in range(1, num_frames):
        for other in (frame + distance, frame - distance):
            if 0 <= other < num_frames:
                yield other


@dataclass(eq=False)
class EngineSession:
    """One tracker over the frames of one image, in one plane, with one reading setting.

    The tracker is built on first use, normally by the first job in the worker thread: reading
    the sample frames for the intensity range of a large lazy stack must not stall the viewer.

    Attributes:
        key: identity of image, geometry, intensity range, model and precision.
        sent: ``{(obj_id, frame): Prompt}`` the tracker was last given.
        store_note: what the tracker's feature store is (found, new, or why none), once built
            with a feature folder; "" otherwise.
    """

    key: tuple
    image: Image
    geometry: SliceGeometry
    build: Callable[[], Tracker]
    sent: dict[tuple[int, int], Prompt] = field(default_factory=dict)
    store_note: str = ""
    #: Clicks still to send to the worker before one runs on the main thread again.
    inline_pause: int = 0
    #: Main-thread clicks in a row that took longer than :data:`INLINE_BUDGET_S`.
    inline_over: int = 0
    _tracker: Tracker | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def tracker(self) -> Tracker:
        with self._lock:
            if self._tracker is None:
                self._tracker = self.build()
            return self._tracker

    @property
    def built(self) -> bool:
        return self._tracker is not None

    def inline_took(self, seconds: float) -> None:
        """Record a main-thread click's decoding time. Two too slow in a row (the first
        decoding after a model load is slower, once) send the next clicks to the worker."""
        self.inline_over = self.inline_over + 1 if seconds > INLINE_BUDGET_S else 0
        if self.inline_over >= 2:
            self.inline_over = 0
            self.inline_pause = INLINE_RETRY_AFTER


class EngineLink:
    """Keeps the engine in step with the prompts.

    Args:
        jobs: the annotator's job queue.
        on_result: ``on_result(session, frame, logits_by_id, context, obj_id)`` on the main
            thread with each segmentation's result: the logits of every object on ``frame``
            (None for an object removed there), ``context`` as :meth:`send` was given it, and
            ``obj_id`` the object whose prompts changed.
        on_error: ``on_error(err)`` when a job fails.
        on_note: ``on_note(text)`` on the main thread with a session's feature store note.
    """

    def __init__(
        self,
        jobs: JobQueue,
        *,
        on_result: Callable[[EngineSession, int, dict, object, int], None],
        on_error: Callable[[BaseException], None],
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.jobs = jobs
        self.model = None
        self._on_result = on_result
        self._on_error = on_error
        self._on_note = on_note
        self._sessions: OrderedDict[tuple, EngineSession] = OrderedDict()

    def session(
        self,
        image: Image,
        geometry: SliceGeometry,
        intensity_range: tuple[float, float] | None,
        precision: str,
        feature_folder: str | None = None,
        roi: bool = False,
    ) -> EngineSession:
        """The session for these settings, built when missing. Raises ValueError without a
        model. With ``feature_folder``, its tracker reads and fills the folder's feature store
        of these frames and this model (:mod:`.feature_folder`); a "feature store" job opens
        it at once and reports its note."""
        if self.model is None:
            raise ValueError(NO_MODEL)
        key = (id(image), geometry.key(), intensity_range, id(self.model), precision)
        key += (feature_folder,)
        key += (bool(roi),)  # a region tracker per object, or one plain tracker
        found = self._sessions.get(key)
        if found is not None and found.image is image:
            self._sessions.move_to_end(key)
            return found
        # The geometry's pyramid level, selected without reading (zarr reads when indexed).
        frames = lazy_index(layer_array(image, geometry.level), geometry.frames_index())
        axis, channel_axis = geometry.engine_axes()
        model = self.model

        name = image.name

        def build() -> Tracker:
            tracker = (RegionTracker if roi else Tracker)(
                model,
                frames,
                axis=axis,
                channel_axis=channel_axis,
                intensity_range=intensity_range,
                precision=precision,
            )
            if feature_folder is not None and roi:
                session.store_note = ROI_WITHOUT_STORE
            elif feature_folder is not None:
                session.store_note = use_feature_folder(tracker, feature_folder, name)
            return tracker

        session = EngineSession(key, image, geometry, build)
        self._sessions[key] = session
        while len(self._sessions) > KEPT_SESSIONS:
            self._sessions.popitem(last=False)
        if feature_folder is not None:
            self._open_store(session)
        return session

    def _open_store(self, session: EngineSession) -> None:
        """Build the session's tracker now, in a job, so its feature store is open (and its
        note shown) before the first click needs it."""

        def work():
            session.tracker  # noqa: B018 - building it opens the store
            yield session.store_note

        def on_yield(note: str) -> None:
            if self._on_note is not None and note:
                self._on_note(note)

        self.jobs.submit(Job("feature store", work, on_yield=on_yield, on_error=self._on_error))

    def drop(self, image: Image | None = None) -> None:
        """Forget the sessions (of ``image``, or all): their trackers and what they were sent."""
        for key in list(self._sessions):
            if image is None or self._sessions[key].image is image:
                del self._sessions[key]

    def send(
        self,
        session: EngineSession,
        prompts: dict[tuple[int, int], Prompt],
        *,
        context: object = None,
        write: bool = True,
    ) -> int:
        """Submit a job for each (object, frame) group whose prompt changed; returns how many.

        ``write=False`` updates the engine only (after an undo, whose pixels napari restored).
        """
        previous, session.sent = session.sent, dict(prompts)
        changed = [key for key in previous if key not in prompts]
        changed += [key for key, p in prompts.items() if not p.same_as(previous.get(key))]
        # One changed group is a click (or a box, a brush edit); more (a loaded prompt file,
        # an undo) always go to the worker, so the viewer is never held for many decodings.
        single = len(changed) == 1
        for key in changed:
            self._submit(session, key, prompts.get(key), context, write, may_inline=single)
        return len(changed)

    def forget(self, session: EngineSession, obj_id: int) -> None:
        """Remove ``obj_id`` from the engine (a deleted object), in a job."""
        session.sent = {key: p for key, p in session.sent.items() if key[0] != obj_id}

        def work():
            tracker = session.tracker
            if obj_id in tracker.object_ids:
                tracker.remove_object(obj_id)
            yield None

        self.jobs.submit(Job("forget object", work, on_error=self._on_error))

    def prepare(self, session: EngineSession, frame: int) -> None:
        """Compute a frame's image features in the background (the slow step of a click)."""

        def work():
            session.tracker.prepare(frame)
            yield frame

        self.jobs.submit(Job("prepare", work, on_error=self._on_error, key="prepare"))

    def prefetch(self, session: EngineSession, frame: int, *, limit: int = MAX_PREFETCH) -> None:
        """While nothing else runs, compute the features of ``frame`` and its neighbours,
        nearest first (frame, +1, -1, +2, -2, ...), as many as the feature cache holds beside
        ``frame`` (at most ``limit`` neighbours). Any other job stops it at its next slice."""
        inline = threading.current_thread()

        def work():
            # Start only once the user has paused: a click right after moving to a slice
            # then never waits behind a neighbour's features (an inline runner does not wait).
            if threading.current_thread() is not inline and job.sleep(IDLE_SECONDS):
                return
            tracker = session.tracker
            cache = tracker.features
            encoder = tracker.model.image_encoder
            done = 0
            for other in nearest_frames(frame, tracker.num_frames):
                if other in cache:
                    continue
                # Room for the slice the user is on and what is prefetched, no more: the
                # cache must not evict the features the next click needs.
                per_frame = cache.nbytes / max(len(cache), 1)
                room = int(cache.max_bytes // per_frame) - 1 if per_frame else limit
                if done >= min(limit, room):
                    return
                try:
                    with _stoppable(encoder, lambda: job.cancelled):
                        tracker.prepare(other)
                except _Stopped:
                    return  # the user asked for something: the half-computed slice is dropped
                done += 1
                yield other

        job = Job("prefetch", work, key="prefetch", background=True)
        self.jobs.stop_background()  # the neighbours of the slice the user left are not needed
        self.jobs.submit(job)

    def _submit(
        self, session, key, prompt: Prompt | None, context, write: bool, *, may_inline: bool
    ) -> None:
        obj_id, frame = key
        inline = may_inline and self._can_run_inline(session, frame, prompt)

        def work():
            tracker = session.tracker
            if prompt is None or prompt.empty:
                if obj_id in tracker.object_ids:
                    if frame in tracker.prompted_frames(obj_id):
                        tracker.clear_prompts(obj_id, frame)
                    if not tracker.prompted_frames(obj_id):
                        tracker.remove_object(obj_id)
                yield frame, {obj_id: None}
                return
            tracker.prepare(frame)
            began = time.perf_counter()
            logits = tracker.set_prompts(frame, obj_id, **prompt.engine_kwargs())
            if inline:
                session.inline_took(time.perf_counter() - began)
            yield frame, logits

        def on_yield(item) -> None:
            if write:
                self._on_result(session, item[0], item[1], context, obj_id)

        def on_error(err: BaseException) -> None:
            # Forget the group so that the next edit sends it again.
            if session.sent.get(key) is prompt:
                session.sent.pop(key, None)
            self._on_error(err)

        job = Job("segment", work, on_yield=on_yield, on_error=on_error, key=("segment", key))
        if not (inline and self.jobs.run_now(job)):
            self.jobs.submit(job)

    def _can_run_inline(self, session: EngineSession, frame: int, prompt: Prompt | None) -> bool:
        """Whether a click's segmentation may run on the main thread, at once.

        With the slice's features in memory a click costs one mask decoding (about 50-60 ms
        at input size 1024 on a 2-core CPU). In a worker it cost more: napari redrawing the
        new point while torch decodes on the same cores made a click 2.2-2.7x the decoding
        alone (docs/benchmarks.md). Here the point and its mask are drawn once, together.
        Two decodings in a row longer than :data:`INLINE_BUDGET_S` send the session's next
        :data:`INLINE_RETRY_AFTER` clicks to the worker (:meth:`EngineSession.inline_took`),
        so the viewer never stalls long. Only a click on an idle queue runs here
        (:meth:`JobQueue.run_now`).
        """
        if prompt is None or not session.built:
            return False
        if session.inline_pause > 0:
            if not self.jobs.busy:  # the pause counts clicks that could have run here
                session.inline_pause -= 1
            return False
        tracker = session.tracker
        # A region tracker crops per object: its features are not the slice's.
        return not isinstance(tracker, RegionTracker) and frame in tracker.features
