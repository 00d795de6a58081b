"""The tryserver request language, and the strict parser for a client's SSH command.

The language is tiny on purpose: deliver a job (the default), ``status JOB``,
``builders`` and ``jobs``, each optionally ``--json``. Under sshd the client's command
(``SSH_ORIGINAL_COMMAND``) is parsed here; anything that is not exactly this language is
refused with exit 64. The client's ``--jobdir`` is accepted, because Buildbot's client
always sends one, and ignored: the server's pinned jobdir wins.
"""

from __future__ import annotations

import re
import shlex

from tryssh.errors import UsageError

VERBS = ("deliver", "status", "builders", "jobs")
MAX_COMMAND = 4096
# Shell syntax (; | & $ ` < > ( ) \ * ?), control characters and non-ASCII are refused.
_ALLOWED = re.compile(r"[A-Za-z0-9 _./~:=,@+%'\"-]*")
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._,=+-]{0,254}")


class CommandRefused(UsageError):
    """The client's command is not in the tryserver language (exit 64)."""


class Request:
    """One parsed request (a plain class: dataclasses is slow to import)."""

    def __init__(self, verb: str = "deliver", job: str | None = None, json: bool = False) -> None:
        self.verb = verb
        self.job = job  # for status
        self.json = json
        self.client_jobdir: str | None = None  # what the client sent; never used to write

    def __repr__(self) -> str:
        return f"Request(verb={self.verb!r}, job={self.job!r}, json={self.json!r})"


def _describe(char: str) -> str:
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"


def parse_ssh_command(text: str) -> Request:
    """Parse a client's command strictly; raise CommandRefused for anything else."""
    if len(text) > MAX_COMMAND:
        raise CommandRefused(f"command refused: longer than {MAX_COMMAND} characters")
    if not _ALLOWED.fullmatch(text):
        bad = next(c for c in text if not _ALLOWED.fullmatch(c))
        raise CommandRefused(f"command refused: character {_describe(bad)} is not allowed")
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise CommandRefused(f"command refused: {err}") from None
    if not words:
        raise CommandRefused("command refused: empty command (expected 'tryserver')")
    program = words[0].rsplit("/", 1)[-1]
    if program == "tryserver":
        rest = words[1:]
    elif program in ("buildbot", "tryssh") and words[1:2] == ["tryserver"]:
        rest = words[2:]
    else:
        shown = " ".join(words[:2])[:60]
        raise CommandRefused(f"command refused: {shown!r} is not allowed (only 'tryserver' is)")
    try:
        return parse_request_words(rest)
    except UsageError as err:
        raise CommandRefused(f"command refused: {err.message}") from None


def parse_request_words(words: list[str], error: type[UsageError] = UsageError) -> Request:
    """Parse ``[--jobdir X] [--json] [VERB [JOB]]`` (the part after ``tryserver``)."""
    request = Request()
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--jobdir":
            if i + 1 >= len(words):
                raise error("--jobdir needs a value")
            request.client_jobdir = words[i + 1]
            i += 2
            continue
        if word.startswith("--jobdir="):
            request.client_jobdir = word.split("=", 1)[1]
        elif word == "--json":
            request.json = True
        elif word.startswith("-"):
            raise error(f"unknown option {word[:40]!r}")
        else:
            positional.append(word)
        i += 1
    if positional:
        verb, *args = positional
        if verb not in VERBS:
            raise error(f"unknown request {verb[:40]!r} (expected one of: {', '.join(VERBS)})")
        request.verb = verb
        if verb == "status":
            if len(args) != 1:
                raise error("status needs exactly one job name")
            if not JOB_NAME.fullmatch(args[0]):
                raise error(f"not a job name: {args[0][:60]!r}")
            request.job = args[0]
        elif args:
            raise error(f"{verb} takes no arguments")
    return request
