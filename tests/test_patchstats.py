"""tryssh.client.patchstats against the plain line-by-line reading it replaced.

``_reference_patch_stats`` is the implementation patch_stats had before it learnt to count
at C speed (split into lines, one line at a time outside hunks). Hypothesis checks that the
two agree on arbitrary bytes, on soups of diff tokens and on diffs built from realistic parts
(git, svn, hg and plain headers, hunks with right and wrong lengths, binary blocks, trailers,
CRLF, a missing final newline, truncation).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh.client import vcs
from tryssh.client.patchstats import PatchStats, StreamCounter, _after_lines, patch_stats

# --------------------------------------------------------------------------- the reference

_HUNK = re.compile(rb"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_SVN_BINARY_MARKER = b"Cannot display: file marked as a binary type."


def _reference_patch_stats(patch: bytes) -> PatchStats:
    """patch_stats as it was: the patch split into lines, walked one line (or run) at a time."""
    files = added = removed = 0
    lines = patch.split(b"\n")
    old_left = new_left = 0  # lines still expected in the current hunk
    opened: str | None = None  # which header opened the current file and saw no content yet
    i = 0
    while i < len(lines):
        if old_left > 0 or new_left > 0:
            step = _hunk_run(lines, i, old_left, new_left)
            if step is not None:  # the fast path: a run of lines counted at C speed
                n, plus, minus, context = step
                added += plus
                removed += minus
                old_left -= minus + context
                new_left -= plus + context
                i += n
                continue
        line = lines[i]
        i += 1
        if old_left > 0 or new_left > 0:
            if line.startswith(b"+"):
                added += 1
                new_left -= 1
            elif line.startswith(b"-"):
                removed += 1
                old_left -= 1
            elif line.startswith(b"\\"):
                pass  # "\ No newline at end of file"
            else:
                # A context line (or a truncated hunk: then this line ends it).
                if line.startswith(b" ") or line == b"":
                    old_left -= 1
                    new_left -= 1
                else:
                    old_left = new_left = 0
                    i -= 1  # read it again as a header
            continue
        if line.startswith(b"Index: "):
            files += 1
            opened = "index"
        elif line.startswith(b"diff --git "):
            if opened != "index":
                files += 1
            opened = "git"
        elif line.startswith(b"--- ") and i < len(lines) and lines[i].startswith(b"+++ "):
            if opened is None:
                files += 1
            opened = None
            i += 1
        elif m := _HUNK.match(line):
            old_left = int(m.group(1)) if m.group(1) is not None else 1
            new_left = int(m.group(2)) if m.group(2) is not None else 1
            opened = None
        elif line.startswith((b"GIT binary patch", b"Binary files ", _SVN_BINARY_MARKER)):
            opened = None
    return PatchStats(files=files, added=added, removed=removed, size=len(patch))


def _hunk_run(
    lines: list[bytes], i: int, old_left: int, new_left: int
) -> tuple[int, int, int, int] | None:
    """Count the next ``max(old_left, new_left)`` lines of a hunk in one go (or None)."""
    n = max(old_left, new_left)
    run = lines[i : i + n]
    if len(run) < n:
        return None
    firsts = b"".join([line[:1] for line in run])
    plus, minus = firsts.count(b"+"), firsts.count(b"-")
    space, marks = firsts.count(b" "), firsts.count(b"\\")
    if plus + minus + space + marks != len(firsts):
        return None
    context = space + (n - len(firsts))  # empty lines are context too
    if minus + context > old_left or plus + context > new_left:
        return None
    return n, plus, minus, context


def same(patch: bytes) -> None:
    assert patch_stats(patch) == _reference_patch_stats(patch), patch


# --------------------------------------------------------------------------- examples


def test_vcs_still_exports_patch_stats() -> None:
    assert vcs.patch_stats is patch_stats and vcs.PatchStats is PatchStats


def test_patch_stats_is_a_frozen_value() -> None:
    stats = PatchStats(1, 2, 3, 4)
    assert stats == PatchStats(files=1, added=2, removed=3, size=4) != PatchStats(1, 2, 3, 5)
    assert len({stats, PatchStats(1, 2, 3, 4)}) == 1 and stats != (1, 2, 3, 4)
    assert repr(stats) == "PatchStats(files=1, added=2, removed=3, size=4)"
    with pytest.raises(AttributeError):
        stats.files = 2  # type: ignore[misc]


def test_examples() -> None:
    rewrite = b"diff --git a/f b/f\nindex 1..2 100644\n--- a/f\n+++ b/f\n@@ -1,3 +1,4 @@\n"
    rewrite += b"-a\n-b\n-c\n+A\n+B\n+C\n+D\n"
    assert patch_stats(rewrite) == PatchStats(1, 4, 3, len(rewrite))
    # A removed "-- x" line is "--- x" in the patch, and the hunk still wants it.
    sql = b"--- a.sql\n+++ b.sql\n@@ -1,2 +1 @@\n--- x\n+++ y\n-z\n"
    assert patch_stats(sql) == PatchStats(1, 1, 2, len(sql))
    # format-patch's signature after the last hunk is not a removed line.
    mail = rewrite + b"-- \n2.39.0\n\n"
    assert patch_stats(mail) == PatchStats(1, 4, 3, len(mail))
    # A hunk cut short ends at a line no hunk holds, which is read again as a header.
    short = b"--- a\n+++ b\n@@ -1 +1,3 @@\n-x\n+y\ndiff --git a/c b/c\n"
    assert patch_stats(short) == PatchStats(2, 1, 1, len(short))
    # Plain diffs one after the other: the second "---"/"+++" pair follows a hunk directly.
    plain = b"--- a\n+++ b\n@@ -1,2 +1,2 @@\n x\n-y\n+z\n--- c\n+++ d\n@@ -1 +1 @@\n-p\n+q\n"
    assert patch_stats(plain) == PatchStats(2, 2, 2, len(plain))
    for patch in (rewrite, sql, mail, short, plain, rewrite.replace(b"\n", b"\r\n"), rewrite[:-1]):
        same(patch)


def test_huge_hunk_lengths_never_raise() -> None:
    # int() refuses more than 4,300 digits (the reference raised here); any length beyond the
    # lines left acts the same, and leading zeros still read as the number they spell.
    huge = b"@@ -1," + b"9" * 5000 + b" +1 @@\n-a\n-b\n+c\n"
    assert patch_stats(huge) == PatchStats(0, 1, 2, len(huge))
    zeros = b"@@ -1," + b"0" * 40 + b"2 +1," + b"0" * 30 + b" @@\n-a\n-b\n+c\n"
    assert patch_stats(zeros) == PatchStats(0, 0, 2, len(zeros))
    same(zeros)


def test_long_runs_cut_by_the_hunk_lengths() -> None:
    # The hunk ends in the middle of long runs: the rest is read as headers (a "--- "/"+++ "
    # pair among them), whichever side of the halving the cut falls.
    for cut in (1, 5, 16, 17, 40, 99):
        for first, second in ((b"-", b"+"), (b"+", b"-"), (b" ", b"-")):
            body = b"".join(first + b"-- %d\n" % i for i in range(100))
            body += b"".join(second + b"++ %d\n" % i for i in range(3))
            same(b"@@ -1,%d +1,%d @@\n" % (cut, cut) + body)
            same(b"@@ -1,0 +1,%d @@\n" % cut + body)
            same(b"@@ -1,%d +1,0 @@\n" % cut + body)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")), min_size=18, max_size=120)
)
def test_after_lines(lines: list[bytes]) -> None:
    # Where a hunk that ends inside a long run leaves it, whether found by halving or not.
    patch = b"\n".join(lines)
    for skip in range(1, len(lines)):
        want = len(b"\n".join(lines[:skip])) + 1
        assert _after_lines(patch, 0, len(patch), skip) == want


# --------------------------------------------------------------------------- hypothesis

TEXT = st.binary(max_size=10).map(lambda b: b.replace(b"\n", b""))
# Lines a hunk may hold, the tricky ones included: removed lines that look like "---"
# headers, added ones that look like "+++", empty context lines, the "no newline" mark.
HUNK_LINE = st.one_of(
    st.tuples(st.sampled_from([b"-", b"+", b" ", b"-", b"+", b" "]), TEXT).map(b"".join),
    st.tuples(st.sampled_from([b"-- ", b"--- ", b"++ ", b"+++ ", b"-\r", b" \r"]), TEXT).map(
        b"".join
    ),
    st.sampled_from([b"", b"\\ No newline at end of file"]),
)
# Lines that end a hunk (or belong to it, if its lengths say so).
ODD_LINE = st.sampled_from(
    [b"@@ -1 +1 @@", b"@@ -3,2 +3,2 @@ def f():", b"@@ x", b"diff --git a/z b/z", b"diff x",
     b"Index: z", b"2.39.0", b"x", b"\r", b"-- ", b"GIT binary patch"]
)  # fmt: skip


@st.composite
def hunk(draw: st.DrawFn) -> list[bytes]:
    """A hunk header and body whose lengths are right, or off, or missing."""
    body = draw(st.lists(HUNK_LINE, max_size=40))
    old = sum(1 for line in body if line[:1] in (b"-", b" ", b""))
    new = sum(1 for line in body if line[:1] in (b"+", b" ", b""))
    if draw(st.integers(0, 3)) == 0:
        old, new = draw(st.integers(0, 45)), draw(st.integers(0, 45))
    if draw(st.integers(0, 4)) == 0 and body:
        body.insert(draw(st.integers(0, len(body))), draw(ODD_LINE))
    old_len = b"" if old == 1 and draw(st.booleans()) else b",%d" % old
    new_len = b"" if new == 1 and draw(st.booleans()) else b",%d" % new
    tail = draw(st.sampled_from([b"", b" def f():", b" @@"]))
    return [b"@@ -1%s +1%s @@%s" % (old_len, new_len, tail), *body]


GIT_EXTENDED = st.sampled_from(
    [b"index 1234567..89abcde 100644", b"index 0000000..1111111", b"old mode 100644",
     b"new mode 100755", b"new file mode 100644", b"deleted file mode 100644",
     b"similarity index 90%", b"dissimilarity index 60%", b"rename from a/x", b"rename to b/y",
     b"copy from x", b"copy to y", b"index", b"Index: y", b"diff --git a/q b/q", b"+++ q",
     b"@@ -1 +1 @@", b"GIT binary patch"]
)  # fmt: skip
BINARY = st.sampled_from(
    [[b"GIT binary patch", b"literal 5", b"McmZQzOv=my00M6TI{*Lx", b"", b"literal 0",
      b"HcmV?d00001", b""],
     [b"Binary files a/x and b/x differ"],
     [_SVN_BINARY_MARKER, b"svn:mime-type = application/octet-stream"]]
)  # fmt: skip


@st.composite
def file_diff(draw: st.DrawFn) -> list[bytes]:
    """One file's part of a diff: a git, svn, hg, plain or no header, then hunks or a blob."""
    kind = draw(st.sampled_from(["git", "svn", "svn-git", "hg", "plain", "none"]))
    lines: list[bytes] = []
    if kind in ("svn", "svn-git"):
        lines += [b"Index: d/a b.txt", b"=" * 67]
    if kind in ("git", "svn-git"):
        lines.append(b"diff --git a/x b/x")
        lines += draw(st.lists(GIT_EXTENDED, max_size=3))
    if kind == "hg":
        lines.append(b"diff -r 0123456789ab -r ba9876543210 x")
    content = draw(st.sampled_from(["hunks", "hunks", "binary", "nothing"]))
    if content == "binary":
        return lines + draw(BINARY)
    if content == "hunks":
        if kind not in ("git", "svn-git") or draw(st.integers(0, 5)):
            lines += [b"--- a/x\t(revision 1)", b"+++ b/x\t(working copy)"]
        for part in draw(st.lists(hunk(), min_size=1, max_size=4)):
            lines += part
    return lines


@st.composite
def diff(draw: st.DrawFn) -> bytes:
    """A whole diff: maybe a format-patch preamble and trailer, mixed line ends, cut short."""
    lines: list[bytes] = []
    if draw(st.integers(0, 4)) == 0:
        lines += [b"From 0123 Mon Sep 17 00:00:00 2001", b"Subject: [PATCH] x", b"", b"---",
                  b" x | 2 +-", b""]  # fmt: skip
    for part in draw(st.lists(file_diff(), max_size=5)):
        lines += part
    if draw(st.integers(0, 4)) == 0:
        lines += [b"-- ", b"2.39.0", b""]
    ends = draw(st.sampled_from(["lf", "crlf", "mixed"]))
    if ends == "mixed":
        patch = b"".join(line + draw(st.sampled_from([b"\n", b"\r\n"])) for line in lines)
    else:
        patch = b"".join(line + (b"\n" if ends == "lf" else b"\r\n") for line in lines)
    if draw(st.booleans()):
        patch = patch.removesuffix(b"\n")
    if draw(st.integers(0, 4)) == 0:
        patch = patch[: draw(st.integers(0, len(patch)))]
    return patch


# Fragments that make up diffs, glued at random: half-headers, digits, stray newlines.
TOKEN = st.sampled_from(
    [b"\n", b"\n", b"\n", b"+", b"-", b" ", b"\\", b"@@ -", b" +", b" @@", b"@@ -1,2 +1 @@\n",
     b"1", b"2", b"0", b",", b"x", b"\r", b"--- ", b"+++ ", b"diff --git ", b"Index: ",
     b"index 1..2\n", b"new mode 1\n", b"GIT binary patch", b"Binary files ", b"diff --git a b\n",
     b"--- a\n+++ b\n@@ -1,3 +1,3 @@\n"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_same_as_reference_on_any_bytes(data: bytes) -> None:
    same(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKEN, max_size=60).map(b"".join))
def test_same_as_reference_on_token_soup(data: bytes) -> None:
    same(data)


@settings(max_examples=300, deadline=None)
@given(diff())
def test_same_as_reference_on_generated_diffs(patch: bytes) -> None:
    same(patch)


@settings(max_examples=100, deadline=None)
@given(st.lists(hunk(), min_size=1, max_size=3), st.integers(1, 60), st.integers(0, 60))
def test_same_as_reference_on_long_hunks(parts: list[list[bytes]], times: int, cut: int) -> None:
    # Long runs and big blocks (past the small-hunk and short-run switches), with the hunk
    # lengths scaled to match or cut short.
    lines: list[bytes] = []
    for part in parts:
        header, body = part[0], part[1:] * times
        m = re.match(rb"@@ -1(?:,(\d+))? \+1(?:,(\d+))? @@", header)
        assert m is not None
        old = int(m[1] or 1) * times - cut
        new = int(m[2] or 1) * times - cut
        lines += [b"@@ -1,%d +1,%d @@" % (max(old, 0), max(new, 0)), *body]
    same(b"\n".join(lines) + b"\n")


# --------------------------------------------------------------------------- counted as read


def counted_in_pieces(patch: bytes, cuts: list[int], batch: int = 1) -> PatchStats | None:
    counter = StreamCounter(batch=batch)
    last = 0
    for cut in sorted(c % (len(patch) + 1) for c in cuts):
        counter.feed(patch[last:cut])
        last = cut
    counter.feed(patch[last:])
    return counter.result(patch)


GIT_LIKE = st.lists(file_diff(), min_size=1, max_size=6).map(
    lambda parts: b"diff --git a/x b/x\n" + b"".join(line + b"\n" for p in parts for line in p)
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(GIT_LIKE, diff(), st.lists(TOKEN, max_size=60).map(b"".join)),
       st.lists(st.integers(0, 10_000), max_size=8), st.integers(1, 200))  # fmt: skip
def test_counting_as_git_writes_adds_up_to_the_whole(
    patch: bytes, cuts: list[int], batch: int
) -> None:
    """The counts of a patch fed in any pieces (the file parts that have ended counted
    once *batch* bytes wait) are patch_stats' of the whole, or None where they might not
    add up."""
    stats = counted_in_pieces(patch, cuts, batch)
    if stats is not None:
        assert stats == patch_stats(patch)
    else:
        assert b"\nIndex: " in patch or not patch.startswith(b"diff --git ")


def test_counting_as_git_writes_counts_git_output() -> None:
    part = b"diff --git a/f b/f\nindex 1..2 100644\n--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n-a\n+b\n c\n"
    patch = part * 50
    for size in (1, 7, 12, 13, 100, len(patch)):
        assert counted_in_pieces(patch, list(range(size, len(patch), size))) == PatchStats(
            50, 50, 50, len(patch)
        )
    assert counted_in_pieces(b"", []) == PatchStats(0, 0, 0, 0)
    svn = b"Index: f\n===\n--- f\n+++ f\n@@ -1 +1 @@\n-a\n+b\n"
    assert counted_in_pieces(svn, []) is None
    assert counted_in_pieces(part + svn, [len(part)]) is None
