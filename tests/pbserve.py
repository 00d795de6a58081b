"""A running ``tryssh serve --consume`` with a ``[pb]`` door, for the PB tests.

The door listens on 127.0.0.1 with a port chosen at run time (``listen = "127.0.0.1:0"``,
read back from the ready line); the SSH door runs next to it, as in production.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from helpers import OutputPumps, git, run, venv_bin, wait_until

from tryssh.core.jobfile import Job, parse_job_file
from tryssh.server.passwords import pb_secret

PB_READY = re.compile(r"PB door .* listening on (\S+):(\d+);")
SSH_READY = re.compile(r"tryssh serve: listening on (\S+):(\d+)")
PASSWORD = "open sesame"


class PBServe:
    """``tryssh serve`` with [pb], its config, jobdir and output."""

    def __init__(
        self,
        root: Path,
        consume: bool = True,
        pb: dict[str, object] | None = None,
        top_toml: str = "",
        alice_toml: str = "",
    ) -> None:
        self.root = root
        self.jobdir = root / "jobdir"
        for sub in ("tmp", "new", "cur"):
            (self.jobdir / sub).mkdir(parents=True, exist_ok=True)
        secret = root / "alice.pb"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pb_secret(PASSWORD) + "\n")
        table = {"listen": "127.0.0.1:0"}
        table.update(pb or {})
        pb_lines = [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        self.config = root / "tryssh.toml"
        self.config.write_text(
            "\n".join([
                f'jobdir = "{self.jobdir}"',
                top_toml,
                "[serve]",
                'listen = "127.0.0.1:0"',
                f'host_key = "{root / "hostkey"}"',
                "[pb]",
                *pb_lines,
                "[builders.pass]",
                'command = ["true"]',
                "[builders.fail]",
                'command = ["false"]',
                "[builders.secret]",
                'command = ["true"]',
                "[builders.gate]",  # runs until the test creates the file "go"
                f'command = ["sh", "-c", "while [ ! -e {root}/go ]; do sleep 0.02; done"]',
                "[users.alice]",
                f'pb_secret_file = "{secret}"',
                'builders = ["pass", "fail", "gate"]',
                alice_toml,
            ]) + "\n"
        )  # fmt: skip
        self.consume = consume
        self.proc: subprocess.Popen[str] | None = None
        self.pumps: OutputPumps | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.port = 0

    def start(self) -> PBServe:
        argv = [venv_bin("tryssh"), "serve", "--config", str(self.config)]
        if self.consume:
            argv.append("--consume")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.pumps = OutputPumps(self.proc)
        self.stdout, self.stderr = self.pumps.stdout, self.pumps.stderr
        wait_until(
            lambda: self._ssh_ready() or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout=30,
            message=lambda: f"tryssh serve did not get ready:\n{self.output()}",
        )
        match = next((m for line in self.stdout if (m := PB_READY.search(line))), None)
        assert match, f"no PB ready line:\n{self.output()}"
        self.port = int(match.group(2))
        return self

    def _ssh_ready(self) -> bool:
        return any(SSH_READY.search(line) for line in list(self.stdout))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def output(self) -> str:
        if self.pumps is not None:
            self.pumps.drain()
        return "".join(self.stdout) + "--- stderr ---\n" + "".join(self.stderr)

    def audit(self) -> str:
        path = self.jobdir / "audit.log"
        return path.read_text() if path.exists() else ""

    def jobs(self) -> list[str]:
        """Every delivered job, wherever the consumer has put it."""
        return sorted(os.listdir(self.jobdir / "new") + os.listdir(self.jobdir / "cur"))

    def job(self, name: str) -> Job:
        for sub in ("new", "cur"):
            path = self.jobdir / sub / name
            if path.exists():
                return parse_job_file(str(path))
        raise AssertionError(f"no job {name}")


def git_tree(root: Path) -> Path:
    """A clone with an upstream and an uncommitted change: what ``buildbot try`` sends."""
    origin, work = root / "origin.git", root / "work"
    git(root, "init", "-q", "--bare", "-b", "main", str(origin))
    git(root, "clone", "-q", str(origin), str(work))
    git(work, "checkout", "-q", "-b", "main")
    (work / "f.txt").write_text("one\n")
    git(work, "add", "f.txt")
    git(work, "commit", "-q", "-m", "first")
    git(work, "push", "-q", "-u", "origin", "main")
    (work / "f.txt").write_text("two\n")
    return work


def buildbot_try(
    work: Path, port: int, *args: str, password: str = PASSWORD, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Buildbot's own ``buildbot try --connect=pb`` from the working tree *work*."""
    argv: Sequence[str] = [
        venv_bin("buildbot"), "try", "--connect=pb", f"--master=127.0.0.1:{port}",
        "--username=alice", f"--passwd={password}", "--vc=git", *args,
    ]  # fmt: skip
    env = {"HOME": str(work), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "GIT_CONFIG_NOSYSTEM": "1"}  # fmt: skip
    return run(argv, env=env, cwd=work, timeout=timeout)
