"""``tryssh try``, ``tryssh status`` and ``tryssh builders``: the developer's commands."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from tryssh.client.job import (
    TryRequest,
    build_job,
    dry_run_dict,
    gather_change,
    parse_properties,
    summary_lines,
)
from tryssh.client.sshoptions import (
    DEFAULT_TIMEOUT,
    OPTION_NAMES,
    SshOptions,
    enable_debug_log,
    parse_ssh_option,
)
from tryssh.client.transport import (
    DEFAULT_TRYSERVER_CMD,
    Destination,
    EarlyConnection,
    MaybeDelivered,
    deliver,
    open_connection,
)
from tryssh.client.wait import (
    WaitTimeout,
    echo_stderr,
    echo_stderr_painted,
    exit_code_for,
    remote_query,
    wait_for,
)
from tryssh.core.jobview import builder_line, head_line, status_lines
from tryssh.core.records import ACTIVE_STATES
from tryssh.errors import EX_OK, TempFail, TrysshError, UsageError

# paramiko is imported only when a connection is made (tryssh.client.sshclient): building
# a job, --dry-run and local queries (--config) never pay for it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.sshclient import Connection


CONNECT_CHOICES = ("ssh", "scp", "local", "pb")
PB_EXPLAINED = (
    "--connect=pb is Buildbot's PB door (buildbot try --connect=pb -m HOST:PORT); tryssh try "
    "delivers over SSH: use -c ssh --host HOST (or -c scp / -c local)"
)

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
  git diff main | tryssh try --diff - --baserev $(git rev-parse main) -p 1 --host ci
  tryssh try -c scp --host ci --jobdir /srv/tryssh/jobdir    sftp account
  tryssh try -c local --jobdir /srv/tryssh/jobdir            on the master itself
  tryssh try --host ci --json                  machine-readable receipt

\b
Settings come from the command line, then ./.tryssh.toml (walking up), then
~/.config/tryssh/config.toml, then Buildbot's .buildbot/options (read, never executed).
Host keys are checked against ~/.ssh/known_hosts; an unknown key is refused unless
--accept-new-host-key.


--wait asks the server to tell each change as it happens (one SSH session for the whole
wait; a lost connection is resumed). When a builder fails it shows the last lines of its
log (--tail-lines) and why; --follow streams the logs live instead. Ctrl-C stops only the
waiting: the job goes on (tryssh status --wait JOB picks it up again).

Exit codes: 0 delivered (with --wait: every build succeeded), 1 a build failed (--wait),
64 usage, 65 bad or empty job, 66 no such file (--diff) or job, 69 (--wait) the server
cannot report the results (handed on by a forward builder, a Buildbot master reads the
jobdir and no API is configured, or no tryssh tryserver there to ask), 73 cannot create
the job (jobdir missing or not writable), 75 connection or server trouble (with --wait:
an error, an interrupted or cancelled job, or --wait-timeout), 77 refused (host key,
login, policy), 78 config error, 130 interrupted (Ctrl-C).
"""


def _connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The SSH/transport options shared by try, status and builders."""
    options = [
        click.option("-c", "--connect", type=click.Choice(CONNECT_CHOICES), default="ssh",
                     show_default=True, help="How to reach the server: ssh (exec tryserver), "
                     "scp (sftp into the jobdir) or local (a jobdir on this machine); pb is "
                     "Buildbot's and is explained, not used."),
        click.option("--host", metavar="HOST",
                     help="The try server: an ~/.ssh/config alias, [user@]host[:port] or "
                     "ssh://[user@]host[:port]."),
        click.option("--port", type=click.IntRange(1, 65535),
                     help="SSH port (default: ssh config, 22)."),
        click.option("-u", "--username", metavar="USER",
                     help="Login name (default: ssh config, you)."),
        click.option("-i", "--identity", metavar="FILE", type=click.Path(dir_okay=False),
                     help="Use only this private key (the agent may sign for it)."),
        click.option("--jobdir", metavar="DIR", help="The jobdir on the server (scp, local; "
                     "passed to tryserver, which a forced command ignores)."),
        click.option("--tryserver-cmd", "--buildbotbin", "tryserver_cmd", metavar="CMD",
                     default=DEFAULT_TRYSERVER_CMD, show_default=True,
                     help="The remote program; 'tryserver' is appended unless it is named so."),
        click.option("--known-hosts", metavar="FILE", type=click.Path(dir_okay=False),
                     help="An extra known_hosts file, checked first (new keys go there)."),
        click.option("--accept-new-host-key", is_flag=True,
                     help="Record an unknown host key (never a changed one), like "
                     "StrictHostKeyChecking=accept-new."),
        click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT,
                     show_default=True, help="Seconds for connect, login and idle I/O."),
        click.option("--config", "master_config", metavar="FILE",
                     type=click.Path(dir_okay=False),
                     help="On the master: read status/builders from this tryssh config."),
        click.option("-F", "ssh_config", metavar="FILE", type=click.Path(dir_okay=False),
                     help="The ssh config file to read (default ~/.ssh/config), as ssh -F."),
        click.option("-o", "ssh_options", multiple=True, metavar="OPTION=VALUE",
                     help="An ssh_config option, as ssh -o (repeatable; the ones tryssh "
                     "honours: " + ", ".join(OPTION_NAMES) + ")."),
        click.option("-J", "proxy_jump", metavar="[USER@]HOST[:PORT][,...]",
                     help="Connect through these jump hosts, as ssh -J (ProxyJump)."),
        click.option("--ssh", "ssh_command", metavar="COMMAND",
                     help="Buildbot's --ssh: its -p, -i, -l, -o, -F and -J are used (the "
                     "command itself is never run)."),
        click.option("-v", "--verbose", count=True,
                     help="Show paramiko's log on stderr (-vv: debug), like ssh -v."),
        click.option("-m", "--master", metavar="HOST:PORT",
                     help="Buildbot's PB master (for --connect=pb): accepted and ignored."),
        click.option("--passwd", metavar="PASSWORD",
                     help="Buildbot's PB password (for --connect=pb): accepted and ignored."),
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
    (``-c local``/``--config``) the records are read directly, once a second. *quiet*
    shows nothing while waiting, and at the end only a job that did not succeed, with
    its builders that did not (as ``buildbot try --wait --quiet`` still prints results).
    """
    try:
        record, live = _wait_for_job(dest, conn, job, v, quiet)
    except KeyboardInterrupt:
        raise _stopped_waiting(job) from None
    except WaitTimeout as err:
        raise TempFail(f"{err.message}. {_resume_hint(job)}") from None
    if quiet and record.get("state") != "success":
        echo_stderr(head_line(record))
        for name, info in (record.get("builders") or {}).items():
            if (info or {}).get("result") != "success":
                echo_stderr(builder_line(name, info or {}, show_log=False))
    return record, live


def _wait_for_job(
    dest: Destination, conn: Connection | None, job: str, v: dict[str, Any], quiet: bool
) -> tuple[dict[str, Any], Connection | None]:
    echo = None if quiet else echo_stderr
    from tryssh.client.results import DEFAULT_TAIL_LINES, LiveWait

    tail = v.get("tail_lines")
    lines = DEFAULT_TAIL_LINES if tail is None else int(tail)
    if dest.connect == "local" or conn is None:
        record = wait_for(status_fetcher(dest, None, job), v.get("wait_timeout"), echo)
        if echo is not None and dest.config and lines > 0:
            _local_tails(dest.config, record, lines, echo)
        return record, None
    from tryssh.client.display import use_color

    waiter = LiveWait(
        dest, lambda: open_connection(dest), job, None if quiet else echo_stderr_painted,
        conn=conn,
        follow=bool(v.get("follow")), tail_lines=lines,
        color=use_color(sys.stderr, bool(v.get("no_color"))),
        timeout=v.get("wait_timeout"),
    )  # fmt: skip
    try:
        return waiter.run(), waiter.conn
    except (KeyboardInterrupt, WaitTimeout):
        if waiter.conn is not None and waiter.conn is not conn:
            waiter.conn.close()  # one the wait opened itself (a reconnect)
        raise


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
    return TrysshError(f"stopped waiting; job {job} goes on on the server. {_resume_hint(job)}",
                       130)  # fmt: skip


# The options that say where the job is: a resumed wait needs the ones the command line gave
# (those that came from a config file come from it again).
_WHERE = ("connect", "host", "port", "username", "identity", "jobdir", "tryserver_cmd",
          "known_hosts", "master_config", "ssh_config", "ssh_options", "proxy_jump",
          "ssh_command")  # fmt: skip


def _resume_hint(job: str) -> str:
    """``Pick the wait up again with: tryssh status --host ci ... --wait JOB``: a command
    that works as printed, with the connection options this command line gave."""
    import shlex

    words = ["tryssh", "status"]
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx is not None else ():
        if param.name not in _WHERE or not _given(ctx, param.name):  # type: ignore[arg-type]
            continue
        flag = max(param.opts, key=len)  # --username rather than -u: easier to read
        value = ctx.params.get(param.name)  # type: ignore[union-attr,arg-type]
        for one in value if isinstance(value, (list, tuple)) else (value,):
            words += [flag, str(one)]
    words += ["--wait", job]
    return "Pick the wait up again with: " + shlex.join(words)


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _from_ssh_command(cli: dict[str, Any]) -> None:
    """Buildbot's ``--ssh 'ssh -p PORT -i KEY -l USER'``: take what tryssh can use from it."""
    from tryssh.client.buildbot_options import parse_ssh_command
    from tryssh.errors import ConfigError

    try:
        cmd = parse_ssh_command(cli.pop("ssh_command"))
    except ConfigError as err:
        raise UsageError(f"--ssh: {err.message}") from None
    for key, value in (("port", cmd.port), ("username", cmd.login), ("identity", cmd.identity),
                       ("ssh_config", cmd.config), ("proxy_jump", cmd.jump)):
        if value is not None and key not in cli:
            cli[key] = value
    if cmd.options:
        cli["ssh_options"] = [*cli.get("ssh_options", ()), *cmd.options]
    if cmd.ignored:
        echo_stderr(f"tryssh: --ssh: {' '.join(cmd.ignored)} not used (tryssh speaks SSH "
                    "itself; it takes -p, -i, -l, -o, -F and -J)")


def _merge(ctx: click.Context, values: dict[str, Any], cwd: str) -> dict[str, Any]:
    """Fill what the command line did not give from the config files (CLI wins)."""
    from tryssh.client.clientconfig import COMMAND_LINE, resolve_client_options

    enable_debug_log(int(values.get("verbose") or 0))
    cli = {k: v for k, v in values.items() if _given(ctx, k)}
    if cli.get("ssh_command"):
        _from_ssh_command(cli)
    if "properties" in cli or "properties_list" in cli:
        props = parse_properties(cli.pop("properties_list", ()), split_commas=True)
        props.update(parse_properties(cli.get("properties", ())))
        cli["properties"] = props
    for name, flag in (("master", "-m/--master"), ("passwd", "--passwd")):
        if cli.pop(name, None) is not None:
            echo_stderr(f"tryssh: {flag} is for Buildbot's PB door (--connect=pb); tryssh "
                        "delivers over SSH to --host and ignores it")
    if cli.pop("topfile", None) is not None:
        echo_stderr("tryssh: --topfile is not needed: tryssh finds the top of the working copy "
                    "itself (the nearest .git, .hg or .svn; --topdir names another); ignored")
    if cli.get("connect") == "pb":
        raise UsageError(PB_EXPLAINED)
    resolved = resolve_client_options(cli, cwd=cwd)
    if resolved.get("connect") == "pb":
        # A Buildbot user's options file: say so, and go on with ssh.
        echo_stderr(f"tryssh: connect = 'pb' in {resolved.sources['connect']} ignored: "
                    f"{PB_EXPLAINED}")
        resolved.values["connect"] = "ssh"
    result = dict(values)
    if "properties" in result:
        result["properties"] = {}
    for key, value in resolved.values.items():
        if key in result:
            result[key] = value
    # Warnings go to stderr whatever --quiet (or try_quiet) says: quiet is about progress.
    for warning in resolved.warnings:
        echo_stderr(f"tryssh: {warning}")
    source = resolved.sources.get("host")
    if source and source != COMMAND_LINE and result.get("connect") in ("ssh", "scp") and not (
        result.get("master_config")  # on the master (--config): no host is used
    ):
        # A file chose the server: say which, so a planted file cannot redirect silently.
        echo_stderr(f"tryssh: host {resolved.values['host']} set by {source}")
    return result


def _destination(v: dict[str, Any], quiet: bool) -> Destination:
    ssh = None
    if v["connect"] in ("ssh", "scp"):
        if not v.get("host"):
            raise UsageError(
                f"-c {v['connect']} needs --host (or try_host in the options file, "
                "host in .tryssh.toml)"
            )
        options: dict[str, str] = {}
        for text in v.get("ssh_options") or ():
            key, value = parse_ssh_option(text)
            options.setdefault(key, value)  # the first one wins, as with ssh
        ssh = SshOptions(
            host=v["host"], port=v.get("port"), user=v.get("username"),
            identity=v.get("identity"), known_hosts=v.get("known_hosts"),
            accept_new_host_key=bool(v.get("accept_new_host_key")),
            timeout=float(v.get("timeout") or DEFAULT_TIMEOUT), quiet=quiet,
            ssh_config=v.get("ssh_config"), options=options, proxy_jump=v.get("proxy_jump"),
        )
    return Destination(
        connect=v["connect"], ssh=ssh, jobdir=v.get("jobdir"),
        tryserver_cmd=v.get("tryserver_cmd") or DEFAULT_TRYSERVER_CMD,
        progress=not quiet, config=v.get("master_config"),
    )


@click.command("try", help=TRY_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-b", "--builder", "builders", multiple=True, metavar="NAME",
              help="A builder to run (repeatable; default: the server's choice).")
@click.option("--branch", metavar="NAME", help="The branch name to send (default: upstream's).")
@click.option("--baserev", metavar="REV",
              help="The base revision (default: merge-base with upstream).")
@click.option("-p", "--patchlevel", type=click.IntRange(min=0), metavar="N",
              help="Patch level (-pN) for the master (default: the VCS's, git/hg 1, svn 0).")
@click.option("-w", "--who", metavar="NAME",
              help="Who asks (a forced-command server pins it).")
@click.option("-C", "--comment", metavar="TEXT", help="A comment for the build.")
@click.option("--property", "properties", multiple=True, metavar="K=V",
              help="A build property (repeatable; the value may hold commas).")
@click.option("--properties", "properties_list", multiple=True, metavar="K=V[,K=V...]",
              help="Build properties, comma-separated (Buildbot's --properties).")
@click.option("--repository", metavar="URL", help="The repository URL to send.")
@click.option("--project", metavar="NAME", help="The project name to send.")
@click.option("--vc", type=click.Choice(["git", "hg", "svn"]), help="Expect this VCS.")
@click.option("--diff", metavar="FILE|-", help="Send this diff (- for stdin) instead of the "
              "working copy's change; needs --baserev.")
@click.option("--untracked", is_flag=True, help="Include untracked files (git).")
@click.option("--allow-empty", is_flag=True, help="Send even if the diff is empty.")
@click.option("-n", "--dry-run", "--dryrun", "dry_run", is_flag=True,
              help="Show the job and patch stats; send nothing.")
@click.option("--get-builder-names", is_flag=True,
              help="List the builders you may use and exit (as tryssh builders).")
@click.option("--topdir", metavar="DIR", type=click.Path(file_okay=False),
              help="The working copy to send (default: the current directory's).")
@click.option("--topfile", metavar="FILE", help="Buildbot's way to find the top of the "
              "working copy: accepted and ignored (tryssh finds it itself).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON receipt on stdout.")
# buildbot try --version (Twisted's) prints the version and exits: so does this.
@click.version_option(package_name="tryssh", message="%(prog)s, version %(version)s")
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
    if v["get_builder_names"]:
        _print_builders(_ask(v, "builders", None), as_json=bool(v["as_json"]))
        ctx.exit(EX_OK)
    if v["wait"] and v["connect"] == "local" and not v.get("master_config"):
        # Checked before sending: the job must not be delivered and then the wait refused.
        raise UsageError("--wait with -c local needs --config (the master's config file, "
                         "whose records it reads); nothing was sent")
    if v.get("topdir"):
        cwd = os.path.abspath(os.path.expanduser(str(v["topdir"])))
        if not os.path.isdir(cwd):
            raise UsageError(f"--topdir {v['topdir']}: no such directory")
    req = TryRequest(
        builders=list(v["builders"] or []), branch=v["branch"], baserev=v["baserev"],
        patchlevel=v["patchlevel"], who=v["who"], comment=v["comment"],
        properties={str(k): val for k, val in v["properties"].items()},
        repository=v["repository"], project=v["project"], vc=v["vc"], diff=v["diff"],
        untracked=bool(v["untracked"]), allow_empty=bool(v["allow_empty"]),
    )
    early = None
    if not v["dry_run"] and v["connect"] != "local":
        # Connect while the job is built: the two take about the longer of them, not the sum.
        early = EarlyConnection(_destination(v, quiet))
    try:
        _build_and_send(ctx, v, req, cwd, quiet, early)
    finally:
        if early is not None:
            early.close()  # the job could not be built or sent: close what opened


def _build_and_send(
    ctx: click.Context,
    v: dict[str, Any],
    req: TryRequest,
    cwd: str,
    quiet: bool,
    early: EarlyConnection | None,
) -> None:
    from tryssh.client import prefetch

    change = prefetch.take(req, cwd) or gather_change(req, cwd)
    job = build_job(change, req)
    from tryssh.core.jobfile import EncodedJob

    encoded = EncodedJob(job)  # its size is known; over ssh it is encoded as it is sent
    if v["dry_run"]:
        stats = change.stats
        lines = summary_lines(job, change, stats)
        if v["as_json"]:
            click.echo(json.dumps(dry_run_dict(job, change, stats, bytes(encoded))))
        else:
            click.echo("\n".join(lines))
            click.echo(f"job:        {encoded.size} bytes (version {encoded.version}); "
                       "not sent (--dry-run)")  # fmt: skip
        ctx.exit(EX_OK)
    dest = early.dest if early is not None else _destination(v, quiet)
    if not quiet:  # the stats cost a pass over the patch: only when someone reads them
        for line in summary_lines(job, change, change.stats):
            echo_stderr(line)
    else:  # --quiet hides the summary, never a warning
        for note in getattr(change, "notes", []):
            if note.startswith("WARNING"):
                echo_stderr(f"tryssh: {note}")
    conn = None if early is None else early.get()
    try:
        try:
            receipt = deliver(encoded, dest, conn)
        except MaybeDelivered as err:
            raise MaybeDelivered(f"{err.message} (look for jobid {job.jobid})") from None
        if not quiet and not v["as_json"]:
            where = receipt.host or dest.jobdir
            # The jobid is what Buildbot knows the job by (its external_idstring).
            if receipt.job:
                echo_stderr(f"delivered to {where} ({receipt.size} bytes sent, jobid {job.jobid})"
                            " as:")
            else:
                echo_stderr(
                    f"delivered to {where} ({receipt.size} bytes sent, jobid {job.jobid}) "
                    "(the server did not name the job)"
                )
        record = None
        if v["wait"]:
            if not receipt.job:
                raise TempFail("cannot --wait: the server did not name the job "
                               "(Buildbot's tryserver?)")
            if not v["as_json"]:
                click.echo(receipt.job)
            record, live = wait_for_job(dest, conn, receipt.job, v, quiet)
            if live is not None and live is not conn:
                live.close()  # a reconnection made during the wait
            if record.get("followable") is False:
                echo_stderr(f"tryssh: this server cannot report the results of {receipt.job}"
                            f" ({record.get('reason') or 'no record, no Buildbot API'}); "
                            "not waiting")  # fmt: skip
        if v["as_json"]:
            out = receipt.as_dict()  # its sha256 is worked out here, only for --json
            out["jobid"] = job.jobid  # Buildbot's external_idstring for this job
            out["builders"] = job.builder_names or []
            if record is not None:
                out["state"] = record.get("state")
                out["result"] = record
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
    return _ask(_merge(ctx, values, os.getcwd()), what, job)


def _ask(v: dict[str, Any], what: str, job: str | None) -> Any:
    """Ask the server (or the master's config, with --config) for a status or the builders."""
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
    Exit codes: 0 succeeded (or, without --wait, still going: queued, claimed, running),
    1 a build failed, 64 usage, 66 no such job (or not yours), 69 delivered elsewhere or
    not followable (results not visible here), 75 error, interrupted, cancelled or
    connection trouble, 77 rejected, or refused (host key, login), 78 config error,
    130 interrupted (Ctrl-C during --wait).
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
    # queued, claimed (drop-in: left new/), running: still going, as far as anyone knows.
    ctx.exit(EX_OK if state in (*ACTIVE_STATES, "claimed") else exit_code_for(record))


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

    Exit codes: 0 ok, 64 usage, 75 connection or server trouble, 77 refused (host key,
    login, policy), 78 config error, 130 interrupted.
    """
    _print_builders(_query(ctx, values, "builders", None), as_json)


def _print_builders(answer: Any, as_json: bool) -> None:
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
