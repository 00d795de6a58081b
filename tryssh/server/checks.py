"""Machine checks of a config: what :mod:`tryssh.server.config` cannot see from the file.

Each builder's program must exist on the PATH the builder will run with (its ``env.PATH``,
else this process's), its ``secret_file`` must be readable, a local ``forward`` target
must be a jobdir, an ``ssh://`` forward's ``identity`` and ``known_hosts`` must exist (a
``buildbot`` builder's jobdir alike), and ``buildbot`` builders sharing a master's jobdir
must share its ``api``. The checks yield :class:`Finding` s: ``tryssh doctor`` lists them,
and the consumer refuses to start on a ``problem`` (:func:`refuse_problems`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import NamedTuple

from tryssh.core.jobdir import Jobdir
from tryssh.errors import CannotCreate, ConfigError
from tryssh.server.config import Builder, Config


class Finding(NamedTuple):
    level: str  # "ok", "warn" or "problem"
    area: str
    message: str


def find_program(program: str, env: dict[str, str]) -> str | None:
    """Where *program* is, looked up as the builder will run it: on its ``env.PATH``."""
    if "/" in program:
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    return shutil.which(program, path=env.get("PATH", os.environ.get("PATH", os.defpath)))


def builder_findings(builder: Builder) -> Iterator[Finding]:
    """The findings for one builder; an ``ok`` finding only when it has no problem."""
    where = f"builders.{builder.name}"
    problem = False
    if builder.kind == "command":
        program = builder.target[0]
        if find_program(program, builder.options.get("env", {})) is None:
            problem = True
            yield Finding("problem", "builders", f"{where}.command: program {program!r} not found")
    secret = builder.options.get("secret_file")
    if secret is not None:
        try:
            with open(secret, "rb"):
                pass
        except OSError as err:
            problem = True
            yield Finding(
                "problem", "builders", f"{where}.secret_file: cannot read {secret}: {err.strerror}"
            )
    elif builder.kind == "webhook":
        yield Finding("warn", "builders", f"{where}: webhook without secret_file: unsigned")
    destination = builder.destination
    if destination is not None and destination.startswith("ssh://"):
        for key in ("identity", "known_hosts"):
            value = builder.options.get(key)
            if value is None:
                yield Finding("warn", "builders", f"{where}: no {key}: ssh uses the consumer "
                              "account's ~/.ssh")  # fmt: skip
            elif not os.path.isfile(value):
                problem = True
                yield Finding("problem", "builders", f"{where}.{key}: {value} does not exist")
    if destination is not None and not destination.startswith("ssh://"):
        try:
            Jobdir(destination).check()
        except CannotCreate as err:
            problem = True
            what = "forward" if builder.kind == "forward" else "buildbot.jobdir"
            yield Finding("problem", "builders", f"{where}.{what}: {err.message}")
    if not problem:
        shown = builder.target if destination is None else destination
        yield Finding("ok", "builders", f"{where}: {builder.kind} {shown}")


def config_findings(config: Config) -> Iterator[Finding]:
    """The findings for every builder of *config*."""
    for builder in config.builders.values():
        yield from builder_findings(builder)
    yield from shared_api_findings(config)


def shared_api_findings(config: Config) -> Iterator[Finding]:
    """Builders that share a master's jobdir are sent a job together and followed together:
    they must agree on where the results are read (``buildbot.api``). A builder whose
    jobdir is the config's own declares a drop-in (a master reads this jobdir): a consumer
    on it would hand each job back to itself, so that is a problem."""
    apis: dict[str | None, str] = {}
    for builder in config.builders.values():
        if builder.destination == config.jobdir:
            yield Finding("problem", "builders", f"builders.{builder.name}: delivers into this "
                          "config's own jobdir (a drop-in declaration): run no consumer on it")
        if builder.kind == "buildbot":
            api = apis.setdefault(builder.destination, builder.target["api"])
            if api != builder.target["api"]:
                yield Finding("problem", "builders", f"builders.{builder.name}.buildbot.api: "
                              f"{builder.destination} is read by another buildbot builder "
                              f"with api {api}")  # fmt: skip


def refuse_problems(config: Config) -> None:
    """Raise ConfigError (exit 78) naming the first problem, if any."""
    for finding in config_findings(config):
        if finding.level == "problem":
            raise ConfigError(f"{config.path}: {finding.message}")
