"""``tryssh try`` reads the working copy's change while it loads (tryssh.client.prefetch):
what it reads ahead is exactly what a plain try reads, it is used only for that request,
and a command that fails early leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import GIT_ENV, clone_with_change, git, run, venv_bin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tryssh.client import diffahead, prefetch, vcs
from tryssh.client.job import TryRequest, gather_change

FIELDS = ("vcs", "baserev", "patch", "patch_level", "branch", "repository", "topdir", "notes",
          "upstream_branch")  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clone with an upstream, a local commit and an uncommitted change; the cwd."""
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = clone_with_change(tmp_path)
    (work / "b.txt").write_text("local\n")
    git(work, "add", "b.txt")
    git(work, "commit", "-q", "-m", "local")
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


# --------------------------------------------------------------------------- the diff ahead


def extract_with(ahead: diffahead.DiffAhead | None, cwd: Path) -> object:
    try:
        return vcs.extract(*vcs.detect_vcs(str(cwd)), ahead=ahead)
    finally:
        if ahead is not None:
            ahead.discard()


def test_the_diff_started_ahead_is_the_one_a_plain_try_runs(repo: Path) -> None:
    git(repo, "reset", "-q", "--hard", "origin/main")  # no local commit: the base is HEAD
    (repo / "a.txt").write_text("one\ntwo\n")
    ahead = diffahead.start(str(repo))
    assert ahead is not None and ahead.base == git(repo, "rev-parse", "HEAD")
    taken = ahead.take(str(repo), ahead.base, str(repo / ".git" / "index"))
    assert taken is not None
    patch, stats = taken
    usual = vcs.extract("git", str(repo))
    assert patch == usual.patch and b"+two" in patch
    assert stats == usual.stats


def test_on_a_branch_with_local_commits_the_diff_ahead_is_against_the_merge_base(
    repo: Path,
) -> None:
    """The fixture's branch has a local commit: its base is the merge-base with the
    upstream, which git merge-base finds before the diff starts."""
    ahead = diffahead.start(str(repo))
    assert ahead is not None
    upstream = git(repo, "rev-parse", "origin/main")
    taken = ahead.take(str(repo), upstream, str(repo / ".git" / "index"))
    assert taken is not None
    usual = vcs.extract("git", str(repo))
    assert usual.baserev == upstream == ahead.base
    assert taken[0] == usual.patch and b"local" in taken[0] and b"+two" in taken[0]


def test_nothing_starts_early_where_the_upstream_cannot_be_read(repo: Path) -> None:
    git(repo, "update-ref", "-d", "refs/remotes/origin/main")  # not fetched
    assert diffahead.start(str(repo)) is None
    git(repo, "config", "branch.main.merge", "refs/heads/x;y")  # beyond a plain reading
    assert diffahead.start(str(repo)) is None


@pytest.mark.parametrize(
    ("config", "expected"),
    [("", ""),
     ('[branch "main"]\n\tremote = origin\n\tmerge = refs/heads/main\n',
      "refs/remotes/origin/main"),
     ('[Branch "main"]\n  Merge = refs/heads/trunk\n  remote=up\n', "refs/remotes/up/trunk"),
     ('[branch "other"]\n\tremote = origin\n\tmerge = refs/heads/main\n', ""),
     ('[branch "main"]\n\tremote = .\n\tmerge = refs/heads/base\n', None),
     ('[include]\n\tpath = more\n', None),
     ('[branch "main"]\n\tremote = "origin"\n\tmerge = refs/heads/main\n', None),
     ('[branch "main"]\n\tmerge = refs/heads/main ; a comment\n\tremote = o\n', None),
     ('[branch "main"] merge = refs/heads/main\n', None)],
    ids=["none", "plain", "case", "another-branch", "local", "include", "quoted", "comment",
         "same-line"],
)  # fmt: skip
def test_the_upstream_is_read_from_a_plain_config_only(
    tmp_path: Path, config: str, expected: str | None
) -> None:
    (tmp_path / "config").write_text(config)
    assert diffahead.tracking_ref(str(tmp_path), "main") == expected


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.binary(max_size=300), branch=st.text(max_size=10))
def test_any_config_gives_a_ref_or_nothing(tmp_path: Path, config: bytes, branch: str) -> None:
    (tmp_path / "config").write_bytes(config)
    got = diffahead.tracking_ref(str(tmp_path), branch)
    assert got is None or got == "" or got.startswith("refs/remotes/")


@pytest.mark.parametrize("change", ["head-moved", "index-changed", "branch", "fetched",
                                    "merge-base"])  # fmt: skip
def test_a_diff_ahead_that_is_not_the_one_asked_for_is_not_used(
    repo: Path, change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever changed between the read of git's files and git's own answers, the change
    is what the usual read gives, and nothing is left in $TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    if change != "merge-base":  # the fixture's local commit, staged: the base is HEAD
        git(repo, "reset", "-q", "--soft", "origin/main")
    if change == "head-moved":  # detached: the base is HEAD, wherever it goes
        git(repo, "checkout", "-q", "--detach")
    ahead = diffahead.start(str(repo))
    assert ahead is not None
    if change in ("fetched", "merge-base"):  # the upstream moved on: another merge-base
        git(repo, "commit", "-q", "--allow-empty", "-m", "local")
        git(repo.parent / "seed", "commit", "-q", "--allow-empty", "-m", "upstream")
        git(repo, "fetch", "-q")
        git(repo, "reset", "-q", "--soft", "origin/main")
        git(repo, "commit", "-q", "-m", "local again")
    if change == "head-moved":
        git(repo, "commit", "-q", "-m", "meanwhile")
    elif change == "index-changed":
        (repo / "new.txt").write_text("staged meanwhile\n")
        git(repo, "add", "new.txt")
    if change == "branch":
        try:
            got = vcs.extract("git", str(repo), branch="main", ahead=ahead)
        finally:
            ahead.discard()
        assert fields(got) == fields(vcs.extract("git", str(repo), branch="main"))
    else:
        got = extract_with(ahead, repo)
        assert fields(got) == fields(vcs.extract("git", str(repo)))
    if change == "index-changed":
        assert b"staged meanwhile" in got.patch
    assert list(tmp.iterdir()) == []


def test_a_diff_ahead_that_is_dropped_is_stopped_and_reaped(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    git(repo, "reset", "-q", "--soft", "origin/main")  # the base is HEAD: it starts
    ahead = diffahead.start(str(repo))
    assert ahead is not None
    ahead.discard()
    ahead.discard()  # twice is harmless
    with pytest.raises(ChildProcessError):
        os.waitpid(ahead._pid, os.WNOHANG)  # reaped: no zombie left
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("where", ["GIT_DIR", "worktree", "nested-hg", "no-git", "unborn"])
def test_nothing_is_started_where_git_files_do_not_say_enough(
    repo: Path, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(repo, "reset", "-q", "--soft", "origin/main")  # the base is HEAD: all else would start
    cwd = repo
    if where == "GIT_DIR":
        monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    elif where == "worktree":  # a linked worktree's .git is a file
        cwd = tmp_path / "linked"
        git(repo, "worktree", "add", "-q", str(cwd))
    elif where == "nested-hg":
        cwd = repo / "sub"
        (cwd / ".hg").mkdir(parents=True)
    elif where == "no-git":
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        monkeypatch.setenv("TMPDIR", str(tmp_path))
    elif where == "unborn":
        cwd = tmp_path / "fresh"
        git(tmp_path, "init", "-q", str(cwd))
    assert diffahead.start(str(cwd)) is None
    assert not list(tmp_path.glob("tryssh-git-*"))


def test_head_is_read_from_loose_and_packed_refs_and_detached(repo: Path) -> None:
    gitdir = str(repo / ".git")
    head = git(repo, "rev-parse", "HEAD")
    assert diffahead.head_commit(gitdir) == head
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert diffahead.head_commit(gitdir) == head
    git(repo, "checkout", "-q", "--detach")
    assert diffahead.head_commit(gitdir) == head


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.one_of(st.binary(max_size=80),
                      st.builds(lambda s: b"ref: " + s, st.binary(max_size=60)),
                      st.sampled_from([b"ref: ../../../etc/passwd\n", b"ref: refs/heads/x\0y\n",
                                       b"ref: refs/heads/../../HEAD\n", b"0" * 39 + b"\n",
                                       b"ref: refs/heads/main"])),
       ref=st.binary(max_size=80))  # fmt: skip
def test_any_head_file_gives_a_commit_or_nothing(tmp_path: Path, head: bytes, ref: bytes) -> None:
    """Whatever HEAD and the ref it names hold, head_commit answers 40 or 64 hex digits or
    None, and reads nothing outside the git directory."""
    gitdir = tmp_path / "g"
    (gitdir / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (gitdir / "HEAD").write_bytes(head)
    (gitdir / "refs" / "heads" / "main").write_bytes(ref)
    got = diffahead.head_commit(str(gitdir))
    assert got is None or (len(got) in (40, 64) and set(got) <= set("0123456789abcdef"))
    if head.startswith(b"ref: ") and b".." in head:
        assert got is None


def test_the_markers_are_the_vcs_modules():
    """diffahead keeps its own copy (vcs is too heavy to import that early): the same."""
    assert diffahead._MARKERS == tuple(vcs.MARKERS.values())
