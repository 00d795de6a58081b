"""contrib/tryssh-build-git, run for real: a git repository, patches, the consumer."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import git

from tryssh.core.jobfile import Job

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "contrib" / "tryssh-build-git"
CHECK = ["sh", "-c", "grep -qx patched greeting.txt"]  # the build: is the patch there?


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, str]:
    """A repository with two commits on main and a patch (level 1) against the first."""
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "greeting.txt").write_text("hello\n")
    git(path, "add", "greeting.txt")
    git(path, "commit", "-qm", "first")
    first = git(path, "rev-parse", "HEAD")
    (path / "greeting.txt").write_text("patched\n")
    patch = git(path, "diff") + "\n"
    git(path, "checkout", "-q", "greeting.txt")
    (path / "other.txt").write_text("x\n")
    git(path, "add", "other.txt")
    git(path, "commit", "-qm", "second")
    return {"path": str(path), "first": first, "patch": patch}


def build(tmp_path: Path, repository: str, command: list[str], **env: str):
    work = tmp_path / f"work{len(list(tmp_path.glob('work*')))}"
    work.mkdir()
    patch = work.parent / f"{work.name}.patch"
    patch.write_text(env.pop("patch", ""))
    full = {"PATH": os.environ["PATH"], "TRY_PATCH": str(patch), "TRY_PATCH_LEVEL": "1",
            "TRY_BRANCH": "", "TRY_BASEREV": "", "HOME": str(tmp_path)}  # fmt: skip
    full.update(env)
    return subprocess.run([str(SCRIPT), repository, *command], cwd=work, env=full,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_detached_head_job_builds_the_base_revision_with_the_patch(tmp_path, repo):
    """A client on a detached HEAD sends no branch, only the base revision."""
    result = build(tmp_path, repo["path"], CHECK, TRY_BASEREV=repo["first"], patch=repo["patch"])
    assert result.returncode == 0, result.stderr
    assert f"checked out {repo['first']} (branch 'none')" in result.stderr


def test_branch_without_base_revision(tmp_path, repo):
    result = build(tmp_path, repo["path"], ["test", "-e", "other.txt"], TRY_BRANCH="main")
    assert result.returncode == 0, result.stderr
    assert "empty patch" in result.stderr


def test_the_private_git_config_is_gone_when_the_build_runs(tmp_path, repo):
    """The script execs the build command: its EXIT trap never runs then, and every build
    used to leave a tryssh-gitconfig.* file behind in $TMPDIR."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    result = build(tmp_path, repo["path"], ["sh", "-c", 'ls -A "$TMPDIR"; git config --global -l'],
                   TRY_BASEREV=repo["first"], TMPDIR=str(tmpdir))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # nothing in $TMPDIR, and no global git settings
    assert list(tmpdir.iterdir()) == []


def test_the_commands_failure_is_the_builds(tmp_path, repo):
    result = build(tmp_path, repo["path"], CHECK, TRY_BASEREV=repo["first"])  # no patch
    assert result.returncode == 1


def test_a_patch_that_does_not_apply_is_exit_4(tmp_path, repo):
    bad = repo["patch"].replace("-hello", "-goodbye")
    result = build(tmp_path, repo["path"], CHECK, TRY_BASEREV=repo["first"], patch=bad)
    assert result.returncode == 4, result.stderr
    assert "the patch does not apply" in result.stderr


def test_patch_level_0(tmp_path, repo):
    level0 = repo["patch"].replace("a/greeting.txt", "greeting.txt").replace(
        "b/greeting.txt", "greeting.txt")  # fmt: skip
    result = build(tmp_path, repo["path"], CHECK, TRY_BASEREV=repo["first"],
                   TRY_PATCH_LEVEL="0", patch=level0)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TRY_BASEREV": "--upload-pack=touch /tmp/pwned"}, "is not a commit id"),
        ({"TRY_BRANCH": "-x"}, "is not a plain branch name"),
        ({"TRY_BRANCH": "a..b"}, "is not a plain branch name"),
        ({"TRY_PATCH_LEVEL": "1; rm -rf /"}, "is not a number"),
    ],
)
def test_hostile_job_fields_never_reach_git(tmp_path, repo, env, words):
    result = build(tmp_path, repo["path"], ["true"], **env)
    assert result.returncode == 2
    assert words in result.stderr
    assert not list(tmp_path.glob("work*/src"))  # nothing cloned


def test_unknown_base_revision_says_so(tmp_path, repo):
    result = build(tmp_path, repo["path"], ["true"], TRY_BASEREV="0" * 40)
    assert result.returncode == 3
    assert "is not in" in result.stderr and "was it pushed?" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another account needs root")
def test_a_repository_of_another_account(tmp_path, repo):
    """git refuses a repository another account owns ("dubious ownership"); the script
    trusts exactly the admin's repository, through a private global config."""
    shutil.chown(tmp_path, "nobody")  # tmp_path stays reachable: root reads it anyway
    for top, dirs, files in os.walk(repo["path"]):
        for name in [*dirs, *files]:
            os.chown(os.path.join(top, name), 65534, -1, follow_symlinks=False)
    os.chown(repo["path"], 65534, -1)
    plain = subprocess.run(
        ["git", "clone", "-q", repo["path"], str(tmp_path / "plain")],
        capture_output=True, text=True, env={**os.environ, "HOME": "/nonexistent"},
    )  # fmt: skip
    assert "dubious ownership" in plain.stderr  # the problem is real here
    result = build(tmp_path, repo["path"], CHECK, TRY_BASEREV=repo["first"], patch=repo["patch"])
    assert result.returncode == 0, result.stderr


def test_through_the_consumer(tmp_path, repo):
    from test_consumer import consume_once, store_of, write_config

    from tryssh.core.jobdir import Jobdir
    from tryssh.core.jobfile import encode_job

    config = write_config(
        tmp_path,
        builders={"unit": {"command": [str(SCRIPT), repo["path"], *CHECK]}},
        users={"*": {}},
    )
    job = Job("1", None, repo["first"], 1, repo["patch"].encode(), ["unit"], who="alice")
    name = Jobdir(str(tmp_path / "jobdir")).deliver_bytes(encode_job(job))
    consume_once(config)
    record = store_of(config).read(name)
    assert record["state"] == "success", record
