"""The tryserver request language, and the strict parser for a client's SSH command.

The language is tiny on purpose: deliver a job (the default), ``status JOB``,
``builders``, ``jobs [--all-states] [--limit N]``, ``log JOB [BUILDER] [--follow]
[--tail N] [--from BYTES]``, ``watch JOB`` and ``cancel JOB``, each optionally ``--json``.
Under sshd the client's command (``SSH_ORIGINAL_COMMAND``) is parsed here; anything that
is not exactly this language is refused with exit 64. The client's ``--jobdir`` is
accepted, because Buildbot's client always sends one, and ignored: the server's pinned
jobdir wins.
"""

from __future__ import annotations

import re
import shlex

from tryssh.errors import UsageError

VERBS = ("deliver", "status", "builders", "jobs", "log", "watch", "cancel")
# Verbs that name one job (and answer only for the caller's own jobs).
JOB_VERBS = ("status", "log", "watch", "cancel")
# Options with a numeric value, and the verbs that take them.
NUMBER_OPTIONS = {"--limit": ("jobs",), "--tail": ("log",), "--from": ("log",)}
FLAG_OPTIONS = {"--follow": ("log",), "--all-states": ("jobs",)}
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
        self.job = job  # for status, log, watch, cancel
        self.json = json
        self.builder: str | None = None  # log
        self.follow = False  # log
        self.tail: int | None = None  # log: only the last N lines
        self.start = 0  # log: from this byte on (--from; a resumed follow)
        self.all_states = False  # jobs
        self.limit: int | None = None  # jobs
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
    """Parse ``[--jobdir X] [--json] [VERB [ARGS] [OPTIONS]]`` (the part after ``tryserver``)."""
    request = Request()
    positional: list[str] = []
    flags: list[str] = []
    numbers: dict[str, int] = {}
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name == "--jobdir" or name in NUMBER_OPTIONS:
            if not eq:
                if i + 1 >= len(words):
                    raise error(f"{name} needs a value")
                i += 1
                value = words[i]
            if name == "--jobdir":
                request.client_jobdir = value
            elif not value.isdigit() or len(value) > 15:
                raise error(f"{name} needs a number, not {value[:40]!r}")
            else:
                numbers[name] = int(value)
        elif word == "--json":
            request.json = True
        elif word in FLAG_OPTIONS:
            flags.append(word)
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
        if verb in JOB_VERBS:
            most = 2 if verb == "log" else 1
            if not 1 <= len(args) <= most:
                wanted = "a job name [and a builder]" if most == 2 else "exactly one job name"
                raise error(f"{verb} needs {wanted}")
            if not JOB_NAME.fullmatch(args[0]):
                raise error(f"not a job name: {args[0][:60]!r}")
            request.job = args[0]
            if len(args) == 2:
                if not JOB_NAME.fullmatch(args[1]):
                    raise error(f"not a builder name: {args[1][:60]!r}")
                request.builder = args[1]
        elif args:
            raise error(f"{verb} takes no arguments")
    for option in [*flags, *numbers]:
        allowed = {**FLAG_OPTIONS, **NUMBER_OPTIONS}[option]
        if request.verb not in allowed:
            raise error(f"{option} only goes with: {', '.join(allowed)}")
    request.follow = "--follow" in flags
    request.all_states = "--all-states" in flags
    request.limit = numbers.get("--limit")
    request.tail = numbers.get("--tail")
    request.start = numbers.get("--from", 0)
    return request
