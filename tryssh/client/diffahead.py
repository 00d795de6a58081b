"""Start git's diff for a plain ``tryssh try`` before anything else is loaded.

In a big working copy the diff is most of a ``tryssh try``, and it depends on little: the
top directory, the base commit and the index. They can be read from the repository's
files in well under a millisecond (``.git``, ``HEAD``, the ref it names, the branch's
upstream in ``config`` and that ref, ``index``): the base is HEAD (detached, or a branch
without an upstream or whose upstream's tip is HEAD), or else the merge-base of HEAD and
the upstream's tip, which ``git merge-base`` finds first. So git's diff starts as soon as
Python has, on the other core, while tryssh loads its modules and asks git the same
questions properly (see :mod:`tryssh.client.prefetch`). Where the files say more than
this plain reading understands (an include in the config, an upstream not fetched, refs
in another format) nothing starts early.

The diff read ahead is used only if git's own answers agree with what was read from the
files, and the user's index is unchanged (:meth:`DiffAhead.take`); otherwise it is stopped
and the change is read as usual. So a wrong guess (``GIT_DIR`` set, a commit or a fetch
meanwhile, refs in a format not read here) costs some time on the other core, never a
wrong patch. It runs the very command the usual way runs, with a private copy of the
index (:mod:`tryssh.client.gitindex`).

Stdlib only, and imported before click: this module is what makes the diff start early.
"""

from __future__ import annotations

import os

from tryssh.client.gitindex import IndexCache
from tryssh.client.toolenv import tool_env

try:  # signal would load enum first (3 ms): git is started before that
    from _signal import SIGPIPE, SIGTERM
except ImportError:
    from signal import SIGPIPE, SIGTERM

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.patchstats import PatchStats

# The options of tryssh's git diff, wherever it is run (the base and "--" follow).
# core.splitIndex=false: writing a split index would add a shared-index file to the
# user's .git.
DIFF_OPTIONS = ("-c", "core.splitIndex=false", "diff", "--binary", "--full-index", "--no-color",
                "--no-ext-diff", "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/")  # fmt: skip
PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size for unprivileged users

# Set in the environment, these make git read another repository or index than the files
# found here: reading ahead would only be thrown away.
_REDIRECTS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")
_MARKERS = (".git", ".hg", ".svn")  # as tryssh.client.vcs.MARKERS: the nearest one decides
_HEX = frozenset(b"0123456789abcdef")


def find_git_top(cwd: str) -> str | None:
    """The top of the working copy around *cwd* if it is git's with a ``.git`` directory
    (not a linked worktree's or a submodule's ``.git`` file); None otherwise."""
    d = cwd
    while True:
        found = [m for m in _MARKERS if os.path.exists(os.path.join(d, m))]
        if found:
            return d if found[0] == ".git" and os.path.isdir(os.path.join(d, ".git")) else None
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def head_commit(gitdir: str) -> str | None:
    """The commit HEAD names, read from git's files (see read_head)."""
    return read_head(gitdir)[1]


def read_head(gitdir: str) -> tuple[str | None, str | None]:
    """HEAD's branch ref (None when detached) and the commit it names, read from git's
    files: ``HEAD`` and the loose or packed ref it points to. The commit is None for
    anything else (a ref pointing to a ref, reftable, damage)."""
    head = _read(os.path.join(gitdir, "HEAD"))
    if head is None:
        return None, None
    if not head.startswith(b"ref: "):
        return None, _commit(head)
    ref = head[5:].strip()
    if not ref.startswith(b"refs/") or b".." in ref or b"\0" in ref:
        return None, None
    return os.fsdecode(ref), ref_commit(gitdir, ref)


def ref_commit(gitdir: str, ref: bytes) -> str | None:
    """The commit the loose or packed *ref* names, or None."""
    value = _read(os.path.join(gitdir, os.fsdecode(ref)))
    return _commit(value if value is not None else _packed_ref(gitdir, ref))


def _commit(value: bytes | None) -> str | None:
    value = (value or b"").strip()
    return value.decode("ascii") if len(value) in (40, 64) and _HEX.issuperset(value) else None


def tracking_ref(gitdir: str, branch: str) -> str | None:
    """The remote-tracking ref of *branch*'s upstream as ``.git/config`` sets it up the
    usual way (``refs/remotes/REMOTE/NAME``), ``""`` when it sets none; None when the
    config is beyond this plain reading (an include, quotes, a local upstream, ...).

    The usual read asks git itself; this only decides whether starting early is worth it.
    """
    try:
        with open(os.path.join(gitdir, "config"), "rb") as f:
            text = f.read(1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    wanted = f'branch "{branch}"'
    section = ""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            head, close, rest = line[1:].partition("]")
            if not close or rest.strip() or head.lower().startswith("include"):
                return None
            name, _, sub = head.partition(" ")
            section = f"{name.lower()} {sub.strip()}"
            continue
        if section == wanted:
            key, _, value = line.partition("=")
            value = value.strip()
            if any(c in value for c in '"#;\\'):
                return None
            found[key.strip().lower()] = value
    merge, remote = found.get("merge"), found.get("remote")
    if merge is None:
        return ""
    if not remote or remote == "." or "/" in remote or not merge.startswith("refs/heads/"):
        return None
    return f"refs/remotes/{remote}/{merge[len('refs/heads/'):]}"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(256)  # a ref is one line
    except OSError:
        return None


def _packed_ref(gitdir: str, ref: bytes) -> bytes | None:
    try:
        with open(os.path.join(gitdir, "packed-refs"), "rb") as f:
            packed = f.read()
    except OSError:
        return None
    end = packed.find(b" " + ref + b"\n")
    if end < 0:
        return None
    return packed[packed.rfind(b"\n", 0, end) + 1 : end]


def read_counting(fd: int) -> tuple[bytes, PatchStats | None]:
    """Read a git diff from the pipe *fd* to its end, counting its lines as git writes it
    (see StreamCounter): the counting is done, but for the end, when git is. The counts
    are None when they must be taken from the whole patch."""
    from tryssh.client.patchstats import StreamCounter

    counter = StreamCounter()
    parts = []
    # One buffer for every read: git writes a few KiB at a time, and a new 1 MiB buffer
    # per read would be an mmap, an mremap and a munmap each time.
    buffer = bytearray(PIPE_SIZE)
    view = memoryview(buffer)
    while size := os.readv(fd, [buffer]):
        chunk = view[:size].tobytes()
        parts.append(chunk)
        counter.feed(chunk)
    patch = b"".join(parts)
    return patch, counter.result(patch)


def start(cwd: str) -> DiffAhead | None:
    """Start the diff of the working copy around *cwd* against its base (HEAD, or the
    merge-base with the upstream), if git's files say enough; None if they do not (the
    change is then read the usual way only)."""
    if any(os.environ.get(name) for name in _REDIRECTS):
        return None
    top = find_git_top(cwd)
    if top is None:
        return None
    gitdir = os.path.join(top, ".git")
    ref, commit = read_head(gitdir)
    if commit is None:
        return None
    upstream = None
    if ref is not None and ref.startswith("refs/heads/"):
        # A branch's base is its merge-base with its upstream (HEAD itself while the
        # upstream's tip is HEAD): git merge-base runs first. A config beyond a plain
        # reading, or an upstream not fetched: nothing starts (a wrong diff would only take
        # a core from the right one).
        tracking = tracking_ref(gitdir, ref[len("refs/heads/"):])
        if tracking is None:
            return None
        if tracking:
            upstream = ref_commit(gitdir, tracking.encode())
            if upstream is None:
                return None
            if upstream == commit:
                upstream = None
    try:
        return DiffAhead(top, commit, upstream)
    except Exception:  # no private directory, no git, no thread: the usual way reports it
        return None


class DiffAhead:
    """git's diff of the work tree at *topdir* against *head*, or against the merge-base of
    *head* and *upstream* (git merge-base runs first, in the thread), read by a thread."""

    def __init__(self, topdir: str, head: str, upstream: str | None = None) -> None:
        self.topdir = topdir
        self.index_path = os.path.join(topdir, ".git", "index")
        self.base: str | None = head if upstream is None else None  # final once _known
        tmp_base = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 - a private 0700 directory
        self._tmpdir = os.path.join(tmp_base, f"tryssh-git-{os.getpid()}-{os.urandom(6).hex()}")
        os.mkdir(self._tmpdir, 0o700)
        self._read: tuple[bytes, PatchStats | None] | None = None  # the patch and its counts
        self._returncode: int | None = None
        self._reaped = False  # the git of _pid has been waited for (its pid may be reused)
        self._stopped = False
        try:
            self.cache = IndexCache(self.index_path)
            self.tmp_index = os.path.join(self._tmpdir, "index")
            self.cache.fill(self.tmp_index)
            if upstream is None:
                self._pid, self._fd = self._spawn(self._diff_argv(head))
            else:
                self._pid, self._fd = self._spawn(["git", "-C", topdir, "merge-base", head,
                                                   upstream])  # fmt: skip
        except BaseException:
            self._remove_tmpdir()
            raise
        try:
            # Only now (5 ms): git does not write before it has looked at every file, and
            # its pipe holds 1 MiB.
            import threading

            self._lock = threading.Lock()  # between the reaping of a git and a kill
            self._known = threading.Event()  # self.base is final
            if upstream is None:
                self._known.set()
            self._thread = threading.Thread(target=self._run, name="tryssh-diff-ahead",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        except BaseException:
            os.kill(self._pid, SIGTERM)
            os.close(self._fd)
            os.waitpid(self._pid, 0)
            self._remove_tmpdir()
            raise

    def _diff_argv(self, base: str) -> list[str]:
        # As the usual way runs it (tryssh.client.vcs._git_diff), in topdir: -C does what
        # a cwd does, which posix_spawn cannot set.
        return ["git", "-C", self.topdir, *DIFF_OPTIONS, base, "--"]

    def _spawn(self, argv: list[str]) -> tuple[int, int]:
        env = tool_env({"GIT_INDEX_FILE": self.tmp_index})
        read_end, write_end = os.pipe()  # both close on exec
        try:
            try:
                import fcntl

                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # a smaller pipe only means more switches
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_DUP2, write_end, 1),
                       # Its errors are the usual way's to report, if it comes to that.
                       (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]  # fmt: skip
            # Python ignores SIGPIPE, and an ignored signal stays ignored across exec.
            pid = os.posix_spawnp("git", argv, env, file_actions=actions,
                                  setsigdef=(SIGPIPE,))  # fmt: skip
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        return pid, read_end

    def _run(self) -> None:
        """Find the merge-base if asked, then read the patch as git writes it, counting it
        meanwhile; each git is reaped when its output ends."""
        try:
            if not self._known.is_set():
                answer = b""
                while chunk := os.read(self._fd, 4096):
                    answer += chunk
                status = self._reap()
                with self._lock:
                    if self._stopped or status != 0:
                        return
                    self.base = _commit(answer)
                    if self.base is None:
                        return
                    self._pid, self._fd = self._spawn(self._diff_argv(self.base))
                    self._reaped = False
                self._known.set()
            try:
                self._read = read_counting(self._fd)
            finally:
                status = self._reap()
            self._returncode = os.waitstatus_to_exitcode(status)
        except Exception:  # noqa: S110 - an unread patch is never used (returncode stays None)
            pass
        finally:
            self._known.set()
            if not self._reaped:
                self._reap()

    def _reap(self) -> int:
        """Close the current git's pipe and wait for it (its output has ended, or it was
        stopped); its wait status."""
        os.close(self._fd)
        with self._lock:
            _, status = os.waitpid(self._pid, 0)
            self._reaped = True
        return status

    def take(
        self, topdir: str, base: str, index_path: str
    ) -> tuple[bytes, PatchStats | None] | None:
        """The patch and its counts if this diff is the one asked for, the diff of *topdir*
        against *base* with the index at *index_path*, and git ended well; None otherwise
        (stopped, and to be read the usual way)."""
        if (topdir, index_path) != (self.topdir, self.index_path):
            self.discard()
            return None
        self._known.wait()
        if base != self.base:
            self.discard()
            return None
        self._thread.join()
        # The index may have changed (git add) while git read the copy.
        taken, self._read = self._read, None
        if self._returncode != 0 or taken is None or not self.cache.unchanged():
            self.discard()
            return None
        self.cache.keep(self.tmp_index)
        self._remove_tmpdir()
        return taken

    def discard(self) -> None:
        """Stop git if it still runs, and remove the private index. Safe to call twice."""
        with self._lock:
            self._stopped = True
            if not self._reaped:  # not waited for yet: the pid is still that git's
                os.kill(self._pid, SIGTERM)
        self._thread.join()
        self._read = None
        self._remove_tmpdir()

    def _remove_tmpdir(self) -> None:
        import shutil

        shutil.rmtree(self._tmpdir, ignore_errors=True)
