"""What the user asked of an SSH connection: kept apart from :mod:`tryssh.client.sshclient`
so that building a job, ``--dry-run`` and local queries never import paramiko."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TIMEOUT = 30.0


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
