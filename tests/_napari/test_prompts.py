import numpy as np
from napari.components import ViewerModel

from napari_sam2._napari.geometry import geometry_for
from napari_sam2._napari.prompts import collect_prompts, make_points_layer, make_shapes_layer


def _rect(frame, r0, c0, r1, c1):
    return np.array([[frame, r0, c0], [frame, r0, c1], [frame, r1, c1], [frame, r1, c0]], float)


def _setup(scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0)):
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((6, 40, 50)), scale=scale, translate=translate)
    points = viewer.add_layer(make_points_layer(image, "p", 1))
    shapes = viewer.add_layer(make_shapes_layer(image, "s", 1))
    return viewer, image, points, shapes


def test_points_and_boxes_group_by_object_and_frame_in_pixel_xy():
    viewer, image, points, shapes = _setup(scale=(2.0, 0.5, 0.25), translate=(10, 5, -3))
    # World positions: z = 10 + 2*frame, row = 5 + 0.5*r, col = -3 + 0.25*c.
    points.feature_defaults = {"object": 1, "label": 1}
    points.add(points.world_to_data([10 + 2 * 3, 5 + 0.5 * 12, -3 + 0.25 * 20]))
    points.feature_defaults = {"object": 1, "label": 0}
    points.add(points.world_to_data([10 + 2 * 3, 5 + 0.5 * 30, -3 + 0.25 * 40]))
    shapes.feature_defaults = {"object": 2}
    shapes.add_rectangles(np.array([[1, 4, 6], [1, 4, 16], [1, 14, 16], [1, 14, 6]], float))
    groups, problems = collect_prompts(points, shapes, image, geometry_for(viewer, image))
    assert problems == []
    assert set(groups) == {(1, 3), (2, 1)}
    np.testing.assert_allclose(groups[(1, 3)].points, [(20, 12), (40, 30)])
    assert groups[(1, 3)].labels == (1, 0)
    assert groups[(2, 1)].box == (6.0, 4.0, 16.0, 14.0)
    kwargs = groups[(1, 3)].engine_kwargs()
    assert kwargs["points"].shape == (2, 2) and kwargs["box"] is None


def test_outside_prompts_are_skipped_with_advice_and_kept_in_the_layer():
    viewer, image, points, shapes = _setup()
    points.add([2, 10, 10])
    points.add([2, 45, 10])  # row 45 of 40
    shapes.add_ellipses(_rect(2, 5, 5, 9, 9))
    shapes.add_rectangles(_rect(2, 100, 100, 120, 120))
    groups, problems = collect_prompts(points, shapes, image, geometry_for(viewer, image))
    assert list(groups) == [(1, 2)] and len(groups[(1, 2)].points) == 1
    assert any("outside image" in p and "Move it" in p for p in problems)
    assert any("only rectangles" in p for p in problems)
    assert any("box of object 1" in p for p in problems)
    assert len(points.data) == 2 and shapes.nshapes == 2


def test_two_boxes_for_one_object_keep_the_last():
    viewer, image, points, shapes = _setup()
    shapes.add_rectangles(_rect(0, 1, 1, 5, 5))
    shapes.add_rectangles(_rect(0, 10, 10, 20, 30))
    groups, problems = collect_prompts(points, shapes, image, geometry_for(viewer, image))
    assert groups[(1, 0)].box == (10.0, 10.0, 30.0, 20.0)
    assert any("more than one box" in p for p in problems)
