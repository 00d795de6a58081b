"""Small shared test utilities: polling with a deadline, ports, venv scripts, subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

StrPath = str | os.PathLike[str]


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition not met before the deadline",
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises AssertionError(message) when ``timeout`` seconds pass first. ``message`` may be a
    callable so that costly diagnostics (e.g. a log file) are only built on failure. The
    default is generous: it only bounds a test that fails, and a loaded CI machine took
    over 10 s for five consumer jobs.
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


class LoopbackHttp:
    """A real HTTP server on 127.0.0.1 (port chosen by the kernel) serving *handler* in a
    thread; ``url`` is its base URL. :meth:`close` when done."""

    def __init__(self, handler: type) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OutputPumps:
    """*proc*'s stdout and stderr (text mode) read line by line by two threads into
    ``stdout`` and ``stderr``: a server that writes much never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.threads = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in ((proc.stdout, self.stdout), (proc.stderr, self.stderr))
        ]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _pump(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line)

    def drain(self) -> None:
        """Once the process has exited, wait for the threads to read what it wrote last:
        without this, a test that waited for the exit could read its output a line short."""
        if self.proc.poll() is not None:
            for thread in self.threads:
                thread.join(timeout=10)  # EOF comes at once, unless a child holds the pipe


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


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM *proc* (a consumer lets its builds end), SIGKILL it if it outlives *timeout*."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def clone_with_change(tmp_path: Path) -> Path:
    """``tmp_path/work``: a clone of a one-commit git repository (``tmp_path/seed``, its
    origin, where a.txt is "one") whose a.txt has a second line, not committed."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    (seed / "a.txt").write_text("one\n")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "initial")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(seed), str(work))
    (work / "a.txt").write_text("one\ntwo\n")
    return work


def unprivileged(argv: Sequence[str]) -> list[str]:
    """*argv* run without the power to ignore file modes (root keeps its uid, loses the cap)."""
    if os.geteuid() != 0:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.fail("setpriv (util-linux) is needed to test permissions as root")
    caps = "-dac_override,-dac_read_search,-fowner"
    prefix = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]
    if run([*prefix, "true"]).returncode != 0:  # e.g. a container without CAP_SETPCAP
        pytest.skip("cannot drop capabilities here (the errno mapping is tested directly)")
    return [*prefix, *argv]


ROOT = Path(__file__).resolve().parent.parent
# What tryssh needs at run time (click, paramiko and paramiko's own), by import name.
RUNTIME_MODULES = ("click", "paramiko", "cryptography", "bcrypt", "nacl", "cffi", "pycparser",
                   "_cffi_backend", "invoke")  # fmt: skip
RUNTIME_DISTRIBUTIONS = ("click", "paramiko", "cryptography", "bcrypt", "[Pp]y[Nn]a[Cc]l", "cffi",
                         "pycparser", "invoke")  # fmt: skip


def build_wheel(dist: Path) -> Path:
    """Build tryssh's wheel from a copy of the tree (offline, no build isolation)."""
    source = dist.parent / "wheel-src"
    source.mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.rst", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("tryssh", "contrib"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                 "--no-index", str(source), "-w", str(dist)], timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr.decode()
    shutil.rmtree(source)
    (wheel,) = dist.glob("tryssh-*.whl")
    return wheel


def install_wheel(wheel: Path, venv: Path, python: str, copy_deps: bool = False) -> Path:
    """A venv made by *python* holding the wheel's tryssh and nothing of the source tree.

    The dependencies come from this test venv, offline: a path entry after the venv's own,
    or with *copy_deps* copies (for other accounts, which may not reach this venv).
    """
    made = run([python, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr.decode()
    target = venv / "bin" / "python"
    pip = run([sys.executable, "-m", "pip", "--python", str(target), "install", "-q",
               "--no-deps", "--no-index", str(wheel)], timeout=300)  # fmt: skip
    assert pip.returncode == 0, pip.stderr.decode()
    purelib = run([str(target), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    site = Path(purelib.stdout.decode().strip())
    if not copy_deps:
        (site / "zz-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
        return venv
    import importlib.util

    for name in RUNTIME_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, site / name,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        else:
            shutil.copy(origin, site / origin.name)
    # Their metadata too: paramiko asks for its own version at import.
    here = Path(sysconfig.get_path("purelib"))
    for dist in RUNTIME_DISTRIBUTIONS:
        for info in here.glob(f"{dist}-*.dist-info"):
            shutil.copytree(info, site / info.name)
    return venv
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
