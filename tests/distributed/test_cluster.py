"""The cluster helper: worker processes, their threads, the layout rules, the lazy import."""

import os
import subprocess
import sys

import pytest

from napari_sam2.distributed import cluster
from napari_sam2.distributed.cluster import local_layout


def test_local_cluster_runs_separate_worker_processes_with_split_threads(client):
    pids = client.run(os.getpid)
    assert len(pids) == 2
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert set(client.nthreads().values()) == {1}  # one task at a time per process
    layout = client.napari_sam2_layout
    assert layout.workers == 2
    assert layout.torch_threads == max(1, cluster.cpu_count() // 2)
    threads = client.run(lambda: os.environ["OMP_NUM_THREADS"])
    assert set(threads.values()) == {str(layout.torch_threads)}
    # dask's MALLOC_TRIM_THRESHOLD_ (which slows torch down) is not given to the workers
    trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(trim.values()) == {os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def test_layout_one_worker_per_gpu_else_a_few_cpu_workers(monkeypatch):
    monkeypatch.setattr(cluster, "cpu_count", lambda: 16)
    assert local_layout(gpus=0) == cluster.LocalLayout(4, 4, 0)  # at most 4 CPU workers
    assert local_layout(gpus=2) == cluster.LocalLayout(2, 8, 2)
    assert local_layout(3, gpus=0) == cluster.LocalLayout(3, 5, 0)
    monkeypatch.setattr(cluster, "cpu_count", lambda: 2)
    assert local_layout(gpus=0) == cluster.LocalLayout(2, 1, 0)
    assert local_layout(4, gpus=0).torch_threads == 1  # never 0 threads
    with pytest.raises(ValueError, match="whole number >= 1"):
        local_layout(0)


def test_workers_with_a_scheduler_is_refused():
    with (
        pytest.raises(ValueError, match="local cluster only"),
        cluster.connect("tcp://127.0.0.1:1", workers=2),
    ):
        pass


def test_package_imports_without_distributed_and_says_what_to_install(tmp_path):
    # A fake 'distributed' that fails to import stands for a missing package.
    (tmp_path / "distributed.py").write_text("raise ImportError('No module named distributed')")
    code = (
        "import napari_sam2.distributed, napari_sam2.distributed.batch, "
        "napari_sam2.distributed.precompute, napari_sam2.cli_cluster\n"
        "from napari_sam2 import cli\n"
        "raise SystemExit(cli.main(['precompute', 'x.tif', '--store', 'f.zarr']))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'napari-sam2[cluster]'" in done.stderr
    assert done.stderr.count("\n") == 1
