"""``tryssh serve`` against the real OpenSSH client (and a real ``buildbot try``).

Every test starts ``tryssh serve`` as a subprocess on 127.0.0.1 with port 0, waits for its
ready line, and talks to it with ``/usr/bin/ssh`` using strict host key checking against the
host key the server generated.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from helpers import OutputPumps, run, venv_bin, wait_until
from hostile import HOSTILE_COMMANDS
from sshd import SSH, SSH_KEYGEN, UserKey, check_openssh, make_user_key

from tryssh.core.jobfile import Job, encode_job, parse_job_file
from tryssh.server.passwords import hash_password

READY = re.compile(r"listening on (\S+):(\d+), host key (SHA256:\S+) \((\S+)\)")
PASSWORD = "correct horse battery staple"
# Cheap hashes: the tests check behaviour, not scrypt's cost.
FAST = {"n": 1 << 10, "r": 8, "p": 1}


def make_job(who: str = "mallory", patch: bytes = b"diff --git a/f b/f\n") -> bytes:
    return encode_job(
        Job("job-1", "main", "abc123", 1, patch, ["unit"], repository="r", who=who, comment="c")
    )


class Serve:
    """A running ``tryssh serve`` with its config, jobdir, keys and logs."""

    def __init__(
        self,
        root: Path,
        serve: dict[str, object] | None = None,
        consume: bool = False,
        extra_toml: str = "",
        builder: Sequence[str] = ("true",),
        top_toml: str = "",
    ) -> None:
        check_openssh()
        self.root = root
        self.jobdir = root / "jobdir"
        for sub in ("tmp", "new", "cur"):
            (self.jobdir / sub).mkdir(parents=True, exist_ok=True)
        keys = root / "keys"
        keys.mkdir(exist_ok=True)
        self.alice, self.bob, self.stranger = (
            make_user_key(keys, name)
            if not (keys / name).exists()
            else UserKey(str(keys / name), (keys / f"{name}.pub").read_text().strip())
            for name in ("alice", "bob", "stranger")
        )
        settings: dict[str, object] = {"listen": "127.0.0.1:0", "host_key": str(root / "hostkey")}
        settings.update(serve or {})
        lines = [f'jobdir = "{self.jobdir}"', top_toml, "", "[serve]"]
        for key, value in settings.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        lines += [
            "",
            "[builders.unit]",
            "command = [" + ", ".join(f'"{w}"' for w in builder) + "]",
            "",
            "[users.alice]",
            f'keys = ["{self.alice.public_line}"]',
            f'password_hash = "{hash_password(PASSWORD, **FAST)}"',
            'builders = ["unit"]',
            "",
            # A key under "*" is policy only: it must never log anybody in.
            '[users."*"]',
            f'keys = ["{self.bob.public_line}"]',
            "builders = []",
            extra_toml,
        ]
        self.config = root / "tryssh.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.consume = consume
        self.proc: subprocess.Popen[str] | None = None
        self.pumps: OutputPumps | None = None  # kept after stop()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.port = 0
        self.fingerprint = ""
        self.known_hosts = root / "known_hosts"

    # -- process ---------------------------------------------------------------------------

    def start(self) -> Serve:
        argv = [venv_bin("tryssh"), "serve", "--config", str(self.config)]
        if self.consume:
            argv.append("--consume")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pumps = OutputPumps(self.proc)
        self.stdout, self.stderr = self.pumps.stdout, self.pumps.stderr
        match = wait_until(
            lambda: self._ready() or self._died(),
            timeout=30,
            message=lambda: f"tryssh serve did not get ready:\n{self.output()}",
        )
        assert isinstance(match, re.Match), f"tryssh serve exited:\n{self.output()}"
        self.port = int(match.group(2))
        self.fingerprint = match.group(3)
        keytype, blob = (self.root / "hostkey.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {keytype} {blob}\n")
        return self

    def _ready(self) -> re.Match[str] | None:
        for line in list(self.stdout):
            match = READY.search(line)
            if match:
                return match
        return None

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def output(self) -> str:
        if self.pumps is not None:
            self.pumps.drain()
        return "".join(self.stdout) + "--- stderr ---\n" + "".join(self.stderr)

    def log(self) -> str:
        if self.pumps is not None:
            self.pumps.drain()
        return "".join(self.stderr)

    def audit(self) -> str:
        path = self.jobdir / "audit.log"
        return path.read_text() if path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 15) -> str:
        return wait_until(
            lambda: self.log() if needle in self.log() else "",
            timeout=timeout,
            message=lambda: f"{needle!r} not in the server log:\n{self.output()}",
        )

    def stop(self) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"tryssh serve ignored SIGTERM:\n{self.output()}") from None
        return proc.returncode

    # -- clients ---------------------------------------------------------------------------

    def ssh_options(self, key: str | None = None) -> list[str]:
        opts = [
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ConnectTimeout=20",
        ]
        if key is not None:
            opts += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-i", key]
        return opts

    def ssh_argv(
        self, *words: str, user: str = "alice", key: str | None = None, opts: Sequence[str] = ()
    ) -> list[str]:
        key = self.alice.private_path if key is None else key
        return [
            SSH,
            *self.ssh_options(key),
            "-p",
            str(self.port),
            *opts,
            f"{user}@127.0.0.1",
            *words,
        ]

    def ssh(
        self, *words: str, input: bytes = b"", timeout: float = 60, **kw: object
    ) -> subprocess.CompletedProcess[bytes]:
        return run(self.ssh_argv(*words, **kw), input=input, timeout=timeout)  # type: ignore[arg-type]

    def password_ssh(
        self, password: str, *words: str, input: bytes = b"", prompts: int = 1, user: str = "alice"
    ) -> subprocess.CompletedProcess[bytes]:
        """The real ssh client with password auth, the password given by an askpass script."""
        askpass = self.root / f"askpass-{abs(hash(password))}"
        (self.root / "password.txt").write_text(password)
        askpass.write_text(f"#!/bin/sh\ncat '{self.root / 'password.txt'}'\n")
        askpass.chmod(0o700)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
        }
        argv = [
            SSH,
            *self.ssh_options(),
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            f"NumberOfPasswordPrompts={prompts}",
            "-p",
            str(self.port),
            f"{user}@127.0.0.1",
            *words,
        ]
        return run(argv, input=input, env=env, timeout=60)

    def delivered(self) -> list[str]:
        return sorted(os.listdir(self.jobdir / "new"))

    def leftovers(self) -> list[str]:
        return sorted(os.listdir(self.jobdir / "tmp"))


@pytest.fixture
def serve_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    started: list[Serve] = []

    def start(**kw: object) -> Serve:
        server = Serve(tmp_path_factory.mktemp("serve"), **kw)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One server for the many tests that only need one."""
    server = Serve(tmp_path_factory.mktemp("serve-shared")).start()
    yield server
    assert server.stop() == 0, server.output()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode(errors="replace")


# -- delivery -----------------------------------------------------------------------------------


def test_key_auth_delivers_with_the_authenticated_user_as_who(shared: Serve) -> None:
    before = shared.delivered()
    result = shared.ssh("buildbot", "tryserver", "--jobdir", "x", input=make_job(who="mallory"))
    assert result.returncode == 0, err(result)
    name = result.stdout.decode().strip()
    assert shared.delivered() == sorted([*before, name])
    job = parse_job_file(str(shared.jobdir / "new" / name))
    assert job.who == "alice"
    assert job.patch_body == b"diff --git a/f b/f\n"
    assert shared.leftovers() == []
    fp = run([SSH_KEYGEN, "-lf", shared.alice.private_path + ".pub"]).stdout.split()[1].decode()
    line = next(x for x in shared.audit().splitlines() if f"job={name}" in x)
    assert "user=alice" in line and f"key={fp}" in line and "from=127.0.0.1:" in line
    assert "outcome=ok" in line and "exit=0" in line and "auth=publickey" in line
    assert f"alice: deliver ok exit=0 job={name}" in shared.wait_log(name)


def test_policy_is_checked_at_the_door(shared: Serve) -> None:
    """serve runs the same request code as tryserver: an unknown builder is refused now."""
    before = shared.delivered()
    job = encode_job(Job("j", "main", "abc", 1, b"p\n", ["nosuch"], who="alice"))
    result = shared.ssh("tryserver", input=job)
    assert result.returncode == 77, err(result)
    assert err(result) == "tryserver: unknown builder 'nosuch'\n"
    assert shared.delivered() == before and shared.leftovers() == []


def test_json_receipt_and_builders(shared: Serve) -> None:
    result = shared.ssh("tryserver", "--json", input=make_job())
    assert result.returncode == 0, err(result)
    assert b'"sha256"' in result.stdout
    result = shared.ssh("tryserver", "builders")
    assert result.returncode == 0, err(result)
    assert result.stdout == b"unit\n"


def test_host_key_generated_0600_and_fingerprint_printed(shared: Serve) -> None:
    key = shared.root / "hostkey"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    listed = run([SSH_KEYGEN, "-lf", str(key) + ".pub"]).stdout.decode().split()
    assert listed[1] == shared.fingerprint
    assert any(
        "generated host key" in line and shared.fingerprint in line for line in shared.stdout
    )


def test_host_key_is_reused_and_must_be_private(tmp_path: Path) -> None:
    first = Serve(tmp_path).start()
    fingerprint = first.fingerprint
    assert first.stop() == 0
    again = Serve(tmp_path).start()
    try:
        assert again.fingerprint == fingerprint
        assert not any("generated" in line for line in again.stdout)
    finally:
        again.stop()
    (tmp_path / "hostkey").chmod(0o644)
    result = run([venv_bin("tryssh"), "serve", "--config", str(tmp_path / "tryssh.toml")])
    assert result.returncode == 78
    assert b"readable by others" in result.stderr


def test_password_auth_with_the_real_client(shared: Serve) -> None:
    result = shared.password_ssh(PASSWORD, "tryserver", "--jobdir", "x", input=make_job())
    assert result.returncode == 0, err(result)
    name = result.stdout.decode().strip()
    assert parse_job_file(str(shared.jobdir / "new" / name)).who == "alice"
    assert "alice: authenticated by password" in shared.wait_log(f"job={name}")


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ("alice", "stranger"),  # unknown key
        ("bob", "bob"),  # a key listed only under users."*": policy, never an identity
        ("carol", "alice"),  # a user with no entry, even with a valid key of someone else
        ("*", "bob"),
    ],
)
def test_unknown_keys_and_users_are_refused(shared: Serve, user: str, key: str) -> None:
    before = shared.delivered()
    path = getattr(shared, key).private_path
    result = shared.ssh("tryserver", input=make_job(), user=user, key=path)
    assert result.returncode == 255
    assert "Permission denied" in err(result)
    assert shared.delivered() == before


# -- refusals -----------------------------------------------------------------------------------

# An empty command is a shell request to ssh: test_empty_command_is_a_shell_and_refused.
HOSTILE = [c for c in HOSTILE_COMMANDS if c.strip()]


@pytest.mark.parametrize("command", HOSTILE, ids=lambda c: repr(c)[:40])
def test_hostile_commands_refused_with_64_and_nothing_delivered(
    shared: Serve, command: str
) -> None:
    before = shared.delivered()
    # One argument: ssh sends it byte for byte as the exec request's command.
    result = shared.ssh(command, input=make_job())
    assert result.returncode == 64, (command, err(result))
    assert err(result).startswith("tryserver: "), err(result)
    assert len(err(result).strip().splitlines()) == 1
    assert shared.delivered() == before
    assert shared.leftovers() == []
    assert not os.path.exists("/tmp/tryssh-pwned")


def test_non_utf8_command_refused(shared: Serve) -> None:
    argv = [os.fsencode(a) for a in shared.ssh_argv()] + [b"tryserver \xff"]
    result = subprocess.run(argv, input=make_job(), capture_output=True, timeout=60, check=False)
    assert result.returncode == 64, result.stderr
    assert b"not UTF-8" in result.stderr or b"not allowed" in result.stderr


def test_empty_command_is_a_shell_and_refused(shared: Serve) -> None:
    before = shared.delivered()
    result = shared.ssh(input=make_job())
    assert result.returncode == 255
    assert "shell request failed" in err(result)
    shared.wait_log("refused shell")
    assert shared.delivered() == before


def test_pty_refused(shared: Serve) -> None:
    result = run(shared.ssh_argv(opts=["-tt"]), input=b"", timeout=60)
    assert result.returncode == 255
    assert "PTY allocation request failed" in err(result)
    shared.wait_log("refused shell")
    # With a command: ssh -tt gives up when the pty is refused. (ssh sends its exec request
    # and stdin right behind the pty request, without waiting for the answer, so a job
    # could still get through before the client closes, with sshd as with serve: send none.)
    before = shared.delivered()
    result = run(shared.ssh_argv("tryserver", opts=["-tt"]), input=b"", timeout=60)
    assert "PTY allocation request failed" in err(result)
    assert result.returncode == 255
    assert shared.delivered() == before
    shared.wait_log("refused pty")


def test_subsystems_refused(shared: Serve) -> None:
    result = run(shared.ssh_argv("sftp", opts=["-s"]), input=b"", timeout=60)
    assert result.returncode == 255
    assert "subsystem request failed" in err(result)
    shared.wait_log("refused subsystem sftp")
    sftp = [
        "/usr/bin/sftp",
        *shared.ssh_options(shared.alice.private_path),
        "-P",
        str(shared.port),
        "-b",
        "-",
        "alice@127.0.0.1",
    ]
    result = run(sftp, input=b"ls /\n", timeout=60)
    assert result.returncode != 0
    assert b"/etc" not in result.stdout


def test_env_requests_refused(shared: Serve) -> None:
    env = dict(os.environ, LC_TRYSSH_TEST="1")
    argv = shared.ssh_argv(
        "tryserver", "builders", opts=["-o", "SetEnv=FOO=1", "-o", "SendEnv=LC_TRYSSH_TEST"]
    )
    result = run(argv, env=env, timeout=60)
    assert result.returncode == 0, err(result)  # env requests need no reply: the command runs
    log = shared.wait_log("refused env FOO")
    assert "refused env LC_TRYSSH_TEST" in log


def test_local_forwarding_refused(shared: Serve) -> None:
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(1)
    target.settimeout(0.5)
    local = socket.socket()
    local.bind(("127.0.0.1", 0))
    lport = local.getsockname()[1]
    local.close()
    tport = target.getsockname()[1]
    argv = shared.ssh_argv(opts=["-N", "-L", f"127.0.0.1:{lport}:127.0.0.1:{tport}"])
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:

        def connected() -> socket.socket | None:
            try:
                return socket.create_connection(("127.0.0.1", lport), timeout=5)
            except OSError:
                return None

        conn = wait_until(connected, timeout=20, message="ssh -L never listened")
        conn.settimeout(10)
        try:
            conn.sendall(b"hello")
            # The channel open was refused: ssh closes the forwarded connection, no data.
            assert conn.recv(100) == b""
        except ConnectionResetError:
            pass
        conn.close()
        shared.wait_log(f"refused port forwarding to 127.0.0.1:{tport}")
        with pytest.raises(TimeoutError):
            target.accept()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        target.close()
    assert b"administratively prohibited" in proc.stderr.read()  # type: ignore[union-attr]


def test_remote_forwarding_refused(shared: Serve) -> None:
    argv = shared.ssh_argv(
        opts=["-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9"]
    )
    result = run(argv, timeout=60)
    assert result.returncode == 255
    assert "remote port forwarding failed" in err(result)
    shared.wait_log("refused remote port forwarding")


def test_agent_and_x11_forwarding_refused(shared: Serve, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["/usr/bin/ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(sock.exists, timeout=30, message="ssh-agent did not start")
        # ssh forwards only an agent it can reach through SSH_AUTH_SOCK (not IdentityAgent=none).
        argv = [
            a if a != "IdentityAgent=none" else "IdentitiesOnly=yes"
            for a in shared.ssh_argv("tryserver", "builders", opts=["-A", "-X"])
        ]
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock), DISPLAY="127.0.0.1:0")
        result = run(argv, env=env, timeout=60)
        assert result.returncode == 0, err(result)
        assert "X11 forwarding request failed" in err(result)
        log = shared.wait_log("refused agent forwarding")
        assert "refused X11 forwarding" in log
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_oversized_job_refused(serve_factory: object, tmp_path: Path) -> None:
    server: Serve = serve_factory(top_toml="max_job_size = 2000")  # type: ignore[operator]
    result = server.ssh("tryserver", input=make_job(patch=b"+x\n" * 2000))
    assert result.returncode == 65, err(result)
    assert "larger than the limit" in err(result)
    assert server.delivered() == [] and server.leftovers() == []


def test_drop_in_cancel_over_serve_takes_a_queued_job_back(serve_factory: object) -> None:
    """serve carries out the drop-in cancel as tryserver does: with ``[buildbot] api`` (a
    master reads the jobdir; none runs here, so the job stays in new/) a queued job is
    renamed into withdrawn/ and its status says cancelled."""
    server: Serve = serve_factory(  # type: ignore[operator]
        top_toml='[buildbot]\napi = "http://127.0.0.1:9/"')  # fmt: skip
    delivered = server.ssh("tryserver", input=make_job())
    assert delivered.returncode == 0, err(delivered)
    name = delivered.stdout.decode().strip()
    result = server.ssh("tryserver", "cancel", name)
    assert result.returncode == 0, err(result)
    assert result.stdout == b"taken back from new/ before Buildbot took it\n"
    assert server.delivered() == []
    assert os.listdir(server.jobdir / "withdrawn") == [name]
    status = server.ssh("tryserver", "status", name, "--json")
    record = json.loads(status.stdout)
    assert record["state"] == "cancelled" and record["cancelled"]["by"] == "alice"


# -- passwords and limits -------------------------------------------------------------------


def test_wrong_passwords_rate_limited(serve_factory: object) -> None:
    server: Serve = serve_factory(  # type: ignore[operator]
        serve={"max_auth_failures_per_address": 3, "auth_penalty_seconds": 120}
    )
    for _ in range(3):
        result = server.password_ssh("wrong", "tryserver", input=make_job())
        assert result.returncode == 255
        assert "Permission denied" in err(result)
    server.wait_log("locked out for 120 s")
    # Locked out: the right password, and even the right key, are refused now.
    result = server.password_ssh(PASSWORD, "tryserver", input=make_job())
    assert result.returncode == 255, err(result)
    result = server.ssh("tryserver", input=make_job())
    assert result.returncode == 255, err(result)
    assert server.delivered() == []
    assert "is locked out" in server.wait_log("is locked out")
    assert "event=lockout" in server.audit()
    assert server.audit().count("event=auth outcome=failed method=password") == 3


def test_lockout_ends_after_the_penalty(serve_factory: object) -> None:
    server: Serve = serve_factory(  # type: ignore[operator]
        serve={"max_auth_failures_per_address": 2, "auth_penalty_seconds": 1.5}
    )
    for _ in range(2):
        assert server.password_ssh("wrong", "tryserver", "builders").returncode == 255
    server.wait_log("locked out for 1.5 s")
    wait_until(
        lambda: server.password_ssh(PASSWORD, "tryserver", "builders").returncode == 0,
        timeout=20,
        interval=0.2,
        message=lambda: f"the lockout never ended:\n{server.output()}",
    )


def test_max_auth_tries_per_connection(serve_factory: object) -> None:
    server: Serve = serve_factory(serve={"max_auth_tries": 2})  # type: ignore[operator]
    result = server.password_ssh("wrong", "tryserver", prompts=5)
    assert result.returncode == 255
    server.wait_log("too many authentication attempts")
    # Two tries were counted, the third ended the connection.
    assert server.audit().count("event=auth outcome=failed method=password") == 2


def test_idle_timeout(serve_factory: object) -> None:
    server: Serve = serve_factory(serve={"idle_timeout": 1})  # type: ignore[operator]
    # Logged in, no session: closed after about a second.
    proc = subprocess.Popen(
        server.ssh_argv(opts=["-N"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: proc.poll() is not None,
            timeout=20,
            message="the idle connection was never closed",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    server.wait_log("(idle timeout;")
    # A client that never even sends its banner: dropped after the (short) auth timeout.
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        assert raw.recv(8).startswith(b"SSH-2.0-")
        while raw.recv(4096):
            pass
    server.wait_log("handshake failed")
    # A delivery whose client sends nothing: TempFail 75 after a second, nothing delivered.
    reader, writer = os.pipe()
    try:
        result = subprocess.run(
            server.ssh_argv("tryserver"), stdin=reader, capture_output=True, timeout=60, check=False
        )
    finally:
        os.close(reader)
        os.close(writer)
    assert result.returncode == 75, result.stderr
    assert b"idle timeout" in result.stderr
    assert server.delivered() == [] and server.leftovers() == []


def test_max_connections(serve_factory: object) -> None:
    server: Serve = serve_factory(serve={"max_connections": 2})  # type: ignore[operator]
    holders = [
        subprocess.Popen(
            server.ssh_argv(opts=["-N"]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        wait_until(
            lambda: server.log().count("authenticated by publickey") == 2,
            timeout=20,
            message=server.output,
        )
        result = server.ssh("tryserver", "builders")
        assert result.returncode == 255
        server.wait_log("2 connections already open")
        holders[0].terminate()
        holders[0].wait(timeout=10)
        wait_until(
            lambda: server.ssh("tryserver", "builders").returncode == 0,
            timeout=20,
            interval=0.1,
            message=server.output,
        )
    finally:
        for proc in holders:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=10)


def test_sigterm_finishes_in_flight_requests(serve_factory: object) -> None:
    server: Serve = serve_factory()  # type: ignore[operator]
    job = make_job()
    proc = subprocess.Popen(
        server.ssh_argv("tryserver"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(job[:10])
    proc.stdin.flush()
    server.wait_log("authenticated by publickey")
    wait_until(lambda: "event=auth outcome=ok" in server.audit(), timeout=30)
    # In flight means the exec request has started delivering (its tmp/ file exists), not
    # merely logged in: a connection with no request yet is closed at once on SIGTERM.
    wait_until(server.leftovers, timeout=30, message="the request never started")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    # Stopped accepting: new connections are refused...
    wait_until(lambda: _refused(server.port), timeout=30, message="still accepting")
    # ...and the request in flight finishes.
    out, errout = proc.communicate(job[10:], timeout=30)
    assert proc.returncode == 0, errout
    assert server.delivered() == [out.decode().strip()]
    # Then the server exits by itself, with 0.
    assert server.proc is not None
    assert server.proc.wait(timeout=30) == 0, server.output()
    assert "stopped" in server.log()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


# -- Buildbot's own client ------------------------------------------------------------------


def test_buildbot_try_delivers(shared: Serve, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    patch = tmp_path / "change.diff"
    patch.write_bytes(b"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    ssh = " ".join([SSH, *shared.ssh_options(shared.alice.private_path)])
    before = shared.delivered()
    argv = [
        venv_bin("buildbot"),
        "try",
        "--connect=ssh",
        "--host=127.0.0.1",
        f"--port={shared.port}",
        "--username=alice",
        "--jobdir=jobdir",
        f"--ssh={ssh}",
        "--vc=git",
        "--branch=main",
        f"--diff={patch}",
        "--baserev=abc123",
        "-b",
        "unit",
        "--who=mallory",
        "--comment=from buildbot try",
    ]
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = run(argv, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"job has been delivered" in result.stdout
    (name,) = sorted(set(shared.delivered()) - set(before))
    job = parse_job_file(str(shared.jobdir / "new" / name))
    assert job.who == "alice"
    assert job.builder_names == ["unit"]
    assert job.comment == "from buildbot try"


# -- --consume ------------------------------------------------------------------------------


def test_consume_runs_the_builders_in_the_same_process(
    serve_factory: object, tmp_path: Path
) -> None:
    marker = tmp_path / "built"
    server: Serve = serve_factory(  # type: ignore[operator]
        consume=True, builder=["/bin/sh", "-c", f"echo built >> {marker}"]
    )
    result = server.ssh("tryserver", input=make_job())
    assert result.returncode == 0, err(result)
    name = result.stdout.decode().strip()
    wait_until(marker.exists, timeout=30, message=server.output)

    def finished() -> str:
        status = server.ssh("tryserver", "status", name, "--json")
        text = status.stdout.decode()
        return text if '"success"' in text else ""

    record = wait_until(finished, timeout=30, message=server.output)
    assert '"alice"' in record
    assert marker.read_text() == "built\n"
    assert server.stop() == 0, server.output()
    # The server's and the consumer's messages share one stream and one format.
    lines = server.log().splitlines()
    assert any("event=start" in line for line in lines), server.output()
    assert any("authenticated by publickey" in line for line in lines), server.output()
    assert all(re.match(r"time=\S+Z level=\w+ \w+=", line) for line in lines), server.output()


def test_sighup_reloads_users_and_builders_and_refuses_a_broken_config(serve_factory) -> None:
    server = serve_factory()
    assert server.ssh("tryserver", "builders").stdout == b"unit\n"
    text = server.config.read_text()
    server.config.write_text(
        text.replace('builders = ["unit"]', 'builders = ["unit", "lint"]', 1)
        + '\n[builders.lint]\ncommand = ["true"]\ndescription = "style"\n'
    )
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("reloaded")
    result = server.ssh("tryserver", "builders")
    assert result.stdout == b"unit\nlint\tstyle\n", err(result)
    job = encode_job(Job("j", "main", "abc", 1, b"p\n", ["lint"], who="alice"))
    assert server.ssh("tryserver", input=job).returncode == 0

    server.config.write_text(server.config.read_text() + "\nnonsense = 1\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("reload refused, the config in use stays")
    assert "nonsense: unknown key" in server.log()
    assert server.ssh("tryserver", "builders").stdout == b"unit\nlint\tstyle\n"
    assert server.proc.poll() is None
    assert "event=reload outcome=refused" in server.audit()


def test_hostkey_output_is_the_known_hosts_developers_need(serve_factory) -> None:
    server = serve_factory()
    result = run([venv_bin("tryssh"), "hostkey", "--config", str(server.config), "--no-openssh",
                  "--host", "127.0.0.1", "--serve-port", str(server.port)])  # fmt: skip
    assert result.returncode == 0, err(result)
    server.known_hosts.write_bytes(result.stdout)  # replaces the fixture's own line
    assert server.fingerprint in result.stdout.decode()
    login = server.ssh("tryserver", "builders")
    assert login.returncode == 0 and login.stdout == b"unit\n", err(login)


def test_sighup_reloads_the_embedded_consumer_too(serve_factory) -> None:
    server = serve_factory(consume=True)
    text = server.config.read_text()
    server.config.write_text(
        text.replace('builders = ["unit"]', 'builders = ["unit", "lint"]', 1)
        + '\n[builders.lint]\ncommand = ["true"]\n'
    )
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("event=reloaded")  # the consumer's line, after the server's
    job = encode_job(Job("j", "main", "abc", 1, b"p\n", ["lint"], who="alice"))
    result = server.ssh("tryserver", input=job)
    assert result.returncode == 0, err(result)
    name = result.stdout.decode().strip()

    def finished() -> str:
        text = server.ssh("tryserver", "status", name, "--json").stdout.decode()
        return text if '"success"' in text else ""

    assert '"lint"' in wait_until(finished, timeout=30, message=server.output)
    assert server.stop() == 0, server.output()
