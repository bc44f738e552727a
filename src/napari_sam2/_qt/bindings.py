"""Two-way binding of magicgui widgets to fields of the annotator's evented state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["bind"]


def _same(value: Any) -> Any:
    return value


def bind(
    widget,
    state,
    field: str,
    *,
    to_widget: Callable[[Any], Any] = _same,
    to_state: Callable[[Any], Any] = _same,
    on_error: Callable[[Exception], None] | None = None,
) -> Callable[[], None]:
    """Keep ``widget.value`` and ``state.<field>`` equal, whichever side changes.

    ``to_widget`` / ``to_state`` convert between the two (e.g. a spin box's 0 and None). An
    exception while setting the state (a bad value) goes to ``on_error`` and the widget shows the
    state's value again. Returns a function that disconnects both directions.
    """
    busy = [False]

    def from_state(event=None) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            widget.value = to_widget(getattr(state, field))
        except ValueError:
            pass  # not among the widget's choices (yet): it follows at the next change
        finally:
            busy[0] = False

    def from_widget(value) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            setattr(state, field, to_state(value))
        except Exception as err:  # noqa: BLE001 - shown to the user, the state wins
            if on_error is None:
                raise
            on_error(err)
            busy[0] = False
            from_state()
        finally:
            busy[0] = False

    emitter = getattr(state.events, field)
    emitter.connect(from_state)
    widget.changed.connect(from_widget)
    from_state()

    def unbind() -> None:
        emitter.disconnect(from_state)
        widget.changed.disconnect(from_widget)

    return unbind
