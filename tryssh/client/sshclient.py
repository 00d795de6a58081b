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

import base64
import getpass
import logging
import os
import re
import select
import shlex
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


def _import_paramiko() -> None:
    """Import paramiko without two costs it adds to every start (~90 ms in all).

    - ``invoke``: paramiko.config imports it only to run ``Match exec`` lines of
      ~/.ssh/config; with it hidden such a line is reported as an error instead.
    - ``importlib.metadata`` (email, zipfile, csv...): paramiko asks it only for its own
      version, which the name of its ``.dist-info`` folder gives as well.

    Other users of either in this process are unaffected: both are lifted as soon as
    paramiko is loaded.
    """
    if "paramiko" in sys.modules:
        return
    hidden = {}
    if "invoke" not in sys.modules:
        hidden["invoke"] = None
    if "importlib.metadata" not in sys.modules:
        hidden["importlib.metadata"] = _VersionOnly()
    sys.modules.update(hidden)  # type: ignore[arg-type]
    try:
        import paramiko  # noqa: F401
    finally:
        for name, stand_in in hidden.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


class _VersionOnly:
    """Stands in for importlib.metadata while paramiko asks it for its version."""

    def version(self, name: str) -> str:
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            site = os.path.dirname(os.path.dirname(spec.origin))
            prefix = f"{name}-"
            for entry in os.listdir(site):
                if entry.startswith(prefix) and entry.endswith(".dist-info"):
                    return entry[len(prefix) : -len(".dist-info")]
        sys.modules.pop("importlib.metadata", None)  # not found that way: the real one
        from importlib import metadata

        return metadata.version(name)


# This module is imported only when a connection is made (tryssh.client.sshoptions holds
# what the command line needs), so that local commands never pay for paramiko.
_import_paramiko()
import paramiko  # noqa: E402

from tryssh.client.sshoptions import (  # noqa: E402
    DEFAULT_TIMEOUT,
    GLOBAL_KNOWN_HOSTS,
    OPTION_NAMES,
    SshOptions,
    enable_debug_log,
    parse_destination,
    parse_ssh_option,
)
from tryssh.core.sshkeys import blob_fingerprint  # noqa: E402
from tryssh.errors import PermissionDenied, TempFail, UsageError  # noqa: E402

# The receive window bounds what the server may send us ahead of our reading it. paramiko
# keeps that in one array and shifts the rest down on every read: with a 128 MiB window a
# fast sshd filled it, and `tryssh log` of 100 MB ran at a quarter of `ssh host cat`.
# 4 MiB keeps the shift small and is still twice OpenSSH's own 2 MiB.
WINDOW_SIZE = 4 << 20
MAX_PACKET_SIZE = 2**15
# AES-GCM needs no separate MAC pass: the fastest cipher paramiko has (measured in bench/).
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
MAX_HOPS = 8  # ProxyJump hops, first hops' own ProxyJump included
# Key types whose certificates paramiko can negotiate as host keys.
CERT_BASE_TYPES = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsa-sha2-512", "rsa-sha2-256",
)
# known_hosts key type -> host key algorithms that present such a key
_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


# Re-exported: their old home (the command line imports them from sshoptions, without paramiko).
__all__ = ["DEFAULT_TIMEOUT", "OPTION_NAMES", "SshOptions", "enable_debug_log",
           "parse_destination", "parse_ssh_option"]
LOG_CHANNEL = "paramiko.transport.tryssh"
# paramiko logs errors with tracebacks; without a handler Python would print them on stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
    global_known_hosts: list[str] = field(default_factory=lambda: [GLOBAL_KNOWN_HOSTS])
    accept_new: bool = False  # StrictHostKeyChecking=accept-new in the config or -o
    connect_timeout: float | None = None
    batch_mode: bool = False  # BatchMode yes: never ask for a passphrase

    @property
    def host_key_name(self) -> str:
        # OpenSSH uses HostKeyAlias exactly as written: no [ ]:port is added to it.
        return self.host_key_alias or known_hosts_name(self.hostname, self.port)

    @property
    def cert_name(self) -> str:
        """The name a host certificate must list as a principal (no port)."""
        return self.host_key_alias or self.hostname

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
    dest_user, alias, dest_port = parse_destination(opts.host)
    try:
        entry = config.lookup(alias)
    except ImportError:  # paramiko wants invoke to run a Match exec line: tryssh hides it
        where = _expand(opts.ssh_config or "~/.ssh/config")
        raise UsageError(f"cannot apply the ssh config to {alias}: {where} has a 'Match exec' "
                         "line, which tryssh does not run; give the host's settings without "
                         "it (-F FILE, -o Option=value)") from None
    except Exception as err:  # paramiko raises several types for bad Match/tokens
        raise UsageError(f"cannot apply the ssh config to {alias}: {err}") from None
    for key, value in opts.options.items():  # -o wins over the file
        if key == "identityfile":
            entry[key] = [value, *entry.get(key, [])]
        else:
            entry[key] = value
    if opts.proxy_jump:
        entry["proxyjump"] = opts.proxy_jump
    if dest_port is not None:
        port_text: object = dest_port
    else:
        port_text = opts.port if opts.port is not None else entry.get("port", 22)
    try:
        port = int(port_text)  # type: ignore[call-overload]
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
    global_known = [_expand(p) for p in entry.get("globalknownhostsfile", GLOBAL_KNOWN_HOSTS)
                    .split()]  # fmt: skip
    strict = entry.get("stricthostkeychecking", "yes").lower()
    if strict not in ("yes", "ask", "accept-new", "no", "off"):
        raise UsageError(f"bad StrictHostKeyChecking for {alias}: {strict!r}")
    connect_timeout = None
    if "connecttimeout" in entry:
        try:
            connect_timeout = float(entry["connecttimeout"])
        except ValueError:
            raise UsageError(
                f"bad ConnectTimeout for {alias}: {entry['connecttimeout']!r}"
            ) from None
    hostname = entry.get("hostname", alias)
    user = dest_user or opts.user or entry.get("user") or getpass.getuser()
    proxy_command = entry.get("proxycommand")
    if proxy_command and proxy_command.lower() == "none":
        proxy_command = None
    elif proxy_command and "proxycommand" in opts.options:
        # paramiko expands %h, %p and %r in the file's ProxyCommand; do it for -o's too.
        tokens = {"h": hostname, "p": str(port), "r": user, "%": "%"}
        proxy_command = re.sub(r"%([hpr%])", lambda m: tokens[m.group(1)], proxy_command)
    proxy_jump = entry.get("proxyjump")
    if proxy_jump and proxy_jump.lower() == "none":
        proxy_jump = None
    return Target(
        alias=alias,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=identities,
        identities_only=identities_only,
        proxy_command=proxy_command,
        proxy_jump=proxy_jump,
        host_key_alias=entry.get("hostkeyalias"),
        known_hosts_files=known,
        agent_socket=entry.get("identityagent"),
        global_known_hosts=global_known,
        # "no" is not honoured as such: tryssh never accepts a changed key.
        accept_new=strict in ("accept-new", "no", "off"),
        connect_timeout=connect_timeout,
        batch_mode=entry.get("batchmode", "no").lower() == "yes",
    )


# -- host keys ------------------------------------------------------------------------------


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's host pattern match: ``*`` and ``?`` only (``[`` is literal), no case."""
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == name.lower()
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name, re.IGNORECASE) is not None


@dataclass
class KnownKey:
    """One known_hosts line: its host patterns, key, marker and where it was read."""

    patterns: list[str]
    key: paramiko.PKey
    path: str
    lineno: int
    marker: str = ""  # "", "@cert-authority"

    def matches(self, name: str) -> bool:
        """OpenSSH's rules: hashed names, wildcards, and ``!pattern`` negation."""
        hit = False
        for pattern in self.patterns:
            if pattern.startswith("|1|"):
                if paramiko.HostKeys.hash_host(name, pattern) == pattern:
                    hit = True
                continue
            negated = pattern.startswith("!")
            if _glob(pattern.lstrip("!"), name):
                if negated:
                    return False
                hit = True
        return hit


class KnownHosts:
    """The known_hosts files for one connection, with ``@revoked`` and ``@cert-authority``."""

    def __init__(self, paths: list[str], global_paths: list[str] | None = None) -> None:
        self.paths = paths
        self.entries: list[KnownKey] = []
        self.revoked: set[str] = set()  # base64 blobs
        for path in [*paths, *(global_paths if global_paths is not None else [GLOBAL_KNOWN_HOSTS])]:
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
            marker = ""
            if words[0].startswith("@"):
                marker, words = words[0], words[1:]
                if marker == "@revoked" and len(words) >= 3:
                    self.revoked.add(words[2])
                if marker != "@cert-authority":
                    continue
            if len(words) < 3:
                continue
            try:
                key = paramiko.PKey.from_type_string(words[1], base64.b64decode(words[2]))
            except Exception:  # noqa: S112 (paramiko's parsers raise many types)
                # OpenSSH skips lines it cannot read, and so do we: a type paramiko lacks
                # (ssh-dss since paramiko 4, security-key host keys) or a damaged key
                # (paramiko says UnknownKeyType, OverflowError, struct.error, ...).
                continue
            self.entries.append(KnownKey(words[0].split(","), key, path, lineno, marker))

    def _plain(self, name: str) -> list[KnownKey]:
        return [e for e in self.entries if not e.marker and e.matches(name)]

    def authorities(self, name: str) -> list[KnownKey]:
        return [e for e in self.entries if e.marker == "@cert-authority" and e.matches(name)]

    def known_types(self, name: str) -> list[str]:
        types = [e.key.get_name() for e in self._plain(name)]
        return list(dict.fromkeys(types))

    def check(self, name: str, key: paramiko.PKey, policy: paramiko.MissingHostKeyPolicy,
              cert_name: str | None = None) -> None:
        """Refuse a revoked, changed or unknown (per *policy*) host key.

        A host certificate is accepted when an ``@cert-authority`` line for *name* signed
        it for *cert_name* (see :func:`check_host_certificate`).
        """
        if key.get_base64() in self.revoked:
            raise HostKeyError(
                f"host key for {name} ({key.get_name()} {fingerprint(key)}) is REVOKED in "
                "known_hosts; refusing to connect"
            )
        blob = getattr(key, "public_blob", None)
        if blob is not None and blob.key_type.endswith("-cert-v01@openssh.com"):
            authorities = self.authorities(name)
            if authorities:
                check_host_certificate(
                    blob.key_blob, cert_name or name, authorities, self.revoked
                )
                return
        entries = self._plain(name)
        if not entries:
            policy.missing_host_key(None, name, key)
            return
        same_type = [e for e in entries if e.key.get_name() == key.get_name()]
        if any(e.key == key for e in same_type):
            return
        old = same_type[0] if same_type else entries[0]
        raise HostKeyError(
            f"WARNING: HOST KEY FOR {name} HAS CHANGED (someone may be intercepting the "
            f"connection): server offered {key.get_name()} {fingerprint(key)}, the old key "
            f"{old.key.get_name()} {fingerprint(old.key)} is in {old.path}:{old.lineno}; "
            f"refusing to connect. If the change is legitimate, remove the old key with: "
            f"ssh-keygen -f {shlex.quote(old.path)} -R {shlex.quote(name)}"
        )


def _strings(raw: bytes) -> list[str]:
    """An SSH ``string`` holding a sequence of strings (certificate principals)."""
    reader = paramiko.Message(raw)
    out = []
    while reader.packet.tell() < len(raw):
        out.append(reader.get_text())
    return out


def check_host_certificate(
    cert: bytes, name: str, authorities: list[KnownKey], revoked: set[str],
    now: float | None = None,
) -> None:
    """Verify an OpenSSH host certificate (PROTOCOL.certkeys) against known CA keys.

    paramiko negotiates ``*-cert-v01@openssh.com`` host keys and checks that the server
    holds the certified key, but never looks at the certificate itself: this does (CA
    signature, host type, principal, validity window, no unknown critical options).
    """
    msg = paramiko.Message(cert)
    try:
        cert_type = msg.get_text()
        msg.get_binary()  # nonce
        base = cert_type.replace("-cert-v01@openssh.com", "")
        if base == "ssh-rsa":
            msg.get_mpint()
            msg.get_mpint()
        elif base.startswith("ecdsa-sha2-"):
            msg.get_text()
            msg.get_binary()
        elif base == "ssh-ed25519":
            msg.get_binary()
        else:
            raise HostKeyError(f"host certificate for {name}: unsupported type {cert_type}")
        msg.get_int64()  # serial
        role = msg.get_int()
        key_id = msg.get_text()
        principals = _strings(msg.get_binary())
        valid_after = msg.get_int64()
        valid_before = msg.get_int64()
        critical = msg.get_binary()
        msg.get_binary()  # extensions
        msg.get_binary()  # reserved
        ca_blob = msg.get_binary()
        signed = cert[: msg.packet.tell()]
        signature = msg.get_binary()
    except (paramiko.SSHException, ValueError, struct.error, IndexError) as err:
        raise HostKeyError(f"host certificate for {name} is malformed: {err}") from None
    what = f"host certificate for {name} (id {key_id!r})"
    if role != 2:
        raise HostKeyError(f"{what} is a user certificate, not a host certificate")
    ca = [a for a in authorities if a.key.asbytes() == ca_blob]
    if not ca:
        raise HostKeyError(f"{what} is signed by a CA that known_hosts does not trust for {name}")
    if base64.b64encode(ca_blob).decode() in revoked:
        raise HostKeyError(f"{what} is signed by a REVOKED CA key")
    if not ca[0].key.verify_ssh_sig(signed, paramiko.Message(signature)):
        raise HostKeyError(f"{what} has a bad CA signature")
    if principals and name not in principals:
        raise HostKeyError(f"{what} is not valid for {name} (it names {', '.join(principals)})")
    clock = time.time() if now is None else now
    if not valid_after <= clock < valid_before:
        raise HostKeyError(f"{what} is not valid now (expired or not yet valid)")
    if critical:
        raise HostKeyError(f"{what} has critical options tryssh does not understand")


# -- authentication -------------------------------------------------------------------------


def _public_blob(path: str) -> str | None:
    """The base64 blob of ``path.pub``, if there is one."""
    try:
        with open(path + ".pub", encoding="utf-8") as pub:
            words = pub.read().split()
    except OSError:
        return None
    return words[1] if len(words) >= 2 else None


class NeedsPassphrase(PermissionDenied):
    """An identity file needs its passphrase, and this connection may not ask for it."""


def load_private_key(
    path: str, batch_mode: bool = False, interactive: bool = True
) -> paramiko.PKey:
    """Load an identity file, asking for its passphrase on a terminal if it is encrypted
    (unless not *interactive*: then NeedsPassphrase, for the caller to ask in its time)."""
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
    except OSError as err:
        raise UsageError(f"cannot load identity file {path}: {err.strerror}") from None
    except Exception as err:  # paramiko and cryptography raise many types for a bad key
        reason = str(err).strip() or type(err).__name__
        raise UsageError(f"cannot load identity file {path}: {reason}") from None
    if batch_mode or not (sys.stdin.isatty() and sys.stderr.isatty()):
        why = "BatchMode forbids asking" if batch_mode else "there is no terminal to ask"
        raise PermissionDenied(
            f"identity file {path} is encrypted and {why} for its passphrase; add it to "
            "ssh-agent (ssh-add) first"
        )
    if not interactive:
        raise NeedsPassphrase(f"identity file {path} needs its passphrase")
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
        try:
            key = (
                load_private_key(candidate, target.batch_mode, opts.interactive)
                if isinstance(candidate, str) else candidate
            )
        except UsageError as err:
            if target.identity_files:
                raise  # one the user named: say so
            # A default one (~/.ssh/id_*) tryssh cannot read: skipped, as ssh does.
            print(f"tryssh: {err.message} (skipped)", file=sys.stderr)
            continue
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


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, but one that notices when the command exits.

    paramiko's ``recv`` loops on a closed pipe until its timeout and then reports a timeout,
    so a dead proxy (killed by the same Ctrl-C as us) looked like a slow server forever.
    An empty read is end of file: returning it lets paramiko see the connection is gone.
    """

    def recv(self, size: int) -> bytes:
        buffer = b""
        start = time.monotonic()
        try:
            while len(buffer) < size:
                wait = None
                if self.timeout is not None:
                    wait = self.timeout - (time.monotonic() - start)
                    if wait <= 0:
                        raise TimeoutError()
                ready, _, _ = select.select([self.process.stdout], [], [], wait)
                if ready:
                    chunk = os.read(self.process.stdout.fileno(), size - len(buffer))
                    if not chunk:
                        return buffer  # the command exited
                    buffer += chunk
            return buffer
        except TimeoutError:
            if buffer:
                return buffer
            raise
        except OSError as err:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), err.strerror) from None


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
            return _ProxyCommand(target.proxy_command)
        except (OSError, paramiko.SSHException) as err:
            raise TempFail(f"ProxyCommand failed for {target.alias}: {err}") from None
    timeout = target.connect_timeout or opts.timeout
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    except TimeoutError:
        raise TempFail(
            f"cannot connect to {target.hostname} port {target.port}: Connection timed out "
            f"after {timeout:g}s"
        ) from None
    except socket.gaierror as err:
        raise TempFail(
            f"cannot resolve {target.hostname}: {err.strerror or err} (is it an ssh config "
            "alias? check -F and ~/.ssh/config)"
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
        """Close this connection and its jump hosts; never raises (the peer may be gone)."""
        try:
            self.transport.close()
        except (paramiko.SSHException, OSError, EOFError):
            pass
        if self.jump is not None:
            self.jump.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(opts: SshOptions, _depth: int = 0, _via: Connection | None = None) -> Connection:
    """Resolve, connect, check the host key and authenticate; raise TrysshError on failure.

    ``ProxyJump a,b`` (or ``-J``) connects to ``a``, then to ``b`` through ``a``, then to the
    target through ``b``, as OpenSSH does; only the first hop's own ProxyJump is followed.
    """
    config = load_ssh_config(opts.ssh_config)
    target = resolve_target(opts, config)
    jump = _via
    try:
        if _via is None and target.proxy_jump and not target.proxy_command:
            hops = [h.strip() for h in target.proxy_jump.split(",") if h.strip()]
            if _depth + len(hops) > MAX_HOPS:
                raise UsageError(f"too many ProxyJump hops for {opts.host} (at most {MAX_HOPS})")
            for hop in hops:
                jump = _connect_hop(hop, opts, _depth + 1, jump)
        sock = _open_socket(target, opts, jump)
        return _handshake(sock, target, opts, jump)
    except BaseException:
        if jump is not None and jump is not _via:
            jump.close()
        raise


def _connect_hop(spec: str, opts: SshOptions, depth: int, via: Connection | None) -> Connection:
    """Connect to one ``[ssh://][user@]host[:port]`` hop of a ProxyJump chain."""
    user, host, port = parse_destination(spec)
    hop = SshOptions(
        host=host, port=port, user=user, known_hosts=opts.known_hosts,
        accept_new_host_key=opts.accept_new_host_key, timeout=opts.timeout,
        ssh_config=opts.ssh_config, agent=opts.agent, quiet=opts.quiet,
        interactive=opts.interactive,
    )
    return connect(hop, depth, _via=via)


class _BannerLog(logging.Handler):
    """Remembers the non-SSH lines a server sent before (instead of) its SSH banner."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Banner: ") and len(self.lines) < 3:
            self.lines.append(text[8:].strip())


def _describe_failure(err: BaseException, target: Target, banner: _BannerLog,
                      started: float, timeout: float, before_kex: bool) -> str:
    """One line a person understands, in OpenSSH's words where it has them."""
    text = str(err) or type(err).__name__
    where = f"{target.hostname} port {target.port}"
    if before_kex and isinstance(err, TimeoutError) and not banner.lines:
        return f"Connection timed out during banner exchange with {where}"
    if before_kex and ("protocol banner" in text or "Indecipherable" in text
                       or isinstance(err, EOFError)):
        if banner.lines:
            return (f"kex_exchange_identification: {where} is not an SSH server "
                    f"(it answered {banner.lines[0][:60]!r})")
        if time.monotonic() - started >= timeout * 0.9:
            return f"Connection timed out during banner exchange with {where}"
        return f"kex_exchange_identification: Connection closed by {where}"
    if isinstance(err, paramiko.IncompatiblePeer) or "Incompatible" in text:
        return f"Unable to negotiate with {where}: {text}"
    return f"SSH connection to {target} failed: {text}"


def _handshake(
    sock: object, target: Target, opts: SshOptions, jump: Connection | None
) -> Connection:
    known = KnownHosts(target.known_hosts_files, target.global_known_hosts)
    policy: paramiko.MissingHostKeyPolicy
    if opts.accept_new_host_key or target.accept_new:
        policy = AcceptNewHostKey(target.known_hosts_files[0], quiet=opts.quiet)
    else:
        policy = RefuseUnknownHostKey()
    try:
        transport = paramiko.Transport(
            sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE
        )
    except (paramiko.SSHException, OSError) as err:
        raise TempFail(f"cannot start SSH with {target}: {err}") from None
    banner = _BannerLog()
    # A channel of our own: paramiko's messages (and its tracebacks) never reach the
    # terminal unless -v asked for them; the banner lines feed the error message.
    transport.set_log_channel(LOG_CHANNEL)
    channel_log = logging.getLogger(LOG_CHANNEL)
    channel_log.addHandler(banner)
    channel_log.setLevel(logging.DEBUG)
    transport.banner_timeout = opts.timeout
    transport.handshake_timeout = opts.timeout
    transport.auth_timeout = opts.timeout
    transport.use_compression(False)
    # Ask for the host key types known_hosts has, as OpenSSH does, so that a server with
    # several keys shows the one we can check.
    known_types: list[str] = []
    if known.authorities(target.host_key_name):
        # Ask for certificates first: a @cert-authority line vouches for those.
        known_types.extend(f"{t}-cert-v01@openssh.com" for t in CERT_BASE_TYPES)
    for name in known.known_types(target.host_key_name):
        known_types.extend(_KEY_ALGORITHMS.get(name, (name,)))
    security = transport.get_security_options()
    try:
        # paramiko appends the certificate types after all plain ones; list the ones we want
        # first explicitly (a cert type is valid in the list: it is in Transport._key_info).
        offered = tuple(security.key_types) + tuple(
            t for t in known_types if t in paramiko.Transport._key_info
        )
        security.key_types = _preferred(offered, known_types)
        security.ciphers = _preferred(tuple(security.ciphers), list(PREFERRED_CIPHERS))
    except ValueError:
        pass
    started = time.monotonic()
    before_kex = True
    try:
        transport.start_client(timeout=opts.timeout)
        if not getattr(transport, "initial_kex_done", True):
            # paramiko returns from start_client at the deadline without an error.
            raise TimeoutError("timed out")
        before_kex = False
        key = transport.get_remote_server_key()
        known.check(target.host_key_name, key, policy, cert_name=target.cert_name)
        authenticate(transport, target, opts)
    except (paramiko.SSHException, OSError, EOFError) as err:
        transport.close()
        before_kex = before_kex and transport.remote_version in ("", None)
        raise TempFail(
            _describe_failure(err, target, banner, started, opts.timeout, before_kex)
        ) from None
    except BaseException:
        transport.close()
        raise
    finally:
        channel_log.removeHandler(banner)
    return Connection(transport, target, opts, jump)
