"""batch on a real LocalCluster of two worker processes: every row as 'segment' writes it, a
failing row reported without stopping the others, resume, and the jobs file's checks."""

import os

import numpy as np
import pytest
import tifffile

from napari_sam2 import cli
from napari_sam2.distributed.batch import JobsFileError, read_jobs
from napari_sam2.engine.prompt_files import Prompt, write_points_csv
from napari_sam2.engine.prompt_store import ObjectRecord, Plane, PromptFile, write_prompt_file
from tests.test_api import CENTRE

from .conftest import model_args, write_stack

ROW, COL = CENTRE
HEADER = "stack,points,boxes,prompts,out\n"


def write_jobs(folder, text):
    path = folder / "jobs.csv"
    path.write_text(HEADER + text)
    return path


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_batch_writes_each_row_as_segment_does_and_reports_a_failing_row(
    tmp_path, client, checkpoint, capsys
):
    write_stack(tmp_path / "a.tif", 2)
    write_stack(tmp_path / "b.tif", 3)
    write_points_csv(tmp_path / "a_points.csv", [Prompt(1, 3, [[COL, ROW]], [1])])
    write_prompt_file(
        tmp_path / "b.sam2.json",
        PromptFile(
            prompts=[Prompt(2, 5, box=[COL - 10, ROW - 10, COL + 10, ROW + 10])],
            objects=[ObjectRecord(5, "disc")],
            plane=Plane(shape=(3, 64, 64), frame_axes=(1, 2), tracked_axis=0),
        ),
    )
    # the third volume fails: its click is on frame 7 of a 2-frame stack
    write_points_csv(tmp_path / "c_points.csv", [Prompt(7, 1, [[COL, ROW]], [1])])
    (tmp_path / "labels").mkdir()
    jobs = write_jobs(
        tmp_path,
        "a.tif,a_points.csv,,,labels/a.tif\n"
        "b.tif,,,b.sam2.json,labels/b.tif\n"
        "a.tif,c_points.csv,,,labels/c.tif\n",
    )
    argv = ["batch", jobs, "--scheduler", client.scheduler.address, *model_args(checkpoint)]
    status, out, err = run(argv, capsys)
    assert status == 1, err
    lines = out.splitlines()
    assert lines[0].split() == ["line", "volume", "objects", "frames", "seconds", "status"]
    assert lines[1].split()[:4] == ["2", "a.tif", "1", "2"] and lines[1].endswith("done")
    assert lines[2].split()[:4] == ["3", "b.tif", "1", "3"] and lines[2].endswith("done")
    assert lines[3].split()[:2] == ["4", "a.tif"]
    assert "failed: a prompt is on frame 7" in lines[3]
    assert lines[4] == "3 volume(s): 2 done, 0 skipped (already written), 1 failed"
    assert "volumes" in err  # the progress bar
    assert not (tmp_path / "labels" / "c.tif").exists()

    # A row's output equals what 'segment' writes in this process with the same options.
    reference = tmp_path / "a_reference.tif"
    argv = ["segment", tmp_path / "a.tif", "--points", tmp_path / "a_points.csv", "--out",
            reference, "-q", *model_args(checkpoint)]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    written = tifffile.imread(tmp_path / "labels" / "a.tif")
    np.testing.assert_array_equal(written, tifffile.imread(reference))
    assert set(np.unique(written)) == {0, 3}  # the object is there, with its id
    # the prompt file's object id and box were replayed
    replayed = tifffile.imread(tmp_path / "labels" / "b.tif")
    assert replayed.shape == (3, 64, 64) and set(np.unique(replayed[2])) == {0, 5}

    # A second run skips the finished rows (their files untouched) and retries the failed one.
    stamp = os.stat(tmp_path / "labels" / "a.tif").st_mtime_ns
    status, out, _ = run(["batch", jobs, "--scheduler", client.scheduler.address,
                          *model_args(checkpoint)], capsys)  # fmt: skip
    assert status == 1
    assert "skipped (output exists)" in out.splitlines()[1]
    assert out.splitlines()[2].split()[3] == "3"  # frames read off the existing output
    assert "3 volume(s): 0 done, 2 skipped (already written), 1 failed" in out
    assert os.stat(tmp_path / "labels" / "a.tif").st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no rows"),
        ("a.tif,p.csv,,,a.tif\n", "column 'out': " + "{d}/a.tif is the 'stack' input of line 2"),
        ("a.tif,p.csv,,,o.tif\nb.tif,p.csv,,,o.tif\n", "lines 2 and 3: both write"),
        ("a.tif,p.csv,,,o.tif\nb.tif,o.tif,,,p.tif\n", "'points' input of line 3"),
        ("a.tif,p.csv,,,o.png\n", "line 2, column 'out': 'o.png' must end in .tif"),
        (",p.csv,,,o.tif\n", "line 2, column 'stack': empty"),
        ("a.tif,p.csv,,,\n", "line 2, column 'out': empty"),
        ("a.tif,,,,o.tif\n", "line 2: no prompts"),
        ("a.tif,p.csv,,p.sam2.json,o.tif\n", "line 2: give either 'prompts' or 'points'"),
        ("a.tif,p.csv,o.tif\n", "line 2: 3 cell(s), but the header has 5 columns"),
    ],
)
def test_bad_jobs_files_name_the_line_and_column(tmp_path, text, message):
    with pytest.raises(JobsFileError, match=None) as caught:
        read_jobs(write_jobs(tmp_path, text))
    assert message.format(d=tmp_path) in str(caught.value)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "stack,points,boxes,prompt,out",
            "unknown column(s) 'prompt'; missing column(s) 'prompts'",
        ),
        ("stack,points,boxes,prompts,out,out", "repeated column(s) 'out'"),
        ("", "is empty; its first line must be the header stack,points,boxes,prompts,out"),
    ],
)
def test_bad_headers_say_what_the_header_must_be(tmp_path, header, message):
    path = tmp_path / "jobs.csv"
    path.write_text(header + ("\n" if header else ""))
    with pytest.raises(JobsFileError) as caught:
        read_jobs(path)
    assert message in str(caught.value)


def test_jobs_paths_are_relative_to_the_csv_and_blank_lines_are_skipped(tmp_path, capsys):
    sub = tmp_path / "sub"
    sub.mkdir()
    path = sub / "jobs.csv"
    # any column order; a BOM as spreadsheets write it; a blank line
    path.write_text("\ufeffout,stack,prompts,points,boxes\nx.tif,s.tif,p.sam2.json,,\n\n")
    (row,) = read_jobs(path)
    assert row.line == 2 and row.stack == str(sub / "s.tif") and row.out == str(sub / "x.tif")
    assert row.prompts == str(sub / "p.sam2.json") and row.points is None and row.boxes is None

    # the CLI prints one error line, before any cluster starts
    bad = write_jobs(tmp_path, "a.tif,,,,o.tif\n")
    status, _, err = run(["batch", bad], capsys)
    assert status == 2
    assert (
        err == f"error: {bad}, line 2: no prompts; fill 'prompts' (the annotator's prompt "
        "file) or 'points' and/or 'boxes' (napari Points/Shapes CSV files)\n"
    )


def test_batch_store_folder_keeps_one_feature_store_per_stack(
    tmp_path, client, checkpoint, capsys
):
    from napari_sam2.engine.feature_store import FeatureStore

    write_stack(tmp_path / "a.tif", 2)
    write_points_csv(tmp_path / "a_points.csv", [Prompt(0, 1, [[COL, ROW]], [1])])
    jobs = write_jobs(tmp_path, "a.tif,a_points.csv,,,a_labels.tif\n")
    stores = tmp_path / "stores"
    argv = ["batch", jobs, "--store", stores, "--scheduler", client.scheduler.address,
            *model_args(checkpoint)]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 0, out + err
    store = stores / "a.tif.features.zarr"
    signature = FeatureStore.read_signature(store)
    assert signature["num_frames"] == 2
    assert FeatureStore.open(store, signature, create=False).missing() == []
    assert tifffile.imread(tmp_path / "a_labels.tif").any()


def test_two_stacks_of_one_name_cannot_share_a_store(tmp_path):
    from napari_sam2.distributed.batch import check_stores

    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
    jobs = write_jobs(tmp_path, "x/s.tif,p.csv,,,x.tif\ny/s.tif,p.csv,,,y.tif\n")
    with pytest.raises(JobsFileError, match="lines 2 and 3: the stacks .* have the same name"):
        check_stores(read_jobs(jobs), tmp_path / "stores")
