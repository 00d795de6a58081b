"""What reaches the developer's terminal: builders' bytes made safe, results in colour.

A build's output is not trusted: :class:`LineFilter` drops escape sequences and control
characters (so a build cannot retitle, clear or reprogram the terminal, nor hide text
with bidirectional overrides); ``--raw`` output bypasses it on purpose.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

MAX_LINE = 64 * 1024  # a longer run without newline is shown in pieces

# -- terminal safety ------------------------------------------------------------------------

_ESCAPES = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, screen clears
    r"|\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks, clipboard writes
    r"|[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|.?)"  # any other two-character sequence
    r"|\x9b[0-?]*[ -/]*[@-~]",  # the 8-bit CSI
    re.S,
)
# C0 (but tab), DEL, C1, and the bidirectional overrides that can disguise text.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def safe_text(text: str) -> str:
    """*text* without escape sequences and control characters (tabs stay)."""
    return _UNSAFE.sub("", _ESCAPES.sub("", text))


class LineFilter:
    """Bytes in, terminal-safe lines out (UTF-8; undecodable bytes become U+FFFD)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._partial + self._decoder.decode(data)
        *lines, self._partial = text.split("\n")
        while len(self._partial) > MAX_LINE:
            lines.append(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        return [safe_text(line) for line in lines]

    def flush(self) -> list[str]:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return [safe_text(rest)] if rest else []


# -- colour ---------------------------------------------------------------------------------

_COLOURS = {"success": "32", "failure": "31", "error": "31", "rejected": "31",
            "interrupted": "33", "cancelled": "33"}  # fmt: skip


def paint(text: str, result: str | None, color: bool) -> str:
    """*text* in the colour of *result* (green success, red failure, yellow cancelled)."""
    code = _COLOURS.get(result or "")
    if not color or code is None:
        return text
    bold = ";1" if result in ("failure", "error", "rejected") else ""
    return f"\x1b[{code}{bold}m{text}\x1b[0m"


def use_color(stream: Any, no_color: bool, environ: Any = None) -> bool:
    """Colour only on a terminal, and never with --no-color or NO_COLOR set (no-color.org)."""
    import os

    env = os.environ if environ is None else environ
    if no_color or env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def builder_line(name: str, info: dict[str, Any]) -> str:
    """``unit: failure (exit status 3)  URL``, terminal-safe, never the server's log path
    (which the developer cannot read: ``tryssh log`` brings the log)."""
    from tryssh.core.jobview import builder_line as view

    return safe_text(view(name, info, show_log=False).strip())


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
