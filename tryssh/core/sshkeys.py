"""SSH public keys: the one strict parser and the one fingerprint, as ``ssh-keygen -l`` prints it.

Keys are checked strictly (one line, known type, the base64 blob's own type equal to the
declared one, a well-formed blob, RSA of at least 2048 bits, no options, ASCII without control
characters) because sshd fails closed and silently on what it cannot parse, and ``tryssh
serve`` must accept exactly what ``tryssh keys add`` accepts.

Stdlib only and light (binascii, not base64; no dataclasses).
"""

from __future__ import annotations

import binascii

from tryssh.core.lighthash import light_sha256
from tryssh.errors import EX_DATAERR, TrysshError

# The key types sshd accepts from a developer today (DSA is gone from OpenSSH and paramiko 4).
KEY_TYPES: tuple[str, ...] = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
MAX_KEY_TEXT = 16384  # characters; a 16384-bit RSA key is under 3 KB of base64
MAX_COMMENT = 128
MIN_RSA_BITS = 2048
_ECDSA_POINT_LEN = {"nistp256": 65, "nistp384": 97, "nistp521": 133}


class BadPublicKey(TrysshError):
    """The text given as a public key is not exactly one acceptable key."""

    exit_code = EX_DATAERR


class PublicKey:
    """One parsed public key (a plain class: dataclasses is slow to import)."""

    __slots__ = ("blob_b64", "comment", "fingerprint", "type")

    def __init__(self, type: str, blob_b64: str, comment: str, fingerprint: str) -> None:
        self.type = type
        self.blob_b64 = blob_b64
        self.comment = comment
        self.fingerprint = fingerprint

    @property
    def blob(self) -> bytes:
        return binascii.a2b_base64(self.blob_b64)

    def _fields(self) -> tuple[str, str, str, str]:
        return (self.type, self.blob_b64, self.comment, self.fingerprint)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"PublicKey({self.type!r}, {self.blob_b64[:16]!r}..., {self.comment!r})"


# -- fingerprints -----------------------------------------------------------------------------


def key_fingerprint(blob_b64: str) -> str | None:
    """``SHA256:...`` of a base64 public key blob, as ssh-keygen prints it; None if not base64."""
    try:
        blob = binascii.a2b_base64(blob_b64, strict_mode=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        return None
    return blob_fingerprint(blob)


def blob_fingerprint(blob: bytes) -> str:
    """``SHA256:<base64>`` of a public key blob (raw bytes), exactly as ``ssh-keygen -l``
    prints it (unpadded). A paramiko key's is ``blob_fingerprint(key.asbytes())``."""
    digest = light_sha256(blob).digest()
    return "SHA256:" + binascii.b2a_base64(digest, newline=False).decode().rstrip("=")


# -- the strict parser ------------------------------------------------------------------------


def ssh_string(buf: bytes, off: int) -> tuple[bytes, int]:
    if off + 4 > len(buf):
        raise ValueError("truncated")
    n = int.from_bytes(buf[off : off + 4], "big")
    end = off + 4 + n
    if end > len(buf):
        raise ValueError("truncated")
    return buf[off + 4 : end], end


def _ssh_fields(blob: bytes) -> list[bytes]:
    fields, off = [], 0
    while off < len(blob):
        value, off = ssh_string(blob, off)
        fields.append(value)
    return fields


def check_blob(ktype: str, blob: bytes) -> None:
    """Check that the key blob is well formed for its type; raise BadPublicKey if not."""
    try:
        fields = _ssh_fields(blob)
    except ValueError:
        raise BadPublicKey("the key data is truncated or malformed") from None
    if not fields or fields[0] != ktype.encode():
        inner = fields[0][:40].decode("ascii", "replace") if fields else ""
        raise BadPublicKey(f"the key data says {inner!r} but the line says {ktype!r}")
    rest = fields[1:]
    ok = False
    if ktype == "ssh-ed25519":
        ok = len(rest) == 1 and len(rest[0]) == 32
    elif ktype == "sk-ssh-ed25519@openssh.com":
        ok = len(rest) == 2 and len(rest[0]) == 32 and bool(rest[1])
    elif ktype == "ssh-rsa":
        ok = len(rest) == 2 and all(v and not v[0] & 0x80 for v in rest)
        if ok:
            bits = int.from_bytes(rest[1], "big").bit_length()
            if bits < MIN_RSA_BITS:
                raise BadPublicKey(
                    f"the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
                )
    elif ktype.startswith("ecdsa-sha2-"):
        curve = ktype.removeprefix("ecdsa-sha2-")
        ok = (
            len(rest) == 2
            and rest[0] == curve.encode()
            and len(rest[1]) == _ECDSA_POINT_LEN[curve]
            and rest[1][0] == 4
        )
    elif ktype == "sk-ecdsa-sha2-nistp256@openssh.com":
        ok = (
            len(rest) == 3
            and rest[0] == b"nistp256"
            and len(rest[1]) == 65
            and rest[1][0] == 4
            and bool(rest[2])
        )
    if not ok:
        raise BadPublicKey(f"the key data is not a valid {ktype} key")


def _sanitize_comment(text: str) -> str:
    # Printable ASCII only (control characters were refused already); collapse whitespace so
    # the comment is one plain field, and cap its length.
    words = " ".join(text.split())
    clean = "".join(c if " " <= c <= "~" else "?" for c in words)
    return clean[:MAX_COMMENT].rstrip()


def parse_public_key(text: str) -> PublicKey:
    """Parse exactly one OpenSSH public key line ``type base64 [comment]``.

    A trailing newline is fine; anything else that is not a single plain key is refused with
    :class:`BadPublicKey`: several lines, options before the key, unknown types, bad base64,
    a blob whose embedded type differs from the declared one, a weak RSA key, non-ASCII or
    control characters.
    """
    first = text.lstrip(" \t\r\n").split("\n", 1)[0]
    if "PRIVATE KEY" in first or first.startswith("PuTTY-User-Key-File"):
        # An admin handed the wrong file: say so, not "found 7 lines".
        raise BadPublicKey(
            "this is a private key: give its public key (the .pub file, or the output of "
            "'ssh-keygen -y -f KEY'); the private key should never leave its owner"
        )
    if "BEGIN SSH2 PUBLIC KEY" in first:
        raise BadPublicKey(
            "an RFC 4716 (SSH2, PuTTY) public key: convert it to one OpenSSH line with "
            "'ssh-keygen -i -f FILE'"
        )
    if len(text) > MAX_KEY_TEXT:
        raise BadPublicKey(f"the key is too long ({len(text)} characters; at most {MAX_KEY_TEXT})")
    if not text.isascii():
        raise BadPublicKey("the key contains non-ASCII characters")
    body = text.strip(" \t\r\n")
    if not body:
        raise BadPublicKey("no key found (the input is empty)")
    if "\n" in body or "\r" in body:
        lines = [ln for ln in body.splitlines() if ln.strip()]
        raise BadPublicKey(f"expected exactly one key on one line, found {len(lines)} lines")
    for c in body:
        if (c < " " and c != "\t") or c == "\x7f":
            raise BadPublicKey(f"the key contains a control character ({ord(c):#04x})")
    fields = body.split(None, 2)
    ktype = fields[0]
    if ktype not in KEY_TYPES:
        if any(word in KEY_TYPES for word in body.split()[1:]) or "=" in ktype or "," in ktype:
            raise BadPublicKey(
                "options before the key are not allowed: give the bare public key "
                "(the .pub file: type, base64, comment)"
            )
        raise BadPublicKey(
            f"unsupported key type {ktype[:40]!r} (supported: {', '.join(KEY_TYPES)})"
        )
    if len(fields) < 2:
        raise BadPublicKey("the key has no base64 data after its type")
    b64 = fields[1]
    try:
        blob = binascii.a2b_base64(b64, strict_mode=True)
    except ValueError:  # binascii.Error
        raise BadPublicKey("the key data is not valid base64") from None
    if binascii.b2a_base64(blob, newline=False).decode() != b64:
        raise BadPublicKey("the key data is not canonical base64")
    check_blob(ktype, blob)
    comment = _sanitize_comment(fields[2]) if len(fields) > 2 else ""
    return PublicKey(ktype, b64, comment, blob_fingerprint(blob))
