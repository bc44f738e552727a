"""The annotator's one mutable UI state, as an evented model the dock binds to both ways.

Everything a user can set or see in the dock lives here and nowhere else: the image, how its
frames are read, the model choice, polarity, protection, the objects and the current one, the
propagation settings, the status line and the progress. Each field emits
``state.events.<field>`` when it changes, so the widget, the key bindings and the layers all
follow one source (press G and the checkbox follows, because both read ``positive``).
"""

from __future__ import annotations

from napari.layers import Image
from napari.utils.events import EventedModel

__all__ = ["INTENSITY_MODES", "AnnotatorState", "ObjectInfo", "Progress"]

INTENSITY_MODES = ("auto", "contrast limits", "fixed")


class ObjectInfo(EventedModel):
    """One object: its label id and the name the user gave it."""

    id: int
    name: str


class Progress(EventedModel):
    """A running propagation: slices done of ``total``, seconds per slice and seconds left."""

    done: int = 0
    total: int = 0
    seconds_per_slice: float | None = None
    seconds_left: float | None = None

    def text(self) -> str:
        """A short line for the dock, e.g. "12 / 40 slices · 0.31 s per slice · 9 s left"."""
        parts = [f"{self.done} / {self.total} slices"]
        if self.seconds_per_slice is not None:
            parts.append(f"{self.seconds_per_slice:.2f} s per slice")
        if self.seconds_left is not None:
            parts.append(f"{self.seconds_left:.0f} s left")
        return " · ".join(parts)


class AnnotatorState(EventedModel):
    """What the annotator of one viewer segments and how.

    Attributes:
        image: the napari Image layer being annotated, or None.
        tracked_axis / channel_axis: layer data axes; None for automatic / no channels.
        intensity: one of :data:`INTENSITY_MODES`; ``fixed_range`` (lo, hi) for "fixed".
        level: the level of a multiscale image to read; None for "auto", the finest level whose
            frame fits the model's input size (see ``_napari/multiscale.py``).
        model_name / checkpoint / device / image_size / precision: the model to load and,
            once loaded, ``loaded`` describes it ("sam2.1_hiera_tiny on cpu, float32").
        positive: the polarity of the next plain click (Shift+click flips one click).
        protect: masks never overwrite labels of other objects or painted by hand.
        prefetch: prepare the neighbouring slices' features while idle.
        roi: work on a region around each object instead of the whole slice squashed to the
            model's input size (slices much larger than it; see ``engine/roi.py``).
        feature_store: keep image features on disk, in ``feature_folder`` (empty: the default
            folder, ``~/.cache/napari-sam2/features``), one store per image, reused when the
            image is opened again; ``store_note`` says which store is used, or why none.
        objects: the objects in creation order; ``current_object`` gets new prompts.
        direction / max_frames: propagation settings (max_frames per direction, None: all).
        status: one line saying what the annotator does or last did.
        busy: whether a job is running or waiting.
        progress: the running propagation's progress, or None.
    """

    image: Image | None = None
    tracked_axis: int | None = None
    channel_axis: int | None = None
    intensity: str = "auto"
    fixed_range: tuple[float, float] | None = None
    level: int | None = None
    model_name: str = "sam2.1_hiera_tiny"
    checkpoint: str = ""
    device: str = "auto"
    image_size: int | None = None
    precision: str = "auto"
    loaded: str = ""
    positive: bool = True
    protect: bool = True
    prefetch: bool = True
    roi: bool = False
    feature_store: bool = False
    feature_folder: str = ""
    store_note: str = ""
    objects: tuple[ObjectInfo, ...] = ()
    current_object: int | None = None
    direction: str = "both"
    max_frames: int | None = None
    status: str = "No model loaded."
    busy: bool = False
    progress: Progress | None = None

    @property
    def object_ids(self) -> list[int]:
        return [info.id for info in self.objects]

    def object_name(self, obj_id: int) -> str:
        for info in self.objects:
            if info.id == obj_id:
                return info.name
        return f"object {obj_id}"
