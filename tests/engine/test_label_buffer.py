"""The disk-backed label volume: same files as the in-RAM volume, partial files on Ctrl-C, no
temporary folder left behind, and RSS that does not grow with the volume."""

import json
import resource

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2.engine import label_buffer
from napari_sam2.engine.io import write_labels
from napari_sam2.engine.label_buffer import LabelBuffer, label_volume
from napari_sam2.engine.prompt_files import Prompt, write_points_csv
from tests.test_api import CENTRE, biased_random_model, disc_stack
from tests.test_cli import interrupt_after_two_frames


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".labels-" in p.name]


def test_buffer_writes_the_same_file_as_the_array(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 300, size=(5, 37, 70)).astype(np.uint16)
    volume[3] = 0  # a frame never written reads 0
    with LabelBuffer(tmp_path / "b.tif", volume.shape, np.uint16) as buffer:
        assert buffer.folder.parent == tmp_path and buffer.path.stat().st_size == volume.nbytes
        for frame in (4, 0, 2, 1):  # any order, as backward propagation writes them
            buffer[frame] = volume[frame]
        assert buffer.max() == int(volume.max())
        np.testing.assert_array_equal(buffer[-1], volume[4])
        np.testing.assert_array_equal(np.asarray(buffer), volume)
        write_labels(tmp_path / "b.tif", buffer, description={"finished_frames": [0, 1]})
        folder = buffer.folder
    write_labels(tmp_path / "a.tif", volume, description={"finished_frames": [0, 1]})
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert not folder.exists() and not _leftovers(tmp_path)


def test_buffer_checks_frames_and_indices(tmp_path):
    with LabelBuffer(tmp_path / "o.tif", (2, 4, 4), np.uint32) as buffer:
        with pytest.raises(ValueError, match=r"\(4, 4\)"):
            buffer[0] = np.zeros((4, 5))
        with pytest.raises(IndexError, match="frame 2"):
            buffer[2] = np.zeros((4, 4))
        with pytest.raises(TypeError):
            buffer[0:1]
    with pytest.raises(ValueError, match="closed"):
        buffer[0]
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        LabelBuffer(tmp_path / "o.tif", (4, 4), np.uint16)


def test_label_volume_chooses_disk_above_the_threshold(tmp_path, monkeypatch):
    with label_volume(tmp_path / "o.tif", (2, 8, 8), np.uint16) as small:
        assert isinstance(small, np.ndarray)
    monkeypatch.setattr(label_buffer, "DISK_LABELS_BYTES", 100)
    with label_volume(tmp_path / "o.tif", (2, 8, 8), np.uint16) as large:
        assert isinstance(large, LabelBuffer)
    with label_volume(tmp_path / "o.tif", (2, 8, 8), np.uint16, on_disk=False) as forced:
        assert isinstance(forced, np.ndarray)
    assert label_buffer.labels_on_disk((2, 8, 8), np.uint16) and not label_buffer.labels_on_disk(
        (2, 5, 5), np.uint16
    )  # 256 bytes against 100 bytes; 100 is not above
    assert label_buffer.labels_on_disk((1, 1, 1), np.uint16, True)


def test_rss_does_not_grow_with_the_frames_written(tmp_path):
    # 64 frames of 1024 x 1024 uint32: 256 MiB through the buffer, a few MiB of it resident
    frame = np.full((1024, 1024), 7, dtype=np.uint32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with LabelBuffer(tmp_path / "o.tif", (64, 1024, 1024), np.uint32) as buffer:
        for index in range(64):
            buffer[index] = frame
        assert int(buffer[63][5, 5]) == 7
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB for a 256 MiB volume"


# ---------------------------------------------------------------------- through the CLI


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_build_model", lambda *a: biased_random_model())
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, disc_stack(3))
    row, col = CENTRE
    points = write_points_csv(tmp_path / "points.csv", [Prompt(1, 3, [[col, row]], [1])])
    return stack, points


def _segment(stack, points, out, *extra):
    return cli.main(["segment", str(stack), "--points", str(points), "--out", str(out), "-q",
                     *extra])  # fmt: skip


def test_segment_on_disk_writes_the_same_file(tmp_path, inputs, monkeypatch):
    stack, points = inputs
    assert _segment(stack, points, tmp_path / "ram.tif") == 0
    made = []
    real = label_buffer.LabelBuffer.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(label_buffer.LabelBuffer, "__init__", spy)
    monkeypatch.setattr(label_buffer, "DISK_LABELS_BYTES", 0)
    assert _segment(stack, points, tmp_path / "disk.tif") == 0
    assert len(made) == 1 and made[0].folder.parent == tmp_path
    assert (tmp_path / "ram.tif").read_bytes() == (tmp_path / "disk.tif").read_bytes()
    assert not _leftovers(tmp_path)


def test_segment_on_disk_keeps_the_finished_frames_on_ctrl_c(tmp_path, inputs, monkeypatch):
    stack, points = inputs
    monkeypatch.setattr(label_buffer, "DISK_LABELS_BYTES", 0)
    interrupt_after_two_frames(monkeypatch)
    out = tmp_path / "labels.tif"
    assert _segment(stack, points, out, "--direction", "forward") == cli.EXIT_INTERRUPTED
    assert not out.exists() and not _leftovers(tmp_path)
    with tifffile.TiffFile(tmp_path / "labels.partial.tif") as tif:
        meta = json.loads(tif.pages[0].description)
        labels = tif.asarray()
    assert meta["finished_frames"] == [1, 2]
    row, col = CENTRE
    assert labels.shape == (3, 64, 64) and labels[1, row, col] == 3 and not labels[0].any()


def test_release_mapped_pages_drops_a_mapped_stacks_pages_not_its_data(tmp_path):
    from napari_sam2.engine.io import read_stack

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.arange(4 * 256 * 256, dtype=np.uint16).reshape(4, 256, 256))
    stack = read_stack(path)
    total = int(stack.sum())
    assert label_buffer.release_mapped_pages(stack)
    assert int(stack.sum()) == total  # read again from the file
    assert not label_buffer.release_mapped_pages(np.zeros(3))
