"""logfmt lines: ``key=value`` pairs, a value with anything but plain characters JSON-quoted.

One writer for the audit log, the consumer's event log and ``tryssh serve``: a client's
newline or escape sequence can never forge a line.
"""

from __future__ import annotations

import json
import re
import time

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
    """One audit line (with its newline) from *fields*, prefixed by the UTC time."""
    parts = [f"time={iso_time()}"]
    parts += [f"{k}={format_value(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts) + "\n"
