"""The napari-sam2 command, run in-process through main([...])."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

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
        (lambda d, s, p: ["segment", s, "--points", p, "--model", "sam9"], "model 'sam9'"),
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
    assert status == 2 and "must end in .tif" in err
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


# ---------------------------------------------------------------------------- nothing is lost


def test_output_is_never_the_input(tmp_path, stack_file, points_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_build_model", _fail_build)
    before = stack_file.read_bytes()
    (tmp_path / "sub").mkdir()
    for out in (stack_file, tmp_path / "sub" / ".." / "stack.tif"):
        for extra in ([], ["--overwrite"]):
            status, out_text, err = run(
                ["segment", stack_file, "--points", points_file, "--out", out, *extra], capsys
            )
            assert status == 2 and "is the input" in err and "wrote" not in out_text
    assert stack_file.read_bytes() == before


def _fake_model(monkeypatch):
    monkeypatch.setattr(cli, "_build_model", lambda *a: biased_random_model())


def test_existing_output_is_replaced_only_with_overwrite(
    tmp_path, stack_file, points_file, monkeypatch, capsys
):
    _fake_model(monkeypatch)
    out = tmp_path / "labels.tif"
    out.write_bytes(b"the previous result")
    argv = ["segment", stack_file, "--points", points_file, "--out", out, "-q"]
    status, _, err = run(argv, capsys)
    assert status == 2 and "already exists; pass --overwrite" in err
    assert out.read_bytes() == b"the previous result"
    status, _, err = run([*argv, "--overwrite"], capsys)
    assert status == 0, err
    assert tifffile.imread(out).shape == (3, 64, 64)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".napari-sam2-tmp")]


def interrupt_after_two_frames(monkeypatch) -> None:
    """Make ``segment``'s progress bar raise KeyboardInterrupt (a Ctrl+C) once two frames are
    done."""
    real_update = cli._ProgressBar.update

    def interrupt_after_two(self, done, total):
        real_update(self, done, total)
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._ProgressBar, "update", interrupt_after_two)


def test_ctrl_c_keeps_the_finished_frames(tmp_path, stack_file, points_file, monkeypatch, capsys):
    _fake_model(monkeypatch)
    out = tmp_path / "labels.tif"
    out.write_bytes(b"the previous result")
    interrupt_after_two_frames(monkeypatch)
    status, _, err = run(
        ["segment", stack_file, "--points", points_file, "--out", out, "--overwrite",
         "--direction", "forward"],
        capsys,
    )  # fmt: skip
    assert status == cli.EXIT_INTERRUPTED
    partial = tmp_path / "labels.partial.tif"
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted:") and str(partial) in last
    assert "2 finished frame(s) of 2 (frames 1-2)" in last  # the prompt is on frame 1
    assert out.read_bytes() == b"the previous result"  # --out untouched
    with tifffile.TiffFile(partial) as tif:
        meta = json.loads(tif.pages[0].description)
        labels = tif.asarray()
    assert meta["finished_frames"] == [1, 2] and meta["napari_sam2_partial"] is True
    row, col = CENTRE
    assert labels.shape == (3, 64, 64) and labels[1, row, col] == 3
    assert not labels[0].any()  # not finished: 0


def test_ctrl_c_while_writing_keeps_every_frame(tmp_path, stack_file, points_file, monkeypatch,
                                                capsys):  # fmt: skip
    _fake_model(monkeypatch)
    out = tmp_path / "labels.tif"
    out.write_bytes(b"the previous result")
    real_write = cli.write_labels

    def interrupted_write(path, *args, **kwargs):
        if Path(path) == out:
            raise KeyboardInterrupt
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(cli, "write_labels", interrupted_write)
    status, _, err = run(
        ["segment", stack_file, "--points", points_file, "--out", out, "--overwrite"], capsys
    )
    assert status == cli.EXIT_INTERRUPTED and "3 finished frame(s) of 3" in err
    assert out.read_bytes() == b"the previous result"
    assert tifffile.imread(tmp_path / "labels.partial.tif").shape == (3, 64, 64)


def test_ctrl_c_before_any_frame_writes_nothing(tmp_path, stack_file, points_file, monkeypatch,
                                                 capsys):  # fmt: skip
    _fake_model(monkeypatch)
    from napari_sam2.engine import tracker as tracker_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracker_module.Tracker, "_track_frame", interrupt)
    status, _, err = run(
        ["segment", stack_file, "--points", points_file, "--out", tmp_path / "l.tif"], capsys
    )
    assert status == cli.EXIT_INTERRUPTED and "nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv", "stack.tif"]


_SIGINT_CHILD = """
import sys, time
from pathlib import Path
from napari_sam2 import cli
from napari_sam2.engine import tracker
from tests.test_api import biased_random_model

cli._build_model = lambda *a: biased_random_model()
real = tracker.Tracker._track_frame
def slow(self, frame, backward):
    if frame > 1:  # frame 1 is finished: tell the parent, and give it time to interrupt
        Path(sys.argv[1]).write_text(str(frame))
        time.sleep(0.5)
    return real(self, frame, backward)
tracker.Tracker._track_frame = slow
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigint_to_a_real_process_keeps_the_finished_frames(tmp_path, points_file):
    stack = tmp_path / "long.tif"
    tifffile.imwrite(stack, disc_stack(40))
    marker = tmp_path / "marker"
    out = tmp_path / "labels.tif"
    argv = [sys.executable, "-c", _SIGINT_CHILD, str(marker), "segment", str(stack),
            "--points", str(points_file), "--out", str(out), "--direction", "forward",
            "-q"]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(argv, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), child.communicate()[1]
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "labels.partial.tif" in err
    assert not out.exists()
    with tifffile.TiffFile(tmp_path / "labels.partial.tif") as tif:
        finished = json.loads(tif.pages[0].description)["finished_frames"]
    assert finished and finished[0] == 1 and len(finished) < 39


def test_a_run_that_would_not_fit_is_refused_at_once(
    tmp_path, stack_file, points_file, monkeypatch, capsys
):
    monkeypatch.setattr(cli, "_build_model", _fail_build)
    from napari_sam2.engine import memory_estimate

    monkeypatch.setattr(memory_estimate, "available_host_bytes", lambda: 2**20)
    status, _, err = run(
        ["segment", stack_file, "--points", points_file, "--out", tmp_path / "l.tif"], capsys
    )
    assert status == 2 and err.count("\n") == 1
    for part in ("MiB", "output labels (3 x 64 x 64)", "1 object(s)", "fewer frames", "--axis",
                 "fewer objects", "--image-size"):  # fmt: skip
        assert part in err


# ---------------------------------------------------------------------------- bad inputs


def _csv(name, text, encoding="utf-8"):
    def make(d):
        path = d / name
        path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        return path

    return make


def _evil_pickle(d):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    path = d / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Boom()}))
    return path


def _torch_file(value):
    def make(d):
        import torch

        path = d / "ck.pt"
        torch.save(value, path)
        return path

    return make


def _zarr_pickle(d):
    folder = d / "evil.zarr"
    folder.mkdir()
    meta = {"zarr_format": 2, "shape": [3, 64, 64], "chunks": [1, 64, 64], "dtype": "<u2",
            "compressor": None, "fill_value": 0, "filters": [{"id": "pickle"}],
            "order": "C"}  # fmt: skip
    (folder / ".zarray").write_text(json.dumps(meta))
    return folder


def _objects_npy(d):
    path = d / "objects.npy"
    np.save(path, np.array([None, 1], dtype=object), allow_pickle=True)
    return path


def _folder(name):
    def make(d):
        path = d / name
        path.mkdir(exist_ok=True)
        return path

    return make


def _file(name, data=b"x"):
    def make(d):
        path = d / name
        path.write_bytes(data)
        return path

    return make


_HEADER = "index,axis-0,axis-1,axis-2\n"
P = "{points}"
S = "{stack}"
# (name, argv with {stack}/{points}/{d} placeholders or callables, expected part of the message,
#  whether the model may be built). Every one must exit 2 with one 'error:' line.
BAD_INPUTS = [
    ("missing stack", ["{d}/missing.tif", "--points", P], "does not exist", False),
    ("stack is a folder", [_folder("dir.tif"), "--points", P], "is a folder", False),
    ("stack png", [_file("x.png"), "--points", P], "supported inputs", False),
    (
        "stack broken tiff",
        [_file("b.tif", b"II*\x00junk"), "--points", P],
        "b.tif",
        False,
    ),
    ("stack empty tiff", [_file("e.tif", b""), "--points", P], "cannot read TIFF", False),
    ("stack npy objects", [_objects_npy, "--points", P], "Python objects", False),
    ("stack npy garbage", [_file("g.npy", b"\x93NUMPYxx"), "--points", P], "NumPy", False),
    ("zarr is a file", [_file("f.zarr"), "--points", P], "is a folder", False),
    ("zarr pickle filter", [_zarr_pickle, "--points", P], "can run code", False),
    ("zarr without arrays", [_folder("empty.zarr"), "--points", P], "Zarr", False),
    ("1-D npy", [lambda d: _np_file(d, np.zeros(5)), "--points", P], "2-D", False),
    (
        "complex npy",
        [lambda d: _np_file(d, np.zeros((3, 8, 8), complex)), "--points", P],
        "complex",
        False,
    ),
    ("missing points", [S, "--points", "{d}/none.csv"], "does not exist", False),
    ("points is a folder", [S, "--points", _folder("p.csv")], "folder", False),
    (
        "points not utf-8",
        [S, "--points", _csv("l1.csv", _HEADER + "0,1,2,3\n# é\n", "latin-1")],
        "UTF-8",
        False,
    ),
    (
        "points binary",
        [S, "--points", _csv("bin.csv", b"\x00\xff\xfe\x00" * 20)],
        "bin.csv",
        False,
    ),
    ("points empty", [S, "--points", _csv("e.csv", "")], "empty", False),
    ("points header only", [S, "--points", _csv("h.csv", _HEADER)], "no prompts", False),
    (
        "points duplicate column",
        [S, "--points", _csv("d.csv", "index,axis-0,axis-1,axis-1\n0,1,2,3\n")],
        "twice",
        False,
    ),
    (
        "points row too long",
        [S, "--points", _csv("r.csv", _HEADER + "0,1,2,3,4\n")],
        "line 2",
        False,
    ),
    ("points row too short", [S, "--points", _csv("s.csv", _HEADER + "0,1,2\n")], "line 2", False),
    (
        "points not a number",
        [S, "--points", _csv("n.csv", _HEADER + "0,1,x,3\n")],
        "not a number",
        False,
    ),
    ("points nan", [S, "--points", _csv("nan.csv", _HEADER + "0,1,nan,3\n")], "line 2", False),
    ("points inf", [S, "--points", _csv("inf.csv", _HEADER + "0,1,inf,3\n")], "line 2", False),
    ("points huge", [S, "--points", _csv("big.csv", _HEADER + "0,1,1e400,3\n")], "line 2", False),
    (
        "points bad label",
        [S, "--points", _csv("lb.csv", _HEADER[:-1] + ",label\n0,1,2,3,2\n")],
        "label",
        False,
    ),
    (
        "points object 0",
        [S, "--points", _csv("o0.csv", _HEADER[:-1] + ",object\n0,1,2,3,0\n")],
        "object id",
        False,
    ),
    (
        "points object 1.5",
        [S, "--points", _csv("o1.csv", _HEADER[:-1] + ",object\n0,1,2,3,1.5\n")],
        "object id",
        False,
    ),
    (
        "points object too big",
        [S, "--points", _csv("ob.csv", _HEADER[:-1] + ",object\n0,1,30,34,4294967296\n")],
        "object id",
        False,
    ),
    (
        "points 4-D",
        [S, "--points", _csv("4d.csv", "index,axis-0,axis-1,axis-2,axis-3\n0,1,2,3,4\n")],
        "4-D",
        False,
    ),
    (
        "points bad axis header",
        [S, "--points", _csv("ah.csv", "index,axis-0,axis-x\n0,1,2\n")],
        "axis-N",
        False,
    ),
    (
        "points no axis columns",
        [S, "--points", _csv("na.csv", "index,a,b\n0,1,2\n")],
        "axis-0",
        False,
    ),
    (
        "points frame out of range",
        [S, "--points", _csv("f9.csv", _HEADER + "0,9,30,34\n")],
        "frame 9",
        False,
    ),
    (
        "points negative frame",
        [S, "--points", _csv("fm.csv", _HEADER + "0,-1,30,34\n")],
        "frame",
        False,
    ),
    (
        "point outside the frame",
        [S, "--points", _csv("out.csv", _HEADER + "0,1,30,999\n")],
        "outside",
        True,
    ),
    (
        "shapes as points",
        [S, "--points", lambda d: write_boxes_csv(d / "b.csv", [Prompt(0, 1, box=[1, 1, 9, 9])])],
        "Shapes file",
        False,
    ),
    ("points as boxes", [S, "--boxes", P], "not a napari Shapes file", False),
    (
        "ellipse as box",
        [
            S,
            "--boxes",
            _csv(
                "el.csv", "index,shape-type,vertex-index,axis-0,axis-1,axis-2\n0,ellipse,0,1,2,3\n"
            ),
        ],
        "rectangle",
        False,
    ),
    ("two boxes one object", [S, "--boxes", lambda d: _two_boxes(d)], "second box", False),
    ("no prompts", [S], "give prompts", False),
    ("axis too large", [S, "--points", P, "--axis", "5"], "--axis 5", False),
    ("axis too small", [S, "--points", P, "--axis", "-9"], "--axis -9", False),
    (
        "channel axis too large",
        [S, "--points", P, "--channel-axis", "7"],
        "--channel-axis 7",
        False,
    ),
    ("channel axis is the axis", [S, "--points", P, "--channel-axis", "0"], "1 frame(s)", False),
    ("range reversed", [S, "--points", P, "--range", "10", "1"], "lo > hi", False),
    ("range nan", [S, "--points", P, "--range", "nan", "1"], "finite", False),
    ("range inf", [S, "--points", P, "--range", "0", "inf"], "finite", False),
    ("unknown model", [S, "--points", P, "--model", "sam9"], "unknown SAM 2 model", False),
    ("unknown device", [S, "--points", P, "--device", "tpu"], "Unknown device", False),
    ("absent device", [S, "--points", P, "--device", "cuda:7"], "not available", False),
    ("image size 0", [S, "--points", P, "--image-size", "0"], "multiple of 32", False),
    ("image size 100", [S, "--points", P, "--image-size", "100"], "multiple of 32", False),
    ("image size text", [S, "--points", P, "--image-size", "big"], "invalid int", False),
    ("axis float", [S, "--points", P, "--axis", "1.5"], "invalid int", False),
    ("direction", [S, "--points", P, "--direction", "sideways"], "invalid choice", False),
    ("out is a folder", [S, "--points", P, "--out", _folder("dir_out.tif")], "is a folder", False),
    ("out exists", [S, "--points", P, "--out", _file("old.tif")], "already exists", False),
    ("out missing parent", [S, "--points", P, "--out", "{d}/no/l.tif"], "does not exist", False),
    ("out under a file", [S, "--points", P, "--out", "{d}/points.csv/l.tif"], "is a file", False),
    ("out png", [S, "--points", P, "--out", "{d}/l.png"], "must end in .tif", False),
    ("out is the stack", [S, "--points", P, "--out", S, "--overwrite"], "is the input", False),
    ("out via ..", [S, "--points", P, "--out", "{d}/sub/../stack.tif"], "is the input", False),
    (
        "checkpoint missing",
        [S, "--points", P, "--checkpoint", "{d}/none.pt"],
        "does not exist",
        True,
    ),
    ("checkpoint folder", [S, "--points", P, "--checkpoint", _folder("ck")], "is a folder", True),
    (
        "checkpoint garbage",
        [S, "--points", P, "--checkpoint", _file("g.pt", b"garbage" * 50)],
        "g.pt",
        True,
    ),
    ("checkpoint empty", [S, "--points", P, "--checkpoint", _file("z.pt", b"")], "z.pt", True),
    ("checkpoint with code", [S, "--points", P, "--checkpoint", _evil_pickle], "evil.pt", True),
    (
        "checkpoint a tensor",
        [S, "--points", P, "--checkpoint", _torch_file([1, 2])],
        "not a SAM 2",
        True,
    ),
    (
        "checkpoint non-tensor values",
        [
            S,
            "--points",
            P,
            "--checkpoint",
            _torch_file({"model": {"image_encoder.trunk.patch_embed.proj.weight": "text"}}),
        ],
        "ck.pt",
        True,
    ),
    (
        "checkpoint int keys",
        [S, "--points", P, "--checkpoint", _torch_file({"model": {1: 2}})],
        "ck.pt",
        True,
    ),
]


def _np_file(d, array):
    path = d / "a.npy"
    np.save(path, array)
    return path


def _two_boxes(d):
    text = "index,shape-type,vertex-index,axis-0,axis-1,axis-2,object\n"
    for index in (0, 1):
        for vertex, (r, c) in enumerate([(1, 1), (1, 9), (9, 9), (9, 1)]):
            text += f"{index},rectangle,{vertex},0,{r + index},{c},1\n"
    path = d / "two.csv"
    path.write_text(text)
    return path


def _argv(items, d, stack, points):
    argv = []
    for item in items:
        value = item(d) if callable(item) else item
        value = str(value).format(d=d, stack=stack, points=points)
        argv.append(value)
    return argv


def _small_real_build(name, checkpoint, image_size, device):
    from napari_sam2.model import build_sam2

    return build_sam2(name, checkpoint, image_size=256, device="cpu")


@pytest.mark.parametrize(("name", "items", "message", "builds"), BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])  # fmt: skip
def test_every_bad_input_gets_one_clear_line_and_status_2(
    tmp_path, stack_file, points_file, monkeypatch, capsys, name, items, message, builds
):
    (tmp_path / "sub").mkdir()
    if builds and "checkpoint" in name:
        monkeypatch.setattr(cli, "_build_model", _small_real_build)
    elif builds:
        _fake_model(monkeypatch)
    else:
        monkeypatch.setattr(cli, "_build_model", _fail_build)
    argv = ["segment", *_argv(items, tmp_path, stack_file, points_file)]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o.tif")]
    before = stack_file.read_bytes()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse usage errors
        status = exit_.code
    _, err = capsys.readouterr()
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert message in err, err
    assert "weights_only" not in err
    assert stack_file.read_bytes() == before
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "PWNED").exists()


def test_bad_input_coverage_figure():
    """The figure for the report: distinct bad inputs tried, all with a clear error."""
    names = [case[0] for case in BAD_INPUTS]
    assert len(set(names)) == len(names) >= 60
    print(f"\nCLI bad inputs tried: {len(names)}; each must exit 2 with one clear line")


@pytest.mark.skipif(sys.platform != "linux", reason="the display check is for X11/Wayland")
def test_demo_script_without_a_display_says_so(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text("#!/bin/sh\nexit 0\n")  # stands in for the venv's pip installs
    napari = venv / "bin" / "napari-sam2"
    napari.write_text(f"#!/bin/sh\ntouch {tmp_path / 'STARTED'}\n")
    for path in (stub, napari):
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["bash", str(root / "scripts" / "demo.sh")],
        env={**env, "VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no display" in done.stderr and "xvfb-run" in done.stderr
    assert not (tmp_path / "STARTED").exists()


def test_an_error_mid_run_keeps_the_finished_frames_in_one_line(
    tmp_path, stack_file, points_file, monkeypatch, capsys
):
    _fake_model(monkeypatch)
    from napari_sam2.engine import tracker as tracker_module

    real = tracker_module.Tracker._track_frame

    def fail_on_frame_2(self, frame, backward):
        if frame == 2:
            raise OSError("the disk holding the stack went away")
        return real(self, frame, backward)

    monkeypatch.setattr(tracker_module.Tracker, "_track_frame", fail_on_frame_2)
    status, _, err = run(
        ["segment", stack_file, "--points", points_file, "--out", tmp_path / "l.tif",
         "--direction", "forward"],
        capsys,
    )  # fmt: skip
    last = err.strip().splitlines()[-1]
    assert status == 2 and err.count("error:") == 1 and "note:" not in err
    assert "went away" in last and "l.partial.tif" in last and "frames 1" in last
    assert (tmp_path / "l.partial.tif").exists() and not (tmp_path / "l.tif").exists()
