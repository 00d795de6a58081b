"""Help texts: every exit code a command can return is listed in its --help (the registry in
tryssh.cli.exitcodes), no reStructuredText markup leaks, the overview names every command."""

from __future__ import annotations

import re

import pytest
from helpers import run, venv_bin

from tryssh.cli.exitcodes import EXIT_CODES
from tryssh.cli.main import COMMANDS


def help_text(*words: str) -> str:
    result = run([venv_bin("tryssh"), *words, "--help"])
    assert result.returncode == 0, result.stderr.decode()
    return " ".join(result.stdout.decode().split())  # click wraps lines


@pytest.mark.parametrize("command", sorted(EXIT_CODES))
def test_every_exit_code_is_in_the_help(command: str) -> None:
    text = help_text(command)
    listed = text[text.index("Exit codes:"):]
    for code, meaning in EXIT_CODES[command].items():
        assert re.search(rf"\b{code} {re.escape(meaning)}", listed), (command, code, listed)


def test_every_command_has_a_registry_entry_or_is_a_group() -> None:
    # keys: a group (its subcommands' helps); jobdir-setup: the POSIX sh script's own help
    # ("Exit status: ..."), which runs before any Python is installed.
    assert set(COMMANDS) - set(EXIT_CODES) <= {"keys", "jobdir-setup"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_rst_markup_in_help(command: str) -> None:
    assert "``" not in help_text(command)


def test_overview_lists_every_command() -> None:
    text = help_text()
    for command in COMMANDS:
        assert f"tryssh {command}" in text, command


@pytest.mark.parametrize("command", ["status", "builders"])
def test_connect_is_not_described_as_delivering_for_queries(command: str) -> None:
    assert "How to deliver" not in help_text(command)
