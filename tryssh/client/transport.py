"""Delivering a job file: over an SSH exec channel, by SFTP into the jobdir, or locally.

* ``ssh``: run ``<tryserver-cmd> tryserver --jobdir X`` (never a pty), stream the job on stdin
  with an explicit EOF, drain stdout and stderr while sending, and check the exit status
  (a missing status is a failure).
* ``scp``: SFTP upload into ``JOBDIR/tmp/NAME``, then posix-rename into ``JOBDIR/new/NAME``.
* ``local``: :meth:`tryssh.core.jobdir.Jobdir.deliver`, the code the server itself uses.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tryssh.errors import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_TEMPFAIL,
    EX_USAGE,
    CannotCreate,
    TempFail,
    TrysshError,
    UsageError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import paramiko

    from tryssh.client.sshclient import Connection
    from tryssh.client.sshoptions import SshOptions
    from tryssh.core.jobfile import EncodedJob

CHUNK = 1 << 20  # bytes per sendall(): large writes keep paramiko's per-call overhead low
PROGRESS_MIN = 4 << 20  # show a progress bar above this size (on a terminal)
SYSEXITS = {EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG}
DEFAULT_TRYSERVER_CMD = "buildbot"
RECEIPT_GRACE = 10.0  # seconds to wait for the receipt after a Ctrl-C that came too late
EX_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


SENT_NOTE = (
    "the bytes sent; the server's audit line and the job's record describe the job as "
    "delivered, whose who the server sets"
)


@dataclass
class Receipt:
    """What a delivery did: the job name (None if the server did not say) and the bytes sent."""

    job: str | None
    size: int
    digest: Callable[[], str]  # the SHA-256 of what was sent, worked out when asked
    transport: str
    host: str | None

    @property
    def sha256(self) -> str:
        # Only --json shows it: hashing a 64 MB job costs ~50 ms of CPU that a plain
        # submission never needs.
        return self.digest()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "job": self.job, "size": self.size, "sha256": self.sha256,
            "transport": self.transport, "host": self.host,
        }  # fmt: skip
        if self.transport == "ssh":
            # The server pins who, so the job it writes (and hashes in its audit line and
            # the job's record) may differ from what was sent: say which one this is.
            out["size_and_sha256_of"] = SENT_NOTE
        return out


class MaybeDelivered(TrysshError):
    """Interrupted after the whole job was sent: it may or may not have been delivered."""

    exit_code = EX_INTERRUPTED


class RemoteFailure(TrysshError):
    """The remote tryserver exited non-zero (or without an exit status)."""

    remote_status: int | None = None  # the remote command's own exit status (-1: none)


# -- progress -------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (only on a terminal, only for big uploads)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled and total > PROGRESS_MIN and sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6) / 1e6
        width = 30
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(
            f"\r{self.label} [{bar}] {done / 1e6:7.1f}/{self.total / 1e6:.1f} MB {rate:6.1f} MB/s"
        )
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- remote command -------------------------------------------------------------------------


def quote_remote_path(path: str) -> str:
    """Quote *path* for the remote shell; a leading ``~/`` stays expandable, as ssh users expect."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~/"
    return shlex.quote(path)


def tryserver_command(tryserver_cmd: str, jobdir: str | None, *words: str) -> str:
    """``<tryserver-cmd> tryserver [--jobdir X] WORDS...``, every word quoted for the shell.

    ``tryserver_cmd`` is Buildbot's ``--buildbotbin`` (``buildbot``); when it already names
    a ``tryserver`` program (``tryserver``, ``/opt/bin/tryserver``) the subcommand is not repeated.
    """
    try:
        program = shlex.split(tryserver_cmd or DEFAULT_TRYSERVER_CMD)
    except ValueError as err:
        raise TrysshError(f"bad --tryserver-cmd {tryserver_cmd!r}: {err}", EX_USAGE) from None
    if not program:
        program = [DEFAULT_TRYSERVER_CMD]
    if program[-1].rsplit("/", 1)[-1] != "tryserver":
        program.append("tryserver")
    text = shlex.join(program)
    if jobdir:
        text += " --jobdir " + quote_remote_path(jobdir)
    if words:
        text += " " + shlex.join(words)
    return text


def _one_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _remote_error(status: int, stderr: bytes, what: str) -> TrysshError:
    message = _one_line(stderr)
    if status == -1:
        detail = f": {message}" if message else ""
        return RemoteFailure(
            f"{what}: the connection closed without an exit status (server killed?){detail}",
            EX_TEMPFAIL,
        )
    code = status if status in SYSEXITS else EX_TEMPFAIL
    if not message:
        message = f"exit status {status}"
    failure = RemoteFailure(f"{what} failed (exit {status}): {message}", code)
    failure.remote_status = status
    return failure


# Large reads: each one shifts what paramiko still holds (up to the window) down.
RECV_SIZE = 1 << 20


class _Drain(threading.Thread):
    """Read one stream of a channel to the end in the background; ``finished`` is set
    then. Wait on that, not on join(): Python 3.11's join() interrupted by Ctrl-C marks a
    thread that still runs as stopped (bpo-45274's fix releases the lock the thread holds),
    and the wait for the receipt after a Ctrl-C then read the server's answer half-done."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.data = bytearray()
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            while True:
                chunk = self.read(RECV_SIZE)
                if not chunk:
                    return
                self.data += chunk
        except BaseException as err:  # timeouts and lost connections are reported by _finish
            self.error = err
        finally:
            self.finished.set()


def run_remote(
    conn: Connection,
    command: str,
    stdin: bytes | Iterable[bytes] | None = None,
    progress: Progress | None = None,
    what: str = "remote tryserver",
) -> tuple[bytes, bytes]:
    """Run *command* on a new exec channel, feeding *stdin*; return (stdout, stderr).

    Raises RemoteFailure for a non-zero or missing exit status, TempFail on a timeout.
    """
    import paramiko

    timeout = conn.opts.timeout
    chan: paramiko.Channel = conn.open_session()
    try:
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise TempFail(f"{what}: cannot run the command on {conn.target}: {err}") from None
        out = _Drain(chan.recv)
        err = _Drain(chan.recv_stderr)
        out.start()
        err.start()
        send_error: BaseException | None = None
        if stdin is not None:
            send_error = _send(chan, stdin, progress)
            if isinstance(send_error, TimeoutError):
                raise TempFail(f"{what}: {conn.target} stopped reading for {timeout:g}s")
        try:
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        try:
            status = _finish(chan, out, err, timeout, what, conn)
        except KeyboardInterrupt:
            if stdin is None or send_error is not None:
                raise
            status = _await_receipt(chan, out, err, what, conn)
        if status != 0:
            raise _remote_error(status, bytes(err.data), what)
        for failure in (send_error, out.error, err.error):
            if failure is not None:
                raise TempFail(f"{what}: connection to {conn.target} failed: {_why(failure)}")
        return bytes(out.data), bytes(err.data)
    finally:
        _quietly(chan.close)


def _quietly(close: Callable[[], object]) -> None:
    """Close without raising: after a Ctrl-C or a dead ProxyCommand the connection may be
    gone, and a second error would bury the first under chained tracebacks."""
    import paramiko

    try:
        close()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _finish(chan: paramiko.Channel, out: _Drain, err: _Drain, timeout: float, what: str,
            conn: Connection, limit: float | None = None) -> int:
    """Wait for the server's answer and exit status; -1 when the connection went away.

    The drains end at EOF, or through the channel's idle timeout for a stuck server;
    *limit* bounds the whole wait (the grace period after a late Ctrl-C).
    """
    end = None if limit is None else time.monotonic() + limit
    for drain in (out, err):
        if not drain.finished.wait(None if end is None else max(0.0, end - time.monotonic())):
            raise TempFail(f"{what}: no answer from {conn.target} within {limit:g}s")
    for failure in (out.error, err.error):
        if isinstance(failure, TimeoutError):
            raise TempFail(f"{what}: no answer from {conn.target} for {timeout:g}s")
    deadline = time.monotonic() + (timeout if end is None else max(0.0, end - time.monotonic()))
    while not chan.status_event.wait(0.05):
        transport = chan.get_transport()
        if chan.closed or transport is None or not transport.is_active():
            return -1  # the connection is gone: no status will ever come
        if time.monotonic() >= deadline:
            raise TempFail(f"{what}: no exit status from {conn.target} within {timeout:g}s")
    return chan.recv_exit_status()


def _await_receipt(chan: paramiko.Channel, out: _Drain, err: _Drain, what: str,
                   conn: Connection) -> int:
    """Ctrl-C after the last byte was sent: the job may already be in; wait briefly for the
    server's receipt rather than leave the developer guessing (a retry would build it twice).
    A second Ctrl-C gives up."""
    transport = chan.get_transport()
    if transport is not None and transport.is_active() and not chan.closed:
        print(f"tryssh: interrupted after the job was sent; waiting up to {RECEIPT_GRACE:g}s "
              "for the server's receipt (Ctrl-C again to stop waiting)", file=sys.stderr,
              flush=True)
        try:
            status = _finish(chan, out, err, RECEIPT_GRACE, what, conn, limit=RECEIPT_GRACE)
        except (KeyboardInterrupt, TempFail):
            status = -1
        if status != -1:
            return status
    raise MaybeDelivered(
        f"interrupted: the job was sent to {conn.target} and may have been delivered; "
        "check the server's job list (tryssh jobs, or tryserver jobs over ssh) before sending "
        "it again"
    ) from None


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__


def _send(
    chan: paramiko.Channel, data: bytes | Iterable[bytes], progress: Progress | None
) -> BaseException | None:
    """Send *data* (bytes, or chunks made as they are sent) in large writes; return the
    error that stopped it, if any.

    A server that refuses the job closes the channel while we send: that is not our error to
    report, its exit status and message are, so the caller carries on and reads them.
    """
    sent = 0
    try:
        for piece in (data,) if isinstance(data, bytes | bytearray) else data:
            view = memoryview(piece)
            done = 0
            while done < len(view):
                chunk = view[done : done + CHUNK]
                chan.sendall(chunk)  # type: ignore[arg-type]
                done += len(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress.update(sent)
    except (OSError, EOFError) as err:
        return err
    finally:
        if progress is not None:
            progress.finish()
    return None


def deliver_ssh(
    conn: Connection,
    data: bytes | EncodedJob,
    jobdir: str | None,
    tryserver_cmd: str = DEFAULT_TRYSERVER_CMD,
    show_progress: bool = True,
) -> Receipt:
    """Send the job to ``tryserver`` on stdin; the receipt names the job if the server did.

    An :class:`~tryssh.core.jobfile.EncodedJob` is encoded while it is sent, so that the
    upload starts at once and the encoding overlaps it.
    """
    command = tryserver_command(tryserver_cmd, jobdir)
    size = len(data) if isinstance(data, bytes) else data.size

    def chunks() -> Iterator[bytes]:
        return iter((data,)) if isinstance(data, bytes) else data.chunks()

    progress = Progress(size, "sending", show_progress)
    stdout, _stderr = run_remote(conn, command, chunks(), progress)
    # tryssh's tryserver prints the job name; Buildbot's prints nothing.
    lines = stdout.decode("utf-8", "replace").split()
    name = lines[0] if lines else None
    # The same bytes again when asked: the job is encoded the same each time.
    return Receipt(name, size, lambda: _sha256_hex(chunks()), "ssh", str(conn.target))


# -- sftp -----------------------------------------------------------------------------------


def _sftp_path(path: str) -> str:
    # sftp paths are relative to the login directory: "~/x" means "x".
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


def deliver_scp(conn: Connection, data: bytes, jobdir: str, show_progress: bool = True) -> Receipt:
    """Upload into ``JOBDIR/tmp/NAME`` and posix-rename into ``JOBDIR/new/NAME``."""
    import paramiko

    from tryssh.core.jobdir import unique_name

    if not jobdir:
        raise TrysshError("-c scp needs --jobdir (the jobdir on the server)", EX_USAGE)
    base = _sftp_path(jobdir).rstrip("/") or "/"
    name = unique_name()
    tmp = f"{base}/tmp/{name}"  # noqa: S108 (the jobdir's tmp/, on the server)
    new = f"{base}/new/{name}"
    sftp = conn.open_sftp()
    progress = Progress(len(data), "uploading", show_progress)
    try:
        for sub in ("tmp", "new"):
            try:
                sftp.stat(f"{base}/{sub}")
            except OSError:
                raise CannotCreate(
                    f"{jobdir}/{sub} does not exist on {conn.target}: is {jobdir} a jobdir?"
                ) from None
        try:
            # "x": O_EXCL, never write into another delivery's file.
            with sftp.open(tmp, "wbx") as remote:
                remote.set_pipelined(True)
                view = memoryview(data)
                step = 32768 * 8
                for start in range(0, len(view), step):
                    remote.write(bytes(view[start : start + step]))
                    progress.update(min(start + step, len(view)))
                remote.chmod(0o640)
                remote.flush()
            progress.finish()
            sftp.posix_rename(tmp, new)
        except BaseException as err:
            progress.finish()
            try:
                sftp.remove(tmp)
            except (OSError, paramiko.SSHException, EOFError):
                pass
            if isinstance(err, TrysshError):
                raise
            if isinstance(err, (OSError, paramiko.SSHException, EOFError)):
                code = EX_NOPERM if isinstance(err, PermissionError) else EX_TEMPFAIL
                raise TrysshError(
                    f"sftp upload to {conn.target}:{jobdir} failed: {_why(err)}", code
                ) from None
            raise
    finally:
        sftp.close()
    return Receipt(name, len(data), lambda: _sha256_hex((data,)), "scp", str(conn.target))


# -- local ----------------------------------------------------------------------------------


def deliver_local(data: bytes, jobdir: str) -> Receipt:
    """Deliver into a jobdir on this machine with the server's own code."""
    import os

    from tryssh.core.jobdir import Jobdir, write_all

    if not jobdir:
        raise TrysshError("-c local needs --jobdir", EX_USAGE)
    target = Jobdir(os.path.expanduser(jobdir))
    target.check()
    try:
        name, _ = target.deliver(lambda fd: write_all(fd, data))
    except OSError as err:
        from tryssh.errors import exit_code_for_oserror

        raise TrysshError(
            f"cannot deliver into {jobdir}: {err.strerror or err}", exit_code_for_oserror(err)
        ) from None
    return Receipt(name, len(data), lambda: _sha256_hex((data,)), "local", None)


def _sha256_hex(chunks: Iterable[bytes]) -> str:
    """The SHA-256 of what was sent, for a Receipt."""
    import hashlib  # OpenSSL's: loaded only when someone reads the digest (--json)

    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()


# -- choosing the transport ------------------------------------------------------------------

TRANSPORTS = ("ssh", "scp", "local")


@dataclass
class Destination:
    """Where to send: the transport and its options."""

    connect: str = "ssh"
    ssh: SshOptions | None = None
    jobdir: str | None = None
    tryserver_cmd: str = DEFAULT_TRYSERVER_CMD
    progress: bool = True
    config: str | None = None  # the master's config, for -c local --wait / status


def open_connection(dest: Destination) -> Connection:
    from tryssh.client.sshclient import connect

    if dest.ssh is None or not dest.ssh.host:
        raise UsageError(f"-c {dest.connect} needs --host (or try_host in the options file)")
    return connect(dest.ssh)


class EarlyConnection:
    """The SSH connection to *dest*, opened in a thread while the caller builds the job.

    Connecting is mostly waiting (DNS, the key exchange, the server's checks) and building
    a job is mostly VCS subprocesses and reading files: side by side, the command takes
    about the longer of the two, not their sum. The connection never asks on the terminal
    from the thread (the job's summary may be printing): a key that needs its passphrase
    is opened again by :meth:`get`, in order.
    """

    def __init__(self, dest: Destination) -> None:
        import dataclasses

        assert dest.ssh is not None
        self.dest = dest
        self._opts = dataclasses.replace(dest.ssh, interactive=False)
        self._conn: Connection | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._abandoned = False  # close() came first: the thread closes what it opens
        self._thread = threading.Thread(target=self._run, name="tryssh-connect", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from tryssh.client.sshclient import NeedsPassphrase, connect

        try:
            conn = connect(self._opts)
        except NeedsPassphrase:
            return  # get() connects again and asks
        except BaseException as err:  # raised by get(), in the caller's thread
            self._error = err
            return
        with self._lock:
            if not self._abandoned:
                self._conn = conn
                return
        conn.close()

    def get(self) -> Connection:
        """The open connection; the error that stopped it, raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._conn if self._conn is not None else open_connection(self.dest)

    def close(self) -> None:
        """Close the connection, or have the thread close it when it opens: a job that
        could not be built reports that at once, not after a slow host's handshake."""
        with self._lock:
            self._abandoned = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def deliver(data: bytes | EncodedJob, dest: Destination, conn: Connection | None) -> Receipt:
    """Deliver *data* with the chosen transport (*conn* is open for ssh and scp). Over ssh
    an :class:`EncodedJob` is encoded as it is sent."""
    if dest.connect == "local":
        if not dest.jobdir:
            raise UsageError("-c local needs --jobdir (the jobdir on this machine)")
        return deliver_local(bytes(data), dest.jobdir)
    assert conn is not None
    if dest.connect == "scp":
        if not dest.jobdir:
            raise UsageError("-c scp needs --jobdir (the jobdir on the server)")
        return deliver_scp(conn, bytes(data), dest.jobdir, show_progress=dest.progress)
    if dest.connect == "ssh":
        return deliver_ssh(conn, data, dest.jobdir, dest.tryserver_cmd, show_progress=dest.progress)
    raise UsageError(f"unknown transport {dest.connect!r} (use ssh, scp or local)")
