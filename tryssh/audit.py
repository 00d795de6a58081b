"""The audit log: one line per request, accepted or refused.

Lines are ``key=value`` pairs (logfmt); a value with anything but plain characters is
JSON-quoted, so a client's newline or escape sequence can never forge a line.
"""

from __future__ import annotations

import binascii
import json
import os
import re
import time

from .errors import TrysshError, exit_code_for_oserror

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from hashlib import _Hash

_PLAIN = re.compile(r"[A-Za-z0-9._:/@+=,~%-]+")


def format_value(value: object) -> str:
    text = "" if value is None else str(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text)  # escapes quotes, control characters and non-ASCII


def format_line(fields: dict[str, object]) -> str:
    """One audit line (with its newline) from *fields*, prefixed by the UTC time."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parts = [f"time={stamp}"]
    parts += [f"{k}={format_value(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts) + "\n"


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
        host = parts[0]
        return f"[{host}]:{parts[1]}" if ":" in host else f"{host}:{parts[1]}"
    return None


def light_sha256(data: bytes = b"") -> _Hash:
    """A SHA-256 hash object for small inputs, without loading hashlib.

    hashlib loads OpenSSL, a third of the forced command's own start-up time; Python's
    built-in SHA-256 is much slower per byte but needs no loading.
    """
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12 and later
        except ImportError:
            from hashlib import sha256
    return sha256(data)


def key_fingerprint(blob_b64: str) -> str | None:
    """``SHA256:...`` of a public key blob, as ssh-keygen prints it."""
    try:
        blob = binascii.a2b_base64(blob_b64, strict_mode=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        return None
    return blob_fingerprint(blob)


def blob_fingerprint(blob: bytes) -> str:
    """``SHA256:...`` of a public key blob (raw bytes), as ssh-keygen prints it."""
    digest = light_sha256(blob).digest()
    return "SHA256:" + binascii.b2a_base64(digest, newline=False).decode().rstrip("=")


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
