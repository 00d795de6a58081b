"""A developer's round trip as the README tells it: submit, watch with --wait, see why a
build failed, resume a wait, over a real OpenSSH sshd whose key runs the forced command,
with ``tryssh consume`` behind it.

Two builders, ``unit`` and ``lint``, run the job's comment as a shell script (each test
says what its builds do; ``$TRY_BUILDER`` tells them apart).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import run, stop_process, venv_bin
from sshd import Sshd, make_user_key, write_known_hosts
from test_results_e2e import forced_command_door

from tryssh.core.jobdir import Jobdir

pytestmark = pytest.mark.timeout(120)

RUNNER = '#!/bin/sh\neval "$TRY_COMMENT"\n'
PATCH = b"--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+x\n"


class Site:
    """A try server reached over OpenSSH (forced command), a consumer building its jobs."""

    def __init__(self, root: Path, sshd: Sshd, args: list[str], config: Path) -> None:
        self.root = root
        self.sshd = sshd
        self.args = args  # the connection options, as a developer types them
        self.config = config
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        self.patch = root / "change.patch"
        self.patch.write_bytes(PATCH)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "NO_COLOR")}
        env["HOME"] = str(self.home)
        env["XDG_CONFIG_HOME"] = str(self.home / ".config")
        return env

    def try_argv(self, script: str, *extra: str, builders: tuple[str, ...] = ("unit",)
                 ) -> list[str]:  # fmt: skip
        picks = [word for name in builders for word in ("-b", name)]
        return [venv_bin("tryssh"), "try", "--diff", str(self.patch), "--baserev", "abc",
                *picks, "-C", script, *extra, *self.args]  # fmt: skip

    def tryssh(self, *words: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return run([venv_bin("tryssh"), *words, *self.args], env=self.env(), timeout=timeout,
                   cwd=self.root)  # fmt: skip


@pytest.fixture
def site(tmp_path: Path, sshd_factory: Callable[..., Sshd]) -> Iterator[Site]:
    runner = tmp_path / "runner.sh"
    runner.write_text(RUNNER)
    jobdir = tmp_path / "jobdir"
    Jobdir(str(jobdir)).create()
    builder = json.dumps(["/bin/sh", str(runner)])
    config = tmp_path / "tryssh.toml"
    config.write_text(
        f'jobdir = "{jobdir}"\n[consume]\npoll_interval = 0.05\n'
        f"[builders.unit]\ncommand = {builder}\n[builders.lint]\ncommand = {builder}\n"
        '[users.alice]\nbuilders = ["unit", "lint"]\n'
    )
    sshd, consumer, args = forced_command_door(tmp_path, sshd_factory, config)
    try:
        yield Site(tmp_path, sshd, args, config)
    finally:
        # A build waiting for the gate outlives the consumer (its own process group): a
        # test that failed before opening it must not leave it looping for ever.
        (tmp_path / "gate").touch()
        stop_process(consumer)


def test_follow_ends_on_the_builder_that_failed_early(site: Site) -> None:
    """--follow streams the logs; a builder that failed first scrolled away under the
    others' output, so the wait ends by naming it again."""
    gate = site.root / "gate"
    script = (f'if [ "$TRY_BUILDER" = lint ]; then echo "lint: bad style"; exit 3; fi; '
              f"while [ ! -e {gate} ]; do sleep 0.05; done; echo unit line one; "
              "echo unit line two")  # fmt: skip
    argv = site.try_argv(script, "--wait", "--follow", "--no-color", builders=("unit", "lint"))
    proc = subprocess.Popen(argv, env=site.env(), cwd=site.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        for raw in proc.stderr:
            seen.append(raw.decode().rstrip("\n"))
            if "lint: failure (exit status 3)" in seen[-1]:
                gate.touch()  # lint is over: now unit writes its lines and ends
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 1, seen
    assert gate.exists(), seen
    assert seen.index("unit| unit line two") < len(seen) - 1, seen
    after_logs = seen[seen.index("unit| unit line two") + 1:]
    assert "  lint: failure (exit status 3)" in after_logs, seen


def _resume(site: Site, err: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command the message says picks the wait up again, exactly as printed."""
    marker = "Pick the wait up again with: "
    assert marker in err, err
    words = shlex.split(err.split(marker, 1)[1].strip().splitlines()[0])
    assert words[:2] == ["tryssh", "status"], words
    return run([venv_bin("tryssh"), *words[1:]], env=site.env(), timeout=60, cwd=site.root)


def test_wait_timeout_says_how_to_resume_and_that_command_works(site: Site) -> None:
    gate = site.root / "gate"
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; echo built"
    result = run(site.try_argv(script, "--wait", "--wait-timeout", "1"), env=site.env(),
                 timeout=60, cwd=site.root)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 75, err
    assert "--wait-timeout" in err
    gate.touch()
    resumed = _resume(site, err)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert "unit: success" in resumed.stderr.decode()


def test_ctrl_c_names_a_resume_command_with_the_connection_options(site: Site) -> None:
    gate = site.root / "gate"
    script = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo built"
    proc = subprocess.Popen(site.try_argv(script, "--wait"), env=site.env(), cwd=site.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        for raw in proc.stderr:
            seen.append(raw.decode())
            if "unit: running" in seen[-1]:
                proc.send_signal(signal.SIGINT)
                break
        seen.append(proc.stderr.read().decode())
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen)
    assert code == 130, err
    assert "--host" in err.split("Pick the wait up again with: ", 1)[-1], err
    gate.touch()
    resumed = _resume(site, err)
    assert resumed.returncode == 0, resumed.stderr.decode()


def test_wait_without_a_tryserver_on_the_host_stops_at_once(
    tmp_path: Path, sshd_factory: Callable[..., Sshd]
) -> None:
    """-c scp --wait to an sftp account with no tryserver to ask (here: a --tryserver-cmd
    that does not exist) used to poll `status` for ever, silently. It is 69: nobody there
    can report the results."""
    jobdir = tmp_path / "jobdir"
    Jobdir(str(jobdir)).create()
    key = make_user_key(tmp_path, "dev_key")
    sshd = sshd_factory([f"restrict {key.public_line}"])  # a plain account: sftp and exec
    known = write_known_hosts(tmp_path / "known_hosts", sshd)
    patch = tmp_path / "change.patch"
    patch.write_bytes(PATCH)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(tmp_path)
    result = run([venv_bin("tryssh"), "try", "-c", "scp", "--jobdir", str(jobdir),
                  "--host", sshd.host, "--port", str(sshd.port), "-u", sshd.user,
                  "-i", key.private_path, "--known-hosts", str(known),
                  "--tryserver-cmd", str(tmp_path / "nowhere" / "tryserver"),
                  "--diff", str(patch), "--baserev", "abc", "-b", "unit", "--wait"],
                 env=env, timeout=60, cwd=tmp_path)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 69, err
    assert len(os.listdir(jobdir / "new")) == 1  # delivered; only the results are out of reach
    last = err.strip().splitlines()[-1]
    assert last.startswith("tryssh: cannot wait for "), err
    assert "--tryserver-cmd" in last


def test_local_wait_without_config_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    patch = tmp_path / "change.patch"
    patch.write_bytes(PATCH)
    result = run([venv_bin("tryssh"), "try", "-c", "local", "--jobdir", jobdir.path, "--diff",
                  str(patch), "--baserev", "abc", "--wait"],
                 env={**os.environ, "HOME": str(tmp_path)}, cwd=tmp_path)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 64, err
    assert "needs --config" in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(jobdir.new) == []  # nothing delivered


def test_quiet_wait_still_says_which_build_failed(site: Site) -> None:
    """-q --wait prints nothing while waiting, but a failed job ends with its failed
    builders and why, as buildbot try --wait --quiet prints its results."""
    script = 'if [ "$TRY_BUILDER" = lint ]; then exit 3; fi; echo fine'
    result = run(site.try_argv(script, "-q", "--wait", builders=("unit", "lint")),
                 env=site.env(), timeout=60, cwd=site.root)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 1, err
    lines = err.strip().splitlines()
    assert lines[-1] == "  lint: failure (exit status 3)", err
    assert lines[-2].endswith(": failure"), err
    assert "unit" not in err  # quiet: the builder that succeeded is not mentioned
    good = run(site.try_argv("echo fine", "-q", "--wait"), env=site.env(), timeout=60,
               cwd=site.root)  # fmt: skip
    assert good.returncode == 0 and good.stderr == b"", good.stderr.decode()


def test_match_exec_in_the_ssh_config_is_named(tmp_path: Path) -> None:
    """README: Match exec lines are not supported (reported as an error): the error names
    the line and the file, not paramiko's "import of invoke halted"."""
    config = tmp_path / "ssh_config"
    config.write_text('Match exec "true"\n    User alice\n')
    result = run([venv_bin("tryssh"), "builders", "--host", "127.0.0.1", "-F", str(config)],
                 env={**os.environ, "HOME": str(tmp_path)}, cwd=tmp_path)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 64, err
    assert f"{config} has a 'Match exec' line" in err and "invoke" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_jobs_with_nothing_to_list_says_what_it_looked_for(site: Site) -> None:
    active = site.tryssh("jobs")
    assert active.returncode == 0 and active.stdout == b""
    assert active.stderr.decode().strip() == (
        "no jobs queued or running (--all-states shows finished ones too)")
    every = site.tryssh("jobs", "--all-states")
    assert every.returncode == 0 and every.stdout == b""
    assert every.stderr.decode().strip() == "no jobs"  # not "queued or running": it asked all


def test_host_from_a_file_is_named_only_when_it_is_used(
    tmp_path: Path, master_config: Callable[..., Path]
) -> None:
    """"host ci set by FILE" warns that a file chose the server; on the master (--config)
    no server is contacted, and the line was noise on every command."""
    config = master_config(builders={"unit": {"command": ["true"]}})
    user_file = tmp_path / "xdg" / "tryssh" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('[try]\nhost = "ci"\n')
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    local = run([venv_bin("tryssh"), "jobs", "--all-states", "--config", str(config)], env=env,
                cwd=tmp_path)  # fmt: skip
    assert local.returncode == 0, local.stderr.decode()
    assert "set by" not in local.stderr.decode()
    remote = run([venv_bin("tryssh"), "try", "--dry-run", "--diff", "-", "--baserev", "abc"],
                 input=PATCH, env=env, cwd=tmp_path)  # fmt: skip
    assert remote.returncode == 0, remote.stderr.decode()
    assert f"host ci set by {user_file}" in remote.stderr.decode()


def test_log_of_a_job_with_several_builders_says_to_use_b(site: Site) -> None:
    result = run(site.try_argv("echo from $TRY_BUILDER", "-q", "--wait",
                               builders=("unit", "lint")),
                 env=site.env(), timeout=60, cwd=site.root)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    job = result.stdout.decode().strip()
    log = site.tryssh("log", job)
    err = log.stderr.decode()
    assert log.returncode == 64, err
    want = f"tryssh: job {job} has several builders: unit, lint; name one with -b NAME"
    assert err.strip() == want
    picked = site.tryssh("log", job, "-b", "lint")
    assert picked.returncode == 0 and b"from lint" in picked.stdout


def test_ctrl_c_ends_log_follow_with_one_line(site: Site) -> None:
    gate = site.root / "gate"
    script = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo built"
    sent = run(site.try_argv(script, "-q"), env=site.env(), timeout=60, cwd=site.root)
    assert sent.returncode == 0, sent.stderr.decode()
    job = sent.stdout.decode().strip()
    argv = [venv_bin("tryssh"), "log", job, "--follow", *site.args]
    proc = subprocess.Popen(argv, env=site.env(), cwd=site.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for raw in proc.stdout:
            if raw.strip() == b"started":
                proc.send_signal(signal.SIGINT)
                break
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gate.touch()
    assert code == 130, err
    assert err == f"tryssh: stopped showing the log of {job}; the build goes on on the server\n"


def test_results_are_in_colour_on_a_terminal(site: Site) -> None:
    """README: failures are red and successes green on a terminal. The colour codes were
    escaped with the server's text, so a terminal showed a literal \\x1b[31;1m."""
    import pty

    controller, terminal = pty.openpty()
    script = 'if [ "$TRY_BUILDER" = lint ]; then exit 3; fi; echo fine'
    try:
        proc = subprocess.Popen(site.try_argv(script, "--wait", builders=("unit", "lint")),
                                env=site.env(), cwd=site.root, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=terminal)  # fmt: skip
        os.close(terminal)
        shown = bytearray()
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the command closed the terminal (it exited)
                break
            if not data:
                break
            shown += data
        code = proc.wait(timeout=60)
    finally:
        os.close(controller)
    text = shown.decode()
    assert code == 1, text
    assert "\x1b[31;1mlint: failure (exit status 3)\x1b[0m" in text, text
    assert "\x1b[32munit: success\x1b[0m" in text, text
    assert "\\x1b" not in text, text
