"""The npe2 manifest: valid, found from the installed package, every python_name importable."""

import importlib
from pathlib import Path

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]


def _manifest():
    return npe2.PluginManifest.from_file(ROOT / "napari.yaml")


def test_manifest_is_valid_and_declares_the_widget_and_sample():
    manifest = _manifest()
    assert manifest.name == "napari-sam2"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    samples = {s.display_name for s in manifest.contributions.sample_data}
    assert widgets == {"SAM 2 annotator"}
    assert samples == {"SAM 2 demo stack"}


def test_every_python_name_imports():
    for command in _manifest().contributions.commands:
        module_name, _, attribute = command.python_name.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute)), command.python_name


def test_the_package_ships_the_same_manifest_npe2_finds():
    packaged = ROOT / "src" / "napari_sam2" / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()
    found = npe2.PluginManifest.from_distribution("napari-sam2")
    assert found.name == "napari-sam2"
    assert {c.id for c in found.contributions.commands} == {
        c.id for c in _manifest().contributions.commands
    }


def test_demo_stack_is_a_seeded_uint16_stack_of_cells():
    from napari_sam2._sample_data import demo_stack, make_demo_stack

    [(data, meta, kind)] = demo_stack()
    assert kind == "image" and meta["name"] == "SAM 2 demo stack"
    assert data.shape == (16, 128, 128) and data.dtype == np.uint16
    np.testing.assert_array_equal(data, make_demo_stack())
    # Bright cells on a dim background in every slice.
    for frame in data:
        assert (frame > 900).mean() > 0.03 and np.median(frame) < 500
    with pytest.raises(ValueError, match="shape"):
        make_demo_stack((4, 8, 8))
