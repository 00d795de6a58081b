"""Durable per-job state: one JSON record per job, written atomically.

A record lives in ``STATE_DIR/active/NAME.json`` while the job is queued or running and in
``STATE_DIR/NAME.json`` once it is finished (success, failure, error, rejected,
interrupted). The split keeps the consumer's two frequent questions cheap whatever the
history holds: "which jobs did a dead consumer leave behind?" and "how many jobs does
this user have pending?" are both a listing of the small ``active/`` directory.

A finished job's name is also appended to its user's index, ``STATE_DIR/by-user/USER.log``
(one name a line), so that "the recent jobs of this user" costs in proportion to that
user's jobs, not to the whole history. The index is derived data: it is built from the
records once, when a state directory without one is first used (:meth:`RecordStore.create`),
and a name whose record is gone (gc) is skipped when read. A final record's mtime is its
``finished`` time, so that gc can pass over recent records without reading them.

Every write is tmp file + fsync + rename + fsync of the directory, so a reader sees either
the old record or the new one, and a record the consumer acted on survives a crash.
Records are group-readable (0640): tryserver runs as another user of the group and reads
them to answer ``status`` and ``jobs``.

A consumer holds a per-job lock while it processes a job (:class:`JobLock`: an exclusive
``flock`` on the job file in ``cur/`` itself); a consumer that starts later skips jobs
whose lock is held. Locking the job file rather than a separate lock file saves a file
creation per job (the most expensive step of the consumer on ext4) and leaves no lock files
behind; the kernel drops the lock when the consumer dies, however it dies.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import stat

from tryssh.core.jobdir import fsync_dir, is_job_name, job_time, open_job, write_all
from tryssh.core.logfmt import iso_time
from tryssh.errors import EX_DATAERR, TrysshError, exit_code_for_oserror

TYPE_CHECKING = False  # typing is not imported at run time: tryserver status reads records
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Literal, NotRequired, TypedDict

    from tryssh.core.jobfile import Job

    #: A job's state: queued or running while active, then one of the final states.
    #: "claimed": it left new/ but has no record (a Buildbot master reads the jobdir);
    #: "delivered": a forward builder handed it on, its result is not visible here.
    JobState = Literal["queued", "claimed", "running", "success", "failure", "error",
                       "rejected", "interrupted", "cancelled", "delivered"]  # fmt: skip
    #: A builder's progress within a job, and its result once ``done``.
    BuilderState = Literal["pending", "running", "done"]
    #: "unknown": delivered elsewhere (forward builder), the result is not visible here.
    Result = Literal["success", "failure", "error", "cancelled", "unknown"]

    class BuilderEntry(TypedDict):
        """One ``builders.NAME`` entry of a record."""

        state: BuilderState
        result: Result | None
        log: str | None  # the build's log file on the master
        exit: int | None  # the builder program's exit status
        started: str | None  # ISO timestamps (:func:`now_iso`)
        finished: str | None
        attempt: int
        reason: NotRequired[str | None]  # why it ended as it did (error, failure)
        cancel: NotRequired[str]  # it had finished, or was sent, before a cancel took effect
        url: NotRequired[str | None]  # where the build can be seen (a Buildbot build's page)
        jobid: NotRequired[str]  # the jobid Buildbot knows the job by (buildbot builders)
        builds: NotRequired[dict[str, Any]]  # each Buildbot build (buildbot builders)
        delivered_as: NotRequired[str]  # the name the receiver gave it (forward builders)
        follow: NotRequired[str]  # resumed: the jobid to follow again, not resend

    class JobRecord(TypedDict):
        """The record of one job, as stored in ``STATE_DIR`` and answered by ``status``."""

        job: str
        jobid: str | None  # the job file's jobid: Buildbot's external_idstring
        state: JobState
        reason: str | None  # why the job is rejected, errored or interrupted
        who: str | None
        branch: str | None
        baserev: str | None
        project: str | None
        repository: str | None
        comment: str | None
        size: int | None
        sha256: str | None
        received: str | None
        started: str | None
        finished: str | None
        updated: str | None
        builders: dict[str, BuilderEntry]
        cancelled: NotRequired[dict[str, Any]]  # by whom and when a cancel was asked
        followable: NotRequired[bool]  # False: nothing here can ever report its results
        buildbot: NotRequired[dict[str, Any]]  # drop-in status: where Buildbot's answer came from


ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
FINAL_STATES: tuple[JobState, ...] = ("success", "failure", "error", "rejected", "interrupted",
                                      "cancelled", "delivered")  # fmt: skip
RECORD_MODE = 0o640
INTERRUPTED = "interrupted (consumer restarted)"


def now_iso() -> str:
    """The current UTC time as ISO-8601 with microseconds and a ``Z``."""
    return iso_time(micros=True)


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch for a timestamp written by :func:`now_iso` (None passes)."""
    if not text or not isinstance(text, str):
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp.timestamp()


def new_record(job: str, **fields: Any) -> JobRecord:
    """A record for *job* with every documented key present (None when not known yet)."""
    record: JobRecord = {
        "job": job,
        "jobid": None,  # the job file's jobid: Buildbot's external_idstring
        "state": "queued",
        "reason": None,
        "who": None,
        "branch": None,
        "baserev": None,
        "project": None,
        "repository": None,
        "comment": None,
        "size": None,
        "sha256": None,
        "received": None,
        "started": None,
        "finished": None,
        "updated": None,
        "builders": {},
    }
    record.update(fields)  # type: ignore[typeddict-item]
    return record


def job_fields(job: Job) -> dict[str, str | None]:
    """What a record says about the job itself, from its job file."""
    return {
        "jobid": job.jobid,
        "who": job.who,
        "branch": job.branch,
        "baserev": job.baserev,
        "project": job.project,
        "repository": job.repository,
        "comment": job.comment,
    }


def builder_entry(**fields: Any) -> BuilderEntry:
    """One ``builders.NAME`` entry of a record."""
    entry: BuilderEntry = {
        "state": "pending",
        "result": None,
        "log": None,
        "exit": None,
        "started": None,
        "finished": None,
        "attempt": 1,
    }
    entry.update(fields)  # type: ignore[typeddict-item]
    return entry


def overall_state(record: JobRecord) -> JobState:
    """The final job state from its builders' results.

    ``cancelled`` wins (someone asked: see :func:`request_cancel`), then ``interrupted``
    (a consumer died under a build), then ``error`` (the infrastructure failed), then
    ``failure`` (a build failed), then ``delivered`` (a build was handed on and its result
    is ``unknown`` here: never counted as a success), else ``success``.
    """
    if record.get("cancelled"):
        return "cancelled"
    entries = list(record["builders"].values())
    if any(str(e.get("reason") or "").startswith(INTERRUPTED) for e in entries):
        return "interrupted"
    results = [e.get("result") for e in entries]
    if "error" in results:
        return "error"
    if "failure" in results:
        return "failure"
    if "unknown" in results:
        return "delivered"
    return "success"


class RecordStore:
    """The records of one consumer setup, in *state_dir*."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.abspath(state_dir)
        self.active = os.path.join(self.path, "active")
        self.by_user = os.path.join(self.path, "by-user")
        self.cancel_dir = os.path.join(self.path, "cancel")

    def create(self) -> RecordStore:
        """Make the directories (setgid group-shared like the jobdir) if missing, and the
        per-user index from the records if this state directory has none yet."""
        try:
            for path in (self.path, self.active, self.cancel_dir):
                os.makedirs(path, mode=0o2770, exist_ok=True)
            self._share_cancel_dir()
            if not os.path.isdir(self.by_user):
                self._build_user_index()
        except OSError as err:
            raise TrysshError(
                f"cannot create state directory {self.path}: {err.strerror}",
                exit_code_for_oserror(err),
            ) from None
        return self

    def _build_user_index(self) -> None:
        """Index every final record by user (once: a state directory made before the index
        existed), in a temporary directory renamed into place when complete."""
        import shutil

        if not self.final_jobs():  # a new state directory: nothing to index
            os.makedirs(self.by_user, mode=0o2770, exist_ok=True)
            return
        tmp = os.path.join(self.path, f".by-user.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o2770)
        lines: dict[str, list[str]] = {}
        for job in self.final_jobs():
            record = self.read_or_skip(job)  # a damaged record is left out of the index
            who = record.get("who") if record else None
            if isinstance(who, str) and who:
                lines.setdefault(who, []).append(job)
        for who, jobs in lines.items():
            with open(os.path.join(tmp, user_index_name(who)), "w", encoding="ascii") as f:
                f.write("".join(f"{job}\n" for job in jobs))
        try:
            os.rename(tmp, self.by_user)
        except OSError:  # another consumer made it first
            shutil.rmtree(tmp, ignore_errors=True)

    def _index(self, who: str, job: str) -> None:
        """Append *job* to *who*'s index (no fsync: it can be rebuilt from the records)."""
        path = os.path.join(self.by_user, user_index_name(who))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, RECORD_MODE)
        except FileNotFoundError:
            return  # no index in this state directory (create() makes it)
        try:
            os.write(fd, f"{job}\n".encode("ascii"))
        finally:
            os.close(fd)

    def user_jobs(self, who: str, limit: int) -> list[dict[str, Any]] | None:
        """Up to *limit* records of *who*, newest first, read from the user's index and
        the active records; None when this state directory has no index."""
        if not os.path.isdir(self.by_user):
            return None
        names = set(self._indexed(who, limit))
        for job in self.active_jobs():
            names.add(job)  # active/ is small; their records are checked below
        found = []
        for job in sorted(names, key=_time_key, reverse=True):
            record = self.read_or_skip(job)  # a damaged record must not break the list
            if record is not None and record.get("who") == who:
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def _indexed(self, who: str, limit: int) -> list[str]:
        """The last names in *who*'s index: enough for *limit* records that still exist."""
        path = os.path.join(self.by_user, user_index_name(who))
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                block = 64 * 1024
                while True:
                    start = max(0, size - block)
                    f.seek(start)
                    data = f.read(size - start)
                    lines = data.split(b"\n")
                    if start:
                        lines = lines[1:]  # may be cut
                    names = [n.decode("ascii", "replace") for n in lines if n]
                    alive = [n for n in names if os.path.exists(self.final_path(n))]
                    if start == 0 or len(set(alive)) >= limit:
                        return alive
                    block *= 4
        except FileNotFoundError:
            return []

    def final_path(self, job: str) -> str:
        return os.path.join(self.path, f"{job}.json")

    def active_path(self, job: str) -> str:
        return os.path.join(self.active, f"{job}.json")

    def write(self, record: JobRecord) -> None:
        """Write *record* atomically where its state belongs; stamps ``updated``."""
        job = record["job"]
        if not is_job_name(job):
            raise TrysshError(f"not a job name: {job!r}")
        record["updated"] = now_iso()
        final = record["state"] in FINAL_STATES
        directory = self.path if final else self.active
        target = self.final_path(job) if final else self.active_path(job)
        data = json.dumps(record, indent=1, sort_keys=False).encode("utf-8") + b"\n"
        # The job's name shortened: the whole of it plus the suffix may not fit in NAME_MAX.
        tmp = os.path.join(directory, f".{job[:100]}.{os.getpid()}.{id(record)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, RECORD_MODE)
        try:
            try:
                os.fchmod(fd, RECORD_MODE)
                write_all(fd, data)
                finished = parse_iso(record.get("finished")) if final else None
                if finished is not None:
                    os.utime(fd, (finished, finished))  # gc reads the age from the mtime
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(directory)
        if final:
            # The final record is durable: the active copy is now only a stale duplicate,
            # which readers ignore (final wins) and startup removes.
            try:
                os.unlink(self.active_path(job))
            except OSError:
                pass  # gone, or damaged (a directory): readers prefer the final record
            who = record.get("who")
            if isinstance(who, str) and who:
                self._index(who, job)

    def read(self, job: str) -> JobRecord | None:
        """The record of *job*, or None. A final record wins over an active one."""
        if not is_job_name(job):
            return None
        for path in (self.final_path(job), self.active_path(job), self.final_path(job)):
            # Checked twice: the job may finish between the two first reads.
            record = _load(path, job)
            if record is not None:
                return record
        return None

    def read_or_skip(self, job: str) -> JobRecord | None:
        """:meth:`read`, with a damaged record taken as no record (lists skip it)."""
        try:
            return self.read(job)
        except DamagedRecord:
            return None

    def exists(self, job: str) -> bool:
        """Whether *job* has a record, active or final (a damaged one, or anything else in
        its place, too: a human decides)."""
        return os.path.lexists(self.final_path(job)) or os.path.lexists(self.active_path(job))

    def active_jobs(self) -> list[str]:
        """Names of jobs with an active record (stale duplicates included), oldest first."""
        return _names(self.active)

    def final_jobs(self) -> list[str]:
        return _names(self.path)

    def job_names(self) -> set[str]:
        """Every job with a record, unsorted (a set: no sort of the whole history)."""
        return _name_set(self.path) | _name_set(self.active)

    def all_jobs(self) -> list[str]:
        return sorted(set(self.active_jobs()) | set(self.final_jobs()), key=_time_key)

    def active_records(self) -> Iterator[JobRecord]:
        """Records still queued or running (a stale active copy reads as its final record)."""
        for job in self.active_jobs():
            record = self.read_or_skip(job)
            if record is not None and record.get("state") in ACTIVE_STATES:
                yield record

    def pending_count(self, who: str) -> int:
        """How many jobs of *who* are queued or running, across every consumer."""
        return sum(1 for r in self.active_records() if r.get("who") == who)

    def remove(self, job: str) -> None:
        """Delete the records of *job* (gc, which removes its cancel request itself). A
        directory planted in a record's place is left for a human."""
        for path in (self.final_path(job), self.active_path(job)):
            try:
                os.unlink(path)
            except (FileNotFoundError, IsADirectoryError):
                pass


    # -- cancel requests --
    #
    # ``tryserver cancel JOB`` (running as the try account) cannot signal the consumer's
    # builds; it leaves a request, ``STATE_DIR/cancel/JOB``, written like a record
    # (tmp + fsync + rename), which the consumer watches. The request is durable: a
    # consumer that starts later (or restarts) still sees it and does not run the job's
    # pending builders. The consumer removes it once the job's final record is written;
    # gc removes one whose job is gone (:mod:`tryssh.server.gc`).

    def _share_cancel_dir(self) -> None:
        """tryserver, another user of the group, writes cancel requests: the directory must
        be group-writable whatever the umask of whoever made it."""
        try:
            if os.stat(self.cancel_dir).st_uid == os.geteuid():
                os.chmod(self.cancel_dir, 0o2770)  # noqa: S103 - the group, never others
        except FileNotFoundError:
            pass

    def cancel_path(self, job: str) -> str:
        return os.path.join(self.cancel_dir, job)

    def request_cancel(self, job: str, by: str | None) -> dict[str, Any]:
        """Leave a cancel request for *job*; an earlier request for it is kept."""
        if not is_job_name(job):
            raise TrysshError(f"not a job name: {job!r}")
        existing = self.cancel_request(job)
        if existing is not None:
            return existing
        request = {"job": job, "by": by, "requested": now_iso()}
        try:
            os.makedirs(self.cancel_dir, mode=0o2770, exist_ok=True)
            self._share_cancel_dir()
            # Shortened like write()'s: the whole name plus the suffix may not fit NAME_MAX.
            tmp = os.path.join(self.cancel_dir, f".{job[:100]}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o660)  # fmt: skip
            try:
                os.fchmod(fd, 0o660)
                os.write(fd, json.dumps(request).encode("utf-8") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.cancel_path(job))
            fsync_dir(self.cancel_dir)
        except OSError as err:
            raise TrysshError(
                f"cannot record the cancel request: {err.strerror}", exit_code_for_oserror(err)
            ) from None
        return request

    def cancel_request(self, job: str) -> dict[str, Any] | None:
        """The pending cancel request of *job*, or None."""
        if not is_job_name(job):
            return None
        try:
            request = _load(self.cancel_path(job), job, shape=False)
        except DamagedRecord:
            return None  # a damaged request is no request
        return request if isinstance(request, dict) else None  # type: ignore[return-value]

    def cancel_requests(self) -> list[str]:
        """Jobs with a pending cancel request."""
        try:
            return [n for n in os.listdir(self.cancel_dir) if is_job_name(n)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def forget_cancel(self, job: str) -> None:
        try:
            os.unlink(self.cancel_path(job))
        except FileNotFoundError:
            pass


class JobLock:
    """An exclusive, non-blocking ``flock`` on a job file (in ``cur/``), held while a
    consumer processes the job. Open descriptions differ, so threads exclude each other too.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False when someone holds it. FileNotFoundError
        when the job file is gone, NotAJobFile when it is not a regular file."""
        fd = open_job(self.path)  # a FIFO must not block, a symlink must not be followed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def lock_job(path: str) -> JobLock | None:
    """The lock of the job file at *path*, acquired, or None when a live consumer holds it."""
    lock = JobLock(path)
    return lock if lock.try_acquire() else None


MAX_RECORD = 16 << 20  # bytes; a record is a few KiB, a bigger file is not one of ours


class DamagedRecord(TrysshError):
    """A record file that exists but cannot be used: unreadable, not JSON, wrong shape.

    The message names the job, never the server's paths (it may reach an SSH client).
    """

    exit_code = EX_DATAERR

    def __init__(self, job: str, why: str, path: str) -> None:
        super().__init__(f"the record of job {job} is damaged ({why})")
        self.job = job
        self.why = why
        self.path = path


def check_record(record: object) -> str | None:
    """What is wrong with the shape of a loaded record, or None if readers can use it."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    state = record.get("state")
    if not isinstance(record.get("job"), str) or state not in ACTIVE_STATES + FINAL_STATES:
        return "no job name or no known state"
    builders = record.get("builders")
    if not isinstance(builders, dict) or not all(
        isinstance(k, str) and isinstance(e, dict) for k, e in builders.items()
    ):
        return "builders is not an object of objects"
    for key in ("received", "started", "finished", "updated", "reason", "who", "branch"):
        if record.get(key) is not None and not isinstance(record[key], str):
            return f"{key} is a {type(record[key]).__name__}, not a string"
    return None


def _load(path: str, job: str, shape: bool = True) -> JobRecord | None:
    """The record at *path*; None if there is none; DamagedRecord if it is unusable.

    With *shape* False, any JSON is taken (a cancel request is not a job record).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            return None  # no record can have such a name
        raise DamagedRecord(job, err.strerror or "unreadable", path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DamagedRecord(job, "not a regular file", path)
        if info.st_size > MAX_RECORD:
            raise DamagedRecord(job, f"{info.st_size} bytes", path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_RECORD + 1)
    except OSError as err:
        raise DamagedRecord(job, err.strerror or "unreadable", path) from None
    finally:
        os.close(fd)
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        raise DamagedRecord(job, "not JSON (truncated?)", path) from None
    why = check_record(record) if shape else None
    if why is not None:
        raise DamagedRecord(job, why, path)
    return record  # type: ignore[no-any-return]


def user_index_name(who: str) -> str:
    """The file name of *who*'s index: letters, digits, '_' and '-' kept, the rest %XX."""
    safe = "".join(
        c if c.isascii() and (c.isalnum() or c in "_-") else
        "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in who
    )  # fmt: skip
    if len(safe) > 200:
        import hashlib

        safe = safe[:120] + "%" + hashlib.sha256(safe.encode()).hexdigest()
    return f"{safe}.log"


def _name_set(directory: str) -> set[str]:
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {e[:-5] for e in entries if e.endswith(".json") and not e.startswith(".")}


def _names(directory: str) -> list[str]:
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    names = [e[:-5] for e in entries if e.endswith(".json") and not e.startswith(".")]
    return sorted(names, key=_time_key)


def _time_key(name: str) -> tuple[tuple[int, int], str]:
    return job_time(name), name
