"""build_sam2, presets and checkpoints: state-dict equality with Meta's SAM2Base, round trips,
and the errors for bad files."""

from __future__ import annotations

import pytest
import torch

from napari_sam2.model import PRESET_NAMES, build_sam2, get_config
from napari_sam2.model.checkpoint import CheckpointError, identify_preset
from tests._oracle import ORACLE_CONFIGS, require_oracle, size_overrides


def _oracle_shapes_on_meta(preset: str, image_size: int) -> dict[str, tuple]:
    require_oracle()
    from hydra import compose
    from hydra.utils import instantiate

    cfg = compose(config_name=ORACLE_CONFIGS[preset], overrides=size_overrides(image_size))
    # Meta's Hiera calls .item() while building, so it cannot be built on the meta device.
    model = instantiate(cfg.model, _recursive_=True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del model
    return shapes


def _our_shapes_on_meta(preset: str, image_size: int) -> dict[str, tuple]:
    from napari_sam2.model.sam2 import SAM2

    with torch.device("meta"):
        model = SAM2(get_config(preset, image_size))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_eight_official_presets_are_exported():
    assert PRESET_NAMES == [
        "sam2_hiera_tiny",
        "sam2_hiera_small",
        "sam2_hiera_base_plus",
        "sam2_hiera_large",
        "sam2.1_hiera_tiny",
        "sam2.1_hiera_small",
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
    ]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_state_dict_keys_and_shapes_equal_meta(preset):
    ours = _our_shapes_on_meta(preset, 1024)
    theirs = _oracle_shapes_on_meta(preset, 1024)
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    assert ours == theirs


def test_state_dict_at_another_input_size_is_the_same():
    assert _our_shapes_on_meta("sam2.1_hiera_tiny", 512) == _our_shapes_on_meta(
        "sam2.1_hiera_tiny", 1024
    )


def test_custom_input_size_sets_the_rope_grid():
    model = build_sam2("sam2.1_hiera_tiny", image_size=320)
    assert model.image_size == 320
    assert model.config.feature_size == 20
    assert model.sam_prompt_encoder.mask_input_size == (80, 80)


def test_bad_input_size_and_preset_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_sam2("sam2.1_hiera_tiny", image_size=300)
    with pytest.raises(ValueError, match="sam2.1_hiera_tiny"):
        build_sam2("sam2.1_hiera_teeny")
    with pytest.raises(ValueError, match="fill_hole_area"):
        build_sam2("sam2.1_hiera_tiny", image_size=256, fill_hole_area=-1)


def test_meta_checkpoint_loads_strictly_and_round_trips(tmp_path):
    from tests._oracle import build_oracle_base

    oracle = build_oracle_base("sam2.1_hiera_tiny", 256)
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": oracle.state_dict()}, path)

    ours = build_sam2("sam2.1_hiera_tiny", path, image_size=256)
    for key, value in oracle.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key

    # and back: a file saved from ours loads into Meta's network strictly
    back = tmp_path / "ours.pt"
    torch.save({"model": ours.state_dict()}, back)
    fresh = build_oracle_base("sam2.1_hiera_tiny", 256)
    state = torch.load(back, weights_only=True)["model"]
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.no_mem_embed, ours.no_mem_embed)


def test_sam20_checkpoint_loads_into_sam20_preset(tmp_path):
    from tests._oracle import build_oracle_base

    oracle = build_oracle_base("sam2_hiera_tiny", 256)
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": oracle.state_dict()}, path)
    ours = build_sam2("sam2_hiera_tiny", path, image_size=256)
    assert ours.no_obj_embed_spatial is None
    assert identify_preset(oracle.state_dict()) == "sam2_hiera_tiny"


def test_checkpoint_of_another_preset_names_both(tmp_path):
    small = build_sam2("sam2.1_hiera_small", image_size=256)
    path = tmp_path / "weights.pt"
    torch.save({"model": small.state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        build_sam2("sam2.1_hiera_tiny", path, image_size=256)
    message = str(info.value)
    assert "sam2.1_hiera_small, not sam2.1_hiera_tiny" in message
    assert "weights.pt" in message


def test_sam20_file_for_sam21_preset_is_named(tmp_path):
    old = build_sam2("sam2_hiera_tiny", image_size=256)
    path = tmp_path / "old.pt"
    torch.save({"model": old.state_dict()}, path)
    with pytest.raises(CheckpointError, match="sam2_hiera_tiny, not sam2.1_hiera_tiny"):
        build_sam2("sam2.1_hiera_tiny", path, image_size=256)


def test_truncated_checkpoint_is_reported(tmp_path):
    model = build_sam2("sam2.1_hiera_tiny", image_size=256)
    whole = tmp_path / "whole.pt"
    torch.save({"model": model.state_dict()}, whole)
    cut = tmp_path / "cut.pt"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*truncated"):
        build_sam2("sam2.1_hiera_tiny", cut, image_size=256)


def test_file_that_is_not_a_checkpoint_is_reported(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.pt"):
        build_sam2("sam2.1_hiera_tiny", text, image_size=256)

    other = tmp_path / "other.pt"
    torch.save({"model": {"linear.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint"):
        build_sam2("sam2.1_hiera_tiny", other, image_size=256)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_sam2("sam2.1_hiera_tiny", tmp_path / "nowhere.pt", image_size=256)


def test_pickled_code_is_never_run(tmp_path):
    class Trap:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Trap()}, path)
    with pytest.raises(CheckpointError):
        build_sam2("sam2.1_hiera_tiny", path, image_size=256)


def test_model_import_loads_no_gui():
    import subprocess
    import sys

    code = (
        "import sys, napari_sam2.model, napari_sam2.engine.tracker\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'magicgui', 'vispy') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_model_layer_imports_nothing_from_the_engine():
    import ast
    from pathlib import Path

    import napari_sam2.model as model_package

    offenders = []
    for path in Path(model_package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                if "engine" in target or target.startswith(".."):
                    offenders.append(f"{path.name}: from {target} import ...")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: {a.name}" for a in node.names if "engine" in a.name]
    assert offenders == []
    from napari_sam2.engine import device
    from napari_sam2.model import devices

    assert device.resolve_device is devices.resolve_device  # one implementation
