"""``tryserver log``, ``watch`` and ``cancel`` (the real forced command) against a running
consumer with real builders: results come back over the request language alone."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import venv_bin, wait_until

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.logfmt import EventLog
from tryssh.core.records import RecordStore
from tryssh.server.config import load_config
from tryssh.server.consumer import Consumer
from tryssh.server.results import _tail_offset

GATE = "gate"  # the "slow" builder waits for this file (in the site dir) before going on


def config_text(root: Path) -> str:
    gate = root / GATE
    return f"""\
jobdir = "jobdir"
[consume]
poll_interval = 0.05
[builders.fail]
command = ["/bin/sh", "-c",
           "echo compiling; printf 'error: \\\\033[31mboom\\\\033[0m\\\\n'; exit 3"]
[builders.slow]
command = ["/bin/sh", "-c",
           "echo first; while [ ! -e {gate} ]; do sleep 0.02; done; echo second; exit 1"]
[builders.sleepy]
command = ["sleep", "600"]
[builders.ok]
command = ["true"]
[users.alice]
builders = ["fail", "slow", "sleepy", "ok"]
[users.bob]
builders = ["ok"]
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A config, a jobdir and a consumer running in a thread."""
    Jobdir(str(tmp_path / "jobdir")).create()
    path = tmp_path / "tryssh.toml"
    path.write_text(config_text(tmp_path))
    out = io.StringIO()
    consumer = Consumer(load_config(str(path)), log=EventLog(out))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    wait_until(lambda: "event=start" in out.getvalue())
    yield path
    (tmp_path / GATE).touch()
    consumer.stop()
    thread.join(60)
    consumer.close()
    assert not thread.is_alive(), out.getvalue()


def deliver(site: Path, who: str, builders: list[str]) -> str:
    data = encode_job(Job("id", "main", "rev", 1, b"p\n", builders, who=who, comment="c"))
    return Jobdir(str(site.parent / "jobdir")).deliver_bytes(data)


def store(site: Path) -> RecordStore:
    return RecordStore(str(site.parent / "jobdir" / "state"))


def final(site: Path, name: str) -> dict:
    return wait_until(
        lambda: (r := store(site).read(name)) and r["state"] not in ("queued", "running") and r
    )


def argv(site: Path, *words: str, user: str | None = "alice") -> list[str]:
    return [venv_bin("tryserver"), "--config", str(site), *(["--user", user] if user else []),
            *words]  # fmt: skip


def tryserver(site: Path, *words: str, user: str | None = "alice") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    return subprocess.run(argv(site, *words, user=user), capture_output=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


def test_log_of_a_failed_build_comes_back_as_bytes(site: Path) -> None:
    name = deliver(site, "alice", ["fail"])
    assert final(site, name)["state"] == "failure"
    proc = tryserver(site, "log", name)
    assert proc.returncode == 0, proc.stderr
    assert b"compiling\nerror: \x1b[31mboom\x1b[0m\n" in proc.stdout  # the bytes as they are
    assert proc.stdout.endswith(b"[tryssh] result: failure (exit status 3)\n")
    assert tryserver(site, "log", name, "fail").stdout == proc.stdout
    tail = tryserver(site, "log", name, "fail", "--tail", "2")
    assert tail.stdout.startswith(b"[tryssh] exit status 3") and tail.stdout.count(b"\n") == 2
    # --follow of a finished builder: everything, then the builder's result as exit code
    follow = tryserver(site, "log", name, "--follow")
    assert (follow.returncode, follow.stdout) == (1, proc.stdout)


def test_log_not_yours_or_not_there_is_66(site: Path) -> None:
    name = deliver(site, "alice", ["ok"])
    final(site, name)
    missing = "1700000000.M1P1Q1Rnone.host"
    for job, user in ((name, "bob"), (missing, "alice")):
        proc = tryserver(site, "log", job, user=user)
        assert proc.returncode == 66
        assert proc.stderr.decode().strip() == f"tryserver: no such job: {job}"
    proc = tryserver(site, "log", name, "nope")
    assert proc.returncode == 66
    message = proc.stderr.decode()
    assert "no builder 'nope'" in message and "(its builders: ok)" in message
    for verb in ("watch", "cancel"):
        assert tryserver(site, verb, name, user="bob").returncode == 66


def test_follow_streams_while_the_builder_runs(site: Path) -> None:
    name = deliver(site, "alice", ["slow"])
    proc = subprocess.Popen(argv(site, "log", name, "--follow"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        while first.startswith(b"[tryssh]"):
            first = proc.stdout.readline()
        assert first == b"first\n"
        assert store(site).read(name)["builders"]["slow"]["state"] == "running"
        (site.parent / GATE).touch()
        rest = proc.stdout.read()
        assert b"second\n" in rest
        assert proc.wait(30) == 1  # the builder failed
    finally:
        proc.kill()
        proc.wait()


def test_watch_streams_each_change_until_final(site: Path) -> None:
    name = deliver(site, "alice", ["slow"])
    proc = subprocess.Popen(argv(site, "watch", name, "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline())]  # queued or running: the gate is shut
        assert lines[0]["state"] in ("queued", "running")
        (site.parent / GATE).touch()
        lines += [json.loads(line) for line in proc.stdout]
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    records = [r for r in lines if "job" in r]
    assert records[-1]["state"] == "failure"
    assert records[-1]["builders"]["slow"]["reason"] == "exit status 1"
    assert len(records) >= 2  # at least one change was seen on the way


def test_cancel_stops_a_long_build(site: Path) -> None:
    name = deliver(site, "alice", ["sleepy", "ok"])
    wait_until(lambda: (store(site).read(name) or {}).get("builders", {}).get("sleepy", {})
               .get("state") == "running")  # fmt: skip
    proc = tryserver(site, "cancel", name)
    assert proc.returncode == 0, proc.stderr
    assert f"cancel requested for {name}".encode() in proc.stdout
    # The build sleeps far longer than this wait: cancelled in time means it was stopped
    # (no tighter wall-clock bound: a loaded CI machine must not fail it).
    record = wait_until(lambda: (r := store(site).read(name)) and r["state"] == "cancelled" and r,
                        timeout=30)  # fmt: skip
    assert record["cancelled"]["by"] == "alice"
    assert record["builders"]["sleepy"]["result"] == "cancelled"
    assert record["builders"]["sleepy"]["reason"] == "cancelled by alice"
    wait_until(lambda: not os.path.exists(store(site).cancel_path(name)))  # done: removed
    again = tryserver(site, "cancel", name)
    assert again.returncode == 2
    assert b"already finished (cancelled): nothing to cancel" in again.stderr


def test_a_job_cancelled_before_its_claim_never_runs(tmp_path: Path) -> None:
    Jobdir(str(tmp_path / "jobdir")).create()
    path = tmp_path / "tryssh.toml"
    marker = tmp_path / "ran"
    path.write_text(f'jobdir = "jobdir"\n[builders.ok]\ncommand = ["touch", "{marker}"]\n'
                    '[users.alice]\nbuilders = ["ok"]\n')  # fmt: skip
    name = deliver(path, "alice", ["ok"])
    proc = tryserver(path, "cancel", name)  # queued in new/: no consumer yet
    assert proc.returncode == 0, proc.stderr
    consumer = Consumer(load_config(str(path)), log=EventLog(io.StringIO()))
    try:
        consumer.run(once=True)
    finally:
        consumer.close()
    record = store(path).read(name)
    assert record["state"] == "cancelled"
    assert record["builders"]["ok"]["result"] == "cancelled"
    assert not marker.exists()


def test_tail_offset() -> None:
    import tempfile

    with tempfile.TemporaryFile() as f:
        f.write(b"a\nb\nc\n")
        f.flush()
        fd = f.fileno()
        assert _tail_offset(fd, 1) == 4
        assert _tail_offset(fd, 2) == 2
        assert _tail_offset(fd, 10) == 0
        assert _tail_offset(fd, 0) == 6


def tryssh(*words: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("tryssh"), *words], capture_output=True, timeout=90,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def test_the_admin_on_the_master_sees_cancels_and_reads_any_job(site: Path) -> None:
    failed = deliver(site, "alice", ["fail"])
    final(site, failed)
    log = tryssh("log", "--config", str(site), failed, "--tail", "1")
    assert (log.returncode, log.stdout) == (0, b"[tryssh] result: failure (exit status 3)\n")
    name = deliver(site, "alice", ["sleepy"])
    wait_until(lambda: (store(site).read(name) or {}).get("state") == "running")
    jobs = tryssh("jobs", "--config", str(site))
    assert name in jobs.stdout.decode() and failed not in jobs.stdout.decode()
    assert failed in tryssh("jobs", "--config", str(site), "--all-states").stdout.decode()
    result = tryssh("cancel", "--config", str(site), name)
    assert result.returncode == 0, result.stderr
    assert f"job {name}: cancelled by " in result.stdout.decode()
    assert "(admin)" in store(site).read(name)["cancelled"]["by"]
    again = tryssh("cancel", "--config", str(site), name, "--json")
    assert again.returncode == 2
    assert json.loads(again.stdout)["cancelled"] is False


def test_a_wait_on_the_master_shows_the_failed_builders_log_too(site: Path) -> None:
    name = deliver(site, "alice", ["fail"])
    result = tryssh("status", "--wait", "--config", str(site), name, "--no-color")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "--- fail: last 30 lines of the log ---" in err
    assert "error: boom" in err and "\x1b" not in err  # filtered for the terminal
