"""Pass a v5/v6 job through without holding it: splice the JSON's top-level fields.

The forced command must pin ``who`` (and make the fields Buildbot crashes on safe) in
the JSON of a v5/v6 job, whose patch may be hundreds of megabytes. Decoding the whole
JSON and serialising it again costs five times the job's size in memory. Instead the
top level of the object is read token by token: every member but the patch is small
(capped) and is decoded and re-encoded as ``json.dumps`` would; the patch string is
checked as it streams (valid escapes, valid UTF-8, no lone surrogates in v5; base64 in
v6) and copied byte for byte. A job written as Buildbot's ``createJobfile`` writes it
therefore comes out exactly as the whole-job path (decode, pin, ``json.dumps``) writes
it; any other valid spelling comes out as an equal job.

The output's netstring length must come first. It is computed when the patch starts,
on the assumption that the rest is what ``createJobfile`` writes (the patch is the last
member); if it is not, :meth:`Output.rewrite_head` fixes the head once the end is known.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring

from tryssh.core import netstring
from tryssh.errors import BadJob

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Protocol

    class Output(Protocol):
        """Where the spliced job goes: appended to, and its head rewritten once."""

        def write(self, data: bytes) -> object: ...

        def rewrite_head(self, old_length: int, head: bytes) -> object: ...


MAX_FIELD = 1 << 20  # any one member other than the patch
MAX_SMALL_TOTAL = 4 << 20  # all members other than the patch together
MAX_MEMBERS = 1000  # top-level members (Buildbot's client writes 11)
_WS = re.compile(rb"[ \t\n\r]*")
_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_CONTROL = bytes(range(0x20, 0x100))  # deleting these leaves a string's control bytes
# A backslash not followed by one of the escapes json.dumps writes for ASCII text (a \u
# escape of a surrogate included: it must pair up). It also matches some valid text
# (\\x: an escaped backslash, then x): such a piece only goes down the exact path.
_UNUSUAL_ESCAPE = re.compile(rb'\\(?:[^nt"\\/bfru]|u(?![0-9a-fA-F]{4})|u[dD][89a-fA-F])')
_MAX_QUOTES = 16  # escaped quotes checked one by one in a piece, before json's scanner
_DECODER = json.JSONDecoder()
_NOT_OBJECTS = {b"[": "list", b'"': "str", b"t": "bool", b"f": "bool", b"n": "NoneType",
                **{bytes([c]): "number" for c in b"-0123456789"}}  # fmt: skip


class _Discard:
    """An :class:`Output` that drops the job: for reading fields only."""

    def write(self, data: bytes) -> None:
        pass

    def rewrite_head(self, old_length: int, head: bytes) -> None:
        pass


class MemoryOutput:
    """An :class:`Output` that keeps the job in memory (tests, small callers)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def rewrite_head(self, old_length: int, head: bytes) -> None:
        self.data[:old_length] = head


def _plain_ascii_content(piece: bytes) -> bool:
    """Whether *piece* is certainly the inside of a JSON string, not its end: ASCII, no
    control byte, every escape one of \\n \\t \\" \\\\ \\/ \\b \\f \\r, every quote escaped.

    False means "not sure", never "invalid": the caller then runs json's own scanner. This
    is the common case (createJobfile's output) checked with C loops that run near memory
    speed and build nothing per escape, where ``scanstring`` builds the decoded text: it
    makes the splice of a large v5 job several times faster.
    """
    if piece.endswith(b"\\") or not piece.isascii() or piece.translate(None, _NOT_CONTROL):
        return False
    if _UNUSUAL_ESCAPE.search(piece) is not None:
        return False
    # Every quote must be escaped (after an odd run of backslashes). Checked one by one,
    # so only a few: a piece full of quotes (source code) goes to json's scanner.
    quote = piece.find(b'"')
    for _ in range(_MAX_QUOTES):
        if quote < 0:
            return True
        start = quote
        while piece[start - 1] == 0x5C:  # the backslashes before it (piece[-1] is none)
            start -= 1
        if (quote - start) % 2 == 0:
            return False  # an unescaped quote: the string ends in this piece
        quote = piece.find(b'"', quote + 1)
    return False


def _safe_cut(data: bytes) -> int:
    """Where string content in *data* may be cut: not inside a UTF-8 character, an escape
    or a surrogate pair written as two escapes. *data* starts at a token boundary."""
    cut = len(data)
    i = cut - 1
    while i >= 0 and i >= cut - 4 and data[i] & 0xC0 == 0x80:
        i -= 1
    if i >= 0 and data[i] >= 0xC0:
        cut = i  # a lead byte: its character may be incomplete
    last = data.rfind(b"\\", max(0, cut - 12), cut)
    if last >= 0:
        # Backslashes pair up from the start of their run: an odd run's last one opens
        # an escape that may continue past the cut.
        run = last + 1 - len(data[: last + 1].rstrip(b"\\"))
        if run % 2:
            cut = last
    if cut >= 6 and _HIGH_SURROGATE.fullmatch(data, cut - 6, cut):
        run = cut - 5 - len(data[: cut - 5].rstrip(b"\\"))
        if run % 2:
            cut -= 6  # keep the pair together: apart, each half is a lone surrogate
    return cut


class _Base64Check:
    """Strict base64 checked piece by piece: the alphabet, then padding only at the end.

    Stricter than Buildbot's ``b64decode`` (which drops stray characters): a tryssh server
    refuses what it would silently change. Line breaks are allowed.
    """

    def __init__(self) -> None:
        self.quad = 0  # data characters so far, mod 4
        self.pads = 0

    def feed(self, text: bytes, decoded: bool = True) -> None:
        """Check the next piece: *decoded* from JSON escapes, or raw JSON string bytes
        (where a line break is not allowed)."""
        if decoded and (b"\n" in text or b"\r" in text):
            text = text.translate(None, b"\r\n")
        if self.pads:
            data, pad = b"", text
        else:
            at = text.find(b"=")
            data, pad = (text, b"") if at < 0 else (text[:at], text[at:])
        if data.translate(None, _B64_ALPHABET) or pad.strip(b"="):
            raise BadJob("patch_body_base64 is not valid base64")
        self.quad = (self.quad + len(data)) % 4
        self.pads += len(pad)

    def close(self) -> None:
        if self.pads == 0 and self.quad == 0:
            return
        if not (self.pads and self.quad >= 2 and self.quad + self.pads == 4):
            raise BadJob("patch_body_base64 is not valid base64")


class Splicer:
    """Read one v5/v6 JSON payload of *length* bytes from *reader*; write the job to *out*.

    ``fix`` maps the members to what is delivered (pin ``who``, make fields safe); it is
    called on the members read so far when the patch starts, and on all of them at the end.
    """

    def __init__(
        self,
        reader: netstring.NetstringReader,
        length: int,
        version: int,
        out: Output | None,
        fix: Any,
        stop_when: tuple[str, ...] | None = None,
    ) -> None:
        self.source: Iterator[bytes] = reader.iter_payload(length)
        self.total_length = length
        self.left = length  # payload bytes not yet taken from the source
        if not length:
            for _ in self.source:  # checks the comma after an empty payload
                pass
        self.buf = b""
        self.pos = 0
        self.version = version
        self.out: Output = _Discard() if out is None else out
        self.fix = fix if fix is not None else (lambda members: members)
        self.stop_when = stop_when  # stop at the patch if these fields came before it
        self.patch_key = "patch_body" if version == 5 else "patch_body_base64"
        self.small_total = 0

    # -- input --------------------------------------------------------------------------

    def _pull(self) -> bytes:
        chunk = next(self.source, b"")
        self.left -= len(chunk)
        if not self.left:
            for _ in self.source:  # checks the comma after the payload
                pass
        return chunk

    def _fill(self, want: int) -> int:
        """Make at least *want* unread bytes available if the payload has them."""
        while len(self.buf) - self.pos < want and self.left:
            self.buf = self.buf[self.pos :] + self._pull()
            self.pos = 0
        return len(self.buf) - self.pos

    def _skip_ws(self) -> None:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self.left:
                return
            self.buf, self.pos = self._pull(), 0

    def _peek(self) -> bytes:
        self._skip_ws()
        return self.buf[self.pos : self.pos + 1]

    def _expect(self, chars: bytes, what: str) -> bytes:
        char = self._peek()
        if not char or char not in chars:
            found = repr(char.decode("latin-1")) if char else "the end"
            raise BadJob(f"unable to parse JSON: expected {what}, found {found}")
        self.pos += 1
        return char

    def _small(self, what: str) -> Any:
        """Decode one small JSON value (capped) at the current position."""
        self._skip_ws()
        window = 4096
        while True:
            avail = self._fill(window)
            more = avail > window or self.left > 0  # the value may go on past the window
            raw = self.buf[self.pos : self.pos + window]
            text = raw.decode("utf-8", "surrogateescape")
            try:
                value, end = _DECODER.raw_decode(text)
            except json.JSONDecodeError as err:
                if more and window <= MAX_FIELD:
                    window = min(window * 16, MAX_FIELD + 64)
                    continue
                if more:
                    raise BadJob(f"{what} is larger than {MAX_FIELD} bytes") from None
                raise BadJob(f"unable to parse JSON: {err}") from None
            except RecursionError:
                raise BadJob("unable to parse JSON: nested too deeply") from None
            except ValueError as err:  # an integer with too many digits
                raise BadJob(f"unable to parse JSON: {err}") from None
            if end == len(text) and more and window <= MAX_FIELD:
                window = min(window * 16, MAX_FIELD + 64)  # a number may be cut at the edge
                continue
            size = end if text.isascii() else len(text[:end].encode("utf-8", "surrogateescape"))
            if size > MAX_FIELD:
                raise BadJob(f"{what} is larger than {MAX_FIELD} bytes")
            try:
                raw[:size].decode("utf-8")
            except UnicodeDecodeError:
                raise BadJob("the JSON is not valid UTF-8") from None
            self.small_total += size
            if self.small_total > MAX_SMALL_TOTAL:
                raise BadJob(f"the JSON fields other than the patch exceed {MAX_SMALL_TOTAL} bytes")
            self.pos += size
            return value

    # -- the patch ----------------------------------------------------------------------

    def _stream_patch(self) -> int:
        """Copy the patch string's content (after its opening quote) to the output,
        checking it; leave the input after the closing quote. Returns the bytes copied."""
        b64 = None if self.version == 5 else _Base64Check()
        carry = self.buf[self.pos :]
        self.buf, self.pos = b"", 0
        copied = 0
        while True:
            data = carry if carry and not self.left else carry + self._pull()
            if not data:
                raise BadJob(f"unable to parse JSON: {self.patch_key} is not terminated")
            cut = len(data) if not self.left else _safe_cut(data)
            piece, carry = data[:cut], data[cut:]
            if not piece:
                continue  # need more input to cut safely (the source is not empty)
            if b64 is not None and b"\\" not in piece:
                # base64 as createJobfile writes it: no escapes, so the first quote ends
                # it, and the alphabet check leaves no room for anything else.
                end = piece.find(b'"')
                done = end >= 0
                content = piece[:end] if done else piece
                if done:
                    self.buf, self.pos = piece[end + 1 :] + carry, 0
                b64.feed(content, decoded=False)
            elif b64 is None and self.left and _plain_ascii_content(piece):
                content, done = piece, False
            else:
                content, done = self._scan_piece(piece, carry, b64)
            self.out.write(content)
            copied += len(content)
            if done:
                if b64 is not None:
                    b64.close()
                return copied

    def _scan_piece(
        self, piece: bytes, carry: bytes, b64: _Base64Check | None
    ) -> tuple[bytes, bool]:
        """Check a piece of the patch string with json's own scanner; return the content
        in it and whether the string ended in it (the input after it is put back)."""
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            raise BadJob("the JSON is not valid UTF-8") from None
        try:
            value, end = scanstring(text + '"', 0, True)
        except json.JSONDecodeError as err:
            raise BadJob(f"unable to parse JSON: {err.msg} in {self.patch_key}") from None
        done = end <= len(text)  # found the closing quote before the one added
        content = piece
        if done:
            size = end if text.isascii() else len(text[:end].encode("utf-8"))
            content = piece[: size - 1]
            self.buf, self.pos = piece[size:] + carry, 0
        if b64 is None:
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise BadJob("patch_body holds a lone surrogate, not text") from None
        else:
            if not value.isascii():
                raise BadJob("patch_body_base64 is not valid base64")
            b64.feed(value.encode("ascii"))
        return content, done

    # -- the object ---------------------------------------------------------------------

    def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Splice the job; return its members as read and as written (the patch as an
        empty placeholder)."""
        members: dict[str, Any] = {}
        patch_at: int | None = None  # members before the streamed patch
        head_written = b""
        patch_size = 0
        first = self._peek()
        if first in _NOT_OBJECTS:
            raise BadJob(f"the JSON must be an object, not {_NOT_OBJECTS[first]}")
        self._expect(b"{", "'{'")
        if self._peek() == b"}":
            self.pos += 1
        else:
            while True:
                if self._peek() != b'"':
                    self._expect(b'"', "a property name in double quotes")
                key = self._small("a property name")
                if len(members) >= MAX_MEMBERS and key not in members:
                    raise BadJob(f"the JSON has more than {MAX_MEMBERS} fields")
                self._expect(b":", "':'")
                if key == self.patch_key and (patch_at is not None or key in members):
                    raise BadJob(f"the JSON has {key!r} twice")
                if key == self.patch_key and self._peek() == b'"':
                    self.pos += 1
                    patch_at = len(members)
                    members[key] = ""
                    if self.stop_when is not None and all(k in members for k in self.stop_when):
                        return members, members
                    head_written = self._head(members, patch_at)
                    self.out.write(head_written)
                    patch_size = self._stream_patch()
                else:
                    members[key] = self._small(f"the value of {key[:40]!r}")
                if self._expect(b",}", "',' or '}'") == b"}":
                    break
        self._skip_ws()
        if self.pos < len(self.buf) or self.left:
            raise BadJob("unable to parse JSON: extra data after the object")
        final = self.fix(dict(members))
        if patch_at is None:
            whole = _members_json(list(final.items()))
            self.out.write(self._netstrings(whole.encode("ascii")) + b",")
            return members, final
        items = list(final.items())
        before = _prefix(items[:patch_at], self.patch_key)
        after = _suffix(items[patch_at + 1 :])
        total = len(before) + patch_size + len(after)
        head = self._netstrings(b"", total) + before
        if head != head_written:
            self.out.rewrite_head(len(head_written), head)
        self.out.write(after + b",")
        return members, final

    def _consumed_so_far(self) -> int:
        """Payload bytes read up to the patch's opening quote."""
        return self.total_length - self.left - (len(self.buf) - self.pos)

    def _head(self, members: dict[str, Any], patch_at: int) -> bytes:
        """The output up to the patch's content, its length guessed from the input's."""
        items = list(self.fix(dict(members)).items())[:patch_at]
        before = _prefix(items, self.patch_key)
        # Assume the rest is as createJobfile writes it (the patch, '"', '}'): then it is
        # as long in the output as in the input.
        rest = self.total_length - self._consumed_so_far()
        return self._netstrings(b"", len(before) + rest) + before

    def _netstrings(self, payload: bytes, length: int | None = None) -> bytes:
        """The version netstring and the JSON netstring's header (plus *payload*)."""
        size = len(payload) if length is None else length
        return netstring.encode(b"%d" % self.version) + netstring.header(size) + payload


def _member(key: str, value: Any) -> str:
    try:
        return f"{json.dumps(key)}: {json.dumps(value)}"
    except RecursionError:  # defensive: loads took it, but dumps runs a frame deeper
        raise BadJob("unable to write the JSON back: nested too deeply") from None


def _members_json(items: list[tuple[str, Any]]) -> str:
    return "{" + ", ".join(_member(k, v) for k, v in items) + "}"


def _prefix(items: list[tuple[str, Any]], patch_key: str) -> bytes:
    parts = [_member(k, v) for k, v in items]
    parts.append(f'{json.dumps(patch_key)}: "')
    return ("{" + ", ".join(parts)).encode("ascii")


def _suffix(items: list[tuple[str, Any]]) -> bytes:
    return ('"' + "".join(", " + _member(k, v) for k, v in items) + "}").encode("ascii")


def splice(
    reader: netstring.NetstringReader,
    version: int,
    out: Output | None,
    fix: Any,
    stop_when: tuple[str, ...] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the JSON netstring of a v5/v6 job from *reader*, write the spliced job to
    *out*; return the members as read and as written (the patch replaced by an empty
    placeholder). Without *out* only the members are read; with *stop_when*, reading
    stops at the patch if those members came before it (the rest is not checked)."""
    length = reader.next_length()
    if length is None:
        raise BadJob(f"version {version} job has no JSON netstring")
    return Splicer(reader, length, version, out, fix, stop_when).run()
