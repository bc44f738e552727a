"""The layers the annotator adds for an image: Points (clicks), Shapes (boxes), Labels (output).

Each layer's metadata names its role and its image, so that choosing the image again adopts
the layers instead of adding new ones. :class:`ImageLayers` is one image's set: it creates and
adopts them, colours the prompts, reads the modifiers of a real click (napari hands vispy
``Key`` objects, compared by name) and reports edits through callbacks. It keeps what a deleted
prompt layer held, so the prompts come back with the next layer instead of vanishing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.colormaps import CyclicLabelColormap

from .multiscale import downsample_factors, level_for_shape, level_shapes

__all__ = [
    "IMAGE_KEY",
    "NEGATIVE_COLOUR",
    "OBJECT_COLOURS",
    "POSITIVE_COLOUR",
    "ROLE_KEY",
    "ImageLayers",
    "LayerContent",
    "is_shift",
]

ROLE_KEY = "napari_sam2_role"
IMAGE_KEY = "napari_sam2_image"
POSITIVE_COLOUR = np.array([0.2, 1.0, 0.2, 1.0], dtype=np.float32)
NEGATIVE_COLOUR = np.array([1.0, 0.15, 0.15, 1.0], dtype=np.float32)
#: Bright, saturated colours that stand out on grey images; object 1 is yellow.
OBJECT_COLOURS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 0.85, 0.0, 1.0],
        [0.0, 0.9, 1.0, 1.0],
        [1.0, 0.2, 0.9, 1.0],
        [0.5, 1.0, 0.0, 1.0],
        [1.0, 0.5, 0.0, 1.0],
        [0.3, 0.5, 1.0, 1.0],
        [1.0, 0.15, 0.15, 1.0],
        [0.0, 1.0, 0.6, 1.0],
        [0.7, 0.4, 1.0, 1.0],
        [1.0, 0.5, 0.7, 1.0],
        [0.0, 0.75, 0.75, 1.0],
        [0.95, 0.7, 0.25, 1.0],
    ],
    dtype=np.float32,
)
LABELS_DTYPE = np.uint32
LABELS_OPACITY = 0.6


def is_shift(modifiers) -> bool:
    """Whether a mouse event's modifiers hold Shift (vispy ``Key`` objects, or names)."""
    return any(getattr(key, "name", key) == "Shift" for key in modifiers or ())


@dataclass
class LayerContent:
    """What a prompt layer held: its data and features (to restore it, or undo an edit)."""

    data: list | np.ndarray
    features: pd.DataFrame
    shape_type: list[str] | None = None

    def count(self) -> int:
        return len(self.data)


def _transform(image: Image, factors=None) -> dict:
    """The image's transform; with ``factors`` (a pyramid level's downsample factors), the one
    napari draws that level with: the scale times the factors (see :mod:`.multiscale`)."""
    scale = image.scale if factors is None else np.asarray(image.scale) * np.asarray(factors)
    return {"scale": scale, "translate": image.translate, "affine": image.affine}


def set_feature_defaults(layer: Points | Shapes, values: dict) -> None:
    """Give ``layer``'s new prompts ``values`` (feature name -> value). napari rebuilds its
    pandas tables on every set, 3-20 ms each on the CPU here and several per click, so a set that
    changes nothing is skipped."""
    current = layer.feature_defaults
    if len(current) == 1 and all(
        name in current and current[name].iloc[0] == value for name, value in values.items()
    ):
        return
    layer.feature_defaults = values


def _set_colours(layer: Points | Shapes, name: str, rgba) -> None:
    """Set a per-prompt colour array unless it is shown already: each set makes napari rebuild
    the layer's visual on the main thread, which a click waits for."""
    rgba = np.asarray(rgba, dtype=np.float32).reshape(-1, 4)
    current = np.asarray(getattr(layer, name), dtype=np.float32)
    if current.shape == rgba.shape and np.allclose(current, rgba, atol=1e-3):
        return
    setattr(layer, name, rgba)


def point_features() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "object": pd.Series([], dtype=np.int64),
            "label": pd.Series([], dtype=np.int64),
            "plane": pd.Series([], dtype=object),
        }
    )


def shape_features() -> pd.DataFrame:
    return pd.DataFrame(
        {"object": pd.Series([], dtype=np.int64), "plane": pd.Series([], dtype=object)}
    )


class ImageLayers:
    """The prompt layers and the output Labels layer of one image.

    Args:
        viewer: the napari viewer.
        image: the Image layer.
        on_edit: called after every finished prompt edit (add, move, delete).
        on_paint: called with the Labels layer's history item after each of its edits that
            the annotator did not make itself (a brush stroke, a fill, an erase).
        defaults: returns the feature defaults of the next prompt: ``object``, ``label``
            (polarity) and ``plane``.
    """

    def __init__(
        self,
        viewer,
        image: Image,
        *,
        on_edit: Callable[[], None],
        on_paint: Callable[[list], None],
        defaults: Callable[[], dict],
    ) -> None:
        self.viewer = viewer
        self.image = image
        self.points: Points | None = None
        self.shapes: Shapes | None = None
        self.labels: Labels | None = None
        self._on_edit = on_edit
        self._on_paint = on_paint
        self._defaults = defaults
        self._muted = 0
        self.lost: dict[str, LayerContent] = {}
        #: Names of Labels layers left behind when the pyramid level changed.
        self.retired: list[str] = []
        self._adopt()

    # ------------------------------------------------------------------ finding and creating
    def _adopt(self) -> None:
        for layer in self.viewer.layers:
            if layer.metadata.get(IMAGE_KEY) != self.image.name:
                continue
            role = layer.metadata.get(ROLE_KEY)
            if role in ("points", "shapes", "labels"):
                setattr(self, role, layer)
                self._attach(layer)

    def adopted_objects(self) -> list[int]:
        """Object ids found in the prompt layers and the Labels layer, ascending."""
        found: set[int] = set()
        for layer in (self.points, self.shapes):
            if layer is not None and len(layer.data):
                found |= set(np.asarray(layer.features["object"], dtype=int).tolist())
        if self.labels is not None:
            found |= set(np.unique(np.asarray(self.labels.data)).tolist()) - {0}
        return sorted(int(i) for i in found)

    def alive(self, layer) -> bool:
        return layer is not None and layer in self.viewer.layers

    def ensure_prompt_layers(self) -> None:
        """Add the Shapes and Points layers if missing, with what a deleted one held."""
        image = self.image
        if not self.alive(self.shapes):
            self.shapes = Shapes(
                ndim=image.ndim,
                name=f"{image.name} SAM 2 boxes",
                features=shape_features(),
                face_color=[0, 0, 0, 0],
                edge_width=max(1.0, min(image.data.shape[-2:]) / 200.0),
                **_transform(image),
            )
            self._restore_lost("shapes", self.shapes)
            self._add(self.shapes, "shapes")
        if not self.alive(self.points):
            self.points = Points(
                np.empty((0, image.ndim)),
                name=f"{image.name} SAM 2 points",
                features=point_features(),
                face_color=POSITIVE_COLOUR,
                border_color="white",
                border_width=0.15,
                size=max(3.0, min(image.data.shape[-2:]) / 40.0) if not image.rgb else 5.0,
                **_transform(image),
            )
            self._restore_lost("points", self.points)
            self._add(self.points, "points")
            self.points.mode = "add"
        self.refresh_defaults()
        self.recolour()

    def ensure_labels(self, shape: tuple[int, ...]) -> Labels:
        """The output Labels layer (``shape``, aligned with the image), added if missing.

        For a multiscale image ``shape`` is the shape of the level being read, and the layer
        gets the transform napari draws that level with. A Labels layer of another level (the
        level was changed) is kept under a name with its level and no longer written to.
        """
        shapes = level_shapes(self.image)
        if self.alive(self.labels):
            if tuple(self.labels.data.shape) == tuple(shape) or len(shapes) == 1:
                return self.labels
            self._retire_labels(level_for_shape(shapes, self.labels.data.shape))
        level = level_for_shape(shapes, shape)
        factors = downsample_factors(shapes, level) if level else None
        active = self.viewer.layers.selection.active
        self.labels = Labels(
            np.zeros(shape, dtype=LABELS_DTYPE),
            name=f"{self.image.name} SAM 2 labels",
            opacity=LABELS_OPACITY,
            colormap=CyclicLabelColormap(colors=OBJECT_COLOURS),
            **_transform(self.image, factors),
        )
        self._add(self.labels, "labels")
        # Adding a layer makes it active; clicks should keep going to the points layer.
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return self.labels

    def _retire_labels(self, level: int | None) -> None:
        """Stop using the Labels layer (made at another pyramid level); it stays in the viewer
        with its pixels, renamed after its level, and is no longer adopted as this image's. An
        empty one (made before anything was segmented) is removed instead."""
        labels = self.labels
        with contextlib.suppress(Exception):
            labels.events.paint.disconnect(self._on_labels_paint)
        self.labels = None
        if not np.asarray(labels.data).any():
            self.viewer.layers.remove(labels)
            return
        labels.metadata.pop(ROLE_KEY, None)
        labels.metadata.pop(IMAGE_KEY, None)
        where = "another level" if level is None else f"level {level}"
        labels.name = f"{self.image.name} SAM 2 labels ({where})"
        self.retired.append(labels.name)

    def _add(self, layer, role: str) -> None:
        layer.metadata[ROLE_KEY] = role
        layer.metadata[IMAGE_KEY] = self.image.name
        self.viewer.add_layer(layer)
        self._attach(layer)

    def _attach(self, layer) -> None:
        if isinstance(layer, Points | Shapes):
            layer.events.data.connect(self._on_data)
        if isinstance(layer, Points) and self._on_press not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.insert(0, self._on_press)
        if isinstance(layer, Labels):
            layer.events.paint.connect(self._on_labels_paint)

    def detach(self) -> None:
        """Stop listening to the layers (another image is chosen, or the annotator closes)."""
        for layer in (self.points, self.shapes, self.labels):
            if layer is None:
                continue
            with contextlib.suppress(Exception):
                layer.events.data.disconnect(self._on_data)
            with contextlib.suppress(Exception):
                layer.events.paint.disconnect(self._on_labels_paint)
            with contextlib.suppress(ValueError):
                layer.mouse_drag_callbacks.remove(self._on_press)

    def select_prompts(self) -> None:
        """Make the Points layer active, so the next click is a prompt of this image."""
        if self.alive(self.points):
            self.viewer.layers.selection.active = self.points

    # ------------------------------------------------------------------ deleted layers
    def forget(self, layer) -> int:
        """The user deleted ``layer``: keep its content to restore; returns its prompt count."""
        for role in ("points", "shapes"):
            if layer is getattr(self, role):
                content = self._content_of(layer)
                if content is not None and content.count():
                    self.lost[role] = content
                with contextlib.suppress(Exception):
                    layer.events.data.disconnect(self._on_data)
                setattr(self, role, None)
                return 0 if content is None else content.count()
        if layer is self.labels:
            with contextlib.suppress(Exception):
                layer.events.paint.disconnect(self._on_labels_paint)
            self.labels = None
        return 0

    def _restore_lost(self, role: str, layer) -> None:
        content = self.lost.pop(role, None)
        if content is not None:
            self._set_content(layer, content)

    # ------------------------------------------------------------------ contents (undo)
    def content(self, role: str) -> LayerContent | None:
        """A copy of what the ``role`` ("points" or "shapes") layer holds, or what it held
        before it was deleted."""
        layer = getattr(self, role)
        if not self.alive(layer):
            return self.lost.get(role)
        return self._content_of(layer)

    @staticmethod
    def _content_of(layer) -> LayerContent:
        if isinstance(layer, Points):
            return LayerContent(np.array(layer.data, copy=True), layer.features.copy())
        return LayerContent(
            [np.array(v, copy=True) for v in layer.data],
            layer.features.copy(),
            list(layer.shape_type),
        )

    def restore(self, role: str, content: LayerContent | None) -> None:
        """Put ``content`` back into the ``role`` layer without reporting an edit."""
        layer = getattr(self, role)
        if content is None:
            content = LayerContent(
                [] if role == "shapes" else np.empty((0, self.image.ndim)),
                shape_features() if role == "shapes" else point_features(),
                [],
            )
        if not self.alive(layer):
            if content.count():
                self.lost[role] = content
            else:
                self.lost.pop(role, None)
            return
        self._set_content(layer, content)
        self.recolour()

    def _set_content(self, layer, content: LayerContent) -> None:
        with self.muted():
            if isinstance(layer, Points):
                layer.data = np.asarray(content.data).reshape(-1, self.image.ndim)
                layer.features = content.features.reset_index(drop=True)
            else:
                layer.data = []
                if content.count():
                    layer.add(list(content.data), shape_type=list(content.shape_type or []))
                layer.features = content.features.reset_index(drop=True)

    # ------------------------------------------------------------------ events
    @contextlib.contextmanager
    def muted(self):
        """Edits made inside are the annotator's own: no callbacks."""
        self._muted += 1
        try:
            yield
        finally:
            self._muted -= 1

    def _on_press(self, layer: Points, event) -> None:
        # Runs before napari's add-mode callback, so the point added on release gets the
        # polarity chosen by the modifier held at press.
        defaults = self._defaults()
        if is_shift(getattr(event, "modifiers", ())):
            defaults["label"] = 1 - int(defaults["label"])
        set_feature_defaults(layer, defaults)

    def _on_data(self, event) -> None:
        if self._muted:
            return
        action = str(getattr(event, "action", "changed"))
        if action not in ("added", "changed", "removed"):
            return
        self.refresh_defaults()
        self.recolour()
        self._on_edit()

    def _on_labels_paint(self, event) -> None:
        if not self._muted:
            self._on_paint(list(event.value))

    # ------------------------------------------------------------------ defaults and colours
    def refresh_defaults(self) -> None:
        """New prompts get the current object, polarity and plane."""
        defaults = self._defaults()
        if self.alive(self.points):
            set_feature_defaults(self.points, defaults)
        if self.alive(self.shapes):
            set_feature_defaults(
                self.shapes, {"object": defaults["object"], "plane": defaults["plane"]}
            )

    def colour(self, obj_id: int) -> np.ndarray:
        """RGBA in [0, 1] of ``obj_id`` in the output Labels layer."""
        index = 1 + (int(obj_id) - 1) % (len(OBJECT_COLOURS) - 1)
        return OBJECT_COLOURS[index]

    def recolour(self) -> None:
        """Points: face by polarity, border by object; boxes: edge by object."""
        with self.muted():
            points = self.points
            if self.alive(points) and len(points.data):
                labels = np.asarray(points.features["label"], dtype=bool)
                faces = np.where(labels[:, None], POSITIVE_COLOUR, NEGATIVE_COLOUR)
                _set_colours(points, "face_color", faces)
                objects = np.asarray(points.features["object"], dtype=int)
                _set_colours(points, "border_color", [self.colour(o) for o in objects])
            shapes = self.shapes
            if self.alive(shapes) and shapes.nshapes:
                objects = np.asarray(shapes.features["object"], dtype=int)
                _set_colours(shapes, "edge_color", [self.colour(o) for o in objects])

    # ------------------------------------------------------------------ prompts
    def remove_prompts(self, obj_id: int, frame_of=None) -> None:
        """Delete the points and boxes of ``obj_id`` (on the frames ``frame_of`` accepts, if
        given: a function of a layer data coordinate), without reporting an edit."""
        with self.muted():
            for layer in (self.points, self.shapes):
                if not self.alive(layer) or not len(layer.data):
                    continue
                mine = np.asarray(layer.features["object"]) == obj_id
                if frame_of is not None:
                    on_frame = [frame_of(np.atleast_2d(v)[0]) for v in layer.data]
                    mine &= np.asarray(on_frame, dtype=bool)
                indices = np.flatnonzero(mine)
                if indices.size:
                    layer.selected_data = set(indices.tolist())
                    layer.remove_selected()
        self.recolour()

    def add_point(self, world_position, defaults: dict) -> None:
        """Add a click at ``world_position`` (full world coordinates)."""
        set_feature_defaults(self.points, defaults)
        self.points.add(self.points.world_to_data(world_position))

    def add_box(self, world_a, world_b, frame_axes: tuple[int, int], defaults: dict) -> None:
        """Add the rectangle between two opposite world corners (on one slice)."""
        shapes = self.shapes
        a = np.asarray(shapes.world_to_data(world_a), dtype=float)
        b = np.asarray(shapes.world_to_data(world_b), dtype=float)
        row_axis, col_axis = frame_axes
        vertices = np.repeat(a[None], 4, axis=0)
        for vertex, (row_from, col_from) in zip(vertices, [(a, a), (a, b), (b, b), (b, a)]):
            vertex[row_axis], vertex[col_axis] = row_from[row_axis], col_from[col_axis]
        shapes.feature_defaults = {"object": defaults["object"], "plane": defaults["plane"]}
        shapes.add_rectangles(vertices)
