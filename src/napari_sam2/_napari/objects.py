"""The annotator's objects: their label ids in creation order, the current one, and the actions
that create, select and delete them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .labels import next_free_id

if TYPE_CHECKING:
    from napari.utils.events import EmitterGroup

    from .annotation_layers import AnnotationLayers
    from .segmentation import Segmentation

__all__ = ["ObjectActions", "ObjectRegistry"]


class ObjectRegistry:
    """Label ids (int) of the annotated objects, in creation order, and the current one.

    It only records; :class:`ObjectActions` announces changes and keeps layers in step.
    """

    def __init__(self) -> None:
        self._ids: list[int] = []
        self.current: int | None = None

    @property
    def ids(self) -> list[int]:
        """A copy of the ids, in creation order."""
        return list(self._ids)

    def add(self, obj_id: int) -> bool:
        """Record ``obj_id``; False when it was already known."""
        if obj_id in self._ids:
            return False
        self._ids.append(obj_id)
        return True

    def remove(self, obj_id: int) -> None:
        self._ids.remove(obj_id)

    def clear(self) -> None:
        """Forget every object (another image was chosen)."""
        self._ids, self.current = [], None

    def check(self, obj_id: int) -> int:
        """``obj_id`` as an int; ValueError when no such object exists."""
        obj_id = int(obj_id)
        if obj_id not in self._ids:
            raise ValueError(f"Object {obj_id} does not exist; the objects are {self._ids}.")
        return obj_id


class ObjectActions:
    """New, select and delete objects, keeping the layers, the engine and listeners in step.

    Args:
        registry: the objects.
        layers: the annotator's layers (current object, prompts, Labels).
        segmentation: forgets a deleted object in the engine and erases its pixels.
        events: the annotator's events; ``objects`` and ``current_object`` are emitted.
    """

    def __init__(
        self,
        registry: ObjectRegistry,
        layers: AnnotationLayers,
        segmentation: Segmentation,
        events: EmitterGroup,
    ) -> None:
        self._registry = registry
        self._layers = layers
        self._segmentation = segmentation
        self._events = events

    def register(self, obj_id: int) -> None:
        """Record ``obj_id`` (found in the prompts, say), announcing it when new."""
        if self._registry.add(obj_id):
            self._events.objects(value=self._registry.ids)

    def adopt(self, obj_ids: list[int]) -> None:
        """Register the objects of adopted prompt layers and select the first."""
        for obj_id in obj_ids:
            self.register(obj_id)
        if self._registry.ids:
            self.select(self._registry.ids[0])

    def new(self) -> int:
        """Start an object with an id used by no object and no painted label; select it."""
        obj_id = next_free_id(self._layers.labels_layer, set(self._registry.ids))
        self.register(obj_id)
        self.select(obj_id)
        return obj_id

    def select(self, obj_id: int) -> None:
        """Make ``obj_id`` current: new prompts belong to it and the Labels layer paints it."""
        obj_id = self._registry.check(obj_id)
        self._registry.current = obj_id
        self._layers.apply_current_object()
        self._events.current_object(value=obj_id)

    def delete(self, obj_id: int) -> None:
        """Remove ``obj_id``: its prompts, its engine state and its pixels (one undo step)."""
        registry = self._registry
        obj_id = registry.check(obj_id)
        self._layers.remove_prompts(obj_id)
        registry.remove(obj_id)
        # Before a new object is picked: with an inline runner its pixels are gone by then,
        # so the new object may reuse the id.
        self._segmentation.forget_object(obj_id)
        if registry.current == obj_id:
            remaining = registry.ids
            registry.current = remaining[-1] if remaining else None
            if registry.current is None:
                self.new()
            else:
                self.select(registry.current)
        self._events.objects(value=registry.ids)
