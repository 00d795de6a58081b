"""An SSH connection the way OpenSSH users expect it, built on paramiko.

* The host is resolved through ``~/.ssh/config`` (Host aliases, HostName, User, Port,
  IdentityFile, IdentitiesOnly, ProxyCommand, ProxyJump, HostKeyAlias, UserKnownHostsFile).
* Host keys are checked strictly against ``known_hosts``: an unknown key is refused (or, with
  ``accept_new``, recorded like ``StrictHostKeyChecking=accept-new``); a changed or revoked key
  is always refused.
* Authentication uses the agent and identity files; an encrypted key asks for its passphrase
  on a terminal. With a pinned identity (``-i`` or IdentitiesOnly) only that key is offered,
  because with forced commands the first accepted key decides who you are.
* Every step has a timeout (connect, banner, key exchange, auth, idle channel I/O), so a dead
  server never hangs the client.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import paramiko

from tryssh.core.sshkeys import blob_fingerprint
from tryssh.errors import PermissionDenied, TempFail, UsageError

DEFAULT_TIMEOUT = 30.0
# The receive window only matters for what the server sends us, but a large one costs nothing
# and avoids window-adjust round trips on bigger answers. The upload rate is bounded by the
# server's window and packet size (OpenSSH: 2 MiB / 32 KiB), not ours.
WINDOW_SIZE = 2**27
MAX_PACKET_SIZE = 2**15
# AES-GCM needs no separate MAC pass: the fastest cipher paramiko has (measured in bench/).
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
# known_hosts key type -> host key algorithms that present such a key
_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


class HostKeyError(PermissionDenied):
    """The server's host key is unknown, changed or revoked."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    return blob_fingerprint(key.asbytes())


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH looks a host up by: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """StrictHostKeyChecking=yes: an unknown host key is an error naming its fingerprint."""

    def missing_host_key(self, client: object, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"host key for {hostname} is not known ({key.get_name()} {fingerprint(key)}); "
            "check the fingerprint with the server's admin, then rerun with "
            "--accept-new-host-key to trust it"
        )


class AcceptNewHostKey(paramiko.MissingHostKeyPolicy):
    """StrictHostKeyChecking=accept-new: record an unknown key in *path* (never a changed one)."""

    def __init__(self, path: str, quiet: bool = False) -> None:
        self.path = path
        self.quiet = quiet

    def missing_host_key(self, client: object, hostname: str, key: paramiko.PKey) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with open(self.path, "a+", encoding="utf-8") as out:
            # Keep the file line-oriented even if its last line lacks a newline.
            out.seek(0, os.SEEK_END)
            if out.tell() > 0:
                out.seek(out.tell() - 1)
                if out.read(1) != "\n":
                    out.write("\n")
            out.write(line)
        if not self.quiet:
            print(
                f"tryssh: added host key for {hostname} ({key.get_name()} {fingerprint(key)}) "
                f"to {self.path}",
                file=sys.stderr,
            )


@dataclass
class SshOptions:
    """What the user asked for on the command line (None: take it from ~/.ssh/config)."""

    host: str
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    timeout: float = DEFAULT_TIMEOUT
    ssh_config: str | None = None  # default ~/.ssh/config
    agent: bool | None = None  # None: on, unless an identity is pinned
    quiet: bool = False


@dataclass
class Target:
    """A host resolved through ~/.ssh/config."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[str] = field(default_factory=list)
    identities_only: bool = False
    proxy_command: str | None = None
    proxy_jump: str | None = None
    host_key_alias: str | None = None
    known_hosts_files: list[str] = field(default_factory=list)
    agent_socket: str | None = None  # IdentityAgent; "none" disables the agent

    @property
    def host_key_name(self) -> str:
        return known_hosts_name(self.host_key_alias or self.hostname, self.port)

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def _expand(path: str) -> str:
    return os.path.expanduser(path)


def load_ssh_config(path: str | None = None) -> paramiko.SSHConfig:
    """The user's ssh config (an empty one if the file does not exist)."""
    path = _expand(path or "~/.ssh/config")
    if not os.path.exists(path):
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None


def resolve_target(opts: SshOptions, config: paramiko.SSHConfig | None = None) -> Target:
    """Apply ~/.ssh/config to *opts* (the command line wins, as with ssh)."""
    if config is None:
        config = load_ssh_config(opts.ssh_config)
    try:
        entry = config.lookup(opts.host)
    except Exception as err:  # paramiko raises several types for bad Match/tokens
        raise UsageError(f"cannot apply ~/.ssh/config to {opts.host}: {err}") from None
    port_text = opts.port if opts.port is not None else entry.get("port", 22)
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"bad port for {opts.host}: {port_text!r}") from None
    if opts.identity:
        identities = [_expand(opts.identity)]
        identities_only = True
    else:
        identities = [_expand(p) for p in entry.get("identityfile", [])]
        identities_only = entry.get("identitiesonly", "no").lower() == "yes"
    known = [_expand(p) for p in entry.get("userknownhostsfile", "~/.ssh/known_hosts").split()]
    if opts.known_hosts:
        known.insert(0, _expand(opts.known_hosts))
    proxy_command = entry.get("proxycommand")
    if proxy_command and proxy_command.lower() == "none":
        proxy_command = None
    proxy_jump = entry.get("proxyjump")
    if proxy_jump and proxy_jump.lower() == "none":
        proxy_jump = None
    return Target(
        alias=opts.host,
        hostname=entry.get("hostname", opts.host),
        port=port,
        user=opts.user or entry.get("user") or getpass.getuser(),
        identity_files=identities,
        identities_only=identities_only,
        proxy_command=proxy_command,
        proxy_jump=proxy_jump,
        host_key_alias=entry.get("hostkeyalias"),
        known_hosts_files=known,
        agent_socket=entry.get("identityagent"),
    )


# -- host keys ------------------------------------------------------------------------------


class KnownHosts:
    """The known_hosts files for one connection, plus their ``@revoked`` lines."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.keys = paramiko.HostKeys()
        self.revoked: set[str] = set()  # base64 blobs
        for path in [*paths, "/etc/ssh/ssh_known_hosts"]:
            if os.path.isfile(path):
                self._load(path)

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8", errors="replace") as lines:
                text = lines.read()
        except OSError as err:
            raise UsageError(f"cannot read known_hosts file {path}: {err.strerror}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0].startswith("@"):
                # paramiko cannot read marker lines; OpenSSH honours @revoked.
                if words[0] == "@revoked" and len(words) >= 4:
                    self.revoked.add(words[3])
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
            except (paramiko.SSHException, ValueError):
                entry = None  # OpenSSH skips lines it cannot read, and so do we
            if entry is None:
                continue
            for name in entry.hostnames:
                self.keys.add(name, entry.key.get_name(), entry.key)

    def known_types(self, name: str) -> list[str]:
        entry = self.keys.lookup(name)
        return list(entry.keys()) if entry else []

    def check(self, name: str, key: paramiko.PKey, policy: paramiko.MissingHostKeyPolicy) -> None:
        """Refuse a revoked, changed or unknown (per *policy*) host key."""
        if key.get_base64() in self.revoked:
            raise HostKeyError(
                f"host key for {name} ({key.get_name()} {fingerprint(key)}) is REVOKED in "
                "known_hosts; refusing to connect"
            )
        entry = self.keys.lookup(name)
        if not entry:
            policy.missing_host_key(None, name, key)
            return
        known = entry.get(key.get_name())
        if known is not None and known == key:
            return
        if known is not None:
            old = f"{known.get_name()} {fingerprint(known)}"
        else:
            old = ", ".join(f"{t} {fingerprint(k)}" for t, k in entry.items())
        raise HostKeyError(
            f"WARNING: HOST KEY FOR {name} HAS CHANGED (someone may be intercepting the "
            f"connection): server offered {key.get_name()} {fingerprint(key)}, known_hosts has "
            f"{old}; refusing to connect (fix known_hosts if the change is legitimate)"
        )


# -- authentication -------------------------------------------------------------------------


def _public_blob(path: str) -> str | None:
    """The base64 blob of ``path.pub``, if there is one."""
    try:
        with open(path + ".pub", encoding="utf-8") as pub:
            words = pub.read().split()
    except OSError:
        return None
    return words[1] if len(words) >= 2 else None


def load_private_key(path: str) -> paramiko.PKey:
    """Load an identity file, asking for its passphrase on a terminal if it is encrypted."""
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        pass
    except TypeError as err:
        # cryptography's way of saying an OpenSSH-format key needs its passphrase
        if "password" not in str(err).lower():
            raise UsageError(f"cannot load identity file {path}: {err}") from None
    except FileNotFoundError:
        raise UsageError(f"identity file {path} does not exist") from None
    except (OSError, paramiko.SSHException, ValueError) as err:
        raise UsageError(f"cannot load identity file {path}: {err}") from None
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise PermissionDenied(
            f"identity file {path} is encrypted and there is no terminal to ask for its "
            "passphrase; add it to ssh-agent (ssh-add) first"
        )
    for _ in range(3):
        passphrase = getpass.getpass(f"Enter passphrase for key '{path}': ")
        try:
            return paramiko.PKey.from_path(path, passphrase.encode())
        except (paramiko.SSHException, ValueError, TypeError):
            print("tryssh: bad passphrase, try again.", file=sys.stderr)
    raise PermissionDenied(f"wrong passphrase for identity file {path}")


def _agent_keys(target: Target, opts: SshOptions) -> list[paramiko.AgentKey]:
    if target.agent_socket and target.agent_socket.lower() == "none":
        return []
    want = opts.agent if opts.agent is not None else True
    if not want:
        return []
    saved = os.environ.get("SSH_AUTH_SOCK")
    if target.agent_socket and target.agent_socket != "SSH_AUTH_SOCK":
        os.environ["SSH_AUTH_SOCK"] = _expand(target.agent_socket)
    try:
        if not os.environ.get("SSH_AUTH_SOCK"):
            return []
        return list(paramiko.Agent().get_keys())
    except (OSError, paramiko.SSHException):
        return []
    finally:
        if saved is None:
            os.environ.pop("SSH_AUTH_SOCK", None)
        else:
            os.environ["SSH_AUTH_SOCK"] = saved


def _candidates(target: Target, opts: SshOptions) -> Iterator[tuple[str, object]]:
    """(description, key or path) in the order OpenSSH would offer them."""
    agent = _agent_keys(target, opts)
    if target.identities_only:
        # Pinned: only these identities; the agent may sign for them (no passphrase prompt).
        by_blob = {k.get_base64(): k for k in agent}
        for path in target.identity_files:
            blob = _public_blob(path)
            if blob in by_blob:
                yield f"{path} (via agent)", by_blob[blob]
            else:
                yield path, path
        return
    seen: set[str] = set()
    for key in agent:
        seen.add(key.get_base64())
        comment = getattr(key, "comment", "") or key.get_name()
        yield f"agent key {comment}", key
    paths = list(target.identity_files)
    if not paths:
        paths = [_expand(f"~/.ssh/{name}") for name in DEFAULT_IDENTITIES]
        paths = [p for p in paths if os.path.exists(p)]
    for path in paths:
        if _public_blob(path) in seen:
            continue
        yield path, path


def authenticate(transport: paramiko.Transport, target: Target, opts: SshOptions) -> None:
    """Public-key authentication with the agent and identity files; raise PermissionDenied."""
    tried: list[str] = []
    for label, candidate in _candidates(target, opts):
        key = load_private_key(candidate) if isinstance(candidate, str) else candidate
        tried.append(label)
        try:
            transport.auth_publickey(target.user, key)  # type: ignore[arg-type]
        except paramiko.BadAuthenticationType as err:
            raise PermissionDenied(
                f"{target} does not accept public keys (it allows: {', '.join(err.allowed_types)})"
            ) from None
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise TempFail(f"connection to {target} lost during authentication: {err}") from None
        if transport.is_authenticated():
            return
    if not tried:
        raise PermissionDenied(
            f"no key to log in to {target}: start ssh-agent or pass -i/--identity"
        )
    raise PermissionDenied(f"authentication to {target} failed (tried {', '.join(tried)})")


# -- connecting -----------------------------------------------------------------------------


def _open_socket(target: Target, opts: SshOptions, jump: Connection | None) -> object:
    if jump is not None:
        try:
            chan = jump.transport.open_channel(
                "direct-tcpip",
                (target.hostname, target.port),
                ("127.0.0.1", 0),
                timeout=opts.timeout,
            )
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise TempFail(
                f"jump host {jump.target} cannot reach {target.hostname}:{target.port}: {err}"
            ) from None
        return chan
    if target.proxy_command:
        try:
            return paramiko.ProxyCommand(target.proxy_command)
        except (OSError, paramiko.SSHException) as err:
            raise TempFail(f"ProxyCommand failed for {target.alias}: {err}") from None
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=opts.timeout)
    except TimeoutError:
        raise TempFail(
            f"cannot connect to {target.hostname} port {target.port}: timed out "
            f"after {opts.timeout:g}s"
        ) from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise TempFail(
            f"cannot connect to {target.hostname} port {target.port}: {reason}"
        ) from None
    # Small jobs are a few packets: do not let Nagle delay them.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _preferred(order: tuple[str, ...], first: list[str]) -> tuple[str, ...]:
    front = [name for name in first if name in order]
    return tuple(front + [name for name in order if name not in front])


class Connection:
    """An authenticated SSH connection (use as a context manager)."""

    def __init__(
        self,
        transport: paramiko.Transport,
        target: Target,
        opts: SshOptions,
        jump: Connection | None = None,
    ) -> None:
        self.transport = transport
        self.target = target
        self.opts = opts
        self.jump = jump

    def open_session(self) -> paramiko.Channel:
        """A new session channel with the idle timeout set (never a pty)."""
        try:
            chan = self.transport.open_session(timeout=self.opts.timeout)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise TempFail(f"cannot open a channel to {self.target}: {err}") from None
        chan.settimeout(self.opts.timeout)
        return chan

    def open_sftp(self) -> paramiko.SFTPClient:
        try:
            sftp = paramiko.SFTPClient.from_transport(
                self.transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE
            )
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise TempFail(f"cannot start sftp on {self.target}: {err}") from None
        if sftp is None:
            raise TempFail(f"cannot start sftp on {self.target}")
        sftp.get_channel().settimeout(self.opts.timeout)  # type: ignore[union-attr]
        return sftp

    def close(self) -> None:
        self.transport.close()
        if self.jump is not None:
            self.jump.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(opts: SshOptions, _depth: int = 0) -> Connection:
    """Resolve, connect, check the host key and authenticate; raise TrysshError on failure."""
    config = load_ssh_config(opts.ssh_config)
    target = resolve_target(opts, config)
    jump: Connection | None = None
    if target.proxy_jump and not target.proxy_command:
        if _depth >= 4:
            raise UsageError(f"too many ProxyJump hops for {opts.host}")
        jump = _connect_jump(target.proxy_jump, opts, _depth)
    try:
        sock = _open_socket(target, opts, jump)
        return _handshake(sock, target, opts, jump)
    except BaseException:
        if jump is not None:
            jump.close()
        raise


def _connect_jump(spec: str, opts: SshOptions, depth: int) -> Connection:
    """Connect to the first hop of ``ProxyJump [user@]host[:port][,...]``."""
    first = spec.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    user, _, hostport = first.rpartition("@")
    host, port = hostport, None
    if hostport.count(":") == 1:
        host, port_text = hostport.split(":")
        port = int(port_text) if port_text.isdigit() else None
    hop = SshOptions(
        host=host,
        port=port,
        user=user or None,
        known_hosts=opts.known_hosts,
        accept_new_host_key=opts.accept_new_host_key,
        timeout=opts.timeout,
        ssh_config=opts.ssh_config,
        agent=opts.agent,
        quiet=opts.quiet,
    )
    return connect(hop, depth + 1)


def _handshake(
    sock: object, target: Target, opts: SshOptions, jump: Connection | None
) -> Connection:
    known = KnownHosts(target.known_hosts_files)
    policy: paramiko.MissingHostKeyPolicy
    if opts.accept_new_host_key:
        policy = AcceptNewHostKey(target.known_hosts_files[0], quiet=opts.quiet)
    else:
        policy = RefuseUnknownHostKey()
    try:
        transport = paramiko.Transport(
            sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE
        )
    except (paramiko.SSHException, OSError) as err:
        raise TempFail(f"cannot start SSH with {target}: {err}") from None
    transport.banner_timeout = opts.timeout
    transport.handshake_timeout = opts.timeout
    transport.auth_timeout = opts.timeout
    transport.use_compression(False)
    # Ask for the host key types known_hosts has, as OpenSSH does, so that a server with
    # several keys shows the one we can check.
    known_types: list[str] = []
    for name in known.known_types(target.host_key_name):
        known_types.extend(_KEY_ALGORITHMS.get(name, (name,)))
    security = transport.get_security_options()
    try:
        security.key_types = _preferred(tuple(security.key_types), known_types)
        security.ciphers = _preferred(tuple(security.ciphers), list(PREFERRED_CIPHERS))
    except ValueError:
        pass
    try:
        transport.start_client(timeout=opts.timeout)
        key = transport.get_remote_server_key()
        known.check(target.host_key_name, key, policy)
        authenticate(transport, target, opts)
    except (paramiko.SSHException, OSError, EOFError) as err:
        transport.close()
        text = str(err) or type(err).__name__
        raise TempFail(f"SSH connection to {target} failed: {text}") from None
    except BaseException:
        transport.close()
        raise
    return Connection(transport, target, opts, jump)
