"""The README's first command, run as a user would: the demo must pass end to end.

``scripts/demo`` is ``scripts/bootstrap`` (already done for the test run) followed by
``scripts/demo.py``, which this test runs with the same interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out
    # The good change builds and its tests pass; the broken one fails with exit 1.
    assert "unit: success" in out
    assert "unit: failure (exit status 1)" in out
    assert "tryssh try exited with 1" in out
    # The builds' output came back over SSH: live (--follow), then the failure's log tail.
    assert "Ran 1 test" in out and "FAILED (failures=1)" in out
    assert "--- unit: last 30 lines of the log ---" in out
    assert "/jobdir/logs/" not in out  # no server path is shown to the developer
    assert out.count("unit=success") == 1 and out.count("unit=failure") == 1  # tryssh jobs
    assert "tryssh serve exited with 0" in out
    # Nothing is left behind: the temporary directory is gone.
    root = re.search(r"A small git project with tests, in (\S+)", out)
    assert root and not os.path.exists(root.group(1))
