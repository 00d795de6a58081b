"""The master-side TOML configuration shared by tryserver, the consumer and ``tryssh serve``.

Every error names the file, the key and what is wrong, and is raised before anything runs.

    jobdir = "/srv/tryssh/jobdir"
    [builders.unit]          # exactly one of command, webhook, forward, buildbot
    command = ["make", "check"]
    [builders.try-git]       # run by a Buildbot master, its results read back
    buildbot = { jobdir = "/srv/buildbot/jobdir", api = "http://localhost:8010/" }
    [users.alice]
    builders = ["unit*"]
    [users."*"]              # users not listed; without it they are refused
    builders = []
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from tryssh.core import defaults
from tryssh.core.netaddr import parse_listen
from tryssh.errors import ConfigError

# Each table's keys and their types. A tuple means "any of these types".
TOP_KEYS: dict[str, Any] = {
    "jobdir": str,
    "state_dir": str,
    "log_dir": str,
    "audit_log": str,
    "max_job_size": int,
    "keep_days": (int, float),
    "builders": dict,
    "users": dict,
    "serve": dict,
    "consume": dict,
    "buildbot": dict,
    "pb": dict,
}
BUILDER_KEYS: dict[str, Any] = {
    "command": list,
    "webhook": str,
    "forward": str,
    "buildbot": dict,
    "builders": list,
    "timeout": (int, float),
    "concurrency": int,
    "secret_file": str,
    "retries": int,
    "env": dict,
    "workdir": str,
    "identity": str,
    "known_hosts": str,
    "description": str,
}
BUILDER_KINDS = ("command", "webhook", "forward", "buildbot")
# builders.NAME.buildbot = { ... }: the master a builder hands its jobs to.
BUILDBOT_KEYS: dict[str, Any] = {
    "jobdir": str,  # the master's Try_Jobdir: a path, or ssh://[user@]host[:port]/dir
    "api": str,  # the master's web address, whose /api/v2 gives the results
    "builders": list,  # the Buildbot builders to run (default: the tryssh builder's name)
    "token_file": str,  # a bearer token for a proxy in front of the API
    "poll_interval": (int, float),  # seconds between two looks at the API
    "pickup_timeout": (int, float),  # seconds Buildbot has to make a buildset of the job
    "retries": int,  # API requests retried this often (with backoff) before "error"
}
# [buildbot]: the master that reads this jobdir itself (drop-in), for status and --wait.
TOP_BUILDBOT_KEYS: dict[str, Any] = {"api": str, "token_file": str}
USER_KEYS: dict[str, Any] = {
    "builders": list,
    "branches": list,
    "max_pending": int,
    "max_job_size": int,
    "keys": list,
    "password_hash": str,
    "pb_secret_file": str,
}
SERVE_KEYS: dict[str, Any] = {
    "listen": str,
    "host_key": str,
    "max_auth_tries": int,
    "max_auth_failures_per_address": int,
    "auth_penalty_seconds": (int, float),
    "max_connections": int,
    "idle_timeout": (int, float),
    "banner": str,
    "login_grace_time": (int, float),
    "max_request_time": (int, float),
    "max_auth_failures": int,
    "per_source_max_startups": int,
    "max_startups": str,
    "stop_timeout": (int, float),
}
# The PB door (Buildbot's Try_Userpass), checked further in tryssh.server.pb.
PB_KEYS: dict[str, Any] = {
    "listen": str,
    "insecure_network": bool,
    "max_connections": int,
    "max_tries_per_connection": int,
    "login_timeout": (int, float),
    "idle_timeout": (int, float),
}
CONSUME_KEYS: dict[str, Any] = {
    "poll_interval": (int, float),
    "max_parallel": int,
}
#: The numbers of [serve] and [consume] that must be greater than 0.
SERVE_POSITIVE = (
    "max_auth_tries",
    "max_auth_failures_per_address",
    "auth_penalty_seconds",
    "max_connections",
    "idle_timeout",
    "login_grace_time",
    "max_request_time",
    "max_auth_failures",
    "per_source_max_startups",
    "stop_timeout",
)
CONSUME_POSITIVE = ("poll_interval", "max_parallel")
PB_POSITIVE = ("max_connections", "max_tries_per_connection", "login_timeout", "idle_timeout")


@dataclass
class Builder:
    name: str
    kind: str  # "command", "webhook", "forward" or "buildbot"
    target: Any  # the argv list, the URL, the forward destination or the buildbot table
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout", 3600))

    @property
    def concurrency(self) -> int:
        return int(self.options.get("concurrency", 1))

    @property
    def remote_names(self) -> list[str]:
        """The builder names a forwarded job carries for this builder: what the receiving
        master calls it (``builders``, default this builder's own name)."""
        if self.kind == "buildbot":
            return list(self.target.get("builders") or [self.name])
        return list(self.options.get("builders") or [self.name])

    @property
    def destination(self) -> str | None:
        """Where a forward or buildbot builder delivers (builders sharing one are sent the
        job once, together); None for builders that run here."""
        if self.kind == "forward":
            return str(self.target)
        if self.kind == "buildbot":
            return str(self.target["jobdir"])
        return None


@dataclass
class UserPolicy:
    name: str
    builders: list[str] = field(default_factory=lambda: ["*"])
    branches: list[str] = field(default_factory=lambda: ["*"])
    max_pending: int | None = None
    max_job_size: int | None = None
    keys: list[str] = field(default_factory=list)
    password_hash: str | None = None
    pb_secret_file: str | None = None  # the PB door's password-equivalent (tryssh passwd --pb)


@dataclass
class Config:
    path: str
    jobdir: str
    state_dir: str
    log_dir: str
    audit_log: str
    max_job_size: int = defaults.MAX_JOB_SIZE
    keep_days: float | None = None
    builders: dict[str, Builder] = field(default_factory=dict)
    users: dict[str, UserPolicy] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
    consume: dict[str, Any] = field(default_factory=dict)
    buildbot: dict[str, Any] = field(default_factory=dict)  # [buildbot]: api, token_file
    pb: dict[str, Any] | None = None  # the [pb] table; None: no PB door

    def user(self, name: str) -> UserPolicy | None:
        """The policy for *name*: its own table, else ``[users."*"]``, else None (refused)."""
        return self.users.get(name) or self.users.get("*")

    def hard_size_limit(self) -> int:
        """The largest job any user may send: a bigger file is garbage for everyone."""
        return max([self.max_job_size] + [u.max_job_size or 0 for u in self.users.values()])


def _type_name(t: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "a table", bool: "true or false"}  # fmt: skip
    if isinstance(t, tuple):
        return " or ".join(names[x] for x in t)
    return names[t]


def _check_table(path: str, where: str, table: dict[str, Any], schema: dict[str, Any]) -> None:
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"{path}: {where}{key}: unknown key")
        want = schema[key]
        # bool is an int in Python; a TOML true is never a valid number here.
        if (isinstance(value, bool) and want is not bool) or not isinstance(value, want):
            raise ConfigError(f"{path}: {where}{key}: must be {_type_name(want)}")


def _str_list(path: str, where: str, value: list[Any]) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {where}: must be a list of strings")
    return list(value)


def _positive(path: str, where: str, value: Any) -> None:
    # "not > 0" refuses nan too; inf would mean "never" where a limit was asked for.
    if value is not None and (not value > 0 or value == float("inf")):
        raise ConfigError(f"{path}: {where}: must be greater than 0 and finite")


def parse_max_startups(text: str, where: str = "max_startups") -> tuple[int, int, int]:
    """sshd's ``START:RATE:FULL`` (or one number, FULL) → (start, rate %, full)."""
    words = text.split(":")
    if len(words) == 1:
        words = [words[0], "100", words[0]]
    if len(words) != 3 or not all(w.isdigit() for w in words):
        raise ConfigError(f"{where}: expected START:RATE:FULL (e.g. 10:30:20), got {text!r}")
    start, rate, full = (int(w) for w in words)
    if not 0 < start <= full or not 0 < rate <= 100:
        raise ConfigError(f"{where}: expected 0 < START <= FULL and 0 < RATE <= 100, got {text!r}")
    return start, rate, full


def _builder_name(path: str, name: str) -> None:
    # The name becomes a directory under LOG_DIR/JOB/: "../../x" would write outside it.
    if not name or name.startswith(".") or "/" in name or not name.isprintable():
        raise ConfigError(
            f"{path}: builders.{name!r}: a builder name may not be empty, start with '.', "
            "or hold '/' or control characters"
        )


def load_config(path: str) -> Config:
    """Read and check the config file at *path*."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (TOML files are UTF-8)") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config_from_dict(data, path)


def config_from_dict(data: dict[str, Any], path: str = "<config>") -> Config:
    """Check a parsed config; relative paths are taken from the config file's directory."""
    _check_table(path, "", data, TOP_KEYS)
    base = os.path.dirname(os.path.abspath(path)) if path != "<config>" else os.getcwd()

    def resolve(value: str) -> str:
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))

    if "jobdir" not in data:
        raise ConfigError(f"{path}: jobdir: missing (the directory with tmp/, new/, cur/)")
    jobdir = resolve(data["jobdir"])
    config = Config(
        path=path,
        jobdir=jobdir,
        state_dir=resolve(data.get("state_dir", os.path.join(jobdir, defaults.STATE_DIR))),
        log_dir=resolve(data.get("log_dir", os.path.join(jobdir, defaults.LOG_DIR))),
        audit_log=resolve(data.get("audit_log", os.path.join(jobdir, defaults.AUDIT_LOG))),
        max_job_size=data.get("max_job_size", defaults.MAX_JOB_SIZE),
        keep_days=data.get("keep_days"),
    )
    _positive(path, "max_job_size", config.max_job_size)
    _positive(path, "keep_days", config.keep_days)

    for name, table in data.get("builders", {}).items():
        where = f"builders.{name}."
        _builder_name(path, name)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: builders.{name}: must be a table")
        _check_table(path, where, table, BUILDER_KEYS)
        kinds = [k for k in BUILDER_KINDS if k in table]
        if len(kinds) != 1:
            raise ConfigError(
                f"{path}: builders.{name}: needs exactly one of command, webhook, forward, buildbot"
            )
        kind = kinds[0]
        target = table[kind]
        if kind == "command":
            target = _str_list(path, where + "command", target)
            if not target:
                raise ConfigError(f"{path}: {where}command: must not be empty")
        if kind == "webhook" and not target.startswith(("http://", "https://")):
            raise ConfigError(f"{path}: {where}webhook: must be an http:// or https:// URL")
        if kind == "forward" and not target.startswith("ssh://"):
            target = resolve(target)
        if kind == "buildbot":
            target = _buildbot_table(path, where + "buildbot", dict(target), resolve)
        if "builders" in table:
            if kind != "forward":
                raise ConfigError(f"{path}: {where}builders: only for forward builders "
                                  "(a buildbot builder has buildbot.builders)")
            if not _str_list(path, where + "builders", table["builders"]):
                raise ConfigError(f"{path}: {where}builders: must not be empty")
        for key in ("secret_file", "workdir", "identity", "known_hosts"):
            if key in table:
                table[key] = resolve(table[key])
        _positive(path, where + "timeout", table.get("timeout"))
        _positive(path, where + "concurrency", table.get("concurrency"))
        if table.get("retries") is not None and table["retries"] < 0:
            raise ConfigError(f"{path}: {where}retries: must be 0 or more")
        if "env" in table and not all(isinstance(v, str) for v in table["env"].values()):
            raise ConfigError(f"{path}: {where}env: values must be strings")
        options = {k: v for k, v in table.items() if k not in BUILDER_KINDS}
        config.builders[name] = Builder(name=name, kind=kind, target=target, options=options)

    for name, table in data.get("users", {}).items():
        where = f"users.{name}."
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: users.{name}: must be a table")
        _check_table(path, where, table, USER_KEYS)
        user = UserPolicy(name=name)
        for key in ("builders", "branches", "keys"):
            if key in table:
                setattr(user, key, _str_list(path, where + key, table[key]))
        for key in ("max_pending", "max_job_size"):
            _positive(path, where + key, table.get(key))
            setattr(user, key, table.get(key))
        user.password_hash = table.get("password_hash")
        if "pb_secret_file" in table:
            user.pb_secret_file = resolve(table["pb_secret_file"])
        config.users[name] = user

    serve = data.get("serve", {})
    _check_table(path, "serve.", serve, SERVE_KEYS)
    if "listen" in serve:
        parse_listen(serve["listen"], f"{path}: serve.listen")
    for key in SERVE_POSITIVE:
        _positive(path, "serve." + key, serve.get(key))
    if "max_startups" in serve:
        parse_max_startups(serve["max_startups"], f"{path}: serve.max_startups")
    if "host_key" in serve:
        serve["host_key"] = resolve(serve["host_key"])
    config.serve = serve
    consume = data.get("consume", {})
    _check_table(path, "consume.", consume, CONSUME_KEYS)
    for key in CONSUME_POSITIVE:
        _positive(path, "consume." + key, consume.get(key))
    config.consume = consume
    if "pb" in data:
        pb = data["pb"]
        _check_table(path, "pb.", pb, PB_KEYS)
        for key in PB_POSITIVE:
            _positive(path, "pb." + key, pb.get(key))
        if "listen" in pb:
            host, _port = parse_listen(pb["listen"], f"{path}: pb.listen")
            if not pb.get("insecure_network") and not is_loopback(host):
                raise ConfigError(
                    f"{path}: pb.listen: {host} is not a loopback address and the PB wire is "
                    "plaintext; use 127.0.0.1 with an ssh -L tunnel, or insecure_network = true"
                )
        config.pb = pb
    buildbot = data.get("buildbot", {})
    _check_table(path, "buildbot.", buildbot, TOP_BUILDBOT_KEYS)
    if "api" in buildbot:
        _check_url(path, "buildbot.api", buildbot["api"])
    if "token_file" in buildbot:
        buildbot["token_file"] = resolve(buildbot["token_file"])
    config.buildbot = buildbot
    return config


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``; a name could resolve to anything."""
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(path: str, where: str, url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: {where}: must be an http:// or https:// URL")


def _buildbot_table(path: str, where: str, table: dict[str, Any], resolve: Any) -> dict[str, Any]:
    _check_table(path, where + ".", table, BUILDBOT_KEYS)
    for key in ("jobdir", "api"):
        if key not in table:
            raise ConfigError(f"{path}: {where}.{key}: missing")
    _check_url(path, where + ".api", table["api"])
    if not table["jobdir"].startswith("ssh://"):
        table["jobdir"] = resolve(table["jobdir"])
    if "token_file" in table:
        table["token_file"] = resolve(table["token_file"])
    if "builders" in table and not _str_list(path, where + ".builders", table["builders"]):
        raise ConfigError(f"{path}: {where}.builders: must not be empty")
    for key in ("poll_interval", "pickup_timeout", "retries"):
        if key == "retries" and table.get(key, 0) < 0:
            raise ConfigError(f"{path}: {where}.retries: must not be negative")
        if key != "retries":
            _positive(path, f"{where}.{key}", table.get(key))
    return table
