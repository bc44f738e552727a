"""How many inputs the property-based (hypothesis) tests and the CLI bad-input table try.

Runs the fuzz tests once with hypothesis' statistics and prints, per test, the number of test
cases that ran (each a distinct generated input; hypothesis does not repeat an input within a
run) and the total; then the number of distinct bad command lines in ``tests/test_cli.py``.

    .venv/bin/python bench/fuzz_report.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ_FILES = [
    "tests/engine/test_frames.py",
    "tests/engine/test_prompts.py",
    "tests/engine/test_prompt_files.py",
    "tests/model/test_checkpoint.py",
]


def main() -> int:
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", *FUZZ_FILES, "-q", "-p", "no:cacheprovider",
               "-k", "fuzz", "--hypothesis-show-statistics"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    total = 0
    current = None
    for line in done.stdout.splitlines():
        if line.startswith("tests/") and line.rstrip().endswith(":"):
            current = line.rstrip(":").split("::")[-1]
        found = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", line)
        if found and current:
            passing, failing = int(found[1]), int(found[2])
            total += passing + failing
            print(f"{current:<70} {passing:>5} inputs, {failing} failing")
    print(f"{'all fuzz tests':<70} {total:>5} inputs in {elapsed:.1f} s (pytest status "
          f"{done.returncode})")  # fmt: skip

    sys.path.insert(0, str(ROOT))
    from tests.test_cli import BAD_INPUTS

    print(f"CLI bad inputs in tests/test_cli.py: {len({case[0] for case in BAD_INPUTS})} distinct")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
