"""What reaches the developer's terminal: a build's bytes filtered, results coloured."""

from __future__ import annotations

import io
import re

from hypothesis import given
from hypothesis import strategies as st

from tryssh.client.display import LineFilter, builder_line, paint, safe_text, use_color

UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
# Bytes rich in what attacks a terminal: ESC, BEL, CSI/OSC introducers, C1, newlines.
NASTY = st.lists(
    st.one_of(
        st.sampled_from([b"\x1b", b"[", b"]", b"\x07", b"\\", b"\x9b", b"\n", b"\r", b"0;",
                         b"\xc2\x9b", b"\xe2\x80\xae", b"m", b"P", b"a"]),
        st.binary(max_size=8),
    ),
    max_size=40,
).map(b"".join)


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[str]:
    filt = LineFilter()
    lines: list[str] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        lines += filt.feed(data[start:cut])
        start = max(start, cut)
    lines += filt.feed(data[start:])
    return lines + filt.flush()


@given(NASTY, st.lists(st.integers(min_value=0), max_size=6))
def test_no_control_character_or_escape_ever_comes_out(data: bytes, cuts: list[int]) -> None:
    lines = feed_in_pieces(data, cuts)
    assert not any(UNSAFE.search(line) for line in lines)
    # However the bytes arrive, the same lines come out.
    assert lines == feed_in_pieces(data, [])


def test_escape_sequences_are_removed_and_text_kept() -> None:
    data = (b"\x1b]0;owned\x07title\x1b[2J\x1b[31mred\x1b[0m\ttab\r\n"
            b"\xc2\x9b5mc1\n\xe2\x80\xaeevil\n")  # fmt: skip
    assert feed_in_pieces(data, [3, 17]) == ["titlered\ttab", "c1", "evil"]


def test_a_long_line_without_newline_comes_out_in_pieces() -> None:
    filt = LineFilter()
    lines = filt.feed(b"x" * 200_000)
    assert lines and all(len(line) <= 64 * 1024 for line in lines)
    assert "".join(lines + filt.flush()) == "x" * 200_000


def test_builder_line_shows_result_reason_and_url_never_a_server_path() -> None:
    info = {"state": "done", "result": "failure", "reason": "exit status 3",
            "log": "/srv/tryssh/logs/j/unit.log", "url": "https://ci.example/b/1"}  # fmt: skip
    assert builder_line("unit", info) == "unit: failure (exit status 3)  https://ci.example/b/1"
    assert builder_line("unit", {"state": "running"}) == "unit: running"
    assert safe_text(builder_line("x", {"state": "done", "result": "error",
                                        "reason": "\x1b[2Jboom"})) == "x: error (boom)"  # fmt: skip


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color() -> None:
    assert use_color(Tty(), no_color=False, environ={})
    assert not use_color(Tty(), no_color=True, environ={})
    assert not use_color(Tty(), no_color=False, environ={"NO_COLOR": "1"})
    assert not use_color(io.StringIO(), no_color=False, environ={})
    assert paint("unit: failure", "failure", True) == "\x1b[31;1munit: failure\x1b[0m"
    assert paint("unit: success", "success", True) == "\x1b[32munit: success\x1b[0m"
    assert paint("unit: failure", "failure", False) == "unit: failure"
