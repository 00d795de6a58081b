"""Small shared test utilities: polling with a deadline, ports, venv scripts, subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

StrPath = str | os.PathLike[str]


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition not met before the deadline",
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises AssertionError(message) when ``timeout`` seconds pass first. ``message`` may be a
    callable so that costly diagnostics (e.g. a log file) are only built on failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s)")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the caller must bind it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def venv_bin(name: str) -> str:
    """Absolute path of the console script ``name`` installed next to the running Python.

    Falls back to PATH. A missing script fails the test: a missing ``tryserver`` or ``tryssh``
    means the package is not installed, which must never pass as a skip.
    """
    # No resolve(): the venv's python is a symlink to the base interpreter, and the scripts
    # live next to the symlink, not next to its target.
    candidate = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), name)
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    pytest.fail(
        f"console script {name!r} not found next to {sys.executable} nor on PATH; "
        "run scripts/bootstrap and use /work/main/.venv/bin/python -m pytest",
        pytrace=False,
    )


def run(
    argv: Sequence[StrPath],
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    cwd: StrPath | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (never through a shell), capturing stdout and stderr as bytes; no check."""
    return subprocess.run(
        list(argv),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


# A fixed identity and no system config for the git repositories tests make.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Alice", "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice", "GIT_COMMITTER_EMAIL": "alice@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
}  # fmt: skip


def git(cwd: StrPath, *args: str) -> str:
    """Run git in *cwd* with GIT_ENV (HOME is *cwd*); its stdout, stripped."""
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, check=True, timeout=60
    )
    return out.stdout.decode().strip()


# -- the master side ------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without sshd's variables (outside sshd the command line
    decides), plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env.update(extra)
    return env


def tryserver(
    where: object,
    data: bytes = b"",
    *args: str,
    env: Mapping[str, str] | None = None,
    user: str | None = "alice",
    original: str | None = None,
    umask: int = -1,
    text: bool = False,
) -> subprocess.CompletedProcess:
    """Run the real ``tryserver`` with *data* on stdin, on a jobdir (a ``Jobdir`` or a
    directory) or a master config (a ``.toml`` file), with ``--user`` *user* (None: none).

    *env* is added to :func:`clean_env`; *original* is the client's SSH command
    (``SSH_ORIGINAL_COMMAND``). *text* decodes the output.
    """
    path = str(getattr(where, "path", where))
    argv = [venv_bin("tryserver"), "--config" if path.endswith(".toml") else "--jobdir", path]
    if user is not None:
        argv += ["--user", user]
    environ = clean_env(**(env or {}))
    if original is not None:
        environ["SSH_ORIGINAL_COMMAND"] = original
    return subprocess.run(
        [*argv, *args],
        input=data.decode() if text else data,
        capture_output=True,
        env=environ,
        timeout=60,
        umask=umask,
        text=text,
        check=False,
    )


def toml_value(value: object) -> str:
    import json

    return json.dumps(value)  # strings, numbers, lists and booleans read the same in TOML


def write_master_config(
    directory: StrPath, builders: Mapping[str, dict], users: Mapping[str, dict], **top: object
) -> Path:
    """``DIRECTORY/tryssh.toml`` with *builders*, *users* and top-level keys (a ``consume``
    table too), its jobdir ``DIRECTORY/jobdir`` created; returns the config's path."""
    from tryssh.core.jobdir import Jobdir

    base = Path(directory)
    lines = [f"jobdir = {toml_value(str(base / 'jobdir'))}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items() if not isinstance(v, dict)]
    for table in ("consume", "serve"):
        content = top.get(table)
        if isinstance(content, dict) and content:
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in content.items()]
    for name, table in builders.items():
        lines.append(f"[builders.{toml_value(name)}]")
        for key, value in table.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {toml_value(value)}")
    for name, table in users.items():
        lines.append(f"[users.{toml_value(name)}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    Jobdir(str(base / "jobdir")).create()
    path = base / "tryssh.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
