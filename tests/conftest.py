"""Shared fixtures: a jobdir, a master config, real sshd servers, client keys and known_hosts
files (logic in helpers.py and sshd.py, which tests import as top-level modules: pyproject's
``pythonpath``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from buildbot_master import BuildbotMaster
from helpers import write_master_config
from hypothesis import settings
from sshd import (
    OpensshMissing,
    Sshd,
    UserKey,
    check_openssh,
    make_user_key,
    write_known_hosts,
)

from tryssh.core.jobdir import Jobdir

# No time limit per example: hypothesis's default (200 ms) is a timing threshold, and on a
# loaded CI machine an example that runs git took 357 ms. Tests' own settings inherit this.
settings.register_profile("tryssh", deadline=None)
settings.load_profile("tryssh")


@pytest.fixture
def jobdir(tmp_path: Path) -> Jobdir:
    """An empty jobdir (tmp/, new/, cur/) at ``tmp_path/jobdir``."""
    return Jobdir(str(tmp_path / "jobdir")).create()


@pytest.fixture
def master_config(tmp_path: Path) -> Callable[..., Path]:
    """``write(builders={}, users={}, **top) -> tmp_path/tryssh.toml``, its jobdir
    ``tmp_path/jobdir`` created (see :func:`helpers.write_master_config`)."""

    def write(builders: dict | None = None, users: dict | None = None, **top: object) -> Path:
        return write_master_config(tmp_path, builders or {}, users or {}, **top)

    return write


@pytest.fixture
def sshd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Sshd]]:
    """``start(authorized_keys=(), extra_config=()) -> Sshd``; every server stops at teardown."""
    try:
        check_openssh()
    except OpensshMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    started: list[Sshd] = []

    def start(authorized_keys: Iterable[str] = (), extra_config: Sequence[str] = ()) -> Sshd:
        server = Sshd(authorized_keys, extra_config, directory=tmp_path_factory.mktemp("sshd"))
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def user_key(tmp_path: Path) -> UserKey:
    """A fresh ed25519 client key without passphrase: (private_path, public_line)."""
    try:
        check_openssh()
    except OpensshMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    keydir = tmp_path / "client-keys"
    keydir.mkdir(exist_ok=True)
    return make_user_key(keydir, "id_ed25519")


@pytest.fixture
def known_hosts(tmp_path: Path) -> Callable[..., Path]:
    """``write(*sshds) -> Path``: a new known_hosts file trusting exactly those servers."""
    counter = iter(range(1_000_000))

    def write(*sshds: Sshd) -> Path:
        return write_known_hosts(tmp_path / f"known_hosts.{next(counter)}", *sshds)

    return write


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The client keeps a refreshed git index in the user's cache: never the real one."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def buildbot_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildbotMaster]:
    """One real Buildbot master and worker for the whole session (contrib/master.cfg,
    builders try-git, try-hg, try-svn); stopped at the end."""
    master = BuildbotMaster(tmp_path_factory.mktemp("buildbot")).start()
    yield master
    master.stop()
