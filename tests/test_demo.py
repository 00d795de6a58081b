"""The README's first command, run as a user would: the demo must pass end to end.

``scripts/demo`` is ``scripts/bootstrap`` (already done for the test run) followed by
``scripts/demo.py``, which this test runs with the same interpreter.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 120  # seconds


def run_demo(*args: str, deadline: float = DEADLINE) -> tuple[int, str]:
    """Run scripts/demo.py in its own process group; past *deadline*, stop the whole group
    (SIGTERM, then SIGKILL): a hung demo must not leave ``tryssh serve`` running."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        raise AssertionError(f"the demo took longer than {deadline} s:\n{out}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the demo left in its group
        except ProcessLookupError:
            pass
    return proc.returncode, out


def test_demo_runs_end_to_end() -> None:
    code, out = run_demo()
    assert code == 0, out
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


def _group_members(pgid: int) -> list[str]:
    """The live (not zombie) processes of process group *pgid*, as ``pid command``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rpartition(")")[2].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid} {command}")
    return found


def test_demo_stops_its_server_on_sigterm() -> None:
    """SIGTERM to the demo alone (not its group) stops the server it started, and cleans up."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # until the server is up (or the demo ends)
            lines.append(line)
            if "listening on" in line:
                break
        assert any("listening on" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode != 0
        root = re.search(r"A small git project with tests, in (\S+)", "".join(lines))
        assert root and not os.path.exists(root.group(1)), out
        # The server (and any build it ran) was in the demo's process group: nothing of the
        # group is left.
        # (A child the demo killed may leave a grandchild that is still exiting: poll.)
        wait_until(lambda: not _group_members(proc.pid), timeout=30,
                   message=lambda: f"outlived the demo: {_group_members(proc.pid)}")  # fmt: skip
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
