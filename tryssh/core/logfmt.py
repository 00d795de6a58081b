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


def format_line(fields: dict[str, object]) -> str:
    """One audit line (with its newline) from *fields*, prefixed by the UTC time."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parts = [f"time={stamp}"]
    parts += [f"{k}={format_value(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts) + "\n"
