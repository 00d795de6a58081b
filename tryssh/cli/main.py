"""The ``tryssh`` command line: one group, subcommands loaded only when used.

Each command family lives in its own module of ``tryssh.cli`` so that ``tryssh tryserver``
(the forced command's other name) and the small commands never pay for paramiko or click's
whole tree.
"""

from __future__ import annotations

import importlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported before tryssh try has started git (prefetch)
    from collections.abc import Callable
    from typing import Any

    import click

EX_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

# name -> (module, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "try": ("tryssh.cli.try_", "try_cmd"),
    "status": ("tryssh.cli.try_", "status_cmd"),
    "builders": ("tryssh.cli.try_", "builders_cmd"),
    "log": ("tryssh.cli.results", "log_cmd"),
    "jobs": ("tryssh.cli.results", "jobs_cmd"),
    "cancel": ("tryssh.cli.results", "cancel_cmd"),
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
  tryssh try --wait               ... and wait for the builders' results (--follow: live)
  tryssh status JOB               ask how a job is doing (--wait: wait for it again)
  tryssh log JOB [-b BUILDER]     a builder's log (--follow while it runs)
  tryssh jobs                     your queued and running jobs (--all-states: all)
  tryssh cancel JOB               stop one of your jobs
  tryssh builders                 list the builders you may use
\b
Master side:
  tryserver / tryssh tryserver    the OpenSSH forced command (reads a job on stdin)
  tryssh consume --config FILE    claim jobs, check policy, run builders
  tryssh gc --config FILE         remove old finished jobs, records and logs
  tryssh serve --config FILE      an embedded SSH server (no system accounts)
  tryssh passwd                   a password hash for serve's [users.NAME]
  tryssh keys add USER KEY        manage the try account's authorized_keys
  tryssh doctor --config FILE     check the whole setup
  tryssh jobdir-setup DIR         create (or --check) the jobdir
  tryssh contrib [NAME]           print a shipped file: units, sshd block, scripts
  tryssh hostkey                  the host keys as known_hosts lines, for developers
  tryssh manpages DIR             write the man pages (the --help texts)

\b
Exit codes: 0 ok, 1 a build failed, 2 nothing to cancel (finished), 64 usage or refused
command, 65 bad job data, 66 no such file or job, 69 a needed program is missing,
73 cannot create, 75 temporary failure, 77 permission denied or refused by policy,
78 config error, 130 interrupted; 70 is a bug in tryssh (please report it). Each
command's --help lists the codes it can return.
"""


def root_group() -> click.Group:
    """The ``tryssh`` group: commands are imported when used, errors become exit codes here."""
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

        def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
            """Run a command; every way a command can fail ends here, as one line on stderr
            and its exit code (returned, or the process's exit status when standalone)."""
            code = _run(lambda: super(LazyGroup, self).main(*args, standalone_mode=False,
                                                           **kwargs))  # fmt: skip
            if standalone_mode:
                sys.exit(code)
            return code

    @click.group(cls=LazyGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="tryssh")
    def tryssh() -> None:
        pass

    return tryssh


def _say(message: str) -> None:
    import click

    click.echo(f"tryssh: {' '.join(message.split())}", err=True)  # always one line


def _run(invoke: Callable[[], object]) -> int:
    """The exit code of *invoke* (click's main in non-standalone mode), errors mapped once:
    tryssh's own errors carry their sysexits code; usage errors are 64; an OSError names
    its file and gets the code of its errno; Ctrl-C (or click's Abort) is 130; anything
    else is a bug: its traceback, one line, and 70."""
    import click

    from tryssh.errors import EX_SOFTWARE, EX_USAGE, TrysshError, exit_code_for_oserror

    try:
        result = invoke()
    except TrysshError as err:
        _say(err.message)
        return err.exit_code
    except click.UsageError as err:
        err.show()
        return EX_USAGE
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        _say("aborted")
        return EX_INTERRUPTED
    except KeyboardInterrupt:
        _say("interrupted")
        return EX_INTERRUPTED
    except BrokenPipeError:
        return 0  # the reader went away (| head): not an error
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _say(f"{where}{err.strerror or err}")
        return exit_code_for_oserror(err)
    except Exception as err:
        # A bug. Python's own exit would be 1, which tryssh try uses for "a build failed":
        # a script must not read a crash as a result. The traceback is for the report.
        import traceback

        traceback.print_exc()
        _say(f"internal error: {type(err).__name__}: {err} (a bug in tryssh: please "
             "report it with the traceback above)")  # fmt: skip
        return EX_SOFTWARE
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tryssh`` console script."""
    if argv is not None:
        return _main(argv)
    try:
        code = _main(sys.argv[1:])
    finally:
        # The process ends now: its last garbage collection need not walk every object that
        # click and the rest made at import (about 10 ms of a 250 ms try --dry-run).
        import gc

        gc.freeze()
    _exit_if_threads_run(code)
    return code


def _exit_if_threads_run(code: int) -> None:
    """Exit now, output flushed, if a thread still runs: a connection ``try`` gave up on
    when its job could not be built. The interpreter's own exit stops such a thread
    wherever it is, and inside paramiko's cryptography (Rust) that aborts or crashes the
    process (exit 134 or 139 instead of the error's code)."""
    import threading

    if threading.active_count() <= 1:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing more can be said there
    os._exit(code)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["tryserver"]:
        from tryssh.server.tryserver import main as tryserver_main

        return tryserver_main(argv[1:])
    reading_ahead = argv[:1] == ["try"]
    if reading_ahead:
        # git diff runs on another core while click and the rest load (see prefetch).
        from tryssh.client import prefetch

        prefetch.start(argv[1:])
    try:
        return root_group().main(args=argv, prog_name="tryssh", standalone_mode=False)
    finally:
        if reading_ahead:
            prefetch.finish()


if __name__ == "__main__":
    sys.exit(main())
