"""``tryssh try`` reads the working copy's change while it loads (tryssh.client.prefetch):
what it reads ahead is exactly what a plain try reads, it is used only for that request,
and a command that fails early leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import GIT_ENV, git, run, venv_bin

from tryssh.client import prefetch
from tryssh.client.job import TryRequest, gather_change

FIELDS = ("vcs", "baserev", "patch", "patch_level", "branch", "repository", "topdir", "notes",
          "upstream_branch")  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clone with an upstream, a local commit and an uncommitted change; the cwd."""
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    (seed / "a.txt").write_text("one\n")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "initial")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(seed), str(work))
    (work / "b.txt").write_text("local\n")
    git(work, "add", "b.txt")
    git(work, "commit", "-q", "-m", "local")
    (work / "a.txt").write_text("one\ntwo\n")
    monkeypatch.chdir(work)
    yield work
    prefetch.finish()


def fields(change: object) -> dict[str, object]:
    return {name: getattr(change, name) for name in FIELDS}


def test_the_change_read_ahead_is_what_a_plain_try_reads(repo: Path) -> None:
    prefetch.start(["-b", "unit", "--dry-run"])
    early = prefetch.take(TryRequest(builders=["unit"]), str(repo))
    assert early is not None
    assert fields(early) == fields(gather_change(TryRequest(), str(repo)))
    assert b"+two" in early.patch and b"local" in early.patch  # the upstream is the base


@pytest.mark.parametrize(
    "request_",
    [TryRequest(branch="main"), TryRequest(baserev="HEAD"), TryRequest(untracked=True),
     TryRequest(diff="-", baserev="abc"), TryRequest(vc="hg")],
    ids=["branch", "baserev", "untracked", "diff", "other-vc"],
)
def test_it_is_thrown_away_when_the_request_asks_for_another_change(
    repo: Path, request_: TryRequest
) -> None:
    prefetch.start([])
    assert prefetch.take(request_, str(repo)) is None
    assert prefetch.take(TryRequest(), str(repo)) is None  # taken once, never twice


def test_it_is_thrown_away_for_another_directory(repo: Path) -> None:
    prefetch.start([])
    assert prefetch.take(TryRequest(), str(repo.parent)) is None


@pytest.mark.parametrize("argv", [["--diff", "p.diff"], ["--vc=git"], ["--branch", "x"],
                                  ["--baserev", "HEAD"], ["--untracked"], ["--topdir", "."],
                                  ["--get-builder-names"], ["--help"], ["-h"]])  # fmt: skip
def test_options_that_read_another_change_start_nothing(repo: Path, argv: list[str]) -> None:
    prefetch.start(argv)
    assert prefetch._pending is None


def test_a_failure_to_read_is_left_to_the_real_read(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not a working copy
    prefetch.start([])
    assert prefetch.take(TryRequest(), str(tmp_path)) is None


def tryssh(cwd: Path, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd.parent / "home"),
           "TMPDIR": str(cwd.parent / "tmp")}  # fmt: skip
    env.pop("XDG_CONFIG_HOME", None)
    result = run([venv_bin("tryssh"), *args], env=env, cwd=cwd, timeout=60)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_the_command_sends_the_same_job_with_and_without_reading_ahead(repo: Path) -> None:
    (repo.parent / "tmp").mkdir()
    code, ahead, err = tryssh(repo, "try", "--dry-run", "--json", "-b", "unit")
    assert code == 0, err
    # --vc git reads the change only after the command line is parsed: no read-ahead.
    code, after, err = tryssh(repo, "try", "--dry-run", "--json", "-b", "unit", "--vc", "git")
    assert code == 0, err
    first, second = json.loads(ahead), json.loads(after)
    for answer in (first, second):
        for key in ("jobid", "size", "sha256"):  # the jobid differs, and so the job file
            del answer[key]
    assert first["patch"]["added"] == 2 and first["patch"]["files"] == 2
    assert first == second


def test_an_options_file_branch_reads_the_change_again(repo: Path) -> None:
    """The read-ahead cannot know what .buildbot/options asks for: try_branch must win."""
    (repo.parent / "tmp").mkdir()
    git(repo, "checkout", "-q", "-b", "topic")
    (repo / ".buildbot").mkdir()
    (repo / ".buildbot" / "options").write_text("try_branch = 'origin/main'\n")
    code, out, err = tryssh(repo, "try", "--dry-run", "--json")
    assert code == 0, err
    job = json.loads(out)
    assert job["branch"] == "main"  # the remote prefix dropped, as Buildbot does
    assert job["baserev"] == git(repo, "rev-parse", "origin/main").strip()


def test_a_command_that_fails_early_leaves_no_private_index(repo: Path) -> None:
    tmp = repo.parent / "tmp"
    tmp.mkdir()
    code, _, err = tryssh(repo, "try", "--no-such-option")
    assert code == 64, err
    code, _, err = tryssh(repo, "try", "--dry-run", "--properties", "broken")
    assert code == 64, err
    assert list(tmp.iterdir()) == []
