"""``tryssh try``, ``tryssh status`` and ``tryssh builders``: the developer's commands."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from tryssh.errors import EX_OK, TempFail, TrysshError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.sshclient import Connection


def _import_paramiko() -> None:
    """Import paramiko without the ``invoke`` package, which costs ~60 ms at every start.

    paramiko.config imports invoke only to run ``Match exec`` lines of ~/.ssh/config; with
    it hidden such a line is reported as an error instead. Other users of invoke in this
    process are unaffected: the block is lifted as soon as paramiko is loaded.
    """
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        return
    sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko  # noqa: F401
    finally:
        del sys.modules["invoke"]


_import_paramiko()

from tryssh.client.job import (  # noqa: E402
    TryRequest,
    build_job,
    dry_run_dict,
    gather_change,
    parse_properties,
    summary_lines,
)
from tryssh.client.sshclient import DEFAULT_TIMEOUT, SshOptions  # noqa: E402
from tryssh.client.transport import (  # noqa: E402
    DEFAULT_TRYSERVER_CMD,
    TRANSPORTS,
    Destination,
    deliver,
    open_connection,
)
from tryssh.client.wait import echo_stderr, exit_code_for, remote_query, wait_for  # noqa: E402
from tryssh.core.jobview import status_lines  # noqa: E402
from tryssh.core.records import ACTIVE_STATES  # noqa: E402

TRY_HELP = """\
Send the uncommitted change of this working copy (git, hg, svn) to a try server, which
builds it on the chosen builders. The job is a Buildbot job file (v5/v6), so a Buildbot
master's Try_Jobdir reads it as well as tryssh's consumer.

\b
Examples:
  tryssh try --host ci -b unit                 ssh to "ci" (from ~/.ssh/config)
  tryssh try --host ci -b unit -b lint --wait  ... and wait for the results
  tryssh try --host ci -b unit --wait --follow ... showing the build's output live
  tryssh try --dry-run                         show what would be sent
  git diff main | tryssh try --diff - --baserev main -p 1 --host ci
  tryssh try -c scp --host ci --jobdir /srv/tryssh/jobdir    sftp account
  tryssh try -c local --jobdir /srv/tryssh/jobdir            on the master itself
  tryssh try --host ci --json                  machine-readable receipt

\b
Settings come from the command line, then ./.tryssh.toml (walking up), then
~/.config/tryssh/config.toml, then Buildbot's .buildbot/options (read, never executed).
Host keys are checked against ~/.ssh/known_hosts; an unknown key is refused unless
--accept-new-host-key.


--wait asks the server to tell each change as it happens (one SSH session for the whole
wait; a lost connection is resumed). When a builder fails it shows the last lines of its
log (--tail-lines) and why; --follow streams the logs live instead. Ctrl-C stops only the
waiting: the job goes on (tryssh status --wait JOB picks it up again).


Exit codes: 0 delivered (with --wait: every build succeeded), 1 a build failed,
64 usage, 65 bad/empty job, 66 no such job, 75 connection or server trouble (with --wait:
an error, an interrupted or cancelled job, or --wait-timeout), 77 refused (host key,
login, policy), 78 config error, 130 interrupted (Ctrl-C).
"""


def _connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The SSH/transport options shared by try, status and builders."""
    options = [
        click.option(
            "-c",
            "--connect",
            type=click.Choice(TRANSPORTS),
            default="ssh",
            show_default=True,
            help="How to deliver: ssh (exec tryserver), scp "
            "(sftp into the jobdir) or local (a jobdir on this machine).",
        ),
        click.option(
            "--host", metavar="HOST", help="The try server (an ~/.ssh/config alias works)."
        ),
        click.option(
            "--port", type=click.IntRange(1, 65535), help="SSH port (default: ssh config, 22)."
        ),
        click.option(
            "-u", "--username", metavar="USER", help="Login name (default: ssh config, you)."
        ),
        click.option(
            "-i",
            "--identity",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help="Use only this private key (the agent may sign for it).",
        ),
        click.option(
            "--jobdir",
            metavar="DIR",
            help="The jobdir on the server (scp, local; "
            "passed to tryserver, which a forced command ignores).",
        ),
        click.option(
            "--tryserver-cmd",
            "--buildbotbin",
            "tryserver_cmd",
            metavar="CMD",
            default=DEFAULT_TRYSERVER_CMD,
            show_default=True,
            help="The remote program; 'tryserver' is appended unless it is named so.",
        ),
        click.option(
            "--known-hosts",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help="An extra known_hosts file, checked first (new keys go there).",
        ),
        click.option(
            "--accept-new-host-key",
            is_flag=True,
            help="Record an unknown host key (never a changed one), like "
            "StrictHostKeyChecking=accept-new.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=1),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            help="Seconds for connect, login and idle I/O.",
        ),
        click.option(
            "--config",
            "master_config",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help="On the master: read status/builders from this tryssh config.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _wait_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How --wait shows what happens: live logs, the tail of a failure, colour."""
    options = [
        click.option("--follow/--no-follow", default=False,
                     help="With --wait: stream the builders' output live (prefixed by the "
                     "builder's name when there are several); setting: follow = true."),
        click.option("--tail-lines", type=click.IntRange(min=0), default=30, show_default=True,
                     metavar="N", help="With --wait: lines of a failed builder's log to show "
                     "(0: none); setting: tail_lines."),
        click.option("--no-color", is_flag=True,
                     help="No colours (also when NO_COLOR is set or not on a terminal)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def wait_for_job(
    dest: Destination, conn: Connection | None, job: str, v: dict[str, Any], quiet: bool
) -> tuple[dict[str, Any], Connection | None]:
    """Wait until *job* is final; (its record, the connection now open, to be closed).

    Over SSH the server streams the changes (``tryserver watch``); on the master itself
    (``-c local``/``--config``) the records are read directly, once a second.
    """
    echo = None if quiet else echo_stderr
    from tryssh.client.results import DEFAULT_TAIL_LINES, LiveWait

    tail = v.get("tail_lines")
    lines = DEFAULT_TAIL_LINES if tail is None else int(tail)
    if dest.connect == "local" or conn is None:
        fetch = status_fetcher(dest, None, job)
        try:
            record = wait_for(fetch, v.get("wait_timeout"), echo)
        except KeyboardInterrupt:
            raise _stopped_waiting(job) from None
        if echo is not None and dest.config and lines > 0:
            _local_tails(dest.config, record, lines, echo)
        return record, None
    from tryssh.client.display import use_color

    waiter = LiveWait(
        dest, lambda: open_connection(dest), job, echo, conn=conn,
        follow=bool(v.get("follow")), tail_lines=lines,
        color=use_color(sys.stderr, bool(v.get("no_color"))),
        timeout=v.get("wait_timeout"),
    )  # fmt: skip
    try:
        return waiter.run(), waiter.conn
    except KeyboardInterrupt:
        if waiter.conn is not None and waiter.conn is not conn:
            waiter.conn.close()
        raise _stopped_waiting(job) from None


def _local_tails(config: str, record: dict[str, Any], lines: int,
                 echo: Callable[[str], None]) -> None:  # fmt: skip
    """On the master (``--config``): the last *lines* lines of each failed builder's log,
    read by the server's own ``log`` request."""
    import io

    from tryssh.client.display import LineFilter
    from tryssh.core.request import parse_request_words
    from tryssh.server.results import stream
    from tryssh.server.tryserver import Options, RequestContext

    for name, info in (record.get("builders") or {}).items():
        if (info or {}).get("result") not in ("failure", "error"):
            continue
        out = io.BytesIO()  # at most *lines* lines
        ctx = RequestContext(Options(config=config), env={})
        try:
            words = ["log", str(record.get("job")), name, "--tail", str(lines)]
            stream(ctx, parse_request_words(words), out)
        except TrysshError:
            continue
        finally:
            ctx.close()
        echo(f"--- {name}: last {lines} lines of the log ---")
        text = LineFilter()
        for line in text.feed(out.getvalue()) + text.flush():
            echo(line)


def _stopped_waiting(job: str) -> TrysshError:
    return TrysshError(
        f"stopped waiting; job {job} goes on on the server. "
        f"Pick the wait up again with: tryssh status --wait {job}",
        130,
    )


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _merge(ctx: click.Context, values: dict[str, Any], cwd: str) -> dict[str, Any]:
    """Fill what the command line did not give from the config files (CLI wins)."""
    from tryssh.client.clientconfig import resolve_client_options

    cli = {k: v for k, v in values.items() if _given(ctx, k)}
    if "properties" in cli:
        cli["properties"] = parse_properties(cli["properties"])
    resolved = resolve_client_options(cli, cwd=cwd)
    result = dict(values)
    if "properties" in result:
        result["properties"] = {}
    for key, value in resolved.values.items():
        if key in result:
            result[key] = value
    if not result.get("quiet"):
        for warning in resolved.warnings:
            echo_stderr(f"tryssh: {warning}")
    return result


def _destination(v: dict[str, Any], quiet: bool) -> Destination:
    ssh = None
    if v["connect"] in ("ssh", "scp"):
        if not v.get("host"):
            raise UsageError(
                f"-c {v['connect']} needs --host (or try_host in the options file, "
                "host in .tryssh.toml)"
            )
        ssh = SshOptions(
            host=v["host"],
            port=v.get("port"),
            user=v.get("username"),
            identity=v.get("identity"),
            known_hosts=v.get("known_hosts"),
            accept_new_host_key=bool(v.get("accept_new_host_key")),
            timeout=float(v.get("timeout") or DEFAULT_TIMEOUT),
            quiet=quiet,
        )
    return Destination(
        connect=v["connect"],
        ssh=ssh,
        jobdir=v.get("jobdir"),
        tryserver_cmd=v.get("tryserver_cmd") or DEFAULT_TRYSERVER_CMD,
        progress=not quiet,
        config=v.get("master_config"),
    )


@click.command("try", help=TRY_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-b",
    "--builder",
    "builders",
    multiple=True,
    metavar="NAME",
    help="A builder to run (repeatable; default: the server's choice).",
)
@click.option("--branch", metavar="NAME", help="The branch name to send (default: upstream's).")
@click.option(
    "--baserev", metavar="REV", help="The base revision (default: merge-base with upstream)."
)
@click.option(
    "-p",
    "--patchlevel",
    type=click.IntRange(min=0),
    metavar="N",
    help="Patch level (-pN) for the master (default: the VCS's, git/hg 1, svn 0).",
)
@click.option("--who", metavar="NAME", help="Who asks (a forced-command server pins it).")
@click.option("-C", "--comment", metavar="TEXT", help="A comment for the build.")
@click.option(
    "--property", "properties", multiple=True, metavar="K=V", help="A build property (repeatable)."
)
@click.option("--repository", metavar="URL", help="The repository URL to send.")
@click.option("--project", metavar="NAME", help="The project name to send.")
@click.option("--vc", type=click.Choice(["git", "hg", "svn"]), help="Expect this VCS.")
@click.option(
    "--diff",
    metavar="FILE|-",
    help="Send this diff (- for stdin) instead of the working copy's change; needs --baserev.",
)
@click.option("--untracked", is_flag=True, help="Include untracked files (git).")
@click.option("--allow-empty", is_flag=True, help="Send even if the diff is empty.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the job and patch stats; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON receipt on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only print the job name (or errors).")
@click.option("--wait", is_flag=True, help="Wait for the builds; exit 0 only if all succeed.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=1),
    metavar="SECONDS",
    help="Stop waiting after this long (exit 75).",
)
@_wait_options
@_connection_options
@click.pass_context
def try_cmd(ctx: click.Context, **values: Any) -> None:
    cwd = os.getcwd()
    v = _merge(ctx, values, cwd)
    quiet = bool(v["quiet"])
    req = TryRequest(
        builders=list(v["builders"] or []),
        branch=v["branch"],
        baserev=v["baserev"],
        patchlevel=v["patchlevel"],
        who=v["who"],
        comment=v["comment"],
        properties={str(k): val for k, val in v["properties"].items()},
        repository=v["repository"],
        project=v["project"],
        vc=v["vc"],
        diff=v["diff"],
        untracked=bool(v["untracked"]),
        allow_empty=bool(v["allow_empty"]),
    )
    change = gather_change(req, cwd)
    job = build_job(change, req)
    from tryssh.core.jobfile import encode_job

    data = encode_job(job)
    if v["dry_run"]:
        stats = change.stats
        lines = summary_lines(job, change, stats)
        if v["as_json"]:
            click.echo(json.dumps(dry_run_dict(job, change, stats, data)))
        else:
            click.echo("\n".join(lines))
            version = data[2:3].decode()
            click.echo(f"job:        {len(data)} bytes (version {version}); not sent (--dry-run)")
        ctx.exit(EX_OK)
    dest = _destination(v, quiet)
    if not quiet:  # the stats cost a pass over the patch: only when someone reads them
        for line in summary_lines(job, change, change.stats):
            echo_stderr(line)
    conn = None if dest.connect == "local" else open_connection(dest)
    try:
        receipt = deliver(data, dest, conn)
        if not quiet and not v["as_json"]:
            where = receipt.host or dest.jobdir
            if receipt.job:
                echo_stderr(f"delivered to {where} ({receipt.size} bytes sent) as:")
            else:
                echo_stderr(
                    f"delivered to {where} ({receipt.size} bytes sent) "
                    "(the server did not name the job)"
                )
        record = None
        if v["wait"]:
            if not receipt.job:
                raise TempFail(
                    "cannot --wait: the server did not name the job (Buildbot's tryserver?)"
                )
            if not v["as_json"]:
                click.echo(receipt.job)
            record, live = wait_for_job(dest, conn, receipt.job, v, quiet)
            if live is not None and live is not conn:
                live.close()  # a reconnection made during the wait
        out = receipt.as_dict()
        out["builders"] = job.builder_names or []
        if record is not None:
            out["state"] = record.get("state")
            out["result"] = record
        if v["as_json"]:
            click.echo(json.dumps(out))
        elif not v["wait"] and receipt.job:
            click.echo(receipt.job)
        if record is not None:
            ctx.exit(exit_code_for(record))
    finally:
        if conn is not None:
            conn.close()


def status_fetcher(dest: Destination, conn: Connection | None, job: str) -> Callable[[], dict]:
    """How to ask for *job*'s record: over the connection, or on the master (``--config``)."""
    if dest.connect == "local" or conn is None:
        if not dest.config:
            raise UsageError("waiting for a local job needs --config (the master's config file)")
        from tryssh.server.queries import local_query

        config = dest.config
        return lambda: local_query(config, "status", job)
    return lambda: remote_query(conn, dest, "status", job)


def _query(ctx: click.Context, values: dict[str, Any], what: str, job: str | None) -> Any:
    v = _merge(ctx, values, os.getcwd())
    if v.get("master_config"):
        from tryssh.server.queries import local_query

        return local_query(v["master_config"], what, job)
    if v["connect"] == "local":
        raise UsageError(f"{what} on this machine needs --config (the master's config file)")
    dest = _destination(v, quiet=True)
    with open_connection(dest) as conn:
        words = ("status", job) if what == "status" else ("builders",)
        return remote_query(conn, dest, *words)


@click.command("status", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON record.")
@click.option("--wait", is_flag=True, help="Wait until the job is final (after Ctrl-C, or "
              "for a job sent without --wait); exit as tryssh try --wait does.")
@click.option("--wait-timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Stop waiting after this long (exit 75).")
@_wait_options
@_connection_options
@click.pass_context
def status_cmd(ctx: click.Context, job: str, as_json: bool, **values: Any) -> None:
    """Show how a job is doing (asks `tryserver status JOB` on the server).

    \b
    Examples:
      tryssh status --host ci 1717171717.M123P45Q1R0a1b2c3d.ci
      tryssh status --host ci --wait JOB          wait for it (again), live
      tryssh status --config /etc/tryssh/config.toml JOB     on the master
    Exit codes: 0 succeeded (or, without --wait, still going), 1 a build failed,
    64 usage, 66 no such job (or not yours), 75 error, interrupted, cancelled or
    connection trouble, 77 rejected, 78 config error, 130 Ctrl-C during --wait.
    """
    if values.get("wait"):
        v = _merge(ctx, values, os.getcwd())
        quiet = bool(v.get("quiet"))
        if v.get("master_config"):
            v["connect"] = "local"
        dest = _destination(v, quiet=True)
        conn = None if dest.connect == "local" else open_connection(dest)
        live = None
        try:
            record, live = wait_for_job(dest, conn, job, v, quiet)
        finally:
            for opened in {id(c): c for c in (conn, live) if c is not None}.values():
                opened.close()
        if as_json:
            click.echo(json.dumps(record))
        ctx.exit(exit_code_for(record))
    record = _query(ctx, values, "status", job)
    if not isinstance(record, dict):
        raise TempFail("the server's status answer is not a JSON object")
    if as_json:
        click.echo(json.dumps(record))
    else:
        from tryssh.client.display import safe_text

        click.echo("\n".join(safe_text(line) for line in status_lines(record, show_log=False)))
    state = str(record.get("state"))
    ctx.exit(EX_OK if state in ACTIVE_STATES else exit_code_for(record))


@click.command("builders", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_connection_options
@click.pass_context
def builders_cmd(ctx: click.Context, as_json: bool, **values: Any) -> None:
    """List the builders you may use (asks `tryserver builders` on the server).

    \b
    Examples:
      tryssh builders --host ci
      tryssh builders --config /etc/tryssh/config.toml      on the master
    """
    answer = _query(ctx, values, "builders", None)
    if as_json:
        click.echo(json.dumps(answer))
        return
    names = answer.get("builders", []) if isinstance(answer, dict) else answer
    described = answer.get("descriptions") if isinstance(answer, dict) else None
    described = described if isinstance(described, dict) else {}
    shown = [name if isinstance(name, str) else json.dumps(name) for name in names or []]
    width = max((len(n) for n in shown), default=0)
    for name in shown:
        text = described.get(name)
        # The server's words: one line each, control characters cannot reach the terminal.
        text = " ".join(text.split()) if isinstance(text, str) else ""
        text = "".join(c if c.isprintable() else "?" for c in text)
        click.echo(f"{name:<{width}}  {text}" if text else name)
