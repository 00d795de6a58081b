"""The master config, table by table: every check of :mod:`tryssh.server.config` and the
machine checks of :mod:`tryssh.server.checks`, in-process (no consumer subprocess)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tryssh.core import defaults
from tryssh.errors import EX_CONFIG, ConfigError
from tryssh.server.checks import config_findings, find_program, refuse_problems
from tryssh.server.config import config_from_dict, load_config

BASE: dict[str, Any] = {"jobdir": "/srv/j"}

# (the config beyond BASE, a fragment of the one-line error)
BAD: list[tuple[dict[str, Any], str]] = [
    ({"jobdir": 3}, "jobdir: must be a string"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"max_job_size": 0}, "max_job_size: must be greater than 0"),
    ({"max_job_size": True}, "max_job_size: must be an integer"),
    ({"keep_days": -1}, "keep_days: must be greater than 0"),
    ({"builders": {"b": 1}}, "builders.b: must be a table"),
    ({"builders": {"b": {}}}, "builders.b: needs exactly one of command, webhook, forward"),
    ({"builders": {"b": {"command": ["x"], "webhook": "http://h/"}}}, "needs exactly one"),
    ({"builders": {"b": {"command": []}}}, "builders.b.command: must not be empty"),
    ({"builders": {"b": {"command": ["x", 1]}}}, "builders.b.command: must be a list of strings"),
    ({"builders": {"b": {"webhook": "ftp://h/"}}}, "builders.b.webhook: must be an http://"),
    ({"builders": {"b": {"command": ["x"], "timeout": 0}}}, "builders.b.timeout: must be greater"),
    ({"builders": {"b": {"command": ["x"], "concurrency": -2}}}, "builders.b.concurrency"),
    ({"builders": {"b": {"command": ["x"], "env": {"A": 1}}}}, "builders.b.env: values must be"),
    ({"users": {"a": []}}, "users.a: must be a table"),
    ({"users": {"a": {"builder": ["x"]}}}, "users.a.builder: unknown key"),
    ({"users": {"a": {"branches": "main"}}}, "users.a.branches: must be a list"),
    ({"users": {"a": {"max_pending": 0}}}, "users.a.max_pending: must be greater than 0"),
    ({"serve": {"listen": "nowhere"}}, "serve.listen: expected HOST:PORT"),
    ({"serve": {"listen": "[::1]2222"}}, "serve.listen: expected [ADDRESS]:PORT"),
    ({"serve": {"listen": "h:70000"}}, "serve.listen: expected HOST:PORT with a port 0-65535"),
    ({"serve": {"idle_timeout": 0}}, "serve.idle_timeout: must be greater than 0"),
    ({"serve": {"max_auth_tries": -1}}, "serve.max_auth_tries: must be greater than 0"),
    ({"serve": {"max_connections": 0}}, "serve.max_connections: must be greater than 0"),
    ({"serve": {"port": 22}}, "serve.port: unknown key"),
    ({"consume": {"poll_interval": 0}}, "consume.poll_interval: must be greater than 0"),
    ({"consume": {"max_parallel": 0}}, "consume.max_parallel: must be greater than 0"),
    ({"consume": {"max_parallel": 1.5}}, "consume.max_parallel: must be an integer"),
]


@pytest.mark.parametrize(("extra", "needle"), BAD, ids=[n for _, n in BAD])
def test_bad_config_is_one_line_naming_file_and_key(extra: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({**BASE, **extra}, "/etc/t.toml")
    assert info.value.exit_code == EX_CONFIG
    assert info.value.message.startswith("/etc/t.toml: ")
    assert needle in info.value.message and "\n" not in info.value.message


def test_missing_jobdir() -> None:
    with pytest.raises(ConfigError, match="jobdir: missing"):
        config_from_dict({}, "/etc/t.toml")


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        'jobdir = "jd"\n[builders.b]\ncommand = ["make"]\nsecret_file = "s"\n'
        '[serve]\nlisten = "[::1]:0"\nhost_key = "hk"\n'
    )
    config = load_config(str(path))
    assert config.jobdir == str(tmp_path / "jd")
    assert config.state_dir == str(tmp_path / "jd" / defaults.STATE_DIR)
    assert config.log_dir == str(tmp_path / "jd" / defaults.LOG_DIR)
    assert config.audit_log == str(tmp_path / "jd" / defaults.AUDIT_LOG)
    assert config.max_job_size == defaults.MAX_JOB_SIZE
    assert config.builders["b"].options["secret_file"] == str(tmp_path / "s")
    assert config.builders["b"].timeout == 3600 and config.builders["b"].concurrency == 1
    assert config.serve["host_key"] == str(tmp_path / "hk")


@pytest.mark.parametrize(
    ("text", "needle"),
    [("jobdir = ", "Invalid value"), (None, "no such config file")],
)
def test_unreadable_config(tmp_path: Path, text: str | None, needle: str) -> None:
    path = tmp_path / "t.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(str(path))


# -- machine checks -------------------------------------------------------------------------------


def test_program_is_looked_up_on_the_builders_own_path(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "only-here"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_program("only-here", {"PATH": str(tool.parent)}) == str(tool)
    assert find_program("only-here", {"PATH": "/nonexistent"}) is None
    assert find_program(str(tool), {}) == str(tool)
    assert find_program("sh", {}) is not None  # this process's PATH


def _levels(data: dict[str, Any]) -> list[tuple[str, str]]:
    config = config_from_dict({**BASE, **data}, "/etc/t.toml")
    return [(f.level, f.message) for f in config_findings(config)]


@pytest.mark.parametrize(
    ("builder", "level", "needle"),
    [
        ({"command": ["sh"]}, "ok", "builders.b: command"),
        ({"command": ["/no/such/prog"]}, "problem", "builders.b.command: program '/no/such/prog'"),
        ({"command": ["own"], "env": {"PATH": "/nonexistent"}}, "problem", "program 'own'"),
        ({"webhook": "http://h/"}, "warn", "webhook without secret_file"),
        ({"webhook": "http://h/", "secret_file": "/no/s"}, "problem", "secret_file: cannot read"),
        ({"forward": "/no/such/jobdir"}, "problem", "builders.b.forward:"),
        ({"forward": "ssh://h/srv/j"}, "ok", "forward ssh://h/srv/j"),
        ({"forward": "ssh://h/srv/j"}, "warn", "no identity: ssh uses the consumer account's"),
        ({"forward": "ssh://h/j", "identity": "/no/id"}, "problem", "identity: /no/id does not"),
        ({"forward": "ssh://h/j", "known_hosts": "/no/kh"}, "problem", "known_hosts: /no/kh"),
    ],
)
def test_builder_findings(builder: dict[str, Any], level: str, needle: str) -> None:
    found = _levels({"builders": {"b": builder}})
    assert any(lv == level and needle in msg for lv, msg in found), found
    if level == "problem":
        assert not any(lv == "ok" for lv, _ in found)


def test_forward_to_a_real_jobdir_is_fine(tmp_path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(tmp_path / "j" / sub)
    assert _levels({"builders": {"b": {"forward": str(tmp_path / "j")}}})[0][0] == "ok"


def test_consumer_refuses_the_first_problem() -> None:
    good = config_from_dict({**BASE, "builders": {"b": {"command": ["sh"]}}}, "/etc/t.toml")
    refuse_problems(good)
    bad = config_from_dict({**BASE, "builders": {"b": {"command": ["/no"]}}}, "/etc/t.toml")
    with pytest.raises(ConfigError, match=r"^/etc/t.toml: builders.b.command: program '/no'"):
        refuse_problems(bad)
