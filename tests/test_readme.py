"""README.rst is part of the product: it renders cleanly and its quick start is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import docutils.core
import docutils.utils
import pytest
from helpers import run, venv_bin

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()


def test_readme_renders_without_warnings() -> None:
    messages: list[str] = []

    class Collect:
        def write(self, text: str) -> None:
            messages.append(text)

    docutils.core.publish_string(
        README,
        writer="null",
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": Collect()},
    )
    assert messages == []


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    literal = README.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    commands = [line.split("#")[0].strip() for line in literal.splitlines()]
    assert commands == ["scripts/demo", "scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec scripts/test$", ci, re.M)


def _commands() -> list[list[str]]:
    """Every command of the CLI's registry, and every subcommand of its groups."""
    import click

    from tryssh.cli.main import root_group

    root = root_group()
    ctx = click.Context(root)
    found = []
    for name in root.list_commands(ctx):
        found.append([name])
        command = root.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += [[name, sub] for sub in command.list_commands(ctx)]
    return found


def test_the_registry_is_complete() -> None:
    from tryssh.cli.main import COMMANDS

    assert [c[0] for c in _commands() if len(c) == 1] == list(COMMANDS)


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help_with_text(command: list[str]) -> None:
    result = run([venv_bin("tryssh"), *command, "--help"])
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.decode().splitlines()) > 5


def test_exit_codes_table_matches_the_code() -> None:
    from tryssh import errors

    for name in ("EX_USAGE", "EX_DATAERR", "EX_CANTCREAT", "EX_TEMPFAIL", "EX_NOPERM", "EX_CONFIG"):
        assert re.search(rf"^{getattr(errors, name)}\s+\S", README, re.M), name
