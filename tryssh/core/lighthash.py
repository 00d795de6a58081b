"""SHA-256 for small inputs without loading hashlib (and OpenSSL with it).

hashlib loads OpenSSL, a third of the forced command's own start-up time; Python's
built-in SHA-256 is much slower per byte but needs no loading. Used where a digest of a
few bytes is needed on a path that must start fast: the forced command's small jobs, and
``tryssh try``'s first steps (the name of the cached git index).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from hashlib import _Hash


def light_sha256(data: bytes = b"") -> _Hash:
    """A SHA-256 hash object for small inputs, without loading hashlib."""
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12 and later
        except ImportError:
            from hashlib import sha256
    return sha256(data)
