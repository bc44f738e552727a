import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam2._napari.geometry import current_frame, geometry_for


def test_3d_tracks_first_slider_axis_and_honours_scale():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((8, 20, 30)), scale=(3.0, 1.0, 1.0), translate=(6, 0, 0))
    viewer.dims.set_point(0, 6 + 3 * 5)  # world z of slice 5
    geometry = geometry_for(viewer, layer)
    assert geometry.tracked_axis == 0
    assert geometry.frame_axes == (1, 2)
    assert geometry.frame_shape == (20, 30)
    assert geometry.num_frames == 8
    assert current_frame(viewer, layer, geometry) == 5


def test_4d_holds_the_other_slider_axis():
    viewer = ViewerModel()
    data = np.arange(3 * 4 * 5 * 6).reshape(3, 4, 5, 6)
    layer = viewer.add_image(data)
    viewer.dims.set_current_step(1, 2)
    geometry = geometry_for(viewer, layer)
    assert geometry.tracked_axis == 0
    assert geometry.held == ((1, 2),)
    frames = data[geometry.frames_index()]
    np.testing.assert_array_equal(frames, data[:, 2])
    assert geometry.engine_axes() == (0, None)
    # Pixels (row 1, col 4) of frame 2 land at t=2, z=2 of a labels array.
    labels = np.zeros(geometry.shape, dtype=int)
    labels[geometry.labels_index(2, np.array([1]), np.array([4]))] = 7
    assert labels[2, 2, 1, 4] == 7 and labels.sum() == 7
    assert geometry.frame_of([1.2, 2.0, 0, 0]) == 1
    assert geometry.frame_of([1.0, 3.0, 0, 0]) is None  # another z: not these frames

    chosen = geometry_for(viewer, layer, tracked_axis=1)
    assert chosen.tracked_axis == 1 and chosen.held == ((0, viewer.dims.current_step[0]),)


def test_channel_axis_is_passed_and_repeated_when_writing():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((5, 2, 10, 12)))
    geometry = geometry_for(viewer, layer, channel_axis=1)
    assert geometry.tracked_axis == 0 and geometry.held == ()
    assert geometry.engine_axes() == (0, 1)
    index = geometry.labels_index(3, np.array([4]), np.array([5]))
    labels = np.zeros(geometry.shape, dtype=int)
    labels[index] = 1
    assert labels[3, :, 4, 5].tolist() == [1, 1] and labels.sum() == 2


def test_2d_and_rgb_are_single_frames():
    viewer = ViewerModel()
    grey = viewer.add_image(np.zeros((10, 12)))
    assert geometry_for(viewer, grey).tracked_axis is None
    assert geometry_for(viewer, grey).num_frames == 1
    viewer.layers.clear()
    rgb = viewer.add_image(np.zeros((4, 10, 12, 3), dtype=np.uint8), rgb=True)
    geometry = geometry_for(viewer, rgb)
    assert geometry.shape == (4, 10, 12) and geometry.rgb
    assert geometry.tracked_axis == 0
    assert rgb.data[geometry.frames_index()].shape == (4, 10, 12, 3)


def test_3d_view_is_refused_with_advice():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((4, 10, 12)))
    viewer.dims.ndisplay = 3
    with pytest.raises(ValueError, match="2-D view"):
        geometry_for(viewer, layer)


def test_bad_axis_choice_names_the_choices():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((4, 10, 12)))
    with pytest.raises(ValueError, match=r"non-displayed axes \[0\]"):
        geometry_for(viewer, layer, tracked_axis=2)
