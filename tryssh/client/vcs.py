"""Find the developer's working copy and turn its uncommitted change into a patch.

Supports git, Mercurial and Subversion, plus a ready-made diff (``--diff FILE`` or ``-``).
Every VCS program is run with an argument list (never a shell), in the working copy's top
directory, with a fixed locale, and every exit code is checked: a failing command is a
:class:`~tryssh.errors.TrysshError` carrying the tool's own first line of stderr, never an
empty patch that looks like success (Buildbot's try client ignores exit codes).

The patch is bytes from end to end and is never decoded: binary files, non-UTF-8 text and
odd file names go through untouched.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

from tryssh.client.diffahead import DIFF_OPTIONS, PIPE_SIZE, read_counting
from tryssh.client.gitindex import IndexCache, copy_index
from tryssh.client.patchstats import SVN_BINARY_MARKER as _SVN_BINARY_MARKER
from tryssh.client.patchstats import PatchStats, patch_stats
from tryssh.client.toolenv import tool_env
from tryssh.core.defaults import MAX_JOB_SIZE
from tryssh.errors import (
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_UNAVAILABLE,
    TrysshError,
    UsageError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

    from tryssh.client.diffahead import DiffAhead

# The servers' default job size limit: a bigger diff would be refused there anyway, and
# reading one without a bound (``--diff /dev/zero``) would never end.
MAX_DIFF = MAX_JOB_SIZE

#: The marker each VCS keeps at the top of a working copy (svn >= 1.7 keeps one .svn only).
MARKERS = {"git": ".git", "hg": ".hg", "svn": ".svn"}

# Commands that print the top directory of the working copy around the current directory.
_TOP_COMMANDS = {
    "git": ["git", "rev-parse", "--show-toplevel"],
    "hg": ["hg", "root"],
    "svn": ["svn", "info", "--non-interactive", "--show-item", "wc-root"],
}

_HEX_NODE = re.compile(rb"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_SVNVERSION = re.compile(r"^(\d+)(?::(\d+))?([MSP]*)$")


class SourceChange:
    """A change to send: the base revision and the patch that turns it into the work tree.

    ``notes`` holds one-line remarks for the user (a fallback base, a dropped credential, a
    patch part only some tools can apply); they are not errors. ``upstream_branch`` is, for
    git, the name of the upstream branch on its remote (``main`` for ``origin/main``): the
    branch the master can fetch, which may differ from the local ``branch``.

    A plain class, not a dataclass: this module is imported before every ``tryssh try``
    can start git (see prefetch), and dataclasses would bring ``inspect`` and ``ast`` in.
    """

    def __init__(
        self,
        *,
        vcs: str,
        baserev: str | None,
        patch: bytes,
        patch_level: int,
        branch: str | None,
        repository: str | None,
        topdir: str,
        notes: list[str] | None = None,
        upstream_branch: str | None = None,
        stats: PatchStats | None = None,
    ) -> None:
        self.vcs = vcs
        self.baserev = baserev
        self.patch = patch
        self.patch_level = patch_level
        self.branch = branch
        self.repository = repository
        self.topdir = topdir
        self.notes = notes if notes is not None else []
        self.upstream_branch = upstream_branch
        self._stats = stats  # counted while the patch was read, or None

    def __repr__(self) -> str:
        return (f"SourceChange(vcs={self.vcs!r}, baserev={self.baserev!r}, "
                f"patch=<{len(self.patch)} bytes>, branch={self.branch!r})")  # fmt: skip

    @property
    def stats(self) -> PatchStats:
        if self._stats is None:
            self._stats = patch_stats(self.patch)
        return self._stats


# --------------------------------------------------------------------------- running tools


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _run(
    argv: Sequence[str],
    cwd: str,
    *,
    ok: tuple[int, ...] = (0,),
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a VCS program; raise TrysshError unless its exit code is in ``ok``."""
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else tool_env(),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            check=False,
            # A big pipe: hg's or svn's diff writes on at its pace while this thread waits
            # for the GIL (tryssh try loads its modules meanwhile, see prefetch).
            pipesize=PIPE_SIZE,
        )
    except FileNotFoundError as err:
        if err.filename == cwd:
            raise TrysshError(f"no such directory: {cwd}", EX_NOINPUT) from None
        raise TrysshError(f"{argv[0]} is not installed (or not on PATH)", EX_UNAVAILABLE) from None
    except OSError as err:
        raise TrysshError(f"cannot run {argv[0]}: {err.strerror}", EX_UNAVAILABLE) from None
    _check_exit(argv, proc.returncode, ok, proc.stderr, proc.stdout)
    return proc


def _check_exit(
    argv: Sequence[str], code: int, ok: tuple[int, ...], stderr: bytes, stdout: bytes
) -> None:
    if code not in ok:
        detail = _first_line(stderr) or _first_line(stdout) or "no message"
        what = " ".join(a for a in argv[:2] if not a.startswith("-"))
        raise TrysshError(f"{what} failed (exit {code}): {detail}", EX_UNAVAILABLE)


def _text(data: bytes) -> str:
    """Decode a short piece of tool output (a name, a hash) for a str field."""
    return data.decode("utf-8", "replace").strip()


def redact_url(url: str) -> str:
    """Drop secrets from a repository URL before it leaves the machine.

    ``https://user:token@host/x`` becomes ``https://host/x`` (an http user name is often the
    token itself); other schemes keep the user name and lose the password. scp-like
    ``git@host:path`` and plain paths are returned unchanged.
    """
    try:
        import urllib.parse  # only for a repository URL: not on every try's path

        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if parts.scheme.lower() in ("http", "https"):
        netloc = hostport
    else:
        netloc = userinfo.split(":", 1)[0] + "@" + hostport
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _clean_repository(url: str | None, notes: list[str]) -> str | None:
    if not url:
        return None
    clean = redact_url(url)
    if clean != url:
        notes.append("removed credentials from the repository URL")
    return clean


# --------------------------------------------------------------------------- detection


def detect_vcs(start: str) -> tuple[str, str]:
    """Return ``(vcs, topdir)`` for the working copy that contains ``start``.

    The nearest directory (walking up) holding ``.git``, ``.hg`` or ``.svn`` decides which
    VCS owns ``start``, so a git checkout inside an svn working copy is seen as git; the tool
    itself then names the exact top directory.
    """
    start = os.path.abspath(start)
    if not os.path.isdir(start):
        raise UsageError(f"not a directory: {start}")
    d = start
    while True:
        found = [vcs for vcs, marker in MARKERS.items() if os.path.exists(os.path.join(d, marker))]
        if found:
            break
        parent = os.path.dirname(d)
        if parent == d:
            raise UsageError(f"not inside a git, hg or svn working copy: {start}")
        d = parent
    last_error: TrysshError | None = None
    for vcs in found:
        argv = _TOP_COMMANDS[vcs]
        if shutil.which(argv[0]) is None:
            last_error = TrysshError(
                f"{start} is in a {vcs} working copy ({d}) but {argv[0]} is not installed",
                EX_UNAVAILABLE,
            )
            continue
        env = tool_env(locale="C.UTF-8") if vcs == "svn" else tool_env()
        try:
            out = _run(argv, start, env=env).stdout
        except TrysshError as err:
            last_error = err  # e.g. git's "dubious ownership": worth showing as is
            continue
        top = os.fsdecode(out.rstrip(b"\r\n"))
        if top:
            return vcs, top
        last_error = TrysshError(f"{argv[0]} did not name the top of {d}", EX_UNAVAILABLE)
    assert last_error is not None  # found is never empty here
    raise last_error


# --------------------------------------------------------------------------- extraction


def extract(
    vcs: str,
    topdir: str,
    *,
    baserev: str | None = None,
    branch: str | None = None,
    include_untracked: bool = False,
    ahead: DiffAhead | None = None,
) -> SourceChange:
    """Extract the uncommitted change of the working copy at ``topdir``.

    ``baserev`` overrides the automatic base revision; ``branch`` overrides the branch name
    that is sent. The patch may be empty (nothing changed): the caller decides what to do.
    *ahead* is a git diff started early (see diffahead), used if it is the one needed.
    """
    if baserev is not None and not isinstance(baserev, str):
        raise TypeError("baserev must be a str")
    if baserev is not None and not baserev.strip():
        raise UsageError("--baserev is empty")
    topdir = os.path.abspath(topdir)
    if vcs == "git":
        change = _extract_git(topdir, baserev, include_untracked, branch, ahead)
    elif vcs in ("hg", "svn"):
        if include_untracked:
            add = "hg add" if vcs == "hg" else "svn add"
            raise UsageError(
                f"including untracked files works with git only; use '{add}' to include new files"
            )
        change = _extract_hg(topdir, baserev) if vcs == "hg" else _extract_svn(topdir, baserev)
    else:
        raise UsageError(f"unsupported version control system {vcs!r} (use git, hg or svn)")
    if branch is not None and vcs != "git":
        change.branch = branch
    return change


def untracked_files(topdir: str) -> bool:
    """Whether a git working copy has untracked (not ignored) files."""
    out = _git(topdir, "ls-files", "-z", "--others", "--exclude-standard", ok=(0, 1, 128))
    return out.returncode == 0 and bool(out.stdout)


def _git(
    topdir: str,
    *args: str,
    ok: tuple[int, ...] = (0,),
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return _run(["git", *args], topdir, ok=ok, env=env, stdin=stdin)


def _extract_git(
    topdir: str, baserev: str | None, include_untracked: bool, branch: str | None = None,
    ahead: DiffAhead | None = None,
) -> SourceChange:  # fmt: skip
    notes: list[str] = []
    # One rev-parse for three answers (each git start costs a few ms): the index's path,
    # HEAD's commit and HEAD's full ref name ("HEAD" itself when detached).
    info = _git(
        topdir, "rev-parse", "--git-path", "index", "HEAD^{commit}",
        "--symbolic-full-name", "HEAD", ok=(0, 128),
    )  # fmt: skip
    lines = info.stdout.split(b"\n")
    if info.returncode != 0 or len(lines) < 3:
        if b"unknown revision" in info.stderr or b"ambiguous argument" in info.stderr:
            raise UsageError(
                f"the git repository {topdir} has no commits yet: commit a base first, or "
                "use --diff"
            )
        detail = _first_line(info.stderr) or "no message"
        raise TrysshError(f"git rev-parse failed (exit {info.returncode}): {detail}",
                          EX_UNAVAILABLE)  # fmt: skip
    index_path = os.path.join(topdir, os.fsdecode(lines[0]))
    head_id = _text(lines[1])
    ref = os.fsdecode(lines[2].strip())
    current = ref[len("refs/heads/") :] if ref.startswith("refs/heads/") else None

    # Upstream of the current branch: full ref, remote name and the branch's name there.
    upstream = remote = remote_ref = ""
    if current is not None:
        out = _git(
            topdir,
            "for-each-ref",
            "--format=%(upstream)%00%(upstream:remotename)%00%(upstream:remoteref)",
            ref,
        ).stdout
        fields = out.rstrip(b"\n").split(b"\0")
        if len(fields) == 3:
            upstream, remote, remote_ref = (os.fsdecode(f) for f in fields)

    repository: str | None = None
    if remote and remote != ".":
        url = _git(topdir, "config", "--get", f"remote.{remote}.url", ok=(0, 1))
        if url.returncode == 0:
            repository = _clean_repository(os.fsdecode(url.stdout.strip()), notes)
    upstream_branch = (
        remote_ref[len("refs/heads/") :] if remote_ref.startswith("refs/heads/") else None
    )

    sent_branch = current
    if branch is not None:
        # Buildbot's way: the base comes from the named branch, and a "<remote>/" prefix
        # is dropped from the name the master sees.
        ref, sent_branch = _git_branch_ref(topdir, branch, remote)
        upstream_branch = None
        if baserev is None:
            base = _git_merge_base_with(topdir, ref, branch, head_id, notes)
            _warn_if_unpublished(topdir, base, notes)
    if baserev is not None:
        base = _git_resolve(topdir, baserev)
    elif branch is None:
        base = _git_merge_base(topdir, head_id, current, upstream, notes)

    patch, stats = _git_diff(topdir, base, include_untracked, index_path, ahead)
    return SourceChange(
        vcs="git",
        baserev=base,
        patch=patch,
        patch_level=1,
        branch=sent_branch,
        repository=repository,
        topdir=topdir,
        notes=notes,
        upstream_branch=upstream_branch,
        stats=stats,
    )


def _git_branch_ref(topdir: str, branch: str, remote: str) -> tuple[str, str]:
    """(the ref to take the base from, the branch name to send) for ``--branch``."""
    if branch.startswith("-") or not branch.strip():
        raise UsageError(f"--branch {branch!r} is not a branch name")
    remotes = os.fsdecode(_git(topdir, "remote").stdout).split()
    sent = branch
    for name in remotes:
        if branch.startswith(name + "/"):
            sent = branch[len(name) + 1 :]
            break
    candidates = [branch] + [f"{r}/{branch}" for r in ([remote] if remote else []) + remotes]
    for ref in candidates:
        res = _git(topdir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", ok=(0, 1))
        if res.returncode == 0:
            return ref, sent
    raise UsageError(
        f"--branch {branch!r} is not a branch of {topdir} (nor of its remotes: fetch it?)"
    )


def _git_merge_base_with(
    topdir: str, ref: str, branch: str, head_id: str, notes: list[str]
) -> str:
    mb = _git(topdir, "merge-base", "HEAD", ref, ok=(0, 1))
    if mb.returncode != 0:
        notes.append(f"HEAD and --branch {branch} have no common ancestor: the base is HEAD")
        return head_id
    return _text(mb.stdout)


def _warn_if_unpublished(topdir: str, base: str, notes: list[str]) -> None:
    """The master fetches from a remote: a base no remote-tracking branch holds is suspect."""
    remotes = _git(
        topdir, "for-each-ref", "--count=1", "--contains", base, "refs/remotes/", ok=(0, 1, 129)
    )
    if remotes.returncode == 0 and not remotes.stdout.strip():
        notes.append(
            f"WARNING: the base {base[:12]} is not on any remote-tracking branch: the master "
            "likely does not have it (push it, or pass --baserev)"
        )


def _git_resolve(topdir: str, rev: str) -> str:
    if rev.startswith("-"):
        raise UsageError(f"--baserev {rev!r} is not a revision")
    res = _git(topdir, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", ok=(0, 1))
    if res.returncode != 0:
        raise UsageError(f"--baserev {rev!r} is not a commit in {topdir}")
    return _text(res.stdout)


def _git_merge_base(
    topdir: str, head_id: str, current: str | None, upstream: str, notes: list[str]
) -> str:
    if current is None:
        notes.append("HEAD is detached: the base is HEAD, so local commits are not in the patch")
        return head_id
    if not upstream:
        notes.append(
            f"branch {current!r} has no upstream: the base is HEAD, so local commits are not "
            "in the patch (set one with 'git branch --set-upstream-to', or use --baserev)"
        )
        return head_id
    # One merge-base: exit 128 when the upstream ref is missing, 1 when no common ancestor.
    mb = _git(topdir, "merge-base", "HEAD", upstream, ok=(0, 1, 128))
    if mb.returncode == 128:
        notes.append(f"upstream {upstream} does not exist locally (fetch it?): the base is HEAD")
        return head_id
    if mb.returncode != 0:
        notes.append(f"HEAD and {upstream} have no common ancestor: the base is HEAD")
        return head_id
    return _text(mb.stdout)


def _git_diff(
    topdir: str, base: str, include_untracked: bool, index_path: str,
    ahead: DiffAhead | None = None,
) -> tuple[bytes, PatchStats | None]:  # fmt: skip
    """Diff ``base`` against the work tree, without ever writing the user's index (at
    *index_path*); the diff *ahead* (see diffahead) if it is that one.

    git may refresh an index's stat data while diffing, and untracked files must be
    marked intent-to-add to show up; both happen on a private copy of the index, and the
    copy git refreshed is kept for the next try (see gitindex).
    """
    if ahead is not None and not include_untracked:
        taken = ahead.take(topdir, base, index_path)
        if taken is not None:
            return taken
    cache = None if include_untracked else IndexCache(index_path)
    with tempfile.TemporaryDirectory(prefix="tryssh-git-") as tmp:
        tmp_index = os.path.join(tmp, "index")
        if cache is not None:
            cache.fill(tmp_index)
        elif os.path.exists(index_path):
            copy_index(index_path, tmp_index)
        env = tool_env({"GIT_INDEX_FILE": tmp_index})
        if include_untracked:
            cfg = DIFF_OPTIONS[:2]  # -c core.splitIndex=false, as the diff
            listing = _git(
                topdir, *cfg, "ls-files", "-z", "--others", "--exclude-standard", env=env
            ).stdout
            if listing:
                # Literal pathspecs: a file named '*.c' must not match others.
                add_env = dict(env, GIT_LITERAL_PATHSPECS="1")
                _git(
                    topdir,
                    *cfg,
                    "add",
                    "--intent-to-add",
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                    env=add_env,
                    stdin=listing,
                )
        patch, stats = _read_counting(["git", *DIFF_OPTIONS, base, "--"], topdir, env)
        if cache is not None:
            cache.keep(tmp_index)
        return patch, stats


def _read_counting(
    argv: list[str], cwd: str, env: Mapping[str, str]
) -> tuple[bytes, PatchStats | None]:
    """Run git diff and read its patch as git writes it, counting it meanwhile (see
    read_counting)."""
    with tempfile.TemporaryFile() as err:  # not a pipe: git's warnings never block it
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err,
                                    pipesize=PIPE_SIZE)  # fmt: skip
        except OSError:
            return _run(argv, cwd, env=env).stdout, None  # the same call, for its error
        with proc:
            assert proc.stdout is not None
            read = read_counting(proc.stdout.fileno())
        err.seek(0)
        _check_exit(argv, proc.returncode, (0,), err.read(), b"")
    return read


def _hg(topdir: str, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
    return _run(["hg", "--noninteractive", *args], topdir, ok=ok)


def _extract_hg(topdir: str, baserev: str | None) -> SourceChange:
    notes: list[str] = []
    if baserev is not None:
        out = _hg(topdir, "log", "-r", baserev, "--template", "{node}\n", ok=(0, 255)).stdout
        nodes = out.split()
        if len(nodes) != 1:
            raise UsageError(f"--baserev {baserev!r} is not exactly one revision in {topdir}")
        base = _text(nodes[0])
    else:
        out = _hg(
            topdir, "log", "-r", "max(ancestors(.) and public())", "--template", "{node}"
        ).stdout.strip()
        if not out:
            out = _hg(topdir, "log", "-r", ".", "--template", "{node}").stdout.strip()
            if out.strip(b"0"):
                notes.append(
                    "no public ancestor (nothing pushed yet?): the base is the working "
                    "directory's parent, which the master may not have"
                )
            else:
                notes.append("the repository has no commits: the base is the null revision")
        if not _HEX_NODE.match(out):
            raise TrysshError(f"hg log printed an unexpected revision: {_first_line(out)}")
        base = _text(out)
    patch = _hg(
        topdir,
        "--config",
        "diff.noprefix=false",
        "--config",
        "diff.nobinary=false",
        "diff",
        "--git",
        "-r",
        base,
    ).stdout
    branch = _text(_hg(topdir, "branch").stdout) or None
    paths = _hg(topdir, "paths", "default", ok=(0, 1))
    repository = None
    if paths.returncode == 0:
        repository = _clean_repository(os.fsdecode(paths.stdout.strip()), notes)
    return SourceChange(
        vcs="hg",
        baserev=base,
        patch=patch,
        patch_level=1,
        branch=branch,
        repository=repository,
        topdir=topdir,
        notes=notes,
    )


def _svn(topdir: str, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
    # svn converts paths to the locale's encoding: C would turn 'ü' into an error.
    return _run(["svn", *args], topdir, ok=ok, env=tool_env(locale="C.UTF-8"))


def _extract_svn(topdir: str, baserev: str | None) -> SourceChange:
    notes: list[str] = []
    rev_args: list[str] = []
    if baserev is not None:
        rev = baserev[1:] if baserev[:1] == "r" else baserev
        if not rev.isdigit():
            raise UsageError(f"--baserev {baserev!r} is not an svn revision number")
        base = str(int(rev))
        # Against a repository revision rather than the pristine BASE: svn may need the server.
        rev_args = ["-r", base]
    else:
        version = _run(["svnversion", "-n", "."], topdir, env=tool_env(locale="C.UTF-8")).stdout
        m = _SVNVERSION.match(_text(version))
        if m is None:
            raise TrysshError(f"svnversion: {_text(version) or 'no output'} ({topdir})")
        low, high, flags = m.group(1), m.group(2), m.group(3)
        base = str(int(high or low))  # str, never bytes: Buildbot's '-rb'123'' bug
        if high is not None:
            notes.append(
                f"the working copy mixes revisions {low}:{high}; the base is r{base} "
                "(run 'svn update' for an exact base)"
            )
        if "S" in flags:
            notes.append("parts of the working copy are switched to another URL")

    common = ["diff", "--non-interactive", "--internal-diff", *rev_args]
    plain = _svn(topdir, *common, "--patch-compatible").stdout
    patch = plain
    binaries = _svn_binary_paths(plain)
    if binaries:
        gitdiff = _svn(
            topdir,
            *common,
            "--git",
            "--show-copies-as-adds",
            "--ignore-properties",
            "--",
            *(os.fsdecode(p) for p in binaries),
        ).stdout
        patch = _svn_splice(plain, gitdiff)
        notes.append(
            # A warning (shown even with --quiet): a Buildbot SVN step fails on this patch.
            f"WARNING: {len(binaries)} binary file(s) are in git binary form: 'svn patch' "
            "applies them, GNU patch (Buildbot's SVN step) cannot"
        )
    url = _svn(topdir, "info", "--non-interactive", "--show-item", "url", ".").stdout
    repository = _clean_repository(_text(url), notes)
    return SourceChange(
        vcs="svn",
        baserev=base,
        patch=patch,
        patch_level=0,
        branch=None,
        repository=repository,
        topdir=topdir,
        notes=notes,
    )


def _svn_sections(diff: bytes) -> list[tuple[bytes | None, bytes]]:
    """Split svn diff output into (path, section) at each ``Index:`` line."""
    sections: list[tuple[bytes | None, bytes]] = []
    starts = [m.start() for m in re.finditer(rb"(?m)^Index: ", diff)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    for n, s in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(diff)
        chunk = diff[s:end]
        path = None
        if chunk.startswith(b"Index: "):
            path = chunk[len(b"Index: ") :].split(b"\n", 1)[0].rstrip(b"\r")
        sections.append((path, chunk))
    return sections


def _svn_binary_paths(plain: bytes) -> list[bytes]:
    return [
        path
        for path, chunk in _svn_sections(plain)
        if path is not None and _SVN_BINARY_MARKER in chunk
    ]


def _svn_splice(plain: bytes, gitdiff: bytes) -> bytes:
    """Replace the plain diff's 'Cannot display' sections with their git binary sections."""
    git_by_path = {path: chunk for path, chunk in _svn_sections(gitdiff) if path is not None}
    out = []
    for path, chunk in _svn_sections(plain):
        if path is not None and _SVN_BINARY_MARKER in chunk and path in git_by_path:
            chunk = git_by_path[path]
        out.append(chunk)
    return b"".join(out)


# --------------------------------------------------------------------------- --diff


def from_diff(
    path: str,
    *,
    baserev: str | None,
    patch_level: int = 0,
    stdin: BinaryIO | None = None,
    branch: str | None = None,
    repository: str | None = None,
) -> SourceChange:
    """Take a ready-made patch from a file, or from standard input when ``path`` is ``-``."""
    if baserev is not None and not isinstance(baserev, str):
        raise TypeError("baserev must be a str")
    if isinstance(patch_level, bool) or not isinstance(patch_level, int) or patch_level < 0:
        raise UsageError(f"patch level must be a whole number >= 0, not {patch_level!r}")
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        try:
            data = stream.read(MAX_DIFF + 1)
        except OSError as err:
            raise TrysshError(
                f"cannot read the diff from stdin: {err.strerror}", EX_IOERR
            ) from None
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_DIFF + 1)
        except OSError as err:
            code = (
                EX_NOINPUT if err.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR) else EX_IOERR
            )
            raise TrysshError(f"cannot read diff {path}: {err.strerror}", code) from None
    if len(data) > MAX_DIFF:
        raise TrysshError(
            f"the diff is larger than {MAX_DIFF // (1024 * 1024)} MiB, the job size limit",
            EX_DATAERR,
        )
    if not isinstance(data, bytes):
        raise TypeError("the diff stream must be binary")
    return SourceChange(
        vcs="none",
        baserev=baserev,
        patch=data,
        patch_level=patch_level,
        branch=branch,
        repository=repository,
        topdir=os.getcwd(),
    )
