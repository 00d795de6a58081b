"""tryserver's last-line limits: a request's total time, who may ask for status, audit size."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import clean_env, tryserver, venv_bin, wait_until
from test_tryserver import EMPTY, JOB_BYTES, SSH_ENV, assert_refused, audit_lines, listing

from tryssh.core.jobdir import Jobdir
from tryssh.core.request import MAX_COMMAND


def test_a_stalled_upload_is_given_up_after_max_time(jobdir: Jobdir) -> None:
    proc = subprocess.Popen(
        [venv_bin("tryserver"), "--jobdir", jobdir.path, "--user", "alice", "--max-time", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert proc.stdin is not None
    proc.stdin.write(JOB_BYTES[: len(JOB_BYTES) // 2])  # half a job, then silence
    proc.stdin.flush()
    started = time.monotonic()
    wait_until(lambda: proc.poll() is not None, timeout=30, message="tryserver never gave up")
    assert time.monotonic() - started < 30
    assert proc.returncode == 75
    assert b"--max-time" in proc.stderr.read()
    proc.stdin.close()
    assert listing(jobdir) == EMPTY  # nothing half-written is left, in new/ or in tmp/
    (line,) = audit_lines(Path(jobdir.path) / "audit.log")
    assert line["outcome"] == "failed" and line["exit"] == "75"


@pytest.mark.parametrize("verb", ["status 1.M1P1Q1R0.host", "jobs"])
def test_status_needs_a_pinned_user_under_sshd(jobdir: Jobdir, verb: str) -> None:
    env = {**SSH_ENV, "SSH_ORIGINAL_COMMAND": f"tryserver {verb}"}
    result = tryserver(jobdir, b"", env=env, user=None)
    assert_refused(result, 77, jobdir, message="--user")


def test_audit_keeps_at_most_a_parsable_command(jobdir: Jobdir) -> None:
    huge = "tryserver " + "x" * (20 * MAX_COMMAND)
    result = tryserver(jobdir, JOB_BYTES, env={**SSH_ENV, "SSH_ORIGINAL_COMMAND": huge})
    assert result.returncode == 64
    (line,) = audit_lines(Path(jobdir.path) / "audit.log")
    assert len(line["cmd"]) < MAX_COMMAND + 40
    assert line["cmd"].endswith(f"[{len(huge)} characters]")
