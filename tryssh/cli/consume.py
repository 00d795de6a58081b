"""``tryssh consume`` and ``tryssh gc``: the master side's command line."""

from __future__ import annotations

import click

from tryssh.errors import UsageError


@click.command("consume")
@click.option(
    "--config",
    "config_path",
    required=True,
    metavar="FILE",
    help="The tryssh TOML config (jobdir, builders, users).",
)
@click.option("--once", is_flag=True, help="Process the jobs waiting now, then exit.")
@click.option("--poll", is_flag=True, help="Poll new/ instead of using inotify.")
@click.option("-v", "--verbose", is_flag=True, help="Also log debug events.")
def consume_cmd(config_path: str, once: bool, poll: bool, verbose: bool) -> None:
    """Claim jobs from the jobdir, check the policy and run the builders.

    Logs one line per event on stderr (journald-friendly under systemd). SIGTERM stops
    claiming, lets the running builds finish and exits 0. SIGHUP (systemctl reload) reads
    the config again: jobs claimed afterwards use it, running jobs finish under theirs, and
    a config that fails to check is refused (reload-failed line) and the old one stays.
    A job the policy refuses is kept in cur/ with its reason in its record; nothing is
    dropped silently. Builders run here (command), call out (webhook), or hand the job on
    once per receiver: forward (result unknown, job "delivered") or buildbot (Buildbot
    builds it; its results are read back from the master's REST API).

    \b
    Examples:
      tryssh consume --config /etc/tryssh/config.toml          inotify on new/, runs forever
      tryssh consume --config /etc/tryssh/config.toml --once   drain the queue (cron, tests)
      tryssh status JOB --config /etc/tryssh/config.toml       read a job's record here

    With --once, jobs that cannot be claimed (cur/ not writable) end the run with the
    error rather than a wait for ever.

    Exit codes: 0 stopped cleanly, 64 usage, 73 cannot create the jobdir's records or
    logs (or the jobdir is not set up), 75 temporary failure, 77 permission denied (the
    message names the path and the operation), 78 config error (file, key and problem
    named).
    """
    from tryssh.core.logfmt import EventLog
    from tryssh.server.config import load_config
    from tryssh.server.consumer import Consumer

    config = load_config(config_path)
    consumer = Consumer(config, log=EventLog(verbose=verbose), use_inotify=not poll)
    try:
        consumer.run(once=once, handle_signals=True)
    finally:
        consumer.close()


@click.command("gc")
@click.option(
    "--config", "config_path", required=True, metavar="FILE", help="The tryssh TOML config."
)
@click.option(
    "--older-than",
    "days",
    type=float,
    default=None,
    metavar="DAYS",
    help="Remove finished jobs older than DAYS (default: the config's keep_days).",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
def gc_cmd(config_path: str, days: float | None, dry_run: bool) -> None:
    """Remove old finished jobs, their records and logs, and stale tmp/ files.

    A finished job goes once its finished time is older than DAYS: its job file (cur/ or
    withdrawn/), its logs, its record and its cancel request. A queued drop-in job a
    cancel took back into withdrawn/ goes once the cancel (the file's ctime) is older than
    DAYS, with its cancel request; on a drop-in site (no consumer ever ran, every builder
    delivers into this jobdir) so does a job Buildbot claimed into cur/, once the claim
    is. A cancel request whose job is gone (no record, nothing in new/, cur/ or
    withdrawn/) goes whatever its age. Jobs still queued or running, and the cancel
    requests they may still need, are never removed. tmp/ files and cancel/'s
    .*.tmp files older than 36 hours (the maildir rule) go too. With keep_days in the
    config, the consumer does this hourly.

    \b
    Examples:
      tryssh gc --config /etc/tryssh/config.toml --older-than 30 --dry-run
      tryssh gc --config /etc/tryssh/config.toml --older-than 30

    Exit codes: 0 ok, 64 usage, 73 cannot remove (a file system error), 77 permission
    denied, 78 config error.
    """
    from tryssh.server.config import load_config
    from tryssh.server.gc import collect

    config = load_config(config_path)
    days = config.keep_days if days is None else days
    if days is None:
        raise UsageError("say how old: --older-than DAYS, or keep_days in the config")
    if days < 0:
        raise UsageError("--older-than must not be negative")
    for path in collect(config, days, dry_run=dry_run):
        click.echo(("would remove " if dry_run else "removed ") + path)
