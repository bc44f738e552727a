"""The napari-sam2 command, run in-process through main([...])."""

import importlib.util
import sys
import types

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2.engine.prompt_files import Prompt, write_boxes_csv, write_points_csv
from tests.test_api import CENTRE, biased_random_model, disc_stack


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, disc_stack(3))
    return path


@pytest.fixture
def points_file(tmp_path):
    row, col = CENTRE
    return write_points_csv(tmp_path / "points.csv", [Prompt(1, 3, [[col, row]], [1])])


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_segment_end_to_end(tmp_path, stack_file, points_file, monkeypatch, capsys):
    built = []

    def fake_build(name, checkpoint, image_size, device):
        built.append((name, checkpoint, image_size, device))
        return biased_random_model()

    monkeypatch.setattr(cli, "_build_model", fake_build)
    out_file = tmp_path / "labels.tif"
    status, out, err = run(
        ["segment", stack_file, "--points", points_file, "--out", out_file, "--range", 0, 4000],
        capsys,
    )
    assert status == 0, err
    assert built == [("sam2.1_hiera_tiny", None, None, "auto")]
    labels = tifffile.imread(out_file)
    assert labels.shape == (3, 64, 64)
    assert labels.dtype == np.uint16
    assert set(np.unique(labels)) <= {0, 3}
    row, col = CENTRE
    assert labels[1, row, col] == 3
    assert "wrote" in out and "1 object(s)" in out
    assert "segmenting" in err  # the tqdm bar is on stderr


def test_tiff_memmap_and_zarr_inputs(tmp_path):
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, disc_stack(2))
    assert isinstance(cli.read_stack(raw), np.memmap)
    packed = tmp_path / "packed.tif"
    tifffile.imwrite(packed, disc_stack(2), compression="zlib")
    np.testing.assert_array_equal(cli.read_stack(packed), disc_stack(2))

    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    group.create_array("0", shape=(2, 64, 64), dtype="uint16")[:] = disc_stack(2)
    group.create_array("1", shape=(2, 32, 32), dtype="uint16")
    group.attrs["multiscales"] = [{"datasets": [{"path": "0"}, {"path": "1"}]}]
    array = cli.read_stack(tmp_path / "image.ome.zarr")
    assert array.shape == (2, 64, 64)
    np.testing.assert_array_equal(array[1], disc_stack(2)[1])


def test_labels_tiff_dtype_follows_the_largest_id(tmp_path):
    small = np.array([[0, 65535]], dtype=np.uint32)
    large = np.array([[0, 65536]], dtype=np.uint32)
    assert tifffile.imread(cli.write_labels(tmp_path / "a.tif", small)).dtype == np.uint16
    back = tifffile.imread(cli.write_labels(tmp_path / "b.tif", large))
    assert back.dtype == np.uint32 and back[0, 1] == 65536


def test_prompt_axis_skips_a_preceding_channel_axis():
    assert cli._prompt_axis(3, 0, None) == 0
    assert cli._prompt_axis(4, 1, 0) == 0  # (C, Z, H, W): napari's points are (Z, H, W)
    assert cli._prompt_axis(4, 0, 1) == 0  # (Z, C, H, W)
    assert cli._prompt_axis(3, -1, None) == 2


def _fail_build(*args):
    raise AssertionError("no model should be built for this error")


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, s, p: ["segment", d / "missing.tif", "--points", p], "missing.tif does not"),
        (lambda d, s, p: ["segment", s, "--points", d / "none.csv"], "none.csv does not exist"),
        (lambda d, s, p: ["segment", s], "give prompts"),
        (lambda d, s, p: ["segment", s, "--points", p, "--model", "sam9"], "unknown model 'sam9'"),
        (lambda d, s, p: ["segment", s, "--boxes", p], "not a napari Shapes file"),
        (lambda d, s, p: ["segment", d / "x.png", "--points", p], "supported inputs are TIFF"),
    ],
)
def test_errors_print_one_line_and_exit_2(
    tmp_path, stack_file, points_file, monkeypatch, capsys, make_args, message
):
    monkeypatch.setattr(cli, "_build_model", _fail_build)
    (tmp_path / "x.png").write_bytes(b"")
    argv = [*make_args(tmp_path, stack_file, points_file), "--out", tmp_path / "o.tif"]
    status, out, err = run(argv, capsys)
    assert status == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_csv_line_is_reported(tmp_path, stack_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_build_model", _fail_build)
    bad = tmp_path / "bad.csv"
    bad.write_text("index,axis-0,axis-1,axis-2\n0,1,2,3\n1,1,oops,3\n")
    status, _, err = run(
        ["segment", stack_file, "--points", bad, "--out", tmp_path / "o.tif"], capsys
    )
    assert status == 2
    assert "bad.csv, line 3: column 'axis-1' holds 'oops'" in err


def test_offline_download_is_a_clean_error(tmp_path, stack_file, points_file, monkeypatch, capsys):
    from napari_sam2.model import registry

    def offline(name, **kwargs):
        raise registry.CheckpointUnavailable(
            f"Could not download the SAM 2 checkpoint {name} (no connection).\n"
            "Download it by other means and put it at exactly:\n    /cache/x.pt"
        )

    monkeypatch.setattr(registry, "fetch_checkpoint", offline)
    status, _, err = run(
        ["segment", stack_file, "--points", points_file, "--out", tmp_path / "o.tif"], capsys
    )
    assert status == 2
    assert err.startswith("error: Could not download") and "/cache/x.pt" in err
    assert "--checkpoint FILE" in err
    assert err.count("\n") == 1


def test_boxes_file_and_output_checks(tmp_path, stack_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_build_model", _fail_build)
    boxes = write_boxes_csv(tmp_path / "boxes.csv", [Prompt(0, 1, box=[1, 1, 9, 9])])
    status, _, err = run(["segment", stack_file, "--boxes", boxes, "--out", "labels.png"], capsys)
    assert status == 2 and "use a .tif name" in err
    status, _, err = run(
        ["segment", stack_file, "--boxes", boxes, "--out", tmp_path / "no" / "l.tif"], capsys
    )
    assert status == 2 and "does not exist" in err


def test_models_lists_presets_and_cache_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path))
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"x")
    status, out, _ = run(["models"], capsys)
    assert status == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert len(lines) == 8
    assert "cached" in lines["sam2.1_hiera_tiny"]
    assert str(tmp_path / "sam2.1_hiera_tiny.pt") in lines["sam2.1_hiera_tiny"]
    assert "not downloaded" in lines["sam2.1_hiera_large"]


def test_demo_calls_the_qt_demo(monkeypatch, capsys):
    called = []
    demo = types.ModuleType("napari_sam2._qt.demo")
    demo.main = lambda: called.append(True)
    if "napari_sam2._qt" not in sys.modules:
        package = types.ModuleType("napari_sam2._qt")
        package.__path__ = []
        monkeypatch.setitem(sys.modules, "napari_sam2._qt", package)
    monkeypatch.setitem(sys.modules, "napari_sam2._qt.demo", demo)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "napari" else
        real_find_spec(name, *a)
    )  # fmt: skip
    assert run(["demo"], capsys)[0] == 0
    assert called == [True]


def test_demo_without_napari(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "napari" else
        real_find_spec(name, *a)
    )  # fmt: skip
    status, _, err = run(["demo"], capsys)
    assert status == 2 and "pip install" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["segment", "stack.tif"])  # --out is required
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
