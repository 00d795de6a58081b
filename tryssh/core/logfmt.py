"""logfmt lines: ``key=value`` pairs, a value with anything but plain characters JSON-quoted.

One writer for the audit log, the consumer's event log and ``tryssh serve``'s messages: every
line starts ``time=...Z`` (UTC), and a client's newline or escape sequence can never forge a
line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: the audit log is on start-up path
if TYPE_CHECKING:
    from typing import TextIO

# syslog priorities, for the "<N>" prefix journald understands
ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7
LEVELS = {ERR: "err", WARNING: "warning", NOTICE: "notice", INFO: "info", DEBUG: "debug"}

_PLAIN = re.compile(r"[A-Za-z0-9._:/@+=,~%-]+")


def format_value(value: object) -> str:
    text = "" if value is None else str(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text)  # escapes quotes, control characters and non-ASCII


def iso_time(stamp: float | None = None, micros: bool = False) -> str:
    """The UTC time *stamp* (default: now) as ISO-8601 ending in ``Z``: to the second for log
    lines, to the microsecond (*micros*) for job records."""
    if stamp is None:
        stamp = time.time()
    seconds, fraction = divmod(round(stamp * 1_000_000), 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{fraction:06d}Z" if micros else f"{text}Z"


def format_fields(fields: dict[str, object]) -> str:
    """``key=value ...`` for the fields that are not None (no time, no newline)."""
    return " ".join(f"{k}={format_value(v)}" for k, v in fields.items() if v is not None)


def format_line(fields: dict[str, object]) -> str:
    """One line (with its newline) from *fields*, prefixed by the UTC time."""
    return f"time={iso_time()} {format_fields(fields)}".rstrip() + "\n"


class EventLog:
    """One logfmt line per event on a stream (stderr), thread-safe: ``time=... level=...``
    and the event's fields.

    Under systemd (JOURNAL_STREAM set) lines carry a ``<N>`` priority prefix and no time,
    since journald adds its own.
    """

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        import threading  # not at import time: the forced command imports this module

        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.journal = "JOURNAL_STREAM" in os.environ
        self._lock = threading.Lock()

    def __call__(self, priority: int, **fields: object) -> None:
        if priority >= DEBUG and not self.verbose:
            return
        if self.journal:
            line = f"<{priority}>{format_fields(fields)}\n"
        else:
            line = format_line({"level": LEVELS[priority], **fields})
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed stderr must not stop the builds or the server
