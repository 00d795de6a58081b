"""``tryserver``: the forced command that sshd runs for every submission.

    tryserver --jobdir DIR [--user NAME] [--max-size BYTES] [--config FILE]
              [--audit-log FILE] [--max-time SECONDS]
              [deliver | status JOB | builders | jobs | log JOB [BUILDER] | watch JOB
               | cancel JOB] [--json]

It reads a job from stdin, checks it, pins ``who`` to ``--user`` and delivers it into
the jobdir; on success it prints the job's name. Under sshd (SSH_ORIGINAL_COMMAND set)
the client's command is parsed strictly and the pinned options always win.

This module runs once per submission, so it imports only what delivery needs.
"""

from __future__ import annotations

import os
import signal
import sys

from tryssh.core import defaults
from tryssh.core import request as command
from tryssh.core.jobdir import Jobdir, write_all
from tryssh.core.lighthash import light_sha256
from tryssh.errors import (
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    REFUSALS,
    JobTooLarge,
    PermissionDenied,
    TempFail,
    TrysshError,
    UsageError,
)
from tryssh.server.audit import AuditLog, ssh_key_fingerprint, ssh_peer

TYPE_CHECKING = False  # typing and dataclasses are not imported at run time: start-up cost
if TYPE_CHECKING:
    from collections.abc import Callable
    from hashlib import _Hash
    from typing import Any, BinaryIO, TextIO

    from tryssh.server.config import Config

STREAMING = ("log", "watch", "cancel")  # answered by tryssh.server.results
WRITEBACK_STEP = 8 * 1024 * 1024
# The splice holds a few copies of one chunk: small enough that tryssh serve, with many
# uploads at once, stays small; big enough that per-chunk costs (and the GIL's hand-offs
# between reading, writing and hashing) do not show. Measured: 1 MiB splices a 256 MB v5
# job about 20% faster than 256 KiB; tryserver peaks at 24 MB, and serve under 8 uploads
# of 64 MiB peaks at 75 MB either way (paramiko's buffers are most of it).
READ_CHUNK = 1 << 20
QUEUED_CHUNKS = 2  # per writing and hashing thread, past the chunk each has in hand
# Up to this size a job is hashed by Python's built-in SHA-256 once it is all in; a bigger
# one switches to hashlib's (OpenSSL: 8 times faster per byte, but 4 ms to load).
SMALL_JOB = 256 * 1024
_fadvise = getattr(os, "posix_fadvise", None)  # not on macOS
USAGE = """\
usage: tryserver --jobdir DIR [--user NAME] [--max-size BYTES] [--config FILE]
                 [--audit-log FILE] [--max-time SECONDS]
                 [deliver | status JOB | builders | jobs | log JOB [BUILDER]
                  | watch JOB | cancel JOB] [--json]
       tryserver --version | --help

Receive a try job on stdin and deliver it into the jobdir (tmp/, then new/).
Meant to be an OpenSSH forced command:

  restrict,command="tryserver --jobdir /srv/tryssh/jobdir --user alice" ssh-ed25519 AAAA...

options:
  --jobdir DIR       the jobdir (maildir with tmp/ new/ cur/); the client's is ignored
  --user NAME        pin the identity: the delivered job's 'who' is NAME
  --max-size BYTES   refuse jobs larger than this (default 64 MiB, or the config's)
  --config FILE      the tryssh TOML config (jobdir, limits, users, builders)
  --audit-log FILE   where to append the audit line (default DIR/audit.log)
  --max-time SECONDS give up on a request after this long (default 86400, as qmail)
  --json             answer as JSON
  --version          print "tryserver VERSION" and exit
requests:
  deliver (default)  read a job from stdin and deliver it; print its name
  status JOB         the state of one of your jobs
  builders           the builders you may use
  jobs [--all-states] [--limit N]
                     your queued and running jobs (with --all-states: finished ones too)
  log JOB [BUILDER] [--follow] [--tail N] [--from BYTES]
                     a builder's log as bytes; --follow streams it until the builder
                     ends and exits with its result (0 success, 1 failure, 75 error)
  watch JOB          one line per change of the job's record until it is final
  cancel JOB         ask the consumer to stop the job (exit 2: it had finished already);
                     drop-in (Buildbot reads the jobdir): take it back from new/, or
                     stop its buildset through [buildbot] api (69: no api configured)
exit codes: 0 ok, 1 the followed builder failed, 2 nothing to cancel, 64 usage or
            refused command, 65 bad job, 66 no such job (or builder, or log), 69 cannot
            stop (drop-in without api), 73 cannot create, 75 temporary failure,
            77 permission denied, 78 config error
"""


class Options:
    """The server's options, set by the admin on the authorized_keys line."""

    def __init__(
        self,
        jobdir: str | None = None,
        user: str | None = None,
        max_size: int | None = None,
        config: str | None = None,
        audit_log: str | None = None,
        max_time: int = defaults.MAX_REQUEST_TIME,
    ) -> None:
        self.jobdir = jobdir
        self.user = user
        self.max_size = max_size
        self.config = config
        self.audit_log = audit_log
        self.max_time = max_time
        self.words: list[str] = []


def parse_argv(argv: list[str]) -> Options:
    """The server's own command line (set by the admin, so trusted)."""
    opts = Options()
    takes_value = {"--jobdir", "--user", "--max-size", "--config", "--audit-log", "--max-time"}
    i = 0
    while i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=")
        if name in takes_value:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                i += 1
                value = argv[i]
            attr = name[2:].replace("-", "_")
            if attr in ("max_size", "max_time"):
                if not value.isdigit() or int(value) <= 0:
                    unit = "number of bytes" if attr == "max_size" else "number of seconds"
                    raise UsageError(f"{name} must be a positive {unit}: {value!r}")
                setattr(opts, attr, int(value))
            else:
                setattr(opts, attr, value)
        elif word in ("-h", "--help"):
            raise SystemExit(sys.stdout.write(USAGE) and EX_OK)
        elif word == "--version":
            # tryssh doctor runs this as the key's account: can it execute us at all?
            from tryssh import __version__

            raise SystemExit(sys.stdout.write(f"tryserver {__version__}\n") and EX_OK)
        else:
            opts.words.append(word)
        i += 1
    return opts


class RequestContext:
    """What one tryserver request runs with: options resolved, jobdir checked, audit log open."""

    def __init__(
        self,
        opts: Options,
        env: dict[str, str] | os._Environ[str],
        config: Config | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.opts = opts
        self.env = env
        # A long-lived caller (tryssh serve) passes the config it authenticates with, so
        # that logins and policy always come from the same reading of the file, and its
        # own audit log, which outlives the request.
        self.config = config
        if self.config is None and opts.config:
            from tryssh.server.config import load_config

            self.config = load_config(opts.config)
        jobdir = opts.jobdir or (self.config.jobdir if self.config else None)
        if not jobdir:
            raise UsageError("--jobdir is required (or a config with jobdir)")
        self.jobdir = Jobdir(jobdir)
        self.jobdir.check()
        self.max_size = opts.max_size or (
            self.config.max_job_size if self.config else defaults.MAX_JOB_SIZE
        )
        if self.config and opts.user:
            policy = self.config.user(opts.user)
            if policy and policy.max_job_size:
                self.max_size = min(self.max_size, policy.max_job_size)
        self._owns_audit = audit is None
        if audit is None:
            default = os.path.join(self.jobdir.path, defaults.AUDIT_LOG)
            audit = AuditLog(opts.audit_log or (self.config.audit_log if self.config else default))
        self.audit = audit

    def request(self) -> tuple[command.Request, str]:
        """What the client asked for, and the command text to log."""
        if "SSH_ORIGINAL_COMMAND" in self.env:
            text = self.env["SSH_ORIGINAL_COMMAND"]
            request = command.parse_ssh_command(text)
            if request.verb in (*command.JOB_VERBS, "jobs") and not self.opts.user:
                # Without a pinned user there is no "own" job to show: fail closed.
                raise PermissionDenied(
                    f"{request.verb} needs a pinned user: add --user NAME to this key's "
                    "authorized_keys line"
                )
            return request, text
        if "SSH_CONNECTION" in self.env and not self.opts.words:
            # sshd ran us for a shell request (no command): never an interactive session.
            raise command.CommandRefused("interactive sessions are not allowed; run 'tryserver'")
        return command.parse_request_words(self.opts.words), " ".join(self.opts.words)

    def close(self) -> None:
        """Release what the request held (its own audit log's descriptor)."""
        if self._owns_audit:
            self.audit.close()

    def deliver(self, stdin: BinaryIO) -> dict[str, object]:
        """Read, check and deliver the job on *stdin*; return the receipt."""
        from tryssh.core.jobfile import transcode

        def write(fd: int) -> tuple[int, str, str | None]:
            writer = JobWriter(fd)
            try:
                try:
                    job = transcode(stdin, emit=writer, pin_who=self.opts.user,
                                    limit=self.max_size, chunk=READ_CHUNK)  # fmt: skip
                except JobTooLarge:
                    if not self.opts.user:
                        raise
                    # In the consumer's words: whose limit it is.
                    raise JobTooLarge(f"job is larger than the limit of {self.max_size} bytes "
                                      f"for {self.opts.user!r}") from None  # fmt: skip
                sha256 = writer.hexdigest()  # the job is all written: its final size
                if self.config is not None:
                    # The consumer's check at the door, on the parsed header fields and the
                    # size: raising here removes the tmp/ file, so a job the consumer would
                    # refuse never reaches new/.
                    from tryssh.server.policy import check_at_door

                    check_at_door(self.config, job.who or "", job.builder_names, job.branch,
                                  writer.size)  # fmt: skip
            except BaseException:
                writer.abort()  # before the caller closes fd: no write may follow it
                raise
            return writer.size, sha256, job.jobid

        name, (size, sha256, jobid) = self.jobdir.deliver(write)
        # jobid: what Buildbot's Try_Jobdir records as the buildset's external_idstring.
        return {"job": name, "jobid": jobid, "size": size, "sha256": sha256}


class JobWriter:
    """Writes a job to the open tmp file *fd* as it streams, hashing it on the way.

    Once a job is big (past SMALL_JOB), writing and hashing move to two threads, one each:
    both release the GIL, so they overlap with each other and with reading and checking
    the rest (bounded queues keep memory flat). One thread doing both made every big job
    wait for their sum. The splice of a v5/v6 job may rewrite the head once at the end
    (its netstring length was a guess); the bytes after it then move, and the hash is
    taken again from the file.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.head: list[bytes] = []  # the job so far, while it is small and not hashed yet
        self.digest: _Hash | None = None
        self.rewritten = False
        self.started = 0  # bytes handed to the kernel's writeback so far
        self.written = 0  # bytes the writing thread has written (its own count)
        self._queues: list[Any] = []  # queue.Queue of chunks per thread, while they run
        self._threads: list[Any] = []
        self._error: BaseException | None = None

    def write(self, data: bytes) -> None:
        if self._threads:
            if self._error is not None:
                self._stop()
            for q in self._queues:
                q.put(data)
            self.size += len(data)
            return
        write_all(self.fd, data)
        self.size += len(data)
        if self.digest is not None:
            self.digest.update(data)
        else:
            self.head.append(data)
            if self.size > SMALL_JOB:
                import hashlib  # a big job: OpenSSL's SHA-256 is worth loading

                self.digest = hashlib.sha256(b"".join(self.head))
                self.head.clear()
                if not self.rewritten:
                    self._start()
        self._writeback(self.size)

    def _writeback(self, size: int) -> None:
        if size - self.started >= WRITEBACK_STEP and _fadvise:
            # Start writing back what we have while we read and hash the rest, so that the
            # final fsync has little left to wait for (and a big job does not linger in the
            # page cache).
            _fadvise(self.fd, self.started, size - self.started, os.POSIX_FADV_DONTNEED)
            self.started = size

    def _start(self) -> None:
        import queue
        import threading

        self.written = self.size
        for work in (self._write_chunks, self._hash_chunks):
            q: Any = queue.Queue(maxsize=QUEUED_CHUNKS)  # bounded: serve runs many at once
            thread = threading.Thread(target=self._drain, args=(q, work), daemon=True)
            self._queues.append(q)
            self._threads.append(thread)
            thread.start()

    def _drain(self, q: Any, work: Callable[[bytes], object]) -> None:
        while (data := q.get()) is not None:
            if self._error is not None:
                continue  # keep taking chunks, so that the reader never blocks on a dead queue
            try:
                work(data)
            except BaseException as err:  # reported by the reading thread: _stop()
                self._error = err

    def _write_chunks(self, data: bytes) -> None:
        write_all(self.fd, data)
        self.written += len(data)
        self._writeback(self.written)

    def _hash_chunks(self, data: bytes) -> None:
        assert self.digest is not None
        self.digest.update(data)

    def abort(self) -> None:
        """Stop the threads without writing what is still queued."""
        if self._threads:
            self._error = self._error or TempFail("delivery aborted")
            self._join()

    def _join(self) -> None:
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()
        self._queues, self._threads = [], []

    def _stop(self) -> None:
        """Wait until everything queued is written and hashed; raise what the threads hit."""
        self._join()
        if self._error is not None:
            raise self._error

    def rewrite_head(self, old_length: int, head: bytes) -> None:
        """Replace the first *old_length* bytes by *head*, moving the rest if need be."""
        self._stop()
        fd, shift = self.fd, len(head) - old_length
        step = 1 << 20
        if shift > 0:  # move right: from the end backwards
            end = self.size
            while end > old_length:
                start = max(old_length, end - step)
                os.pwrite(fd, os.pread(fd, end - start, start), start + shift)
                end = start
        elif shift < 0:  # move left: from the start forwards
            for start in range(old_length, self.size, step):
                chunk = os.pread(fd, min(step, self.size - start), start)
                os.pwrite(fd, chunk, start + shift)
            os.ftruncate(fd, self.size + shift)
        os.pwrite(fd, head, 0)
        self.size += shift
        os.lseek(fd, self.size, os.SEEK_SET)
        self.rewritten = True

    def hexdigest(self) -> str:
        """The SHA-256 of the job as written (while the file is open)."""
        self._stop()
        if self.rewritten:
            import hashlib

            digest = hashlib.sha256()
            for start in range(0, self.size, 1 << 20):
                digest.update(os.pread(self.fd, min(1 << 20, self.size - start), start))
            return digest.hexdigest()
        if self.digest is None:
            return light_sha256(b"".join(self.head)).hexdigest()
        return self.digest.hexdigest()


def handle(
    ctx: RequestContext,
    request: command.Request,
    stdin: BinaryIO,
    stdout: TextIO,
    audit_fields: dict[str, object],
) -> int:
    """Carry out one parsed request; return the exit code and fill *audit_fields*.

    Errors propagate: :func:`run_request` turns them into an outcome and an answer.
    """
    audit_fields["verb"] = request.verb
    code = EX_OK
    if request.verb in STREAMING:
        from tryssh.server.results import stream

        audit_fields["job"] = request.job
        if request.builder:
            audit_fields["builder"] = request.builder
        # Logs are bytes: the binary side of stdout (serve's channel has one too).
        code = stream(ctx, request, stdout.buffer)  # type: ignore[attr-defined]
    elif request.verb == "deliver":
        receipt = ctx.deliver(stdin)
        audit_fields.update(receipt)
        if request.json:
            import json

            stdout.write(json.dumps(receipt) + "\n")
        else:
            stdout.write(f"{receipt['job']}\n")
    else:
        from tryssh.server.queries import answer

        audit_fields["job"] = request.job
        stdout.write(answer(request, ctx.config, ctx.jobdir, ctx.opts.user))
    stdout.flush()
    audit_fields["outcome"] = "ok"
    return code


def run_request(
    open_request: Callable[[], RequestContext],
    stdin: BinaryIO,
    stdout: TextIO,
    fields: dict[str, object],
    *,
    say: Callable[[str], None],
    warn: Callable[[str], None],
    audit: AuditLog | None = None,
    gone: tuple[type[BaseException], ...] = (BrokenPipeError,),
    finish: Callable[[], None] | None = None,
) -> int:
    """Open, carry out and account for one request; return its exit code. Both doors (the
    forced command and ``tryssh serve``) go through here, so they answer and log alike.

    *open_request* sets the request up (it may fill *fields*); the client's command is then
    parsed (:meth:`RequestContext.request`) and carried out (:func:`handle`). An error becomes
    ``refused`` (the client asked for something wrong) or ``failed``, told to the client by
    *say* as one ``tryserver: ...`` line. *gone* are the errors that mean the client hung up.
    Then *finish* runs and the audit line (*fields*) goes to the request's audit log, or to
    *audit* when the request could not be opened; trouble writing it goes to *warn*.
    """
    code = EX_SOFTWARE
    ctx: RequestContext | None = None
    try:
        ctx = open_request()
        request, text = ctx.request()
        fields["cmd"] = clip(text)
        code = handle(ctx, request, stdin, stdout, fields)
    except TrysshError as err:
        code = err.exit_code
        fields.setdefault("outcome", "refused" if code in REFUSALS else "failed")
        fields.setdefault("reason", err.message)
        say(f"tryserver: {err.message}")
    except KeyboardInterrupt:
        code = EX_TEMPFAIL
        fields["outcome"] = "interrupted"
        say("tryserver: interrupted")
    except gone as err:
        code = EX_TEMPFAIL
        fields["outcome"] = "client gone"
        fields["reason"] = str(err) or type(err).__name__
    except Exception as err:  # a bug: answer, log it, keep a long-lived server up
        import traceback

        traceback.print_exc()
        fields["outcome"] = "failed"
        fields["reason"] = f"internal error: {type(err).__name__}"
        say("tryserver: internal error")
    finally:
        if finish is not None:
            finish()
        fields["exit"] = code
        log = ctx.audit if ctx is not None else audit
        if log is not None:
            try:
                log.write(**fields)
            except OSError as err:
                # The job (if any) is already delivered: a failure code now would make the
                # client retry and deliver it twice. Say so, keep the outcome.
                warn(f"cannot write the audit log {log.path}: {err.strerror}")
        if ctx is not None:
            ctx.close()
    return code


def clip(text: str) -> str:
    """The client's command for the audit log: never more than the parser would accept."""
    limit = command.MAX_COMMAND
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text)} characters]"


def _client_command(env: dict[str, str] | os._Environ[str], argv: list[str]) -> str:
    """What the client asked for: its command under sshd (empty for an interactive login,
    never the forced command's own options), else our arguments (a local run)."""
    if "SSH_ORIGINAL_COMMAND" in env:
        return env["SSH_ORIGINAL_COMMAND"]
    return "" if "SSH_CONNECTION" in env else " ".join(argv)


def _give_up(signum: int, frame: object) -> None:
    raise TempFail("request took longer than --max-time; gave up")


def _stop_clock() -> None:
    signal.alarm(0)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _warn(line: str) -> None:
    print(f"tryserver: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tryserver`` console script."""
    args = sys.argv[1:] if argv is None else argv
    env = os.environ
    fields: dict[str, object] = {
        "user": None,
        "from": ssh_peer(env),
        "key": ssh_key_fingerprint(env),
        "cmd": clip(_client_command(env, args)),
    }

    def open_request() -> RequestContext:
        opts = parse_argv(args)
        fields["user"] = opts.user
        ctx = RequestContext(opts, env)
        signal.signal(signal.SIGALRM, _give_up)
        signal.alarm(opts.max_time)
        return ctx

    stdin = open(0, "rb", buffering=1 << 20, closefd=False)
    return run_request(
        open_request, stdin, sys.stdout, fields, say=_stderr, warn=_warn, finish=_stop_clock
    )


if __name__ == "__main__":
    sys.exit(main())
