"""Attacks on the requests that bring results back (``log``, ``watch``, ``cancel``).

A log file is written by a build, i.e. by whatever the patch under test runs: it can be
replaced by a symlink to a secret, a FIFO that would block the server, or a symlinked
directory. Job and builder names come from the client and may probe other users' jobs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_results_server import deliver, final, site, tryserver  # noqa: F401 (fixture)


def _log(site: Path, name: str, builder: str = "ok") -> Path:  # noqa: F811
    return site.parent / "jobdir" / "logs" / name / f"{builder}.log"


def test_a_log_replaced_by_a_symlink_is_not_followed(site: Path, tmp_path: Path) -> None:  # noqa: F811
    name = deliver(site, "alice", ["ok"])
    final(site, name)
    secret = tmp_path / "secret"
    secret.write_text("password\n")
    log = _log(site, name)
    log.unlink()
    log.symlink_to(secret)
    for words in (["log", name], ["log", name, "--follow"], ["log", name, "--tail", "1"]):
        proc = tryserver(site, *words)
        assert proc.returncode == 66, proc.stderr
        assert b"password" not in proc.stdout
        assert "symbolic link" in proc.stderr.decode()


def test_a_log_directory_replaced_by_a_symlink_is_not_followed(site: Path, tmp_path: Path) -> None:  # noqa: F811
    name = deliver(site, "alice", ["ok"])
    final(site, name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ok.log").write_text("password\n")
    directory = _log(site, name).parent
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()
    directory.symlink_to(elsewhere)
    proc = tryserver(site, "log", name)
    assert proc.returncode == 66
    assert b"password" not in proc.stdout


def test_a_fifo_as_log_does_not_block_the_server(site: Path) -> None:  # noqa: F811
    name = deliver(site, "alice", ["ok"])
    final(site, name)
    log = _log(site, name)
    log.unlink()
    os.mkfifo(log)
    proc = tryserver(site, "log", name)  # run() has a timeout: a block would fail the test
    assert proc.returncode == 66
    assert "not a regular file" in proc.stderr.decode()


def test_other_users_jobs_cannot_be_probed(site: Path) -> None:  # noqa: F811
    name = deliver(site, "alice", ["ok"])
    final(site, name)
    missing = "1700000000.M1P1Q1Rnone.host"
    for verb in ("status", "log", "watch", "cancel"):
        answers = {tryserver(site, verb, job, user="bob").stderr.replace(job.encode(), b"JOB")
                   for job in (name, missing)}  # fmt: skip
        assert answers == {b"tryserver: no such job: JOB\n"}, verb


@pytest.mark.parametrize("job", ["../state/x", "a/../../b", "-rf", ".hidden", "x" * 300])
def test_hostile_job_names_are_refused_before_any_file_access(site: Path, job: str) -> None:  # noqa: F811
    for verb in ("log", "watch", "cancel"):
        proc = tryserver(site, verb, job)
        assert proc.returncode in (64, 66), (verb, job, proc.stderr)
    assert not (site.parent / "jobdir" / "state" / "cancel").exists() or not [
        n for n in os.listdir(site.parent / "jobdir" / "state" / "cancel") if not n.startswith(".")
    ]
