"""``tryssh try`` keeps ``buildbot try`` users' habits: its flag names, its options file
(literal-only, with ``try_ssh``, with Python code in it), ``--branch`` and ``try_quiet``."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from sshd import Sshd
from test_client_ssh import World, buildbot_parse, ok

from tryssh.core.jobfile import parse_job

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def world(tmp_path: Path, sshd_factory: Callable[..., Sshd]) -> World:
    return World(tmp_path, sshd_factory)


def local(world: World) -> list[str]:
    return ["-c", "local", "--jobdir", world.jobdir.path]


def options_file(directory: Path, text: str) -> Path:
    (directory / ".buildbot").mkdir(exist_ok=True)
    path = directory / ".buildbot" / "options"
    path.write_text(textwrap.dedent(text))
    return path


def test_buildbot_flag_names(world: World) -> None:
    dry = world.tryssh("try", *local(world), "--dryrun", "-w", "bob",
                       "--properties=a=1,b=2", "--property", "c=x,y")
    assert "not sent" in ok(dry) and world.delivered() == []
    result = world.tryssh("try", *local(world), "-w", "bob", "--properties=a=1,b=2",
                          "--property", "c=x,y", "-m", "master:8031", "--passwd", "secret",
                          "--username", "alice")
    ok(result)
    err = result.stderr.decode()
    assert "-m/--master is for Buildbot's PB door" in err and "--passwd" in err
    [path] = world.delivered()
    job = buildbot_parse(path)
    assert job["who"] == "bob" and job["properties"] == {"a": "1", "b": "2", "c": "x,y"}
    bad = world.tryssh("try", *local(world), "--properties=a")
    ok(bad, 64)
    assert "--properties needs KEY=VALUE" in bad.stderr.decode()


def test_topfile_is_explained_not_refused(world: World) -> None:
    """README: every flag of buildbot try is accepted; --topfile is not needed."""
    result = world.tryssh("try", *local(world), "--topfile=Makefile")
    ok(result)
    assert "--topfile is not needed" in result.stderr.decode()
    assert len(world.delivered()) == 1


def test_version_prints_the_version_and_sends_nothing(world: World) -> None:
    """buildbot try --version (Twisted's) prints the version: so does tryssh try (it said
    "No such option")."""
    from importlib.metadata import version

    result = world.tryssh("try", *local(world), "--version")
    assert ok(result).strip() == f"tryssh, version {version('tryssh')}"
    assert world.delivered() == []


def test_connect_pb_is_explained(world: World) -> None:
    result = world.tryssh("try", "-c", "pb", "-m", "master:8031")
    ok(result, 64)
    assert "buildbot try --connect=pb" in result.stderr.decode()
    (world.repo / ".tryssh.toml").write_text('[try]\nconnect = "bogus"\n')
    result = world.tryssh("try")
    ok(result, 78)
    assert "connect: must be one of ssh, scp, local" in result.stderr.decode()


def test_options_file_connect_pb_goes_on_with_ssh(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    options_file(world.home, f"""\
        try_connect = 'pb'
        try_master = 'ci:8031'
        try_host = '{server.host}'
        try_port = {server.port}
        """)
    result = world.tryssh("try", "-u", server.user, "-i", world.key.private_path)
    ok(result)
    assert "connect = 'pb'" in result.stderr.decode() and len(world.delivered()) == 1


def test_try_ssh_in_a_literal_only_options_file(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    options_file(world.home, f"""\
        # ~/.buildbot/options as a Buildbot user writes it
        try_connect = 'ssh'
        try_host = '{server.host}'
        try_ssh = 'ssh -p {server.port} -i {world.key.private_path} -l {server.user} \\
            -o IdentitiesOnly=yes'
        try_builders = ['unit', 'lint']
        try_who = 'alice@example.org'
        """)
    name = ok(world.tryssh("try")).strip()
    [path] = world.delivered()
    assert path.name == name and buildbot_parse(path)["builderNames"] == ["unit", "lint"]


def test_try_ssh_in_an_options_file_with_code(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    marker = world.tmp / "ran"
    options_file(world.home, f"""\
        import os
        os.system('touch {marker}')
        try_host = '{server.host}'
        try_ssh = 'ssh -p {server.port} -l {server.user} -i {world.key.private_path}'
        PORT = 22
        try_port = PORT   # computed: tryssh cannot know it, try_ssh's port stands
        try_builders = ['unit']
        if os.environ.get('CI'):
            try_builders = ['ci']
        """)
    result = world.tryssh("try")
    ok(result)
    err = result.stderr.decode()
    assert not marker.exists()
    assert "try_port is not set to a literal value" in err and "never executed" in err
    assert "try_builders dropped" in err
    assert buildbot_parse(world.delivered()[0])["builderNames"] is None


def test_try_ssh_in_a_projects_options_file_gives_only_port_and_login(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    marker = world.tmp / "proxied"
    options_file(world.repo, f"""\
        try_host = '{server.host}'
        try_ssh = ("ssh -p {server.port} -l {server.user} -i /tmp/their_key "
                   "-o 'ProxyCommand=touch {marker}'")
        """)
    result = world.tryssh("try", "-i", world.key.private_path)
    ok(result)
    err = result.stderr.decode()
    assert "try_ssh's identity ignored" in err and "try_ssh's ssh options ignored" in err
    assert not marker.exists() and len(world.delivered()) == 1


def test_ssh_flag_on_the_command_line(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    ok(world.tryssh("try", "--host", server.host, "--ssh",
                    f"ssh -p {server.port} -l {server.user} -i {world.key.private_path} -x"))
    assert len(world.delivered()) == 1


def test_get_builder_names(world: World) -> None:
    config = world.tmp / "tryssh.toml"
    config.write_text(textwrap.dedent(f"""\
        jobdir = "{world.jobdir.path}"
        [builders.unit]
        command = ["true"]
        [builders.lint]
        command = ["true"]
        [users.alice]
        builders = ["unit", "lint"]
        """))
    server = world.sshd(world.forced("--config", str(config)))
    world.known_hosts(server)
    out = ok(world.tryssh("try", *world.to(server), "--get-builder-names"))
    assert sorted(out.split()) == ["lint", "unit"] and world.delivered() == []


def test_topdir(world: World) -> None:
    elsewhere = world.tmp / "elsewhere"
    elsewhere.mkdir()
    ok(world.tryssh("try", *local(world), "--topdir", str(world.repo), cwd=elsewhere))
    [path] = world.delivered()
    assert b"world" in (parse_job(path.read_bytes()).patch_body or b"")


def test_try_quiet_never_hides_warnings(world: World) -> None:
    options_file(world.home, f"""\
        try_connect = 'local'
        try_jobdir = '{world.jobdir.path}'
        try_quiet = True
        try_builders = compute()
        """)
    result = world.tryssh("try")
    ok(result)
    assert "try_builders is not set to a literal value" in result.stderr.decode()


def test_branch_with_an_unpushed_base_warns_even_when_quiet(world: World) -> None:
    from helpers import git

    git(world.repo, "stash", "-q")
    git(world.repo, "checkout", "-q", "-b", "topic")
    (world.repo / "local.txt").write_text("not pushed\n")
    git(world.repo, "add", "local.txt")
    git(world.repo, "commit", "-q", "-m", "local")
    topic = git(world.repo, "rev-parse", "HEAD")
    git(world.repo, "stash", "pop", "-q")
    result = world.tryssh("try", *local(world), "--branch", "topic", "-q")
    ok(result)
    assert "not on any remote-tracking branch" in result.stderr.decode()
    job = buildbot_parse(world.delivered()[0])
    assert job["baserev"] == topic and job["branch"] == "topic"
    result = world.tryssh("try", *local(world), "--branch", "origin/main", "--json", "-q")
    receipt = json.loads(ok(result))
    job = buildbot_parse(Path(world.jobdir.new) / receipt["job"])
    assert job["baserev"] == world.base and job["branch"] == "main"
    assert "remote-tracking" not in result.stderr.decode()


def test_untracked_only_change_hints_at_untracked(world: World) -> None:
    from helpers import git

    git(world.repo, "checkout", "-q", "--", ".")
    (world.repo / "new.txt").write_text("new\n")
    result = world.tryssh("try", *local(world))
    ok(result, 65)
    assert "--untracked" in result.stderr.decode()
    ok(world.tryssh("try", *local(world), "--untracked"))
