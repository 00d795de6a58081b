"""``tryssh log``, ``tryssh cancel`` and ``tryssh jobs``: results that come back."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any

import click

from tryssh.cli.try_ import _connection_options, _destination, _merge, open_connection
from tryssh.client.display import LineFilter
from tryssh.client.results import LiveWait, stream_remote
from tryssh.client.transport import EX_INTERRUPTED, _remote_error, tryserver_command
from tryssh.errors import (
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    TempFail,
    TrysshError,
    UsageError,
)

CANCEL_WAIT = 30.0  # seconds `tryssh cancel` waits to report how the job ended
EX_ALREADY_FINAL = 2  # as tryssh.server.results: nothing was cancelled
SETTINGS = {"help_option_names": ["-h", "--help"]}


class _Sink:
    """Where log bytes go: as they are (--raw), or through the terminal filter."""

    def __init__(self, raw: bool) -> None:
        self.out = sys.stdout.buffer
        self.filter = None if raw else LineFilter()

    def write(self, data: bytes) -> int:
        if self.filter is None:
            self.out.write(data)
        else:
            for line in self.filter.feed(data):
                self.out.write(line.encode("utf-8") + b"\n")
        self.out.flush()
        return len(data)

    def flush(self) -> None:
        if self.filter is not None:
            for line in self.filter.flush():
                self.out.write(line.encode("utf-8") + b"\n")
        self.out.flush()


def _local_server(config: str) -> Any:
    """A tryserver for the admin on the master (every job visible, nothing pinned)."""
    from tryssh.server.tryserver import Options, RequestContext

    return RequestContext(Options(config=config), env={})


@click.command("log", context_settings=SETTINGS)
@click.argument("job")
@click.option("-b", "--builder", metavar="NAME",
              help="The builder whose log to show (needed when the job has several).")
@click.option("-f", "--follow", is_flag=True,
              help="Keep streaming until the builder ends; exit with its result.")
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@click.option("--raw", is_flag=True, help="The log's bytes as they are (escape sequences "
              "and control characters included): for a file or a pipe, not a terminal.")
@_connection_options
@click.pass_context
def log_cmd(ctx: click.Context, job: str, builder: str | None, follow: bool, tail: int | None,
            raw: bool, **values: Any) -> None:  # fmt: skip
    """Show a builder's log (asks `tryserver log JOB [BUILDER]` on the server).

    The log is streamed, whatever its size. By default it is made safe for a terminal:
    escape sequences and control characters are removed (a build's output cannot drive
    your terminal); --raw passes the bytes through.

    \b
    Examples:
      tryssh log --host ci JOB                  the log of the job's only builder
      tryssh log --host ci JOB -b unit --follow watch it while it runs
      tryssh log --host ci JOB -b unit --tail 50
      tryssh log --config /etc/tryssh/tryssh.toml JOB -b unit    on the master
    Exit codes: 0 ok (the log may be empty: nothing written yet), with --follow 1 the
    builder failed and 75 it ended in error or was cancelled; 64 usage (e.g. no -b for a
    job with several builders), 66 no such job, builder or log (or not yours), 75
    connection trouble, 77 refused, 78 config error, 130 interrupted (Ctrl-C).
    """
    words = ["log", job, *([builder] if builder else []), *(["--follow"] if follow else []),
             *(["--tail", str(tail)] if tail is not None else [])]  # fmt: skip
    sink = _Sink(raw)
    v = _merge(ctx, values, os.getcwd())
    if v.get("master_config"):
        from tryssh.core.request import parse_request_words
        from tryssh.server.results import stream

        server = _local_server(v["master_config"])
        try:
            code = stream(server, parse_request_words(words), sink)  # type: ignore[arg-type]
        finally:
            sink.flush()
            server.close()
        ctx.exit(code)
    if v["connect"] == "local":
        raise UsageError("log on this machine needs --config (the master's config file)")
    dest = _destination(v, quiet=True)
    with open_connection(dest) as conn:
        command = tryserver_command(dest.tryserver_cmd, dest.jobdir, *words)
        try:
            status, stderr = stream_remote(conn, command, sink.write, "tryserver log",
                                           idle=None if follow else conn.opts.timeout)  # fmt: skip
        except KeyboardInterrupt:
            # Ctrl-C is how one stops following: say what goes on, in one line.
            raise TrysshError(f"stopped showing the log of {job}; the build goes on on the "
                              "server", EX_INTERRUPTED) from None  # fmt: skip
        finally:
            sink.flush()
    if status == 0 or (follow and status in (1, EX_TEMPFAIL) and not stderr.strip()):
        ctx.exit(status)
    text = stderr.decode("utf-8", "replace").strip().removeprefix("tryserver: ")
    if status == EX_USAGE and builder is None and "has several builders" in text:
        raise UsageError(f"{' '.join(text.split())} with -b NAME")  # the server's words
    raise _remote_error(status, stderr, "tryserver log")


@click.command("cancel", context_settings=SETTINGS)
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.option("--no-wait", is_flag=True,
              help="Do not wait for the consumer to stop the job; just ask.")
@_connection_options
@click.pass_context
def cancel_cmd(ctx: click.Context, job: str, as_json: bool, no_wait: bool,
               **values: Any) -> None:  # fmt: skip
    """Stop one of your jobs (asks `tryserver cancel JOB` on the server).

    The consumer stops the job's running builds (their whole process group: SIGTERM, then
    SIGKILL after a grace period), does not start the others, and records the state
    `cancelled` with who asked. A buildbot builder's master is asked (REST API) to stop
    the job's builds. A webhook or forward already sent cannot be taken back: its entry
    says so. Only the job's owner may cancel it; on the master, the admin may
    cancel any job with --config.

    Where a Buildbot master reads the server's jobdir itself (the drop-in set-up, no
    consumer): a job Buildbot has not taken yet is taken back from new/; one it has
    taken is stopped through the master's REST API (the server's [buildbot] api), and
    its builds end CANCELLED; without that api the server says it cannot stop it (69).

    \b
    Examples:
      tryssh cancel --host ci JOB
      tryssh cancel --config /etc/tryssh/tryssh.toml JOB      on the master
    Exit codes: 0 cancelled (or, if the consumer has not claimed it yet, the request is
    recorded), 2 the job had already finished: nothing to cancel, 64 usage, 66 no such
    job (or not yours), 69 drop-in without [buildbot] api: the server cannot stop a job
    Buildbot has taken, 75 connection trouble, or Buildbot's API did not answer the stop
    (or has no buildset for the job yet: ask again), 77 refused (also: Buildbot's authz
    does not let the server's token stop builds), 78 config error, 130 interrupted (Ctrl-C).
    """
    v = _merge(ctx, values, os.getcwd())
    if v.get("master_config"):
        _cancel_local(ctx, v["master_config"], job, as_json, no_wait)
        return
    if v["connect"] == "local":
        raise UsageError("cancel on this machine needs --config (the master's config file)")
    dest = _destination(v, quiet=True)
    with open_connection(dest) as conn:
        answer = bytearray()
        command = tryserver_command(dest.tryserver_cmd, dest.jobdir, "cancel", job, "--json")
        status, stderr = stream_remote(conn, command, answer.extend, "tryserver cancel",
                                       conn.opts.timeout)  # fmt: skip
        if status == EX_ALREADY_FINAL:
            _already_final(ctx, stderr.decode("utf-8", "replace"), as_json, job)
        if status == EX_UNAVAILABLE:  # a drop-in server that cannot stop Buildbot's build
            text = stderr.decode("utf-8", "replace").strip().removeprefix("tryserver: ")
            raise TrysshError(text.splitlines()[-1] if text else "cannot cancel", EX_UNAVAILABLE)
        if status != 0:
            raise _remote_error(status, stderr, "tryserver cancel")
        told = _told(bytes(answer))
        record = None
        if not no_wait:
            waiter = LiveWait(dest, lambda: open_connection(dest), job, None, conn=conn,
                              timeout=CANCEL_WAIT, tail_lines=0)  # fmt: skip
            try:
                record = waiter.run()
            except TempFail:
                record = None
            finally:
                if waiter.conn is not None and waiter.conn is not conn:
                    waiter.conn.close()
    _report_cancel(job, record, as_json, told)


def _told(answer: bytes) -> str | None:
    """The server's own line when it did the cancel itself (the drop-in set-up: taken
    back from new/, or Buildbot asked to stop); None when a consumer carries it out."""
    try:
        told = json.loads(answer)
    except ValueError:
        return None
    if isinstance(told, dict) and told.get("how") not in (None, "consumer"):
        return str(told.get("message") or "")
    return None


def _already_final(ctx: click.Context, message: str, as_json: bool, job: str) -> None:
    text = message.strip().removeprefix("tryserver: ")
    if as_json:
        click.echo(json.dumps({"job": job, "cancelled": False, "message": text}))
    else:
        click.echo(f"tryssh: {text}", err=True)
    ctx.exit(EX_ALREADY_FINAL)


def _report_cancel(job: str, record: dict[str, Any] | None, as_json: bool,
                   told: str | None = None) -> None:  # fmt: skip
    """Say how the job ended (*record*: None when it was not seen to end); *told* is the
    server's line when it did the cancel itself (the drop-in set-up)."""
    state = record.get("state") if record else None
    after = f" ({told})" if told else ""
    if as_json:
        click.echo(json.dumps({"job": job, "cancelled": state == "cancelled", "state": state,
                               "record": record, "message": told}))  # fmt: skip
    elif record is None:
        click.echo(f"job {job}: {told}" if told
                   else f"cancel requested for {job}; the consumer stops it when it gets to it")
    elif state == "cancelled":
        by = (record.get("cancelled") or {}).get("by")
        click.echo(f"job {job}: cancelled" + (f" by {by}" if by else "") + after)
    else:
        click.echo(f"job {job}: finished ({state}) before the cancel took effect{after}")


def _cancel_local(ctx: click.Context, config_path: str, job: str, as_json: bool,
                  no_wait: bool) -> None:  # fmt: skip
    import getpass

    from tryssh.server.config import load_config
    from tryssh.server.queries import local_status
    from tryssh.server.results import AlreadyFinal, drop_in_cancel, is_drop_in, request_cancel

    config = load_config(config_path)
    record = local_status(config, job)
    by = f"{getpass.getuser()} (admin)"
    answer = io.BytesIO()
    try:
        if is_drop_in(config, config.state_dir, job):
            drop_in_cancel(config.jobdir, config.state_dir, config.buildbot, record, by, True,
                           answer, lambda: local_status(config, job))  # fmt: skip
        else:
            request_cancel(config.state_dir, record, by, True, answer)
    except AlreadyFinal as err:
        _already_final(ctx, err.message, as_json, job)
    final = None
    deadline = time.monotonic() + (0 if no_wait else CANCEL_WAIT)
    while time.monotonic() < deadline:
        current = local_status(config, job)
        if current.get("state") not in ("queued", "claimed", "running"):
            final = current
            break
        time.sleep(0.1)
    _report_cancel(job, final, as_json, _told(answer.getvalue()))


@click.command("jobs", context_settings=SETTINGS)
@click.option("--all-states", is_flag=True,
              help="Finished jobs too (default: only those queued or running).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              metavar="N", help="At most N jobs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_connection_options
@click.pass_context
def jobs_cmd(ctx: click.Context, all_states: bool, limit: int, as_json: bool,
             **values: Any) -> None:  # fmt: skip
    """List your jobs, newest first (asks `tryserver jobs` on the server).

    Each line: the job, its state, its builders with their results, its age and comment.
    Only your own jobs: the server answers for the user it authenticated. On the master,
    --config lists everyone's.

    \b
    Examples:
      tryssh jobs --host ci                      what is still queued or running
      tryssh jobs --host ci --all-states --limit 5
    Exit codes: 0 ok, 64 usage, 75 connection trouble, 77 refused, 78 config error,
    130 interrupted (Ctrl-C).
    """
    v = _merge(ctx, values, os.getcwd())
    if v.get("master_config"):
        from tryssh.server.config import load_config
        from tryssh.server.queries import active_jobs, recent_jobs

        config = load_config(v["master_config"])
        pick = recent_jobs if all_states else active_jobs
        answer: Any = {"user": None, "all_states": all_states,
                       "jobs": pick(config.state_dir, None, limit)}  # fmt: skip
    elif v["connect"] == "local":
        raise UsageError("jobs on this machine needs --config (the master's config file)")
    else:
        from tryssh.client.wait import remote_query

        dest = _destination(v, quiet=True)
        words = ["jobs", *(["--all-states"] if all_states else []), "--limit", str(limit)]
        with open_connection(dest) as conn:
            answer = remote_query(conn, dest, *words)
    if not isinstance(answer, dict) or not isinstance(answer.get("jobs"), list):
        raise TrysshError("the server's jobs answer is not what tryssh expects", EX_TEMPFAIL)
    if as_json:
        click.echo(json.dumps(answer))
        return
    jobs = answer["jobs"]
    if not jobs:
        click.echo("no jobs" if all_states else
                   "no jobs queued or running (--all-states shows finished ones too)",
                   err=True)  # fmt: skip
    for record in jobs:
        click.echo(jobs_line(record))


def jobs_line(record: dict[str, Any], now: float | None = None) -> str:
    """``JOB  STATE  unit=failure,lint=success  5m ago  comment``, terminal-safe."""
    from tryssh.client.display import format_elapsed, safe_text
    from tryssh.core.records import parse_iso

    builders = ",".join(
        f"{n}={(e or {}).get('result') or (e or {}).get('state')}"
        for n, e in (record.get("builders") or {}).items()
    )
    received = parse_iso(record.get("received"))
    age = f"{format_elapsed((now or time.time()) - received)} ago" if received else "-"
    comment = " ".join(str(record.get("comment") or "").split())[:60]
    fields = [str(record.get("job")), str(record.get("state")), builders or "-", age,
              comment or "-"]  # fmt: skip
    return safe_text("  ".join(fields))
