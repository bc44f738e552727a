"""What the annotator segments and the engine session that does it.

:class:`FrameSettings` holds the chosen image layer and how its frames are read (tracked axis,
channel axis, intensity mapping). :class:`Sessions` keeps one engine
:class:`~napari_sam2.engine.tracker.Tracker` over those frames and rebuilds it when the image,
the slice geometry, the intensity mapping or the model changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from napari.layers import Image

from ..engine.tracker import Tracker
from .geometry import SliceGeometry, current_frame, geometry_for, layer_array
from .prompts import FramePrompt

__all__ = ["INTENSITY_MODES", "NO_IMAGE", "NO_MODEL", "FrameSettings", "Session", "Sessions"]

INTENSITY_MODES = ("auto", "contrast limits", "fixed")
NO_IMAGE = (
    "No image layer to segment. Open an image (File > Open, or File > Open Sample > "
    "napari-sam2 > SAM 2 demo stack) and choose it under 'Image'."
)
NO_MODEL = "No SAM 2 model is loaded yet. Choose a model and press 'Load model', then try again."


class FrameSettings:
    """The image layer to annotate and how its frames reach SAM.

    Attributes:
        image: the napari Image layer, or None.
        tracked_axis / channel_axis: layer axes, None for automatic / no channels.
        intensity: one of :data:`INTENSITY_MODES`; ``fixed_range`` is its (lo, hi) for "fixed".
    """

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.image: Image | None = None
        self.tracked_axis: int | None = None
        self.channel_axis: int | None = None
        self.intensity = "auto"
        self.fixed_range: tuple[float, float] | None = None

    def choose_image(self, image: Image | None) -> None:
        """Annotate ``image`` from now on; its axes are chosen automatically until set."""
        self.image = image
        self.tracked_axis = self.channel_axis = None

    def default_image(self) -> Image | None:
        """The active layer if it is an image, else the top-most image layer, else None."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None

    def set_axes(self, tracked_axis: int | None, channel_axis: int | None) -> None:
        if tracked_axis is not None and tracked_axis == channel_axis:
            raise ValueError("The tracked axis and the channel axis must differ; choose another.")
        self.tracked_axis = None if tracked_axis is None else int(tracked_axis)
        self.channel_axis = None if channel_axis is None else int(channel_axis)

    def set_intensity(self, mode: str, fixed_range: tuple[float, float] | None = None) -> None:
        if mode not in INTENSITY_MODES:
            raise ValueError(f"intensity mode must be one of {INTENSITY_MODES}, got {mode!r}")
        if mode == "fixed":
            if fixed_range is None or not float(fixed_range[0]) < float(fixed_range[1]):
                raise ValueError(f"a fixed intensity range needs lo < hi, got {fixed_range!r}")
            self.fixed_range = (float(fixed_range[0]), float(fixed_range[1]))
        self.intensity = mode

    def intensity_range(self) -> tuple[float, float] | None:
        """The (lo, hi) that maps to SAM's [0, 1], or None for the engine's automatic range."""
        if self.intensity == "contrast limits":
            lo, hi = self.image.contrast_limits
            return (float(lo), float(hi))
        if self.intensity == "fixed":
            return self.fixed_range
        return None

    def geometry(self) -> SliceGeometry:
        """The current slice geometry of the image layer (raises ValueError without one)."""
        if self.image is None:
            raise ValueError(NO_IMAGE)
        return geometry_for(
            self.viewer,
            self.image,
            tracked_axis=self.tracked_axis,
            channel_axis=self.channel_axis,
        )

    def axis_choices(self) -> list[int]:
        """Layer axes that can be tracked or hold channels: the non-displayed ones."""
        if self.image is None:
            return []
        try:
            return [a for a in range(self.image.ndim) if a not in self.geometry().frame_axes]
        except ValueError:
            return []

    def current_frame(self) -> int:
        """Index of the slice the viewer shows along the tracked axis."""
        return current_frame(self.viewer, self.image, self.geometry())


@dataclass
class Session:
    """One tracker over the frames of one image at one geometry and intensity setting."""

    key: tuple
    geometry: SliceGeometry
    tracker: Tracker
    image: Image


class Sessions:
    """The engine session of the current settings and model, and what was sent to it.

    Attributes:
        model: the SAM 2 network, or None before one is loaded.
        current: the live :class:`Session`, or None.
        sent: the prompt of each (object id, frame) group the engine has been given.
    """

    def __init__(self, settings: FrameSettings) -> None:
        self.viewer = settings.viewer
        self.model = None
        self.current: Session | None = None
        self.sent: dict[tuple[int, int], FramePrompt] = {}
        self._settings = settings

    def ensure(self) -> Session:
        """The tracker for the current image, geometry and intensity; rebuilt when one changes.

        Raises ValueError (with what to do) without an image in the viewer or without a model.
        """
        settings = self._settings
        image = settings.image
        if image is None or image not in self.viewer.layers:
            raise ValueError(NO_IMAGE)
        if self.model is None:
            raise ValueError(NO_MODEL)
        geometry = settings.geometry()
        span = settings.intensity_range()
        key = (id(image), geometry.key(), settings.intensity, span, id(self.model))
        if self.current is not None and self.current.key == key:
            return self.current
        frames = layer_array(image)[geometry.frames_index()]
        axis, channel_axis = geometry.engine_axes()
        tracker = Tracker(
            self.model, frames, axis=axis, channel_axis=channel_axis, intensity_range=span
        )
        self.current = Session(key, geometry, tracker, image)
        self.sent = {}
        return self.current

    def drop(self) -> None:
        """Forget the tracker and what it was sent; the next :meth:`ensure` builds a new one."""
        self.current = None
        self.sent = {}
