"""The annotator's folder of feature stores: found by signature, made when missing, a store of
the same image made with other settings reported and never used."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam2._napari import Annotator
from napari_sam2._napari.feature_folder import choose_store, store_name
from napari_sam2.engine.data_signature import data_signature
from napari_sam2.engine.tracker import Tracker

pytest.importorskip("zarr")


class EncoderCalls:
    """Counts the image encoder's forward passes (feature computations) of a model."""

    def __init__(self, model) -> None:
        self.count = 0
        self._handle = model.image_encoder.register_forward_hook(self._seen)

    def _seen(self, *_args) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def session(model, data, folder, **state):
    viewer = ViewerModel()
    image = viewer.add_image(data, name="cells")
    a = Annotator(viewer)
    a.state.update({"precision": "float32", "prefetch": False, **state})
    a.state.update({"feature_store": True, "feature_folder": str(folder)})
    a.set_model(model)
    a.state.image = image
    return viewer, image, a


def test_choose_store_finds_by_signature_and_says_why_not(model, stack, tmp_path):
    signature = data_signature(Tracker(model, stack))
    made = choose_store(tmp_path, signature, "my cells")
    assert not made.found and made.store is not None
    assert made.store.path.name == store_name("my cells", signature)
    assert made.store.path.name.startswith("my_cells-") and "kept on disk" in made.note
    again = choose_store(tmp_path, signature, "renamed layer")
    assert again.found and again.store.path == made.store.path
    assert "found on disk" in again.note and "0 of 5 slice(s)" in again.note
    other = data_signature(Tracker(model, stack, intensity_range=(0, 4000)))
    told = choose_store(tmp_path, other, "my cells")
    assert not told.found and told.store.path != made.store.path
    assert "is not used, because" in told.note and "intensity range" in told.note
    # Another image's store is not this image's: nothing to report.
    elsewhere = data_signature(Tracker(model, stack[::-1].copy()))
    assert "not used" not in choose_store(tmp_path, elsewhere, "x").note


def test_reopening_an_image_reads_its_features_from_the_folder(model, stack, tmp_path):
    calls = EncoderCalls(model)
    try:
        viewer, image, a = session(model, stack, tmp_path)
        assert "kept on disk" in a.state.store_note
        viewer.dims.set_current_step(0, 3)
        a.add_point(image.data_to_world([3, 30, 20]))
        assert calls.count == 1
        first = a.layers.labels.data[3].copy()
        assert (first == 1).any()
        store = a.session().tracker.feature_store
        assert store is not None and store.has(3) and store.count() == 1

        calls.count = 0
        viewer2, image2, b = session(model, stack.copy(), tmp_path)
        assert "found on disk" in b.state.store_note and "1 of 5" in b.state.store_note
        viewer2.dims.set_current_step(0, 3)
        b.add_point(image2.data_to_world([3, 30, 20]))
        assert calls.count == 0, "the first click after reopening computes no features"
        np.testing.assert_array_equal(b.layers.labels.data[3], first)

        # Another intensity setting: the store does not fit, the note says why.
        b.state.intensity = "contrast limits"
        b.add_point(image2.data_to_world([3, 31, 20]))
        assert "is not used, because" in b.state.store_note
        assert "intensity range" in b.state.store_note
        assert calls.count == 1
        b.state.feature_store = False
        b.add_point(image2.data_to_world([3, 32, 20]))
        assert b.state.store_note == "" and b.session().tracker.feature_store is None
    finally:
        calls.close()
