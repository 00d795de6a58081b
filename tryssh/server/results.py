"""The requests that bring results back: ``log``, ``watch`` and ``cancel``.

- ``log JOB [BUILDER] [--follow] [--tail N] [--from BYTES]`` streams a builder's log as
  bytes (never a whole-file read); with ``--follow`` it keeps streaming until the builder
  ends, then exits with the builder's result (0 success, 1 failure, 75 error or cancelled).
- ``watch JOB [--json]`` blocks on the job's record and writes one line per change (the
  whole record with ``--json``) until the job is final; a heartbeat line every
  :data:`HEARTBEAT` seconds keeps the connection (and the waiting developer) alive.
- ``cancel JOB`` leaves a durable cancel request for the consumer
  (:meth:`tryssh.core.records.RecordStore.request_cancel`); in the drop-in set-up (a
  Buildbot master reads the jobdir, no consumer) it takes the job back from ``new/`` or
  has Buildbot stop its buildset (:func:`drop_in_cancel`).

Like ``status`` they answer only for the pinned user's own jobs: another user's job, or
a builder of it, answers exactly like a job that does not exist (66). They wait with
inotify (:mod:`tryssh.server.inotify`) on the state directory and the job's log directory,
and poll where inotify is not available.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time

from tryssh.core.jobdir import Jobdir
from tryssh.core.records import FINAL_STATES, RecordStore
from tryssh.errors import EX_NOPERM, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, TrysshError, UsageError
from tryssh.server.queries import NoSuchJob, job_status, state_dirs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from tryssh.core.request import Request
    from tryssh.server.config import Config
    from tryssh.server.tryserver import RequestContext

CHUNK = 256 * 1024
HEARTBEAT = 10.0  # seconds between watch's keepalive lines
RESCAN = 5.0  # with inotify, still look this often (a missed event costs no more)
POLL = 0.25  # without inotify
BUILDBOT_POLL = 1.0  # drop-in with [buildbot] api: how often watch asks Buildbot's REST API
EX_ALREADY_FINAL = 2  # cancel: the job had finished already; nothing was done
RESULT_EXIT = {"success": 0, "failure": 1}  # any other builder result: 75
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOG_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class AlreadyFinal(TrysshError):
    """``cancel`` of a job that has finished: a no-op with its own exit code."""

    exit_code = EX_ALREADY_FINAL


def stream(ctx: RequestContext, request: Request, out: BinaryIO) -> int:
    """Carry out ``log``, ``watch`` or ``cancel``; return the exit code."""
    if request.verb == "log":
        return LogStream(ctx, request, out).run()
    if request.verb == "watch":
        return watch(ctx, request, out)
    if request.verb == "cancel":
        return cancel(ctx, request, out)
    raise UsageError(f"{request.verb} is not a streaming request")


class Waiter:
    """Sleep until a job's record (or log) may have changed: inotify, else polling."""

    def __init__(self, dirs: list[str]) -> None:
        self.watched: set[str] = set()
        try:
            from tryssh.server.inotify import Inotify

            self.inotify: Any = Inotify()
        except OSError:  # no inotify, or the account's instances are used up: poll
            self.inotify = None
        for path in dirs:
            self.watch(path)

    def watch(self, path: str) -> None:
        if self.inotify is None or path in self.watched:
            return
        from tryssh.server.inotify import DIRECTORY_EVENTS, IN_MODIFY

        try:
            self.inotify.add(path, DIRECTORY_EVENTS | IN_MODIFY)
            self.watched.add(path)
        except OSError:
            pass  # not there yet: the caller asks again, and RESCAN/POLL bound the wait

    def wait(self, timeout: float) -> None:
        if self.inotify is None:
            time.sleep(max(0.0, min(timeout, POLL)))
        else:
            self.inotify.wait(min(timeout, RESCAN))

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


# -- log ------------------------------------------------------------------------------------


class LogStream:
    """One ``log`` request."""

    def __init__(self, ctx: RequestContext, request: Request, out: BinaryIO) -> None:
        assert request.job is not None
        self.jobdir, self.state_dir, self.log_dir = state_dirs(ctx.config, ctx.jobdir)
        self.user = ctx.opts.user
        self.request = request
        self.job = request.job
        self.out = out
        self.offset = request.start
        self.fd: int | None = None

    def record(self) -> dict[str, Any]:
        return job_status(self.jobdir, self.state_dir, self.job, self.user)

    def builder(self, record: dict[str, Any]) -> str | None:
        """The builder to show (None: not known yet, the job is still queued)."""
        builders = record.get("builders") or {}
        name = self.request.builder
        if not builders and record.get("state") not in FINAL_STATES:
            return None  # the consumer has not chosen the builders yet
        if name is None:
            if len(builders) == 1:
                return next(iter(builders))
            if not builders:
                raise NoSuchJob(f"job {self.job} has no builders ({record.get('state')})")
            raise UsageError(
                f"job {self.job} has several builders: {', '.join(builders)}; name one"
            )
        if name not in builders:
            raise NoSuchJob(
                f"no builder {name!r} in job {self.job} (its builders: {', '.join(builders)})"
            )
        return name

    def run(self) -> int:
        record = self.record()
        follow = self.request.follow
        waiter = (
            Waiter([self.state_dir, RecordStore(self.state_dir).active]) if follow else None
        )
        try:
            while True:
                name = self.builder(record)
                if name is not None:
                    self.copy(name)
                    entry = record["builders"][name]
                    done = entry.get("state") == "done" or record.get("state") in FINAL_STATES
                    if not follow or done:
                        if done and follow:
                            self.copy(name)  # what the builder wrote before the record said so
                        return (
                            RESULT_EXIT.get(entry.get("result") or "", EX_TEMPFAIL)
                            if follow
                            else EX_OK
                        )
                elif not follow:
                    return EX_OK  # nothing logged yet: an empty answer, not an error
                assert waiter is not None
                waiter.watch(os.path.join(self.log_dir, self.job))
                waiter.wait(RESCAN if self.fd is not None else POLL)
                record = self.record()
        finally:
            if waiter is not None:
                waiter.close()
            if self.fd is not None:
                os.close(self.fd)

    def open(self, name: str) -> int | None:
        """The log's descriptor (None while it does not exist); never through a symlink."""
        if self.fd is not None:
            return self.fd
        try:
            dir_fd = os.open(os.path.join(self.log_dir, self.job), _DIR_FLAGS)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return None
            raise NoSuchJob(f"the log of {name} cannot be read: not a directory") from None
        try:
            fd = os.open(f"{name}.log", _LOG_FLAGS, dir_fd=dir_fd)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return None
            if err.errno == errno.ELOOP:
                raise NoSuchJob(f"the log of {name} is a symbolic link: not followed") from None
            raise NoSuchJob(f"the log of {name} cannot be read: {err.strerror}") from None
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NoSuchJob(f"the log of {name} is not a regular file: not read")
        if self.request.tail is not None:
            self.offset = max(self.offset, _tail_offset(fd, self.request.tail))
        self.fd = fd
        return fd

    def copy(self, name: str) -> None:
        """Send what the log holds past our offset (in chunks: logs can be huge)."""
        fd = self.open(name)
        if fd is None:
            return
        if os.fstat(fd).st_size < self.offset:
            self.offset = 0  # truncated (a new attempt): start again
        while chunk := os.pread(fd, CHUNK, self.offset):
            self.offset += len(chunk)
            _write(self.out, chunk)


def _tail_offset(fd: int, lines: int) -> int:
    """Where the last *lines* lines of the file start (read backwards, block by block)."""
    end = os.fstat(fd).st_size
    if lines <= 0:
        return end
    position = end
    newlines = 0
    if end and os.pread(fd, 1, end - 1) == b"\n":
        newlines = -1  # the final newline ends the last line; it does not start one
    while position > 0:
        size = min(CHUNK, position)
        position -= size
        block = os.pread(fd, size, position)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            newlines += 1
            if newlines == lines:
                return position + index + 1
    return 0


# -- watch ----------------------------------------------------------------------------------


def watch(ctx: RequestContext, request: Request, out: BinaryIO) -> int:
    """Write the job's record at every change until it is final (heartbeats in between)."""
    assert request.job is not None
    jobdir, state_dir, _log_dir = state_dirs(ctx.config, ctx.jobdir)
    user = ctx.opts.user
    # The drop-in set-up: a Buildbot master reads the jobdir, its API has the results.
    buildbot = ctx.config.buildbot if ctx.config is not None else None
    record = job_status(jobdir, state_dir, request.job, user, buildbot)
    waiter = Waiter([state_dir, RecordStore(state_dir).active, Jobdir(jobdir).cur])
    start = time.monotonic()
    beat = start + HEARTBEAT
    last: dict[str, Any] | None = None
    try:
        while True:
            if record != last:
                _write(out, _watch_line(record, request.json))
                last = record
            if record.get("state") in FINAL_STATES or record.get("followable") is False:
                return EX_OK  # final, or nothing here will ever tell more
            now = time.monotonic()
            if now >= beat:
                elapsed = round(now - start)
                text = (
                    json.dumps({"heartbeat": elapsed}) if request.json
                    else f"... {record.get('state')} ({elapsed} s)"
                )  # fmt: skip
                _write(out, text.encode() + b"\n")
                beat = now + HEARTBEAT
            # Buildbot's answers come from its API, not from a file a change wakes us for.
            from_api = "buildbot" in record or (buildbot or {}).get("api")
            waiter.wait(min(beat - now, BUILDBOT_POLL) if from_api else beat - now)
            record = job_status(jobdir, state_dir, request.job, user, buildbot)
    finally:
        waiter.close()


def _watch_line(record: dict[str, Any], as_json: bool) -> bytes:
    if as_json:
        return json.dumps(record).encode("utf-8") + b"\n"
    builders = " ".join(
        f"{n}={e.get('result') or e.get('state')}"
        for n, e in (record.get("builders") or {}).items()
    )
    text = f"{record['job']} {record.get('state')}" + (f" {builders}" if builders else "")
    return text.encode("utf-8", "replace") + b"\n"


# -- cancel ---------------------------------------------------------------------------------


def cancel(ctx: RequestContext, request: Request, out: BinaryIO) -> int:
    """Cancel one of the caller's jobs: leave a request for the consumer or, in the drop-in
    set-up, take the job back from new/ or have Buildbot stop its buildset."""
    assert request.job is not None
    jobdir, state_dir, _log_dir = state_dirs(ctx.config, ctx.jobdir)
    user = ctx.opts.user
    buildbot = ctx.config.buildbot if ctx.config is not None else {}
    record = job_status(jobdir, state_dir, request.job, user, buildbot)
    by = user or "admin"
    if is_drop_in(ctx.config, state_dir, request.job):
        again = lambda: job_status(jobdir, state_dir, record["job"], user, buildbot)  # noqa: E731
        return drop_in_cancel(jobdir, state_dir, buildbot, record, by, request.json, out, again)
    return request_cancel(state_dir, record, by, request.json, out)


def is_drop_in(config: Config | None, state_dir: str, job: str) -> bool:
    """Whether *job* is in Buildbot's hands with no tryssh consumer: it has no record, and
    the config names the master that reads this jobdir (``[buildbot] api``), or no
    consumer ever ran here and no config says one will (none, or only builders declared
    into this very jobdir)."""
    from tryssh.server.queries import drop_in_site

    if RecordStore(state_dir).read(job) is not None:
        return False
    if config is not None and config.buildbot.get("api"):
        return True
    return drop_in_site(config, state_dir)


# How long a cancel waits for the buildset of a job Buildbot has just claimed (it makes
# one at once; a master that is slower is answered "ask again", exit 75).
BUILDSET_WAIT = 10.0


def drop_in_cancel(
    jobdir: str, state_dir: str, buildbot: dict[str, Any], record: dict[str, Any], by: str,
    as_json: bool, out: BinaryIO, reread: Any,
) -> int:  # fmt: skip
    """Cancel a job a Buildbot master reads straight from the jobdir (no consumer).

    Still in new/: the job is renamed into ``withdrawn/`` (Buildbot's MaildirService
    claims with a rename too, so exactly one of us wins, and nothing it may have opened
    is deleted). Claimed: the job's own buildset (the same lookup as ``status``, safe
    against a reused jobid) is stopped through ``[buildbot] api``. The cancel request is
    written first: it is what makes ``status`` read Buildbot's CANCELLED as ``cancelled``.
    """
    job = record["job"]
    if record.get("state") in FINAL_STATES:
        raise AlreadyFinal(f"job {job} has already finished ({record['state']}): nothing to cancel")
    store = RecordStore(state_dir)
    if record.get("state") != "queued":
        return _stop_claimed(store, buildbot, record, by, as_json, out, reread)
    fresh = store.cancel_request(job) is None
    asked = store.request_cancel(job, by)  # before the rename: status reads who asked
    try:
        if Jobdir(jobdir).withdraw(job):
            return _answer(out, as_json, job, "queued", asked,
                           "taken back from new/ before Buildbot took it", "withdrawn")
        # Buildbot claimed it meanwhile.
        return _stop_claimed(store, buildbot, reread(), by, as_json, out, reread)
    except TrysshError:
        if fresh:  # not carried out: no request stays behind to be read as evidence
            store.forget_cancel(job)
        raise


def _stop_claimed(
    store: RecordStore, buildbot: dict[str, Any], record: dict[str, Any], by: str,
    as_json: bool, out: BinaryIO, reread: Any,
) -> int:  # fmt: skip
    """Stop the buildset of a job Buildbot has claimed, through ``[buildbot] api``."""
    job = record["job"]
    api_url = buildbot.get("api")
    if not api_url:
        raise TrysshError(f"this server cannot stop job {job}: Buildbot has claimed it and "
                          "there is no [buildbot] api in this server's config", EX_UNAVAILABLE)
    deadline = time.monotonic() + BUILDSET_WAIT
    while "buildbot" not in record and record.get("state") not in FINAL_STATES:
        if record.get("reason"):  # the API did not answer, or its token is unreadable
            raise TrysshError(str(record["reason"]), EX_TEMPFAIL)
        if time.monotonic() > deadline:
            raise TrysshError(f"not started yet: Buildbot has claimed job {job} but has no "
                              f"buildset for jobid {record.get('jobid')} yet; ask again",
                              EX_TEMPFAIL)  # fmt: skip
        time.sleep(POLL)
        record = reread()
    state = record.get("state")
    if state in FINAL_STATES:
        raise AlreadyFinal(f"job {job} has already finished ({state}): nothing to cancel")
    from tryssh.server.buildbot import Api, foreign_buildsets, read_token, stop_buildsets

    try:
        api = Api(api_url, read_token(buildbot.get("token_file")), retries=1)
    except OSError as err:
        raise TrysshError(f"cannot read buildbot.token_file: {err.strerror}", EX_TEMPFAIL) from None
    bsids = record["buildbot"]["bsids"]
    # Another job may carry the same jobid (the client chooses it): status may then read
    # that job's buildset (harmless, the web UI shows it to all), but a stop must not hit
    # it. Buildbot's buildset reason names the job's who, which tryserver pinned.
    try:
        foreign = foreign_buildsets(api, str(record.get("jobid") or ""), bsids,
                                    record.get("who"))  # fmt: skip
    except TrysshError as err:  # Unavailable: the master did not answer; try again
        raise TrysshError(err.message, EX_TEMPFAIL) from None
    if foreign:
        raise TrysshError(f"not stopping buildset {', '.join(foreign)}: Buildbot made it for "
                          f"another try job with jobid {record.get('jobid')}", EX_NOPERM)
    asked = store.request_cancel(job, by)
    code, note = stop_buildsets(api, bsids, f"tryssh job {job} cancelled by {by}")
    if code:
        raise TrysshError(note, code)
    return _answer(out, as_json, job, state, asked, note, "buildbot")


def _answer(out: BinaryIO, as_json: bool, job: str, state: Any, asked: dict[str, Any],
            message: str, how: str) -> int:  # fmt: skip
    """Say what was done: *how* is ``consumer`` (a request it carries out), ``withdrawn``
    (taken back from new/) or ``buildbot`` (its API was asked to stop the buildset)."""
    if as_json:
        text = json.dumps({"job": job, "state": state, "cancel": asked, "how": how,
                           "message": message})  # fmt: skip
    else:
        text = message
    _write(out, text.encode("utf-8") + b"\n")
    return EX_OK


def request_cancel(
    state_dir: str, record: dict[str, Any], by: str, as_json: bool, out: BinaryIO
) -> int:
    """Record the request unless the job is final (AlreadyFinal); say what was done."""
    state = record.get("state")
    job = record["job"]
    if state in FINAL_STATES:
        raise AlreadyFinal(f"job {job} has already finished ({state}): nothing to cancel")
    asked = RecordStore(state_dir).request_cancel(job, by)
    return _answer(out, as_json, job, state, asked, f"cancel requested for {job} (was {state})",
                   "consumer")
