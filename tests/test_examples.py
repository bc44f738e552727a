"""The scripts in examples/ run as documented."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["track_objects.py", "segment_stack.py"])
def test_example_runs(script, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", [script])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.strip(), f"{script} printed nothing"
    if script == "track_objects.py":
        assert "re-propagated frame 4: objects [1, 2]" in printed
