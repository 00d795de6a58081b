"""The server's host keys as developers need them: known_hosts lines and fingerprints.

For OpenSSH's keys (``/etc/ssh/ssh_host_*_key.pub``) and for ``tryssh serve``'s
(``[serve] host_key``). Handing these to developers over a channel they already trust
replaces "yes" to ssh's first-connection question.
"""

from __future__ import annotations

import glob
import os
from typing import NamedTuple

from tryssh.core.sshkeys import key_fingerprint
from tryssh.errors import EX_NOINPUT, TrysshError

SSHD_DIR = "/etc/ssh"


class HostKey(NamedTuple):
    server: str  # "OpenSSH" or "tryssh serve"
    path: str
    keytype: str
    blob: str  # base64
    fingerprint: str


def read_public_key(server: str, path: str) -> HostKey:
    """The ``TYPE BASE64 [comment]`` public key file at *path*."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            words = f.read(16384).split()
    except OSError as err:
        raise TrysshError(f"cannot read {path}: {err.strerror}", EX_NOINPUT) from None
    fingerprint = key_fingerprint(words[1]) if len(words) >= 2 else None
    if fingerprint is None:
        raise TrysshError(f"{path}: not a public key (expected 'TYPE BASE64')", EX_NOINPUT)
    return HostKey(server, path, words[0], words[1], fingerprint)


def openssh_host_keys(directory: str = SSHD_DIR) -> list[HostKey]:
    """sshd's host keys (the public halves), in a stable order."""
    paths = sorted(glob.glob(os.path.join(glob.escape(directory), "ssh_host_*_key.pub")))
    return [read_public_key("OpenSSH", p) for p in paths]


def serve_host_key(host_key_path: str) -> HostKey:
    """tryssh serve's host key: its ``.pub`` file, else derived from the private key."""
    public = host_key_path + ".pub"
    if os.path.exists(public):
        return read_public_key("tryssh serve", public)
    import paramiko

    try:
        key = paramiko.PKey.from_path(host_key_path)
    except FileNotFoundError:
        raise TrysshError(
            f"{host_key_path}: no such host key (tryssh serve makes it on its first start)",
            EX_NOINPUT,
        ) from None
    except (OSError, paramiko.SSHException) as err:
        raise TrysshError(f"cannot read {host_key_path}: {err}", EX_NOINPUT) from None
    blob = key.get_base64()
    return HostKey("tryssh serve", host_key_path, key.get_name(), blob, key_fingerprint(blob) or "")


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names a host: bare on port 22, ``[host]:port`` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"


def format_keys(keys: list[tuple[HostKey, int]], host: str) -> str:
    """known_hosts lines, each after a comment with its fingerprint and where it came from."""
    lines = []
    for key, port in keys:
        lines.append(f"# {key.server} on port {port}: {key.fingerprint} ({key.keytype}) "
                     f"from {key.path}")  # fmt: skip
        lines.append(f"{known_hosts_name(host, port)} {key.keytype} {key.blob}")
    return "\n".join(lines) + "\n"
