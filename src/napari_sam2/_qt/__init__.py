"""Qt widgets of the napari plugin: the only part of napari-sam2 that imports qtpy."""
