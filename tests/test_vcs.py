"""tryssh.client.vcs against real git, hg and svn repositories.

Every extraction test proves the patch with the VCS's own tool: a fresh clone/checkout at
the base revision, the patch applied there (git apply, hg import --no-commit, svn patch),
and the resulting tree compared byte for byte with the developer's tree.
"""

from __future__ import annotations

import difflib
import io
import os
import random
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh import errors
from tryssh.client.vcs import (
    PatchStats,
    SourceChange,
    detect_vcs,
    extract,
    from_diff,
    patch_stats,
    redact_url,
)

VCS_DIRS = {".git", ".hg", ".svn"}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/bootstrap", pytrace=False)
    return path


@pytest.fixture(autouse=True)
def isolated_vcs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system VCS configuration may leak into (or out of) the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Tess Ter")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "tess@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Tess Ter")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "tess@example.com")
    monkeypatch.setenv("HGRCPATH", "")
    monkeypatch.setenv("HGUSER", "Tess Ter <tess@example.com>")


def run(argv: list[str], cwd: Path | str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, check=False)
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc.stdout


def snapshot(top: Path) -> dict[str, bytes]:
    """Every file under ``top`` (outside VCS metadata) and its content."""
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in VCS_DIRS)
        for name in filenames:
            full = os.path.join(dirpath, name)
            files[os.path.relpath(full, top)] = Path(full).read_bytes()
    return files


def without(tree: Mapping[str, bytes], names: Iterable[str]) -> dict[str, bytes]:
    drop = set(names)
    return {k: v for k, v in tree.items() if k not in drop}


RNG = random.Random(20240611)
BIN_A = bytes(range(256)) + RNG.randbytes(700)  # every byte value, NULs included
BIN_B = RNG.randbytes(900) + b"\0\0"
BIN_C = b"\x89PNG\r\n\x1a\n\0" + RNG.randbytes(300)
BIN_GONE = b"\0\1\2 doomed binary \xff" * 20

BASE_FILES = {
    "keep.txt": b"unchanged\n",
    "mod.txt": b"one\ntwo\nthree\n",
    "del.txt": b"delete me\n",
    "mod.bin": BIN_A,
    "del.bin": BIN_GONE,
    "latin1.txt": b"caf\xe9\n",  # not UTF-8: must pass through untouched
    "old name.txt": b"renamed file\nline 2\n",
    "dir/deep.txt": b"deep\n",
}


def write_files(top: Path, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def mutate(top: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Change the tree the same way for every VCS; return (added, deleted, renamed)."""
    (top / "mod.txt").write_bytes(b"one\n2\nthree\n-- looks like a header\nfour\n")
    (top / "mod.bin").write_bytes(BIN_B)
    (top / "latin1.txt").write_bytes(b"caf\xe9 cr\xe8me\n")
    (top / "dir" / "deep.txt").write_bytes(b"deeper\n")
    (top / "new dir").mkdir()
    (top / "new dir" / "new file.txt").write_bytes(b"brand new\n")
    (top / "new dir" / "image.png").write_bytes(BIN_C)
    (top / "del.txt").unlink()
    (top / "del.bin").unlink()
    renamed = [("old name.txt", "new name.txt")]
    (top / "new name.txt").write_bytes((top / "old name.txt").read_bytes() + b"line 3\n")
    (top / "old name.txt").unlink()
    added = ["new dir/new file.txt", "new dir/image.png"]
    return added, ["del.txt", "del.bin"], renamed


# --------------------------------------------------------------------------- git


def git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return run([require("git"), *args], cwd, stdin)


def git_origin_and_clone(tmp_path: Path, object_format: str = "sha1") -> tuple[Path, Path, str]:
    """A bare 'origin' holding the base commit and a clone tracking origin/main."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main", f"--object-format={object_format}")
    write_files(seed, BASE_FILES)
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "base")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(origin))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(origin), str(work))
    base = git(work, "rev-parse", "HEAD").decode().strip()
    return origin, work, base


def git_mutate(work: Path) -> None:
    mutate(work)
    git(work, "add", "-A", "--", "new dir/image.png", "mod.txt")  # some staged, some not
    git(work, "add", "--intent-to-add", "--", "new dir/new file.txt")
    git(work, "rm", "-q", "--cached", "del.bin")
    git(work, "add", "-A", "--", "new name.txt", "old name.txt")  # a staged rename


def git_apply_at(origin: Path, base: str, change: SourceChange, dest: Path) -> dict[str, bytes]:
    """Apply the patch the way Buildbot's Git step does, at ``base`` in a fresh clone."""
    git(dest.parent, "clone", "-q", str(origin), str(dest))
    git(dest, "checkout", "-q", "--detach", base)
    git(dest, "apply", "--index", f"-p{change.patch_level}", "-", stdin=change.patch)
    return snapshot(dest)


def numstat(patch: bytes, cwd: Path) -> tuple[int, int, int]:
    """(files, added, removed) as git itself counts them."""
    out = git(cwd, "apply", "--numstat", "-", stdin=patch).decode()
    files = added = removed = 0
    for line in out.splitlines():
        a, r, _ = line.split("\t", 2)
        files += 1
        added += int(a) if a != "-" else 0
        removed += int(r) if r != "-" else 0
    return files, added, removed


def test_git_upstream_merge_base_with_local_commits(tmp_path: Path) -> None:
    origin, work, upstream_base = git_origin_and_clone(tmp_path)
    # A local commit ahead of origin/main: it must be in the patch, the base stays upstream's.
    (work / "keep.txt").write_bytes(b"changed by a local commit\n")
    git(work, "commit", "-q", "-am", "local only")
    git_mutate(work)
    status_before = git(work, "status", "--porcelain=v1", "-z")

    change = extract("git", str(work))

    assert change.vcs == "git"
    assert change.baserev == upstream_base
    assert change.baserev != git(work, "rev-parse", "HEAD").decode().strip()
    assert change.patch_level == 1
    assert change.branch == "main"
    assert change.upstream_branch == "main"
    assert change.repository == str(origin)
    assert change.topdir == str(work)
    assert change.notes == []
    assert isinstance(change.patch, bytes)
    assert b"GIT binary patch" in change.patch
    assert b"caf\xe9 cr\xe8me" in change.patch  # raw bytes, never decoded
    assert b"rename from old name.txt" in change.patch
    assert change.stats == patch_stats(change.patch)
    assert (change.stats.files, change.stats.added, change.stats.removed) == numstat(
        change.patch, work
    )
    assert change.stats.size == len(change.patch)

    applied = git_apply_at(origin, change.baserev, change, tmp_path / "fresh")
    assert applied == snapshot(work)
    assert git(work, "status", "--porcelain=v1", "-z") == status_before


def test_git_untracked_only_with_flag_and_index_untouched(tmp_path: Path) -> None:
    origin, work, base = git_origin_and_clone(tmp_path)
    git_mutate(work)
    (work / ".gitignore").write_bytes(b"*.log\n")
    git(work, "add", ".gitignore")
    (work / "untracked.txt").write_bytes(b"not added\n")
    (work / "untracked dir").mkdir()
    (work / "untracked dir" / "blob.bin").write_bytes(BIN_C[::-1])
    (work / "*.c").write_bytes(b"a file literally named star-dot-c\n")
    (work / "ignored.log").write_bytes(b"ignored\n")
    # Make every tracked file stat-dirty: a diff would like to refresh the index.
    for p in work.rglob("*"):
        if p.is_file() and ".git" not in p.parts:
            os.utime(p, (1_000_000_000, 1_000_000_000))
    index = work / ".git" / "index"
    objects_before = sorted(str(p) for p in (work / ".git" / "objects").rglob("*"))
    status_before = git(work, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    index_before_status = index.read_bytes()  # git status itself may refresh the index

    plain = extract("git", str(work))
    assert index.read_bytes() == index_before_status
    assert b"untracked" not in plain.patch and b"*.c" not in plain.patch
    untracked = ["untracked.txt", "untracked dir/blob.bin", "*.c", "ignored.log"]
    applied = git_apply_at(origin, base, plain, tmp_path / "fresh1")
    assert applied == without(snapshot(work), untracked)

    full = extract("git", str(work), include_untracked=True)
    assert b"b/untracked.txt" in full.patch and b"b/untracked dir/blob.bin" in full.patch
    assert b"ignored.log" not in full.patch
    applied = git_apply_at(origin, base, full, tmp_path / "fresh2")
    assert applied == without(snapshot(work), ["ignored.log"])
    assert full.stats.files == plain.stats.files + 3

    # The user's repository is exactly as it was: index bytes, objects, status.
    assert index.read_bytes() == index_before_status
    assert sorted(str(p) for p in (work / ".git" / "objects").rglob("*")) == objects_before
    assert git(work, "status", "--porcelain=v1", "-z", "--untracked-files=all") == status_before
    assert not list((work / ".git").glob("*.lock"))


def test_git_detached_head(tmp_path: Path) -> None:
    origin, work, base = git_origin_and_clone(tmp_path)
    git(work, "checkout", "-q", "--detach", "HEAD")
    git_mutate(work)
    change = extract("git", str(work))
    assert change.branch is None
    assert change.repository is None
    assert change.baserev == base
    assert any("detached" in n for n in change.notes)
    assert git_apply_at(origin, base, change, tmp_path / "fresh") == snapshot(work)


def test_git_branch_with_slashes_and_its_upstream(tmp_path: Path) -> None:
    origin, work, base = git_origin_and_clone(tmp_path)
    git(work, "checkout", "-q", "-b", "feature/deep/name")
    (work / "keep.txt").write_bytes(b"pushed on the feature branch\n")
    git(work, "commit", "-q", "-am", "feature work")
    git(work, "push", "-q", "-u", "origin", "feature/deep/name")
    pushed = git(work, "rev-parse", "HEAD").decode().strip()
    (work / "keep.txt").write_bytes(b"local commit, not pushed\n")
    git(work, "commit", "-q", "-am", "more")
    git_mutate(work)

    change = extract("git", str(work))
    assert change.branch == "feature/deep/name"
    assert change.upstream_branch == "feature/deep/name"
    assert change.baserev == pushed != base
    assert git_apply_at(origin, pushed, change, tmp_path / "fresh") == snapshot(work)

    # --branch names the branch the base comes from (Buildbot's way): a missing one is an error.
    with pytest.raises(errors.UsageError, match="not a branch"):
        extract("git", str(work), branch="other")


def test_git_branch_option_computes_the_base_like_buildbot(tmp_path: Path) -> None:
    _, work, base = git_origin_and_clone(tmp_path)
    # A local branch with a commit that was never pushed, and work on top of it.
    git(work, "checkout", "-q", "-b", "topic")
    (work / "topic.txt").write_bytes(b"local only\n")
    git(work, "add", "topic.txt")
    git(work, "commit", "-q", "-m", "unpushed")
    topic = git(work, "rev-parse", "HEAD").decode().strip()
    git(work, "checkout", "-q", "-b", "mine")
    (work / "mine.txt").write_bytes(b"committed on mine\n")
    git(work, "add", "mine.txt")
    git(work, "commit", "-q", "-m", "mine")
    git_mutate(work)

    change = extract("git", str(work), branch="topic")
    assert change.baserev == topic and change.branch == "topic"
    assert any("not on any remote-tracking branch" in n for n in change.notes)
    # The patch holds everything since the branch, as Buildbot's git diff <base> does.
    assert b"mine.txt" in change.patch and b"topic.txt" not in change.patch

    # A remote-tracking branch: the merge-base with it, the remote prefix dropped.
    change = extract("git", str(work), branch="origin/main")
    assert change.baserev == base and change.branch == "main"
    assert not any("remote-tracking" in n for n in change.notes)
    assert b"topic.txt" in change.patch
    # A name only the remote has is found there too.
    assert extract("git", str(work), branch="main").baserev == base


def test_git_local_branch_without_upstream_uses_head(tmp_path: Path) -> None:
    origin, work, base = git_origin_and_clone(tmp_path)
    git(work, "checkout", "-q", "--no-track", "-b", "topic/x", "origin/main")
    git_mutate(work)
    change = extract("git", str(work))
    assert change.branch == "topic/x"
    assert change.baserev == base
    assert change.repository is None
    assert any("no upstream" in n for n in change.notes)
    assert git_apply_at(origin, base, change, tmp_path / "fresh") == snapshot(work)


def test_git_sha256_repository(tmp_path: Path) -> None:
    origin, work, base = git_origin_and_clone(tmp_path, object_format="sha256")
    assert len(base) == 64
    (work / "keep.txt").write_bytes(b"ahead\n")
    git(work, "commit", "-q", "-am", "ahead")
    git_mutate(work)
    change = extract("git", str(work))
    assert change.baserev == base
    assert change.branch == "main"
    index_lines = [ln for ln in change.patch.split(b"\n") if ln.startswith(b"index ")]
    assert index_lines and all(len(ln.split(b"..")[1].split()[0]) == 64 for ln in index_lines)
    assert git_apply_at(origin, base, change, tmp_path / "fresh") == snapshot(work)


def test_git_baserev_override(tmp_path: Path) -> None:
    origin, work, base = git_origin_and_clone(tmp_path)
    (work / "keep.txt").write_bytes(b"second\n")
    git(work, "commit", "-q", "-am", "second")
    git(work, "push", "-q", "origin", "main")
    (work / "keep.txt").write_bytes(b"third\n")
    git(work, "commit", "-q", "-am", "third")
    git(work, "push", "-q", "origin", "main")
    git_mutate(work)

    change = extract("git", str(work), baserev="HEAD~2")
    assert change.baserev == base  # resolved to the full commit id
    assert b"+third" in change.patch
    assert git_apply_at(origin, base, change, tmp_path / "fresh") == snapshot(work)

    with pytest.raises(errors.UsageError, match="not a commit"):
        extract("git", str(work), baserev="no-such-rev")
    with pytest.raises(errors.UsageError, match="not a revision"):
        extract("git", str(work), baserev="--output=/tmp/x")


def test_git_empty_diff_and_no_commits(tmp_path: Path) -> None:
    _origin, work, base = git_origin_and_clone(tmp_path)
    change = extract("git", str(work))
    assert change.patch == b""
    assert change.stats == PatchStats(files=0, added=0, removed=0, size=0)
    assert change.baserev == base

    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    (empty / "f").write_bytes(b"x\n")
    with pytest.raises(errors.UsageError, match="no commits"):
        extract("git", str(empty))


def test_git_credentials_are_not_sent(tmp_path: Path) -> None:
    _origin, work, _base = git_origin_and_clone(tmp_path)
    git(work, "remote", "set-url", "origin", "https://alice:s3cret@git.example.com/r.git")
    change = extract("git", str(work))
    assert change.repository == "https://git.example.com/r.git"
    assert any("credentials" in n for n in change.notes)


def test_failing_vcs_command_reports_first_stderr_line(tmp_path: Path) -> None:
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    with pytest.raises(errors.TrysshError) as info:
        extract("git", str(not_a_repo))
    assert "not a git repository" in info.value.message
    assert "\n" not in info.value.message
    assert info.value.exit_code == errors.EX_UNAVAILABLE
    with pytest.raises(errors.TrysshError, match="abort: "):
        extract("hg", str(not_a_repo))
    with pytest.raises(errors.UsageError, match="unsupported"):
        extract("cvs", str(not_a_repo))


# --------------------------------------------------------------------------- hg


def hg(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return run([require("hg"), *args], cwd, stdin)


def hg_upstream_and_clone(tmp_path: Path) -> tuple[Path, Path, str]:
    up = tmp_path / "up"
    up.mkdir()
    hg(up, "init")
    write_files(up, BASE_FILES)
    hg(up, "commit", "-q", "-A", "-m", "base")
    work = tmp_path / "work"
    hg(tmp_path, "clone", "-q", str(up), str(work))  # clones from a publishing repo: public
    base = hg(work, "log", "-r", ".", "--template", "{node}").decode()
    return up, work, base


def hg_mutate(work: Path) -> None:
    mutate(work)
    (work / "new name.txt").rename(work / "tmp-rename")
    (work / "old name.txt").write_bytes(BASE_FILES["old name.txt"])
    hg(work, "mv", "old name.txt", "new name.txt")
    (work / "tmp-rename").replace(work / "new name.txt")
    hg(work, "addremove", "-q", "--similarity", "0")


def hg_apply_at(up: Path, base: str, change: SourceChange, dest: Path) -> dict[str, bytes]:
    hg(dest.parent, "clone", "-q", "-U", str(up), str(dest))
    hg(dest, "update", "-q", "-r", base)
    hg(dest, "import", "-q", "--no-commit", "-p", str(change.patch_level), "-", stdin=change.patch)
    return snapshot(dest)


def test_hg_public_base_with_draft_commits(tmp_path: Path) -> None:
    up, work, base = hg_upstream_and_clone(tmp_path)
    (work / "keep.txt").write_bytes(b"draft commit\n")
    hg(work, "commit", "-q", "-m", "draft")
    hg_mutate(work)

    change = extract("hg", str(work))
    assert change.vcs == "hg"
    assert change.baserev == base
    assert change.patch_level == 1
    assert change.branch == "default"
    assert change.repository == str(up)
    assert change.notes == []
    assert b"GIT binary patch" in change.patch
    assert b"+draft commit" in change.patch
    assert b"caf\xe9 cr\xe8me" in change.patch
    assert change.stats.files == 10
    assert hg_apply_at(up, base, change, tmp_path / "fresh") == snapshot(work)

    with pytest.raises(errors.UsageError, match="git only"):
        extract("hg", str(work), include_untracked=True)


def test_hg_all_draft_falls_back_to_parent(tmp_path: Path) -> None:
    repo = tmp_path / "solo"
    repo.mkdir()
    hg(repo, "init")
    write_files(repo, BASE_FILES)
    hg(repo, "commit", "-q", "-A", "-m", "base")
    parent = hg(repo, "log", "-r", ".", "--template", "{node}").decode()
    hg_mutate(repo)
    change = extract("hg", str(repo))
    assert change.baserev == parent
    assert change.repository is None
    assert any("no public ancestor" in n for n in change.notes)
    assert hg_apply_at(repo, parent, change, tmp_path / "fresh") == snapshot(repo)


def test_hg_empty_repository_uses_null(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    hg(repo, "init")
    write_files(repo, {"a.txt": b"a\n", "b.bin": BIN_A})
    hg(repo, "add", "-q")
    change = extract("hg", str(repo))
    assert change.baserev == "0" * 40
    assert any("no commits" in n for n in change.notes)
    assert hg_apply_at(repo, change.baserev, change, tmp_path / "fresh") == snapshot(repo)


def test_hg_baserev_override_and_empty_diff(tmp_path: Path) -> None:
    up, work, base = hg_upstream_and_clone(tmp_path)
    assert extract("hg", str(work)).patch == b""
    (work / "keep.txt").write_bytes(b"second\n")
    hg(work, "commit", "-q", "-m", "second")
    (work / "keep.txt").write_bytes(b"third\n")
    hg(work, "commit", "-q", "-m", "third")
    hg(work, "push", "-q")
    hg_mutate(work)
    change = extract("hg", str(work), baserev="0")
    assert change.baserev == base
    assert b"+third" in change.patch
    assert hg_apply_at(up, base, change, tmp_path / "fresh") == snapshot(work)
    with pytest.raises(errors.UsageError, match="exactly one revision"):
        extract("hg", str(work), baserev="nosuchrev")


# --------------------------------------------------------------------------- svn


def svn(cwd: Path, *args: str) -> bytes:
    return run([require("svn"), "--non-interactive", *args], cwd)


def svn_repo_and_wc(tmp_path: Path, files: Mapping[str, bytes] = BASE_FILES) -> tuple[str, Path]:
    repo = tmp_path / "repo"
    run([require("svnadmin"), "create", str(repo)], tmp_path)
    url = repo.as_uri()
    wc = tmp_path / "wc"
    svn(tmp_path, "checkout", "-q", url, str(wc))
    write_files(wc, files)
    svn(wc, "add", "-q", "--force", ".")
    svn(wc, "commit", "-q", "-m", "base")
    return url, wc


def svn_mutate(wc: Path) -> None:
    mutate(wc)
    (wc / "new name.txt").rename(wc / "tmp-rename")
    (wc / "old name.txt").write_bytes(BASE_FILES["old name.txt"])
    svn(wc, "mv", "-q", "old name.txt", "new name.txt")
    (wc / "tmp-rename").replace(wc / "new name.txt")
    svn(wc, "add", "-q", "new dir")
    svn(wc, "rm", "-q", "del.txt", "del.bin")


def test_svn_binary_warning_survives_quiet(tmp_path: Path) -> None:
    """README: tryssh warns when an svn patch holds a binary file (GNU patch cannot apply
    it), and --quiet hides the summary, never a warning."""
    from helpers import run as run_cmd
    from helpers import venv_bin

    from tryssh.core.jobdir import Jobdir

    _url, wc = svn_repo_and_wc(tmp_path)
    (wc / "new.bin").write_bytes(b"\x00\x01binary")
    svn(wc, "add", "-q", "new.bin")
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    result = run_cmd([venv_bin("tryssh"), "try", "-q", "-c", "local", "--jobdir", jobdir.path],
                     env={**os.environ, "HOME": str(tmp_path)}, cwd=wc)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "binary file(s) are in git binary form" in result.stderr.decode()


def svn_apply_at(url: str, base: str, change: SourceChange, dest: Path) -> dict[str, bytes]:
    svn(dest.parent, "checkout", "-q", "-r", base, url, str(dest))
    patch = dest.parent / f"{dest.name}.diff"
    patch.write_bytes(change.patch)
    svn(dest, "patch", "--strip", str(change.patch_level), str(patch))
    return snapshot(dest)


def test_svn_mixed_revision_working_copy(tmp_path: Path) -> None:
    url, wc = svn_repo_and_wc(tmp_path)
    # Right after a commit the root is still at r0 and the files at r1: a mixed working copy.
    svn_mutate(wc)
    change = extract("svn", str(wc))
    assert change.vcs == "svn"
    assert change.baserev == "1"
    assert isinstance(change.baserev, str)
    assert change.patch_level == 0
    assert change.branch is None
    assert change.repository == url
    assert any("mixes revisions 0:1" in n for n in change.notes)
    assert any("binary" in n for n in change.notes)
    assert b"GIT binary patch" in change.patch
    assert b"Cannot display" not in change.patch
    assert b"caf\xe9 cr\xe8me" in change.patch
    assert change.stats.files == 10
    assert svn_apply_at(url, "1", change, tmp_path / "fresh") == snapshot(wc)


def test_svn_updated_working_copy_and_gnu_patch(tmp_path: Path) -> None:
    url, wc = svn_repo_and_wc(tmp_path)
    svn(wc, "update", "-q")
    (wc / "keep.txt").write_bytes(b"second revision\n")
    svn(wc, "commit", "-q", "-m", "r2")
    svn(wc, "update", "-q")
    # Text-only changes: Buildbot's SVN step applies them with GNU patch -p0.
    (wc / "mod.txt").write_bytes(b"one\n2\nthree\n")
    (wc / "dir" / "deep.txt").write_bytes(b"changed deep\n")
    (wc / "added.txt").write_bytes(b"added\n")
    svn(wc, "add", "-q", "added.txt")
    svn(wc, "rm", "-q", "del.txt")

    change = extract("svn", str(wc))
    assert change.baserev == "2"
    assert change.notes == []
    assert svn_apply_at(url, "2", change, tmp_path / "fresh") == snapshot(wc)

    gnu_patch = shutil.which("patch")
    if gnu_patch is None:
        pytest.skip("GNU patch is not installed (the svn patch check above passed)")
    dest = tmp_path / "fresh-gnu"
    svn(tmp_path, "checkout", "-q", "-r", "2", url, str(dest))
    run(
        [gnu_patch, f"-p{change.patch_level}", "--remove-empty-files", "--force", "--forward"],
        dest,
        stdin=change.patch,
    )
    assert snapshot(dest) == snapshot(wc)


def test_svn_baserev_override_and_empty_diff(tmp_path: Path) -> None:
    url, wc = svn_repo_and_wc(tmp_path)
    svn(wc, "update", "-q")
    empty = extract("svn", str(wc))
    assert empty.patch == b"" and empty.baserev == "1"
    (wc / "keep.txt").write_bytes(b"r2\n")
    svn(wc, "commit", "-q", "-m", "r2")
    svn(wc, "update", "-q")
    (wc / "mod.txt").write_bytes(b"changed\n")
    change = extract("svn", str(wc), baserev="r1")
    assert change.baserev == "1"
    assert b"+r2" in change.patch
    assert svn_apply_at(url, "1", change, tmp_path / "fresh") == snapshot(wc)
    with pytest.raises(errors.UsageError, match="not an svn revision"):
        extract("svn", str(wc), baserev="HEAD~1")
    with pytest.raises(errors.UsageError, match="git only"):
        extract("svn", str(wc), include_untracked=True)


# --------------------------------------------------------------------------- detection


def test_detect_vcs_each_kind_and_nesting(tmp_path: Path) -> None:
    _origin, work, _ = git_origin_and_clone(tmp_path)
    assert detect_vcs(str(work / "dir")) == ("git", str(work))

    up = tmp_path / "hgrepo"
    up.mkdir()
    hg(up, "init")
    (up / "sub").mkdir()
    assert detect_vcs(str(up / "sub")) == ("hg", str(up))

    _url, wc = svn_repo_and_wc(tmp_path)
    assert detect_vcs(str(wc / "dir")) == ("svn", str(wc))

    # A git repository inside an svn working copy: the nearest one wins.
    inner = wc / "dir" / "inner"
    inner.mkdir()
    git(inner, "init", "-q")
    (inner / "x").mkdir()
    assert detect_vcs(str(inner / "x")) == ("git", str(inner))

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    with pytest.raises(errors.UsageError, match="not inside a git, hg or svn working copy"):
        detect_vcs(str(lonely))
    with pytest.raises(errors.UsageError, match="not a directory"):
        detect_vcs(str(lonely / "missing"))


# --------------------------------------------------------------------------- --diff


def test_from_diff_file_and_stdin_are_bytes(tmp_path: Path) -> None:
    data = b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-caf\xe9\n+\xff\xfe\n"
    diff = tmp_path / "change.diff"
    diff.write_bytes(data)
    change = from_diff(str(diff), baserev="abc123", patch_level=1)
    assert change.patch == data
    assert change.baserev == "abc123"
    assert change.patch_level == 1
    assert change.stats == PatchStats(files=1, added=1, removed=1, size=len(data))

    piped = from_diff("-", baserev=None, stdin=io.BytesIO(data))
    assert piped.patch == data and piped.patch_level == 0 and piped.baserev is None
    assert from_diff("-", baserev=None, stdin=io.BytesIO(b"")).patch == b""

    with pytest.raises(errors.TrysshError) as info:
        from_diff(str(tmp_path / "missing.diff"), baserev=None)
    assert info.value.exit_code == errors.EX_NOINPUT
    with pytest.raises(errors.UsageError):
        from_diff(str(diff), baserev=None, patch_level=-1)
    with pytest.raises(TypeError):
        from_diff(str(diff), baserev=b"123")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- patch_stats


def test_patch_stats_examples() -> None:
    git_binary = (
        b"diff --git a/b.bin b/b.bin\nnew file mode 100644\nindex 0000..1111\n"
        b"GIT binary patch\nliteral 5\nMcmZQzOv=my00M6TI{*Lx\n\nliteral 0\nHcmV?d00001\n\n"
        b"diff --git a/m b/m\nold mode 100644\nnew mode 100755\n"
    )
    assert patch_stats(git_binary) == PatchStats(2, 0, 0, len(git_binary))
    svn_plain = (
        b"Index: a.txt\n===\n--- a.txt\t(revision 1)\n+++ a.txt\t(working copy)\n"
        b"@@ -1,2 +1,2 @@\n hello\n-world\n+there\n"
        b"Index: b.bin\n===\nCannot display: file marked as a binary type.\n"
        b"svn:mime-type = application/octet-stream\n"
        b"Index: c\n===\ndiff --git a/c b/c\n--- a/c\n+++ b/c\n@@ -1 +0,0 @@\n--- gone\n"
    )
    assert patch_stats(svn_plain) == PatchStats(3, 1, 2, len(svn_plain))
    assert patch_stats(b"") == PatchStats(0, 0, 0, 0)


LINE = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"") + b"\n")
TRICKY = st.sampled_from([b"--- a/x\n", b"+++ b/x\n", b"@@ -1 +1 @@\n", b"Index: y\n", b"\n"])
CONTENT = st.lists(st.one_of(LINE, TRICKY), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(CONTENT, CONTENT), max_size=5))
def test_patch_stats_matches_difflib(files: list[tuple[list[bytes], list[bytes]]]) -> None:
    patch = b""
    want_files = want_added = want_removed = 0
    for n, (old, new) in enumerate(files):
        lines = list(
            difflib.diff_bytes(
                difflib.unified_diff, old, new, f"a/f{n}".encode(), f"b/f{n}".encode()
            )
        )
        if not lines:
            continue
        want_files += 1
        body = lines[2:]
        want_added += sum(1 for ln in body if ln.startswith(b"+"))
        want_removed += sum(1 for ln in body if ln.startswith(b"-"))
        patch += b"".join(ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines)
    assert patch_stats(patch) == PatchStats(want_files, want_added, want_removed, len(patch))


@given(st.binary(max_size=400))
def test_patch_stats_never_raises(data: bytes) -> None:
    stats = patch_stats(data)
    assert stats.size == len(data) and min(stats.files, stats.added, stats.removed) >= 0


def test_redact_url() -> None:
    assert redact_url("https://u:p@h.example/x.git") == "https://h.example/x.git"
    assert redact_url("https://token@h.example/x") == "https://h.example/x"
    assert redact_url("ssh://git:pw@h.example:22/x") == "ssh://git@h.example:22/x"
    assert redact_url("ssh://git@h.example/x") == "ssh://git@h.example/x"
    assert redact_url("git@github.com:org/r.git") == "git@github.com:org/r.git"
    assert redact_url("/srv/repos/x") == "/srv/repos/x"


def test_git_extraction_runs_few_git_processes(tmp_path: Path, monkeypatch) -> None:
    """Each git start costs milliseconds: a branch with an upstream takes six (top level,
    rev-parse, for-each-ref, remote URL, merge-base, diff), not nine."""
    _origin, work, base = git_origin_and_clone(tmp_path)
    git_mutate(work)
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "git.log"
    real = shutil.which("git")
    (shim / "git").write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexec "{real}" "$@"\n')
    (shim / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    vcs_name, top = detect_vcs(str(work))
    change = extract(vcs_name, top)
    assert change.baserev == base
    assert change.patch
    assert log.read_text().split() == [
        "rev-parse", "rev-parse", "for-each-ref", "config", "merge-base", "-c",
    ]  # fmt: skip


def test_git_patch_is_counted_while_git_writes_it(tmp_path: Path) -> None:
    """A patch of several pipe reads (many files, a binary one, a mode change, no final
    newline) is counted file by file as git writes it, to patch_stats' counts of the whole."""
    _origin, work, _base = git_origin_and_clone(tmp_path)
    git_mutate(work)
    for i in range(300):
        (work / f"many{i:03d}.txt").write_text("".join(f"line {j} of {i}\n" for j in range(400)))
    git(work, "add", "-A", "--", *[f"many{i:03d}.txt" for i in range(300)])
    (work / "many000.txt").write_text("changed, with no final newline")
    (work / "many001.txt").chmod(0o755)
    change = extract("git", str(work))
    assert len(change.patch) > 3 * (1 << 19) and b"GIT binary patch" in change.patch
    assert change._stats is not None  # counted while read, not afterwards
    assert change.stats == patch_stats(change.patch)
    assert (change.stats.files, change.stats.added, change.stats.removed) == numstat(
        change.patch, work
    )


def test_git_stale_index_is_refreshed_once_in_the_users_cache(tmp_path: Path, monkeypatch) -> None:
    """A stale index (every file's stat data changed) is refreshed in the private copy,
    which is kept and used again while the user's index is the same; the user's index
    itself is never written."""
    _origin, work, _base = git_origin_and_clone(tmp_path)
    git_mutate(work)
    for p in work.rglob("*"):
        if p.is_file() and ".git" not in p.parts:
            os.utime(p, (1_000_000_000, 1_000_000_000))
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    index = work / ".git" / "index"
    before = index.read_bytes()
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    stale = subprocess.run(["git", "diff-files", "--quiet"], cwd=work, env=env, check=False)
    assert stale.returncode == 1  # stat-dirty: git would hash every file to compare
    first = extract("git", str(work))
    kept = list((cache / "tryssh" / "git-index").iterdir())
    assert len(kept) == 1
    refreshed = tmp_path / "refreshed-index"
    refreshed.write_bytes(kept[0].read_bytes().split(b"\n", 1)[1])
    env_cached = {**os.environ, "GIT_INDEX_FILE": str(refreshed)}
    fresh = subprocess.run(["git", "diff-files", "--name-only"], cwd=work, env=env_cached,
                           capture_output=True, check=True)  # fmt: skip
    changed = set(fresh.stdout.decode().split())
    assert changed and all(name.encode() in first.patch for name in changed)  # only real edits
    kept_stat = os.stat(kept[0])
    assert extract("git", str(work)).patch == first.patch  # from the cached copy
    assert index.read_bytes() == before
    # git had nothing to refresh in it: the cached copy is not written again.
    again = os.stat(kept[0])
    assert (again.st_ino, again.st_mtime_ns) == (kept_stat.st_ino, kept_stat.st_mtime_ns)
    # The user's index changes (git add): the copy is made again from it, for its new state.
    git(work, "add", "-u")
    assert extract("git", str(work)).patch == first.patch
    st = os.stat(index)
    key = f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
    assert kept[0].read_bytes().split(b"\n", 1)[0].decode().startswith(key + " ")


def test_git_change_right_after_staging_is_seen(tmp_path: Path) -> None:
    """A file changed within the same clock tick as the index was written, to the same
    size, is "racily clean": git re-reads it because its mtime is not older than the
    index's. The private index copy keeps the index's mtime, so the diff sees it too."""
    work = tmp_path / "w"
    work.mkdir()
    git(work, "init", "-q")
    # ctime cannot be set from user space: let git compare mtime and size only, as it
    # effectively does when every write falls in the same tick of the kernel's clock.
    git(work, "config", "core.trustctime", "false")
    tick = 1_000_000_000 * 10**9
    (work / "f").write_text("one\n")
    os.utime(work / "f", ns=(tick, tick))
    git(work, "add", "f")  # the entry records mtime `tick`; the index is written later
    git(work, "commit", "-qm", "f")
    (work / "f").write_text("two\n")  # the same size, and (below) the same tick
    os.utime(work / "f", ns=(tick, tick))
    os.utime(work / ".git" / "index", ns=(tick, tick))  # as if all in one tick
    assert b"+two" in extract("git", str(work), baserev="HEAD").patch
