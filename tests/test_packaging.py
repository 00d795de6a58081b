"""The wheel alone is enough: built from the tree, installed into a throwaway venv with no
index and no source tree next to it, it provides every command the README's guide uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import build_wheel, install_wheel, run, venv_bin

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the wheel's tryssh; its dependencies come from the test venv."""
    base = tmp_path_factory.mktemp("wheel")
    return install_wheel(build_wheel(base / "dist"), base / "venv", sys.executable)


def tool(venv: Path, name: str, *args: str, cwd: Path | None = None):
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv)}
    return subprocess.run([str(venv / "bin" / name), *args], capture_output=True, text=True,
                          env=env, cwd=cwd or venv, timeout=60)  # fmt: skip


def test_the_wheels_tryssh_is_the_one_running(installed):
    result = tool(installed, "python", "-c", "import tryssh; print(tryssh.__file__)")
    assert result.stdout.startswith(str(installed)), result.stdout


def test_every_contrib_file_is_shipped_and_printed(installed):
    listing = tool(installed, "tryssh", "contrib")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names == sorted(p.name for p in (ROOT / "contrib").iterdir() if p.is_file())
    for name in names:
        printed = tool(installed, "tryssh", "contrib", name)
        assert printed.stdout == (ROOT / "contrib" / name).read_text(), name


def test_unknown_or_escaping_names_are_66(installed):
    for name in ("nope", "../__init__.py", "/etc/passwd"):
        result = tool(installed, "tryssh", "contrib", name)
        assert result.returncode == 66 and result.stdout == ""
        assert result.stderr.startswith(f"tryssh: no contrib file {name!r}")


def test_jobdir_setup_command(installed, tmp_path):
    jobdir = tmp_path / "jobdir"
    result = tool(installed, "tryssh", "jobdir-setup", str(jobdir))
    assert result.returncode == 0, result.stderr
    assert all((jobdir / sub).is_dir() for sub in ("tmp", "new", "cur", "state", "logs"))
    check = tool(installed, "tryssh", "jobdir-setup", "--check", str(jobdir))
    assert check.returncode == 0 and check.stdout.startswith("ok: ")
    usage = tool(installed, "tryssh", "jobdir-setup", "--help")
    assert usage.stdout.startswith("Usage: tryssh jobdir-setup [--group GROUP]")


def test_the_guides_commands_are_there(installed):
    assert tool(installed, "tryserver", "--version").stdout.startswith("tryserver ")
    for command in ("keys", "consume", "serve", "doctor", "hostkey", "contrib", "jobdir-setup"):
        result = tool(installed, "tryssh", command, "--help")
        assert result.returncode == 0, (command, result.stderr)


def test_source_tree_wrapper_and_the_command_agree(tmp_path):
    """bin/tryssh-jobdir-setup is a thin wrapper over the same shipped script."""
    a = run([str(ROOT / "bin" / "tryssh-jobdir-setup"), "--help"]).stdout.decode()
    b = run([venv_bin("tryssh"), "jobdir-setup", "--help"]).stdout.decode()
    assert a.replace("tryssh-jobdir-setup", "tryssh jobdir-setup") == b
    assert os.access(ROOT / "bin" / "tryssh-jobdir-setup", os.X_OK)


def test_man_pages_are_the_help_texts(tmp_path):
    result = run([venv_bin("tryssh"), "manpages", str(tmp_path / "man1")])
    assert result.returncode == 0, result.stderr.decode()
    pages = sorted(p.name for p in (tmp_path / "man1").iterdir())
    from tryssh.cli.main import COMMANDS

    assert pages == sorted(["tryssh.1", "tryserver.1", *(f"tryssh-{c}.1" for c in COMMANDS)])
    text = (tmp_path / "man1" / "tryssh-consume.1").read_text()
    assert text.startswith('.TH "TRYSSH-CONSUME" "1"')
    helptext = run([venv_bin("tryssh"), "consume", "--help"]).stdout.decode()
    assert "SIGHUP" in helptext and "SIGHUP" in text and "-h, --help" in text
    if shutil.which("groff"):
        page = str(tmp_path / "man1" / "tryssh.1")
        rendered = run(["groff", "-man", "-Tutf8", "-ww", "-z", page])
        assert rendered.returncode == 0 and rendered.stderr == b"", rendered.stderr


def test_shell_completion_as_the_readme_says():
    env = {**os.environ, "_TRYSSH_COMPLETE": "bash_source"}
    script = subprocess.run([venv_bin("tryssh")], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert "_tryssh_completion()" in script.stdout
    env = {**os.environ, "_TRYSSH_COMPLETE": "bash_complete", "COMP_WORDS": "tryssh con",
           "COMP_CWORD": "1"}  # fmt: skip
    words = subprocess.run([venv_bin("tryssh")], env=env, capture_output=True, text=True,
                           timeout=60).stdout.split()  # fmt: skip
    assert words == ["plain,consume", "plain,contrib"]
