import numpy as np
from napari.components import ViewerModel

from napari_sam2._napari.geometry import geometry_for
from napari_sam2._napari.labels import make_labels_layer, next_free_id, write_mask


def test_write_mask_protects_other_ids_and_is_one_undo_step():
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((3, 8, 8)))
    geometry = geometry_for(viewer, image)
    labels = viewer.add_layer(make_labels_layer(image, geometry.shape, "out"))
    labels.data[1, 0:2, 0:2] = 9  # painted by hand
    mask = np.zeros((8, 8), bool)
    mask[0:4, 0:4] = True
    with labels.block_history():
        changed = write_mask(labels, geometry, 1, 3, mask)
    assert changed == 12
    assert (labels.data[1, 0:2, 0:2] == 9).all()
    assert (labels.data[1][mask & (labels.data[1] != 9)] == 3).all()
    assert labels.data[0].max() == 0 and labels.data[2].max() == 0

    smaller = np.zeros((8, 8), bool)
    smaller[0:3, 0:3] = True
    with labels.block_history():
        write_mask(labels, geometry, 1, 3, smaller)
    assert (labels.data[1] == 3).sum() == 9 - 4 + 0  # 3x3 minus the painted 2x2 corner
    labels.undo()
    assert (labels.data[1] == 3).sum() == 12
    labels.undo()
    assert (labels.data[1] == 3).sum() == 0 and (labels.data[1] == 9).sum() == 4

    with labels.block_history():
        write_mask(labels, geometry, 1, 9, mask, protect=False)
    assert (labels.data[1] == 9).sum() == 16


def test_next_free_id_skips_painted_and_known_ids():
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((2, 4, 4)))
    labels = viewer.add_layer(make_labels_layer(image, (2, 4, 4), "out"))
    assert next_free_id(labels, set()) == 1
    labels.data[0, 0, 0] = 5
    assert next_free_id(labels, {2}) == 6
    assert next_free_id(None, {2, 3}) == 4
