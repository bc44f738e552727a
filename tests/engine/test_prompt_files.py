"""Prompt files: parse CSVs written by napari's own writer, and malformed files."""

import numpy as np
import pytest

from napari_sam2.engine.prompt_files import (
    Prompt,
    group_prompts,
    read_boxes_csv,
    read_points_csv,
    read_prompts_csv,
    write_boxes_csv,
    write_points_csv,
)


def _napari_writers():
    pytest.importorskip("napari")
    from napari.layers import Points, Shapes
    from napari_builtins.io import napari_write_points, napari_write_shapes

    return Points, Shapes, napari_write_points, napari_write_shapes


def _save_points(path, data, **layer_kwargs):
    """Save a napari Points layer with napari's built-in CSV writer (what File > Save does)."""
    Points, _, write_points, _ = _napari_writers()
    data_, meta, _ = Points(np.asarray(data, dtype=float), **layer_kwargs).as_layer_data_tuple()
    assert write_points(str(path), data_, meta) == str(path)
    return path


def _save_shapes(path, data, shape_type, **layer_kwargs):
    _, Shapes, _, write_shapes = _napari_writers()
    layer = Shapes(
        [np.asarray(d, dtype=float) for d in data], shape_type=shape_type, **layer_kwargs
    )
    data_, meta, _ = layer.as_layer_data_tuple()
    assert write_shapes(str(path), data_, meta) == str(path)
    return path


def test_napari_3d_points_with_label_and_object_features(tmp_path):
    path = _save_points(
        tmp_path / "points.csv",
        [[2.0, 10.5, 20.25], [2.4, 12, 22], [3, 5, 6], [1.6, 30, 40]],
        features={"label": [1, 0, 1, 1], "object": [1, 1, 2, 1]},
    )
    assert path.read_text().splitlines()[0] == "index,axis-0,axis-1,axis-2,label,object"

    prompts = read_points_csv(path)

    assert [(p.frame, p.obj_id) for p in prompts] == [(2, 1), (3, 2)]
    first = prompts[0]
    # (row, col) -> (x, y); frame 1.6 rounds to 2 and joins the group, after the others
    np.testing.assert_allclose(first.points, [[20.25, 10.5], [22, 12], [40, 30]])
    np.testing.assert_array_equal(first.labels, [1, 0, 1])
    assert first.box is None
    np.testing.assert_allclose(prompts[1].points, [[6, 5]])


def test_napari_2d_points_without_features_default_to_positive_object_1(tmp_path):
    path = _save_points(tmp_path / "p2.csv", [[10.5, 20.25], [5, 6]])
    assert path.read_text().splitlines()[0] == "index,axis-0,axis-1"
    (prompt,) = read_points_csv(path)
    assert (prompt.frame, prompt.obj_id) == (0, 1)
    np.testing.assert_allclose(prompt.points, [[20.25, 10.5], [6, 5]])
    np.testing.assert_array_equal(prompt.labels, [1, 1])


def test_napari_points_with_bool_and_string_features(tmp_path):
    # A string feature turns napari's whole table into strings: labels become "True"/"False".
    path = _save_points(
        tmp_path / "p.csv",
        [[0, 1, 2], [0, 3, 4]],
        features={"label": [True, False], "note": ["a", "b"]},
    )
    (prompt,) = read_points_csv(path)
    np.testing.assert_array_equal(prompt.labels, [1, 0])


def test_tracked_axis_can_be_another_column(tmp_path):
    # (row, col, z) data with the tracked axis last
    path = _save_points(tmp_path / "p.csv", [[10, 20, 4]])
    (prompt,) = read_points_csv(path, axis=2)
    assert prompt.frame == 4
    np.testing.assert_allclose(prompt.points, [[20, 10]])
    (default_axis,) = read_points_csv(path)
    assert default_axis.frame == 10


def test_napari_shapes_rectangles_become_boxes(tmp_path):
    path = _save_shapes(
        tmp_path / "shapes.csv",
        [
            [[1, 2, 3], [1, 2, 8], [1, 9, 8], [1, 9, 3]],
            [[4, 0, 0], [4, 5, 0], [4, 5, 6], [4, 0, 6]],
        ],
        shape_type=["rectangle", "rectangle"],
        features={"object": [3, 4]},
    )
    header = path.read_text().splitlines()[0]
    assert header == "index,shape-type,vertex-index,axis-0,axis-1,axis-2"  # no features

    boxes = read_boxes_csv(path)

    # napari does not save shape features: ids are index + 1
    assert [(b.frame, b.obj_id) for b in boxes] == [(1, 1), (4, 2)]
    np.testing.assert_allclose(boxes[0].box, [3, 2, 8, 9])  # (x0, y0, x1, y1)
    np.testing.assert_allclose(boxes[1].box, [0, 0, 6, 5])
    assert boxes[0].points.shape == (0, 2)
    assert read_prompts_csv(path)[1].obj_id == 2


def test_napari_2d_shapes(tmp_path):
    path = _save_shapes(
        tmp_path / "s.csv", [[[2, 3], [2, 8], [9, 8], [9, 3]]], shape_type=["rectangle"]
    )
    (box,) = read_boxes_csv(path)
    assert box.frame == 0
    np.testing.assert_allclose(box.box, [3, 2, 8, 9])


def test_non_rectangle_shape_is_rejected_with_line(tmp_path):
    path = _save_shapes(
        tmp_path / "s.csv",
        [[[1, 2, 3], [1, 2, 8], [1, 9, 8], [1, 9, 3]], [[4, 0, 0], [4, 5, 5]]],
        shape_type=["rectangle", "line"],
    )
    with pytest.raises(ValueError, match=r"s\.csv, line 6: shape 1 is a 'line'"):
        read_boxes_csv(path)


def test_object_column_in_shapes_file(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text(
        "index,shape-type,vertex-index,axis-0,axis-1,axis-2,object\n"
        "0,rectangle,0,2.0,1.0,1.0,5\n"
        "0,rectangle,1,2.0,1.0,4.0,5\n"
        "0,rectangle,2,2.0,3.0,4.0,5\n"
        "0,rectangle,3,2.0,3.0,1.0,5\n"
    )
    (box,) = read_boxes_csv(path)
    assert (box.frame, box.obj_id) == (2, 5)
    np.testing.assert_allclose(box.box, [1, 1, 4, 3])


def test_round_trip_through_our_writers(tmp_path):
    prompts = [
        Prompt(0, 1, [[3.5, 4.0], [6, 7]], [1, 0]),
        Prompt(5, 2, [[1, 2]], [1], box=[1, 2, 9, 10]),
        Prompt(5, 3, box=[0, 0, 4, 4]),
    ]
    points_file = write_points_csv(tmp_path / "p.csv", prompts)
    boxes_file = write_boxes_csv(tmp_path / "b.csv", prompts)
    back = group_prompts(read_points_csv(points_file), read_boxes_csv(boxes_file))

    assert [(p.frame, p.obj_id) for p in back] == [(0, 1), (5, 2), (5, 3)]
    for original, read in zip(prompts, back, strict=True):
        np.testing.assert_allclose(read.points, original.points)
        np.testing.assert_array_equal(read.labels, original.labels)
        if original.box is None:
            assert read.box is None
        else:
            np.testing.assert_allclose(read.box, original.box)


def test_our_points_file_opens_in_napari(tmp_path):
    pytest.importorskip("napari")
    from napari_builtins.io._read import csv_to_layer_data

    path = write_points_csv(tmp_path / "p.csv", [Prompt(3, 2, [[10, 20]], [0])])
    data, meta, kind = csv_to_layer_data(str(path))
    assert kind == "points"
    np.testing.assert_allclose(data, [[3, 20, 10]])  # (frame, row, col)
    assert meta["properties"]["label"].tolist() == [0]
    assert meta["properties"]["object"].tolist() == [2]


def test_write_2d_rejects_other_frames(tmp_path):
    with pytest.raises(ValueError, match="frame 0"):
        write_points_csv(tmp_path / "p.csv", [Prompt(1, 1, [[1, 1]], [1])], ndim=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("index,x,y\n0,1,2\n", "line 1: expected coordinate columns 'axis-0'"),
        ("index,axis-0,axis-1\n0,1.0,2.0\n1,abc,3\n", "line 3: column 'axis-0' holds 'abc'"),
        ("index,axis-0,axis-1\n0,1.0\n", "line 2: has 2 values"),
        ("axis-0,axis-1,label\n1,2,5\n", "line 2: label '5' must be 1"),
        ("axis-0,axis-1,object\n1,2,1.5\n", "line 2: object id 1.5 is not a positive integer"),
        ("axis-0,axis-1,axis-2,axis-3\n1,2,3,4\n", "only 2-D .* and 3-D"),
        ("index,shape-type,vertex-index,axis-0,axis-1\n0,rectangle,0,1,1\n", "Shapes file"),
    ],
)
def test_bad_points_files_name_file_line_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_points_csv(path)
    assert str(path) in str(info.value)


def test_boxes_reader_rejects_points_file_and_two_boxes_per_object(tmp_path):
    points = tmp_path / "points.csv"
    points.write_text("index,axis-0,axis-1\n0,1,2\n")
    with pytest.raises(ValueError, match="not a napari Shapes file"):
        read_boxes_csv(points)
    boxes = tmp_path / "boxes.csv"
    rows = [f"{i},rectangle,{v},0,{r},{c},1" for i in (0, 1) for v, (r, c) in enumerate(
        [(0, 0), (0, 3), (3, 3), (3, 0)])]  # fmt: skip
    boxes.write_text(
        "index,shape-type,vertex-index,axis-0,axis-1,axis-2,object\n" + "\n".join(rows)
    )
    with pytest.raises(ValueError, match="line 6: rectangle 1 is a second box for object 1"):
        read_boxes_csv(boxes)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_points_csv("nowhere.csv")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"index,axis-0,axis-1,axis-1\n0,1,2,3\n", "line 1: column 'axis-1' appears twice"),
        (b"index,axis-0,axis-1\n0,1,2\n1,1,2,3\n", "line 3: has 4 values, but the header has 3"),
        (b"index,axis-0,axis-1\n0,1,2\n# caf\xe9\n", "line 3: byte 0xe9 is not UTF-8"),
        (b"\xff\xfe\x00i\x00n\x00d", "line 1: byte 0xff is not UTF-8"),
        (b"index,axis-0,axis-1\n0,1\x00,2\n", "line 2: holds a NUL character"),
        (b'index,axis-0,axis-1\n0,"1,2\n', r"line [12]"),
    ],
)
def test_csv_problems_name_the_file_and_the_row(tmp_path, data, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    for reader in (read_points_csv, read_boxes_csv, read_prompts_csv):
        with pytest.raises(ValueError, match=message) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_a_folder_given_as_the_file(tmp_path):
    with pytest.raises(ValueError, match="is a folder") as info:
        read_points_csv(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_writers_replace_files_atomically(tmp_path, monkeypatch):
    path = tmp_path / "points.csv"
    path.write_text("the previous file")
    prompts = [Prompt(0, 1, [[1, 2]], [1])]

    def failing_writerow(self, row):
        raise OSError("disk full")

    import csv

    real_writer = csv.writer

    class Broken:
        def __init__(self, handle):
            self._inner = real_writer(handle)
            self.calls = 0

        def writerow(self, row):
            self.calls += 1
            if self.calls > 1:
                raise OSError("disk full")
            return self._inner.writerow(row)

    monkeypatch.setattr(csv, "writer", Broken)
    with pytest.raises(OSError, match="disk full"):
        write_points_csv(path, prompts)
    assert path.read_text() == "the previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv"]
    monkeypatch.undo()
    write_points_csv(path, prompts)
    assert read_points_csv(path)[0].obj_id == 1


# ---------------------------------------------------------------------------- fuzzing

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_HEADERS = st.one_of(
    st.sampled_from(
        [
            "index,axis-0,axis-1,axis-2",
            "index,axis-0,axis-1",
            "axis-0,axis-1,axis-2,label,object",
            "index,shape-type,vertex-index,axis-0,axis-1,axis-2",
            "index,axis-0,axis-0,axis-1",
            "axis-0,axis-1,axis-2,axis-3",
            "",
        ]
    ),  # fmt: skip
    st.lists(
        st.sampled_from(
            [
                "index",
                "axis-0",
                "axis-1",
                "axis-2",
                "label",
                "object",
                "shape-type",
                "vertex-index",
                "axis-x",
                "é",
            ]
        ),
        max_size=6,
    ).map(",".join),  # fmt: skip
)
_CELLS = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "2.0",
            "1.5",
            "-1",
            "nan",
            "inf",
            "1e400",
            "true",
            "no",
            "rectangle",
            "ellipse",
            "",
            " 3 ",
            '"',
            "4294967296",
        ]
    ),  # fmt: skip
    st.text(max_size=4),
    st.integers(-5, 70).map(str),
    st.floats(-10, 80).map(repr),
)
_NUMERIC = st.one_of(st.integers(0, 5).map(str), st.floats(0, 60).map(repr))
_ROWS = st.one_of(
    st.lists(st.lists(_CELLS, max_size=7).map(",".join), max_size=6),
    # rows shaped like napari's (four numbers), so many files get past the first checks
    st.lists(st.lists(_NUMERIC, min_size=4, max_size=4).map(",".join), min_size=1, max_size=4),
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(header=_HEADERS, rows=_ROWS, encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
       axis=st.integers(-4, 3))  # fmt: skip
def test_fuzz_csv_contents_are_read_or_refused_naming_the_file(
    tmp_path_factory, header, rows, encoding, axis
):
    """Any CSV text, in any encoding: prompts with finite coordinates, integer frames and ids
    and 0/1 labels, or a ValueError that names the file. Nothing else."""
    path = tmp_path_factory.mktemp("csv") / "fuzz.csv"
    text = "\n".join([header, *rows]) + "\n"
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        path.write_bytes(text.encode("utf-8"))
    try:
        prompts = read_prompts_csv(path, axis=axis)
    except ValueError as err:
        assert str(path) in str(err) or "axis=" in str(err)
        event("refused")
        return
    event(f"read {len(prompts)} prompt(s)")
    for prompt in prompts:
        assert isinstance(prompt.frame, int) and isinstance(prompt.obj_id, int)
        assert prompt.obj_id >= 1
        assert np.isfinite(prompt.points).all() and set(prompt.labels.tolist()) <= {0, 1}
        if prompt.box is not None:
            assert np.isfinite(prompt.box).all()
            assert prompt.box[0] <= prompt.box[2] and prompt.box[1] <= prompt.box[3]
