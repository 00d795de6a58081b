"""Results that come back, end to end, through both doors: a real OpenSSH sshd with the
forced command (and ``tryssh consume``), and ``tryssh serve --consume``.

The developer's side is the installed ``tryssh`` console script; nothing on the client
side reads the server's files. The one builder, ``unit``, runs the job's comment as a
shell script, so that each test decides what its build does.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import run, stop_process, venv_bin, wait_until
from sshd import Sshd, make_user_key, write_known_hosts
from test_serve import Serve

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.records import RecordStore

pytestmark = pytest.mark.timeout(180)

RUNNER = '#!/bin/sh\neval "$TRY_COMMENT"\n'
PATCH = b"--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+x\n"


class Door:
    """A try server the developer reaches over SSH, with a consumer behind it."""

    def __init__(self, root: Path, jobdir: Path, args: list[str]) -> None:
        self.root = root
        self.jobdir = jobdir
        self.args = args  # connection options for tryssh
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        self.patch = root / "change.patch"
        self.patch.write_bytes(PATCH)
        self.sshd: Sshd | None = None  # the OpenSSH door's daemon

    def store(self) -> RecordStore:
        return RecordStore(str(self.jobdir / "state"))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "NO_COLOR")}
        env["HOME"] = str(self.home)
        return env

    def argv(self, *words: str) -> list[str]:
        return [venv_bin("tryssh"), *words, *self.args]

    def tryssh(self, *words: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
        return run(self.argv(*words), env=self.env(), timeout=timeout, cwd=self.root)

    def try_argv(self, script: str, *extra: str) -> list[str]:
        return self.argv("try", "--diff", str(self.patch), "--baserev", "abc", "-b", "unit",
                         "-C", script, *extra)  # fmt: skip

    def record(self, job: str) -> dict:
        return self.store().read(job) or {}


def _config(root: Path, jobdir: Path, builder: list[str]) -> Path:
    path = root / "tryssh.toml"
    path.write_text(
        f'jobdir = "{jobdir}"\n[consume]\npoll_interval = 0.05\n'
        f"[builders.unit]\ncommand = {json.dumps(builder)}\n"
        + '[users.alice]\nbuilders = ["unit"]\n[users.bob]\nbuilders = ["unit"]\n'
    )
    return path


def forced_command_door(
    tmp_path: Path, sshd_factory: Callable[..., Sshd], config: Path
) -> tuple[Sshd, subprocess.Popen[bytes], list[str]]:
    """alice's key runs tryserver (*config*) on a real sshd, and ``tryssh consume`` builds:
    (the sshd, the consumer to stop, the connection options a developer gives)."""
    key = make_user_key(tmp_path, "alice_key")
    command = shlex.join([venv_bin("tryserver"), "--config", str(config), "--user", "alice"])
    sshd = sshd_factory([f'restrict,command="{command}" {key.public_line}'])
    known = write_known_hosts(tmp_path / "known_hosts", sshd)
    consumer = subprocess.Popen([venv_bin("tryssh"), "consume", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    args = ["--host", sshd.host, "--port", str(sshd.port), "-u", sshd.user,
            "-i", key.private_path, "--known-hosts", str(known)]  # fmt: skip
    return sshd, consumer, args


@pytest.fixture(params=["sshd", "serve"])
def door(request: pytest.FixtureRequest, tmp_path: Path,
         sshd_factory: Callable[..., Sshd]) -> Iterator[Door]:  # fmt: skip
    runner = tmp_path / "runner.sh"  # runs the job's comment: each test says what to build
    runner.write_text(RUNNER)
    builder = ["/bin/sh", str(runner)]
    if request.param == "serve":
        server = Serve(tmp_path / "serve", consume=True, builder=builder).start()
        args = ["--host", "127.0.0.1", "--port", str(server.port), "-u", "alice",
                "-i", server.alice.private_path, "--known-hosts", str(server.known_hosts)]
        try:
            yield Door(tmp_path, server.jobdir, args)
        finally:
            (tmp_path / "gate").touch()  # see below
            server.stop()
        return
    jobdir = tmp_path / "jobdir"
    Jobdir(str(jobdir)).create()
    config = _config(tmp_path, jobdir, builder)
    sshd, consumer, args = forced_command_door(tmp_path, sshd_factory, config)
    door = Door(tmp_path, jobdir, args)
    door.sshd = sshd
    try:
        yield door
    finally:
        # A build waiting for the gate outlives the consumer (its own process group): a
        # test that failed before opening it must not leave it looping for ever.
        (tmp_path / "gate").touch()
        stop_process(consumer)


def test_a_failing_builds_output_comes_back_through_wait(door: Door) -> None:
    script = "echo compiling; echo 'main.c:3: error: missing semicolon'; exit 3"
    result = run(door.try_argv(script, "--wait", "--no-color"), env=door.env(), timeout=90)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "main.c:3: error: missing semicolon" in err  # the log's tail, over SSH
    assert "unit: failure (exit status 3)" in err  # the reason, not a server path
    assert "/logs/" not in err


def test_follow_shows_lines_while_the_builder_runs(door: Door) -> None:
    gate = door.root / "gate"
    script = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished"
    proc = subprocess.Popen(door.try_argv(script, "--wait", "--follow"), env=door.env(),
                            cwd=door.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line.decode())
            if line.rstrip() == b"started":
                break
        assert seen and seen[-1].strip() == "started", "".join(seen)
        assert not gate.exists()  # the builder is still waiting for it: we saw it live
        gate.touch()
        rest = proc.stderr.read().decode()
        assert proc.wait(60) == 0, "".join(seen) + rest
        assert "finished" in rest and "unit: success" in rest
    finally:
        proc.kill()
        proc.wait()


def test_cancel_stops_a_long_build(door: Door) -> None:
    job = door.tryssh("try", "--diff", str(door.patch), "--baserev", "abc", "-b", "unit",
                      "-C", "exec sleep 600", "-q").stdout.decode().strip()  # fmt: skip
    assert job
    wait_until(lambda: door.record(job).get("builders", {}).get("unit", {}).get("state")
               == "running", timeout=30)  # fmt: skip
    # cancel waits until the job is final: a build of `sleep 600` can only be final this
    # soon (within the run's own timeout) if it was stopped. No wall-clock threshold here:
    # one failed on a loaded CI machine at 5.25 s.
    result = door.tryssh("cancel", job)
    assert result.returncode == 0, result.stderr.decode()
    assert f"job {job}: cancelled by alice" in result.stdout.decode()
    record = door.record(job)
    assert record["state"] == "cancelled"
    assert record["builders"]["unit"]["result"] == "cancelled"
    again = door.tryssh("cancel", job)
    assert again.returncode == 2
    assert "nothing to cancel" in again.stderr.decode()


def test_jobs_lists_the_callers_jobs_and_no_one_elses(door: Door) -> None:
    mine = door.tryssh("try", "--diff", str(door.patch), "--baserev", "abc", "-b", "unit",
                       "-C", "true", "-q").stdout.decode().strip()  # fmt: skip
    data = encode_job(Job("id", "main", "abc", 1, PATCH, ["unit"], who="bob", comment="true"))
    theirs = Jobdir(str(door.jobdir)).deliver_bytes(data)
    wait_until(lambda: door.record(mine).get("state") == "success"
               and door.record(theirs).get("state") in ("success", "rejected"), timeout=30,
               message=lambda: f"{door.record(mine)}\n{door.record(theirs)}")  # fmt: skip
    result = door.tryssh("jobs", "--all-states")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert mine in out and "unit=success" in out and "ago" in out
    assert theirs not in out
    assert door.tryssh("jobs").stdout.decode() == ""  # nothing queued or running


def test_log_command_is_terminal_safe_unless_raw(door: Door) -> None:
    script = r"printf 'plain\n\033]0;pwned\007\033[2Jred\033[31m!\n'"
    result = run(door.try_argv(script, "--wait", "-q"), env=door.env(), timeout=90)
    assert result.returncode == 0, result.stderr.decode()
    job = result.stdout.decode().split()[0] if result.stdout.strip() else ""
    if not job:
        job = door.store().final_jobs()[-1]
    safe = door.tryssh("log", job)
    assert safe.returncode == 0, safe.stderr.decode()
    assert b"plain\nred!\n" in safe.stdout and b"\x1b" not in safe.stdout
    raw = door.tryssh("log", job, "--raw")
    assert b"\x1b]0;pwned\x07\x1b[2Jred\x1b[31m!\n" in raw.stdout


def _gated_job(door: Door) -> tuple[str, Path]:
    gate = door.root / "gate"
    script = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished"
    job = door.tryssh("try", "--diff", str(door.patch), "--baserev", "abc", "-b", "unit",
                      "-C", script, "-q").stdout.decode().strip()  # fmt: skip
    assert job
    return job, gate


def _read_until(proc: subprocess.Popen[bytes], needle: str) -> str:
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:
        seen += line.decode()
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} never came:\n{seen}")


def _waiting(door: Door, job: str) -> subprocess.Popen[bytes]:
    """``tryssh status --wait JOB``, running, once it has shown the build running."""
    proc = subprocess.Popen(door.argv("status", "--wait", job), env=door.env(), cwd=door.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _read_until(proc, "unit: running")
    return proc


def test_ctrl_c_during_a_wait_says_the_job_goes_on_and_how_to_resume(door: Door) -> None:
    job, gate = _gated_job(door)
    proc = _waiting(door, job)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        assert f"job {job} goes on" in err and f"--wait {job}" in err
        assert "with: tryssh status --host 127.0.0.1 --port " in err  # works as printed
    finally:
        proc.kill()
        proc.wait()
    assert door.record(job)["state"] == "running"
    gate.touch()
    result = door.tryssh("status", "--wait", job)  # the wait, picked up again
    assert result.returncode == 0, result.stderr.decode()
    assert "unit: success" in result.stderr.decode()


def _session_pids(door: Door, job: str) -> list[int]:
    """The sshd session processes serving the tryserver that watches *job*."""
    assert door.sshd is not None and door.sshd.proc is not None
    daemon = door.sshd.proc.pid
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"watch {job}".encode() not in environ:
            continue
        chain, current = [], int(pid)
        while True:
            stat_line = Path(f"/proc/{current}/stat").read_text()
            parent = int(stat_line.rsplit(")", 1)[1].split()[1])
            if parent in (daemon, 0, 1):
                return chain
            chain.append(parent)
            current = parent
    return []


@pytest.mark.parametrize("door", ["sshd"], indirect=True)  # kills OpenSSH's session
def test_a_lost_connection_is_resumed(door: Door) -> None:
    job, gate = _gated_job(door)
    proc = _waiting(door, job)
    try:
        sessions = wait_until(lambda: _session_pids(door, job), timeout=30)
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)  # the network "drops" the connection
        _read_until(proc, "reconnecting")
        gate.touch()
        assert proc.wait(60) == 0
        assert proc.stderr is not None
        assert "unit: success" in proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()


def test_wait_timeout_over_watch_is_75_and_the_job_goes_on(door: Door) -> None:
    job, gate = _gated_job(door)
    started = time.monotonic()
    result = door.tryssh("status", "--wait", job, "--wait-timeout", "2")
    assert result.returncode == 75, result.stderr.decode()
    assert time.monotonic() - started < 9  # not a heartbeat (10 s) late
    assert "--wait-timeout" in result.stderr.decode() and "goes on" in result.stderr.decode()
    assert door.record(job)["state"] == "running"
    gate.touch()
