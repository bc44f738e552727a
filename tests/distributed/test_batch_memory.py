"""batch's bounded memory per worker: each row's label volume on disk beside its output, and
a tracking-state RAM budget that is the worker's share of the machine (or --state-ram-gib)."""

import pytest
import tifffile

from napari_sam2 import cli, cli_cluster
from napari_sam2.distributed.batch import BatchRow
from napari_sam2.distributed.worker import state_ram_share, tasks_per_host
from napari_sam2.engine import label_buffer
from napari_sam2.engine import tracker as tracker_module
from napari_sam2.engine.memory_estimate import DEFAULT_STATE_RAM_BYTES
from napari_sam2.engine.prompt_files import Prompt, write_points_csv
from tests.test_api import CENTRE

from .conftest import IMAGE_SIZE, RANGE, write_stack

ROW, COL = CENTRE
GIB = 2**30


def test_state_ram_share_splits_half_the_memory_between_the_tasks():
    assert state_ram_share(4, available=8 * GIB) == GIB  # 8 GiB / 4 tasks / 2
    assert state_ram_share(1, available=64 * GIB) == DEFAULT_STATE_RAM_BYTES  # capped
    assert state_ram_share(0, available=2 * GIB) == GIB  # at least one task


def test_tasks_per_host_counts_the_busiest_machines_slots(client):
    slots = sum(client.nthreads().values())
    assert tasks_per_host(client) == slots >= 2  # both local workers are on this machine


def _row(tmp_path, checkpoint):
    write_stack(tmp_path / "a.tif", 3)
    write_points_csv(tmp_path / "p.csv", [Prompt(0, 2, [[COL, ROW]], [1])])
    return BatchRow(
        line=2,
        stack=str(tmp_path / "a.tif"),
        points=str(tmp_path / "p.csv"),
        boxes=None,
        prompts=None,
        out=str(tmp_path / "out.tif"),
    )


def _options(checkpoint, **extra):
    options = dict.fromkeys(cli_cluster._ROW_OPTIONS)
    options.update(model="sam2.1_hiera_tiny", checkpoint=str(checkpoint), image_size=IMAGE_SIZE,
                   device="cpu", axis=0, range=list(RANGE), direction="both")  # fmt: skip
    options.update(extra)
    return options


@pytest.mark.parametrize(("given", "tasks"), [(None, 3), (123 * 2**20, 1)])
def test_a_row_keeps_labels_on_disk_and_its_state_in_budget(
    tmp_path, checkpoint, monkeypatch, given, tasks
):
    budgets, buffers = [], []
    real_tracker, real_buffer = tracker_module.Tracker.__init__, label_buffer.LabelBuffer.__init__

    def tracker_spy(self, *args, **kwargs):
        budgets.append(kwargs.get("state_ram_bytes"))
        real_tracker(self, *args, **kwargs)

    def buffer_spy(self, *args, **kwargs):
        real_buffer(self, *args, **kwargs)
        buffers.append(self)

    monkeypatch.setattr(tracker_module.Tracker, "__init__", tracker_spy)
    monkeypatch.setattr(label_buffer.LabelBuffer, "__init__", buffer_spy)
    from napari_sam2.engine import memory_estimate

    monkeypatch.setattr(memory_estimate, "available_host_bytes", lambda: 6 * GIB)
    row = _row(tmp_path, checkpoint)
    options = _options(checkpoint, state_ram_bytes=given, tasks_per_host=tasks)
    result = cli_cluster.segment_row(row, options, None)
    assert not result.failed, result
    assert budgets == [given if given is not None else GIB]  # 6 GiB / 3 tasks / 2
    assert len(buffers) == 1 and buffers[0].folder.parent == tmp_path
    assert not buffers[0].folder.exists()
    labels = tifffile.imread(row.out)
    assert labels.shape == (3, 64, 64) and labels[0, ROW, COL] == 2


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_state_ram_gib_must_be_positive(tmp_path, value, capsys):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("stack,points,boxes,prompts,out\na.tif,p.csv,,,o.tif\n")
    status = cli.main(["batch", str(jobs), "--state-ram-gib", value])
    assert status == 2
    assert "--state-ram-gib must be a number above 0" in capsys.readouterr().err
