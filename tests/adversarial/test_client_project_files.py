"""A cloned repository's files must never choose what runs on the server with your key.

The server here is a real sshd whose authorized key has NO forced command, so any remote
command would run: the attack succeeds exactly when the marker file appears.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sshd import Sshd
from test_client_ssh import World, ok

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def world(tmp_path: Path, sshd_factory: Callable[..., Sshd]) -> World:
    return World(tmp_path, sshd_factory)


def open_server(world: World) -> Sshd:
    """An sshd that runs whatever command the client asks for (no forced command)."""
    server = world.sshd(world.key.public_line)
    world.known_hosts(server)
    return server


def hostile(marker: Path) -> str:
    return f"sh -c 'touch {marker}' x"


def test_project_toml_cannot_set_the_remote_command(world: World) -> None:
    server = open_server(world)
    marker = world.tmp / "pwned-toml"
    # A TOML basic string: double quotes escaped.
    value = hostile(marker).replace('"', '\\"')
    (world.repo / ".tryssh.toml").write_text(
        f'[try]\nhost = "{server.host}"\nport = {server.port}\ntryserver_cmd = "{value}"\n'
    )
    result = world.tryssh("try", "-u", server.user, "-i", world.key.private_path)
    ok(result, 78)
    err = result.stderr.decode()
    assert ".tryssh.toml" in err and "tryserver_cmd" in err and "not allowed" in err
    assert not marker.exists()


def test_project_buildbot_options_cannot_set_buildbotbin(world: World) -> None:
    server = open_server(world)
    marker = world.tmp / "pwned-options"
    (world.repo / ".buildbot").mkdir()
    (world.repo / ".buildbot" / "options").write_text(
        f"try_host = {server.host!r}\ntry_port = {server.port}\n"
        f"try_buildbotbin = {hostile(marker)!r}\n"
    )
    result = world.tryssh("try", "-u", server.user, "-i", world.key.private_path)
    err = result.stderr.decode()
    assert "try_buildbotbin ignored" in err
    # The host came from the project's file: the output says so.
    assert f"host {server.host} set by {world.repo / '.buildbot' / 'options'}" in err
    assert not marker.exists()
    # The default program ran instead ('buildbot tryserver' is not installed there).
    assert result.returncode != 0


@pytest.mark.parametrize("value", [
    "sh -c 'id' x", "tryserver; id", "tryserver --jobdir /tmp", "$(id)tryserver",
    "buildbot tryserver extra", "/bin/sh", "-oProxyCommand=tryserver", "tryserver|id",
])
def test_user_file_and_command_line_only_name_a_program(world: World, value: str) -> None:
    # Refused before any connection: no server needed (port 9 on loopback would refuse).
    result = world.tryssh("try", "--host", "127.0.0.1:9", "--tryserver-cmd", value)
    ok(result, 64)
    assert "not allowed" in result.stderr.decode()
    xdg = world.home / ".config" / "tryssh"
    xdg.mkdir(parents=True, exist_ok=True)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    (xdg / "config.toml").write_text(f'[try]\ntryserver_cmd = "{escaped}"\n')
    result = world.tryssh("try", "--host", "127.0.0.1:9")
    ok(result, 78)
    assert "not allowed" in result.stderr.decode()


def test_accepted_program_names() -> None:
    from tryssh.client.clientconfig import remote_program

    for good in ("buildbot", "tryserver", "/opt/venv/bin/tryserver", "~/bin/buildbot",
                 "buildbot tryserver", "/usr/local/bin/buildbot tryserver"):
        assert remote_program(good) == good


@pytest.mark.parametrize("line", [
    'ssh_options = ["ProxyCommand=touch {marker}"]',
    'ssh_config = "evil_config"',
    'proxy_jump = "attacker.example"',
    'identity = "/tmp/their_key"',
])
def test_project_toml_cannot_choose_programs_keys_or_paths(world: World, line: str) -> None:
    marker = world.tmp / "pwned-proxy"  # a ProxyCommand runs locally: no server needed
    (world.repo / "evil_config").write_text(f"Host *\n  ProxyCommand touch {marker}\n")
    (world.repo / ".tryssh.toml").write_text(
        '[try]\nhost = "127.0.0.1"\nport = 9\n' + line.format(marker=marker) + "\n")
    result = world.tryssh("try", "-i", world.key.private_path)
    ok(result, 78)
    assert "not allowed in a project file" in result.stderr.decode()
    assert not marker.exists()


def test_host_that_looks_like_an_option_is_refused(world: World) -> None:
    result = world.tryssh("try", "--host", "ssh://-oProxyCommand=id@x")
    ok(result, 64)
    assert "bad host" in result.stderr.decode()
