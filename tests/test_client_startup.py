"""The client's start-up path stays light: building a job and ``--dry-run`` never import
paramiko (nor cryptography, nacl, bcrypt, invoke) or ``importlib.metadata`` and ``email``.
paramiko is imported only when a connection is made. Checked on the whole process with
``-X importtime``, like tryserver's own guard in test_tryserver."""

from __future__ import annotations

import os
import sys

from helpers import GIT_ENV, git, run

HEAVY = {"paramiko", "cryptography", "nacl", "bcrypt", "invoke", "importlib.metadata", "email"}


def loaded_modules(argv: list[str], cwd) -> set[str]:
    code = "import sys\nfrom tryssh.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    result = run([sys.executable, "-X", "importtime", "-c", code, *argv], env=env, cwd=cwd)
    lines = result.stderr.decode().splitlines()
    messages = [line for line in lines if not line.startswith("import time")]
    assert result.returncode == 0, "\n".join(messages)[-2000:]
    loaded = {
        line.rpartition("|")[2].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "tryssh.client.job" in loaded  # the report was read right
    return loaded


def heavy_in(loaded: set[str]) -> set[str]:
    packages = HEAVY - {"importlib.metadata"}
    return {m for m in loaded if m in HEAVY or m.partition(".")[0] in packages}


def test_try_dry_run_does_not_import_paramiko(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("one\n")
    git(tmp_path, "add", "f")
    git(tmp_path, "commit", "-qm", "f")
    (tmp_path / "f").write_text("two\n")
    assert heavy_in(loaded_modules(["try", "--dry-run", "--baserev", "HEAD"], tmp_path)) == set()
    (tmp_path / "p.diff").write_text("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-one\n+two\n")
    argv = ["try", "--dry-run", "--diff", "p.diff", "--baserev", "abc", "--host", "example.org"]
    assert heavy_in(loaded_modules(argv, tmp_path)) == set()


def test_a_connection_loads_paramiko_without_invoke_or_importlib_metadata():
    code = (
        "import sys, json\n"
        "import tryssh.client.sshclient, paramiko\n"
        "print(json.dumps([paramiko.__version__, sorted(m for m in ('invoke', "
        "'importlib.metadata', 'email') if m in sys.modules)]))\n"
        "from importlib import metadata\n"  # still importable afterwards, the real one
        "print(metadata.version('paramiko'))\n"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    first, second = result.stdout.decode().splitlines()
    import json

    version, loaded = json.loads(first)
    assert loaded == []
    assert version == second  # paramiko's banner carries its true version


def test_the_diff_ahead_starts_before_anything_heavy_is_loaded():
    """diffahead is what lets git's diff start while tryssh loads: it must load nothing
    that takes time itself (subprocess, re, click, typing, tempfile, shutil, hashlib)."""
    code = ("import sys\nbefore = set(sys.modules)\nimport tryssh.client.diffahead\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")  # fmt: skip
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    loaded = set(result.stdout.decode().split())
    assert "tryssh.client.diffahead" in loaded
    slow = {"subprocess", "re", "click", "typing", "tempfile", "shutil", "hashlib", "_hashlib",
            "tryssh.client.vcs", "tryssh.client.patchstats"}  # fmt: skip
    assert loaded & slow == set()
