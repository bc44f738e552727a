"""Precompute image features and segment many volumes on dask.distributed.

- :mod:`.cluster`: a :class:`distributed.LocalCluster` of worker *processes* by default (one per
  GPU, else a few CPU workers with their torch threads split so they do not oversubscribe the
  cores), or an existing cluster given by its scheduler address.
- :mod:`.precompute`: fill a feature store (:mod:`napari_sam2.engine.feature_store`) with every
  frame's image features, chunk by chunk, resuming where a previous run stopped.
- :mod:`.batch`: one task per row of a jobs CSV (``stack,points,boxes,prompts,out``).
- :mod:`.worker`: what a worker process keeps between tasks (one model).

dask and distributed are optional (``pip install 'napari-sam2[cluster]'``); they are imported
only when a cluster is used, so importing this package works without them. The package imports
only :mod:`napari_sam2.engine` and :mod:`napari_sam2.model`, never napari or Qt.
"""

from __future__ import annotations

__all__ = ["CLUSTER_EXTRA", "ClusterUnavailable", "require_distributed"]

CLUSTER_EXTRA = "pip install 'napari-sam2[cluster]'"
"""How to install what precompute and batch need."""


class ClusterUnavailable(ImportError):
    """dask.distributed (or zarr) is missing; the message says what to install."""


def require_distributed():
    """Import and return :mod:`distributed`, or raise :class:`ClusterUnavailable`."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as err:
        raise ClusterUnavailable(
            f"precompute and batch run on dask.distributed, which is not installed ({err}); "
            f"install it with: {CLUSTER_EXTRA}"
        ) from err
    return distributed
