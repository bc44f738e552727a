"""The annotator's prompt file: exact round trips, every bad input named, atomic writes."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from napari_sam2.engine import prompt_store
from napari_sam2.engine.io import OutputPathError
from napari_sam2.engine.prompt_store import (
    ObjectRecord,
    Plane,
    PromptFile,
    PromptFileError,
    decode_mask,
    encode_mask,
    engine_axes,
    prompts_for_engine,
    read_prompt_file,
    write_prompt_file,
)
from napari_sam2.engine.session import Prompt

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # the property test needs hypothesis; the other tests do not
    given = None


def _example() -> PromptFile:
    rng = np.random.default_rng(0)
    mask = rng.random((6, 5)) > 0.5
    return PromptFile(
        prompts=[
            Prompt(2, 1, [[1.25, 3.5], [0.1, 0.2]], [1, 0], box=[0.5, 1.0, 4.0, 5.0]),
            Prompt(0, 2, box=[0.0, 0.0, 2.0, 2.0]),
            Prompt(3, 2, mask=mask),
        ],
        objects=[ObjectRecord(1, "Leber ü 肝", "#ff7f0e"), ObjectRecord(2, "", None)],
        plane=Plane(shape=(2, 4, 6, 5), frame_axes=(2, 3), tracked_axis=1, held=((0, 1),)),
        settings={
            "model": "sam2.1_hiera_tiny",
            "checkpoint": None,
            "image_size": 512,
            "intensity_range": [0.0, 4095.0],
            "intensity_mode": "percentiles",
            "precision": "bfloat16",
            "extra": {"kept": [1, 2]},
        },
    )


def _same_prompt(a: Prompt, b: Prompt) -> bool:
    def bits(x, y) -> bool:
        if x is None or y is None:
            return x is None and y is None
        return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()

    return (
        a.key == b.key
        and bits(a.points, b.points)
        and bits(a.labels, b.labels)
        and bits(a.box, b.box)
        and bits(a.mask, b.mask)
    )


def _assert_same(a: PromptFile, b: PromptFile) -> None:
    assert len(a.prompts) == len(b.prompts)
    for x, y in zip(a.prompts, b.prompts):
        assert _same_prompt(x, y), (x, y)
    assert a.objects == b.objects
    assert a.plane == b.plane
    assert a.settings == b.settings


def test_round_trip_is_exact(tmp_path):
    original = _example()
    path = write_prompt_file(tmp_path / "session.sam2.json", original)
    back = read_prompt_file(path)
    _assert_same(original, back)
    text = path.read_text(encoding="utf-8")
    assert "Leber ü 肝" in text  # names are written as text, not \\u escapes
    assert json.loads(text)["format"] == prompt_store.FORMAT


def test_any_name_and_no_plane(tmp_path):
    original = PromptFile(prompts=[Prompt(7, 3, [[1.0, 2.0]], [1])], objects=[ObjectRecord(3)])
    path = write_prompt_file(tmp_path / "prompts.txt", original)
    back = read_prompt_file(path)
    _assert_same(original, back)
    assert back.plane is None and back.settings == {}


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
        np.ones((3, 7), bool),
        np.eye(5, dtype=bool),
        np.random.default_rng(1).random((33, 17)) > 0.3,
    ],
)
def test_mask_encoding_is_exact(mask):
    encoded = encode_mask(mask)
    assert sum(encoded["runs"]) == mask.size
    assert np.array_equal(decode_mask(encoded["shape"], encoded["runs"]), mask)


def test_mask_encoding_is_compact():
    mask = np.zeros((512, 512), bool)
    mask[100:300, 50:250] = True
    assert len(encode_mask(mask)["runs"]) <= 2 * 200 + 2


if given is not None:

    @st.composite
    def _prompt_files(draw):
        num_objects = draw(st.integers(1, 4))
        ids = draw(
            st.lists(
                st.integers(1, 2**31), min_size=num_objects, max_size=num_objects, unique=True
            )
        )
        names = draw(st.lists(st.text(max_size=12), min_size=num_objects, max_size=num_objects))
        colors = draw(
            st.lists(
                st.one_of(st.none(), st.from_regex(r"\A#[0-9a-f]{6}\Z")),
                min_size=num_objects,
                max_size=num_objects,
            )
        )
        objects = [ObjectRecord(i, n, c) for i, n, c in zip(ids, names, colors)]
        height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        frames = draw(st.integers(1, 5))
        coord = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
        prompts = []
        keys = draw(
            st.lists(
                st.tuples(st.integers(0, frames - 1), st.sampled_from(ids)),
                unique=True,
                max_size=6,
            )
        )
        for frame, obj_id in keys:
            kind = draw(st.sampled_from(["points", "box", "both", "mask"]))
            if kind == "mask":
                mask = draw(hnp.arrays(bool, (height, width)))
                prompts.append(Prompt(frame, obj_id, mask=mask))
                continue
            n = draw(st.integers(1 if kind == "points" else 0, 4)) if kind != "box" else 0
            points = np.array(draw(st.lists(st.tuples(coord, coord), min_size=n, max_size=n)))
            labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
            box = None
            if kind != "points":
                x0, x1 = sorted(draw(st.tuples(coord, coord)))
                y0, y1 = sorted(draw(st.tuples(coord, coord)))
                box = [x0, y0, x1, y1]
            prompts.append(Prompt(frame, obj_id, points.reshape(-1, 2), labels, box=box))
        plane = Plane((frames, height, width), (1, 2), tracked_axis=0)
        return PromptFile(prompts, objects, plane, {"model": draw(st.text(max_size=8))})

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(_prompt_files())
    def test_round_trip_property(tmp_path, prompt_file):
        path = write_prompt_file(tmp_path / "p.sam2.json", prompt_file, overwrite=True)
        _assert_same(prompt_file, read_prompt_file(path))

else:

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_round_trip_property():
        pass


# ------------------------------------------------------------------------------ bad input


def _document() -> dict:
    return json.loads(prompt_store._serialize(_example(), "x"))


def _bad(tmp_path, edit) -> str:
    """Write ``_document()`` changed by ``edit``, read it, return the error message."""
    document = copy.deepcopy(_document())
    edit(document)
    path = tmp_path / "bad.sam2.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        read_prompt_file(path)
    assert isinstance(info.value, PromptFileError)
    message = str(info.value)
    assert str(path) in message
    return message


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _delete(*keys):
    def edit(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (_set("format", "something else"), "format"),
        (_set("version", 2), "newer"),
        (_set("version", "one"), "version"),
        (_delete("version"), "'version' is missing"),
        (_delete("prompts"), "'prompts' is missing"),
        (_delete("objects"), "'objects' is missing"),
        (_delete("prompts", 0, "frame"), "prompts[0]"),
        (_delete("prompts", 1, "object"), "prompts[1]"),
        (_set("prompts", 0, "box", [0, 1, "2", 3]), "prompts[0].box"),
        (_set("prompts", 0, "box", [4, 1, 2, 3]), "prompts[0].box"),
        (_set("prompts", 0, "box", [0, 1, 2]), "prompts[0].box"),
        (_set("prompts", 0, "points", [[1, 2], [3]]), "prompts[0].points[1]"),
        (_set("prompts", 0, "points", [[1, 2], [True, 3]]), "prompts[0].points[1]"),
        (_set("prompts", 0, "labels", [1, 2]), "prompts[0].labels[1]"),
        (_set("prompts", 0, "labels", [1]), "prompts[0].labels"),
        (_set("prompts", 0, "frame", 1.5), "prompts[0].frame"),
        (_set("prompts", 0, "frame", 4), "prompts[0].frame"),
        (_set("prompts", 0, "frame", -1), "prompts[0].frame"),
        (_set("prompts", 0, "object", 9), "prompts[0].object"),
        (_set("prompts", 0, "bx", [0, 0, 1, 1]), "prompts[0]: unknown field 'bx'"),
        (_set("prompts", 2, "mask", "shape", [5, 6]), "prompts[2].mask.shape"),
        (_set("prompts", 2, "mask", "runs", [1, 2, 3]), "prompts[2].mask.runs"),
        (_set("prompts", 2, "mask", "runs", [31, -1]), "prompts[2].mask.runs"),
        (_set("prompts", 2, "points", [[1, 1]]), "prompts[2]: give a mask"),
        (_set("prompts", 1, "box", None), "prompts[1]: has no points"),
        (_set("objects", 1, "id", 1), "objects[1].id"),
        (_set("objects", 1, "id", 0), "objects[1].id"),
        (_set("objects", 0, "name", 5), "objects[0].name"),
        (_set("objects", 0, "color", "red"), "objects[0].color"),
        (_set("plane", "frame_axes", [2, 2]), "plane"),
        (_set("plane", "frame_axes", [2, 7]), "plane.frame_axes[1]"),
        (_set("plane", "held", [[0, 5]]), "plane.held[0]"),
        (_set("plane", "shape", [2, 4, 0, 5]), "plane.shape[2]"),
        (_set("settings", "image_size", -3), "settings.image_size"),
        (_set("settings", "intensity_range", [5, 1]), "settings.intensity_range"),
        (_set("settings", "precision", "float8"), "settings.precision"),
        (_set("settings", "model", None), "settings.model"),
    ],
)
def test_bad_entries_are_named(tmp_path, edit, where):
    assert where in _bad(tmp_path, edit)


def test_duplicate_prompt_is_named(tmp_path):
    def edit(document):
        document["prompts"].append(dict(document["prompts"][0]))

    message = _bad(tmp_path, edit)
    assert "prompts[3]" in message and "prompts[0]" in message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"format": "napari-sam2 prompts", "version": 1, "version": 1}', "twice"),
        (b'{"format": "napari-sam2 prompts", "version": NaN}', "NaN"),
        (b"[1, 2]", "JSON object"),
    ],
)
def test_unreadable_content_is_named(tmp_path, content, words):
    path = tmp_path / "odd.sam2.json"
    path.write_bytes(content)
    with pytest.raises(PromptFileError, match=words) as info:
        read_prompt_file(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ValueError, match="no such file") as info:
        read_prompt_file(tmp_path / "nope.sam2.json")
    assert "nope.sam2.json" in str(info.value)
    with pytest.raises(ValueError, match="is a folder") as info:
        read_prompt_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_writer_refuses_what_the_reader_would(tmp_path):
    path = tmp_path / "p.sam2.json"
    bad = _example()
    bad.prompts.append(Prompt(0, 5, [[1.0, 1.0]], [1]))  # object 5 is not listed
    with pytest.raises(PromptFileError, match=r"prompts\[3\].object"):
        write_prompt_file(path, bad)
    bad = _example()
    bad.prompts[0].points[0, 0] = np.nan
    with pytest.raises(PromptFileError):
        write_prompt_file(path, bad)
    bad = _example()
    bad.prompts[2].mask = np.zeros((5, 6), bool)  # the plane's frames are 6 x 5
    with pytest.raises(PromptFileError, match=r"prompts\[2\].mask.shape"):
        write_prompt_file(path, bad)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ writing safely


def test_existing_file_needs_overwrite(tmp_path):
    path = tmp_path / "p.sam2.json"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(OutputPathError, match="already exists"):
        write_prompt_file(path, _example())
    assert path.read_text(encoding="utf-8") == "old"
    write_prompt_file(path, _example(), overwrite=True)
    _assert_same(read_prompt_file(path), _example())


def test_failed_replace_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "p.sam2.json"
    first = PromptFile([Prompt(0, 1, [[1.0, 1.0]], [1])], [ObjectRecord(1, "first")])
    write_prompt_file(path, first)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_prompt_file(path, _example(), overwrite=True)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "p.sam2.json"
    write_prompt_file(path, _example())
    before = path.read_bytes()
    real_open = open

    class Failing:
        def __init__(self, handle):
            self.handle = handle
            self.calls = 0

        def write(self, text):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            self.handle.write(text[: len(text) // 2])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def failing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Failing(handle) if "w" in mode else handle

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(KeyboardInterrupt):
        write_prompt_file(path, _example(), overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


# ------------------------------------------------------------------------------ the engine


def test_engine_axes_of_a_4d_stack():
    # (t, z, y, x) tracked through z at time 3
    plane = Plane((5, 9, 20, 30), frame_axes=(2, 3), tracked_axis=1, held=((0, 3),))
    view = engine_axes(plane)
    assert view.index == (3, slice(None), slice(None), slice(None))
    assert (view.axis, view.channel_axis, view.transposed) == (0, None, False)
    data = np.zeros(plane.shape)
    assert data[view.index].shape == (9, 20, 30)


def test_engine_axes_of_rgb_time_series_held_elsewhere():
    # (c=2 held, t, y, x, rgb) with the time axis tracked
    plane = Plane((2, 7, 10, 12, 3), (2, 3), tracked_axis=1, channel_axis=4, held=((0, 1),))
    view = engine_axes(plane)
    assert (view.axis, view.channel_axis) == (0, 3)
    assert np.zeros(plane.shape)[view.index].shape == (7, 10, 12, 3)


def test_engine_axes_of_a_swapped_view():
    # a (z, y, x) volume shown as (y, z) rows x columns, tracked through x (a sagittal view)
    plane = Plane((8, 20, 30), frame_axes=(1, 0), tracked_axis=2)
    view = engine_axes(plane)
    assert view.transposed and view.axis == 2
    mask = np.zeros((20, 8), bool)  # displayed (H, W) = (y, z)
    mask[3, 5] = True
    file = PromptFile(
        [Prompt(4, 1, [[5.0, 3.0]], [1], box=[1.0, 2.0, 6.0, 9.0]), Prompt(6, 1, mask=mask)],
        [ObjectRecord(1)],
        plane,
    )
    engine = prompts_for_engine(file)
    # the engine's frame is data[:, :, x]: rows z, columns y, so (x, y) swap
    assert engine[0].points.tolist() == [[3.0, 5.0]]
    assert engine[0].box.tolist() == [2.0, 1.0, 9.0, 6.0]
    assert engine[1].mask.shape == (8, 20) and engine[1].mask[5, 3]
    assert file.prompts[0].points.tolist() == [[5.0, 3.0]]  # the file's prompts are unchanged


def test_prompts_for_engine_copies_in_order():
    file = _example()
    engine = prompts_for_engine(file)
    assert [p.key for p in engine] == sorted(
        (p.key for p in file.prompts), key=lambda k: (k[1], k[0])
    )
    engine[0].box[0] = 99.0
    assert 99.0 not in [p.box[0] for p in file.prompts if p.box is not None]
