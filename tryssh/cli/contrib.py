"""``tryssh contrib`` and ``tryssh jobdir-setup``: the sysadmin files shipped in the package.

The files of ``contrib/`` (systemd units, the sshd block, the example config, logrotate,
the build and jobdir scripts) are package data of the wheel, so that ``pip install
tryssh`` alone gives everything the README's guide uses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tryssh.errors import EX_NOINPUT, TrysshError

# name -> what it is, for the listing (files not named here are listed without a note)
DESCRIPTIONS = {
    "tryssh.example.toml": "an example config (/etc/tryssh/config.toml)",
    "sshd_config.tryssh": "the sshd Match block for the try account",
    "tryssh-consume.service": "systemd unit: the consumer",
    "tryssh-serve.service": "systemd unit: the embedded SSH server",
    "tryssh-gc.service": "systemd unit: tryssh gc (a drop-in site has no consumer to run it)",
    "tryssh-gc.timer": "systemd timer: tryssh-gc.service once a day",
    "logrotate.tryssh": "logrotate rules for the audit log",
    "master.cfg": "a complete Buildbot master.cfg (drop-in, or consumer in front)",
    "tryssh-build-git": "build script: clone at the base revision, apply the patch, run",
    "tryssh-jobdir-setup": "the jobdir set-up script (tryssh jobdir-setup runs it)",
}


def contrib_dir() -> Path:
    """Where the contrib files are: inside the installed package (a wheel), or the source
    tree's contrib/ (an editable install or a checkout)."""
    import tryssh

    package = Path(tryssh.__file__).resolve().parent
    for candidate in (package / "contrib", package.parent / "contrib"):
        if (candidate / "tryssh.example.toml").is_file():
            return candidate
    raise TrysshError("the contrib files are not installed with this tryssh", EX_NOINPUT)


def contrib_names() -> list[str]:
    return sorted(
        p.name for p in contrib_dir().iterdir() if p.is_file() and not p.name.startswith(("_", "."))
    )


def contrib_file(name: str) -> Path:
    """The shipped file *name*; exit 66 naming the choices for anything else."""
    names = contrib_names()
    if name not in names:  # also keeps "../x" and absolute paths out
        raise TrysshError(f"no contrib file {name!r} (there are: {', '.join(names)})", EX_NOINPUT)
    return contrib_dir() / name


@click.command("contrib")
@click.argument("name", required=False)
@click.option("--path", "show_path", is_flag=True, help="Print the file's path instead.")
def contrib_cmd(name: str | None, show_path: bool) -> int:
    """Print a file shipped with tryssh (systemd units, sshd block, example config, scripts).

    Without NAME, list them. Install one by redirecting the output:

    \b
    Examples:
      tryssh contrib
      tryssh contrib tryssh.example.toml > /etc/tryssh/config.toml
      tryssh contrib tryssh-consume.service > /etc/systemd/system/tryssh-consume.service
      tryssh contrib tryssh-build-git > /usr/local/bin/tryssh-build-git

    Exit codes: 0 ok, 64 usage, 66 no such file (the message lists them).
    """
    if name is None:
        for each in contrib_names():
            click.echo(f"{each:<24}{DESCRIPTIONS.get(each, '')}".rstrip())
        return 0
    path = contrib_file(name)
    if show_path:
        click.echo(str(path))
    else:
        sys.stdout.buffer.write(path.read_bytes())
        sys.stdout.flush()
    return 0


@click.command(
    "jobdir-setup",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def jobdir_setup_cmd(args: tuple[str, ...]) -> int:
    """Create or check a jobdir (tmp/ new/ cur/ state/ logs/, group-shared, setgid).

    Runs the POSIX sh script shipped as contrib/tryssh-jobdir-setup; 'tryssh jobdir-setup
    --help' shows its options. Exit codes: 0 ok, 1 --check found a problem, 64 usage.
    """
    script = contrib_file("tryssh-jobdir-setup")
    os.environ["TRYSSH_PROG"] = "tryssh jobdir-setup"
    sys.stdout.flush()
    os.execv("/bin/sh", ["/bin/sh", str(script), *args])  # noqa: S606 - argv, no shell string
    return 0  # not reached
