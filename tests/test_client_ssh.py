"""``tryssh try`` / ``status`` / ``builders`` against a real OpenSSH sshd on loopback.

Every test runs the installed ``tryssh`` console script with HOME set to a temporary
directory, submits from real git repositories and checks what landed in the jobdir (with
Buildbot's own ``Try_Jobdir.parseJob``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import GIT_ENV, git, run, venv_bin, wait_until, write_master_config
from sshd import Sshd, make_user_key

from tryssh.core.jobdir import Jobdir

pytestmark = pytest.mark.timeout(180)


# A ProxyCommand: relays stdin/stdout to HOST PORT (argv), as `nc` would.
RELAY = """\
import socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := sys.stdin.buffer.read1(65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    sys.stdout.buffer.write(data); sys.stdout.buffer.flush()
"""


def buildbot_parse(path: Path) -> dict[str, object]:
    """The job as a real Buildbot master's Try_Jobdir reads it."""
    from buildbot.schedulers.trysched import Try_Jobdir

    with open(path, "rb") as f:
        return Try_Jobdir.parseJob(None, f)  # type: ignore[arg-type]


class World:
    """A developer's HOME, a git clone with a change, a jobdir and a key."""

    def __init__(self, tmp: Path, sshd_factory: Callable[..., Sshd]) -> None:
        self.tmp = tmp
        self.sshd_factory = sshd_factory
        self.home = tmp / "home"
        (self.home / ".ssh").mkdir(parents=True)
        self.jobdir = Jobdir(str(tmp / "jobdir")).create()
        self.key = make_user_key(tmp, "alice_key")
        self.tryserver = venv_bin("tryserver")
        # upstream (bare) <- seed commit; clone with an uncommitted change
        upstream = tmp / "upstream.git"
        seed = tmp / "seed"
        seed.mkdir()
        git(seed, "init", "-q", "-b", "main")
        (seed / "hello.txt").write_text("hello\n")
        (seed / "logo.bin").write_bytes(bytes(range(256)))
        git(seed, "add", ".")
        git(seed, "commit", "-q", "-m", "initial")
        git(tmp, "clone", "-q", "--bare", str(seed), str(upstream))
        self.repo = tmp / "work"
        git(tmp, "clone", "-q", str(upstream), str(self.repo))
        self.base = git(self.repo, "rev-parse", "HEAD")
        (self.repo / "hello.txt").write_text("hello\nworld\n")
        (self.repo / "logo.bin").write_bytes(bytes(range(255, -1, -1)) + b"\0\xff")

    def forced(self, *extra: str, user: str = "alice", key: str | None = None) -> str:
        cmd = shlex.join([self.tryserver, "--jobdir", self.jobdir.path, "--user", user, *extra])
        return f'restrict,command="{cmd}" {key or self.key.public_line}'

    def sshd(self, *lines: str) -> Sshd:
        return self.sshd_factory(lines or [self.forced()])

    def known_hosts(self, *servers: Sshd) -> Path:
        path = self.home / ".ssh" / "known_hosts"
        path.write_text("".join(s.known_hosts_line() + "\n" for s in servers))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env.update(HOME=str(self.home), **GIT_ENV)
        env.update(extra)
        return env

    def tryssh(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 90,
        cwd: Path | None = None,
        **env: str,
    ) -> subprocess.CompletedProcess[bytes]:
        return run(
            [venv_bin("tryssh"), *args],
            input=input,
            env=self.env(**env),
            timeout=timeout,
            cwd=cwd or self.repo,
        )

    def to(self, server: Sshd, *, key: bool = True) -> list[str]:
        """Connection options for *server* (known_hosts in HOME already)."""
        opts = ["--host", server.host, "--port", str(server.port), "-u", server.user]
        return [*opts, "-i", self.key.private_path] if key else opts

    def delivered(self) -> list[Path]:
        return [Path(self.jobdir.new) / n for n in self.jobdir.pending()]


@pytest.fixture
def world(tmp_path: Path, sshd_factory: Callable[..., Sshd]) -> World:
    return World(tmp_path, sshd_factory)


def ok(result: subprocess.CompletedProcess[bytes], code: int = 0) -> str:
    assert result.returncode == code, (
        f"exit {result.returncode}\nstdout: {result.stdout.decode()}\n"
        f"stderr: {result.stderr.decode()}"
    )
    return result.stdout.decode()


def check_patch_applies(world: World, job: dict[str, object]) -> None:
    """The job's patch applies with git apply at its base revision, binary included."""
    check = world.tmp / "check"
    git(world.tmp, "clone", "-q", str(world.tmp / "upstream.git"), str(check))
    git(check, "checkout", "-q", str(job["baserev"]))
    patch = world.tmp / "job.patch"
    patch.write_bytes(job["patch_body"])  # type: ignore[arg-type]
    git(check, "apply", f"-p{job['patch_level']}", str(patch))
    assert (check / "hello.txt").read_text() == "hello\nworld\n"
    assert (check / "logo.bin").read_bytes() == (world.repo / "logo.bin").read_bytes()


# -- ssh (forced command) -------------------------------------------------------------------


def test_ssh_submit_from_git_clone_is_read_by_buildbot(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    result = world.tryssh(
        "try",
        *world.to(server),
        "-b",
        "unit",
        "-b",
        "lint",
        "-C",
        "first try",
        "--property",
        "a=b=c",
    )
    name = ok(result).strip()
    err = result.stderr.decode()
    assert world.base in err and "2 files" in err and "+1 -0" in err.replace("  ", " ")
    [path] = world.delivered()
    assert path.name == name
    job = buildbot_parse(path)
    assert job["who"] == "alice"  # pinned by the forced command
    assert job["builderNames"] == ["unit", "lint"]
    assert job["comment"] == "first try" and job["properties"] == {"a": "b=c"}
    assert job["branch"] == "main" and job["baserev"] == world.base
    check_patch_applies(world, job)


def test_json_receipt(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    receipt = json.loads(ok(world.tryssh("try", *world.to(server), "-b", "unit", "--json", "-q",
                                          "--who", "alice")))  # fmt: skip
    [path] = world.delivered()
    assert receipt["job"] == path.name
    assert receipt["transport"] == "ssh" and receipt["builders"] == ["unit"]
    assert str(server.port) in receipt["host"]
    # who is already what the server pins: the job is delivered as it was sent
    assert receipt["size"] == path.stat().st_size
    assert receipt["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # The server pins who: the receipt says its size and sha256 are of the bytes sent.
    assert receipt["size_and_sha256_of"].startswith("the bytes sent;")


def test_remote_failure_gives_the_servers_code_and_message(world: World) -> None:
    server = world.sshd(world.forced("--max-size", "10"))
    world.known_hosts(server)
    result = world.tryssh("try", *world.to(server), "-b", "unit")
    ok(result, 65)
    err = result.stderr.decode()
    assert "tryssh:" in err and "10" in err and "exit 65" in err
    assert world.delivered() == []


def test_remote_refusal_of_a_command_is_64(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    result = world.tryssh("try", *world.to(server), "--tryserver-cmd", "rm -rf")
    ok(result, 64)
    assert "not allowed" in result.stderr.decode()


def test_diff_from_stdin_non_utf8_is_v6(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    patch = b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-\xff\n+\xfe\n"
    result = world.tryssh(
        "try",
        *world.to(server),
        "--diff",
        "-",
        "--baserev",
        "abc",
        "-p",
        "0",
        input=patch,
        cwd=world.tmp,
    )
    ok(result)
    [path] = world.delivered()
    assert path.read_bytes().startswith(b"1:6,")
    job = buildbot_parse(path)
    assert job["patch_body"] == patch and job["baserev"] == "abc" and job["patch_level"] == 0


# -- host keys ------------------------------------------------------------------------------


def test_unknown_host_key_refused_then_accepted_once(world: World) -> None:
    server = world.sshd()
    result = world.tryssh("try", *world.to(server))
    ok(result, 77)
    err = result.stderr.decode()
    fp = subprocess.run(
        ["ssh-keygen", "-lf", str(server.host_key_path) + ".pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert fp in err and "--accept-new-host-key" in err and len(err.strip().splitlines()) == 5
    assert world.delivered() == []
    ok(world.tryssh("try", *world.to(server), "--accept-new-host-key"))
    text = (world.home / ".ssh" / "known_hosts").read_text()
    assert f"[127.0.0.1]:{server.port} ssh-ed25519" in text
    # Now known: no flag needed.
    ok(world.tryssh("try", *world.to(server)))
    assert len(world.delivered()) == 2


def test_changed_host_key_refused_even_with_accept_new(world: World) -> None:
    server = world.sshd()
    other = world.sshd_factory([])  # another host key
    known = world.known_hosts()
    keytype, blob = other.host_key_pub.split()[:2]
    known.write_text(f"[127.0.0.1]:{server.port} {keytype} {blob}\n")
    result = world.tryssh("try", *world.to(server), "--accept-new-host-key")
    ok(result, 77)
    assert "CHANGED" in result.stderr.decode()
    assert known.read_text() == f"[127.0.0.1]:{server.port} {keytype} {blob}\n"
    assert world.delivered() == []


def test_revoked_host_key_refused(world: World) -> None:
    server = world.sshd()
    known = world.known_hosts(server)
    keytype, blob = server.host_key_pub.split()[:2]
    known.write_text(known.read_text() + f"@revoked * {keytype} {blob}\n")
    result = world.tryssh("try", *world.to(server))
    ok(result, 77)
    assert "REVOKED" in result.stderr.decode()


def test_known_hosts_option(world: World) -> None:
    server = world.sshd()
    extra = world.tmp / "kh"
    extra.write_text(server.known_hosts_line() + "\n")
    ok(world.tryssh("try", *world.to(server), "--known-hosts", str(extra)))


# An old host's DSA key, as long-lived known_hosts files still hold them: paramiko 4 and
# later cannot read the type (UnknownKeyType), OpenSSH skips such lines.
DSA_LINE = (
    "oldhost ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2N"
    "WPq/xfW6MPbLm1Vs14E7gB00b/JmYLdrmVClpJ+f6AR7ECLCT7up1/63xhv4O1fnxqimFQ8E+4P208UewwI1VBNaF"
    "pEy9nXzrith1yrv8iIDGZ3RSAHHAAAAFQCXYFCPFSMLzLKSuYKi64QL8Fgc9QAAAIEA9+GghdabPd7LvKtcNrhXuXm"
    "Ur7v6OuqC+VdMCz0HgmdRWVeOutRZT+ZxBxCBgLRJFnEj6EwoFhO3zwkyjMim4TwWeotUfI0o4KOuHiuzpnWRbqN/C"
    "/ohNWLx+2J6ASQ7zKTxvqhRkImog9/hWuWfBpKLZl6Ae1UlZAFMO/7PSSoAAACBAMUkiZ5mbUtKn1Hyap6eubhHWwX"
    "TfZ8i/zO1gLE7wAJkCOsNBB+uLLFZEsa2ZFnE1Qwxb4Nr3eJf6+yMIU5P4dTDO6G8PBYwwWZ/0q6A8NMgBeCOiFC3G"
    "l2YaEHFi8/9LYqNbWUGvc5iGm0gIb5Tiw1/0b1kvqjEF3MDzsmLIm+r"
)


def test_known_hosts_lines_paramiko_cannot_read_are_skipped_like_openssh_does(
    world: World,
) -> None:
    """An ssh-dss key of another host, a security-key type and a damaged RSA key (paramiko
    raises UnknownKeyType and OverflowError for them): before, any one of them anywhere in
    ~/.ssh/known_hosts stopped every tryssh try with a traceback."""
    server = world.sshd()
    known = world.known_hosts(server)
    damaged_rsa = "AAAAB3NzaC1yc2EAAAABgA=="  # "ssh-rsa", then an exponent of -128
    known.write_text(f"{DSA_LINE}\nskhost sk-ssh-ed25519@openssh.com AAAA\n"
                     f"badhost ssh-rsa {damaged_rsa}\n" + known.read_text())  # fmt: skip
    ok(world.tryssh("try", *world.to(server)))


# -- authentication and ~/.ssh/config -------------------------------------------------------


def start_agent(world: World, *keys: str) -> str:
    sock = str(world.tmp / "agent.sock")
    agent = subprocess.run(
        ["ssh-agent", "-a", sock], capture_output=True, text=True, check=True, timeout=30
    )
    pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    world.agent_pid = pid  # type: ignore[attr-defined]
    for key in keys:
        subprocess.run(
            ["ssh-add", key],
            env={**os.environ, "SSH_AUTH_SOCK": sock},
            capture_output=True,
            check=True,
            timeout=30,
        )
    return sock


@pytest.fixture
def agent_cleanup(world: World):  # type: ignore[no-untyped-def]
    yield
    pid = getattr(world, "agent_pid", None)
    if pid:
        os.kill(pid, 15)


def test_agent_auth(world: World, agent_cleanup: None) -> None:
    server = world.sshd()
    world.known_hosts(server)
    sock = start_agent(world, world.key.private_path)
    # No -i, no key files in HOME: only the agent can log in.
    ok(world.tryssh("try", *world.to(server, key=False), SSH_AUTH_SOCK=sock))
    result = world.tryssh("try", *world.to(server, key=False))
    ok(result, 77)
    assert "no key" in result.stderr.decode()


def test_pinned_identity_decides_who_even_with_an_agent(world: World, agent_cleanup: None) -> None:
    bob = make_user_key(world.tmp, "bob_key")
    server = world.sshd(world.forced(user="bob", key=bob.public_line), world.forced())
    world.known_hosts(server)
    sock = start_agent(world, bob.private_path)
    ok(world.tryssh("try", *world.to(server), SSH_AUTH_SOCK=sock))  # -i alice_key
    [path] = world.delivered()
    assert buildbot_parse(path)["who"] == "alice"


def test_a_default_identity_tryssh_cannot_read_is_skipped_as_ssh_does(world: World) -> None:
    """~/.ssh/id_ed25519 damaged (cryptography said UnsupportedAlgorithm: a traceback):
    one line says it is skipped, and the next default identity logs in. One the user names
    (-i) and cannot be read is still an error."""
    import shutil

    server = world.sshd()
    world.known_hosts(server)
    ssh_dir = world.home / ".ssh"
    good = Path(world.key.private_path).read_text()
    # The header of an OpenSSH key, then a body that ends too soon.
    damaged = good.replace(good.splitlines()[1], "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAA")
    (ssh_dir / "id_ed25519").write_text(damaged)
    shutil.copy(world.key.private_path, ssh_dir / "id_ecdsa")  # the name is only a name
    for name in ("id_ed25519", "id_ecdsa"):
        (ssh_dir / name).chmod(0o600)
    result = world.tryssh("try", *world.to(server, key=False))
    ok(result)
    warning = f"tryssh: cannot load identity file {ssh_dir / 'id_ed25519'}: "
    assert warning in result.stderr.decode() and "(skipped)" in result.stderr.decode()
    named = world.tryssh("try", *world.to(server, key=False), "-i", str(ssh_dir / "id_ed25519"))
    ok(named, 64)
    assert named.stderr.decode().splitlines()[-1].startswith(warning), named.stderr.decode()
    assert "Traceback" not in named.stderr.decode()


def test_encrypted_key_without_terminal_is_a_clear_error(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    locked = make_user_key(world.tmp, "locked", passphrase="secret phrase")
    result = world.tryssh("try", *world.to(server, key=False), "-i", locked.private_path)
    ok(result, 77)
    assert "encrypted" in result.stderr.decode() and "ssh-add" in result.stderr.decode()


def test_ssh_config_alias(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    (world.home / ".ssh" / "config").write_text(
        textwrap.dedent(f"""\
        Host ci
            HostName 127.0.0.1
            Port {server.port}
            User {server.user}
            IdentityFile {world.key.private_path}
            IdentitiesOnly yes
        """)
    )
    name = ok(world.tryssh("try", "--host", "ci", "-q")).strip()
    assert [p.name for p in world.delivered()] == [name]


def test_ssh_config_proxy_command(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    (world.tmp / "relay.py").write_text(RELAY)
    (world.home / ".ssh" / "config").write_text(
        textwrap.dedent(f"""\
        Host ci
            HostName 127.0.0.1
            Port {server.port}
            ProxyCommand {sys.executable} {world.tmp / "relay.py"} %h %p
        """)
    )
    ok(world.tryssh("try", "--host", "ci", "-u", server.user, "-i", world.key.private_path))
    assert len(world.delivered()) == 1


def test_wrong_key_is_refused_with_77(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    stranger = make_user_key(world.tmp, "stranger")
    result = world.tryssh("try", *world.to(server, key=False), "-i", stranger.private_path)
    ok(result, 77)
    assert "authentication" in result.stderr.decode()


def test_connection_refused_is_75(world: World) -> None:
    from helpers import free_port

    result = world.tryssh(
        "try",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "-i",
        world.key.private_path,
        "--timeout",
        "5",
    )
    ok(result, 75)
    assert "cannot connect" in result.stderr.decode()


# -- never hang -----------------------------------------------------------------------------


def big_diff(world: World, size: int) -> Path:
    path = world.tmp / "big.diff"
    line = b"+" + b"x" * 99 + b"\n"
    path.write_bytes(b"--- a/big\n+++ b/big\n@@ -0,0 +1 @@\n" + line * (size // len(line)))
    return path


def test_no_hang_when_the_server_dies_mid_transfer(world: World) -> None:
    script = world.tmp / "dies.sh"
    script.write_text("#!/bin/sh\nhead -c 100000 >/dev/null\nkill -9 $$\n")
    script.chmod(0o755)
    server = world.sshd(f'restrict,command="{script}" {world.key.public_line}')
    world.known_hosts(server)
    diff = big_diff(world, 20 << 20)
    started = time.monotonic()
    result = world.tryssh(
        "try",
        *world.to(server),
        "--diff",
        str(diff),
        "--baserev",
        "x",
        "--timeout",
        "10",
        timeout=60,
    )
    assert time.monotonic() - started < 40
    ok(result, 75)
    assert "exit status" in result.stderr.decode()


def test_no_hang_when_the_server_stops_reading(world: World) -> None:
    script = world.tmp / "stuck.sh"
    script.write_text("#!/bin/sh\nexec sleep 25\n")
    script.chmod(0o755)
    server = world.sshd(f'restrict,command="{script}" {world.key.public_line}')
    world.known_hosts(server)
    diff = big_diff(world, 20 << 20)
    started = time.monotonic()
    result = world.tryssh(
        "try",
        *world.to(server),
        "--diff",
        str(diff),
        "--baserev",
        "x",
        "--timeout",
        "3",
        timeout=60,
    )
    assert time.monotonic() - started < 20
    ok(result, 75)
    assert "stopped reading" in result.stderr.decode()


# -- scp (sftp account) ---------------------------------------------------------------------


def test_scp_delivery(world: World) -> None:
    server = world.sshd(f"restrict {world.key.public_line}")
    world.known_hosts(server)
    result = world.tryssh(
        "try", "-c", "scp", *world.to(server), "--jobdir", world.jobdir.path, "-b", "unit", "--json"
    )
    receipt = json.loads(ok(result))
    [path] = world.delivered()
    assert receipt["job"] == path.name and receipt["transport"] == "scp"
    assert os.listdir(world.jobdir.tmp) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == receipt["sha256"]
    job = buildbot_parse(path)
    assert job["builderNames"] == ["unit"]
    check_patch_applies(world, job)


def test_scp_into_a_missing_jobdir_fails_cleanly(world: World) -> None:
    server = world.sshd(f"restrict {world.key.public_line}")
    world.known_hosts(server)
    result = world.tryssh(
        "try", "-c", "scp", *world.to(server), "--jobdir", str(world.tmp / "nope")
    )
    ok(result, 73)
    assert "does not exist" in result.stderr.decode()


def test_scp_failed_rename_leaves_nothing_in_tmp(world: World) -> None:
    server = world.sshd(f"restrict {world.key.public_line}")
    world.known_hosts(server)
    # new/ is a file: the upload into tmp/ works, the rename into new/NAME fails (even as root).
    os.rmdir(world.jobdir.new)
    Path(world.jobdir.new).write_text("not a directory")
    result = world.tryssh("try", "-c", "scp", *world.to(server), "--jobdir", world.jobdir.path)
    assert result.returncode == 75, result.stderr.decode()
    assert "sftp upload" in result.stderr.decode()
    assert os.listdir(world.jobdir.tmp) == []


# -- --wait and status over ssh -------------------------------------------------------------


FAKE_STATUS = """\
#!{python}
# A forced command that delivers with the real tryserver and answers 'status' from a
# script of states, one per call, so that --wait sees the job move.
import json, os, shlex, sys
words = shlex.split(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
if "watch" in words or "log" in words:  # an older tryserver: --wait falls back to polling
    sys.exit(print("tryserver: command refused: unknown request 'watch'", file=sys.stderr) or 64)
if "status" not in words:
    os.execv({tryserver!r}, [{tryserver!r}, "--jobdir", {jobdir!r}, "--user", "alice"])
job = words[words.index("status") + 1]
counter = {counter!r}
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
states = {states!r}
state, builders = states[min(n, len(states) - 1)]
print(json.dumps({{"job": job, "state": state, "reason": None, "builders": builders}}))
"""


def fake_status_server(world: World, states: list[tuple[str, dict[str, object]]]) -> Sshd:
    script = world.tmp / "fake_status.py"
    script.write_text(
        FAKE_STATUS.format(
            python=sys.executable,
            tryserver=world.tryserver,
            jobdir=world.jobdir.path,
            counter=str(world.tmp / "counter"),
            states=states,
        )
    )
    script.chmod(0o755)
    server = world.sshd(f'restrict,command="{script}" {world.key.public_line}')
    world.known_hosts(server)
    return server


def test_wait_success(world: World) -> None:
    running = {"unit": {"state": "running", "result": None, "log": None}}
    done = {"unit": {"state": "done", "result": "success", "log": "/logs/unit.log"}}
    server = fake_status_server(world, [("queued", {}), ("running", running), ("success", done)])
    result = world.tryssh("try", *world.to(server), "-b", "unit", "--wait")
    out = ok(result)
    [path] = world.delivered()
    assert out.strip() == path.name
    err = result.stderr.decode()
    assert "queued" in err and "unit: running" in err and "unit: success" in err


def test_wait_failure_exits_1_and_rejected_77(world: World) -> None:
    done = {"unit": {"state": "done", "result": "failure", "log": None}}
    server = fake_status_server(world, [("running", {}), ("failure", done)])
    ok(world.tryssh("try", *world.to(server), "-b", "unit", "--wait", "--json"), 1)
    (world.tmp / "counter").unlink()
    script = world.tmp / "fake_status.py"
    script.write_text(script.read_text().replace("'failure'", "'rejected'"))
    ok(world.tryssh("try", *world.to(server), "-b", "unit", "--wait", "-q"), 77)


def test_wait_timeout_is_75(world: World) -> None:
    server = fake_status_server(world, [("queued", {})])
    result = world.tryssh("try", *world.to(server), "--wait", "--wait-timeout", "2")
    ok(result, 75)
    assert "--wait-timeout" in result.stderr.decode()


def test_status_and_builders_over_ssh_with_the_real_tryserver(world: World) -> None:
    builders = {"unit": {"command": ["true"], "description": "unit tests"},
                "lint": {"command": ["true"]}}  # fmt: skip
    config = write_master_config(world.tmp, builders, {"alice": {"builders": ["unit"]}})
    server = world.sshd(world.forced("--config", str(config)))
    world.known_hosts(server)
    assert ok(world.tryssh("builders", *world.to(server))) == "unit  unit tests\n"
    answer = json.loads(ok(world.tryssh("builders", *world.to(server), "--json")))
    assert answer["builders"] == ["unit"]
    name = ok(world.tryssh("try", *world.to(server), "-b", "unit", "-q")).strip()
    record = json.loads(ok(world.tryssh("status", name, *world.to(server), "--json")))
    assert record["job"] == name and record["state"] == "queued"
    assert f"job {name}: queued" in ok(world.tryssh("status", name, *world.to(server)))
    missing = world.tryssh("status", "1.nosuchjob", *world.to(server))
    assert missing.returncode == 66 and "no such job" in missing.stderr.decode()
    # On the master itself, with the config: the same answer without ssh.
    local = json.loads(ok(world.tryssh("status", name, "--config", str(config), "--json")))
    assert local["job"] == name
    assert ok(world.tryssh("builders", "--config", str(config))) == "unit  unit tests\nlint\n"


def test_no_pty_requested(world: World) -> None:
    script = world.tmp / "tty.sh"
    script.write_text(
        '#!/bin/sh\ncat >/dev/null\nif [ -t 0 ] || [ -n "$SSH_TTY" ]; then '
        "echo tty >&2; exit 1; fi\necho fine-job\n"
    )
    script.chmod(0o755)
    server = world.sshd(f'command="{script}" {world.key.public_line}')
    world.known_hosts(server)
    result = world.tryssh("try", *world.to(server))
    assert ok(result).strip() == "fine-job"


def test_buildbot_style_server_that_prints_nothing(world: World) -> None:
    script = world.tmp / "quiet.sh"
    script.write_text("#!/bin/sh\ncat > " + shlex.quote(str(world.tmp / "got")) + "\n")
    script.chmod(0o755)
    server = world.sshd(f'restrict,command="{script}" {world.key.public_line}')
    world.known_hosts(server)
    result = world.tryssh("try", *world.to(server), "--jobdir", "~/jobs dir")
    assert ok(result) == ""
    assert "did not name the job" in result.stderr.decode()
    wait_until(lambda: (world.tmp / "got").exists())
    assert (world.tmp / "got").read_bytes().startswith(b"1:5,")


def test_ssh_config_proxy_jump(world: World) -> None:
    server = world.sshd()
    jump = world.sshd_factory([world.key.public_line])  # a plain login that may forward
    world.known_hosts(server, jump)
    (world.home / ".ssh" / "config").write_text(
        textwrap.dedent(f"""\
        Host jumphost
            HostName 127.0.0.1
            Port {jump.port}
            IdentityFile {world.key.private_path}
        Host ci
            HostName 127.0.0.1
            Port {server.port}
            ProxyJump {jump.user}@jumphost
        """)
    )
    ok(world.tryssh("try", "--host", "ci", "-u", server.user, "-i", world.key.private_path))
    assert len(world.delivered()) == 1
    assert "direct-tcpip" in jump.log_text() or "Connection from" in jump.log_text()


def test_passphrase_is_asked_on_a_terminal(world: World) -> None:
    import pty
    import select

    locked = make_user_key(world.tmp, "locked", passphrase="secret phrase")
    server = world.sshd(world.forced(key=locked.public_line))
    world.known_hosts(server)
    pid, fd = pty.fork()
    if pid == 0:  # child: the terminal is its stdin/stdout/stderr
        os.chdir(world.repo)
        argv = [
            venv_bin("tryssh"),
            "try",
            *world.to(server, key=False),
            "-i",
            locked.private_path,
            "-q",
        ]
        os.execve(argv[0], argv, world.env())  # noqa: S606 (no shell: an argv list)
    output = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            output += chunk
            if not answered and b"passphrase" in output:
                os.write(fd, b"secret phrase\n")
                answered = True

    # The pty closes a moment before the process exits: poll for its status.
    def reaped() -> tuple[int, int] | None:
        done, status = os.waitpid(pid, os.WNOHANG)
        return (done, status) if done else None

    try:
        _, status = wait_until(reaped, timeout=max(1.0, deadline - time.monotonic()))
    except AssertionError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError(f"tryssh still running after 60s: {output!r}") from None
    assert answered, output
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert len(world.delivered()) == 1


@pytest.mark.parametrize(
    ("args", "answer", "said"),
    [
        (["status", "1700000000.M1P1Q1R1.h"], '{"job": "j", "builders": ["unit"]}',
         "builders that are not an object"),
        (["jobs"], '{"jobs": [{"builders": {"unit": "done"}}]}',
         "a builder's entry that is not an object"),
        (["builders"], '{"builders": 5}', "no list of builders"),
    ],
)  # fmt: skip
def test_a_server_answering_nonsense_is_one_line_and_75(
    world: World, args: list[str], answer: str, said: str
) -> None:
    """A server (a real sshd whose forced command prints the answer) whose JSON is not
    what tryssh reads: before, a traceback (AttributeError) and exit 1."""
    script = world.tmp / "answer.sh"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{answer}\nEOF\n")
    script.chmod(0o755)
    server = world.sshd(f'restrict,command="{script}" {world.key.public_line}')
    world.known_hosts(server)
    result = world.tryssh(*args, *world.to(server))
    ok(result, 75)
    stderr = result.stderr.decode()
    assert stderr.strip().splitlines()[-1] == (
        f"tryssh: the server's answer to '{args[0]}' is not what tryssh reads: {said}"), stderr
    assert "Traceback" not in stderr
