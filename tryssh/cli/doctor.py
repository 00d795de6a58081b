"""``tryssh doctor``: check a try server's whole setup and say what is wrong."""

from __future__ import annotations

import json
import os
import pwd

import click

from tryssh.server.doctor import diagnose


@click.command("doctor")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The tryssh TOML config (jobdir, builders, users, serve).",
)
@click.option(
    "--authorized-keys",
    type=click.Path(dir_okay=False),
    help="The try account's authorized_keys (default: yours, if it exists).",
)
@click.option("--ssh-user", help="Check sshd's settings for this account with 'sshd -T' "
              "(needs root; default: the owner of --authorized-keys).")  # fmt: skip
@click.option("--sshd-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="Read sshd's settings from FILE (a second sshd) instead of the system's.")
@click.option("--consumer-user", metavar="NAME", help="The consumer's account, whose access "
              "to the jobdir and the builders' files is checked (default: the owner of "
              "state_dir).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor_cmd(
    config_path: str | None,
    authorized_keys: str | None,
    ssh_user: str | None,
    sshd_config: str | None,
    consumer_user: str | None,
    as_json: bool,
) -> None:
    """Check the config, the jobdir, the authorized_keys lines and sshd's settings.

    Files are checked as the account that uses them (as root, doctor switches to it with
    setpriv or runuser): each key's forced command is run as 'tryserver --version' by the
    key file's owner, which must also read the config and write the jobdir; the
    consumer's account must claim jobs and read the builders' files. The consumer
    touches state_dir/consumer.heartbeat; doctor reports its age.

    Each finding is 'ok', 'warn' (works, but weaker than it should be) or 'problem'
    (will fail, or is unsafe). Nothing is changed. Exit 0 when there is no problem,
    1 otherwise.

    \b
    Examples:
      tryssh doctor --config /etc/tryssh/config.toml
      tryssh doctor --config /etc/tryssh/config.toml \\
          --authorized-keys ~try/.ssh/authorized_keys --ssh-user try
      tryssh doctor --ssh-user try --sshd-config /etc/ssh/sshd_config_try

    Exit codes: 0 no problem found, 1 a problem found, 64 usage.
    """
    if authorized_keys is None:
        default = os.path.expanduser("~/.ssh/authorized_keys")
        authorized_keys = default if os.path.exists(default) else None
    if ssh_user is None and authorized_keys and os.path.exists(authorized_keys):
        try:
            ssh_user = pwd.getpwuid(os.stat(authorized_keys).st_uid).pw_name
        except KeyError:
            ssh_user = None
    if not (config_path or authorized_keys or ssh_user):
        raise click.UsageError("nothing to check: give --config, --authorized-keys or --ssh-user")
    findings = diagnose(config_path, authorized_keys, ssh_user, sshd_config, consumer_user)
    if as_json:
        click.echo(json.dumps([f._asdict() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(f"{f.level:<8}{f.area:<9}{f.message}")
    problems = sum(f.level == "problem" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    if not as_json:
        click.echo(f"{problems} problem(s), {warnings} warning(s)", err=True)
    click.get_current_context().exit(1 if problems else 0)
