"""The try account's ``authorized_keys``: a marked block of forced-command keys, as gitolite does.

Every key tryssh manages sits between ``# tryssh start`` and ``# tryssh end`` on one line::

    restrict,command="/usr/local/bin/tryserver --jobdir /srv/tryssh/jobdir --user alice" \
        ssh-ed25519 AAAA... alice@laptop   (one line in the file)

The server, never the client, fixes the identity (``--user``) on the line. Lines outside the
block are kept byte for byte. Keys are checked by the one strict parser,
:func:`tryssh.core.sshkeys.parse_public_key`: sshd fails closed and silently on what it cannot
parse, and an injected option would be a hole.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import errno
import fcntl
import ipaddress
import os
import re
import shlex
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tryssh.core.sshkeys import PublicKey, blob_fingerprint, parse_public_key, ssh_string
from tryssh.errors import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    CannotCreate,
    TempFail,
    TrysshError,
    UsageError,
    exit_code_for_oserror,
)

BLOCK_START = "# tryssh start"
BLOCK_END = "# tryssh end"

USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Paths go unquoted into the command sshd hands to "$SHELL -c": allow only characters that no
# POSIX shell treats specially, and refuse anything else rather than try to escape it.
_PATH_RE = re.compile(r"/[A-Za-z0-9._+@,:/-]*")
_HOST_PATTERN_RE = re.compile(r"!?[A-Za-z0-9.:*?_-]{1,255}")
_CIDR_RE = re.compile(r"!?([0-9A-Fa-f.:]+)/([0-9]{1,3})")
_EXPIRY_RE = re.compile(r"([0-9]{8})([0-9]{4}([0-9]{2})?)?(Z?)")
_FINGERPRINT_RE = re.compile(r"(?:SHA256:)?([A-Za-z0-9+/]{43})")


class BadKeyOption(UsageError):
    """A user name, path, from= pattern or expiry cannot go on an authorized_keys line."""


class DuplicateKey(TrysshError):
    """The key is already in authorized_keys (sshd would use only the first line)."""

    exit_code = EX_DATAERR


class KeyNotFound(TrysshError):
    exit_code = EX_NOINPUT


class AuthorizedKeysError(TrysshError):
    """The authorized_keys file cannot be managed safely (broken block, symlink, ...)."""

    exit_code = EX_CONFIG


class ConcurrentChange(TempFail):
    """authorized_keys changed while we were rewriting it: nothing was written, try again."""


class KeyEntry(NamedTuple):
    """One key of the managed block, as :func:`list_keys` reports it."""

    user: str  # "" when a hand-edited line names no --user
    fingerprint: str
    type: str
    comment: str
    options: str  # the raw options field, e.g. 'restrict,command="...",from="..."'


# --------------------------------------------------------------------------------------------
# The authorized_keys line


def check_user(user: str) -> str:
    if not isinstance(user, str) or not USER_RE.fullmatch(user):
        raise BadKeyOption(
            f"invalid user name {str(user)[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return user


def check_path(path: str, what: str) -> str:
    """An absolute, normalised path made only of characters no shell treats specially."""
    if not isinstance(path, str) or not _PATH_RE.fullmatch(path):
        raise BadKeyOption(
            f"{what} must be an absolute path of letters, digits and ._+@,:/- only "
            f"(no spaces, quotes or shell characters): {str(path)[:200]!r}"
        )
    if path != "/" and (os.path.normpath(path) != path or path.startswith("//")):
        raise BadKeyOption(f"{what} must be a normalised path (no '.', '..', '//' or trailing /)")
    return path


def check_from(patterns: str | Sequence[str]) -> str:
    """Validate sshd ``from=`` patterns (host names or addresses with ``*``/``?``, CIDR, ``!``)."""
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    if not items or len(",".join(items)) > 1024:
        raise BadKeyOption("from= needs between one pattern and 1024 characters of patterns")
    out = []
    for item in items:
        item = item.strip()
        cidr = _CIDR_RE.fullmatch(item)
        if cidr:
            try:
                # strict: sshd refuses a CIDR with host bits set and would disable the key.
                ipaddress.ip_network(f"{cidr.group(1)}/{cidr.group(2)}", strict=True)
            except ValueError as e:
                raise BadKeyOption(f"from= pattern {item!r} is not a valid network: {e}") from None
        elif not _HOST_PATTERN_RE.fullmatch(item):
            raise BadKeyOption(
                f"from= pattern {item[:80]!r} is not a host name, address, wildcard or CIDR "
                "(letters, digits, . : * ? _ - and a leading ! only)"
            )
        out.append(item)
    return ",".join(out)


def parse_expiry(expiry: str) -> datetime.datetime:
    """Parse sshd's ``expiry-time`` format ``YYYYMMDD[HHMM[SS]][Z]``.

    The result is aware (UTC) with ``Z``, naive (the server's local time) without it.
    """
    m = _EXPIRY_RE.fullmatch(expiry) if isinstance(expiry, str) else None
    if not m:
        raise BadKeyOption(
            f"expiry must be YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally followed "
            f"by Z for UTC: {str(expiry)[:40]!r}"
        )
    digits = expiry.rstrip("Z")
    fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(digits)]
    try:
        when = datetime.datetime.strptime(digits, fmt)
    except ValueError:
        raise BadKeyOption(f"expiry {expiry!r} is not a real date and time") from None
    if m.group(4):
        when = when.replace(tzinfo=datetime.UTC)
    return when


def _expired(expiry: str) -> bool:
    when = parse_expiry(expiry)
    now = datetime.datetime.now(datetime.UTC if when.tzinfo else None)
    return when <= now


def key_line(
    user: str,
    key: PublicKey | str,
    *,
    tryserver: str,
    jobdir: str,
    config: str | None = None,
    from_: str | Sequence[str] | None = None,
    expiry: str | None = None,
) -> str:
    """The authorized_keys line that pins ``user`` to the tryserver forced command (no newline)."""
    check_user(user)
    if isinstance(key, str):
        key = parse_public_key(key)
    words = [check_path(tryserver, "the tryserver path"), "--jobdir", check_path(jobdir, "jobdir")]
    if config is not None:
        words += ["--config", check_path(config, "the config path")]
    words += ["--user", user]
    options = ["restrict", f'command="{" ".join(words)}"']
    if from_ is not None:
        options.append(f'from="{check_from(from_)}"')
    if expiry is not None:
        parse_expiry(expiry)
        options.append(f'expiry-time="{expiry}"')
    line = f"{','.join(options)} {key.type} {key.blob_b64}"
    if key.comment:
        line += " " + key.comment
    # Belt and braces: every part was validated, but this line is a security boundary.
    if any(c < " " or c > "~" for c in line):
        raise BadKeyOption("refusing to write a line with control or non-ASCII characters")
    return line


# --------------------------------------------------------------------------------------------
# Reading authorized_keys lines


class _AuthLine(NamedTuple):
    options: str
    type: str
    blob: bytes
    comment: str


def _read_key(text: str) -> tuple[str, bytes, str] | None:
    """``type base64 [comment]`` when the text starts with a key whose blob names its type."""
    parts = text.split(None, 2)
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        inner, _ = ssh_string(blob, 0)
    except (binascii.Error, ValueError):
        return None
    if inner != parts[0].encode("utf-8", "replace"):
        return None
    return parts[0], blob, parts[2] if len(parts) > 2 else ""


def _skip_options(text: str) -> int:
    """Index just past the options field, exactly as sshd's sshkey_advance_past_options."""
    quoted, i = False, 0
    while i < len(text) and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    return i


def _parse_auth_line(line: str) -> _AuthLine | None:
    """Parse one authorized_keys line the way sshd does; None for blanks, comments, junk."""
    text = line.strip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    key = _read_key(text)
    if key is not None:
        return _AuthLine("", *key)
    end = _skip_options(text)
    key = _read_key(text[end:].lstrip(" \t"))
    if key is None:
        return None
    return _AuthLine(text[:end], *key)


def split_options(options: str) -> list[str]:
    """Split an authorized_keys options field on the commas outside double quotes."""
    out, cur, quoted, i = [], [], False, 0
    while i < len(options):
        c = options[i]
        if c == "\\" and options[i + 1 : i + 2] == '"':
            cur.append('\\"')
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return [o for o in out if o]


def _user_of(options: str) -> str:
    """The ``--user`` value in a line's ``command="..."`` option, or ""."""
    for opt in split_options(options):
        name, _, value = opt.partition("=")
        if name.lower() != "command" or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            continue
        try:
            argv = shlex.split(value[1:-1].replace('\\"', '"'))
        except ValueError:
            return ""
        for i, word in enumerate(argv[:-1]):
            if word == "--user":
                return argv[i + 1]
        for word in argv:
            if word.startswith("--user="):
                return word.removeprefix("--user=")
    return ""


# --------------------------------------------------------------------------------------------
# The file


@dataclass
class _Snapshot:
    path: str
    data: bytes
    st: os.stat_result | None  # None: the file does not exist
    lines: list[bytes]
    start: int | None  # index of the start marker line
    end: int | None  # index of the end marker line


def _split_lines(data: bytes) -> list[bytes]:
    # Only "\n" ends a line for sshd (bytes.splitlines would also split on a lone "\r").
    lines, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        lines.append(data[pos:end])
        pos = end
    return lines


def _marker(line: bytes) -> str | None:
    text = line.rstrip(b" \t\r\n")
    if text == BLOCK_START.encode():
        return "start"
    if text == BLOCK_END.encode():
        return "end"
    return None


def _oserror(err: OSError, what: str) -> TrysshError:
    return TrysshError(f"{what}: {err.strerror or err}", exit_code_for_oserror(err))


def _read(path: str) -> _Snapshot:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _Snapshot(path, b"", None, [], None, None)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AuthorizedKeysError(
                f"{path} is a symbolic link; give the real file with --authorized-keys"
            ) from None
        raise _oserror(e, f"cannot read {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuthorizedKeysError(f"{path} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError as e:
        raise _oserror(e, f"cannot read {path}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    lines = _split_lines(data)
    start = end = None
    for i, line in enumerate(lines):
        kind = _marker(line)
        if kind == "start":
            if start is not None:
                raise AuthorizedKeysError(
                    f"{path} line {i + 1}: a second '{BLOCK_START}'; fix the block by hand"
                )
            start = i
        elif kind == "end":
            if start is None or end is not None:
                raise AuthorizedKeysError(
                    f"{path} line {i + 1}: '{BLOCK_END}' without a matching start; "
                    "fix the block by hand"
                )
            end = i
    if start is not None and end is None:
        raise AuthorizedKeysError(
            f"{path} line {start + 1}: '{BLOCK_START}' is never closed by '{BLOCK_END}'; "
            "fix the block by hand"
        )
    return _Snapshot(path, data, st, lines, start, end)


def _in_block(snap: _Snapshot, index: int) -> bool:
    return snap.start is not None and snap.end is not None and snap.start < index < snap.end


def _entries(snap: _Snapshot) -> Iterator[tuple[int, KeyEntry]]:
    if snap.start is None or snap.end is None:
        return
    for i in range(snap.start + 1, snap.end):
        parsed = _parse_auth_line(snap.lines[i].decode("utf-8", "replace"))
        if parsed is None:
            continue
        yield (
            i,
            KeyEntry(
                _user_of(parsed.options),
                blob_fingerprint(parsed.blob),
                parsed.type,
                parsed.comment.strip(),
                parsed.options,
            ),
        )


@contextlib.contextmanager
def _locked_dir(directory: str, timeout: float = 10.0) -> Iterator[int]:
    """Serialise tryssh's own writers on the directory; other editors are caught by the
    optimistic re-read before the rename."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _oserror(e, f"cannot open {directory}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TempFail(f"{directory} is locked by another 'tryssh keys'") from None
                time.sleep(0.05)
        yield dfd
    finally:
        os.close(dfd)


def _ensure_parent(path: str) -> str:
    """Create the ~/.ssh-style parent directory (0700, owned like its own parent) if needed."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent):
        return parent
    grand = os.path.dirname(parent)
    try:
        gst = os.stat(grand)
        os.mkdir(parent, 0o700)
        os.chmod(parent, 0o700)  # whatever the umask
        if os.geteuid() == 0:
            # Root managing the try account's file: the account must own its ~/.ssh.
            os.chown(parent, gst.st_uid, gst.st_gid)
    except FileExistsError:
        pass
    except OSError as e:
        raise CannotCreate(f"cannot create {parent}: {e.strerror or e}") from None
    return parent


def _unchanged(snap: _Snapshot) -> bool:
    try:
        st = os.stat(snap.path, follow_symlinks=False)
    except FileNotFoundError:
        return snap.st is None
    if snap.st is None:
        return False
    if (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) != (
        snap.st.st_ino,
        snap.st.st_dev,
        snap.st.st_size,
        snap.st.st_mtime_ns,
    ):
        return False
    try:
        with open(snap.path, "rb") as fh:
            return fh.read() == snap.data
    except OSError:
        return False


def _write(snap: _Snapshot, data: bytes, dfd: int, parent: str) -> None:
    """Atomically replace the file: temp file in the same dir, fsync, rename, fsync the dir."""
    if snap.st is not None:
        owner = (snap.st.st_uid, snap.st.st_gid)
    else:
        pst = os.fstat(dfd)
        owner = (pst.st_uid, pst.st_gid)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".authorized_keys.", suffix=".tryssh", dir=parent)
    except OSError as e:
        raise _oserror(e, f"cannot write in {parent}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), 0o600)
                if os.geteuid() == 0 and owner != (0, 0):
                    # sshd reads the file as the account: it must keep its owner.
                    os.fchown(fh.fileno(), *owner)
                os.fsync(fh.fileno())
            if not _unchanged(snap):
                raise ConcurrentChange(
                    f"{snap.path} changed while it was being rewritten; nothing was written, "
                    "try again"
                )
            os.rename(tmp, snap.path)
        except OSError as e:
            raise _oserror(e, f"cannot write {snap.path}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        os.fsync(dfd)


def add_key(
    path: str,
    user: str,
    key_text: str,
    *,
    tryserver: str,
    jobdir: str,
    config: str | None = None,
    from_: str | Sequence[str] | None = None,
    expiry: str | None = None,
) -> KeyEntry:
    """Add ``key_text`` for ``user`` at the end of the managed block of ``path``.

    Refuses a key whose blob is already anywhere in the file (:class:`DuplicateKey`, naming the
    user who holds it) and an expiry already in the past. Creates the file (0600) and its parent
    directory (0700) when missing.
    """
    key = parse_public_key(key_text)
    line = key_line(
        user, key, tryserver=tryserver, jobdir=jobdir, config=config, from_=from_, expiry=expiry
    )
    if expiry is not None and _expired(expiry):
        raise BadKeyOption(f"expiry {expiry} is already in the past")
    parent = _ensure_parent(path)
    with _locked_dir(parent) as dfd:
        snap = _read(path)
        for i, raw in enumerate(snap.lines):
            found = _parse_auth_line(raw.decode("utf-8", "replace"))
            if found is None or found.blob != key.blob:
                continue
            holder = _user_of(found.options)
            where = f"{path} line {i + 1}"
            if _in_block(snap, i):
                raise DuplicateKey(
                    f"key {key.fingerprint} is already held by user {holder or '?'} ({where})"
                )
            raise DuplicateKey(
                f"key {key.fingerprint} is already in {where}, outside the tryssh block"
                + (f" (user {holder})" if holder else "")
                + "; sshd would use only the first line"
            )
        lines = list(snap.lines)
        new = (line + "\n").encode("ascii")
        if snap.end is not None:
            lines.insert(snap.end, new)
        else:
            if lines and not lines[-1].endswith(b"\n"):
                lines[-1] += b"\n"  # otherwise our marker would join the last line
            lines += [(BLOCK_START + "\n").encode(), new, (BLOCK_END + "\n").encode()]
        _write(snap, b"".join(lines), dfd, parent)
    return KeyEntry(user, key.fingerprint, key.type, key.comment, line[: _skip_options(line)])


def list_keys(path: str) -> list[KeyEntry]:
    """The keys of the managed block, in file order ([] when the file or block is missing)."""
    return [entry for _, entry in _entries(_read(path))]


def normalize_fingerprint(fingerprint: str) -> str:
    m = _FINGERPRINT_RE.fullmatch(fingerprint.strip()) if isinstance(fingerprint, str) else None
    if not m:
        raise BadKeyOption(
            f"not a SHA256 fingerprint (as 'tryssh keys list' shows it): {str(fingerprint)[:80]!r}"
        )
    return "SHA256:" + m.group(1)


def remove_keys(path: str, user: str, fingerprint: str | None = None) -> int:
    """Remove ``user``'s keys (only the one with ``fingerprint`` if given); return how many."""
    check_user(user)
    wanted = normalize_fingerprint(fingerprint) if fingerprint is not None else None
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path) and not os.path.islink(path):
        return 0
    with _locked_dir(parent) as dfd:
        snap = _read(path)
        drop = {
            i
            for i, entry in _entries(snap)
            if entry.user == user and (wanted is None or entry.fingerprint == wanted)
        }
        if drop:
            data = b"".join(line for i, line in enumerate(snap.lines) if i not in drop)
            _write(snap, data, dfd, parent)
    return len(drop)
