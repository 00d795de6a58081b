"""tryssh's client configuration: TOML files, Buildbot's options file and the command line.

Precedence, highest first: command line (values that are not None) > project file
(``.tryssh.toml``, found walking up from the current directory to the working copy's top)
> user file (``$XDG_CONFIG_HOME/tryssh/config.toml``) > Buildbot's ``.buildbot/options``.
A key is taken whole from the highest layer that sets it (lists and tables are not merged).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tryssh.client.buildbot_options import load_buildbot_options, parse_ssh_command
from tryssh.client.vcs import MARKERS
from tryssh.errors import ConfigError, UsageError

PROJECT_FILE = ".tryssh.toml"
TABLE = "try"
COMMAND_LINE = "command line"

# The keys of the [try] table (README.rst, "Client configuration").
KEYS: tuple[str, ...] = (
    "connect",
    "host",
    "port",
    "username",
    "jobdir",
    "identity",
    "tryserver_cmd",
    "builders",
    "branch",
    "repository",
    "project",
    "who",
    "comment",
    "properties",
    "patchlevel",
    "vc",
    "wait",
    "quiet",
    "accept_new_host_key",
    "known_hosts",
    "timeout",
    "ssh_options",
    "ssh_config",
    "proxy_jump",
    "topdir",
    "follow",
    "tail_lines",
)
ALIASES = {"buildbotbin": "tryserver_cmd"}

# A project file comes with the source tree, i.e. from whoever can push to it. It may say
# where the project's try server is (a host, builders: Buildbot's convention), but not which
# key to use, which host keys to trust, or what to run on the server: otherwise a cloned
# repository could redirect a patch to a look-alike server or run commands as the developer.
_TRUST = "it decides whom to trust"
PROJECT_FORBIDDEN: dict[str, str] = {
    "identity": _TRUST,
    "known_hosts": _TRUST,
    "accept_new_host_key": _TRUST,
    "tryserver_cmd": "it decides what runs on the server with your key",
    "ssh_options": "ssh options can run local commands and choose keys",
    "ssh_config": "an ssh config can run local commands and choose keys",
    "proxy_jump": "it decides which hosts see your keys",
}
# The remote program: one path word naming a tryserver or buildbot, optionally followed by
# the word "tryserver" (Buildbot's ``buildbot tryserver``). No shell syntax, no arguments.
_PROGRAM_WORD = re.compile(r"[A-Za-z0-9._+~/-]*(?:tryserver|buildbot)")

# Buildbot option names -> tryssh keys. The rest of Buildbot's options do not apply.
_FROM_BUILDBOT = {
    "connect": "connect",
    "vc": "vc",
    "branch": "branch",
    "repository": "repository",
    "host": "host",
    "username": "username",
    "jobdir": "jobdir",
    "who": "who",
    "comment": "comment",
    "builders": "builders",
    "wait": "wait",
    "quiet": "quiet",
    "port": "port",
    "properties": "properties",
    "buildbotbin": "tryserver_cmd",
    "topdir": "topdir",
    "ssh": "",  # read by _from_try_ssh
}


@dataclass
class ResolvedOptions:
    """The merged options: ``values[key]``, where each came from (``sources[key]``: a file path
    or ``"command line"``), and one-line warnings for the user. Unset keys are absent."""

    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)


# --------------------------------------------------------------------------- value checks


class _Bad(Exception):
    """A value of the wrong type or range; the message completes 'key ...: '."""


def _has_control(text: str, allowed: str = "") -> bool:
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, not {_show(value)}")
    if _has_control(value):
        raise _Bad("must not contain control characters")
    return value


def _name(value: object) -> str:
    # Host and user names end up on an ssh command line: an option there would be obeyed.
    text = _string(value)
    if not text:
        raise _Bad("must not be empty")
    if text.startswith("-"):
        raise _Bad("must not start with '-'")
    return text


def _comment(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, not {_show(value)}")
    if _has_control(value, "\n\t"):
        raise _Bad("must not contain control characters other than newline and tab")
    return value


def remote_program(value: object) -> str:
    """Check a ``tryserver_cmd``: ``[PATH/]…tryserver`` or ``[PATH/]…buildbot [tryserver]``."""
    text = _string(value)
    words = text.split()
    program = words[0] if words else ""
    if (
        1 <= len(words) <= 2
        and _PROGRAM_WORD.fullmatch(program)
        and not program.startswith("-")
        and (len(words) == 1 or (words[1] == "tryserver" and program.endswith("buildbot")))
    ):
        return text
    raise _Bad(
        f"{text!r} is not allowed: the remote command must be one path ending in 'tryserver' "
        "or 'buildbot' (optionally followed by 'tryserver'), with no other words"
    )


def check_remote_program(value: str) -> str:
    """:func:`remote_program` for the command line: a usage error (64) when refused."""
    try:
        return remote_program(value)
    except _Bad as bad:
        raise UsageError(f"--tryserver-cmd {bad}") from None


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, not {_show(value)}")
    return value


def _int_in(low: int, high: int | None) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be an integer, not {_show(value)}")
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise _Bad(f"must be {span}, not {value}")
        return value

    return check


def _strings(value: object) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise _Bad(f"must be a list of strings, not {_show(value)}")
    return [_string(item) for item in value]


def _ssh_options(value: object) -> list[str]:
    from tryssh.client.sshoptions import parse_ssh_option

    items = _strings(value)
    for item in items:
        try:
            parse_ssh_option(item)
        except UsageError as err:
            raise _Bad(err.message) from None
    return items


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"must be a number of seconds, not {_show(value)}")
    if not value > 0 or value != value or value == float("inf"):
        raise _Bad(f"must be a positive number of seconds, not {value}")
    return float(value)


def _builders(value: object) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise _Bad(f"must be a list of builder names, not {_show(value)}")
    names = []
    for item in value:
        if not isinstance(item, str) or not item or _has_control(item):
            raise _Bad(f"must be a list of non-empty builder names, not {_show(item)} in it")
        names.append(item)
    return names


def _properties(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Bad(f"must be a table of name = value, not {_show(value)}")
    props: dict[str, object] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise _Bad(f"property names must be non-empty strings, not {_show(k)}")
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise _Bad(f"property {k!r} must be a finite number")
        if not isinstance(v, (str, int, float, bool)):
            raise _Bad(f"property {k!r} must be a string, number or boolean, not {_show(v)}")
        props[k] = v
    return props


def _show(value: object) -> str:
    text = repr(value)
    kind = type(value).__name__
    return f"{kind} {text[:40]}{'...' if len(text) > 40 else ''}"


CONNECT_VALUES = ("ssh", "scp", "local", "pb")


def _connect(value: object) -> str:
    text = _string(value)
    if text not in CONNECT_VALUES:
        raise _Bad(f"must be one of ssh, scp, local (or Buildbot's pb), not {text!r}")
    return text


_CHECKS: dict[str, Callable[[object], object]] = {
    "connect": _connect,
    "host": _name,
    "port": _int_in(1, 65535),
    "username": _name,
    "jobdir": _string,
    "identity": _string,
    "tryserver_cmd": remote_program,
    "builders": _builders,
    "branch": _string,
    "repository": _string,
    "project": _string,
    "who": _string,
    "comment": _comment,
    "properties": _properties,
    "patchlevel": _int_in(0, None),
    "vc": _string,
    "wait": _bool,
    "quiet": _bool,
    "accept_new_host_key": _bool,
    "known_hosts": _string,
    "timeout": _seconds,
    "ssh_options": _ssh_options,
    "ssh_config": _string,
    "proxy_jump": _name,
    "topdir": _string,
    "follow": _bool,
    "tail_lines": _int_in(0, 100000),
}
_PATH_KEYS = ("identity", "known_hosts", "ssh_config", "topdir")


# --------------------------------------------------------------------------- files


def user_config_path(env: Mapping[str, str] = os.environ) -> str:
    """``$XDG_CONFIG_HOME/tryssh/config.toml``, by default ``~/.config/tryssh/config.toml``."""
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative value
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".config")
    return os.path.join(base, "tryssh", "config.toml")


def find_project_config(cwd: str) -> str | None:
    """The nearest ``.tryssh.toml`` from ``cwd`` up to the working copy's top directory.

    The walk stops at the first directory holding ``.git``, ``.hg`` or ``.svn`` (after
    looking there), or at the filesystem root when ``cwd`` is not in a working copy.
    """
    d = os.path.abspath(cwd)
    while True:
        candidate = os.path.join(d, PROJECT_FILE)
        if os.path.isfile(candidate):
            return candidate
        if any(os.path.exists(os.path.join(d, m)) for m in MARKERS.values()):
            return None
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def load_config_file(path: str, *, project: bool = False) -> dict[str, object]:
    """Read and check one TOML file; return its ``[try]`` keys (aliases resolved).

    Raises ConfigError naming the file, the key and the problem for anything unexpected:
    unknown tables or keys, wrong types, values out of range, a key set twice through an
    alias, or (in a project file) a security-sensitive key.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    import tomllib  # only when there is a file to read

    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    for key in doc:
        if key != TABLE:
            raise ConfigError(
                f"{path}: unknown key or table {key!r} (settings go in a [try] table)"
            )
    table = doc.get(TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: 'try' must be a table ([try])")
    values: dict[str, object] = {}
    base_dir = os.path.dirname(os.path.abspath(path))
    for raw_key, raw_value in table.items():
        key = ALIASES.get(raw_key, raw_key)
        if key not in _CHECKS:
            raise ConfigError(f"{path}: [try] {raw_key}: unknown key")
        if key in values:
            raise ConfigError(f"{path}: [try] {raw_key}: set twice (it is an alias of {key})")
        if project and key in PROJECT_FORBIDDEN:
            raise ConfigError(
                f"{path}: [try] {raw_key}: not allowed in a project file "
                f"({PROJECT_FORBIDDEN[key]}); set it in your user config or on the command line"
            )
        try:
            value = _CHECKS[key](raw_value)
        except _Bad as bad:
            raise ConfigError(f"{path}: [try] {raw_key}: {bad}") from None
        if key in _PATH_KEYS:
            # Relative to the file that names it, not to wherever tryssh happens to run.
            value = os.path.join(base_dir, os.path.expanduser(str(value)))
        values[key] = value
    return values


def _owned_ok(path: str, warnings: list[str]) -> bool:
    """Only files of the current user (or root) count: another user's file could redirect us."""
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return False
    if owner not in (os.getuid(), 0):
        warnings.append(f"skipping {path} because you don't own it")
        return False
    return True


def _from_buildbot(
    cwd: str, env: Mapping[str, str]
) -> tuple[dict[str, object], str | None, list[str]]:
    home = env.get("HOME") or os.path.expanduser("~")
    opts = load_buildbot_options(cwd, home=home)
    warnings = list(opts.warnings)
    values: dict[str, object] = {}
    # ~/.buildbot/options is the user's own; any other one came with a source tree.
    project = opts.path is not None and os.path.abspath(opts.path) != os.path.abspath(
        os.path.join(home, ".buildbot", "options")
    )
    for name, value in opts.values.items():
        key = _FROM_BUILDBOT.get(name)
        if key is None:
            warnings.append(f"{opts.path}: Buildbot's {name!r} setting is not used by tryssh")
            continue
        if key == "":
            continue
        _take_buildbot_value(key, value, f"try_{name}", opts.path, project, values, warnings)
    if isinstance(opts.values.get("ssh"), str) and opts.path is not None:
        _from_try_ssh(str(opts.values["ssh"]), opts.path, project, values, warnings)
    return values, opts.path, warnings


def _take_buildbot_value(
    key: str, value: object, label: str, path: str | None, project: bool,
    values: dict[str, object], warnings: list[str],
) -> None:
    """Check one value from Buildbot's options file into *values*; a bad or (in a project's
    file) forbidden one is a warning, never an error: the file is Buildbot's, not ours."""
    if project and key in PROJECT_FORBIDDEN:
        warnings.append(
            f"{path}: {label} ignored: a project's options file may not set it "
            f"({PROJECT_FORBIDDEN[key]}); set it in ~/.buildbot/options"
        )
        return
    try:
        values[key] = _CHECKS[key](value)
    except _Bad as bad:
        warnings.append(f"{path}: {label} {bad}; ignored")


def _from_try_ssh(
    text: str, path: str, project: bool, values: dict[str, object], warnings: list[str]
) -> None:
    """Take port, identity, login, -o, -F and -J from ``try_ssh`` (it is never run).

    try_port / try_username win over what try_ssh says. From a project's file only the
    port and the login are taken: the rest decides which keys and programs are used.
    """
    try:
        cmd = parse_ssh_command(text)
    except ConfigError as err:
        warnings.append(f"{path}: try_ssh: {err.message}; ignored")
        return
    found: dict[str, object] = {"port": cmd.port, "username": cmd.login}
    base = os.path.dirname(os.path.abspath(path))
    for key, value in (("identity", cmd.identity), ("ssh_config", cmd.config)):
        if value is not None:
            found[key] = os.path.join(base, os.path.expanduser(value))
    found["ssh_options"] = cmd.options or None
    found["proxy_jump"] = cmd.jump
    for key, value in found.items():
        if value is not None and key not in values:
            label = f"try_ssh's {key.replace('_', ' ')}"
            _take_buildbot_value(key, value, label, path, project, values, warnings)
    if cmd.ignored:
        warnings.append(
            f"{path}: try_ssh: {' '.join(cmd.ignored)} not used (tryssh speaks SSH itself; "
            "it takes -p, -i, -l, -o, -F and -J)"
        )


def resolve_client_options(
    cli: Mapping[str, object], cwd: str, env: Mapping[str, str] = os.environ
) -> ResolvedOptions:
    """Merge the command line with the config files for a command run in ``cwd``.

    ``cli`` uses the same key names (``buildbotbin`` is accepted for ``tryserver_cmd``); a
    value of None, or an empty list, means "not given". Command-line keys that are not config
    keys (``dryrun``, ``diff``, ...) are passed through unchanged.
    """
    resolved = ResolvedOptions()
    layers: list[tuple[str, dict[str, object]]] = []

    bb_values, bb_path, bb_warnings = _from_buildbot(cwd, env)
    resolved.warnings.extend(bb_warnings)
    if bb_path is not None:
        layers.append((bb_path, bb_values))

    user_path = user_config_path(env)
    if os.path.isfile(user_path) and _owned_ok(user_path, resolved.warnings):
        layers.append((user_path, load_config_file(user_path)))

    project_path = find_project_config(cwd)
    if project_path is not None and _owned_ok(project_path, resolved.warnings):
        layers.append((project_path, load_config_file(project_path, project=True)))

    cli_values: dict[str, object] = {}
    for raw_key, value in cli.items():
        key = ALIASES.get(raw_key, raw_key)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if key == "tryserver_cmd":
            check_remote_program(str(value))
        cli_values[key] = list(value) if isinstance(value, tuple) else value
    layers.append((COMMAND_LINE, cli_values))

    for source, values in layers:  # lowest first: later layers overwrite
        for key, value in values.items():
            resolved.values[key] = value
            resolved.sources[key] = source
    return resolved
