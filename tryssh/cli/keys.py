"""``tryssh keys``: manage the forced-command keys in the try account's authorized_keys."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys

import click

from tryssh.core.sshkeys import MAX_KEY_TEXT
from tryssh.errors import EX_NOINPUT, ConfigError, TrysshError
from tryssh.server import authorized_keys as keymod

DEFAULT_JOBDIR = "/srv/tryssh/jobdir"


def default_authorized_keys() -> str:
    """``~/.ssh/authorized_keys`` of the invoking (effective) user, from the password database:
    $HOME may still be the caller's under sudo."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        home = os.path.expanduser("~")
    return os.path.join(home, ".ssh", "authorized_keys")


def default_tryserver() -> str | None:
    """The ``tryserver`` script installed next to this Python, else the one on $PATH."""
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "tryserver")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("tryserver")
    return os.path.abspath(found) if found else None


def config_jobdir(config: str) -> str:
    """The jobdir that the config at *config* names: tryserver would deliver there, but the
    key line's ``--jobdir`` wins over it, so the line must not carry another default."""
    from tryssh.server.config import load_config

    try:
        return load_config(config).jobdir
    except ConfigError as err:
        hint = "the jobdir is taken from it; or give --jobdir"
        raise ConfigError(f"{err.message} ({hint})") from None


_AK_OPTION = click.option(
    "--authorized-keys",
    "authorized_keys",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    default=None,
    help="The authorized_keys file to manage "
    "[default: ~/.ssh/authorized_keys of the user running the command].",
)


@click.group("keys", context_settings={"help_option_names": ["-h", "--help"]})
def keys() -> None:
    """Manage developers' SSH keys in the try account's authorized_keys.

    tryssh keeps its keys in a block between '# tryssh start' and '# tryssh end'
    (as gitolite does) and never touches the other lines. Each key gets one line
    that pins the developer's name with a forced command:

    \b
      restrict,command="/usr/local/bin/tryserver --jobdir /srv/tryssh/jobdir
      --user alice" ssh-ed25519 AAAA... alice@laptop      (all on one line)

    Run these commands as the try account (or give --authorized-keys).

    \b
    Examples:
      tryssh keys add alice alice.pub
      tryssh keys add bob - --from 203.0.113.0/24 --expiry 20271231Z < bob.pub
      tryssh keys list
      tryssh keys remove alice SHA256:4/rPQg0ZaRZ1lbEtUV8jpV0WQRWMnsq3ZxhV46KOdKI
    """


@keys.command("add")
@click.argument("user")
@click.argument("keyfile", metavar="KEYFILE|-")
@_AK_OPTION
@click.option(
    "--jobdir",
    metavar="DIR",
    default=None,
    help="The jobdir that tryserver delivers into (absolute path) "
    f"[default: the jobdir of --config, else {DEFAULT_JOBDIR}].",
)
@click.option(
    "--tryserver",
    "tryserver",
    metavar="PATH",
    default=None,
    help="Absolute path of the tryserver program "
    "[default: the tryserver installed next to this tryssh, else the one on $PATH].",
)
@click.option(
    "--config",
    "config",
    metavar="FILE",
    default=None,
    help="Config file passed to tryserver with --config (absolute path).",
)
@click.option(
    "--from",
    "from_",
    metavar="PATTERNS",
    default=None,
    help="Comma-separated sshd from= patterns: the key only works from these addresses "
    "or host names (e.g. '203.0.113.0/24,*.example.com').",
)
@click.option(
    "--expiry",
    metavar="WHEN",
    default=None,
    help="Key expiry for sshd, YYYYMMDD[HHMM[SS]] (server local time) or with a final Z "
    "for UTC (OpenSSH 7.7 or later).",
)
def add_cmd(
    user: str,
    keyfile: str,
    authorized_keys: str | None,
    jobdir: str | None,
    tryserver: str | None,
    config: str | None,
    from_: str | None,
    expiry: str | None,
) -> None:
    """Give USER the public key in KEYFILE ('-' reads it from stdin).

    KEYFILE holds exactly one OpenSSH public key, as in a .pub file: no options,
    one line. A key already in the file (for any user, or outside the tryssh block)
    is refused, because sshd would use only its first line.

    \b
    Examples:
      tryssh keys add alice /tmp/alice.pub
      tryssh keys add bob - < bob.pub
      tryssh keys add carol carol.pub --from 198.51.100.7 --expiry 20270101Z \\
          --config /etc/tryssh/config.toml
    """
    path = authorized_keys or default_authorized_keys()
    if tryserver is None:
        tryserver = default_tryserver()
        if tryserver is None:
            raise keymod.BadKeyOption(
                "cannot find the tryserver program; give its absolute path with --tryserver"
            )
    if jobdir is None:
        # A relative --config is refused (exit 64) by add_key with the other paths.
        use_config = config is not None and os.path.isabs(config)
        jobdir = config_jobdir(config) if use_config else DEFAULT_JOBDIR
    if keyfile == "-":
        key_text = sys.stdin.read(MAX_KEY_TEXT + 1)
    else:
        try:
            with open(keyfile, encoding="ascii", errors="surrogateescape") as fh:
                key_text = fh.read(MAX_KEY_TEXT + 1)
        except OSError as e:
            raise TrysshError(f"cannot read {keyfile}: {e.strerror or e}", EX_NOINPUT) from None
    entry = keymod.add_key(
        path,
        user,
        key_text,
        tryserver=tryserver,
        jobdir=jobdir,
        config=config,
        from_=from_,
        expiry=expiry,
    )
    comment = f" {entry.comment}" if entry.comment else ""
    click.echo(f"added {entry.type} {entry.fingerprint}{comment} for {user} to {path}")
    if not os.access(tryserver, os.X_OK):
        # The line may be meant for another layout, so only warn: sshd would fail the login.
        click.echo(f"tryssh: warning: {tryserver} is not an executable file here", err=True)


@keys.command("list")
@_AK_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_cmd(authorized_keys: str | None, as_json: bool) -> None:
    """List the keys in the tryssh block: user, fingerprint, type, comment, options.

    \b
    Examples:
      tryssh keys list
      tryssh keys list --json --authorized-keys /home/try/.ssh/authorized_keys
    """
    path = authorized_keys or default_authorized_keys()
    entries = keymod.list_keys(path)
    if as_json:
        click.echo(json.dumps([entry._asdict() for entry in entries], indent=2))
        return
    if not entries:
        click.echo(f"no tryssh keys in {path}", err=True)
        return
    rows = [["USER", "FINGERPRINT", "TYPE", "COMMENT", "OPTIONS"]]
    for entry in entries:
        extra = [
            opt
            for opt in keymod.split_options(entry.options)
            if opt.split("=", 1)[0].lower() not in ("restrict", "command")
        ]
        rows.append([entry.user or "-", entry.fingerprint, entry.type, entry.comment or "-",
                     " ".join(extra)])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + row[4:]
        click.echo("  ".join(cells).rstrip())


@keys.command("remove")
@click.argument("user")
@click.argument("fingerprint", required=False)
@_AK_OPTION
def remove_cmd(user: str, fingerprint: str | None, authorized_keys: str | None) -> None:
    """Remove USER's keys, or only the key with FINGERPRINT (as 'tryssh keys list' shows it).

    Exits 66 when no key matched.

    \b
    Examples:
      tryssh keys remove alice
      tryssh keys remove alice SHA256:4/rPQg0ZaRZ1lbEtUV8jpV0WQRWMnsq3ZxhV46KOdKI
    """
    path = authorized_keys or default_authorized_keys()
    count = keymod.remove_keys(path, user, fingerprint)
    if count == 0:
        what = f"key {fingerprint} of {user}" if fingerprint else f"key of {user}"
        raise keymod.KeyNotFound(f"no {what} in the tryssh block of {path}")
    click.echo(f"removed {count} key{'s' if count != 1 else ''} of {user} from {path}")
