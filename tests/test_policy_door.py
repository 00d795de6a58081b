"""Policy at the door: tryserver refuses what the consumer would refuse, in its words.

The real forced command runs with a config; a refused job leaves tmp/ and new/ empty, the
audit line says "refused", and the consumer still checks on its own (the config can change
between delivery and claim).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import venv_bin

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.records import RecordStore
from tryssh.server.config import config_from_dict, load_config
from tryssh.server.consumer import Consumer, EventLog
from tryssh.server.policy import PolicyRefused, TooLarge, check_at_door, count_pending

CONFIG = """\
jobdir = "jobdir"
[builders.unit]
command = ["true"]
[builders.lint]
command = ["true"]
[builders.secret]
command = ["true"]
[users.alice]
builders = ["unit", "lint"]
branches = ["main", "feature/*"]
max_job_size = 2000
[users.bob]
builders = ["unit"]
max_pending = 1
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    Jobdir(str(tmp_path / "jobdir")).create()
    path = tmp_path / "tryssh.toml"
    path.write_text(CONFIG)
    return path


def job_bytes(builders: list[str] | None, branch: str = "main", patch: bytes = b"p\n") -> bytes:
    return encode_job(Job("id", branch, "rev", 1, patch, builders, who="mallory"))


def tryserver(site: Path, data: bytes, user: str = "alice") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    argv = [venv_bin("tryserver"), "--config", str(site), "--user", user]
    return subprocess.run(argv, input=data, capture_output=True, env=env, timeout=60)


def listing(site: Path) -> dict[str, list[str]]:
    return {s: sorted(os.listdir(site.parent / "jobdir" / s)) for s in ("tmp", "new", "cur")}


def refused(result: subprocess.CompletedProcess, code: int, words: str, site: Path) -> None:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert err == f"tryserver: {words}\n"
    assert result.stdout == b""
    assert listing(site) == {"tmp": [], "new": [], "cur": []}
    audit = (site.parent / "jobdir" / "audit.log").read_text().splitlines()[-1]
    assert "outcome=refused" in audit and f"exit={code}" in audit


@pytest.mark.parametrize(
    ("builders", "branch", "words"),
    [
        (["nosuch"], "main", "unknown builder 'nosuch'"),
        (["secret"], "main", "builder 'secret' is not allowed for 'alice'"),
        (["unit"], "release", "branch 'release' is not allowed for 'alice'"),
    ],
)
def test_refused_at_the_door_with_77(site, builders, branch, words):
    refused(tryserver(site, job_bytes(builders, branch)), 77, words, site)


def test_over_the_users_size_is_65(site):
    """alice's max_job_size caps the stream itself: the job is never held or written whole."""
    result = tryserver(site, job_bytes(["unit"], patch=b"x" * 2100))
    assert result.returncode == 65, result.stderr
    assert result.stderr == b"tryserver: job is larger than the limit of 2000 bytes for 'alice'\n"
    assert listing(site) == {"tmp": [], "new": [], "cur": []}


def test_size_check_counts_the_written_job(site):
    """Pinning who can make the written job bigger than what was read: still checked."""
    config = load_config(str(site))
    with pytest.raises(TooLarge) as err:
        check_at_door(config, "alice", ["unit"], "main", 2001)
    assert err.value.exit_code == 65
    assert err.value.message == "job is 2001 bytes, more than the limit of 2000 for 'alice'"


def test_allowed_job_is_delivered_and_consumed(site):
    result = tryserver(site, job_bytes(["unit"], "feature/x"))
    assert result.returncode == 0, result.stderr
    name = result.stdout.decode().strip()
    assert listing(site)["new"] == [name]


def test_max_pending_counts_waiting_and_running_jobs(site):
    first = tryserver(site, job_bytes(["unit"]), user="bob")
    assert first.returncode == 0, first.stderr
    result = tryserver(site, job_bytes(["unit"]), user="bob")
    assert result.returncode == 77
    assert result.stderr == b"tryserver: 'bob' already has 1 pending jobs (max_pending is 1)\n"
    assert len(listing(site)["new"]) == 1  # only the first
    # Another user's jobs do not count against bob.
    assert count_pending(load_config(str(site)), "alice") == 0


def test_the_consumer_keeps_its_own_check(site):
    """A job delivered under an old config is refused by the consumer under the new one."""
    assert tryserver(site, job_bytes(["lint"])).returncode == 0
    site.write_text(CONFIG.replace('builders = ["unit", "lint"]', 'builders = ["unit"]'))
    consumer = Consumer(load_config(str(site)), log=EventLog(open(os.devnull, "w")))
    try:
        consumer.run(once=True)
    finally:
        consumer.close()
    store = RecordStore(str(site.parent / "jobdir" / "state"))
    (record,) = [store.read(n) for n in store.all_jobs()]
    assert record["state"] == "rejected"
    assert record["reason"] == "builder 'lint' is not allowed for 'alice'"


def test_unlisted_user_is_refused_in_the_consumers_words():
    config = config_from_dict({"jobdir": "/nonexistent", "users": {"alice": {}}})
    with pytest.raises(PolicyRefused) as err:
        check_at_door(config, "eve", None, "main", 10)
    assert err.value.message == "user 'eve' is not allowed to submit jobs"
    assert err.value.exit_code == 77
