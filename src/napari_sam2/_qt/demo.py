"""``napari-sam2 demo``: napari with the demo stack and the SAM 2 annotator docked."""

from __future__ import annotations

__all__ = ["main", "open_demo"]


def open_demo(viewer=None):
    """Add the demo stack and dock the annotator in ``viewer`` (a new viewer when None).

    Returns:
        ``(viewer, widget)``; the widget is an
        :class:`~napari_sam2._qt.widget.AnnotatorWidget`.
    """
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="napari-sam2 demo")
    viewer.open_sample("napari-sam2", "demo_stack")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 annotator")
    return viewer, widget


def main() -> int:
    """Open the demo and run napari's event loop until the window closes; returns 0."""
    import napari
    from napari.utils.notifications import show_info

    open_demo()
    show_info(
        "Press 'Load model' (the first time downloads the weights), then click a cell on any "
        "slice and press 'Propagate'."
    )
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
