"""``tryssh serve``: an embedded SSH server (paramiko) that only speaks the tryserver language.

It is Buildbot's ``Try_Userpass`` idea with SSH's security: developers are ``[users.NAME]``
entries of the config (public keys and/or a scrypt password hash), not system accounts.
Each connection gets a paramiko Transport; each exec request runs ``tryserver.handle`` in its
own thread with the authenticated user pinned as ``who``. Everything else (shells, ptys,
forwarding, agents, X11, subsystems, env) is refused, and a refused command gets a
one-line message and exit status 64, like the forced command.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from tryssh.core import defaults
from tryssh.core.logfmt import ERR, INFO, NOTICE, EventLog
from tryssh.core.netaddr import format_address, parse_listen
from tryssh.core.request import CommandRefused
from tryssh.core.sshkeys import BadPublicKey, blob_fingerprint, parse_public_key
from tryssh.errors import (
    EX_SOFTWARE,
    ConfigError,
    PermissionDenied,
    TempFail,
    TrysshError,
    describe_oserror,
)
from tryssh.server.audit import AuditLog
from tryssh.server.config import SERVE_POSITIVE, Config, parse_max_startups
from tryssh.server.passwords import hash_password, parse_hash, verify_password
from tryssh.server.tryserver import Options, RequestContext, clip, run_request

MAX_SESSIONS = 10  # channels per connection, like sshd's MaxSessions
DROP_LOG_EVERY = 10.0  # seconds between two "refused" lines for one address
POLL = 0.25  # how often the accept loop and the connection watchdogs look at their flags
# Password checks at once: each scrypt costs ~32 MiB, so a burst of guesses must queue
# instead of adding up (a burst of 32 took the server to 964 MB before this bound).
HASH_SLOTS = 2
HASH_WAIT = 10.0  # seconds an attempt waits for a slot before it fails (not counted as a guess)
STOP_GRACE = 2.0  # seconds a client has to hang up after its last request when we stop


# -- settings ---------------------------------------------------------------------------------


@dataclass
class Settings:
    """The ``[serve]`` table with its defaults filled in."""

    host: str = defaults.SERVE_HOST
    port: int = defaults.SERVE_PORT
    host_key: str = ""
    max_auth_tries: int = 6
    max_auth_failures_per_address: int = 10
    auth_penalty_seconds: float = 60.0
    max_connections: int = 32
    idle_timeout: float = 300.0
    banner: str | None = None
    login_grace_time: float = 60.0  # accept to authenticated, however the bytes trickle in
    max_request_time: float = 3600.0  # one request, however the bytes trickle in
    max_auth_failures: int = 60  # failed passwords from all addresses per penalty window
    per_source_max_startups: int = 8  # unauthenticated connections from one address
    max_startups: tuple[int, int, int] = (10, 30, 20)  # like sshd's MaxStartups start:rate:full
    stop_timeout: float = 60.0  # seconds requests in flight get to finish after SIGTERM

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        """The settings of a config (which :mod:`tryssh.server.config` checked already)."""
        serve = config.serve
        host, port = parse_listen(serve.get("listen", defaults.SERVE_LISTEN))
        settings = cls(
            host=host,
            port=port,
            host_key=serve.get("host_key")
            or os.path.join(config.state_dir, defaults.SERVE_HOST_KEY),
            banner=serve.get("banner"),
        )
        for key in SERVE_POSITIVE:
            if key in serve:
                setattr(settings, key, serve[key])
        if "max_startups" in serve:
            settings.max_startups = parse_max_startups(serve["max_startups"])
        return settings


# -- keys -------------------------------------------------------------------------------------


def load_host_key(path: str) -> tuple[paramiko.PKey, bool]:
    """The host key at *path*, generated (ed25519, mode 0600) if missing; (key, created)."""
    created = False
    if not os.path.exists(path):
        if os.path.isdir(os.path.dirname(os.path.abspath(path))):
            check_key_place(path, None)  # never generate a key where others could swap it
        _generate_host_key(path)
        created = True
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise ConfigError(
            f"host key {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    check_key_place(path, st)
    try:
        key = paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as err:
        raise ConfigError(f"cannot load host key {path}: {err}") from None
    pub = path + ".pub"
    if not os.path.exists(pub):
        # Scripts build known_hosts lines from it (the demo does).
        _write_public(pub, f"{key.get_name()} {key.get_base64()} tryssh-serve\n".encode())
    return key, created


def refuse_old_default_key(config: Config) -> None:
    """ConfigError when [serve] host_key is not set, no key is at the default place yet, but
    one is at the old default, ``STATE_DIR/ssh_host_ed25519_key``.

    Generating a new key there would change the server's identity under every developer's
    known_hosts; using the old one would trust a key the group could have swapped.
    """
    if config.serve.get("host_key"):
        return
    new = os.path.join(config.state_dir, defaults.SERVE_HOST_KEY)
    old = os.path.join(config.state_dir, os.path.basename(defaults.SERVE_HOST_KEY))
    if os.path.lexists(old) and not os.path.lexists(new):
        raise ConfigError(
            f"host key {old} is at the old default place, which the jobdir's group may "
            f"write: check it was not swapped, then move it and its .pub into "
            f"{os.path.dirname(new)}/ (mode 0700, owned by this account), or set "
            "[serve] host_key"
        )


def check_key_place(path: str, st: os.stat_result | None) -> None:
    """ConfigError unless the key and its directory are the service account's alone.

    Anyone who can write the directory can replace the key (and so impersonate the server
    to every developer): sshd's StrictModes, for the host key.
    """
    directory = os.path.dirname(os.path.abspath(path))
    dst = os.stat(directory)
    me = os.geteuid()
    if (st is not None and st.st_uid != me) or dst.st_uid != me or dst.st_mode & 0o022:
        raise ConfigError(
            f"host key {path}: it and its directory must belong to this account and its "
            f"directory be writable by it alone (directory mode {dst.st_mode & 0o7777:o}): "
            f"move it to a directory of mode 0700 and set [serve] host_key"
        )


def _write_public(path: str, data: bytes) -> None:
    """Write a public file with mode 0644 whatever the umask (000 would make it 0666)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o644)
        f.write(data)


def make_private_dirs(path: str, mode: int = 0o750) -> None:
    """``mkdir -p`` whose new directories get *mode*, whatever the umask (000: 0777)."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        os.chmod(directory, mode)


def _generate_host_key(path: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    make_private_dirs(os.path.dirname(os.path.abspath(path)), 0o700)
    private = Ed25519PrivateKey.generate()
    data = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    # O_EXCL: two servers starting at once must not overwrite each other's key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    _write_public(path + ".pub", public + b" tryssh-serve\n")


@dataclass
class Account:
    """An explicit ``[users.NAME]`` entry: who may log in, and how."""

    name: str
    keys: dict[bytes, str]  # blob -> fingerprint
    password_hash: str | None


def accounts_from_config(config: Config) -> dict[str, Account]:
    """Users that can authenticate; ``users."*"`` is a policy fallback, never an identity."""
    accounts: dict[str, Account] = {}
    for name, policy in config.users.items():
        if name == "*":
            continue
        keys: dict[bytes, str] = {}
        for i, line in enumerate(policy.keys):
            try:
                key = parse_public_key(line)
            except BadPublicKey as err:
                raise ConfigError(f"{config.path}: users.{name}.keys[{i}]: {err.message}") from None
            keys[key.blob] = key.fingerprint
        if policy.password_hash is not None:
            try:
                parse_hash(policy.password_hash)
            except ConfigError as err:
                raise ConfigError(
                    f"{config.path}: users.{name}.password_hash: {err.message}"
                ) from None
        accounts[name] = Account(name, keys, policy.password_hash)
    return accounts


# -- logging and rate limits ------------------------------------------------------------------


class Log:
    """Messages on stderr, as the consumer's events (one logfmt writer), plus the audit log."""

    def __init__(self, audit: AuditLog | None, events: EventLog | None = None) -> None:
        self.audit = audit
        self.events = events or EventLog()

    def say(self, message: str, priority: int = INFO) -> None:
        # format_value quotes the message: no client's control character reaches a terminal.
        self.events(priority, msg=message)

    def record(self, **fields: object) -> None:
        if self.audit is None:
            return
        try:
            self.audit.write(**fields)
        except OSError as err:
            self.say(f"cannot {describe_oserror(err, 'write audit log', self.audit.path)}")


class AuthLimiter:
    """Failed password checks: per source address (with a lockout) and for all addresses.

    An attempt is reserved with :meth:`begin` before its hash is computed and settled with
    :meth:`end`: attempts in flight count against the limits, so parallel connections cannot
    get more guesses evaluated than the limit (32 at once got 40 past a limit of 10 when only
    finished failures counted).
    """

    SWEEP_AT = 1024  # addresses tracked before forgiven ones are swept out

    def __init__(
        self,
        max_failures: int,
        penalty: float,
        clock: Callable[[], float] = time.monotonic,
        max_global_failures: int = 0,
    ) -> None:
        self.max_failures = max_failures
        self.penalty = penalty
        self.clock = clock
        self.max_global_failures = max_global_failures  # 0: no global limit
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._global: deque[float] = deque()
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def configure(self, max_failures: int, penalty: float, max_global_failures: int) -> None:
        """New limits (a reload); the failures and lockouts counted so far stay."""
        with self._lock:
            self.max_failures = max_failures
            self.penalty = penalty
            self.max_global_failures = max_global_failures

    def locked(self, address: str) -> float:
        """Seconds the address stays locked out (0 if it may try)."""
        with self._lock:
            return self._locked_left(address, self.clock())

    def _locked_left(self, address: str, now: float) -> float:
        left = self._locked_until.get(address, 0.0) - now
        if left <= 0:
            self._locked_until.pop(address, None)
            return 0.0
        return left

    def begin(self, address: str) -> str | None:
        """Reserve one password check for *address*; None if it may go on, else why not."""
        now = self.clock()
        with self._lock:
            if self._locked_left(address, now):
                return "address locked out"
            recent = self._failures.get(address, ())
            fresh = sum(1 for t in recent if t >= now - self.penalty)
            in_flight = self._in_flight.get(address, 0)
            if fresh + in_flight >= self.max_failures:
                return "too many attempts in flight from this address"
            if self.max_global_failures:
                while self._global and self._global[0] < now - self.penalty:
                    self._global.popleft()
                if len(self._global) + sum(self._in_flight.values()) >= self.max_global_failures:
                    return "too many failed logins from all addresses"
            self._in_flight[address] = in_flight + 1
            return None

    def end(self, address: str, ok: bool | None) -> bool:
        """Settle a reserved check (None: never evaluated); True if it just locked *address*."""
        with self._lock:
            left = self._in_flight.get(address, 0) - 1
            if left > 0:
                self._in_flight[address] = left
            else:
                self._in_flight.pop(address, None)
        if ok is None:
            return False
        if ok:
            self.success(address)
            return False
        return self.failure(address)

    def failure(self, address: str) -> bool:
        """Count one failure; True if it just locked the address out."""
        now = self.clock()
        with self._lock:
            self._global.append(now)
            recent = self._failures.setdefault(address, deque())
            recent.append(now)
            # Failures older than the penalty window are forgiven.
            while recent and recent[0] < now - self.penalty:
                recent.popleft()
            if len(recent) >= self.max_failures:
                self._locked_until[address] = now + self.penalty
                del self._failures[address]
                return True
            if len(self._failures) > self.SWEEP_AT:
                # Forget addresses whose failures are all forgiven: memory stays bounded
                # by the addresses that failed within one penalty window.
                stale = [a for a, q in self._failures.items() if q[-1] < now - self.penalty]
                for gone in stale:
                    del self._failures[gone]
            return False

    def success(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


# -- channel adapters -------------------------------------------------------------------------


class RequestClock:
    """A request's two timeouts: idle (no traffic) and a hard deadline (``max_request_time``).

    The idle timeout restarts on every byte; the deadline does not, so a client trickling a
    byte now and then cannot hold a request (and its slot) for ever.
    """

    def __init__(self, channel: paramiko.Channel, idle: float, max_time: float) -> None:
        self.channel = channel
        self.idle = idle
        self.max_time = max_time
        self.deadline = time.monotonic() + max_time

    def arm(self) -> None:
        """Set the channel's timeout for the next read or write; TempFail once past the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.expired()
        self.channel.settimeout(min(self.idle, left))

    def expired(self) -> None:
        if time.monotonic() >= self.deadline:
            raise TempFail(f"request took longer than {self.max_time:g} s; gave up")


class _ChannelEnd:
    """One direction of a request's channel: every transfer re-arms the request's clock and
    marks the connection active."""

    def __init__(
        self, channel: paramiko.Channel, touch: Callable[[], None], clock: RequestClock
    ) -> None:
        self.channel = channel
        self.touch = touch
        self.clock = clock


class ChannelStdin(_ChannelEnd):
    """The channel's data as a binary stdin: ``read(n)`` returns b"" at EOF."""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        self.clock.arm()
        try:
            data = self.channel.recv(size)
        except TimeoutError:
            self.clock.expired()
            raise TempFail(f"no input for {self.clock.idle:g} s: idle timeout") from None
        if data and len(data) < size and self.channel.recv_ready():
            # Take what else has come already, up to size: the job's reader pays per
            # call, and a packet is only 32 KiB.
            parts = [data]
            got = len(data)
            while got < size and self.channel.recv_ready():
                more = self.channel.recv(size - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.touch()
        return data


class ChannelStdout(_ChannelEnd):
    """The channel's data as a text stdout (``buffer``: the same channel, for bytes)."""

    @property
    def buffer(self) -> ChannelStdout:
        return self

    def write(self, text: str | bytes) -> int:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.clock.arm()
        try:
            self.channel.sendall(data)
        except TimeoutError:
            self.clock.expired()
            raise TempFail("client stopped reading: idle timeout") from None
        self.touch()
        return len(text)

    def flush(self) -> None:
        pass


# -- one connection ---------------------------------------------------------------------------


class ClientHandler(paramiko.ServerInterface):
    """One client connection: its authentication, its channels and their worker threads."""

    def __init__(self, server: EmbeddedServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.settings = server.settings
        self.log = server.log
        self.sock = sock
        self.peer = peer  # "ip:port"
        self.address = peer.rsplit(":", 1)[0]  # rate limits are per address, not per port
        self.user: str | None = None
        self.method: str | None = None
        self.key_fp: str | None = None
        self.tries = 0
        self.failures = 0
        self.requests = 0
        self.outcome = "closed"
        self.close_reason: str | None = None
        self.lockout_logged = False
        self.started = time.monotonic()
        self.last_activity = self.started
        self.wake = threading.Event()
        self.workers: dict[int, threading.Thread] = {}
        self.channels: dict[int, paramiko.Channel] = {}
        self.pty_refused: set[int] = set()  # channels whose session ended with a refused pty
        self._lock = threading.Lock()
        self.transport: paramiko.Transport | None = None

    # -- activity ----------------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def close_soon(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self.wake.set()

    @property
    def authenticated(self) -> bool:
        transport = self.transport
        return self.user is not None or (transport is not None and transport.is_authenticated())

    def expire(self, reason: str) -> None:
        """Close at once, from another thread: paramiko's own timeouts restart on every byte."""
        self.close_soon(reason)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- authentication ----------------------------------------------------------------------

    def get_allowed_auths(self, username: str) -> str:
        # The same answer for every name: it must not tell which users exist.
        return "publickey,password" if self.server.any_password else "publickey"

    def get_banner(self) -> tuple[str | None, str | None]:
        if self.settings.banner:
            return self.settings.banner.rstrip("\n") + "\n", "en-US"
        return None, None

    def _count_try(self) -> bool:
        """Count an attempt; False (and close) once the connection has used them all."""
        self.touch()
        self.tries += 1
        if self.tries > self.settings.max_auth_tries:
            self.close_soon("too many authentication attempts")
            return False
        return True

    def _locked_out(self) -> bool:
        left = self.server.limiter.locked(self.address)
        if left and not self.lockout_logged:
            self.lockout_logged = True
            self.log.say(
                f"{self.peer}: authentication refused: {self.address} is locked out for "
                f"{left:.0f} more s after too many failed logins"
            )
        if left:
            self.outcome = "locked out"
        return bool(left)

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        # Called for the client's "would this key do?" query and again with the signature.
        if self._locked_out():
            return paramiko.AUTH_FAILED
        account = self.server.accounts.get(username)
        fp = account.keys.get(key.asbytes()) if account else None
        if fp is None:
            self.failures += 1
            if not self._count_try():
                return paramiko.AUTH_FAILED
            self.outcome = "auth failed"
            return paramiko.AUTH_FAILED
        self.touch()
        self.method, self.key_fp = "publickey", fp
        return paramiko.AUTH_SUCCESSFUL

    def check_auth_password(self, username: str, password: str) -> int:
        if self._locked_out() or not self._count_try():
            return paramiko.AUTH_FAILED
        limiter = self.server.limiter
        why = limiter.begin(self.address)
        if why is not None:
            # Refused before any hashing: a guess that is not evaluated cannot succeed.
            self.failures += 1
            self.outcome = "auth refused"
            self.log.say(f"{self.peer}: password attempt for {username!r} refused: {why}")
            self.log.record(
                event="auth", outcome="refused", method="password", user=username,
                reason=why, **{"from": self.peer},
            )  # fmt: skip
            return paramiko.AUTH_FAILED
        ok: bool | None = None
        try:
            ok = self._check_password(username, password)
        finally:
            locked = limiter.end(self.address, ok)
        if ok is None:
            return paramiko.AUTH_FAILED
        if ok:
            self.method, self.key_fp = "password", None
            return paramiko.AUTH_SUCCESSFUL
        self.failures += 1
        self.outcome = "auth failed"
        self.log.record(
            event="auth", outcome="failed", method="password", user=username, **{"from": self.peer}
        )
        if locked:
            self.log.say(
                f"{self.peer}: {self.settings.max_auth_failures_per_address} failed logins from "
                f"{self.address}: locked out for {self.settings.auth_penalty_seconds:g} s"
            )
            self.log.record(
                event="lockout",
                address=self.address,
                seconds=self.settings.auth_penalty_seconds,
                **{"from": self.peer},
            )
        return paramiko.AUTH_FAILED

    def _check_password(self, username: str, password: str) -> bool | None:
        """True/False once checked; None if no hashing slot freed up in time (not a guess)."""
        if not self.server.hash_slots.acquire(timeout=HASH_WAIT):
            self.log.say(f"{self.peer}: password check for {username!r} dropped: server busy")
            return None
        try:
            account = self.server.accounts.get(username)
            encoded = account.password_hash if account else None
            # Unknown users cost the same scrypt as known ones: timing must not name users.
            checked = verify_password(password, encoded or self.server.dummy_hash)
            return checked and encoded is not None
        finally:
            self.server.hash_slots.release()

    # -- channels: only "session", and only exec on it -------------------------------------------

    def _refuse(self, what: str) -> None:
        self.touch()
        self._note_authenticated()
        self.log.say(f"{self.peer} {self.user or '-'}: refused {what}")
        self.log.record(event="refused", user=self.user, what=what, **{"from": self.peer})

    def check_channel_request(self, kind: str, chanid: int) -> int:
        self.touch()
        self._note_authenticated()  # channels only open after authentication
        if kind != "session":
            self._refuse(f"channel type {kind}")
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        # Decide under the lock, log outside it: _refuse takes the lock too (not reentrant).
        with self._lock:
            full = self._open_sessions() >= MAX_SESSIONS
        if full or self.server.stopping.is_set():
            self._refuse("session (too many sessions)" if full else "session (server stopping)")
            return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
        return paramiko.OPEN_SUCCEEDED

    def _open_sessions(self) -> int:
        """Channels still open or still running a request (call with the lock held).

        paramiko queues every opened channel for ``accept()``; taking them here keeps that
        queue empty and lets a channel closed without a request stop counting.
        """
        transport = self.transport
        while transport is not None and (channel := transport.accept(0)) is not None:
            self.channels[channel.get_id()] = channel
        self.channels = {i: c for i, c in self.channels.items() if not c.closed}
        return len(self.channels.keys() | self.workers.keys())

    def check_channel_direct_tcpip_request(self, chanid: int, origin: Any, destination: Any) -> int:
        self._refuse(f"port forwarding to {destination[0]}:{destination[1]}")
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_port_forward_request(self, address: str, port: int) -> bool:
        self._refuse(f"remote port forwarding from {address}:{port}")
        return False

    def check_global_request(self, kind: str, msg: Any) -> bool:
        return False  # keepalives get a failure reply, which is all they need

    def check_channel_pty_request(self, channel: Any, *args: Any) -> bool:
        self._refuse("pty")
        # The client failed (OpenSSH's ssh -tt exits 255): its session ends here, whatever it
        # asks next, as with sshd. Before, the exec that follows delivered the job anyway.
        with self._lock:
            self.pty_refused.add(channel.get_id())
        return False

    def check_channel_shell_request(self, channel: Any) -> bool:
        self._refuse("shell (interactive sessions are not allowed; run 'tryserver')")
        return False

    def check_channel_subsystem_request(self, channel: Any, name: str) -> bool:
        self._refuse(f"subsystem {name}")
        return False

    def check_channel_x11_request(self, channel: Any, *args: Any) -> bool:
        self._refuse("X11 forwarding")
        return False

    def check_channel_forward_agent_request(self, channel: Any) -> bool:
        self._refuse("agent forwarding")
        return False

    def check_channel_env_request(self, channel: Any, name: bytes, value: bytes) -> bool:
        shown = name.decode("utf-8", "replace")[:40] if isinstance(name, bytes) else str(name)
        self._refuse(f"env {shown}")
        return False

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.touch()
        worker = None
        with self._lock:
            refused = channel.get_id() in self.pty_refused
            if not refused and channel.get_id() not in self.workers and self.user is not None:
                # Accept even a bad command: the worker answers it with a message and exit
                # 64, as the forced command does, instead of a bare "exec request failed".
                worker = threading.Thread(
                    target=self._run_exec,
                    args=(channel, command),
                    name=f"tryssh-exec-{self.peer}-{channel.get_id()}",
                    daemon=True,
                )
                self.workers[channel.get_id()] = worker
                self.requests += 1
        if refused:
            self._refuse("exec after a refused pty")
        # Not started here: paramiko sends the reply that accepts the exec only after this
        # returns, and a fast worker would otherwise send its exit status and close the
        # channel first (the client then sees "Channel closed"). _channel_request starts it.
        return worker is not None

    def _channel_request(self, channel: paramiko.Channel, message: paramiko.Message) -> None:
        """paramiko's handler of a channel request, then the exec's worker, if one waits.

        Installed in the transport's handler table: it runs in the transport's thread, so
        by the time ``Channel._handle_request`` returns its reply has been sent.
        """
        paramiko.Channel._handle_request(channel, message)
        with self._lock:
            worker = self.workers.get(channel.get_id())
            start = worker is not None and worker.ident is None
        if start:
            assert worker is not None
            worker.start()

    def _run_exec(self, channel: paramiko.Channel, command: bytes) -> None:
        user = self.user
        assert user is not None
        fields: dict[str, object] = {
            "user": user,
            "from": self.peer,
            "auth": self.method,
            "key": self.key_fp,
            "cmd": clip(command.decode("utf-8", "replace")),
        }
        config = self.server.config
        audit = self.log.audit

        def open_request() -> RequestContext:
            try:
                text = command.decode("utf-8")
            except UnicodeDecodeError:
                raise CommandRefused("command refused: not UTF-8") from None
            # The identity is the authenticated user; the jobdir and limits are the config's.
            # The command is parsed exactly as sshd's forced command parses it.
            opts = Options(jobdir=config.jobdir, user=user, config=config.path)
            env = {"SSH_ORIGINAL_COMMAND": text}
            return RequestContext(opts, env=env, config=config, audit=audit)

        clock = RequestClock(channel, self.settings.idle_timeout, self.settings.max_request_time)
        channel.settimeout(self.settings.idle_timeout)
        code = EX_SOFTWARE
        try:
            code = run_request(
                open_request,
                ChannelStdin(channel, self.touch, clock),  # type: ignore[arg-type]
                ChannelStdout(channel, self.touch, clock),  # type: ignore[arg-type]
                fields,
                say=lambda line: self._send_stderr(channel, line + "\n"),
                warn=self.log.say,
                audit=audit,
                gone=(OSError, EOFError, paramiko.SSHException),
            )
        finally:
            self.log.say(
                f"{self.peer} {user}: {fields.get('verb', 'request')} "
                f"{fields.get('outcome')} exit={code}"
                + (f" job={fields['job']}" if fields.get("job") else "")
                + (f" ({fields['reason']})" if fields.get("reason") else "")
            )
            try:
                channel.send_exit_status(code)
                channel.shutdown_write()
                channel.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
            with self._lock:
                self.workers.pop(channel.get_id(), None)
            self.touch()
            self.wake.set()

    @staticmethod
    def _send_stderr(channel: paramiko.Channel, text: str) -> None:
        try:
            channel.sendall_stderr(text.encode("utf-8"))
        except (OSError, EOFError, paramiko.SSHException):
            pass

    # -- the connection's life -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._serve()
        except Exception:  # never let one client take the server down
            import traceback

            traceback.print_exc()
        finally:
            self.server.forget(self)

    @property
    def auth_timeout(self) -> float:
        # Like sshd's LoginGraceTime: an unauthenticated client holds a connection slot.
        return min(self.settings.idle_timeout, self.settings.login_grace_time)

    def _serve(self) -> None:
        settings = self.settings
        transport = paramiko.Transport(self.sock)
        self.transport = transport
        transport.add_server_key(self.server.host_key)
        # Per transport, not paramiko's class-wide table: start exec workers after the reply.
        handlers = dict(transport._channel_handler_table)
        handlers[paramiko.common.MSG_CHANNEL_REQUEST] = self._channel_request
        transport._channel_handler_table = handlers
        transport.banner_timeout = min(30.0, self.auth_timeout)
        transport.handshake_timeout = min(30.0, self.auth_timeout)
        try:
            transport.start_server(server=self)
        except (paramiko.SSHException, EOFError, OSError) as err:
            self.outcome = self.close_reason or "handshake failed"
            why = self.close_reason or err or type(err).__name__
            self.log.say(f"{self.peer}: handshake failed: {why}")
            transport.close()
            self._record_end()
            return
        while transport.is_active():
            now = time.monotonic()
            authenticated = self._note_authenticated()
            with self._lock:
                busy = bool(self.workers)
            if self.close_reason:
                break
            if not authenticated and now - self.started > self.auth_timeout:
                self.close_reason = "authentication timeout"
                break
            if not busy and now - self.last_activity > settings.idle_timeout:
                self.close_reason = "idle timeout"
                break
            if (
                self.server.stopping.is_set()
                and not busy
                and (not self.requests or now - self.last_activity > STOP_GRACE)
            ):
                # A client whose request just ended gets a moment to hang up first: closing
                # under it makes ssh exit 255 for a job that was delivered.
                self.close_reason = "server stopping"
                break
            stopping_for = now - self.server.stopped_at if self.server.stopping.is_set() else 0
            if stopping_for > settings.stop_timeout:
                # A request trickling in must not hold the shutdown for max_request_time.
                self.close_reason = "server stopping: requests still running after stop_timeout"
                break
            if self.wake.wait(POLL):
                self.wake.clear()
        if self.close_reason and self.close_reason != "server stopping":
            self.outcome = self.close_reason
        transport.close()
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            if worker.ident is not None:  # one whose exec reply never went out never ran
                worker.join(timeout=10)
        self._record_end()

    def _note_authenticated(self) -> bool:
        """True once authenticated; the first time, take the user and log the login."""
        transport = self.transport
        if transport is None or not transport.is_authenticated():
            return False
        with self._lock:
            if self.user is not None:
                return True
            self.user = transport.get_username()
        self.outcome = "ok"
        self.touch()
        self.log.say(
            f"{self.peer} {self.user}: authenticated by {self.method}"
            + (f" {self.key_fp}" if self.key_fp else "")
        )
        self.log.record(
            event="auth",
            outcome="ok",
            user=self.user,
            method=self.method,
            key=self.key_fp,
            **{"from": self.peer},
        )
        return True

    def _record_end(self) -> None:
        seconds = f"{time.monotonic() - self.started:.1f}"
        self.log.say(
            f"{self.peer} {self.user or '-'}: connection closed ({self.outcome}; "
            f"{self.requests} requests, {self.failures} failed auths, {seconds} s)"
        )
        self.log.record(
            event="connection",
            user=self.user,
            method=self.method,
            key=self.key_fp,
            outcome=self.outcome,
            requests=self.requests,
            failures=self.failures,
            seconds=seconds,
            **{"from": self.peer},
        )


# -- the server -------------------------------------------------------------------------------


class EmbeddedServer:
    """Listens, accepts, and runs one thread per connection (see :class:`ClientHandler`)."""

    def __init__(self, config: Config, events: EventLog | None = None) -> None:
        self.config = config
        self.settings = Settings.from_config(config)
        self.accounts = accounts_from_config(config)
        if not self.accounts:
            raise ConfigError(
                f"{config.path}: no [users.NAME] entries: nobody could log in "
                '(users."*" is a policy fallback, not an account)'
            )
        # paramiko logs socket errors of clients that hang up through logging's last-resort
        # handler, raw on stderr; this module logs what matters in its own words.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        self.any_password = any(a.password_hash for a in self.accounts.values())
        # Unknown users are checked against this, so they cost as much as known ones.
        self.dummy_hash = hash_password(os.urandom(16).hex())
        refuse_old_default_key(config)
        self.host_key, self.host_key_created = load_host_key(self.settings.host_key)
        self.fingerprint = blob_fingerprint(self.host_key.asbytes())
        make_private_dirs(os.path.dirname(config.audit_log) or ".")
        self.log = Log(AuditLog(config.audit_log), events)
        self.limiter = AuthLimiter(
            self.settings.max_auth_failures_per_address,
            self.settings.auth_penalty_seconds,
            max_global_failures=self.settings.max_auth_failures,
        )
        self.hash_slots = threading.BoundedSemaphore(HASH_SLOTS)
        self.random = random.SystemRandom()
        self._drops: dict[str, tuple[float, int]] = {}  # address -> (last logged, unlogged)
        self.stopping = threading.Event()
        self.stopped_at = 0.0
        self.connections: set[ClientHandler] = set()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.address = ""

    def reload(self, path: str | None = None) -> bool:
        """Read the config again (SIGHUP); keep the old one if the new one fails to check.

        Users, keys, passwords, builders and policy change for the next login or request;
        a request already running finishes under the config it started with. The listen
        address, host key, jobdir and audit log take a restart. Returns whether the new
        config is in use.
        """
        from tryssh.server.config import load_config

        path = path or self.config.path
        try:
            config = load_config(path)
            settings = Settings.from_config(config)
            accounts = accounts_from_config(config)
            if not accounts:
                raise ConfigError(f"{path}: no [users.NAME] entries: nobody could log in")
        except TrysshError as err:
            self.log.say(f"reload refused, the config in use stays: {err.message}", ERR)
            self.log.record(event="reload", outcome="refused", reason=err.message)
            return False
        kept = [
            key
            for key, old, new in (
                ("serve.listen", (self.settings.host, self.settings.port),
                 (settings.host, settings.port)),
                ("serve.host_key", self.settings.host_key, settings.host_key),
                ("jobdir", self.config.jobdir, config.jobdir),
                ("audit_log", self.config.audit_log, config.audit_log),
            )
            if old != new
        ]  # fmt: skip
        settings.host, settings.port = self.settings.host, self.settings.port
        settings.host_key = self.settings.host_key
        config.jobdir, config.audit_log = self.config.jobdir, self.config.audit_log
        # The password limits too: the lockout line names the settings' numbers.
        self.limiter.configure(
            settings.max_auth_failures_per_address,
            settings.auth_penalty_seconds,
            settings.max_auth_failures,
        )
        with self._lock:
            self.settings = settings
            self.accounts = accounts
            self.any_password = any(a.password_hash for a in accounts.values())
            self.config = config
        self.log.say(
            f"reloaded {path}: {len(accounts)} users, {len(config.builders)} builders"
            + (f" ({', '.join(kept)} unchanged until a restart)" if kept else ""),
            NOTICE,
        )
        self.log.record(event="reload", outcome="ok")
        return True

    def bind(self) -> str:
        """Bind and listen; return the address actually bound (port 0 resolved)."""
        host, port = self.settings.host, self.settings.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as err:
            raise ConfigError(f"{self.config.path}: serve.listen: {host}: {err.strerror}") from None
        family, socktype, proto, _name, sockaddr = infos[0]
        sock = socket.socket(family, socktype, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(sockaddr)
        except PermissionError as err:
            sock.close()
            # Not temporary: systemd's Restart=on-failure would retry it for ever.
            raise PermissionDenied(
                f"cannot listen on {format_address(host, port)}: {err.strerror} (a port below "
                "1024 needs CAP_NET_BIND_SERVICE: see contrib/tryssh-serve.service)"
            ) from None
        except OSError as err:
            sock.close()
            raise TempFail(
                f"cannot listen on {format_address(host, port)}: {err.strerror}"
            ) from None
        sock.listen(64)
        sock.settimeout(POLL)
        self.sock = sock
        bound = sock.getsockname()
        self.address = format_address(bound[0], bound[1])
        return self.address

    def serve(self, stop: threading.Event) -> None:
        """Accept until *stop* is set; then stop accepting and finish the connections."""
        assert self.sock is not None, "bind() first"
        reaped = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() - reaped >= POLL:
                    self._reap()
                    reaped = time.monotonic()
                try:
                    client, addr = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError as err:
                    self.log.say(f"accept failed: {err.strerror}")
                    continue
                self._start_connection(client, addr)
        finally:
            self.sock.close()
            self.stopped_at = time.monotonic()
            self.stopping.set()
            with self._lock:
                connections = list(self.connections)
                threads = list(self.threads)
            for conn in connections:
                conn.wake.set()
            for thread in threads:
                thread.join()

    def _reap(self) -> None:
        """Close connections still not logged in after ``login_grace_time``, from accept on."""
        now = time.monotonic()
        with self._lock:
            late = [
                c
                for c in self.connections
                if now - c.started > c.auth_timeout and not c.authenticated
            ]
        for conn in late:
            conn.expire("authentication timeout")

    def _refusal(self, address: str) -> str | None:
        """Why a new connection from *address* is dropped at once, if it is (lock held).

        Unauthenticated connections are capped per address (``per_source_max_startups``) and
        in all (``max_startups``, with sshd's random early drop), so a flood from one address
        cannot take every slot, and a flood from many gets only some.
        """
        settings = self.settings
        if len(self.connections) >= settings.max_connections:
            return f"{settings.max_connections} connections already open"
        startups = [c for c in self.connections if not c.authenticated]
        mine = sum(1 for c in startups if c.address == address)
        if mine >= settings.per_source_max_startups:
            return f"{mine} connections from {address} not logged in yet (per_source_max_startups)"
        start, rate, full = settings.max_startups
        if len(startups) >= full:
            return f"{len(startups)} connections not logged in yet (max_startups)"
        if len(startups) >= start:
            # sshd's MaxStartups: drop with rate% at START, rising linearly to 100% at FULL.
            chance = rate / 100 + (1 - rate / 100) * (len(startups) - start) / (full - start or 1)
            if self.random.random() < chance:
                return f"{len(startups)} connections not logged in yet (max_startups random drop)"
        return None

    def _log_drop(self, address: str, peer: str, refusal: str) -> None:
        """Log a dropped connection: at most one line per address every DROP_LOG_EVERY s.

        A flood is hundreds of drops a second; logging each would flood the log (and the
        disk) in turn. The next line says how many were dropped without a line.
        """
        now = time.monotonic()
        last, unlogged = self._drops.get(address, (-DROP_LOG_EVERY, 0))
        if now - last < DROP_LOG_EVERY:
            self._drops[address] = (last, unlogged + 1)
            return
        if len(self._drops) > 4096:  # bounded: forget the addresses quiet for a while
            self._drops = {a: v for a, v in self._drops.items() if now - v[0] < DROP_LOG_EVERY}
        self._drops[address] = (now, 0)
        more = f" (and {unlogged} more from {address} since the last line)" if unlogged else ""
        self.log.say(f"{peer}: refused: {refusal}{more}")
        self.log.record(event="connection", outcome="dropped", reason=refusal,
                        unlogged=unlogged or None, **{"from": peer})  # fmt: skip

    def _start_connection(self, client: socket.socket, addr: Any) -> None:
        peer = format_address(addr[0], addr[1])
        address = peer.rsplit(":", 1)[0]
        client.settimeout(None)
        try:
            # Each answer ends in a small packet; without this it waits for the client's
            # delayed ACK (40 ms on Linux) behind Nagle's algorithm: 230 -> 181 ms a submit.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a test's socketpair): nothing to tune
        with self._lock:
            self.threads = [t for t in self.threads if t.is_alive()]
            refusal = self._refusal(address)
            if refusal is None:
                conn = ClientHandler(self, client, peer)
                self.connections.add(conn)
        if refusal is not None:
            client.close()
            self._log_drop(address, peer, refusal)
            return
        thread = threading.Thread(target=conn.run, name=f"tryssh-conn-{peer}", daemon=True)
        with self._lock:
            self.threads.append(thread)
        thread.start()

    def forget(self, conn: ClientHandler) -> None:
        with self._lock:
            self.connections.discard(conn)
