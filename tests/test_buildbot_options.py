"""tryssh.client.buildbot_options: search order, no execution, Buildbot's name mapping."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh import errors
from tryssh.client.buildbot_options import (
    BuildbotOptions,
    load_buildbot_options,
    parse_options_text,
    search_path,
)

OTHER_UID = 65534  # nobody


def write_options(directory: Path, text: str) -> Path:
    bb = directory / ".buildbot"
    bb.mkdir(parents=True, exist_ok=True)
    path = bb / "options"
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


def test_literal_values_are_mapped_like_buildbot(tmp_path: Path, home: Path) -> None:
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    path = write_options(
        tmp_path / "project",
        """
'''My try settings.'''
try_connect = 'ssh'
try_host = "ci.example.com"
try_username = 'alice'
try_jobdir = '~/jobdir'
try_dir = 'jobdir-deprecated'          # deprecated spelling, later in Buildbot's table: wins
try_builders = ['linux', "mac"]
try_wait = 1
try_quiet = False
try_vc = 'git'
try_branch = 'main'
try_who = 'Alice <a@example.com>'
try_comment = "multi\\nline"
try_buildbotbin = '/usr/bin/buildbot'
masterstatus = 'ci.example.com:9989'
try_port = 2222
try_properties = {'a': '1', 'b': 2}
status_port = 8010                     # another command's setting: ignored
__secret = 'x'
""",
    )
    opts = load_buildbot_options(str(project), home=str(home))
    assert opts.path == str(path)
    assert opts.warnings == []
    assert opts.values == {
        "connect": "ssh",
        "host": "ci.example.com",
        "username": "alice",
        "jobdir": "jobdir-deprecated",
        "builders": ["linux", "mac"],
        "wait": True,
        "quiet": False,
        "vc": "git",
        "branch": "main",
        "who": "Alice <a@example.com>",
        "comment": "multi\nline",
        "buildbotbin": "/usr/bin/buildbot",
        "master": "ci.example.com:9989",
        "port": 2222,
        "properties": {"a": "1", "b": 2},
    }


def test_code_is_never_executed(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pwned = [tmp_path / f"PWNED{n}" for n in range(6)]
    write_options(
        tmp_path,
        f"""import os
os.system("touch {pwned[0]}")
x = open("{pwned[1]}", "w")
try_host = "good.example"
try_jobdir = __import__("os").system("touch {pwned[2]}")
try_connect = "ssh"
try_connect += "x"
exec("open('{pwned[3]}', 'w')")
if True:
    open("{pwned[4]}", "w")
def f():
    pass
try_who = f"{{open('{pwned[5]}', 'w')}}"
try_username = try_host
a, b = 1, 2
""",
    )
    opts = load_buildbot_options(str(tmp_path), home=str(home))
    for p in pwned:
        assert not p.exists(), f"{p.name}: the options file was executed"
    assert not (tmp_path / "PWNED").exists()
    # try_connect was changed by code tryssh did not run: its value is unknown, so dropped.
    assert opts.values == {"host": "good.example"}
    lines = sorted(int(w.split(": line ")[1].split(":")[0]) for w in opts.warnings)
    assert lines == [1, 2, 3, 5, 7, 8, 9, 11, 13, 14, 15]
    assert all(w.startswith(f"{opts.path}: line ") for w in opts.warnings)
    assert any("import ignored" in w for w in opts.warnings)
    assert any(
        "augmented assignment ignored" in w and "try_connect dropped" in w for w in opts.warnings
    )
    assert any("try_jobdir is not set to a literal" in w for w in opts.warnings)


def test_computed_value_after_literal_drops_the_name(tmp_path: Path, home: Path) -> None:
    write_options(tmp_path, "try_host = 'a'\ntry_host = 'a' + suffix\n")
    opts = load_buildbot_options(str(tmp_path), home=str(home))
    assert "host" not in opts.values
    assert len(opts.warnings) == 1 and "line 2" in opts.warnings[0]


def test_wrong_types_are_warned_and_dropped(tmp_path: Path, home: Path) -> None:
    write_options(
        tmp_path,
        "try_host = 42\ntry_builders = [1]\ntry_port = 'x'\ntry_properties = [1]\n"
        "try_builders = 'single'\n",
    )
    opts = load_buildbot_options(str(tmp_path), home=str(home))
    assert opts.values == {"builders": ["single"]}
    assert len(opts.warnings) == 3
    assert any("try_host must be a string" in w for w in opts.warnings)


def test_search_order_first_file_wins_and_home_last(tmp_path: Path, home: Path) -> None:
    top = tmp_path / "a"
    deep = top / "b" / "c"
    deep.mkdir(parents=True)
    write_options(home, "try_host = 'from-home'\n")
    assert load_buildbot_options(str(deep), home=str(home)).values == {"host": "from-home"}
    write_options(top, "try_host = 'from-a'\n")
    assert load_buildbot_options(str(deep), home=str(home)).values == {"host": "from-a"}
    write_options(deep, "try_username = 'deep'\n")  # first file wins: no merging
    assert load_buildbot_options(str(deep), home=str(home)).values == {"username": "deep"}
    # A .buildbot directory without an options file does not stop the search.
    (deep / ".buildbot" / "options").unlink()
    assert load_buildbot_options(str(deep), home=str(home)).values == {"host": "from-a"}


def test_search_path_is_buildbots(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*[f"d{n}" for n in range(30)])
    paths = search_path(str(deep), home="/home/x")
    assert len(paths) == 21  # 20 levels upwards, then the home directory
    assert paths[0] == str(deep / ".buildbot")
    assert paths[1] == str(deep.parent / ".buildbot")
    assert paths[-1] == "/home/x/.buildbot"
    assert search_path("/", home="/h") == ["/.buildbot", "/h/.buildbot"]


def test_directories_of_other_users_are_skipped(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = tmp_path / "work"
    start.mkdir()
    theirs = write_options(start, "try_host = 'planted'\n").parent
    write_options(tmp_path, "try_host = 'mine'\n")
    if os.getuid() == 0:
        os.chown(theirs, OTHER_UID, OTHER_UID)
    else:  # not root: make every directory but ours look foreign instead
        mine = os.stat(theirs).st_uid
        real_stat = os.stat

        def fake_stat(p: str | os.PathLike[str], *a: object, **kw: object) -> os.stat_result:
            st_ = real_stat(p, *a, **kw)  # type: ignore[arg-type]
            if os.fspath(p) == str(theirs):
                fields = list(st_)
                fields[4] = mine + 1
                return os.stat_result(fields)
            return st_

        monkeypatch.setattr(os, "stat", fake_stat)
    opts = load_buildbot_options(str(start), home=str(home))
    assert opts.values == {"host": "mine"}
    assert opts.warnings == [f"skipping {theirs} because you don't own it"]


def test_no_file_and_syntax_error(tmp_path: Path, home: Path) -> None:
    assert load_buildbot_options(str(tmp_path), home=str(home)) == BuildbotOptions({}, None, [])
    write_options(tmp_path, "try_host = 'unterminated\n")
    with pytest.raises(errors.ConfigError, match="line 1"):
        load_buildbot_options(str(tmp_path), home=str(home))


def test_same_answer_as_real_buildbot(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a file of literals, tryssh reads what buildbot's own TryOptions reads."""
    runner = pytest.importorskip("buildbot.scripts.runner")
    write_options(
        tmp_path,
        "try_connect = 'ssh'\ntry_host = 'h'\ntry_master = 'm:1'\ntry_masterstatus = 'ms:2'\n"
        "try_jobdir = 'j1'\ntry_dir = 'j2'\ntry_passwd = 'p1'\ntry_password = 'p2'\n"
        "try_builders = ['b1', 'b2']\ntry_wait = True\ntry_quiet = 1\ntry_who = 'w'\n"
        "try_buildbotbin = 'bb'\ntry_topdir = '/t'\ntry_ssh = 'ssh -x'\n",
    )
    monkeypatch.chdir(tmp_path)
    theirs = runner.TryOptions()
    theirs.parseOptions([])
    ours = load_buildbot_options(str(tmp_path), home=str(home)).values
    assert ours
    for key, value in ours.items():
        assert theirs[key] == value, key


IDENT = st.text(string.ascii_letters + "_", min_size=1, max_size=10).filter(
    lambda s: not s.startswith("__") and s not in {"True", "False", "None"}
)
LITERAL = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(IDENT, LITERAL), max_size=8))
def test_literal_parsing_matches_python(assignments: list[tuple[str, object]]) -> None:
    import keyword

    assignments = [(n, v) for n, v in assignments if not keyword.iskeyword(n)]
    text = "".join(f"{name} = {value!r}\n" for name, value in assignments)
    ours, warnings = parse_options_text(text)
    expected: dict[str, object] = {}
    exec(compile(text, "options", "exec"), {"__builtins__": {}}, expected)  # noqa: S102 (literals only)
    assert warnings == []
    assert ours == expected
