"""Netstring framing (``<len>:<payload>,``) as Buildbot's job files use it.

The rules follow twisted's NetstringReceiver, which Buildbot's master parses with: the
length is ``0`` or digits without a leading zero, the payload is followed by ``,``, and
anything else where a length should start is an error. Lengths count bytes.

:class:`NetstringReader` reads from a binary stream without holding a payload in memory,
so that the forced command can pass a large patch through in fixed-size chunks.
"""

from __future__ import annotations

from tryssh.errors import BadJob, JobTooLarge

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

# Twenty digits is more than any file system holds; longer is garbage, not a length.
MAX_LENGTH_DIGITS = 20
CHUNK = 1 << 20


class NetstringError(BadJob):
    """The framing is broken (leading zero, stray byte, missing comma)."""


class TruncatedNetstring(NetstringError):
    """The input ended inside a netstring."""


def encode(payload: bytes) -> bytes:
    """Frame *payload* as one netstring."""
    return b"%d:%s," % (len(payload), payload)


def header(length: int) -> bytes:
    """The ``<len>:`` prefix of a netstring of *length* bytes."""
    return b"%d:" % length


def split(data: bytes, *, allow_truncated_tail: bool = False) -> list[bytes]:
    """All the payloads in *data*.

    A truncated last netstring is an error unless *allow_truncated_tail*, in which case it
    is dropped, as Buildbot's master does.
    """
    import io

    reader = NetstringReader(io.BytesIO(data))
    out: list[bytes] = []
    try:
        while (length := reader.next_length()) is not None:
            out.append(reader.read_payload(length))
    except TruncatedNetstring:
        if not allow_truncated_tail:
            raise
    return out


class NetstringReader:
    """Reads netstrings one at a time from a binary stream, with an optional byte limit."""

    def __init__(self, stream: BinaryIO, *, limit: int | None = None, chunk: int = CHUNK) -> None:
        self._stream = stream
        self._limit = limit
        self._chunk = chunk
        # The unread data is self._buf[self._pos:]: moving a position, rather than slicing
        # the rest off after each netstring, keeps many small netstrings linear.
        self._buf = b""
        self._pos = 0
        self.consumed = 0  # bytes taken from the stream so far
        self.index = 0  # how many netstrings have been read

    def _read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if data:
            self.consumed += len(data)
            if self._limit is not None and self.consumed > self._limit:
                raise JobTooLarge(f"job is larger than the limit of {self._limit} bytes")
        return data or b""

    def _take(self, size: int) -> bytes:
        """Up to *size* bytes, from the buffer first; b'' only at end of input."""
        if self._pos < len(self._buf):
            start = self._pos
            self._pos = min(start + size, len(self._buf))
            if start == 0 and self._pos == len(self._buf):
                return self._buf  # the whole buffer: no copy
            return self._buf[start : self._pos]
        return self._read(min(size, self._chunk))

    def next_length(self) -> int | None:
        """The length of the next netstring, or None at a clean end of input."""
        digits = b""
        while True:
            if self._pos >= len(self._buf):
                self._buf = self._read(self._chunk)
                self._pos = 0
                if not self._buf:
                    if digits:
                        raise TruncatedNetstring(
                            f"input ends inside the length of netstring {self.index + 1}"
                        )
                    return None
            start = self._pos
            colon = self._buf.find(b":", start, start + MAX_LENGTH_DIGITS + 1 - len(digits))
            part = self._buf[start:] if colon < 0 else self._buf[start:colon]
            if part and not part.isdigit():
                raise NetstringError(
                    f"netstring {self.index + 1}: expected a length, found {part[:12]!r}"
                )
            digits += part
            if len(digits) > 1 and digits.startswith(b"0"):
                # Checked as the digits come: invalid whatever follows, not a truncation.
                raise NetstringError(f"netstring {self.index + 1}: length has a leading zero")
            if colon >= 0:
                self._pos = colon + 1
                break
            self._pos = len(self._buf)
            if len(digits) > MAX_LENGTH_DIGITS:
                raise NetstringError(f"netstring {self.index + 1}: length is too long")
        if not digits:
            raise NetstringError(f"netstring {self.index + 1}: empty length")
        return int(digits)

    def iter_payload(self, length: int) -> Iterator[bytes]:
        """Yield the payload of *length* bytes in chunks, then check the comma."""
        remaining = length
        while remaining:
            data = self._take(remaining)
            if not data:
                raise TruncatedNetstring(f"input ends inside netstring {self.index + 1}")
            remaining -= len(data)
            yield data
        self._end_payload()

    def skip_payload(self, length: int) -> None:
        """Pass over a payload of *length* bytes without reading it (a seekable stream),
        then check the comma."""
        buffered = len(self._buf) - self._pos
        if length <= buffered:
            self._pos += length
        else:
            rest = length - buffered
            end = self._stream.seek(0, 2)
            here = self._stream.seek(self._stream_pos() + rest)
            if here > end:
                raise TruncatedNetstring(f"input ends inside netstring {self.index + 1}")
            self.consumed += rest
            self._buf, self._pos = b"", 0
        self._end_payload()

    def _end_payload(self) -> None:
        """Check the comma after a payload; count the netstring."""
        comma = self._take(1)
        if not comma:
            raise TruncatedNetstring(f"input ends before the comma of netstring {self.index + 1}")
        if comma != b",":
            raise NetstringError(f"netstring {self.index + 1}: missing comma after payload")
        self.index += 1

    def _stream_pos(self) -> int:
        return self.consumed  # the stream is read from its start, and only by this reader

    def read_payload(self, length: int) -> bytes:
        """The whole payload of *length* bytes."""
        return b"".join(self.iter_payload(length))
