"""Asking the server about a job, and waiting for its builds (``tryssh try --wait``,
``tryssh status``). The human view of a record is :mod:`tryssh.core.jobview`'s.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from tryssh.client.transport import Destination, run_remote, tryserver_command
from tryssh.core.jobview import builder_line, head_line
from tryssh.core.records import FINAL_STATES
from tryssh.core.safetext import printable
from tryssh.errors import EX_NOPERM, EX_TEMPFAIL, EX_UNAVAILABLE, REFUSALS, TempFail, TrysshError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.sshclient import Connection
    from tryssh.core.records import JobRecord

WAIT_INTERVAL = 1.0
# job state -> exit code of `tryssh try --wait` / `tryssh status`. "delivered": handed on
# to a receiver whose results this server cannot see (a forward builder), never a success.
STATE_EXIT: dict[str, int] = {
    "success": 0,
    "failure": 1,
    "rejected": EX_NOPERM,
    "error": EX_TEMPFAIL,
    "interrupted": EX_TEMPFAIL,
    "cancelled": EX_TEMPFAIL,
    "delivered": EX_UNAVAILABLE,
}
# `--wait` when the server says it cannot report the job's results (a Buildbot master reads
# its jobdir and it knows no API to ask): at once, instead of waiting forever.
EX_NO_RESULTS = EX_UNAVAILABLE


class WaitTimeout(TempFail):
    """--wait-timeout passed; the job goes on."""


def remote_query(conn: Connection, dest: Destination, *words: str) -> Any:
    """Run ``tryserver WORDS... --json`` on the server and return the decoded answer,
    checked where tryssh reads it (:func:`record_problem`)."""
    command = tryserver_command(dest.tryserver_cmd, dest.jobdir, *words, "--json")
    stdout, _ = run_remote(conn, command, b"", what=f"tryserver {words[0]}")
    try:
        answer = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TempFail(
            f"the server's answer to '{words[0]}' is not JSON (is it tryssh's tryserver?)"
        ) from None
    problem = answer_problem(words[0], answer)
    if problem:
        raise TempFail(f"the server's answer to '{words[0]}' is not what tryssh reads: {problem}")
    return answer


def record_problem(record: Any) -> str | None:
    """What keeps *record* from being read as a job record (None: nothing). Only the
    containers are checked: every field is shown through str(), whatever its type."""
    if not isinstance(record, dict):
        return "a job record that is not an object"
    builders = record.get("builders")
    if builders is not None and not isinstance(builders, dict):
        return "builders that are not an object"
    entries = (builders or {}).values()
    if any(entry is not None and not isinstance(entry, dict) for entry in entries):
        return "a builder's entry that is not an object"
    return None


def answer_problem(verb: str, answer: Any) -> str | None:
    """What keeps the server's *answer* to *verb* from being read (None: nothing): a
    server's nonsense ends in one line, never in a traceback."""
    if verb == "status":
        return record_problem(answer)
    if verb == "jobs":
        jobs = answer.get("jobs") if isinstance(answer, dict) else None
        if not isinstance(jobs, list):
            return "no list of jobs"
        return next(filter(None, map(record_problem, jobs)), None)
    if verb == "builders":
        names = answer.get("builders") if isinstance(answer, dict) else answer
        return None if isinstance(names, list) else "no list of builders"
    return None


def exit_code_for(record: JobRecord) -> int:
    """0 every build succeeded, 1 a build failed, 77 rejected, 75 error, interrupted or
    cancelled, 69 the results cannot be seen from this server (delivered elsewhere)."""
    if record.get("followable") is False:
        return EX_NO_RESULTS
    return STATE_EXIT.get(str(record.get("state")), EX_TEMPFAIL)


def wait_for(
    fetch: Callable[[], JobRecord],
    timeout: float | None,
    echo: Callable[[str], None] | None,
    interval: float = WAIT_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
    max_interval: float | None = None,
    on_record: Callable[[JobRecord], None] | None = None,
) -> JobRecord:
    """Poll *fetch* until the job reaches a final state; show changes through *echo*.

    Raises TempFail when *timeout* seconds pass first. A transient failure to ask (lost
    connection, server busy) is retried until then; a refusal (:data:`REFUSALS`: 64, 77, or
    66 when the server has no such job of yours) or 69 (nobody there can tell) is final.
    With *max_interval* the interval doubles after each poll up to it (backoff);
    *on_record* replaces the echo of changes.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    last_error = ""
    while True:
        try:
            record = fetch()
        except TrysshError as err:
            if err.exit_code in (*REFUSALS, EX_UNAVAILABLE):  # asking again will not help
                raise
            if echo is not None and err.message != last_error:
                echo(f"status not available yet: {err.message}")
            last_error = err.message
            record = None
        if record is not None and on_record is not None:
            last_error = ""
            on_record(record)
            if record.get("state") in FINAL_STATES:
                return record
        elif record is not None:
            last_error = ""
            state = str(record.get("state"))
            if echo is not None and seen.get("") != state:
                echo(head_line(record))
            seen[""] = state
            for name, info in (record.get("builders") or {}).items():
                line = builder_line(name, info or {}, show_log=False)
                if echo is not None and seen.get(name) != line:
                    echo(line)
                seen[name] = line
            if state in FINAL_STATES:
                return record
            if record.get("followable") is False:
                return record  # nothing will ever tell us more: do not wait forever
        if deadline is not None and time.monotonic() + interval > deadline:
            raise WaitTimeout(
                f"gave up waiting after {timeout:g}s (--wait-timeout); the job goes on"
            )
        sleep(interval)
        if max_interval is not None:
            interval = min(interval * 2, max_interval)


def echo_stderr(line: str) -> None:
    # The server's words (a branch name, a reason) must not drive the developer's terminal.
    print(printable(line), file=sys.stderr, flush=True)


def echo_stderr_painted(line: str) -> None:
    """A line already made safe, whose only escapes are its colours (LiveWait.say)."""
    print(line, file=sys.stderr, flush=True)
