"""The PB door: Buildbot's ``Try_Userpass`` protocol, so ``buildbot try --connect=pb`` works.

Off by default; a ``[pb]`` table in the config turns it on in ``tryssh serve``. This is the
only tryssh module that imports Twisted (the optional ``tryssh[pb]`` extra). The reactor
runs in a thread of its own next to serve's paramiko threads (:class:`PBDoor`).

What the door speaks, as Buildbot 4.x's ``schedulers/trysched.py`` does:

- login with PB's MD5 challenge-response against ``[users.NAME].pb_secret_file``;
- ``perspective_try(branch, revision, patch, repository, project, builderNames, who,
  comment, properties)``: a v5/v6 job file with ``who`` pinned to the login name, delivered
  by tryserver's own ``handle`` (size limit, audit line, job name). The answer is a
  :class:`BuildSet` or None when a builder is not allowed (the client then says the master
  does not have the builder configured);
- ``perspective_getAvailableBuilderNames()``;
- for ``--wait``: ``getBuildRequests`` -> ``[(name, BuildRequest)]``, ``subscribe`` ->
  ``newbuild(Build, name)`` when the builder starts, ``waitUntilFinished``,
  ``getResults`` (Buildbot's codes), ``getText``, ``unsubscribe``. They follow the job's
  tryssh record, written by the consumer. A client that goes away leaves the job running.

The wire is plaintext (Buildbot's client only speaks TCP): the door listens on loopback
unless the config says ``insecure_network = true``.
"""

from __future__ import annotations

import hmac
import inspect
import io
import json
import os
import threading
import time
from typing import Any

from twisted.cred import checkers, error, portal
from twisted.internet import defer, reactor, task, threads
from twisted.internet.interfaces import IReactorCore, IReactorTCP
from twisted.spread import banana, pb
from zope.interface import implementer

from tryssh.core.jobfile import Job, encode_job
from tryssh.core.netaddr import format_address, parse_listen
from tryssh.core.records import FINAL_STATES, RecordStore
from tryssh.errors import ConfigError, TempFail, TrysshError
from tryssh.server.config import Config
from tryssh.server.passwords import load_pb_secret
from tryssh.server.policy import PolicyRefused, allowed_builders, choose_builders
from tryssh.server.serve import AuthLimiter, Log
from tryssh.server.serve import Settings as ServeSettings
from tryssh.server.tryserver import Options, RequestContext, run_request

_reactor: Any = reactor  # the global reactor, typed loosely (Twisted's stubs are partial)
assert IReactorTCP.providedBy(_reactor) and IReactorCore.providedBy(_reactor)

DEFAULT_LISTEN = "127.0.0.1:8031"  # Buildbot's Try_Userpass examples use 8031
PRE_LOGIN_MESSAGE = 16 * 1024  # bytes of one PB message before login (a name, a response)
MESSAGE_OVERHEAD = 64 * 1024  # the other try arguments next to the patch
MAX_REFUSALS = 10  # refused calls on one connection before it is closed (audit log flood)
POLL = 0.05  # seconds between looks at the records of jobs somebody waits for
# Buildbot's result codes (buildbot.process.results).
SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED = range(7)
RESULT_CODES = {"success": SUCCESS, "failure": FAILURE, "error": EXCEPTION,
                "cancelled": CANCELLED, "interrupted": EXCEPTION}  # fmt: skip


class Settings:
    """The ``[pb]`` table (which :mod:`tryssh.server.config` checked) with its defaults."""

    def __init__(self, config: Config) -> None:
        table = config.pb or {}
        self.host, self.port = parse_listen(table.get("listen", DEFAULT_LISTEN))
        self.insecure_network = bool(table.get("insecure_network", False))
        self.max_connections = int(table.get("max_connections", 32))
        self.max_tries_per_connection = int(table.get("max_tries_per_connection", 16))
        self.login_timeout = float(table.get("login_timeout", ServeSettings.login_grace_time))
        self.idle_timeout = float(table.get("idle_timeout", 300))


def pb_accounts(config: Config) -> dict[str, bytes]:
    """Login name -> MD5(password) for every ``[users.NAME]`` with a ``pb_secret_file``."""
    accounts = {}
    for name, policy in config.users.items():
        if name != "*" and policy.pb_secret_file:
            try:
                accounts[name] = load_pb_secret(policy.pb_secret_file)
            except ConfigError as err:
                raise ConfigError(
                    f"{config.path}: users.{name}.pb_secret_file: {err.message}"
                ) from None
    if not accounts:
        raise ConfigError(
            f"{config.path}: [pb] is on but no [users.NAME] has a pb_secret_file: nobody "
            "could log in (make one with: tryssh passwd --pb)"
        )
    return accounts


def _peer(broker: pb.Broker) -> str:
    peer = broker.transport.getPeer()
    return format_address(getattr(peer, "host", "?"), getattr(peer, "port", 0))


# -- guarded dispatch: every remote call is checked, refused calls are audited ----------------


class CallRefused(pb.Error):
    """A remote call the door does not take; the message reaches the client."""


class LoginRefused(error.UnauthorizedLogin, pb.Error):
    """A failed login: a pb.Error, so that PB answers it without logging a traceback."""


def _guarded_call(
    door: PBDoor, broker: DoorBroker, obj: object, prefix: str, message: Any, args: Any, kw: Any
) -> Any:
    """Unserialize, check the method and its arguments, call; refusals become CallRefused."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    args = broker.unserialize(args)
    kw = broker.unserialize(kw)
    if isinstance(kw, dict):
        kw = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in kw.items()}
    method = None
    if isinstance(message, str) and message in getattr(obj, "REMOTE", ()):
        method = getattr(obj, f"{prefix}{message}", None)
    if method is None:
        door.refuse(broker, f"unknown remote method {str(message)[:60]!r}")
    if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
        door.refuse(broker, f"{message}: malformed keyword arguments")
    try:
        inspect.signature(method).bind(*args, **kw)
    except TypeError as err:
        door.refuse(broker, f"{message}: wrong arguments ({err})")
    return broker.serialize(method(*args, **kw), getattr(obj, "perspective", None))


class Guarded(pb.Referenceable):
    """A referenceable whose remote methods are only those named in REMOTE."""

    REMOTE: tuple[str, ...] = ()

    def __init__(self, door: PBDoor) -> None:
        self.door = door

    def remoteMessageReceived(self, broker: Any, message: Any, args: Any, kw: Any) -> Any:
        return _guarded_call(self.door, broker, self, "remote_", message, args, kw)


# -- following a job: build set, build requests, builds ---------------------------------------


class Build(Guarded):
    """One builder's run of a job (Buildbot's ``RemoteBuild``)."""

    REMOTE = ("subscribe", "unsubscribe", "waitUntilFinished", "getResults", "getText")

    def __init__(self, door: PBDoor, name: str) -> None:
        super().__init__(door)
        self.name = name
        self.results: int | None = None
        self.text: list[str] = []
        self.waiters: list[defer.Deferred[Build]] = []

    def finish(self, results: int, text: list[str]) -> None:
        if self.results is not None:
            return
        self.results, self.text = results, text
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(self)

    def remote_subscribe(self, subscriber: Any, interval: Any = None) -> None:
        return None  # tryssh builders have no steps to report

    def remote_unsubscribe(self, subscriber: Any) -> None:
        return None

    def remote_waitUntilFinished(self) -> Build | defer.Deferred[Build]:
        if self.results is not None:
            return self
        d: defer.Deferred[Build] = defer.Deferred()
        self.waiters.append(d)
        return d

    def remote_getResults(self) -> int | None:
        return self.results

    def remote_getText(self) -> list[str]:
        return list(self.text)


class BuildRequest(Guarded):
    """One builder's share of a job (Buildbot's ``RemoteBuildRequest``)."""

    REMOTE = ("subscribe", "unsubscribe")

    def __init__(self, door: PBDoor, broker: DoorBroker, name: str) -> None:
        super().__init__(door)
        self.broker = broker
        self.name = name
        self.build: Build | None = None
        self.subscribers: list[Any] = []

    def start(self) -> Build:
        if self.build is None:
            self.build = Build(self.door, self.name)
            for subscriber in self.subscribers:
                self._tell(subscriber)
        return self.build

    def _tell(self, subscriber: Any) -> None:
        d = subscriber.callRemote("newbuild", self.build, self.name)
        d.addErrback(lambda _failure: None)  # the client went away: the job goes on

    def remote_subscribe(self, subscriber: Any) -> None:
        if not isinstance(subscriber, pb.RemoteReference):
            self.door.refuse(self.broker, "subscribe: the subscriber is not a remote object")
        if len(self.subscribers) < 8:
            self.subscribers.append(subscriber)
        if self.build is not None:
            self._tell(subscriber)

    def remote_unsubscribe(self, subscriber: Any) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)


class BuildSet(Guarded):
    """One delivered job (Buildbot's ``RemoteBuildSetStatus``), following its record."""

    REMOTE = ("getBuildRequests",)

    def __init__(self, door: PBDoor, broker: DoorBroker, job: str, builders: list[str]) -> None:
        super().__init__(door)
        self.broker = broker
        self.job = job
        self.requests = {name: BuildRequest(door, broker, name) for name in builders}
        self.done = False

    def remote_getBuildRequests(self) -> list[tuple[str, BuildRequest]]:
        self.door.watch(self)
        return list(self.requests.items())

    def update(self, record: dict[str, Any] | None) -> None:
        """Bring the builds in line with the job's record (None: not claimed yet)."""
        if record is None:
            return
        state = record.get("state")
        entries = record.get("builders") or {}
        for name, request in self.requests.items():
            entry = entries.get(name)
            if entry is None:
                if state in FINAL_STATES:  # rejected, or the builder was never run
                    reason = record.get("reason") or state
                    request.start().finish(EXCEPTION, [f"{state}: {reason}", f"job {self.job}"])
                continue
            if entry.get("state") in ("running", "done"):
                build = request.start()
                if entry.get("state") == "done":
                    build.finish(*_results(entry, self.job))
        self.done = all(r.build is not None and r.build.results is not None
                        for r in self.requests.values())  # fmt: skip


def _results(entry: dict[str, Any], job: str) -> tuple[int, list[str]]:
    result = entry.get("result") or "error"
    code = RESULT_CODES.get(result, EXCEPTION)
    if code == SUCCESS:
        text = "build successful"
    elif entry.get("reason"):
        text = f"{result}: {entry['reason']}"
    elif entry.get("exit") is not None:
        text = f"{result} (exit {entry['exit']})"
    else:
        text = result
    return code, [text, f"job {job}"]


# -- the perspective: what a logged-in user may call ------------------------------------------


class TryPerspective(pb.Avatar):
    """A logged-in user (Buildbot's ``Try_Userpass_Perspective``)."""

    REMOTE = ("try", "getAvailableBuilderNames")

    def __init__(self, door: PBDoor, user: str, broker: DoorBroker) -> None:
        self.door = door
        self.user = user
        self.broker = broker
        self.tries = 0

    def perspectiveMessageReceived(self, broker: Any, message: Any, args: Any, kw: Any) -> Any:
        return _guarded_call(self.door, broker, self, "perspective_", message, args, kw)

    def perspective_getAvailableBuilderNames(self) -> list[str]:
        return allowed_builders(self.door.config, self.user)

    def perspective_try(
        self,
        branch: Any,
        revision: Any,
        patch: Any,
        repository: Any,
        project: Any,
        builderNames: Any,  # Buildbot's argument name
        who: Any = "",
        comment: Any = "",
        properties: Any = None,
    ) -> defer.Deferred[BuildSet | None]:
        broker = self.broker
        self.tries += 1
        if self.tries > self.door.settings.max_tries_per_connection:
            self.door.refuse(broker, "try: too many try calls on one connection", self.user)
        try:
            job = job_from_try(self.user, branch, revision, patch, repository, project,
                               builderNames, comment, properties)  # fmt: skip
        except TrysshError as err:
            self.door.refuse(broker, f"try: {err.message}", self.user)
        return self.door.deliver(broker, self.user, job)


def _text(name: str, value: Any, allow_none: bool = True) -> str | None:
    """A text argument (str, or UTF-8 bytes as Buildbot's client may send)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise TrysshError(f"{name} is not UTF-8") from None
    if not isinstance(value, str):
        raise TrysshError(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > 4096:
        raise TrysshError(f"{name} is longer than 4096 characters")
    return value


def job_from_try(
    user: str, branch: Any, revision: Any, patch: Any, repository: Any, project: Any,
    builder_names: Any, comment: Any, properties: Any,
) -> Job:  # fmt: skip
    """The job a ``try`` call asks for, checked field by field; who is *user*."""
    if not isinstance(patch, (tuple, list)) or len(patch) != 2:
        raise TrysshError("patch must be (patchlevel, diff)")
    level, body = patch
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < 1000:
        raise TrysshError("patchlevel must be a small non-negative integer")
    if isinstance(body, str):
        body = body.encode("utf-8")  # the client reads --diff - as text
    if body is not None and not isinstance(body, bytes):
        raise TrysshError(f"the diff must be bytes, not {type(body).__name__}")
    if builder_names is not None:
        if not isinstance(builder_names, (list, tuple)) or len(builder_names) > 1000:
            raise TrysshError("builderNames must be a list of names")
        builder_names = [_text("builder name", n, allow_none=False) for n in builder_names]
    if properties is None:
        properties = {}
    if not isinstance(properties, dict) or not all(isinstance(k, str) for k in properties):
        raise TrysshError("properties must be a dict with string keys")
    try:
        json.dumps(properties)
    except (TypeError, ValueError):
        raise TrysshError("properties must be JSON values") from None
    return Job(
        jobid=f"pb-{time.time():.6f}-{os.urandom(4).hex()}",
        branch=_text("branch", branch),
        baserev=_text("revision", revision),
        patch_level=level,
        patch_body=body,
        builder_names=builder_names or None,
        repository=_text("repository", repository),
        project=_text("project", project) or "",
        who=user,
        comment=_text("comment", comment),
        properties=properties,
    )


# -- login ------------------------------------------------------------------------------------


@implementer(checkers.ICredentialsChecker)
class SecretChecker:
    """MD5 challenge-response against the users' PB secrets, with serve's lockouts."""

    credentialInterfaces = (pb.IUsernameMD5Password,)

    def __init__(self, door: PBDoor) -> None:
        self.door = door
        self.dummy = os.urandom(16)  # unknown users cost the same as known ones

    def requestAvatarId(self, creds: Any) -> defer.Deferred[str]:
        broker: DoorBroker = creds.broker
        door = self.door
        name = creds.username.decode("utf-8", "replace") if isinstance(
            creds.username, bytes) else str(creds.username)  # fmt: skip
        if door.limiter.locked(broker.address):
            door.log.record(event="auth", outcome="locked out", method="pb", user=name,
                            **{"from": broker.peer})  # fmt: skip
            broker.close_soon("locked out")
            return defer.fail(LoginRefused("locked out after too many failed logins"))
        broker.login_tries += 1
        secret = door.accounts.get(name)
        import hashlib

        expected = hashlib.md5((secret or self.dummy) + creds.challenge, usedforsecurity=False)
        response = creds.response if isinstance(creds.response, bytes) else b""
        if secret is not None and hmac.compare_digest(expected.digest(), response):
            door.limiter.success(broker.address)
            return defer.succeed((name, broker))  # the realm needs to know the connection
        door.log.record(event="auth", outcome="failed", method="pb", user=name,
                        **{"from": broker.peer})  # fmt: skip
        door.log.say(f"{broker.peer} {name}: PB login failed")
        if door.limiter.failure(broker.address):
            seconds = door.limiter.penalty
            door.log.say(f"{broker.peer}: too many failed logins from {broker.address}: "
                         f"locked out for {seconds:g} s")  # fmt: skip
            door.log.record(event="lockout", address=broker.address, seconds=seconds,
                            **{"from": broker.peer})  # fmt: skip
        if broker.login_tries >= door.max_auth_tries:
            broker.close_soon("too many authentication attempts")
        return defer.fail(LoginRefused("wrong user name or password"))


@implementer(portal.IRealm)
class Realm:
    def __init__(self, door: PBDoor) -> None:
        self.door = door

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("PB only")
        name, broker = avatar_id
        perspective = TryPerspective(self.door, name, broker)
        self.door.logged_in(perspective)
        return pb.IPerspective, perspective, lambda: None


class LoginRoot(pb._PortalWrapper):
    """PB's login object, with a random challenge and only ``login`` and ``respond``."""

    REMOTE = ("login",)

    def __init__(self, door: PBDoor, cred_portal: portal.Portal, broker: DoorBroker) -> None:
        super().__init__(cred_portal, broker)
        self.door = door

    def remoteMessageReceived(self, broker: Any, message: Any, args: Any, kw: Any) -> Any:
        return _guarded_call(self.door, broker, self, "remote_", message, args, kw)

    def remote_login(self, username: Any) -> tuple[bytes, Challenger]:
        broker = self.broker
        broker.logins += 1
        if broker.logins > self.door.max_auth_tries:
            broker.close_soon("too many authentication attempts")
            self.door.refuse(broker, "login: too many attempts on one connection")
        if not isinstance(username, (bytes, str)) or len(username) > 256:
            self.door.refuse(broker, "login: the user name must be a short string")
        if isinstance(username, str):
            username = username.encode("utf-8")
        # Twisted's own challenge comes from the random module; this one from the OS.
        challenge = os.urandom(16)
        return challenge, Challenger(self.door, self.portal, self.broker, username, challenge)


class Challenger(pb._PortalAuthChallenger):
    """The other half of the login (``respond``), guarded like every remote object."""

    REMOTE = ("respond",)

    def __init__(self, door: PBDoor, *args: Any) -> None:
        super().__init__(*args)
        self.door = door

    def remoteMessageReceived(self, broker: Any, message: Any, args: Any, kw: Any) -> Any:
        return _guarded_call(self.door, broker, self, "remote_", message, args, kw)


@implementer(pb.IPBRoot)
class Root:
    def __init__(self, door: PBDoor, cred_portal: portal.Portal) -> None:
        self.door = door
        self.portal = cred_portal

    def rootObject(self, broker: DoorBroker) -> LoginRoot:
        return LoginRoot(self.door, self.portal, broker)


# -- connections ------------------------------------------------------------------------------


class DoorBroker(pb.Broker):
    """A PB connection with a memory bound, a login deadline and an audit line at its end."""

    door: PBDoor

    def connectionMade(self) -> None:
        super().connectionMade()
        # PB is request/answer in small messages: Nagle plus delayed ACKs would stall each.
        self.transport.setTcpNoDelay(True)
        self.peer = _peer(self)
        self.address = self.peer.rsplit(":", 1)[0]
        self.user: str | None = None
        self.login_tries = 0  # responses checked
        self.logins = 0  # challenges asked for
        self.refusals = 0
        self.limit = PRE_LOGIN_MESSAGE
        self.pending_bytes = 0
        self.started = self.last_activity = time.monotonic()
        self.outcome = "closed"
        self.watches: list[BuildSet] = []
        self.door.brokers.add(self)
        self.login_timer = _reactor.callLater(self.door.settings.login_timeout, self._login_late)

    def _login_late(self) -> None:
        if self.user is None:
            self.close_soon("login timeout")

    def close_soon(self, reason: str) -> None:
        self.outcome = reason
        # After the answer in flight: loseConnection writes what is buffered first.
        _reactor.callLater(0, self.transport.loseConnection)

    def dataReceived(self, chunk: bytes) -> None:
        # Banana keeps a message's parts until the whole message is in; count the bytes of
        # the message being read and drop the connection before it outgrows the limit.
        self.last_activity = time.monotonic()
        self.pending_bytes += len(chunk)
        if self.pending_bytes > self.limit:
            self.door.log.say(f"{self.peer} {self.user or '-'}: PB message over "
                              f"{self.limit} bytes: connection dropped")  # fmt: skip
            self.door.log.record(event="refused", user=self.user, door="pb",
                                 what=f"PB message over {self.limit} bytes",
                                 **{"from": self.peer})  # fmt: skip
            self.outcome = "message too large"
            self.transport.abortConnection()
            return
        try:
            super().dataReceived(chunk)
        except Exception as err:  # Banana's and Jelly's errors for data that is not PB
            self.door.log.record(event="refused", user=self.user, door="pb",
                                 what=f"malformed PB data: {err}"[:200],
                                 **{"from": self.peer})  # fmt: skip
            self.outcome = "malformed data"
            self.transport.abortConnection()
            return
        if not self.listStack:
            self.pending_bytes = len(self.buffer)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self.login_timer.active():
            self.login_timer.cancel()
        self.door.brokers.discard(self)
        for build_set in self.watches:
            self.door.unwatch(build_set)
        self.watches = []
        seconds = f"{time.monotonic() - self.started:.1f}"
        self.door.log.record(event="connection", door="pb", user=self.user,
                             outcome=self.outcome, seconds=seconds,
                             **{"from": self.peer})  # fmt: skip


class DoorFactory(pb.PBServerFactory):
    protocol = DoorBroker

    def __init__(self, door: PBDoor, root: Root) -> None:
        super().__init__(root)
        self.door = door

    def buildProtocol(self, addr: Any) -> DoorBroker | None:
        door = self.door
        if len(door.brokers) >= door.settings.max_connections:
            peer = format_address(getattr(addr, "host", "?"), getattr(addr, "port", 0))
            door.log.say(f"{peer}: PB connection refused: "
                         f"{door.settings.max_connections} already open")  # fmt: skip
            door.log.record(event="connection", door="pb", outcome="too many connections",
                            **{"from": peer})  # fmt: skip
            return None
        broker = super().buildProtocol(addr)
        broker.door = door
        return broker


# -- the door ---------------------------------------------------------------------------------


class PBDoor:
    """The PB listener and its reactor thread; serve owns one when the config has [pb]."""

    def __init__(
        self,
        config: Config,
        log: Log,
        limiter: AuthLimiter,
        max_auth_tries: int = 6,
    ) -> None:
        self.config = config
        self.settings = Settings(config)
        self.accounts = pb_accounts(config)
        self.log = log
        self.limiter = limiter
        self.max_auth_tries = max_auth_tries
        self.store = RecordStore(config.state_dir)
        self.brokers: set[DoorBroker] = set()
        self.watched: list[BuildSet] = []
        self.poller = task.LoopingCall(self._poll)
        self.sweeper = task.LoopingCall(self._sweep)
        cred_portal = portal.Portal(Realm(self), [SecretChecker(self)])
        self.factory = DoorFactory(self, Root(self, cred_portal))
        self.port: Any = None
        self.thread: threading.Thread | None = None
        self.address = ""

    # -- life --------------------------------------------------------------------------------

    def listen(self) -> str:
        """Bind (before the reactor runs); return the address actually bound."""
        from twisted.internet.error import CannotListenError

        host, port = self.settings.host, self.settings.port
        try:
            self.port = _reactor.listenTCP(port, self.factory, backlog=64, interface=host)
        except CannotListenError as err:
            reason = getattr(err.socketError, "strerror", None) or str(err.socketError)
            raise TempFail(f"cannot listen on {format_address(host, port)}: {reason}") from None
        bound = self.port.getHost()
        self.address = format_address(bound.host, bound.port)
        return self.address

    def start(self) -> None:
        """Run the reactor in its own thread (signals stay with serve's main thread)."""
        from twisted.logger import globalLogBeginner

        # Twisted's own errors as one line each on serve's stderr, never a bare traceback.
        globalLogBeginner.beginLoggingTo([self._twisted_event], redirectStandardIO=False)
        self.sweeper.start(min(5.0, self.settings.idle_timeout), now=False)
        self.thread = threading.Thread(
            target=_reactor.run, kwargs={"installSignalHandlers": False},
            name="tryssh-pb", daemon=True,
        )  # fmt: skip
        self.thread.start()

    def stop(self) -> None:
        """Stop listening and the reactor; waiting clients are cut off, their jobs go on."""
        if self.thread is None:
            return
        _reactor.callFromThread(_reactor.stop)
        self.thread.join(timeout=10)

    def reload(self, config: Config) -> None:
        """Take a new reading of the config (serve's SIGHUP): secrets and policy change for
        the next login or call; the listen address and limits of [pb] take a restart.
        Safe from any thread: the swap happens in the reactor's."""
        try:
            Settings(config)
            accounts = pb_accounts(config)
        except ConfigError as err:
            self.log.say(f"PB door: reload refused, the config in use stays: {err.message}")
            return

        def swap() -> None:
            self.config, self.accounts = config, accounts
            self.store = RecordStore(config.state_dir)

        _reactor.callFromThread(swap)

    # -- calls from the perspective ----------------------------------------------------------

    def logged_in(self, perspective: TryPerspective) -> None:
        broker = perspective.broker
        broker.user = perspective.user
        broker.outcome = "ok"
        policy = self.config.user(perspective.user)
        limit = (policy.max_job_size if policy else None) or self.config.max_job_size
        broker.limit = min(limit, banana.SIZE_LIMIT) + MESSAGE_OVERHEAD
        self.log.say(f"{broker.peer} {perspective.user}: authenticated by pb")
        self.log.record(event="auth", outcome="ok", user=perspective.user, method="pb",
                        **{"from": broker.peer})  # fmt: skip

    def refuse(self, broker: DoorBroker | None, what: str, user: str | None = None) -> Any:
        """Audit a refused call and raise the PB error the client sees."""
        peer = broker.peer if broker is not None else None
        user = user or (broker.user if broker is not None else None)
        if broker is not None:
            broker.refusals += 1
            if broker.refusals > MAX_REFUSALS:
                # A client that only sends refused calls would fill the audit log.
                broker.close_soon("too many refused calls")
                raise CallRefused(f"{what} (and too many refused calls: closing)")
        self.log.say(f"{peer or '-'} {user or '-'}: PB refused {what}")
        self.log.record(event="refused", door="pb", user=user, what=what, **{"from": peer})
        raise CallRefused(what)

    def deliver(self, broker: DoorBroker, user: str, job: Job) -> defer.Deferred[BuildSet | None]:
        """Check the job at the door, deliver it in a thread; a BuildSet or None."""
        config = self.config
        allowed = allowed_builders(config, user)
        requested = job.builder_names
        fields: dict[str, object] = {"user": user, "from": broker.peer, "auth": "pb",
                                     "cmd": "deliver"}  # fmt: skip
        unknown = [n for n in requested or () if n not in allowed]
        if not allowed or unknown:
            # Buildbot answers None and its client says the builder is not configured.
            reason = (f"builder {unknown[0]!r} is not allowed for {user!r}" if unknown
                      else f"no builder is allowed for {user!r}")  # fmt: skip
            fields.update(verb="deliver", outcome="refused", reason=reason, exit=77)
            self.log.record(**fields)
            self.log.say(f"{broker.peer} {user}: PB try refused ({reason})")
            return defer.succeed(None)
        data = encode_job(job)
        try:
            pending = self.store.pending_count(user) if os.path.isdir(self.store.active) else 0
            builders = choose_builders(config, user, requested, job.branch, len(data), pending)
        except PolicyRefused as err:
            fields.update(verb="deliver", outcome="refused", reason=err.message,
                          exit=err.exit_code)  # fmt: skip
            self.log.record(**fields)
            self.log.say(f"{broker.peer} {user}: PB try refused ({err.message})")
            raise CallRefused(f"try: {err.message}") from None
        d = threads.deferToThread(self._deliver_blocking, user, data, fields)

        def delivered(name: str) -> BuildSet:
            self.log.say(f"{broker.peer} {user}: PB try delivered job={name}")
            return BuildSet(self, broker, name, builders)

        def failed(failure: Any) -> None:
            err = failure.value
            message = err.message if isinstance(err, TrysshError) else "internal error"
            raise CallRefused(f"try: {message}")

        d.addCallbacks(delivered, failed)
        return d

    def _deliver_blocking(self, user: str, data: bytes, fields: dict[str, object]) -> str:
        """Deliver through tryserver's own ``run_request``, as both other doors do: the
        same checks, outcome and audit line (runs in a reactor pool thread)."""
        config = self.config
        said: list[str] = []

        def open_request() -> RequestContext:
            # No client command: the request is a delivery, the identity the login name.
            opts = Options(jobdir=config.jobdir, user=user, config=config.path)
            opts.words = ["deliver"]  # what the audit line shows as the command
            return RequestContext(opts, env={}, config=config, audit=self.log.audit)

        code = run_request(open_request, io.BytesIO(data), io.StringIO(), fields,
                           say=said.append, warn=self.log.say, audit=self.log.audit)  # fmt: skip
        if code != 0:
            message = said[-1].removeprefix("tryserver: ") if said else f"exit status {code}"
            raise TrysshError(message, code)
        return str(fields["job"])

    # -- following jobs ----------------------------------------------------------------------

    def watch(self, build_set: BuildSet) -> None:
        if build_set in self.watched:
            return
        self.watched.append(build_set)
        build_set.broker.watches.append(build_set)
        build_set.update(self._read(build_set.job))
        if not self.poller.running:
            self.poller.start(POLL, now=False)

    def unwatch(self, build_set: BuildSet) -> None:
        if build_set in self.watched:
            self.watched.remove(build_set)

    def _twisted_event(self, event: dict[str, Any]) -> None:
        from twisted.logger import LogLevel, formatEvent

        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            failure = event.get("log_failure")
            text = formatEvent(event) or ""
            if failure is not None:
                text = f"{text} {failure.type.__name__}: {failure.getErrorMessage()}"
            self.log.say(f"PB door: {text.strip()}"[:500])

    def _sweep(self) -> None:
        """Close connections idle for idle_timeout (a waiting client is never idle)."""
        now = time.monotonic()
        for broker in list(self.brokers):
            waiting = any(not b.done for b in broker.watches)
            if not waiting and now - broker.last_activity > self.settings.idle_timeout:
                broker.close_soon("idle timeout")

    def _read(self, job: str) -> dict[str, Any] | None:
        try:
            return self.store.read(job)
        except (OSError, ValueError):
            return None

    def _poll(self) -> None:
        for build_set in list(self.watched):
            build_set.update(self._read(build_set.job))
            if build_set.done:
                self.unwatch(build_set)
        if not self.watched and self.poller.running:
            self.poller.stop()


def start_door(config: Config, log: Log, limiter: AuthLimiter, max_auth_tries: int) -> PBDoor:
    """Make and bind the door (not yet running): errors surface before serve is ready."""
    door = PBDoor(config, log, limiter, max_auth_tries)
    door.listen()
    return door

