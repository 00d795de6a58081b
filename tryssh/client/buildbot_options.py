"""Read Buildbot's ``.buildbot/options`` file without ever running it.

Buildbot finds the file like this (``base.SubcommandOptions.loadOptionsFile``): ``.buildbot``
in the current directory, then in each parent (20 directories at most), then ``~/.buildbot``;
a directory not owned by the current user is skipped; the first ``options`` file found wins.
Buildbot then ``exec``\\ s it. tryssh parses it with :mod:`ast` instead and keeps only
top-level ``name = <literal>`` assignments; every other statement is reported, never run.
"""

from __future__ import annotations

import ast
import os
import shlex
from dataclasses import dataclass, field

from tryssh.errors import ConfigError

# Buildbot's TryOptions.buildbotOptions table, in its order: when two file names map to the
# same option, the later one wins (Buildbot rewrites the default once per table row).
BUILDBOT_OPTION_NAMES: tuple[tuple[str, str], ...] = (
    ("try_connect", "connect"),
    ("try_vc", "vc"),
    ("try_branch", "branch"),
    ("try_repository", "repository"),
    ("try_topdir", "topdir"),
    ("try_topfile", "topfile"),
    ("try_host", "host"),
    ("try_username", "username"),
    ("try_jobdir", "jobdir"),
    ("try_ssh", "ssh"),
    ("try_buildbotbin", "buildbotbin"),
    ("try_passwd", "passwd"),
    ("try_master", "master"),
    ("try_who", "who"),
    ("try_comment", "comment"),
    # deprecated spellings
    ("try_masterstatus", "master"),
    ("try_dir", "jobdir"),
    ("try_password", "passwd"),
)

# Names Buildbot's postOptions reads itself, plus tryssh's extras (try_port, try_properties).
_SPECIAL_NAMES = (
    "try_builders",
    "try_wait",
    "try_quiet",
    "masterstatus",
    "try_port",
    "try_properties",
)

KNOWN_NAMES: tuple[str, ...] = tuple(name for name, _ in BUILDBOT_OPTION_NAMES) + _SPECIAL_NAMES

MAX_LEVELS = 20  # Buildbot's "toomany": directories searched upwards, the start included


@dataclass
class BuildbotOptions:
    """What the options file says, in Buildbot's option names (``connect``, ``builders``, ...).

    ``path`` is the file that was read (None when there is none); ``warnings`` are one-line
    messages for the user: skipped directories, statements that were not run, bad values.
    """

    values: dict[str, object] = field(default_factory=dict)
    path: str | None = None
    warnings: list[str] = field(default_factory=list)


def search_path(start_dir: str, home: str | None = None) -> list[str]:
    """The ``.buildbot`` directories Buildbot would look at, in order."""
    here = os.path.abspath(start_dir)
    dirs = []
    for _ in range(MAX_LEVELS):
        dirs.append(os.path.join(here, ".buildbot"))
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    home_dir = home if home is not None else os.path.expanduser("~")
    dirs.append(os.path.join(home_dir, ".buildbot"))
    return dirs


def find_options_file(start_dir: str, home: str | None = None) -> tuple[str | None, list[str]]:
    """Return (first ``options`` file in a directory we own, warnings about skipped ones)."""
    warnings: list[str] = []
    uid = os.getuid()
    for d in search_path(start_dir, home):
        if not os.path.isdir(d):
            continue
        try:
            owner = os.stat(d).st_uid
        except OSError:
            continue
        if owner != uid:
            # Another user could plant options (a host, a jobdir) here: Buildbot skips it too.
            warnings.append(f"skipping {d} because you don't own it")
            continue
        path = os.path.join(d, "options")
        if os.path.exists(path):
            return path, warnings
    return None, warnings


def parse_options_text(
    source: bytes | str, filename: str = "options"
) -> tuple[dict[str, object], list[str]]:
    """Top-level ``name = literal`` assignments of a Python file, and warnings for the rest.

    Nothing is executed or imported: the text is parsed into a syntax tree, and only
    literal values (strings, numbers, lists, tuples, dicts, sets, booleans, None) are read.
    A name later assigned something that is not a literal is dropped, since Buildbot would
    have ended up with that computed value and tryssh cannot know it.
    """
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as err:
        raise ConfigError(f"{filename}: line {err.lineno}: syntax error: {err.msg}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{filename}: too deeply nested to parse") from None
    except ValueError as err:  # NUL bytes, bad encoding cookie
        raise ConfigError(f"{filename}: cannot parse: {err}") from None
    values: dict[str, object] = {}
    warnings: list[str] = []
    for node in tree.body:
        where = f"{filename}: line {node.lineno}"
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            continue  # a docstring: nothing to run, nothing to read
        if not isinstance(node, ast.Assign):
            dropped = sorted(n for n in _stored_names(node) if n in values)
            for name in dropped:
                values.pop(name)
            also = f"; {', '.join(dropped)} dropped" if dropped else ""
            warnings.append(
                f"{where}: {_describe(node)} ignored (the file is never executed){also}"
            )
            continue
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if len(names) != len(node.targets):
            for name in _stored_names(node):
                values.pop(name, None)
            warnings.append(f"{where}: assignment to something other than a plain name ignored")
            continue
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            for name in names:
                values.pop(name, None)
            warnings.append(
                f"{where}: {', '.join(names)} is not set to a literal value; ignored "
                "(the file is never executed)"
            )
            continue
        for name in names:
            if not name.startswith("__"):  # Buildbot drops dunder names too
                values[name] = value
    return values, warnings


def _stored_names(node: ast.AST) -> set[str]:
    """Names a statement would bind at module level if it were run (not inside functions)."""
    names: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(node, ast.Lambda):
        return names
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        names.add(node.id)
    for child in ast.iter_child_nodes(node):
        names |= _stored_names(child)
    return names


def _describe(node: ast.stmt) -> str:
    kinds = {
        ast.Import: "import",
        ast.ImportFrom: "import",
        ast.Expr: "expression",
        ast.AugAssign: "augmented assignment",
        ast.AnnAssign: "annotated assignment",
        ast.If: "if statement",
        ast.For: "for loop",
        ast.While: "while loop",
        ast.With: "with statement",
        ast.Try: "try statement",
        ast.FunctionDef: "function definition",
        ast.AsyncFunctionDef: "function definition",
        ast.ClassDef: "class definition",
        ast.Delete: "del statement",
    }
    for kind, text in kinds.items():
        if isinstance(node, kind):
            return text
    return f"{type(node).__name__.lower()} statement"


def _check(name: str, value: object, where: str, warnings: list[str]) -> object | None:
    """Return the value in the shape tryssh expects, or None (with a warning) if it is unusable."""
    if name == "try_builders":
        if isinstance(value, (list, tuple)) and all(isinstance(b, str) for b in value):
            return list(value)
        if isinstance(value, str):
            return [value]
        warnings.append(f"{where}: try_builders must be a list of strings; ignored")
        return None
    if name in ("try_wait", "try_quiet"):
        return bool(value)  # Buildbot only tests truthiness
    if name == "try_port":
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
            return value
        if isinstance(value, str) and value.isdigit() and 0 < int(value) < 65536:
            return int(value)
        warnings.append(f"{where}: try_port must be a port number; ignored")
        return None
    if name == "try_properties":
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        warnings.append(f"{where}: try_properties must be a dict with string keys; ignored")
        return None
    if isinstance(value, str):
        return value
    warnings.append(f"{where}: {name} must be a string; ignored")
    return None


def map_option_names(
    raw: dict[str, object], where: str = "options"
) -> tuple[dict[str, object], list[str]]:
    """Translate file names (``try_host``) into option names (``host``), Buildbot's way."""
    warnings: list[str] = []
    checked: dict[str, object] = {}
    for name in KNOWN_NAMES:
        if name in raw:
            value = _check(name, raw[name], where, warnings)
            if value is not None:
                checked[name] = value
    values: dict[str, object] = {}
    for file_name, option in BUILDBOT_OPTION_NAMES:
        if file_name in checked:
            values[option] = checked[file_name]
    if "master" not in values and "masterstatus" in checked:
        values["master"] = checked["masterstatus"]
    for file_name, option in (
        ("try_builders", "builders"),
        ("try_wait", "wait"),
        ("try_quiet", "quiet"),
        ("try_port", "port"),
        ("try_properties", "properties"),
    ):
        if file_name in checked:
            values[option] = checked[file_name]
    return values, warnings


def load_buildbot_options(start_dir: str, home: str | None = None) -> BuildbotOptions:
    """Find and read Buildbot's options file for a command run in ``start_dir``.

    ``home`` is the home directory (default: the current user's); its ``.buildbot`` is
    searched last. Names the file sets that tryssh does not know are ignored: the file also
    holds settings for other Buildbot commands.
    """
    path, warnings = find_options_file(start_dir, home)
    if path is None:
        return BuildbotOptions(values={}, path=None, warnings=warnings)
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    raw, parse_warnings = parse_options_text(source, filename=path)
    values, value_warnings = map_option_names(raw, where=path)
    return BuildbotOptions(
        values=values, path=path, warnings=warnings + parse_warnings + value_warnings
    )


# ssh(1) flags that take an argument (the ones tryssh does not use are skipped with it).
_SSH_FLAGS_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")


@dataclass
class SshCommand:
    """What tryssh takes from Buildbot's ``try_ssh``/``--ssh`` command (it never runs it)."""

    port: int | None = None
    identity: str | None = None
    login: str | None = None
    options: list[str] = field(default_factory=list)  # -o values, as written
    config: str | None = None  # -F
    jump: str | None = None  # -J
    ignored: list[str] = field(default_factory=list)  # words tryssh does not use


def parse_ssh_command(text: str) -> SshCommand:
    """Read ``ssh -p PORT -i KEY -l USER -o Opt=val ...`` the way ssh(1) would parse it.

    Raises ConfigError for text that is not an ssh command line (bad quoting, a bad port).
    """
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise ConfigError(f"cannot read the ssh command {text!r}: {err}") from None
    result = SshCommand()
    i = 1  # words[0] is the program; tryssh speaks SSH itself
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or len(word) < 2:
            result.ignored.append(word)
            i += 1
            continue
        flags = word[1:]
        j = 0
        while j < len(flags):
            flag = flags[j]
            if flag not in _SSH_FLAGS_WITH_ARG:
                result.ignored.append(f"-{flag}")
                j += 1
                continue
            value = flags[j + 1 :]
            if not value:
                i += 1
                if i >= len(words):
                    raise ConfigError(f"ssh command {text!r}: -{flag} needs a value")
                value = words[i]
            _take(result, flag, value, text)
            break
        i += 1
    return result


def _take(result: SshCommand, flag: str, value: str, text: str) -> None:
    if flag == "p":
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise ConfigError(f"ssh command {text!r}: bad port {value!r}")
        result.port = int(value)
    elif flag == "i":
        result.identity = value
    elif flag == "l":
        result.login = value
    elif flag == "o":
        result.options.append(value)
    elif flag == "F":
        result.config = value
    elif flag == "J":
        result.jump = value
    else:
        result.ignored.append(f"-{flag} {value}")
