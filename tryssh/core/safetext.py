"""Text that is safe to show: URLs without their credentials, strings without control codes.

Whatever reaches a developer (``tryserver status``, records, logs, an admin's terminal) goes
through here when it may hold a secret or a client's bytes.
"""

from __future__ import annotations

REDACTED = "***"


def redact_url(url: str) -> str:
    """*url* with its userinfo and query string (where tokens live) replaced by ``***``.

    ``http://deploy:s3cr3t@ci.example/hook?token=abc`` → ``http://***@ci.example/hook?***``.
    Text that is not a URL with a scheme comes back unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The authority ends at the first "/", "?" or "#"; its userinfo at the last "@" in it.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = REDACTED + "@" + authority.rpartition("@")[2]
    path, qsep, _query = tail.partition("?")
    if qsep:
        tail = path + "?" + REDACTED
    elif "#" in tail:
        tail = tail.partition("#")[0]
    return f"{scheme}://{authority}{tail}"


def redact_in(text: str, url: str) -> str:
    """*text* (an error message about *url*) with *url*'s secrets replaced everywhere in it.

    Error messages quote parts of a URL too (``nonnumeric port: 's3cr3t@host'``), so the
    userinfo and query are removed wherever they appear, not only in the whole URL.
    """
    text = text.replace(url, redact_url(url))
    _scheme, _sep, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo = rest[:end].rpartition("@")[0]
    after = rest[end:]
    query = after.partition("?")[2]
    fragment = after.partition("#")[2]
    secrets = [userinfo, userinfo.partition(":")[2], query, fragment]
    secrets += [pair.partition("=")[2] for pair in query.replace(";", "&").split("&")]
    # Longest first, so that a part never leaves the rest of a longer secret behind.
    for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def printable(text: str) -> str:
    """*text* with control characters (and other unprintable ones) escaped as ``\\xNN``.

    For plain-text output a client's string can reach (branch names on an admin's terminal):
    an escape sequence must not move the cursor, retitle the window or hide a line.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
