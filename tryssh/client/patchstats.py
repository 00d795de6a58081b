"""Count the files, added and removed lines of a unified/git/svn/hg diff, at C speed.

``tryssh try --dry-run`` prints these counts for patches of many megabytes, so the patch is
never split into lines: header lines are read one at a time by offset, and the lines of a hunk
are counted a run or a block at a time by ``bytes.count`` and ``re`` searches that take
start/end offsets and copy nothing. The counts are exactly those of the line-by-line reading
that :func:`patch_stats` describes (tests/test_patchstats.py keeps that reading as its
reference and compares the two with hypothesis).
"""

from __future__ import annotations

import re

# A hunk header line, with its newline (if any: it may end the patch).
_HUNK = re.compile(rb"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@[^\n]*\n?").match
# The usual git file header with its first hunk header, matched in one go: the lines between
# (index, modes, renames, copies) change no count, so walking them one by one is wasted time.
_GIT_FILE = re.compile(
    rb"diff --git [^\n]*\n"
    rb"(?:(?:index|old mode|new mode|deleted file mode|new file mode|similarity index"
    rb"|dissimilarity index|rename from|rename to|copy from|copy to) [^\n]*\n)*"
    rb"--- [^\n]*\n\+\+\+ [^\n]*\n"
    rb"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@[^\n]*\n"
).match
# The end of a run of lines that start with the same byte: the first newline followed by another
# byte (an empty line included). Keyed by that first byte.
_RUN_END = {
    ord("+"): re.compile(rb"\n[^+]").search,
    ord("-"): re.compile(rb"\n[^-]").search,
    ord(" "): re.compile(rb"\n[^ ]").search,
    ord("\\"): re.compile(rb"\n[^\\]").search,
}
# The end of a run of empty lines.
_NOT_NL = re.compile(rb"[^\n]").search
# The end of a block of hunk-like lines: the first line that is empty or starts with another byte.
_BLOCK_END = re.compile(rb"\n[^-+ \\]").search
#: What svn prints in place of a binary file's diff.
SVN_BINARY_MARKER = b"Cannot display: file marked as a binary type."
_BINARY = (b"GIT binary patch", b"Binary files ", SVN_BINARY_MARKER)
_NL, _AT, _MINUS, _PLUS, _SPACE = b"\n@-+ "  # first bytes compared as ints
_D, _I = b"dI"
_BINARY_FIRSTS = b"GBC"
# Hunks this small (by their header) are counted a block at a time from their first line: the
# few calls per block beat a search per run when runs are a line or three (code, with context).
_SMALL_HUNK = 32
# After a run this short the rest of the hunk is tried as one block, for the same reason.
_SHORT_RUN = 8


class PatchStats:
    """What a patch touches: files, added and removed lines, and its size in bytes.

    A plain frozen value, not a dataclass: vcs imports this before ``tryssh try`` can start
    git (see prefetch), and dataclasses would bring ``inspect`` and ``ast`` in.
    """

    __slots__ = ("added", "files", "removed", "size")
    files: int
    added: int
    removed: int
    size: int

    def __init__(self, files: int, added: int, removed: int, size: int) -> None:
        for name, value in (("files", files), ("added", added), ("removed", removed),
                            ("size", size)):  # fmt: skip
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def _fields(self) -> tuple[int, int, int, int]:
        return (self.files, self.added, self.removed, self.size)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not PatchStats:
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"PatchStats(files={self.files}, added={self.added}, removed={self.removed}, "
                f"size={self.size})")  # fmt: skip


def patch_stats(patch: bytes) -> PatchStats:
    """Count files, added and removed lines in a unified/git/svn/hg diff; never raises.

    A file is counted once per header, whichever of ``Index:`` (svn), ``diff --git`` (git,
    hg, svn --git) or a ``---``/``+++`` pair introduces it, so git binary patches and mode-only
    changes count as files too. Lines inside hunks are counted from the hunk header's lengths,
    so a removed line that starts with ``--`` is not a header: a hunk lasts while either length
    has lines left; in it ``+`` and ``-`` lines use up one length, context lines (a space
    first, or empty) both, ``\\`` lines neither, and any other line ends a truncated hunk
    and is read again as a header.
    """
    files = added = removed = 0
    n = len(patch)
    # A run that reaches the end of the patch stops before a final newline: the empty "line"
    # after it changes no count.
    tail = n - 1 if patch.endswith(b"\n") else n
    find, count, startswith = patch.find, patch.count, patch.startswith
    old_left = new_left = 0  # lines still expected in the current hunk (may go below 0)
    opened: str | None = None  # which header opened the current file and saw no content yet
    block_ok = by_block = False  # whether this hunk may, and should next, be counted by block
    pos = 0  # the start of the next line
    while pos < n:
        if old_left > 0 or new_left > 0:
            first = patch[pos]
            if first == _NL:
                # Empty context lines (their space stripped by a mailer or editor), a byte each.
                m = _NOT_NL(patch, pos)
                took = min((m.start() if m is not None else n) - pos, max(old_left, new_left))
                old_left -= took
                new_left -= took
                pos += took
                continue
            run_end = _RUN_END.get(first)
            if run_end is None:  # a truncated hunk: read this line again as a header
                old_left = new_left = 0
                continue
            # Every line of a hunk follows a newline (its header's at least), so "\n+" counts
            # added lines from pos - 1 on.
            if by_block:
                m = _BLOCK_END(patch, pos)
                end = m.start() if m is not None else tail
                lines = count(b"\n", pos, end) + 1
                plus = count(b"\n+", pos - 1, end)
                minus = count(b"\n-", pos - 1, end)
                # "\" lines are rare: a memchr for the byte spares most blocks a count.
                marks = count(b"\n\\", pos - 1, end) if find(b"\\", pos, end) >= 0 else 0
                context = lines - plus - minus - marks
                # Within both lengths, the hunk holds every line of the block (bar trailing
                # "\" lines, which change nothing as headers either).
                if minus + context <= old_left and plus + context <= new_left:
                    added += plus
                    removed += minus
                    old_left -= minus + context
                    new_left -= plus + context
                    pos = end + 1
                    continue
                # The hunk ends inside the block: go run by run, and never scan it again.
                block_ok = by_block = False
            m = run_end(patch, pos)
            end = m.start() if m is not None else tail
            run = count(b"\n", pos, end) + 1
            # How many of the run's lines the hunk takes before both lengths are used up.
            if first == _PLUS:
                took = run if old_left > 0 else min(run, new_left)
                added += took
                new_left -= took
            elif first == _MINUS:
                took = run if new_left > 0 else min(run, old_left)
                removed += took
                old_left -= took
            elif first == _SPACE:
                took = min(run, max(old_left, new_left))
                old_left -= took
                new_left -= took
            else:  # "\ No newline at end of file"
                took = run
            pos = end + 1 if took == run else _after_lines(patch, pos, end, took)
            by_block = block_ok and run < _SHORT_RUN
            continue
        first = patch[pos]
        # A hunk header, or a git file header up to its first hunk's: one match, no find.
        if first == _AT:
            m = _HUNK(patch, pos)
        elif first == _D:
            m = _GIT_FILE(patch, pos)
            if m is not None and opened != "index":
                files += 1
        else:
            m = None
        if m is not None:
            old, new = m.groups()
            old_left = int(old) if old is not None and len(old) < 19 else _length(old, n)
            new_left = int(new) if new is not None and len(new) < 19 else _length(new, n)
            opened = None
            block_ok = True
            by_block = max(old_left, new_left) < _SMALL_HUNK
            pos = m.end()
            continue
        nl = find(b"\n", pos)
        after = nl + 1 if nl >= 0 else n
        if first == _D:
            if startswith(b"diff --git ", pos):
                if opened != "index":
                    files += 1
                opened = "git"
        elif first == _I:
            if startswith(b"Index: ", pos):
                files += 1
                opened = "index"
        elif first == _MINUS:
            if nl >= 0 and startswith(b"--- ", pos) and startswith(b"+++ ", after):
                if opened is None:
                    files += 1
                opened = None
                nl = find(b"\n", after)  # the "+++" line is part of the header
                after = nl + 1 if nl >= 0 else n
        elif first in _BINARY_FIRSTS and startswith(_BINARY, pos):
            opened = None
        pos = after
    return PatchStats(files=files, added=added, removed=removed, size=n)


_FILE_START = b"\ndiff --git "
_SVN_FILE = b"\nIndex: "


class StreamCounter:
    """:func:`patch_stats` of a git diff fed in pieces as git writes it: each file's part
    is counted as soon as the next one starts, so that little is left when git is done.

    The counts of whole ``diff --git`` parts add up to the whole patch's: at such a line
    patch_stats starts a file afresh whatever came before (a hunk left open ends there),
    unless an ``Index:`` header (svn) opened one, which git never writes. :meth:`result`
    checks that, and says None (count the patch at once) where it does not hold.
    """

    def __init__(self, batch: int = 1 << 18) -> None:
        self._pending = bytearray()  # fed, not counted: the parts whose end is not known yet
        self._files = self._added = self._removed = 0
        # Counted *batch* bytes or more at a time: git writes a few KiB at a time, and a
        # count per piece (or per file) would cost several times the whole count.
        self._batch = batch
        self._searched = 0  # no part starts before this in _pending (but one may straddle it)
        self._index = False  # an svn "Index:" header was fed: the parts may not add up
        self._last = b""  # the stream's last bytes, for a header that straddles two pieces

    def feed(self, data: bytes) -> None:
        # Looked for in each piece as it comes, not in the whole patch at the end, where
        # it would be on the command's critical path (2.5 ms for 5.8 MB).
        if not self._index:
            self._index = _SVN_FILE in data or _SVN_FILE in self._last + data[:7]
            self._last = (self._last + data[-7:])[-7:]
        self._pending += data
        if len(self._pending) < self._batch:
            return
        cut = self._pending.rfind(_FILE_START, self._searched)
        if cut > 0:
            self._count(bytes(self._pending[: cut + 1]))
            del self._pending[: cut + 1]
        self._searched = max(0, len(self._pending) - len(_FILE_START))

    def result(self, patch: bytes) -> PatchStats | None:
        """The counts of *patch* (all that was fed), or None if they may not add up."""
        if (patch and not patch.startswith(b"diff --git ")) or self._index:
            return None
        self._count(bytes(self._pending))
        self._pending.clear()
        return PatchStats(self._files, self._added, self._removed, len(patch))

    def _count(self, part: bytes) -> None:
        stats = patch_stats(part)
        self._files += stats.files
        self._added += stats.added
        self._removed += stats.removed


def _length(digits: bytes | None, most: int) -> int:
    """A hunk header's line count (1 when left out), at most ``most``.

    Any count above the lines left in the patch acts the same, and the cap spares int() a
    count of thousands of digits (which it refuses).
    """
    if digits is None:
        return 1
    if len(digits) > 18:
        digits = digits.lstrip(b"0") or b"0"
        if len(digits) > 18:
            return most + 2
    return int(digits)


def _after_lines(patch: bytes, pos: int, end: int, lines: int) -> int:
    """Where the line after the next ``lines`` lines from ``pos`` starts (``end`` is past them).

    Halving by count keeps a long run linear where a find per line would crawl.
    """
    while lines > 16:
        mid = (pos + end) // 2
        here = patch.count(b"\n", pos, mid)
        if here >= lines:
            end = mid
        else:
            pos, lines = mid, lines - here
    for _ in range(lines):
        pos = patch.find(b"\n", pos) + 1
    return pos
