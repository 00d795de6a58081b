"""Results that come back: a live ``--wait``, build logs, and the terminal they reach.

- :func:`stream_remote` runs one tryserver request and hands its output over as it comes.
- :mod:`tryssh.client.display` makes a builder's bytes safe for a terminal.
- :class:`LiveWait` waits for a job with one ``tryserver watch JOB --json`` request (one
  SSH session for the whole wait), optionally follows the builders' logs live, shows the
  tail of a failed builder's log, reconnects after a lost connection, and falls back to
  polling ``status`` (with backoff) on a server that lacks ``watch``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from tryssh.client.display import (
    LineFilter,
    builder_line,
    format_elapsed,
    paint,
    safe_text,
)
from tryssh.client.transport import (
    RECV_SIZE,
    SYSEXITS,
    RemoteFailure,
    _Drain,
    _remote_error,
    tryserver_command,
)
from tryssh.client.wait import WaitTimeout, record_problem, remote_query, wait_for
from tryssh.core.records import FINAL_STATES
from tryssh.errors import (
    EX_NOINPUT,
    EX_NOPERM,
    EX_UNAVAILABLE,
    EX_USAGE,
    TempFail,
    TrysshError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.sshclient import Connection
    from tryssh.client.transport import Destination

HEARTBEAT = 10.0  # the server's watch sends a line at least this often
DEFAULT_TAIL_LINES = 30
ELAPSED_EVERY = 60.0  # seconds of silence before a "still running" line
RECONNECT_MAX = 30.0
FAILED = ("failure", "error")

# -- one streamed request -------------------------------------------------------------------


def stream_remote(
    conn: Connection,
    command: str,
    on_data: Callable[[bytes], None],
    what: str,
    idle: float | None,
) -> tuple[int, bytes]:
    """Run *command*, calling *on_data* with its stdout as it arrives; (exit status, stderr).

    *idle* bounds the silence between two pieces of output (None: wait as long as the
    connection lives). A lost connection or an idle timeout raises TempFail.
    """
    import paramiko

    chan = conn.open_session()
    chan.settimeout(idle)
    try:
        try:
            chan.exec_command(command)
            chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise TempFail(f"{what}: cannot run the command on {conn.target}: {err}") from None
        errors = _Drain(chan.recv_stderr)
        errors.start()
        try:
            while data := chan.recv(RECV_SIZE):
                on_data(data)
        except TimeoutError:
            raise TempFail(f"{what}: nothing from {conn.target} for {idle:g}s") from None
        except (OSError, EOFError, paramiko.SSHException) as err:
            raise TempFail(f"{what}: connection to {conn.target} lost: {err}") from None
        errors.finished.wait(conn.opts.timeout)
        if not chan.status_event.wait(conn.opts.timeout):
            raise TempFail(f"{what}: no exit status from {conn.target}")
        status = chan.recv_exit_status()
        if status == -1:
            raise TempFail(f"{what}: the connection closed without an exit status")
        return status, bytes(errors.data)
    finally:
        chan.close()


class WatchUnsupported(Exception):
    """The server's tryserver does not know ``watch`` (an older tryssh)."""


def _unknown_request(status: int, stderr: bytes) -> bool:
    return status == EX_USAGE and b"unknown request" in stderr


# -- following one builder's log ------------------------------------------------------------


class Follower(threading.Thread):
    """Streams ``log JOB BUILDER --follow`` from where it stopped; ends with the builder."""

    def __init__(self, wait: LiveWait, builder: str) -> None:
        super().__init__(daemon=True, name=f"tryssh-follow-{builder}")
        self.wait = wait
        self.builder = builder
        self.offset = 0
        self.done = False
        self.filter = LineFilter()

    def restart(self) -> Follower:
        """A new thread that goes on from this one's offset (after a reconnect)."""
        again = Follower(self.wait, self.builder)
        again.offset, again.filter = self.offset, self.filter
        return again

    def run(self) -> None:
        conn = self.wait.conn
        if conn is None:
            return
        words = ["log", self.wait.job, self.builder, "--follow"]
        if self.offset:
            words += ["--from", str(self.offset)]

        def on_data(data: bytes) -> None:
            self.offset += len(data)
            for line in self.filter.feed(data):
                self.wait.show_log_line(self.builder, line)

        try:
            status, _err = stream_remote(conn, self.wait.command(*words), on_data,
                                         f"log of {self.builder}", idle=None)  # fmt: skip
        except TrysshError:
            return  # the connection went; the watch notices and restarts us
        for line in self.filter.flush():
            self.wait.show_log_line(self.builder, line)
        self.done = status in (0, 1, 75) or status == EX_NOINPUT


# -- the live wait --------------------------------------------------------------------------


class LiveWait:
    """Wait for *job* over one SSH connection; see the module's docstring."""

    def __init__(
        self,
        dest: Destination,
        connect: Callable[[], Connection],
        job: str,
        echo: Callable[[str], None] | None,
        conn: Connection | None = None,
        follow: bool = False,
        tail_lines: int = DEFAULT_TAIL_LINES,
        color: bool = False,
        timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.dest = dest
        self.connect = connect
        self.job = job
        self.echo = echo
        self.conn = conn
        self.follow = follow
        self.tail_lines = tail_lines
        self.color = color
        self.timeout = timeout
        self.sleep = sleep
        self.seen: dict[str, str] = {}
        self.record: dict[str, Any] | None = None
        self.followers: dict[str, Follower] = {}
        self.started = time.monotonic()
        self.last_output = self.started
        self._buffer = b""
        self._out_lock = threading.Lock()
        self.several = False

    def command(self, *words: str) -> str:
        return tryserver_command(self.dest.tryserver_cmd, self.dest.jobdir, *words)

    def say(self, line: str, result: str | None = None, indent: str = "") -> None:
        """Show *line* made safe for the terminal (nothing a server or build wrote can drive
        it), then in *result*'s colour: the colour codes are the only escapes *echo* gets."""
        if self.echo is not None:
            text = indent + paint(safe_text(line), result, self.color)
            with self._out_lock:
                self.echo(text)
        self.last_output = time.monotonic()

    def show_log_line(self, builder: str, line: str) -> None:
        self.say(f"{builder}| {line}" if self.several else line)

    # -- the wait --

    def run(self) -> dict[str, Any]:
        """Block until the job is final; return its record."""
        deadline = None if self.timeout is None else self.started + self.timeout
        delay = 1.0
        try:
            while True:
                try:
                    if self.conn is None:
                        self.conn = self.connect()
                    record = self._watch(self.conn, deadline)
                    break
                except WatchUnsupported:
                    return self._poll(deadline)
                except TrysshError as err:
                    if err.exit_code in (EX_USAGE, EX_NOINPUT, EX_NOPERM):
                        raise
                    if isinstance(err, WaitTimeout):
                        raise
                    if deadline is not None and time.monotonic() + delay > deadline:
                        raise WaitTimeout(f"gave up waiting after {self.timeout:g}s "
                                       "(--wait-timeout); the job goes on") from None  # fmt: skip
                    self.say(f"connection lost ({err.message}); reconnecting in {delay:g}s")
                    self._drop_connection()
                    self.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
            self._after(record)
            return record
        finally:
            for follower in self.followers.values():
                follower.join(0)

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: S110 - it is gone either way
                pass
        self.conn = None
        self._buffer = b""

    def _watch(self, conn: Connection, deadline: float | None) -> dict[str, Any]:
        for name, follower in list(self.followers.items()):
            if not follower.done and not follower.is_alive():
                self.followers[name] = follower.restart()  # resume after a reconnect
                self.followers[name].start()
        final: list[dict[str, Any]] = []

        def on_data(data: bytes) -> None:
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self._line(line, final)
            if deadline is not None and time.monotonic() > deadline and not final:
                raise WaitTimeout(f"gave up waiting after {self.timeout:g}s (--wait-timeout); "
                               "the job goes on")  # fmt: skip

        idle = max(conn.opts.timeout, 3 * HEARTBEAT)
        if deadline is not None:  # a silent stretch must not outlast --wait-timeout
            idle = max(0.1, min(idle, deadline - time.monotonic()))
        status, stderr = stream_remote(conn, self.command("watch", self.job, "--json"), on_data,
                                       "tryserver watch", idle)  # fmt: skip
        if _unknown_request(status, stderr) or status not in (0, *SYSEXITS):
            raise WatchUnsupported()  # an older tryserver, or not tryssh's at all
        if status != 0:
            raise _remote_error(status, stderr, "tryserver watch")
        if not final:
            raise TempFail("tryserver watch ended before the job was final")
        return final[0]

    def _line(self, line: bytes, final: list[dict[str, Any]]) -> None:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            return  # not ours to show
        if not isinstance(message, dict):
            return
        if "heartbeat" in message:
            now = time.monotonic()
            if now - self.last_output >= ELAPSED_EVERY and self.record is not None:
                elapsed = format_elapsed(now - self.started)
                self.say(f"  ... {self.record.get('state')}, {elapsed} so far")
            return
        if record_problem(message):
            return  # not a record tryssh can read: not ours to show either
        self.show(message)
        if message.get("state") in FINAL_STATES or message.get("followable") is False:
            final.append(message)  # (followable false: the server can never tell more)

    def show(self, record: dict[str, Any]) -> None:
        """Print what changed since the last record (and start log followers)."""
        self.record = record
        state = str(record.get("state"))
        builders = record.get("builders") or {}
        self.several = len(builders) > 1
        if self.seen.get("") != state:
            reason = f" ({record['reason']})" if record.get("reason") else ""
            colour = state if state in FINAL_STATES else None
            self.say(f"job {record.get('job', '')}: {state}{reason}", colour)
            self.seen[""] = state
        for name, info in builders.items():
            info = info or {}
            if self.follow and info.get("state") in ("running", "done") and (
                name not in self.followers
            ):
                follower = Follower(self, name)
                self.followers[name] = follower
                follower.start()
            line = builder_line(name, info)
            if self.seen.get(name) != line:
                result = info.get("result") if info.get("state") == "done" else None
                self.say(line, result, indent="  ")
                self.seen[name] = line

    def _after(self, record: dict[str, Any]) -> None:
        """Once final: let the followers finish, or show the failed builders' logs."""
        if self.follow:
            for follower in self.followers.values():
                follower.join(self.conn.opts.timeout if self.conn else 5)
            # The logs scrolled past a builder that failed early: end on why the job failed.
            for name, info in (record.get("builders") or {}).items():
                if (info or {}).get("result") in FAILED:
                    self.say(builder_line(name, info), info.get("result"), indent="  ")
            return
        for name, info in (record.get("builders") or {}).items():
            if (info or {}).get("result") in FAILED and self.tail_lines > 0:
                self.show_tail(name, info)

    def show_tail(self, name: str, info: dict[str, Any]) -> None:
        conn = self.conn
        if conn is None:
            return
        lines: list[str] = []
        filt = LineFilter()
        try:
            status, _err = stream_remote(
                conn, self.command("log", self.job, name, "--tail", str(self.tail_lines)),
                lambda data: lines.extend(filt.feed(data)), f"log of {name}", conn.opts.timeout,
            )  # fmt: skip
        except TrysshError as err:
            self.say(f"  (cannot fetch the log of {name}: {err.message})")
            return
        if status != 0:
            return  # an older server without 'log': the builder line says enough
        lines.extend(filt.flush())
        self.say(f"--- {name}: last {self.tail_lines} lines of the log ---")
        for line in lines:
            self.say(line)
        self.say(builder_line(name, info), info.get("result"), indent="  ")

    # -- the older server --

    def _poll(self, deadline: float | None) -> dict[str, Any]:
        conn = self.conn

        def fetch() -> dict[str, Any]:
            nonlocal conn
            if conn is None:
                conn = self.conn = self.connect()
            try:
                return remote_query(conn, self.dest, "status", self.job)
            except TempFail:
                self._drop_connection()
                conn = None
                raise
            except RemoteFailure as err:
                if err.remote_status in (-1, None, *SYSEXITS):
                    raise
                # Not tryssh's tryserver (command not found, Buildbot's own): asking again
                # would never answer, and the wait would go on silently for ever.
                raise TrysshError(
                    f"cannot wait for {self.job}: the server has no tryssh tryserver to ask "
                    f"({err.message}); give --tryserver-cmd its path there", EX_UNAVAILABLE,
                ) from None

        timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
        record = wait_for(fetch, timeout, self.say, max_interval=10.0, sleep=self.sleep,
                          on_record=self.show)  # fmt: skip
        self._after(record)
        return record
