"""The jobdir: a maildir (``tmp/``, ``new/``, ``cur/``) that holds try jobs.

Delivery follows the maildir rules, plus the directory fsync they leave out: create
``tmp/NAME`` with O_EXCL, write, fsync, link it to ``new/NAME`` (which never replaces an
existing job), unlink the tmp name and fsync ``new/``. A job in ``new/`` is therefore
always complete, and a job acknowledged to the client survives a crash.

Consumers claim a job by renaming it from ``new/`` to ``cur/``; the loser of a race gets
:class:`AlreadyTaken`.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from collections.abc import Callable

from tryssh.errors import (
    BadJob,
    CannotCreate,
    PermissionDenied,
    TrysshError,
    describe_oserror,
    exit_code_for_oserror,
)

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

SUBDIRS = ("tmp", "new", "cur")
JOB_MODE = 0o640  # group-readable: the master often runs as another user of the group
TMP_MAX_AGE = 36 * 3600  # the maildir spec's limit for stale tmp/ files
_counter = itertools.count(1)


class AlreadyTaken(TrysshError):
    """Another consumer claimed the job first."""


class NotAJobFile(BadJob):
    """A name in the jobdir that is not a regular file (FIFO, directory, symlink, ...)."""


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def open_job(path: str) -> int:
    """A read-only fd of the job file at *path*, which must be a regular file.

    Anything else raises :class:`NotAJobFile` saying what it is, without blocking (a FIFO
    opened plainly waits for a writer for ever) and without following a symlink.
    FileNotFoundError and other OSErrors (EACCES) pass through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NotAJobFile("a symbolic link, not a job file") from None
        if err.errno == errno.ENXIO:
            raise NotAJobFile("a socket, not a job file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotAJobFile(f"{_KINDS.get(stat.S_IFMT(mode), 'a special file')}, not a job file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _escaped_hostname() -> str:
    # The maildir spec escapes '/' and ':' so that the name stays one path component.
    host = os.uname().nodename or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072")


def unique_name() -> str:
    """A job name no other delivery on any host can produce: time, pid, counter, randomness."""
    now = time.time_ns()
    seconds, micros = divmod(now // 1000, 1_000_000)
    rand = os.urandom(4).hex()
    return f"{seconds}.M{micros:06d}P{os.getpid()}Q{next(_counter)}R{rand}.{_escaped_hostname()}"


def is_job_name(name: str) -> bool:
    """Whether *name* may be a job in a jobdir: one path component, not hidden."""
    return (
        bool(name)
        and not name.startswith(".")
        and "/" not in name
        and "\0" not in name
        and len(name) <= 255
    )


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Jobdir:
    """A maildir of try jobs at *path*."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.tmp = os.path.join(self.path, "tmp")
        self.new = os.path.join(self.path, "new")
        self.cur = os.path.join(self.path, "cur")
        # Jobs a cancel took back from new/ before anyone claimed them (the drop-in set-up,
        # where Buildbot reads new/): a directory no Buildbot master and no consumer reads.
        self.withdrawn = os.path.join(self.path, "withdrawn")

    def __repr__(self) -> str:
        return f"Jobdir({self.path!r})"

    def tmp_path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def new_path(self, name: str) -> str:
        return os.path.join(self.new, name)

    def cur_path(self, name: str) -> str:
        return os.path.join(self.cur, name)

    def withdrawn_path(self, name: str) -> str:
        return os.path.join(self.withdrawn, name)

    def withdraw(self, name: str) -> bool:
        """Take job *name* back from ``new/`` into ``withdrawn/`` (a rename, so a reader
        that already opened it reads on, and exactly one of us and a claimer wins); False
        when someone claimed it first. Never deletes a file."""
        if not is_job_name(name):
            raise TrysshError(f"not a job name: {name!r}")
        try:
            try:
                os.mkdir(self.withdrawn, 0o2770)
            except FileExistsError:
                pass
            os.rename(self.new_path(name), self.withdrawn_path(name))
        except FileNotFoundError:
            return False
        except OSError as err:  # the jobdir is not writable here: the job stays in new/
            raise TrysshError(f"cannot take job {name} back from new/: "
                              f"{describe_oserror(err, 'rename')}",
                              exit_code_for_oserror(err)) from None  # fmt: skip
        fsync_dir(self.new)
        fsync_dir(self.withdrawn)
        return True

    def claimed(self) -> list[str]:
        """Names of the jobs in ``cur/`` (claimed by a consumer, finished or not)."""
        try:
            return [n for n in os.listdir(self.cur) if is_job_name(n)]
        except FileNotFoundError:
            return []

    def create(self, mode: int = 0o2770) -> Jobdir:
        """Make the directories if missing (the sysadmin script sets groups and modes)."""
        try:
            for sub in SUBDIRS:
                os.makedirs(os.path.join(self.path, sub), mode=mode, exist_ok=True)
        except OSError as err:
            raise CannotCreate(
                f"cannot create jobdir {self.path}: {describe_oserror(err, 'mkdir')}"
            ) from None
        return self

    def check(self) -> None:
        """Raise CannotCreate unless tmp/, new/ and cur/ exist; PermissionDenied (naming
        the path) when this account may not look at them."""
        for sub in SUBDIRS:
            path = os.path.join(self.path, sub)
            try:
                is_dir = stat.S_ISDIR(os.stat(path).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                is_dir = False
            except PermissionError as err:
                # Not "missing": the account is not in the jobdir's group, or a mode is wrong.
                raise PermissionDenied(
                    f"jobdir {self.path}: permission denied: {describe_oserror(err, 'stat')} "
                    "(is this account in the jobdir's group? tryssh jobdir-setup --check)"
                ) from None
            except OSError as err:
                raise CannotCreate(f"jobdir {self.path}: {describe_oserror(err, 'stat')}") from None
            if not is_dir:
                raise CannotCreate(
                    f"jobdir {self.path} is not set up: {sub}/ is missing "
                    "(run tryssh jobdir-setup)"
                )

    def deliver(self, write: Callable[[int], T]) -> tuple[str, T]:
        """Deliver one job: *write* gets the open fd of the tmp file and writes the job.

        Returns the job's name and what *write* returned. On any failure, including an
        exception from *write*, the tmp file is removed and nothing appears in ``new/``.
        """
        self.check()
        name = unique_name()
        tmp_path = self.tmp_path(name)
        # Read-write: a writer may fix the head of what it wrote (tryserver's v5/v6 splice).
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp_path, flags, JOB_MODE)
        except OSError as err:
            raise TrysshError(
                f"cannot create {tmp_path}: {err.strerror}", exit_code_for_oserror(err)
            ) from None
        try:
            try:
                os.fchmod(fd, JOB_MODE)  # the umask must not take the group's read bit
                result = write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(tmp_path, self.new_path(name))
        except BaseException as err:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
            if isinstance(err, OSError):
                # write and fsync name no file: the tmp/ file; link and rename name both.
                what = describe_oserror(err, "write", tmp_path) if err.filename is None else (
                    describe_oserror(err, "link")
                )
                raise TrysshError(
                    f"cannot deliver job: {what}",
                    exit_code_for_oserror(err),
                ) from None
            raise
        return name, result

    def deliver_bytes(self, data: bytes) -> str:
        """Deliver a job held in memory; returns its name."""
        name, _ = self.deliver(lambda fd: write_all(fd, data))
        return name

    def _publish(self, tmp_path: str, new_path: str) -> None:
        try:
            os.link(tmp_path, new_path)  # unlike rename, link never replaces a job
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            # File systems without hard links: the name is unique, so rename is safe.
            os.rename(tmp_path, new_path)
        else:
            os.unlink(tmp_path)
        fsync_dir(self.new)

    def pending(self) -> list[str]:
        """Names of the jobs in ``new/``, oldest first (names start with the time)."""
        try:
            names = [n for n in os.listdir(self.new) if is_job_name(n)]
        except FileNotFoundError:
            return []
        return sorted(names, key=_age_key)

    def claim(self, name: str) -> str:
        """Move job *name* from ``new/`` to ``cur/``; return its new path."""
        if not is_job_name(name):
            raise TrysshError(f"not a job name: {name!r}")
        target = self.cur_path(name)
        try:
            os.rename(self.new_path(name), target)
        except FileNotFoundError:
            raise AlreadyTaken(f"job {name} is already taken") from None
        return target

    def stale_tmp(self, max_age: float = TMP_MAX_AGE, now: float | None = None) -> list[str]:
        """Names of ``tmp/`` files older than *max_age* seconds (by mtime: atime lies on
        noatime)."""
        now = time.time() if now is None else now
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            try:
                if (
                    entry.is_file(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > max_age
                ):
                    names.append(entry.name)
            except FileNotFoundError:
                continue
        return names

    def clean_tmp(self, max_age: float = TMP_MAX_AGE, now: float | None = None) -> list[str]:
        """Remove the :meth:`stale_tmp` files; return their names."""
        removed = []
        for name in self.stale_tmp(max_age, now):
            try:
                os.unlink(self.tmp_path(name))
            except FileNotFoundError:
                continue
            removed.append(name)
        return removed


def job_time(name: str) -> tuple[int, int]:
    """The delivery time a job's name starts with, as (seconds, microseconds); (0, 0) when
    it has none. tryssh names: ``<sec>.M<usec>P...``; Buildbot's: ``<float time>-<md5>``."""
    head = name.split("-", 1)[0]
    sec, _, rest = head.partition(".")
    micros = rest[1:7] if rest.startswith("M") else rest[:6].ljust(6, "0")
    try:
        return int(sec), int(micros) if micros.isdigit() else 0
    except ValueError:
        return 0, 0


def _age_key(name: str) -> tuple[tuple[int, int], str]:
    return job_time(name), name
