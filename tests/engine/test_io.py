"""Reading stacks and writing results: atomic writes, output checks, unsafe Zarr, label TIFFs."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import tifffile

from napari_sam2.engine import io
from napari_sam2.engine.io import (
    InputFileError,
    OutputPathError,
    UnsafeDataError,
    atomic_write,
    check_output_path,
    read_stack,
    write_labels,
)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".napari-sam2-tmp-")]


# ---------------------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("previous")
    with atomic_write(target) as temp:
        assert temp.parent == tmp_path and temp.suffix == ".txt"
        temp.write_text("new")
        assert target.read_text() == "previous"  # not yet in place
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError, ValueError])
def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path, error):
    target = tmp_path / "result.txt"
    target.write_text("previous")
    with pytest.raises(error), atomic_write(target) as temp:
        temp.write_text("half")
        raise error("disk full")
    assert target.read_text() == "previous"
    assert _leftovers(tmp_path) == []


def test_atomic_write_of_a_folder(tmp_path):
    target = tmp_path / "out.zarr"
    target.mkdir()
    (target / "old").write_text("x")
    with atomic_write(target, folder=True) as temp:
        assert temp.is_dir()
        (temp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_write(target, folder=True) as temp:
        (temp / "broken").write_text("z")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- output checks


def test_output_is_never_the_input(tmp_path):
    stack = tmp_path / "stack.tif"
    stack.write_bytes(b"data")
    (tmp_path / "sub").mkdir()
    for same in (stack, tmp_path / "sub" / ".." / "stack.tif"):
        with pytest.raises(OutputPathError, match="is the input"):
            check_output_path(same, inputs=[stack], overwrite=True)
    link = tmp_path / "link.tif"
    os.symlink(stack, link)
    with pytest.raises(OutputPathError, match="is the input"):
        check_output_path(link, inputs=[stack], overwrite=True)
    assert stack.read_bytes() == b"data"


def test_output_path_problems_are_named(tmp_path):
    existing = tmp_path / "done.tif"
    existing.write_bytes(b"x")
    (tmp_path / "folder.tif").mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (tmp_path / "folder.tif", "is a folder"),
        (existing, "already exists; pass --overwrite"),
        (tmp_path / "missing" / "l.tif", "does not exist"),
        (afile / "l.tif", "is a file, not a folder"),
        (afile / "deeper" / "l.tif", "is a file, not a folder"),
        (tmp_path / "l.png", "must end in .tif"),
    ]
    for path, message in cases:
        with pytest.raises(OutputPathError, match=message) as info:
            check_output_path(path, suffixes=io.TIFF_SUFFIXES)
        assert str(path.name) in str(info.value) or str(path) in str(info.value)
    assert check_output_path(existing, overwrite=True) == existing


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root writes anywhere")
def test_output_folder_without_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="no permission"):
            check_output_path(locked / "l.tif")
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------- label TIFFs


def test_labels_are_written_slice_by_slice_without_a_full_copy(tmp_path, monkeypatch):
    labels = np.zeros((5, 300, 270), dtype=np.uint32)
    labels[2, 10:250, 5:260] = 7
    labels[4, -1, -1] = 3
    converted = []
    real_asarray = np.asarray

    def spy(value, dtype=None, **kwargs):
        result = real_asarray(value, dtype=dtype, **kwargs)
        if dtype is not None and result.ndim >= 2:
            converted.append(result.shape)
        return result

    monkeypatch.setattr(io.np, "asarray", spy)
    path = write_labels(tmp_path / "l.tif", labels)
    monkeypatch.undo()
    back = tifffile.imread(path)
    assert back.dtype == np.uint16 and back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)
    assert converted and all(shape == (300, 270) for shape in converted)  # never (5, ...)


def test_label_writer_refuses_ids_beyond_uint32(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        io.label_dtype_for(2**32)
    assert io.label_dtype_for(65535) == np.uint16
    assert io.label_dtype_for(65536) == np.uint32


def test_interrupted_label_write_keeps_the_previous_output(tmp_path, monkeypatch):
    path = tmp_path / "l.tif"
    first = np.ones((2, 32, 32), dtype=np.uint16)
    write_labels(path, first)
    before = path.read_bytes()

    def broken_imwrite(target, data, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"II*\x00partial")
        next(iter(data))
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(KeyboardInterrupt):
        write_labels(path, np.full((2, 32, 32), 2, dtype=np.uint16))
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_label_tiff_metadata_for_partial_results(tmp_path):
    path = write_labels(
        tmp_path / "p.tif", np.zeros((3, 16, 16), np.uint16), description={"finished": [0, 2]}
    )
    with tifffile.TiffFile(path) as tif:
        assert json.loads(tif.pages[0].description)["finished"] == [0, 2]


# ---------------------------------------------------------------------------- reading


def test_read_errors_are_named(tmp_path):
    (tmp_path / "folder.tif").mkdir()
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    (tmp_path / "file.zarr").write_text("x")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    cases = [
        (tmp_path / "missing.tif", "does not exist"),
        (tmp_path / "folder.tif", "is a folder"),
        (tmp_path / "broken.tif", "cannot read TIFF"),
        (tmp_path / "file.zarr", "is a folder, but this is a file"),
        (tmp_path / "broken.npy", "cannot read NumPy"),
        (tmp_path / "x.png", "supported inputs"),
    ]
    (tmp_path / "x.png").write_bytes(b"")
    for path, message in cases:
        with pytest.raises(InputFileError, match=message):
            read_stack(path)


def test_npy_of_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeDataError, match="Python objects"):
        read_stack(path)


def _zarr_v2_array(folder, filters, dtype="<u2", compressor=None):
    folder.mkdir(parents=True)
    meta = {
        "zarr_format": 2,
        "shape": [2, 8, 8],
        "chunks": [1, 8, 8],
        "dtype": dtype,
        "compressor": compressor,
        "fill_value": 0,
        "filters": filters,
        "order": "C",
    }
    (folder / ".zarray").write_text(json.dumps(meta))
    (folder / "0.0.0").write_bytes(b"chunk that must never be decoded")
    return folder


@pytest.mark.parametrize(
    ("filters", "compressor", "dtype"),
    [
        ([{"id": "pickle", "protocol": 5}], None, "<u2"),
        (None, {"id": "pickle"}, "<u2"),
        ([{"id": "vlen-utf8"}], None, "|O"),
    ],
)
def test_zarr_with_code_running_codecs_is_refused_before_reading(
    tmp_path, monkeypatch, filters, compressor, dtype
):
    pytest.importorskip("zarr")
    store = _zarr_v2_array(tmp_path / "evil.zarr", filters, dtype, compressor)
    opened = []
    import zarr

    monkeypatch.setattr(zarr, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(UnsafeDataError, match="can run code") as info:
        read_stack(store)
    assert "evil.zarr" in str(info.value)
    assert opened == []  # refused before zarr even parsed it


def test_zarr_v3_pickle_codec_inside_a_group_is_refused(tmp_path):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("0", shape=(2, 8, 8), dtype="uint16")
    meta_file = tmp_path / "g.zarr" / "0" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["codecs"] = [*meta["codecs"], {"name": "numcodecs.pickle", "configuration": {}}]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(UnsafeDataError, match="numcodecs.pickle"):
        read_stack(tmp_path / "g.zarr")


def test_safe_zarr_still_reads(tmp_path):
    zarr = pytest.importorskip("zarr")
    array = zarr.open_array(str(tmp_path / "ok.zarr"), mode="w", shape=(2, 8, 8), dtype="uint16")
    array[:] = 5
    assert read_stack(tmp_path / "ok.zarr")[1, 3, 3] == 5


def test_no_permission_is_reported_before_work(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(
        io.os, "access", lambda path, mode: False if str(path) == str(tmp_path) else
        real_access(path, mode)
    )  # fmt: skip
    with pytest.raises(OutputPathError, match="no permission to write in the folder"):
        check_output_path(tmp_path / "l.tif")


def test_written_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_labels(tmp_path / "l.tif", np.zeros((4, 4), np.uint16))
        with atomic_write(tmp_path / "out.zarr", folder=True) as temp:
            (temp / "x").write_text("y")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert (tmp_path / "out.zarr").stat().st_mode & 0o777 == 0o755


def test_compressed_tiff_is_read_lazily_or_checked_before_reading(tmp_path, monkeypatch):
    stack = (np.arange(3 * 40 * 50) % 3000).reshape(3, 40, 50).astype(np.uint16)
    path = tmp_path / "packed.tif"
    tifffile.imwrite(path, stack, compression="zlib")
    lazy = read_stack(path)
    assert not isinstance(lazy, np.ndarray)  # frames are decoded on demand
    np.testing.assert_array_equal(np.asarray(lazy[2]), stack[2])

    import importlib.util

    from napari_sam2.engine import memory_estimate

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "zarr" else
        real_find_spec(name, *a)
    )  # fmt: skip
    np.testing.assert_array_equal(read_stack(path), stack)  # without zarr: read whole
    monkeypatch.setattr(memory_estimate, "available_host_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match="cannot be memory-mapped"):
        read_stack(path)
