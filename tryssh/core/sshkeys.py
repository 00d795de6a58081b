"""SSH public keys: the one fingerprint, as ``ssh-keygen -l`` prints it."""

from __future__ import annotations

import binascii

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from hashlib import _Hash


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
