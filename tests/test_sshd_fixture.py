"""The sshd fixture works with the real OpenSSH clients (and the shared helpers do their job)."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import tempfile
from pathlib import Path

import pytest
import sshd as sshd_mod
from helpers import free_port, run, venv_bin, wait_until
from sshd import SSH_KEYGEN, Sshd, make_user_key, sftp_argv, ssh_argv, wait_for_log


def _out(result: object) -> str:
    """stdout+stderr of a CompletedProcess, for assertion messages."""
    return f"rc={result.returncode}\nstdout={result.stdout!r}\nstderr={result.stderr!r}"  # type: ignore[attr-defined]


# -- forced commands ------------------------------------------------------------------------------


def test_forced_command_runs_whatever_the_client_asks(sshd_factory, user_key, known_hosts):
    server = sshd_factory([f'restrict,command="/bin/echo forced" {user_key.public_line}'])
    kh = known_hosts(server)
    result = run(ssh_argv(server, user_key.private_path, kh, "/bin/echo", "not-forced"))
    assert result.returncode == 0, _out(result) + server.log_text()
    assert result.stdout == b"forced\n"
    log = wait_for_log(server, "forced-command")
    assert f"Accepted publickey for {server.user}" in log


def test_original_command_reaches_the_forced_command(sshd_factory, user_key, known_hosts):
    server = sshd_factory([f'restrict,command="/usr/bin/env" {user_key.public_line}'])
    kh = known_hosts(server)
    result = run(ssh_argv(server, user_key.private_path, kh, "tryserver", "--job", "a b"))
    assert result.returncode == 0, _out(result) + server.log_text()
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines() if "=" in line)
    # ssh joins the words with single spaces; the server sees one string.
    assert env["SSH_ORIGINAL_COMMAND"] == "tryserver --job a b"
    assert env["SSH_CONNECTION"].startswith("127.0.0.1 ")
    assert env["SSH_CONNECTION"].endswith(f" 127.0.0.1 {server.port}")
    assert env["USER"] == server.user
    # ExposeAuthInfo: the file names the key that logged in.
    auth_info = Path(env["SSH_USER_AUTH"])
    assert auth_info.is_absolute()
    assert "SSH_TTY" not in env  # restrict: no pty


def test_no_command_without_forced_command(sshd_factory, user_key, known_hosts):
    server = sshd_factory([f"restrict {user_key.public_line}"])
    result = run(ssh_argv(server, user_key.private_path, known_hosts(server), "echo", "free"))
    assert result.returncode == 0, _out(result)
    assert result.stdout == b"free\n"


# -- host key checking ----------------------------------------------------------------------------


def test_unknown_host_key_is_refused(sshd_factory, user_key, known_hosts):
    server = sshd_factory([f'restrict,command="/bin/echo forced" {user_key.public_line}'])
    empty = known_hosts()
    assert empty.read_text() == ""
    result = run(ssh_argv(server, user_key.private_path, empty, "true"))
    assert result.returncode == 255, _out(result)
    assert b"Host key verification failed" in result.stderr
    assert result.stdout == b""
    assert "Accepted publickey" not in server.log_text()
    # Strict checking must not have learnt the key either.
    assert empty.read_text() == ""


def test_changed_host_key_is_refused(sshd_factory, user_key, known_hosts, tmp_path):
    server = sshd_factory([f'restrict,command="/bin/echo forced" {user_key.public_line}'])
    other = make_user_key(tmp_path, "impostor").public_line.split()
    kh = tmp_path / "known_hosts.wrong"
    kh.write_text(f"[{server.host}]:{server.port} {other[0]} {other[1]}\n")
    result = run(ssh_argv(server, user_key.private_path, kh, "true"))
    assert result.returncode == 255, _out(result)
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert result.stdout == b""


def test_known_hosts_line_format(sshd_factory):
    server = sshd_factory()
    host, keytype, blob = server.known_hosts_line().split(" ")
    assert host == f"[127.0.0.1]:{server.port}"
    assert keytype == "ssh-ed25519"
    assert blob.startswith("AAAA")
    assert server.host_key_pub.split()[:2] == [keytype, blob]


# -- sftp -----------------------------------------------------------------------------------------


def test_sftp_works_without_forced_command(sshd_factory, user_key, known_hosts, tmp_path):
    server = sshd_factory([f"restrict {user_key.public_line}"])
    payload = os.urandom(100_000)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    remote = tmp_path / "remote" / "uploaded.bin"
    remote.parent.mkdir()
    back = tmp_path / "back.bin"
    batch = tmp_path / "batch"
    batch.write_text(f'put "{src}" "{remote}"\nget "{remote}" "{back}"\nls "{remote.parent}"\n')
    result = run(sftp_argv(server, user_key.private_path, known_hosts(server), batch))
    assert result.returncode == 0, _out(result) + server.log_text()
    assert remote.read_bytes() == payload
    assert back.read_bytes() == payload
    assert b"uploaded.bin" in result.stdout


def test_sftp_is_unavailable_with_a_forced_command(sshd_factory, user_key, known_hosts, tmp_path):
    server = sshd_factory([f'restrict,command="/bin/echo forced" {user_key.public_line}'])
    target = tmp_path / "must-not-exist"
    result = run(
        sftp_argv(server, user_key.private_path, known_hosts(server)),
        input=f'put "{__file__}" "{target}"\n'.encode(),
    )
    assert result.returncode != 0, _out(result)
    assert not target.exists()


# -- authorized_keys and extra config -------------------------------------------------------------


def test_set_authorized_keys_takes_effect(sshd_factory, user_key, known_hosts, tmp_path):
    second = make_user_key(tmp_path, "second")
    server = sshd_factory([f'restrict,command="/bin/echo one" {user_key.public_line}'])
    kh = known_hosts(server)
    assert run(ssh_argv(server, user_key.private_path, kh)).stdout == b"one\n"

    server.set_authorized_keys([f'restrict,command="/bin/echo two" {second.public_line}'])
    refused = run(ssh_argv(server, user_key.private_path, kh))
    assert refused.returncode == 255, _out(refused)
    assert b"Permission denied" in refused.stderr
    accepted = run(ssh_argv(server, second.private_path, kh))
    assert accepted.stdout == b"two\n", _out(accepted)
    assert stat.S_IMODE(server.authorized_keys_path.stat().st_mode) == 0o600


def test_extra_config_overrides_and_match_blocks(sshd_factory, user_key, known_hosts, tmp_path):
    # A global line replaces the default of the same keyword (sftp goes to a missing program).
    server = sshd_factory(
        [f"restrict {user_key.public_line}"],
        extra_config=["Subsystem sftp /nonexistent/sftp-server"],
    )
    result = run(sftp_argv(server, user_key.private_path, known_hosts(server)), input=b"ls\n")
    assert result.returncode != 0, _out(result)
    assert "Subsystem sftp /nonexistent/sftp-server" in server.config_path.read_text()
    assert "internal-sftp" not in server.config_path.read_text()

    matched = sshd_factory(
        [f"restrict {user_key.public_line}"],
        extra_config=[
            f"Match User {pwd.getpwuid(os.getuid()).pw_name}",
            "    ForceCommand /bin/echo from-config",
        ],
    )
    result = run(ssh_argv(matched, user_key.private_path, known_hosts(matched), "echo", "x"))
    assert result.stdout == b"from-config\n", _out(result)


def test_bad_extra_config_fails_loudly_and_cleans_up(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with (
        pytest.raises(RuntimeError, match="sshd -t rejected"),
        Sshd(extra_config=["NoSuchOption yes"]),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_missing_openssh_names_the_fix(monkeypatch):
    monkeypatch.setattr(sshd_mod, "SSHD", "/nonexistent/sshd")
    with pytest.raises(sshd_mod.OpensshMissing, match="scripts/bootstrap"):
        Sshd()


# -- lifecycle ------------------------------------------------------------------------------------


def test_stop_terminates_and_frees_the_port(user_key, tmp_path):
    with Sshd([user_key.public_line]) as server:
        proc = server.proc
        assert proc is not None and server.running
        port, workdir = server.port, server.dir
        with socket.create_connection((server.host, port), timeout=5) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-OpenSSH")
    assert proc.returncode is not None
    assert not server.running
    assert not workdir.exists()  # an Sshd without a directory cleans its temp dir

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, timeout=30, message="port still accepting after stop")
    server.stop()  # idempotent


def test_start_retries_when_the_port_is_taken(monkeypatch, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        ports = iter([busy])  # the first pick is taken; later picks are real
        monkeypatch.setattr(sshd_mod, "free_port", lambda host: next(ports, 0) or free_port(host))
        with Sshd(directory=tmp_path / "srv") as server:
            assert server.port != busy
            assert server.running
            assert f"Bind to port {busy}" in server.log_text()


# -- helpers --------------------------------------------------------------------------------------


def test_make_user_key_with_passphrase(tmp_path):
    key = make_user_key(tmp_path, "locked", passphrase="s3cret pass")
    assert key.public_line.startswith("ssh-ed25519 AAAA")
    assert stat.S_IMODE(os.stat(key.private_path).st_mode) == 0o600
    wrong = run([SSH_KEYGEN, "-y", "-P", "", "-f", key.private_path])
    assert wrong.returncode != 0
    right = run([SSH_KEYGEN, "-y", "-P", "s3cret pass", "-f", key.private_path])
    assert right.returncode == 0
    assert right.stdout.split()[:2] == key.public_line.encode().split()[:2]


def test_wait_until_returns_value_and_times_out():
    calls = iter([0, "", None, "ready"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0) == "ready"
    with pytest.raises(AssertionError, match="never"):
        wait_until(lambda: False, timeout=0.05, message="never")
    with pytest.raises(AssertionError, match="lazy 42"):
        wait_until(lambda: 0, timeout=0.01, message=lambda: f"lazy {6 * 7}")


def test_venv_bin_finds_project_scripts():
    for name in ("tryserver", "tryssh"):
        path = venv_bin(name)
        assert os.path.isabs(path) and os.access(path, os.X_OK), path


def test_run_captures_bytes_and_input(tmp_path):
    result = run(["/bin/cat"], input=b"\x00bytes\xff", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == b"\x00bytes\xff"
    pwd_result = run(["/bin/pwd"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert pwd_result.stdout.decode().strip() == str(tmp_path)
