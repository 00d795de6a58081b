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
    TempFail,
    TrysshError,
    describe_oserror,
)
from tryssh.server.audit import AuditLog
from tryssh.server.config import SERVE_POSITIVE, Config
from tryssh.server.passwords import hash_password, parse_hash, verify_password
from tryssh.server.tryserver import Options, RequestContext, clip, run_request

MAX_SESSIONS = 10  # channels per connection, like sshd's MaxSessions
AUTH_TIMEOUT = 60.0  # seconds to log in (or the idle timeout, if shorter)
POLL = 0.25  # how often the accept loop and the connection watchdogs look at their flags
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
        return settings


# -- keys -------------------------------------------------------------------------------------


def load_host_key(path: str) -> tuple[paramiko.PKey, bool]:
    """The host key at *path*, generated (ed25519, mode 0600) if missing; (key, created)."""
    created = False
    if not os.path.exists(path):
        _generate_host_key(path)
        created = True
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise ConfigError(
            f"host key {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    try:
        key = paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as err:
        raise ConfigError(f"cannot load host key {path}: {err}") from None
    pub = path + ".pub"
    if not os.path.exists(pub):
        # Scripts build known_hosts lines from it (the demo does).
        with open(pub, "w") as f:
            f.write(f"{key.get_name()} {key.get_base64()} tryssh-serve\n")
    return key, created


def _generate_host_key(path: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
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
    with open(path + ".pub", "wb") as f:
        f.write(public + b" tryssh-serve\n")


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
    """Failed authentications per source address, and the lockout after too many."""

    SWEEP_AT = 1024  # addresses tracked before forgiven ones are swept out

    def __init__(
        self, max_failures: int, penalty: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.penalty = penalty
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked(self, address: str) -> float:
        """Seconds the address stays locked out (0 if it may try)."""
        with self._lock:
            until = self._locked_until.get(address, 0.0)
            left = until - self.clock()
            if left <= 0:
                self._locked_until.pop(address, None)
                return 0.0
            return left

    def failure(self, address: str) -> bool:
        """Count one failure; True if it just locked the address out."""
        now = self.clock()
        with self._lock:
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


class ChannelStdin:
    """The channel's data as a binary stdin: ``read(n)`` returns b"" at EOF."""

    def __init__(self, channel: paramiko.Channel, touch: Callable[[], None], idle: float) -> None:
        self.channel = channel
        self.touch = touch
        self.idle = idle

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        try:
            data = self.channel.recv(size)
        except TimeoutError:
            raise TempFail(f"no input for {self.idle:g} s: idle timeout") from None
        self.touch()
        return data


class ChannelStdout:
    """The channel's data as a text stdout (``buffer``: the same channel, for bytes)."""

    def __init__(self, channel: paramiko.Channel, touch: Callable[[], None]) -> None:
        self.channel = channel
        self.touch = touch
        self.buffer = self

    def write(self, text: str | bytes) -> int:
        data = text.encode("utf-8") if isinstance(text, str) else text
        try:
            self.channel.sendall(data)
        except TimeoutError:
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
        self.sessions = 0
        self._lock = threading.Lock()
        self.transport: paramiko.Transport | None = None

    # -- activity ----------------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def close_soon(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self.wake.set()

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
        account = self.server.accounts.get(username)
        encoded = account.password_hash if account else None
        # Unknown users cost the same scrypt as known ones: timing must not name users.
        ok = verify_password(password, encoded or self.server.dummy_hash) and encoded is not None
        if ok:
            self.method, self.key_fp = "password", None
            self.server.limiter.success(self.address)
            return paramiko.AUTH_SUCCESSFUL
        self.failures += 1
        self.outcome = "auth failed"
        self.log.record(
            event="auth", outcome="failed", method="password", user=username, **{"from": self.peer}
        )
        if self.server.limiter.failure(self.address):
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
        with self._lock:
            if self.sessions >= MAX_SESSIONS or self.server.stopping.is_set():
                self._refuse("session (too many sessions)")
                return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
            self.sessions += 1
        return paramiko.OPEN_SUCCEEDED

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
        with self._lock:
            if channel.get_id() in self.workers or self.user is None:
                return False
            # Accept even a bad command: the worker answers it with a message and exit 64,
            # as the forced command does, instead of a bare "exec request failed".
            worker = threading.Thread(
                target=self._run_exec,
                args=(channel, command),
                name=f"tryssh-exec-{self.peer}-{channel.get_id()}",
                daemon=True,
            )
            self.workers[channel.get_id()] = worker
            self.requests += 1
        # Not started here: paramiko sends the reply that accepts the exec only after this
        # returns, and a fast worker would otherwise send its exit status and close the
        # channel first (the client then sees "Channel closed"). _channel_request starts it.
        return True

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

        channel.settimeout(self.settings.idle_timeout)
        code = EX_SOFTWARE
        try:
            code = run_request(
                open_request,
                ChannelStdin(channel, self.touch, self.settings.idle_timeout),  # type: ignore[arg-type]
                ChannelStdout(channel, self.touch),  # type: ignore[arg-type]
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
                self.sessions -= 1
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
        return min(self.settings.idle_timeout, AUTH_TIMEOUT)

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
            self.outcome = "handshake failed"
            self.log.say(f"{self.peer}: handshake failed: {err or type(err).__name__}")
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
        self.host_key, self.host_key_created = load_host_key(self.settings.host_key)
        self.fingerprint = blob_fingerprint(self.host_key.asbytes())
        os.makedirs(os.path.dirname(config.audit_log) or ".", exist_ok=True)
        self.log = Log(AuditLog(config.audit_log), events)
        self.limiter = AuthLimiter(
            self.settings.max_auth_failures_per_address, self.settings.auth_penalty_seconds
        )
        self.stopping = threading.Event()
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
        try:
            while not stop.is_set():
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
            self.stopping.set()
            with self._lock:
                connections = list(self.connections)
                threads = list(self.threads)
            for conn in connections:
                conn.wake.set()
            for thread in threads:
                thread.join()

    def _start_connection(self, client: socket.socket, addr: Any) -> None:
        peer = format_address(addr[0], addr[1])
        client.settimeout(None)
        try:
            # Each answer ends in a small packet; without this it waits for the client's
            # delayed ACK (40 ms on Linux) behind Nagle's algorithm: 230 -> 181 ms a submit.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a test's socketpair): nothing to tune
        with self._lock:
            self.threads = [t for t in self.threads if t.is_alive()]
            too_many = len(self.connections) >= self.settings.max_connections
            if not too_many:
                conn = ClientHandler(self, client, peer)
                self.connections.add(conn)
        if too_many:
            self.log.say(
                f"{peer}: refused: {self.settings.max_connections} connections already open"
            )
            self.log.record(event="connection", outcome="too many connections", **{"from": peer})
            client.close()
            return
        thread = threading.Thread(target=conn.run, name=f"tryssh-conn-{peer}", daemon=True)
        with self._lock:
            self.threads.append(thread)
        thread.start()

    def forget(self, conn: ClientHandler) -> None:
        with self._lock:
            self.connections.discard(conn)
