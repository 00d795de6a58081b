"""What the user asked of an SSH connection, and how OpenSSH users write it: kept apart from
:mod:`tryssh.client.sshclient` so that building a job, ``--dry-run`` and local queries never
import paramiko."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from tryssh.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

DEFAULT_TIMEOUT = 30.0

# The ssh_config options tryssh honours, for -o (lower case, as paramiko.SSHConfig keys them).
HONOURED_OPTIONS = (
    "hostname", "port", "user", "identityfile", "identitiesonly", "identityagent",
    "proxycommand", "proxyjump", "hostkeyalias", "userknownhostsfile", "globalknownhostsfile",
    "stricthostkeychecking", "connecttimeout", "batchmode",
)  # fmt: skip
_CANONICAL = {name.lower(): name for name in (
    "HostName", "Port", "User", "IdentityFile", "IdentitiesOnly", "IdentityAgent",
    "ProxyCommand", "ProxyJump", "HostKeyAlias", "UserKnownHostsFile", "GlobalKnownHostsFile",
    "StrictHostKeyChecking", "ConnectTimeout", "BatchMode",
)}  # fmt: skip
OPTION_NAMES = tuple(_CANONICAL[k] for k in HONOURED_OPTIONS)
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


@dataclass
class SshOptions:
    """What the user asked for on the command line (None: take it from ~/.ssh/config).

    ``host`` may carry a user and a port, as OpenSSH users write them: ``user@host``,
    ``host:port``, ``[v6addr]:port`` or ``ssh://user@host:port``; those parts win over
    ``user`` and ``port``. ``options`` are ``-o`` settings (lower-case names), which win
    over the ssh config file.
    """

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
    options: dict[str, str] = field(default_factory=dict)
    proxy_jump: str | None = None  # -J; wins over ProxyJump in the config
    interactive: bool = True  # False: raise NeedsPassphrase rather than ask on the terminal


def parse_destination(text: str) -> tuple[str | None, str, int | None]:
    """``(user, host, port)`` of ``[ssh://][user@]host[:port]`` (``[addr]:port`` for IPv6).

    A bare IPv6 address (more than one colon, no brackets) is a host without a port.
    """
    rest = text.strip()
    if rest.lower().startswith("ssh://"):
        rest = rest[6:].rstrip("/")
    user, at, hostport = rest.rpartition("@")
    host, port_text = hostport, ""
    if hostport.startswith("["):
        inside, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise UsageError(f"bad host {text!r}: expected [address]:port")
        host, port_text = inside, tail[1:]
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    if not host or (at and not user) or host.startswith("-") or user.startswith("-"):
        raise UsageError(f"bad host {text!r}: expected [user@]host[:port]")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"bad port in {text!r}: {port_text!r}")
        port = int(port_text)
    return (user or None), host, port


def parse_ssh_option(text: str) -> tuple[str, str]:
    """``-o Name=value`` (or ``Name value``) as ``(lower-case name, value)``; honoured only."""
    name, _, value = text.replace("=", " ", 1).partition(" ")
    key = name.strip().lower()
    if key not in HONOURED_OPTIONS:
        known = ", ".join(_CANONICAL[k] for k in HONOURED_OPTIONS)
        raise UsageError(f"-o {text}: tryssh does not support {name!r} (it honours: {known})")
    if not value.strip():
        raise UsageError(f"-o {text}: no value (write -o {_CANONICAL[key]}=VALUE)")
    return key, value.strip()



def enable_debug_log(verbosity: int) -> None:
    """``-v``: paramiko's log on stderr (INFO once, DEBUG from ``-vv``), like ``ssh -v``."""
    if verbosity <= 0:
        return
    import logging  # only with -v: paramiko loads it anyway, a dry run need not

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("debug%(verbosity)s: %(name)s: %(message)s"))
    handler.addFilter(_Verbosity(verbosity))
    log = logging.getLogger("paramiko")
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)


class _Verbosity:
    """A log filter (any object with a ``filter`` method is one) that lets INFO through at
    ``-v`` and DEBUG from ``-vv``, and names the level in the line."""

    def __init__(self, verbosity: int) -> None:
        self.verbosity = min(verbosity, 3)

    def filter(self, record: logging.LogRecord) -> bool:
        record.verbosity = self.verbosity
        return record.levelno >= (_INFO if self.verbosity == 1 else _DEBUG)


_INFO, _DEBUG = 20, 10  # logging.INFO and logging.DEBUG, without importing logging
