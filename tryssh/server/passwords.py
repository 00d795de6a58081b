"""Salted, slow password hashes for ``tryssh serve`` (stdlib scrypt), made by ``tryssh passwd``.

A hash is one line: ``scrypt$N$r$p$SALT$HASH`` with SALT and HASH in base64. Only the hash is
stored in the config; comparing uses ``hmac.compare_digest`` so timing tells nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from tryssh.errors import ConfigError

SCHEME = "scrypt"
# N=2^15, r=8: about 32 MiB and ~0.1 s per check; slow for a guesser, fine for a login.
DEFAULT_N = 1 << 15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# A config can only ask for so much work: a typo must not turn every login into a DoS.
MAX_N = 1 << 20
MAX_R = 32
MAX_P = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + (1 << 20)  # OpenSSL's default cap (32 MiB) is too small
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length
    )


def hash_password(password: str, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new ``scrypt$N$r$p$salt$hash`` line for *password*, with a random salt."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p, HASH_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, hash) of a stored hash; ConfigError saying what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ConfigError("not a tryssh password hash (expected scrypt$N$r$p$salt$hash)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError("malformed password hash (N, r, p, salt or hash)") from None
    if n < 2 or n & (n - 1) or n > MAX_N or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise ConfigError(f"password hash parameters out of range: N={n} r={r} p={p}")
    if len(salt) < 8 or len(digest) < 16:
        raise ConfigError("password hash: salt or hash too short")
    return n, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True if *password* matches *encoded*; False also for a malformed hash."""
    try:
        n, r, p, salt, digest = parse_hash(encoded)
    except ConfigError:
        return False
    candidate = _scrypt(password, salt, n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest)


# -- the PB door's secret ---------------------------------------------------------------------
#
# Twisted PB logs in by challenge-response: the client sends MD5(MD5(password) + challenge).
# To check that, the server must hold MD5(password) itself, which is therefore exactly as
# good as the password for logging in to the PB door (not for anything else: the SSH door's
# scrypt hash is separate). It lives in its own file, readable by the server's user only.

PB_SCHEME = "pb-md5:"


def pb_secret(password: str) -> str:
    """The line ``tryssh passwd --pb`` prints: ``pb-md5:`` and MD5(password) in hex."""
    digest = hashlib.md5(password.encode("utf-8"), usedforsecurity=False).hexdigest()
    return PB_SCHEME + digest


def load_pb_secret(path: str) -> bytes:
    """The 16-byte MD5 of the password stored at *path*; ConfigError if unsafe or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"pb secret {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"pb secret {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it"
            )
        text = f.read(256).decode("ascii", "replace").strip()
    if not text.startswith(PB_SCHEME):
        raise ConfigError(f"pb secret {path}: expected a 'pb-md5:HEX' line (tryssh passwd --pb)")
    try:
        secret = bytes.fromhex(text[len(PB_SCHEME) :])
    except ValueError:
        secret = b""
    if len(secret) != 16:
        raise ConfigError(f"pb secret {path}: expected 32 hex digits after 'pb-md5:'")
    return secret
