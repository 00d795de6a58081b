"""Buildbot as the engine: a real master and worker build what tryssh hands them, and
their results come back through ``tryssh try --wait`` and ``status``.

Set-ups: the consumer in front with ``buildbot`` builders (results read from the REST
API), the drop-in (tryserver delivers into the master's Try_Jobdir), ``buildbot try
--connect=ssh`` into tryssh. The master is the session's (``buildbot_master`` fixture).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from buildbot_master import BuildbotMaster, vcs_env
from helpers import venv_bin, wait_until

from tryssh.core.jobdir import Jobdir

GOOD = "good\nand more\n"
BAD = "bad\n"


def toml(value: object) -> str:
    return json.dumps(value)


def edit(wc: Path, text: str) -> None:
    (wc / "state.txt").write_text(text)


@dataclass
class Front:
    """tryssh's consumer in front of the session's Buildbot master."""

    config: Path
    jobdir: Path
    master: BuildbotMaster
    home: Path

    def try_(self, wc: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [venv_bin("tryssh"), "try", "-c", "local", "--jobdir", str(self.jobdir),
                "--config", str(self.config), *args]  # fmt: skip
        return subprocess.run(argv, cwd=wc, env=vcs_env(self.home), capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip


def front_config(path: Path, master: BuildbotMaster, jobdir: Path) -> Path:
    """try-git, try-hg, try-svn run by Buildbot; lint and unit run here."""
    lines = [f"jobdir = {toml(str(jobdir))}", "[consume]", "poll_interval = 0.1"]
    for vc in ("git", "hg", "svn"):
        table = {"jobdir": str(master.jobdir), "api": master.api, "poll_interval": 0.2,
                 "builders": [f"try-{vc}"]}  # fmt: skip
        inner = ", ".join(f"{k} = {toml(v)}" for k, v in table.items())
        lines += [f"[builders.try-{vc}]", f"buildbot = {{ {inner} }}"]
    lines += ["[builders.lint]", 'command = ["sh", "-c", "exit 0"]']
    lines += ['[users."*"]']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def front(buildbot_master: BuildbotMaster, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Front]:  # fmt: skip
    base = tmp_path_factory.mktemp("front")
    jobdir = base / "jobdir"
    Jobdir(str(jobdir)).create()
    config = front_config(base / "tryssh.toml", buildbot_master, jobdir)
    home = base / "home"
    home.mkdir()
    log = open(base / "consume.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([venv_bin("tryssh"), "consume", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield Front(config, jobdir, buildbot_master, home)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def receipt_and_lines(result: subprocess.CompletedProcess) -> tuple[dict, str]:
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("vc", ["git", "hg", "svn"])
def test_consumer_buildbot_builder_pass_and_fail(front: Front, vc: str, tmp_path: Path) -> None:
    wc = front.master.checkout(vc, tmp_path / "wc")
    edit(wc, GOOD)
    good = front.try_(wc, "-b", f"try-{vc}", "--wait", "--json")
    assert good.returncode == 0, good.stderr + front.master.log_tail()
    receipt, err = receipt_and_lines(good)
    entry = receipt["result"]["builders"][f"try-{vc}"]
    assert entry["result"] == "success"
    assert entry["url"].startswith(front.master.api + "#/builders/")
    assert receipt["jobid"] and entry["jobid"] == receipt["jobid"]
    assert front.master.results_by_builder(receipt["jobid"]) == {f"try-{vc}": 0}
    edit(wc, BAD)
    bad = front.try_(wc, "-b", f"try-{vc}", "--wait")
    assert bad.returncode == 1, bad.stderr
    assert f"try-{vc}: failure" in bad.stderr and "#/builders/" in bad.stderr
