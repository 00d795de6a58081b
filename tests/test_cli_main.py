"""The root CLI maps every way a command can fail to one line and one exit code."""

from __future__ import annotations

import errno

import click
import pytest

from tryssh.cli.main import EX_INTERRUPTED, _run
from tryssh.errors import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOPERM,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    TrysshError,
)


def _raise(err: BaseException):
    def invoke() -> object:
        raise err

    return invoke


@pytest.mark.parametrize(
    ("error", "code", "stderr"),
    [
        (TrysshError("bad job\nline 2", EX_DATAERR), EX_DATAERR, "tryssh: bad job line 2\n"),
        (click.UsageError("no such option: --x"), EX_USAGE, "Error: no such option: --x\n"),
        (click.Abort(), EX_INTERRUPTED, "tryssh: aborted\n"),
        (KeyboardInterrupt(), EX_INTERRUPTED, "tryssh: interrupted\n"),
        (BrokenPipeError(), 0, ""),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), EX_CANTCREAT,
         "tryssh: /x: No such file or directory\n"),
        (PermissionError(errno.EACCES, "Permission denied"), EX_NOPERM,
         "tryssh: Permission denied\n"),
        (OSError(errno.ENOSPC, "No space left on device"), EX_TEMPFAIL,
         "tryssh: No space left on device\n"),
    ],
)  # fmt: skip
def test_errors_map_to_one_line_and_a_code(capsys, error, code, stderr) -> None:
    assert _run(_raise(error)) == code
    assert capsys.readouterr().err.endswith(stderr)


def test_results_are_exit_codes() -> None:
    assert _run(lambda: None) == 0
    assert _run(lambda: 3) == 3  # click returns ctx.exit(3)'s code when not standalone


def test_version_is_the_installed_packages() -> None:
    import importlib.metadata
    import subprocess

    from helpers import venv_bin

    import tryssh

    assert tryssh.__version__ == importlib.metadata.version("tryssh")
    out = subprocess.run([venv_bin("tryssh"), "--version"], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0 and tryssh.__version__ in out.stdout, out


def test_a_bug_is_70_with_its_traceback_never_1(capsys) -> None:
    """An unexpected exception is a bug: its traceback for the report, then one line, and
    70. Before, Python's own exit gave 1, which tryssh try uses for "a build failed"."""
    assert _run(_raise(KeyError("oops"))) == EX_SOFTWARE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == ("tryssh: internal error: KeyError: 'oops' (a bug in tryssh: "
                                    "please report it with the traceback above)")  # fmt: skip
