"""tryssh hostkey: what it prints is a known_hosts file that real ssh accepts, with the
fingerprints ssh-keygen computes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import run, venv_bin
from sshd import SSH_KEYGEN, ssh_argv


def hostkey(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_bin("tryssh"), "hostkey", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_openssh_keys_let_real_ssh_in_with_strict_checking(sshd_factory, user_key, tmp_path):
    sshd = sshd_factory(authorized_keys=[user_key.public_line])
    result = hostkey("--sshd-dir", str(sshd.dir), "--host", "127.0.0.1", "--port", str(sshd.port))
    assert result.returncode == 0, result.stderr
    known = tmp_path / "known_hosts"
    known.write_text(result.stdout)
    login = run(ssh_argv(sshd, user_key.private_path, known, "echo", "in"), timeout=60)
    assert login.returncode == 0, login.stderr.decode()
    assert login.stdout == b"in\n"
    expected = run([SSH_KEYGEN, "-lf", str(sshd.host_key_path) + ".pub"]).stdout.split()[1]
    assert f": {expected.decode()} (ssh-ed25519) from {sshd.host_key_path}.pub" in result.stdout


def test_the_default_port_is_a_bare_name(tmp_path):
    run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh_host_ed25519_key")])
    result = hostkey("--sshd-dir", str(tmp_path), "--host", "build.example.org")
    line = result.stdout.splitlines()[1]
    assert line.startswith("build.example.org ssh-ed25519 AAAA")


def test_serve_key_from_the_config_with_its_port(tmp_path):
    run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")])
    (tmp_path / "hk.pub").unlink()  # derived from the private key then
    config = tmp_path / "c.toml"
    config.write_text(f'jobdir = "{tmp_path}"\n[serve]\nlisten = "0.0.0.0:2222"\n'
                      f'host_key = "{tmp_path / "hk"}"\n')  # fmt: skip
    result = hostkey("--config", str(config), "--no-openssh", "--host", "h.example")
    assert result.returncode == 0, result.stderr
    comment, line = result.stdout.splitlines()
    assert line.startswith("[h.example]:2222 ssh-ed25519 AAAA")
    assert comment.startswith("# tryssh serve on port 2222: SHA256:")


def test_no_key_is_66(tmp_path: Path):
    result = hostkey("--sshd-dir", str(tmp_path))
    assert result.returncode == 66
    assert result.stderr.startswith("tryssh: no host key found")


def test_a_serve_listening_on_port_0_needs_serve_port(tmp_path: Path) -> None:
    """'[h]:0 ssh-ed25519 ...' matches no connection: ask for the real port instead."""
    run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")])
    config = tmp_path / "c.toml"
    config.write_text(f'jobdir = "{tmp_path}"\n[serve]\nlisten = "127.0.0.1:0"\n'
                      f'host_key = "{tmp_path / "hk"}"\n')  # fmt: skip
    result = hostkey("--config", str(config), "--no-openssh", "--host", "h.example")
    assert result.returncode == 64
    assert result.stdout == ""
    assert result.stderr == (
        f"tryssh: {config}: [serve] listen has port 0 (any free port): "
        "give the port tryssh serve listens on with --serve-port\n"
    )
    result = hostkey("--config", str(config), "--no-openssh", "--host", "h.example",
                     "--serve-port", "2222")  # fmt: skip
    assert result.returncode == 0 and "[h.example]:2222 ssh-ed25519 " in result.stdout


def test_the_default_host_is_never_localhost(monkeypatch) -> None:
    import socket

    from tryssh.cli.hostkey import default_host

    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(socket, "gethostname", lambda: "build7")
    assert default_host() == "build7"
    monkeypatch.setattr(socket, "getfqdn", lambda: "build7.example.org")
    assert default_host() == "build7.example.org"
