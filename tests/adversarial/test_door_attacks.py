"""Attacks on the policy at the door: a client that lies or plays with globs never gets a
job into new/ that its policy forbids. Each case is the real forced command, bounded."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import clean_env, venv_bin

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job

CONFIG = """\
jobdir = "jobdir"
[builders.unit]
command = ["true"]
[builders.deploy]
command = ["true"]
[users.alice]
builders = ["unit"]
branches = ["main"]
[users.admin]
builders = ["*"]
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    Jobdir(str(tmp_path / "jobdir")).create()
    (tmp_path / "tryssh.toml").write_text(CONFIG)
    return tmp_path


def submit(site: Path, job: Job) -> subprocess.CompletedProcess[bytes]:
    argv = [venv_bin("tryserver"), "--config", str(site / "tryssh.toml"), "--user", "alice"]
    return subprocess.run(argv, input=encode_job(job), capture_output=True, env=clean_env(),
                          timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("who", "builders", "branch", "words"),
    [
        ("admin", ["deploy"], "main", "builder 'deploy' is not allowed for 'alice'"),  # lies
        ("alice", ["*"], "main", "unknown builder '*'"),  # a glob is not a builder name
        ("alice", ["unit*"], "main", "unknown builder 'unit*'"),
        ("alice", ["unit", "deploy"], "main", "builder 'deploy' is not allowed"),  # smuggled
        ("alice", ["unit"], "*", "branch '*' is not allowed for 'alice'"),  # glob as branch
        ("alice", ["unit"], "main/../release", "is not allowed for 'alice'"),
        ("alice", ["unit\n"], "main", "unknown builder"),
    ],
)
def test_refused_and_nothing_written(site, who, builders, branch, words):
    result = submit(site, Job("1", branch, "abc", 1, b"p\n", builders, who=who))
    assert result.returncode == 77, result.stderr
    assert words in result.stderr.decode()
    assert result.stderr.count(b"\n") == 1  # one line: a newline in a name cannot forge more
    for sub in ("tmp", "new", "cur"):
        assert os.listdir(site / "jobdir" / sub) == []
