"""The four kinds of builder a job can be handed to: command, webhook, forward, buildbot.

Each runner takes a :class:`BuildContext` and returns an :class:`Outcome`; none raises for
an expected failure (a build that fails, a server that answers 500, a jobdir that is
gone): that is a result, written to the build's log file.

- ``command = [argv...]``: run without a shell in a fresh working directory, with a
  timeout that kills the whole process group. Exit 0 is success, any other status is
  failure, a timeout or a program that cannot start is error.
- ``webhook = URL``: POST the job as JSON, signed like GitHub's webhooks
  (``X-Tryssh-Signature-256: sha256=HMAC-SHA256(secret, body)``); 2xx is success, the
  rest is retried with exponential backoff and is error when it keeps failing.
- ``forward = PATH | "ssh://user@host[:port]/jobdir"``: deliver the job into another
  jobdir (a Buildbot master's ``Try_Jobdir``, or another tryssh). tryssh cannot see what
  becomes of it there: the result is ``unknown`` (job state ``delivered``), never success.
- ``buildbot = { jobdir = PATH | "ssh://...", api = URL, builders = [...] }``: deliver the
  job to a Buildbot master, then follow its buildset through Buildbot's REST API
  (:mod:`tryssh.server.buildbot`) and take Buildbot's results as this builder's. A
  cancel asks the master (through the same API) to stop the job's builds.

Forward and buildbot builders that deliver to the same place form one *group*
(:func:`run_group`): a job is sent there once, naming only that receiver's builders
(``remote_names``), so a receiver never sees a builder it lacks and builds nothing twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import IO, Any

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.safetext import redact_in, redact_url
from tryssh.errors import describe_oserror
from tryssh.server.config import Builder, Config
from tryssh.server.httpfetch import fetch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.server.buildbot import Api

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a build that overran
WEBHOOK_TIMEOUT = 30.0  # per request, unless the builder sets timeout
WEBHOOK_RETRIES = 3
BACKOFF_BASE = 0.5  # seconds; doubled after each failed attempt
BACKOFF_MAX = 60.0
RETRY_STATUSES = (408, 425, 429)  # besides 5xx: the other 4xx will not improve on retry


class Outcome:
    """What a builder run came to: a result, its exit status (command) and why."""

    def __init__(
        self,
        result: str,
        exit: int | None = None,
        reason: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.result = result  # success, failure, error, or unknown (delivered elsewhere)
        self.exit = exit
        self.reason = reason
        self.fields = fields or {}  # more for the record's builder entry: url, jobid, ...

    def __repr__(self) -> str:
        return f"Outcome({self.result!r}, exit={self.exit!r}, reason={self.reason!r})"


class BuildContext:
    """Everything a runner needs to know about one build of one job."""

    def __init__(
        self,
        config: Config,
        name: str,
        job: Job,
        job_path: str,
        builder: Builder,
        log_path: str,
        attempt: int = 1,
    ) -> None:
        self.config = config
        self.name = name  # the job's name in the jobdir
        self.job = job
        self.job_path = job_path  # cur/NAME: the original bytes, for forward
        self.builder = builder
        self.log_path = log_path
        self.attempt = attempt
        self.cancelled_by: str | None = None  # set by cancel()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()  # wakes a buildbot follow loop at once

    def cancel(self, by: str) -> None:
        """Stop this build: its whole process group gets SIGTERM, then SIGKILL after
        KILL_GRACE seconds if it is still there (a buildbot build: its follow loop asks
        the master to stop it). Safe from any thread, any time; never blocks."""
        with self._lock:
            if self.cancelled_by is not None:
                return
            self.cancelled_by = by
            proc = self._proc
        self._cancelled.set()
        if proc is not None:
            _stop_group(proc)

    def wait_cancelled(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for a cancel; whether one came."""
        return self._cancelled.wait(timeout)

    def started(self, proc: subprocess.Popen[bytes]) -> bool:
        """Note the build's process; False (and stop it) if a cancel came first."""
        with self._lock:
            self._proc = proc
            cancelled = self.cancelled_by is not None
        if cancelled:
            _stop_group(proc)
        return not cancelled

    def job_fields(self) -> dict[str, Any]:
        """The job's fields, as the webhook body and the environment describe them."""
        job = self.job
        return {
            "job": self.name,
            "builder": self.builder.name,
            "attempt": self.attempt,
            "jobid": job.jobid,
            "branch": job.branch,
            "baserev": job.baserev,
            "patch_level": job.patch_level,
            "repository": job.repository,
            "project": job.project,
            "who": job.who,
            "comment": job.comment,
            "builders": job.builder_names or [],
            "properties": job.properties or {},
        }


def log_path(config: Config, job: str, builder: str) -> str:
    """Where the log of *builder* for *job* goes: ``LOG_DIR/JOB/BUILDER.log``."""
    return os.path.join(config.log_dir, job, f"{builder}.log")


def work_root(config: Config, builder: Builder) -> str:
    """The parent of per-build working directories: the builder's ``workdir`` option, else
    a ``work`` directory next to the log directory."""
    return builder.options.get("workdir") or os.path.join(
        os.path.dirname(config.log_dir.rstrip("/")), "work"
    )


def _open_log(path: str) -> IO[bytes]:
    os.makedirs(os.path.dirname(path), mode=0o2750, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    return open(fd, "wb", buffering=0)


def run(ctx: BuildContext) -> Outcome:
    """Run the build described by *ctx* with the runner of its builder's kind."""
    if ctx.builder.destination is not None:
        outcomes: dict[str, Outcome] = {}
        run_group([ctx], lambda name, outcome: outcomes.setdefault(name, outcome))
        return outcomes[ctx.builder.name]
    runner = RUNNERS[ctx.builder.kind]
    with _open_log(ctx.log_path) as log:
        try:
            outcome = runner(ctx, log)
        except Exception as err:  # a bug in a runner must not kill the consumer's thread
            outcome = Outcome("error", reason=f"internal error: {type(err).__name__}: {err}")
        _note(log, f"result: {outcome.result}" + (f" ({outcome.reason})" if outcome.reason else ""))
    return outcome


def _note(log: IO[bytes], text: str) -> None:
    log.write(f"[tryssh] {text}\n".encode("utf-8", "replace"))


# --- command -------------------------------------------------------------------------


def command_env(ctx: BuildContext, patch_path: str) -> dict[str, str]:
    """The build's environment: PATH from the consumer, the job as TRY_*, the builder's env."""
    job = ctx.job
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "TRY_JOB": ctx.name,
        "TRY_BUILDER": ctx.builder.name,
        "TRY_PATCH": patch_path,
        "TRY_PATCH_LEVEL": str(job.patch_level),
        "TRY_BRANCH": job.branch or "",
        "TRY_BASEREV": job.baserev or "",
        "TRY_WHO": job.who or "",
        "TRY_COMMENT": job.comment or "",
        "TRY_REPOSITORY": job.repository or "",
        "TRY_PROJECT": job.project or "",
        "TRY_PROPERTIES": json.dumps(job.properties or {}),
        "TRY_ATTEMPT": str(ctx.attempt),
    }
    env.update(ctx.builder.options.get("env", {}))
    return env


def run_command(ctx: BuildContext, log: IO[bytes]) -> Outcome:
    argv: list[str] = list(ctx.builder.target)
    root = work_root(ctx.config, ctx.builder)
    os.makedirs(root, mode=0o2770, exist_ok=True)
    build_dir = tempfile.mkdtemp(prefix=f"{ctx.name[:80]}.{ctx.builder.name[:40]}.", dir=root)
    try:
        patch_path = os.path.join(build_dir, "patch")
        with open(patch_path, "wb") as f:
            f.write(ctx.job.patch_body or b"")
        work = os.path.join(build_dir, "work")
        os.mkdir(work)
        _note(log, f"job {ctx.name} builder {ctx.builder.name}: {json.dumps(argv)}")
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                env=command_env(ctx, patch_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills it all
                close_fds=True,
            )
        except OSError as err:
            return Outcome("error", reason=f"cannot run {argv[0]}: {err.strerror}")
        note_group(ctx.log_path, proc.pid)
        ctx.started(proc)
        try:
            status = proc.wait(timeout=ctx.builder.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(
                "error", reason=f"timed out after {ctx.builder.timeout:g}s (process group killed)"
            )
        finally:
            # Whatever the build left running in its group goes too.
            _signal_group(proc.pid, signal.SIGKILL)
            forget_group(ctx.log_path)
        _note(log, f"exit status {status} after {time.monotonic() - start:.2f}s")
        if ctx.cancelled_by is not None:
            return Outcome("cancelled", exit=status, reason=f"cancelled by {ctx.cancelled_by}")
        if status == 0:
            return Outcome("success", exit=0)
        if status < 0:
            return Outcome("failure", exit=status, reason=f"killed by signal {-status}")
        return Outcome("failure", exit=status, reason=f"exit status {status}")
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


# -- a build's process group outlives a consumer killed with -9: found and ended on resume --


def _start_time(pid: int) -> str | None:
    """The process's start time (in clock ticks since boot), which tells a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def note_group(log_path: str, pgid: int) -> None:
    """Remember the running build's process group next to its log (``LOG.pgid``)."""
    # Written aside and renamed: a consumer killed mid-write must not leave an empty note
    # (the orphan it names would then go unseen at the next start).
    try:
        with open(log_path + ".pgid.tmp", "w") as f:
            f.write(f"{pgid} {_start_time(pgid) or '-'}\n")
        os.replace(log_path + ".pgid.tmp", log_path + ".pgid")
    except OSError:
        pass  # only a crash's leftovers go unseen


def forget_group(log_path: str) -> None:
    try:
        os.unlink(log_path + ".pgid")
    except OSError:
        pass


def end_leftover_group(log_path: str) -> int | None:
    """Kill a build left running by a consumer that died; its process group, or None.

    The group is the one noted by :func:`note_group`, and only if its leader is still the
    same process (same start time): a reused pid is never signalled.
    """
    try:
        with open(log_path + ".pgid") as f:
            pid_text, started = f.read().split()
        pgid = int(pid_text)
    except (OSError, ValueError):
        return None
    forget_group(log_path)
    if pgid <= 1 or started == "-" or _start_time(pgid) != started:
        return None
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline and _start_time(pgid) == started:
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    return pgid


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group now, SIGKILL after KILL_GRACE unless the build has ended."""
    _signal_group(proc.pid, signal.SIGTERM)

    def kill() -> None:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)

    timer = threading.Timer(KILL_GRACE, kill)
    timer.daemon = True
    timer.start()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


# --- webhook -------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Tryssh-Signature-256`` value: ``sha256=`` + hex HMAC-SHA256 (GitHub's form)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(path: str) -> bytes:
    """The webhook secret: the file's bytes without the trailing newline."""
    with open(path, "rb") as f:
        return f.read().rstrip(b"\r\n")


def webhook_body(ctx: BuildContext) -> bytes:
    fields = ctx.job_fields()
    fields["patch"] = base64.b64encode(ctx.job.patch_body or b"").decode("ascii")
    fields["patch_encoding"] = "base64"
    return json.dumps(fields).encode("utf-8")


def run_webhook(
    ctx: BuildContext, log: IO[bytes], sleep: Callable[[float], None] = time.sleep
) -> Outcome:
    opts = ctx.builder.options
    body = webhook_body(ctx)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tryssh",
        "X-Tryssh-Event": "try",
        "X-Tryssh-Job": ctx.name,
        "X-Tryssh-Builder": ctx.builder.name,
    }
    if opts.get("secret_file"):
        try:
            headers["X-Tryssh-Signature-256"] = sign(read_secret(opts["secret_file"]), body)
        except OSError as err:
            reason = describe_oserror(err, "read secret_file", opts["secret_file"])
            return Outcome("error", reason=f"cannot {reason}")
    retries = int(opts.get("retries", WEBHOOK_RETRIES))
    timeout = float(opts.get("timeout", WEBHOOK_TIMEOUT))
    url = ctx.builder.target
    shown = redact_url(url)  # reasons and logs reach developers: no credentials in them
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            delay = min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_MAX)
            _note(log, f"retrying in {delay:g}s")
            sleep(delay)
        # The config only admits http:// and https:// URLs here.
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            # The whole exchange within timeout: a receiver that trickles its answer would
            # otherwise hold this builder for as long as it likes.
            status, reply = fetch(request, timeout=timeout, deadline=timeout,
                                  read=_status_and_reply, on_error=_status_and_reply)  # fmt: skip
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = redact_in(str(getattr(err, "reason", err)), url)
            problem = f"POST {shown}: {reason}"
            _note(log, f"attempt {attempt + 1}: {problem}")
            continue
        _note(log, f"attempt {attempt + 1}: POST {shown}: HTTP {status}")
        if reply:
            log.write(reply + b"\n")
        if 200 <= status < 300:
            return Outcome("success", exit=None, reason=f"HTTP {status}")
        problem = f"POST {shown}: HTTP {status}"
        if status < 500 and status not in RETRY_STATUSES:
            break
    return Outcome("error", reason=problem)


def _status_and_reply(response: Any) -> tuple[int, bytes]:
    """A webhook answer's status and the start of its body (shown in the builder's log)."""
    return response.status, response.read(4096)


# --- forward and buildbot: one delivery per receiver ----------------------------------


Done = Callable[[str, Outcome], None]
Progress = Callable[[str, dict[str, Any]], None]


class _GroupLog:
    """The logs of every builder of a group: a note goes to each."""

    def __init__(self, ctxs: list[BuildContext]) -> None:
        self.files = {ctx.builder.name: _open_log(ctx.log_path) for ctx in ctxs}

    def note(self, text: str, name: str | None = None) -> None:
        for key, log in self.files.items():
            if name is None or key == name:
                _note(log, text)

    def close(self) -> None:
        for log in self.files.values():
            log.close()


def forwarded_job(job: Job, names: list[str], jobid: str | None = None) -> bytes:
    """The job as sent to a receiver: only its *names*, Buildbot-safe, maybe a new jobid."""
    from tryssh.core.jobfile import normalise_for_buildbot

    copy = Job(**{f: getattr(job, f) for f in Job.FIELDS if f != "builder_names"},
               builder_names=names)  # fmt: skip
    fields = {k: getattr(copy, k) for k in ("repository", "project", "baserev")}
    normalise_for_buildbot(fields, copy)  # sets what it changes on copy too
    if jobid is not None:
        copy.jobid = jobid
    return encode_job(copy)


def run_group(
    ctxs: list[BuildContext], done: Done, progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep, follow: str | None = None,
) -> None:
    """Deliver the job once for the builders of *ctxs* (one forward or buildbot group) and
    report each builder's outcome through *done* (exactly once each); *progress* hears of
    a build's URL or state while it runs. With *follow* (a jobid: the job was delivered
    before a restart), a buildbot group only follows Buildbot's builds of it."""
    logs = _GroupLog(ctxs)
    reported: set[str] = set()

    def finish(name: str, outcome: Outcome) -> None:
        if name in reported:
            return
        reported.add(name)
        logs.note(f"result: {outcome.result}" + (f" ({outcome.reason})" if outcome.reason
                                                  else ""), name)  # fmt: skip
        done(name, outcome)

    try:
        if ctxs[0].builder.kind == "buildbot":
            _run_buildbot(ctxs, logs, finish, progress or (lambda n, f: None), sleep, follow)
        else:
            _run_forward(ctxs, logs, finish)
    except Exception as err:  # a bug here must not leave builders without a result
        for ctx in ctxs:
            finish(ctx.builder.name,
                   Outcome("error", reason=f"internal error: {type(err).__name__}: {err}"))
    finally:
        for ctx in ctxs:
            finish(ctx.builder.name, Outcome("error", reason="no result (internal error)"))
        logs.close()


def _deliver(ctx: BuildContext, data: bytes, logs: _GroupLog) -> str:
    """Deliver *data* where *ctx*'s builder points; the name it got there. TrysshError."""
    target = ctx.builder.destination
    assert target is not None
    if target.startswith("ssh://"):
        name = _deliver_ssh(ctx, target, data)
    else:
        name = Jobdir(target).deliver_bytes(data)
    logs.note(f"delivered {len(data)} bytes into {target} as {name}")
    return name


def _remote_names(ctxs: list[BuildContext]) -> list[str]:
    names: list[str] = []
    for ctx in ctxs:
        names += [n for n in ctx.builder.remote_names if n not in names]
    return names


def _run_forward(ctxs: list[BuildContext], logs: _GroupLog, finish: Done) -> None:
    from tryssh.errors import TrysshError

    target = ctxs[0].builder.destination
    data = forwarded_job(ctxs[0].job, _remote_names(ctxs))
    try:
        name = _deliver(ctxs[0], data, logs)
    except TrysshError as err:
        for ctx in ctxs:
            finish(ctx.builder.name, Outcome("error", reason=f"cannot deliver into {target}: "
                                             f"{err.message}"))  # fmt: skip
        return
    for ctx in ctxs:
        finish(ctx.builder.name, Outcome(
            "unknown", reason=f"delivered into {target} as {name}; its result is not visible "
            "from here", fields={"delivered_as": name}))  # fmt: skip


def parse_ssh_url(url: str) -> tuple[str | None, str, int | None, str]:
    """``ssh://[user@]host[:port]/path`` as (user, host, port, jobdir).

    The path is absolute (``ssh://h/srv/jobdir`` is ``/srv/jobdir``); ``ssh://h/~/jobdir``
    is relative to the remote home.
    """
    from urllib.parse import urlsplit

    from tryssh.errors import UsageError

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"bad port in {url!r}") from None
    if parts.scheme != "ssh" or not parts.hostname or not parts.path.strip("/"):
        raise UsageError(f"not an ssh://[user@]host[:port]/jobdir URL: {url!r}")
    path = parts.path[1:] if parts.path.startswith("/~") else parts.path
    return parts.username, parts.hostname, port, path


def _deliver_ssh(ctx: BuildContext, target: str, data: bytes) -> str:
    """Deliver over SSH with tryssh's own client (``buildbot tryserver --jobdir X``, which a
    tryssh forced command also accepts); the host key must already be known. The name the
    receiver gave the job ("?" when it did not say: Buildbot's own tryserver)."""
    from tryssh.client.sshclient import SshOptions, connect
    from tryssh.client.transport import deliver_ssh

    opts = ctx.builder.options
    user, host, port, jobdir = parse_ssh_url(target)
    ssh_opts = SshOptions(
        host=host,
        port=port,
        user=user,
        identity=opts.get("identity"),
        known_hosts=opts.get("known_hosts"),
        timeout=min(ctx.builder.timeout, 300.0),
        quiet=True,
    )
    with connect(ssh_opts) as conn:
        receipt = deliver_ssh(conn, data, jobdir, show_progress=False)
    return receipt.job or "?"


# --- buildbot ------------------------------------------------------------------------

PICKUP_TIMEOUT = 120.0  # Buildbot polls its jobdir every 10 s unless master.cfg says less
POLL_INTERVAL = 1.0  # REST polls while a build runs: see README, "Buildbot as the engine"


def _run_buildbot(
    ctxs: list[BuildContext], logs: _GroupLog, finish: Done, progress: Progress,
    sleep: Callable[[float], None], follow: str | None = None,
) -> None:
    """Hand the job to a Buildbot master, then take its builds' results as ours."""
    from tryssh.errors import TrysshError
    from tryssh.server import buildbot

    first = ctxs[0]
    table = first.builder.target
    poll = float(table.get("poll_interval", POLL_INTERVAL))
    try:
        api = buildbot.Api(table["api"], buildbot.read_token(table.get("token_file")),
                           retries=int(table.get("retries", buildbot.RETRIES)),
                           sleep=sleep)  # fmt: skip
    except OSError as err:
        for ctx in ctxs:
            finish(ctx.builder.name, Outcome("error", reason=f"cannot read token_file: "
                                             f"{err.strerror}"))  # fmt: skip
        return

    def fail_all(reason: str) -> None:
        for ctx in ctxs:
            finish(ctx.builder.name, Outcome("error", reason=reason, fields={"jobid": jobid}))

    # Buildbot finds the job again by its jobid: it must be one no other buildset has
    # (a client may send any jobid, even another job's), else the job's name is used.
    jobid = follow or first.job.jobid or first.name
    since = None if follow else time.time()
    try:
        if follow:
            logs.note(f"delivered before a restart: following jobid {jobid} again")
        else:
            if api.buildsets(jobid):
                jobid = first.name
                if api.buildsets(jobid):
                    fail_all(f"Buildbot already has a buildset for {jobid}: not sent again")
                    return
            _deliver(first, forwarded_job(first.job, _remote_names(ctxs), jobid), logs)
    except TrysshError as err:
        fail_all(f"cannot hand the job to Buildbot at {table['api']}: {err.message}")
        return
    logs.note(f"following Buildbot's buildset for jobid {jobid} at {table['api']}")
    for ctx in ctxs:
        progress(ctx.builder.name, {"jobid": jobid})
    start = time.monotonic()
    deadline = start + max(ctx.builder.timeout for ctx in ctxs)
    pickup = start + float(table.get("pickup_timeout", PICKUP_TIMEOUT))
    shown: dict[str, Any] = {}
    stopped_for: str | None = None  # who cancelled, once Buildbot was asked to stop
    tailed: set[str] = set()

    def with_tail(name: str, outcome: Outcome) -> None:
        # _report may finish a builder again while its buildset completes: copy once.
        if outcome.result in ("failure", "error") and name not in tailed:
            tailed.add(name)
            _copy_failed_steps(api, outcome.fields.get("builds") or {}, logs, name)
        finish(name, outcome)

    while True:
        try:
            view = buildbot.job_view(api, jobid, since)
        except TrysshError as err:
            fail_all(f"{err.message} (jobid {jobid})")
            return
        by = first.cancelled_by
        if by is not None and stopped_for is None and view is not None:
            # A cancel: Buildbot is asked once (a stop is not retried blindly), from this
            # thread, never the consumer's main loop; its builds then end CANCELLED.
            stopped_for = by
            if view["state"] == "running":
                note = _stop_buildsets(api, view["bsids"],
                                       f"tryssh job {first.name} cancelled by {by}", logs)
                for ctx in ctxs:
                    progress(ctx.builder.name, {"cancel": note})
        now = time.monotonic()
        if view is None and now > pickup:
            fail_all(f"Buildbot made no buildset for jobid {jobid} within "
                     f"{pickup - start:g}s (is the master reading {first.builder.destination},"
                     " and are the builders in its Try_Jobdir's list?)")  # fmt: skip
            return
        if view is not None:
            builds = view["builders"]
            for name, build in builds.items():
                if shown.get(name) != (build["state"], build["url"]):
                    shown[name] = (build["state"], build["url"])
                    logs.note(f"Buildbot builder {name}: {build['state']}"
                              + (f" {build['url']}" if build["url"] else ""))  # fmt: skip
            for ctx in ctxs:
                _report(ctx, builds, jobid, with_tail, progress, stopped_for)
            if view["state"] != "running":
                for ctx in ctxs:  # names Buildbot never built (not in its list)
                    finish(ctx.builder.name, Outcome(
                        "error", reason="Buildbot built none of "
                        f"{', '.join(ctx.builder.remote_names)}", fields={"jobid": jobid}))
                return
        if now > deadline:
            fail_all(f"no result from Buildbot within {deadline - start:g}s (jobid {jobid})")
            return
        if first.cancelled_by is None:
            first.wait_cancelled(poll)  # a cancel wakes the loop at once
        else:
            sleep(poll)


def _copy_failed_steps(
    api: Api, builds: dict[str, dict[str, Any]], logs: _GroupLog, name: str
) -> None:
    """Copy the tail of each failed Buildbot build's failed step into *name*'s log, so
    that ``tryssh log`` and ``--wait`` show why without opening Buildbot's web UI."""
    from tryssh.errors import TrysshError

    for remote, build in builds.items():
        if build.get("result") not in ("failure", "error") or build.get("buildid") is None:
            continue
        try:
            found = api.failed_step_tail(build["buildid"])
        except TrysshError as err:  # the result stands; only the excerpt is missing
            logs.note(f"Buildbot builder {remote}: cannot read its step logs: {err.message}",
                      name)  # fmt: skip
            continue
        if found is None:
            continue
        step, lines = found
        logs.note(f"Buildbot builder {remote}: step {step!r} failed; the end of its log"
                  f" ({build.get('url')}):", name)  # fmt: skip
        log = logs.files[name]
        log.write("".join(f"{line}\n" for line in lines).encode("utf-8", "replace"))


def _stop_buildsets(api: Api, bsids: list[int], reason: str, logs: _GroupLog) -> str:
    """Ask Buildbot to stop the job's buildsets; one line saying what came of it."""
    from tryssh.server.buildbot import stop_buildsets

    _code, note = stop_buildsets(api, bsids, reason)
    logs.note(f"cancel: {note}")
    return note


def _report(
    ctx: BuildContext, builds: dict[str, dict[str, Any]], jobid: str, finish: Done,
    progress: Progress, stopped_for: str | None = None,
) -> None:
    """Finish *ctx*'s builder once all its Buildbot builds are done (the worst result
    wins; ``cancelled`` when tryssh had Buildbot stop them, *stopped_for* saying who
    asked); until then pass the first build's URL on."""
    mine = [builds[n] for n in ctx.builder.remote_names if n in builds]
    if not mine:
        return
    urls = [b["url"] for b in mine if b["url"]]
    fields: dict[str, Any] = {"jobid": jobid, "url": urls[0] if urls else None,
                              "builds": {n: builds[n] for n in ctx.builder.remote_names
                                         if n in builds}}  # fmt: skip
    if len(mine) < len(ctx.builder.remote_names) or any(b["state"] != "done" for b in mine):
        progress(ctx.builder.name, fields)
        return
    results = [b["result"] for b in mine]
    result = next((r for r in ("error", "failure") if r in results), "success")
    reasons = [b["reason"] for b in mine if b.get("reason")]
    if stopped_for is not None and any(b["buildbot_result"] == "CANCELLED" for b in mine):
        # Stopped at our request: the same result as a cancelled local build.
        result = "cancelled"
        reasons = [f"cancelled by {stopped_for} (Buildbot: CANCELLED)"] + [
            b["reason"] for b in mine if b.get("reason") and b["buildbot_result"] != "CANCELLED"
        ]
    finish(ctx.builder.name, Outcome(result, reason="; ".join(reasons) or None, fields=fields))


RUNNERS: dict[str, Callable[[BuildContext, IO[bytes]], Outcome]] = {
    "command": run_command,
    "webhook": run_webhook,
}
