"""tryssh.client.clientconfig: TOML files, checks, and precedence over Buildbot's options file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tryssh import errors
from tryssh.client.clientconfig import (
    COMMAND_LINE,
    KEYS,
    find_project_config,
    load_config_file,
    resolve_client_options,
    user_config_path,
)

OTHER_UID = 65534


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # for '~' in paths
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def git_init(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)


def test_precedence_cli_project_user_buildbot(tmp_path: Path, env: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    git_init(repo)
    cwd = repo / "src" / "deep"
    cwd.mkdir(parents=True)
    bb = write(
        Path(env["HOME"]) / ".buildbot" / "options",
        "try_host = 'bb-host'\ntry_port = 1\ntry_who = 'bb-who'\ntry_builders = ['bb']\n"
        "try_jobdir = 'bb-jobdir'\ntry_buildbotbin = '/opt/bb/bin/buildbot'\ntry_ssh = 'ssh -v'\n",
    )
    user = write(
        Path(env["XDG_CONFIG_HOME"]) / "tryssh" / "config.toml",
        '[try]\nhost = "user-host"\nport = 2\nwho = "user-who"\nidentity = "keys/id"\n',
    )
    project = write(repo / ".tryssh.toml", '[try]\nhost = "project-host"\nbuilders = []\n')

    cli = {"host": None, "port": 3, "builders": (), "wait": None, "dryrun": True}
    res = resolve_client_options(cli, str(cwd), env=env)

    assert res.values["host"] == "project-host" and res.sources["host"] == str(project)
    assert res.values["port"] == 3 and res.sources["port"] == COMMAND_LINE
    assert res.values["who"] == "user-who" and res.sources["who"] == str(user)
    assert res.values["jobdir"] == "bb-jobdir" and res.sources["jobdir"] == str(bb)
    assert res.values["tryserver_cmd"] == "/opt/bb/bin/buildbot"  # Buildbot's buildbotbin
    # An empty list in a file is a value (it hides lower layers); on the command line it
    # means "not given" (Buildbot treats [] as missing too).
    assert res.values["builders"] == [] and res.sources["builders"] == str(project)
    assert res.values["identity"] == str(user.parent / "keys" / "id")
    assert res.values["dryrun"] is True and res.sources["dryrun"] == COMMAND_LINE
    assert "wait" not in res.values
    assert res.get("timeout", 30) == 30
    # try_ssh is read, never run: what tryssh cannot use from it is named.
    assert any("try_ssh: -v not used" in w for w in res.warnings)

    res = resolve_client_options({"host": "cli-host", "builders": ("a", "b")}, str(cwd), env=env)
    assert res.values["host"] == "cli-host" and res.values["builders"] == ["a", "b"]


def test_no_files_at_all(tmp_path: Path, env: dict[str, str]) -> None:
    res = resolve_client_options({}, str(tmp_path), env=env)
    assert res.values == {} and res.sources == {} and res.warnings == []


def test_every_key_with_its_type(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        """
[try]
connect = "ssh"
host = "ci.example.com"
port = 2222
username = "alice"
jobdir = "~/jobs"
identity = "/keys/id_ed25519"
buildbotbin = "/usr/bin/tryserver"
builders = ["linux", "mac"]
branch = "main"
repository = "https://git.example.com/r.git"
project = "proj"
who = "Alice"
comment = "two\\nlines"
properties = { owner = "alice", retries = 2, fast = true }
patchlevel = 1
vc = "git"
wait = true
quiet = false
accept_new_host_key = true
known_hosts = "~/kh"
timeout = 12
ssh_options = ["ConnectTimeout=5"]
ssh_config = "ssh/config"
proxy_jump = "jump@bastion:2222"
topdir = "/src/project"
follow = true
tail_lines = 50
""",
    )
    values = load_config_file(str(path))
    assert set(values) == set(KEYS)
    assert values["follow"] is True and values["tail_lines"] == 50
    assert values["tryserver_cmd"] == "/usr/bin/tryserver"
    assert values["jobdir"] == "~/jobs"  # a remote path: not expanded here
    assert values["known_hosts"] == os.path.expanduser("~/kh")
    assert values["timeout"] == 12.0
    assert values["ssh_config"] == str(tmp_path / "ssh" / "config")
    assert values["properties"] == {"owner": "alice", "retries": 2, "fast": True}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[try]\nhots = 'x'\n", "hots: unknown key"),
        ("host = 'x'\n", "unknown key or table 'host'"),
        ("[tryy]\nhost = 'x'\n", "unknown key or table 'tryy'"),
        ("try = 3\n", "must be a table"),
        ("[try]\nport = '22'\n", "port: must be an integer"),
        ("[try]\nport = 70000\n", "port: must be from 1 to 65535"),
        ("[try]\nport = true\n", "port: must be an integer"),
        ("[try]\nhost = 5\n", "host: must be a string"),
        ("[try]\nhost = '-oProxyCommand=x'\n", "host: must not start with '-'"),
        ("[try]\nusername = ''\n", "username: must not be empty"),
        ('[try]\nbranch = "a\\nb"\n', "branch: must not contain control characters"),
        ("[try]\nbuilders = 'linux'\n", "builders: must be a list"),
        ("[try]\nbuilders = ['a', 1]\n", "builders: must be a list of non-empty"),
        ("[try]\nwait = 'yes'\n", "wait: must be true or false"),
        ("[try]\npatchlevel = -1\n", "patchlevel: must be 0 or more"),
        ("[try]\ntimeout = 0\n", "timeout: must be a positive"),
        ("[try]\nproperties = ['a']\n", "properties: must be a table"),
        ("[try]\nproperties = { a = [1] }\n", "property 'a' must be a string, number"),
        ("[try]\ntryserver_cmd = 'tryserver'\nbuildbotbin = 'buildbot'\n",
         "buildbotbin: set twice"),
        ("[try]\nhost = \n", "invalid TOML"),
        ("[try]\nssh_options = ['Ciphers=none']\n", "tryssh does not support 'Ciphers'"),
    ],
)
def test_bad_files_name_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(errors.ConfigError) as info:
        load_config_file(str(path))
    assert info.value.exit_code == errors.EX_CONFIG
    assert info.value.message.startswith(f"{path}: ")
    assert message in info.value.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[try]\nwho = 'Jos\xe9'\n")
    with pytest.raises(errors.ConfigError, match="not UTF-8"):
        load_config_file(str(path))


@pytest.mark.parametrize("key", ["identity", "known_hosts", "accept_new_host_key"])
def test_project_file_cannot_choose_whom_to_trust(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    repo = tmp_path / "repo"
    git_init(repo)
    value = "true" if key == "accept_new_host_key" else '"/tmp/evil"'
    write(repo / ".tryssh.toml", f"[try]\n{key} = {value}\n")
    with pytest.raises(errors.ConfigError, match=f"{key}: not allowed in a project file"):
        resolve_client_options({}, str(repo), env=env)
    # The same key is fine in the user's own file.
    user = write(Path(user_config_path(env)), f"[try]\n{key} = {value}\n")
    assert key in load_config_file(str(user))


def test_project_file_search_stops_at_the_working_copy_top(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    write(outer / ".tryssh.toml", "[try]\nhost = 'outer'\n")
    repo = outer / "repo"
    git_init(repo)
    (repo / "a" / "b").mkdir(parents=True)
    assert find_project_config(str(repo / "a" / "b")) is None  # outside the repo: not used
    inner = write(repo / "a" / ".tryssh.toml", "[try]\n")
    assert find_project_config(str(repo / "a" / "b")) == str(inner)
    inner.unlink()
    top = write(repo / ".tryssh.toml", "[try]\n")
    assert find_project_config(str(repo / "a" / "b")) == str(top)
    # Not in any working copy: walk to the filesystem root.
    (outer / "plain" / "x").mkdir(parents=True)
    assert find_project_config(str(outer / "plain" / "x")) == str(outer / ".tryssh.toml")
    # hg and svn tops stop the walk too.
    for marker in (".hg", ".svn"):
        other = outer / f"wc{marker}"
        (other / marker).mkdir(parents=True)
        assert find_project_config(str(other)) is None


def test_user_config_path_follows_xdg(tmp_path: Path) -> None:
    assert user_config_path({"HOME": "/h", "XDG_CONFIG_HOME": "/x"}) == "/x/tryssh/config.toml"
    assert user_config_path({"HOME": "/h"}) == "/h/.config/tryssh/config.toml"
    # A relative XDG_CONFIG_HOME is invalid per the spec and ignored.
    assert user_config_path({"HOME": "/h", "XDG_CONFIG_HOME": "rel"}) == (
        "/h/.config/tryssh/config.toml"
    )


def test_files_of_other_users_are_skipped(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "shared" / "work"
    work.mkdir(parents=True)
    planted = write(tmp_path / "shared" / ".tryssh.toml", "[try]\nhost = 'attacker'\n")
    write(Path(user_config_path(env)), "[try]\nhost = 'mine'\n")
    if os.getuid() == 0:
        os.chown(planted, OTHER_UID, OTHER_UID)
    else:
        # Files we own look foreign to a different uid (root-owned files stay trusted).
        uid = os.getuid() + 1
        monkeypatch.setattr(os, "getuid", lambda: uid)
    res = resolve_client_options({}, str(work), env=env)
    if os.getuid() == 0:
        assert res.values["host"] == "mine"
        assert res.warnings == [f"skipping {planted} because you don't own it"]
    else:
        assert "host" not in res.values
        assert f"skipping {planted} because you don't own it" in res.warnings


def test_bad_buildbot_values_are_warnings_not_errors(tmp_path: Path, env: dict[str, str]) -> None:
    write(
        Path(env["HOME"]) / ".buildbot" / "options",
        "try_host = '-oProxyCommand=evil'\ntry_port = 22\nimport os\n",
    )
    res = resolve_client_options({}, str(tmp_path), env=env)
    assert res.values == {"port": 22}
    assert any("host must not start with '-'" in w for w in res.warnings)
    assert any("import ignored" in w for w in res.warnings)
