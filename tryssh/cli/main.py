"""The ``tryssh`` command line: one group, subcommands loaded only when used.

Each command family lives in its own module of ``tryssh.cli`` so that ``tryssh tryserver``
(the forced command's other name) and the small commands never pay for paramiko or click's
whole tree.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "try": ("tryssh.cli.try_", "try_cmd"),
    "status": ("tryssh.cli.try_", "status_cmd"),
    "builders": ("tryssh.cli.try_", "builders_cmd"),
    "consume": ("tryssh.cli.consume", "consume_cmd"),
    "gc": ("tryssh.cli.consume", "gc_cmd"),
    "serve": ("tryssh.cli.serve", "serve_cmd"),
    "passwd": ("tryssh.cli.serve", "passwd_cmd"),
    "keys": ("tryssh.cli.keys", "keys"),
    "doctor": ("tryssh.cli.doctor", "doctor_cmd"),
    "jobdir-setup": ("tryssh.cli.contrib", "jobdir_setup_cmd"),
    "contrib": ("tryssh.cli.contrib", "contrib_cmd"),
    "hostkey": ("tryssh.cli.hostkey", "hostkey_cmd"),
    "manpages": ("tryssh.cli.manpages", "manpages_cmd"),
}

HELP = """\
tryssh: send a change you have not committed to a CI master over SSH and have it built.

\b
Developer:
  tryssh try -b unit              submit the working tree's change (git, hg, svn)
  tryssh try --wait               ... and wait for the builders' results
  tryssh status JOB               ask how a job is doing
  tryssh builders                 list the builders you may use
\b
Master side:
  tryserver / tryssh tryserver    the OpenSSH forced command (reads a job on stdin)
  tryssh consume --config FILE    claim jobs, check policy, run builders
  tryssh serve --config FILE      an embedded SSH server (no system accounts)
  tryssh keys add USER KEY        manage the try account's authorized_keys
  tryssh doctor --config FILE     check the whole setup
  tryssh jobdir-setup DIR         create (or --check) the jobdir
  tryssh contrib [NAME]           print a shipped file: units, sshd block, scripts
  tryssh hostkey                  the host keys as known_hosts lines, for developers

\b
Exit codes: 0 ok, 1 a build failed, 64 usage or refused command, 65 bad job data,
66 no such file or job, 69 a needed program is missing, 73 cannot create,
75 temporary failure, 77 permission denied or refused by policy, 78 config error.
"""


def _group() -> object:
    import click

    class LazyGroup(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return [n for n in COMMANDS if self.get_command(ctx, n) is not None]

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            if name not in COMMANDS:
                return None
            module, attr = COMMANDS[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as err:
                if err.name == module:
                    return None
                raise

    @click.group(cls=LazyGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="tryssh")
    def tryssh() -> None:
        pass

    return tryssh


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tryssh`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tryserver"]:
        from tryssh.server.tryserver import main as tryserver_main

        return tryserver_main(argv[1:])

    import click

    from tryssh.errors import EX_USAGE, TrysshError

    group = _group()
    try:
        result = group.main(  # type: ignore[attr-defined]
            args=argv, prog_name="tryssh", standalone_mode=False
        )
    except TrysshError as err:
        click.echo(f"tryssh: {err.message}", err=True)
        return err.exit_code
    except click.UsageError as err:
        err.show()
        return EX_USAGE
    except click.Abort:
        click.echo("tryssh: aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        click.echo("tryssh: interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
