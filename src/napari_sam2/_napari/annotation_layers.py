"""The layers the annotator adds for its image: Points (clicks), Shapes (boxes), Labels (output).

Each layer's metadata names its role and its image, so that choosing the image again adopts the
layers instead of adding new ones. Prompt layers report their edits, take their new prompts'
object and polarity from the annotator, and are coloured: a point's face by its polarity, a
point's border and a box's edge by its object's colour in the Labels layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from .labels import make_labels_layer
from .objects import ObjectRegistry
from .prompts import NEGATIVE_COLOUR, POSITIVE_COLOUR, make_points_layer, make_shapes_layer
from .session import FrameSettings

__all__ = ["IMAGE_KEY", "ROLE_KEY", "AnnotationLayers"]

ROLE_KEY = "napari_sam2_role"
IMAGE_KEY = "napari_sam2_image"

KeyActions = Mapping[str, Callable[[], object]]


def _key_handler(action: Callable[[], object]) -> Callable[[object], object]:
    return lambda _layer: action()


@dataclass(eq=False)
class AnnotationLayers:
    """The prompt layers and the output Labels layer of the chosen image.

    Args:
        settings: which image is annotated (in which viewer), and its slice geometry.
        objects: the objects; new prompts belong to the current one.
        on_edit: called after every finished prompt edit (add, move, delete).
        closed: whether the annotator is closed; edits are then ignored.
        keys / point_keys: key name -> action, bound on every layer / on Points layers only.

    Attributes ``points_layer``, ``shapes_layer`` and ``labels_layer`` are None until created
    or adopted; ``positive`` is the polarity of the next click.
    """

    settings: FrameSettings
    objects: ObjectRegistry
    _: KW_ONLY
    on_edit: Callable[[], None]
    closed: Callable[[], bool]
    keys: KeyActions
    point_keys: KeyActions
    points_layer: Points | None = field(default=None, init=False)
    shapes_layer: Shapes | None = field(default=None, init=False)
    labels_layer: Labels | None = field(default=None, init=False)
    positive: bool = field(default=True, init=False)
    _muted: int = field(default=0, init=False, repr=False)

    @property
    def viewer(self):
        return self.settings.viewer

    # ------------------------------------------------------------------ finding and creating
    def forget_all(self) -> None:
        """Stop tracking the layers (another image was chosen); they stay in the viewer."""
        self.points_layer = self.shapes_layer = self.labels_layer = None

    def adopt(self, image: Image) -> list[int]:
        """Take over the layers a previous annotator made for ``image``; returns the object ids
        their prompts use (points first, then boxes; repeats possible)."""
        for layer in self.viewer.layers:
            role = layer.metadata.get(ROLE_KEY)
            if role is None or layer.metadata.get(IMAGE_KEY) != image.name:
                continue
            setattr(self, f"{role}_layer", layer)
            self._bind_keys(layer)
            if role in ("points", "shapes"):
                self._connect(layer)
        found: list[int] = []
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None and len(layer.data):
                found += np.unique(np.asarray(layer.features["object"], dtype=int)).tolist()
        return found

    def ensure_prompt_layers(self) -> None:
        """Add the Shapes and Points layers of the image if missing (the image must be set)."""
        image = self.settings.image
        obj_id = self.objects.current
        if self.shapes_layer is None or self.shapes_layer not in self.viewer.layers:
            self.shapes_layer = self._add_role_layer(
                make_shapes_layer(image, f"{image.name} SAM 2 boxes", obj_id), "shapes"
            )
            self._connect(self.shapes_layer)
        if self.points_layer is None or self.points_layer not in self.viewer.layers:
            self.points_layer = self._add_role_layer(
                make_points_layer(image, f"{image.name} SAM 2 points", obj_id), "points"
            )
            self._connect(self.points_layer)
            self.points_layer.mode = "add"

    def ensure_labels(self) -> Labels | None:
        """The output Labels layer, added (image-shaped, aligned) if missing; None without an
        image. Raises ValueError when the image's slice geometry is unusable."""
        if self.labels_layer is not None and self.labels_layer in self.viewer.layers:
            return self.labels_layer
        image = self.settings.image
        if image is None:
            return None
        geometry = self.settings.geometry()
        active = self.viewer.layers.selection.active
        self.labels_layer = self._add_role_layer(
            make_labels_layer(image, geometry.shape, f"{image.name} SAM 2 labels"), "labels"
        )
        # Adding a layer makes it active; clicks should keep going to the points layer.
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self.apply_current_object()
        return self.labels_layer

    def _add_role_layer(self, layer, role: str):
        layer.metadata[ROLE_KEY] = role
        layer.metadata[IMAGE_KEY] = self.settings.image.name
        self.viewer.add_layer(layer)
        self._bind_keys(layer)
        return layer

    def _bind_keys(self, layer) -> None:
        keys = dict(self.keys)
        if isinstance(layer, Points):
            keys.update(self.point_keys)
        for key, action in keys.items():
            layer.bind_key(key, _key_handler(action), overwrite=True)

    # ------------------------------------------------------------------ events
    def _connect(self, layer) -> None:
        layer.events.data.connect(self.on_prompt_data)
        if isinstance(layer, Points) and self.on_points_press not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.insert(0, self.on_points_press)

    def on_points_press(self, layer: Points, event) -> None:
        # Runs before napari's add-mode callback, so the point added on release gets the
        # polarity chosen by the modifier held at press.
        negative = "Shift" in {str(m) for m in getattr(event, "modifiers", ())}
        label = int(self.positive != negative)
        layer.feature_defaults = {"object": self.objects.current or 1, "label": label}

    def on_prompt_data(self, event) -> None:
        if self._muted or self.closed():
            return
        action = str(getattr(event, "action", "changed"))
        if action not in ("added", "changed", "removed"):
            return
        self._restore_defaults()
        self._recolour_prompts()
        self.on_edit()

    def forget(self, layer) -> None:
        """Stop listening to a prompt layer the user removed from the viewer."""
        layer.events.data.disconnect(self.on_prompt_data)
        if layer is self.points_layer:
            self.points_layer = None
        else:
            self.shapes_layer = None

    def disconnect(self) -> None:
        """Stop listening to both prompt layers (the annotator closes)."""
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None:
                with contextlib.suppress(Exception):
                    layer.events.data.disconnect(self.on_prompt_data)
                with contextlib.suppress(ValueError):
                    layer.mouse_drag_callbacks.remove(self.on_points_press)

    # ------------------------------------------------------------------ current object, colours
    def _restore_defaults(self) -> None:
        obj_id = self.objects.current or 1
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {"object": obj_id, "label": int(self.positive)}
        if self.shapes_layer is not None:
            self.shapes_layer.feature_defaults = {"object": obj_id}

    def apply_current_object(self) -> None:
        """New prompts belong to the current object and the Labels layer paints it."""
        if self.objects.current is None:
            return
        self._restore_defaults()
        if self.labels_layer is not None:
            self.labels_layer.selected_label = self.objects.current

    def toggle_polarity(self) -> bool:
        """Switch whether new clicks are positive (True) or negative; returns the new state."""
        self.positive = not self.positive
        self._restore_defaults()
        return self.positive

    def _colour(self, obj_id: int) -> np.ndarray:
        if self.labels_layer is not None:
            return np.asarray(self.labels_layer.get_color(obj_id), dtype=np.float32)
        return np.ones(4, dtype=np.float32)

    def object_colour(self, obj_id: int) -> tuple[float, float, float, float]:
        """RGBA in [0, 1] of ``obj_id`` in the output Labels layer."""
        return tuple(float(c) for c in self._colour(obj_id))

    def _recolour_prompts(self) -> None:
        self._muted += 1
        try:
            points = self.points_layer
            if points is not None and len(points.data):
                labels = np.asarray(points.features["label"], dtype=bool)
                points.face_color = np.where(labels[:, None], POSITIVE_COLOUR, NEGATIVE_COLOUR)
                objects = np.asarray(points.features["object"], dtype=int)
                points.border_color = np.array([self._colour(o) for o in objects])
            shapes = self.shapes_layer
            if shapes is not None and shapes.nshapes:
                objects = np.asarray(shapes.features["object"], dtype=int)
                shapes.edge_color = np.array([self._colour(o) for o in objects])
        finally:
            self._muted -= 1

    # ------------------------------------------------------------------ prompts
    def has_prompts(self) -> bool:
        return any(
            layer is not None and len(layer.data)
            for layer in (self.points_layer, self.shapes_layer)
        )

    def remove_prompts(self, obj_id: int) -> None:
        """Delete every point and box of ``obj_id``, without reporting it as an edit."""
        self._muted += 1
        try:
            for layer in (self.points_layer, self.shapes_layer):
                if layer is None or not len(layer.data):
                    continue
                mine = np.flatnonzero(np.asarray(layer.features["object"]) == obj_id)
                if mine.size:
                    layer.selected_data = set(mine.tolist())
                    layer.remove_selected()
        finally:
            self._muted -= 1

    def add_point(self, world_position, positive: bool, obj_id: int | None) -> None:
        """Add a click at ``world_position`` (full world coordinates) to the Points layer."""
        points = self.points_layer
        points.feature_defaults = {
            "object": obj_id or self.objects.current,
            "label": int(positive),
        }
        points.add(points.world_to_data(world_position))

    def add_box(self, world_corner_a, world_corner_b, obj_id: int | None) -> None:
        """Add the rectangle between two opposite world corners (on one slice) as a box."""
        shapes = self.shapes_layer
        a = np.asarray(shapes.world_to_data(world_corner_a), dtype=float)
        b = np.asarray(shapes.world_to_data(world_corner_b), dtype=float)
        row_axis, col_axis = self.settings.geometry().frame_axes
        corners = [(a, a), (a, b), (b, b), (b, a)]  # (row from, column from), clockwise
        vertices = np.repeat(a[None], 4, axis=0)
        for vertex, (row_from, col_from) in zip(vertices, corners, strict=True):
            vertex[row_axis], vertex[col_axis] = row_from[row_axis], col_from[col_axis]
        shapes.feature_defaults = {"object": obj_id or self.objects.current}
        shapes.add_rectangles(vertices)
