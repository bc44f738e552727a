"""One real dask.distributed LocalCluster of two worker processes for every test here.

Its workers load a tiny random-weight SAM 2.1 (input 256, object-score head biased so masks are
not empty) from a checkpoint file, as a user's cluster loads a real one. Starting the cluster
and importing torch in two processes costs seconds, so the cluster is shared by the session.
"""

import pytest
import tifffile
import torch

from tests.test_api import biased_random_model, disc_stack

pytest.importorskip("distributed")

IMAGE_SIZE = 256
RANGE = (0, 4000)  # intensity range of disc_stack, so no estimate differs between runs


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny256.pt"
    torch.save({"model": biased_random_model().state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def client():
    from napari_sam2.distributed.cluster import connect

    with connect(workers=2) as connected:
        yield connected


def write_stack(path, frames):
    tifffile.imwrite(path, disc_stack(frames))
    return path


def model_args(checkpoint):
    """The CLI options that make the workers build the test network on the CPU."""
    return ["--checkpoint", checkpoint, "--image-size", IMAGE_SIZE, "--device", "cpu",
            "--range", *RANGE]  # fmt: skip
