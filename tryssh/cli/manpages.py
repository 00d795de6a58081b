"""``tryssh manpages DIR``: man pages written from the commands' own ``--help``.

One page per command (``tryssh.1``, ``tryssh-try.1``, ..., ``tryserver.1``), so that the
pages never drift from the help: both are the same text. They are written on demand
rather than shipped in the wheel, because pip has no place for man pages that ``man``
finds (a wheel's data files land under the venv, not in MANPATH).
"""

from __future__ import annotations

import datetime
import os

import click

from tryssh import __version__


def _roff_text(text: str) -> str:
    """Plain text as roff lines kept as they are (.nf): escape what roff would interpret."""
    lines = []
    for line in text.rstrip("\n").splitlines():
        line = line.replace("\\", "\\e")
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def page(name: str, summary: str, help_text: str) -> str:
    """One man page (section 1) whose body is *help_text*."""
    date = datetime.date.today().isoformat()
    return (
        f'.TH "{name.upper()}" "1" "{date}" "tryssh {__version__}" "tryssh"\n'
        ".SH NAME\n"
        f"{name} \\- {_roff_text(summary)}\n"
        ".SH DESCRIPTION\n"
        ".nf\n"
        f"{_roff_text(help_text)}\n"
        ".fi\n"
        ".SH SEE ALSO\n"
        "The README of tryssh; \\fBtryssh\\fR(1), \\fBtryserver\\fR(1)\n"
    )


def all_pages() -> dict[str, str]:
    """File name -> page, for the group, every subcommand (one level down) and tryserver."""
    from tryssh.cli.main import COMMANDS, root_group
    from tryssh.server.tryserver import USAGE

    group = root_group()
    pages = {}
    with click.Context(group, info_name="tryssh", help_option_names=["-h", "--help"]) as ctx:  # type: ignore[arg-type]
        pages["tryssh.1"] = page("tryssh", "send a change to a CI master over SSH and have "
                                 "it built", group.get_help(ctx))  # type: ignore[attr-defined]
        for name in COMMANDS:
            command = group.get_command(ctx, name)  # type: ignore[attr-defined]
            if command is None:
                continue
            with click.Context(command, info_name=name, parent=ctx) as sub:
                summary = command.get_short_help_str(limit=80)
                pages[f"tryssh-{name}.1"] = page(f"tryssh-{name}", summary, command.get_help(sub))
    pages["tryserver.1"] = page("tryserver", "the OpenSSH forced command that receives try jobs",
                                USAGE)  # fmt: skip
    return pages


@click.command("manpages")
@click.argument("directory", type=click.Path(file_okay=False))
def manpages_cmd(directory: str) -> int:
    """Write the man pages of every command into DIRECTORY (made if missing).

    The pages are the commands' --help texts, so they always agree with them.

    \b
    Example:
      tryssh manpages /usr/local/share/man/man1 && mandb -q
      man tryssh-consume

    Exit codes: 0 ok, 64 usage, 73 cannot create DIRECTORY or a page.
    """
    from tryssh.errors import CannotCreate

    written = []
    try:
        os.makedirs(directory, exist_ok=True)
        for name, text in all_pages().items():
            path = os.path.join(directory, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            written.append(path)
    except OSError as err:
        raise CannotCreate(f"cannot write {err.filename or directory}: {err.strerror}") from None
    for path in written:
        click.echo(path)
    return 0
