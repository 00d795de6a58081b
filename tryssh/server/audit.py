"""The audit log: one line per request, accepted or refused.

Lines are ``key=value`` pairs (logfmt); a value with anything but plain characters is
JSON-quoted, so a client's newline or escape sequence can never forge a line.
"""

from __future__ import annotations

import os

from tryssh.core.logfmt import format_line
from tryssh.core.netaddr import format_address
from tryssh.core.sshkeys import key_fingerprint
from tryssh.errors import TrysshError, exit_code_for_oserror


class AuditLog:
    """An append-only log file opened with O_APPEND|O_NOFOLLOW.

    Long-running servers keep it open; when logrotate moves the file away, the next
    write notices that the path holds another inode (or none) and reopens by name.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = self._open()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                return os.open(self.path, flags)
            except FileNotFoundError:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o660)
                os.fchmod(fd, 0o660)  # whatever the umask: the admins' group reads it
                return fd
        except FileExistsError:  # another request created it in between
            return self._open()
        except OSError as err:
            raise TrysshError(
                f"cannot open audit log {self.path}: {err.strerror}", exit_code_for_oserror(err)
            ) from None

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return True

    def write(self, **fields: object) -> None:
        if self._rotated():
            os.close(self._fd)
            self._fd = self._open()
        # One write per line: O_APPEND keeps concurrent writers' lines whole.
        os.write(self._fd, format_line(fields).encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)


def ssh_peer(env: dict[str, str] | os._Environ[str]) -> str | None:
    """``ip:port`` of the client from SSH_CONNECTION, if sshd set it."""
    parts = env.get("SSH_CONNECTION", "").split()
    if len(parts) >= 2:
        return format_address(parts[0], parts[1])
    return None


def ssh_key_fingerprint(env: dict[str, str] | os._Environ[str]) -> str | None:
    """The fingerprint of the key the client used, from sshd's ExposeAuthInfo file."""
    path = env.get("SSH_USER_AUTH")
    if not path:
        return None
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 3 and words[0] == "publickey":
                    return key_fingerprint(words[2])
    except OSError:
        return None
    return None
