"""The parts of ``tryssh serve`` that need no client: password hashes, ``tryssh passwd``,
listen addresses, the per-address lockout, config checks, and an IPv6 listener."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import run, venv_bin, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh.core.netaddr import parse_listen
from tryssh.errors import ConfigError
from tryssh.server.config import config_from_dict
from tryssh.server.passwords import hash_password, parse_hash, verify_password
from tryssh.server.serve import AuthLimiter, Settings, accounts_from_config

FAST = {"n": 1 << 4, "r": 1, "p": 1}
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq3sVgK2Jx2UeCJC6V7eAbT1Yf3aGzXzv6rT1vCw0HX a@b"


# -- password hashes ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(password=st.text(min_size=1, max_size=64), other=st.text(min_size=1, max_size=64))
def test_hash_round_trip(password: str, other: str) -> None:
    encoded = hash_password(password, **FAST)
    assert verify_password(password, encoded)
    assert verify_password(other, encoded) == (other == password)


def test_hash_format_salted_and_default_cost() -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second  # random salt
    assert re.fullmatch(r"scrypt\$32768\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", first)
    n, r, p, salt, digest = parse_hash(first)
    assert (n, r, p, len(salt), len(digest)) == (32768, 8, 1, 16, 32)
    assert verify_password("pw", first)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "pw",
        "bcrypt$2$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",
        "scrypt$1000$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",  # N not a power of two
        "scrypt$4194304$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",  # N too large: DoS
        "scrypt$16$8$1$!!!$AAAAAAAAAAAAAAAAAAAAAA==",
        "scrypt$16$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==",  # salt too short
        "scrypt$16$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==$extra",
    ],
)
def test_malformed_hashes_never_verify(encoded: str) -> None:
    with pytest.raises(ConfigError):
        parse_hash(encoded)
    assert not verify_password("pw", encoded)


def test_passwd_stdin_prints_a_hash_that_verifies() -> None:
    result = run([venv_bin("tryssh"), "passwd", "--stdin"], input=b"s3cret pass\n")
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode().strip()
    assert verify_password("s3cret pass", line)
    assert not verify_password("s3cret pass\n", line)


def test_passwd_refuses_empty_and_non_terminal() -> None:
    result = run([venv_bin("tryssh"), "passwd", "--stdin"], input=b"\n")
    assert result.returncode == 64
    assert b"empty password" in result.stderr
    result = run([venv_bin("tryssh"), "passwd"], input=b"pw\n")
    assert result.returncode == 64
    assert b"--stdin" in result.stderr


def test_passwd_on_a_terminal_asks_twice_without_echo() -> None:
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: tryssh passwd on the pty
        os.execv(venv_bin("tryssh"), ["tryssh", "passwd"])  # noqa: S606 (argv, no shell)
    output = b""

    def read_until(needle: bytes) -> bool:
        nonlocal output
        try:
            output += os.read(fd, 4096)
        except OSError:
            return True
        return needle in output

    wait_until(lambda: read_until(b"Password: "), timeout=20, message=lambda: repr(output))
    os.write(fd, b"hunter2\n")
    wait_until(lambda: read_until(b"Again: "), timeout=20, message=lambda: repr(output))
    os.write(fd, b"hunter2\n")
    wait_until(lambda: read_until(b"password_hash"), timeout=20, message=lambda: repr(output))
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"hunter2" not in output  # no echo
    line = next(x for x in output.decode().splitlines() if x.startswith("scrypt$"))
    assert verify_password("hunter2", line.strip())


# -- listen addresses and settings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2222", ("127.0.0.1", 2222)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:2222", ("::1", 2222)),
        ("localhost:22", ("localhost", 22)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["", "2222", ":2222", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "::1:22", "[::1]"]
)
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


@given(st.text(max_size=30))
def test_parse_listen_never_crashes(text: str) -> None:
    try:
        host, port = parse_listen(text)
    except ConfigError:
        return
    assert host and 0 <= port <= 65535


def test_settings_defaults_and_checks(tmp_path: Path) -> None:
    config = config_from_dict({"jobdir": "j"}, str(tmp_path / "c.toml"))
    s = Settings.from_config(config)
    assert (s.host, s.port, s.max_auth_tries, s.max_connections, s.idle_timeout) == (
        "127.0.0.1",
        2222,
        6,
        32,
        300.0,
    )
    assert s.host_key == os.path.join(config.state_dir, "serve", "ssh_host_ed25519_key")
    with pytest.raises(ConfigError, match="idle_timeout"):
        config_from_dict({"jobdir": "j", "serve": {"idle_timeout": 0}}, str(tmp_path / "c"))


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def ssh_line(ktype: str, *fields: bytes) -> str:
    """``TYPE BASE64`` whose blob says *ktype*, then *fields*, as SSH strings."""
    blob = b"".join(_ssh_string(f) for f in (ktype.encode(), *fields))
    return f"{ktype} {base64.b64encode(blob).decode()} test"


def rsa_line(bits: int) -> str:
    """A well-formed ``ssh-rsa`` line with a modulus of *bits* bits (not a real key pair)."""
    modulus = ((1 << (bits - 1)) | 1).to_bytes(bits // 8, "big")
    return ssh_line("ssh-rsa", b"\x01\x00\x01", b"\x00" + modulus)


def test_accounts_skip_the_policy_fallback_and_check_keys(tmp_path: Path) -> None:
    data = {
        "jobdir": "j",
        "users": {"alice": {"keys": [ED25519]}, "*": {"keys": [ED25519]}},
    }
    accounts = accounts_from_config(config_from_dict(data, "c"))
    assert list(accounts) == ["alice"]
    assert next(iter(accounts["alice"].keys.values())).startswith("SHA256:")
    for bad in (
        "restrict " + ED25519,
        "ssh-ed25519 not-base64!",
        "ssh-rsa " + ED25519.split()[1],  # the blob says ed25519
        rsa_line(1024),  # weak: `tryssh keys add` refuses it, so serve does too
        ssh_line("ssh-invented", b"junk"),  # an invented type with a junk blob
        ssh_line("ssh-ed25519", b"\x01" * 31),  # the blob is too short for an ed25519 key
    ):
        data["users"] = {"alice": {"keys": [bad]}}
        with pytest.raises(ConfigError, match=r"users\.alice\.keys\[0\]"):
            accounts_from_config(config_from_dict(data, "c"))
    data["users"] = {"alice": {"password_hash": "plaintext"}}
    with pytest.raises(ConfigError, match=r"users\.alice\.password_hash"):
        accounts_from_config(config_from_dict(data, "c"))


# -- the lockout --------------------------------------------------------------------------------


def test_lockout_after_failures_and_its_end() -> None:
    now = [1000.0]
    limiter = AuthLimiter(3, 60, clock=lambda: now[0])
    assert not limiter.failure("10.0.0.1")
    assert not limiter.failure("10.0.0.1")
    assert limiter.locked("10.0.0.1") == 0
    assert limiter.failure("10.0.0.1")  # third: locked
    assert limiter.locked("10.0.0.1") == 60
    assert limiter.locked("10.0.0.2") == 0  # per address
    now[0] += 59
    assert limiter.locked("10.0.0.1") == pytest.approx(1)
    now[0] += 2
    assert limiter.locked("10.0.0.1") == 0
    assert not limiter.failure("10.0.0.1")  # counting starts again


def test_old_failures_are_forgiven_and_success_resets() -> None:
    now = [0.0]
    limiter = AuthLimiter(2, 10, clock=lambda: now[0])
    assert not limiter.failure("a")
    now[0] += 11
    assert not limiter.failure("a")  # the first one is older than the window
    limiter.success("a")
    assert not limiter.failure("a")


def test_memory_of_failures_stays_bounded_by_the_window() -> None:
    now = [0.0]
    limiter = AuthLimiter(5, 10, clock=lambda: now[0])
    for i in range(AuthLimiter.SWEEP_AT):  # one failure each from many addresses
        limiter.failure(f"10.{i // 256}.{i % 256}.1")
    now[0] += 11  # all of them forgiven
    limiter.failure("192.0.2.1")
    limiter.failure("192.0.2.2")
    assert len(limiter._failures) <= 2
    assert limiter.locked("10.0.0.1") == 0


# -- whole-server checks without a client -------------------------------------------------------


def _config(tmp_path: Path, listen: str, users: str) -> Path:
    jobdir = tmp_path / "jobdir"
    for sub in ("tmp", "new", "cur"):
        (jobdir / sub).mkdir(parents=True, exist_ok=True)
    config = tmp_path / "c.toml"
    config.write_text(
        f'jobdir = "{jobdir}"\n[serve]\nlisten = "{listen}"\nhost_key = "{tmp_path / "hk"}"\n'
        + users
    )
    return config


def test_no_accounts_is_a_config_error(tmp_path: Path) -> None:
    config = _config(tmp_path, "127.0.0.1:0", '[users."*"]\nbuilders = ["*"]\n')
    result = run([venv_bin("tryssh"), "serve", "--config", str(config)])
    assert result.returncode == 78
    assert b"no [users.NAME] entries" in result.stderr


def test_a_privileged_port_is_permission_denied_not_a_temporary_failure(tmp_path: Path) -> None:
    """EACCES on bind was exit 75, which systemd's Restart=on-failure retries for ever."""
    import shutil
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        caps = "-net_bind_service"
        prefix = [str(setpriv), f"--bounding-set={caps}", f"--inh-caps={caps}"]
        if not setpriv or run([*prefix, "true"]).returncode != 0:
            pytest.skip("cannot drop CAP_NET_BIND_SERVICE here")
    probe = "import socket; socket.socket().bind(('127.0.0.1', 1))"
    if run([*prefix, sys.executable, "-c", probe]).returncode == 0:
        pytest.skip("this system lets anyone bind port 1 (ip_unprivileged_port_start)")
    config = _config(tmp_path, "127.0.0.1:1", f'[users.alice]\nkeys = ["{ED25519}"]\n')
    result = run([*prefix, venv_bin("tryssh"), "serve", "--config", str(config)], timeout=60)
    assert result.returncode == 77, result.stderr
    assert result.stderr.decode() == (
        "tryssh: cannot listen on 127.0.0.1:1: Permission denied (a port below 1024 needs "
        "CAP_NET_BIND_SERVICE: see contrib/tryssh-serve.service)\n"
    )


def test_weak_key_in_config_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, "127.0.0.1:0", f'[users.alice]\nkeys = ["{rsa_line(1024)}"]\n')
    result = run([venv_bin("tryssh"), "serve", "--config", str(config)])
    assert result.returncode == 78, result
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "users.alice.keys[0]" in err and "1024 bits; at least 2048" in err, err


def test_listen_on_ipv6_loopback(tmp_path: Path) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    config = _config(tmp_path, "[::1]:0", f'[users.alice]\nkeys = ["{ED25519}"]\n')
    proc = subprocess.Popen(
        [venv_bin("tryssh"), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "generated" in line:
            line = proc.stdout.readline()
        match = re.search(r"listening on \[::1\]:(\d+), host key (SHA256:\S+)", line)
        assert match, line
        with socket.create_connection(("::1", int(match.group(1))), timeout=10) as sock:
            assert sock.recv(8).startswith(b"SSH-2.0-")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_accepted_sockets_send_small_answers_at_once(tmp_path: Path) -> None:
    """TCP_NODELAY on every accepted socket: an answer's last small packet must not wait
    for the client's delayed ACK."""
    import socket
    import threading

    from tryssh.server.config import load_config
    from tryssh.server.serve import EmbeddedServer

    config = _config(tmp_path, "127.0.0.1:0", f'[users.alice]\nkeys = ["{ED25519}"]\n')
    server = EmbeddedServer(load_config(str(config)))
    host, _, port = server.bind().rpartition(":")
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,))
    thread.start()
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            assert sock.recv(8).startswith(b"SSH-2.0-")
            conn = wait_until(lambda: next(iter(server.connections), None))
            assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        stop.set()
        thread.join(timeout=30)


def test_a_key_at_the_old_default_place_is_refused_not_replaced(tmp_path: Path) -> None:
    """Without [serve] host_key, a key left at STATE_DIR/ssh_host_ed25519_key (the old
    default) must stop the server: generating a new one silently changed its identity."""
    from tryssh.server.config import load_config
    from tryssh.server.serve import EmbeddedServer

    config = _config(tmp_path, "127.0.0.1:0", f'[users.alice]\nkeys = ["{ED25519}"]\n')
    config.write_text(config.read_text().replace(f'host_key = "{tmp_path / "hk"}"\n', ""))
    state = tmp_path / "jobdir" / "state"
    state.mkdir(mode=0o700)
    (state / "ssh_host_ed25519_key").write_text("the key developers trust\n")
    with pytest.raises(ConfigError, match=r"old default place.*move it and its \.pub into"):
        EmbeddedServer(load_config(str(config)))
    assert not (state / "serve").exists()
    # Once moved, the key is the one used (here: not a key at all, so it cannot load).
    (state / "serve").mkdir(mode=0o700)
    (state / "ssh_host_ed25519_key").rename(state / "serve" / "ssh_host_ed25519_key")
    (state / "serve" / "ssh_host_ed25519_key").chmod(0o600)
    with pytest.raises(ConfigError, match="cannot load host key"):
        EmbeddedServer(load_config(str(config)))


def test_a_reload_applies_the_password_limits(tmp_path: Path) -> None:
    """SIGHUP changed [serve] max_auth_failures_per_address in the settings (and so in the
    'N failed logins: locked out for S s' line) but the limiter kept counting to the old one."""
    from tryssh.server.config import load_config
    from tryssh.server.serve import EmbeddedServer

    config = _config(tmp_path, "127.0.0.1:0", f'[users.alice]\nkeys = ["{ED25519}"]\n')
    server = EmbeddedServer(load_config(str(config)))
    assert not any(server.limiter.failure("192.0.2.1") for _ in range(3))  # default: 10
    text = config.read_text().replace("[serve]\n", "[serve]\nmax_auth_failures_per_address = 2\n"
                                      "auth_penalty_seconds = 5\nmax_auth_failures = 7\n")
    config.write_text(text)
    assert server.reload()
    assert (server.limiter.max_failures, server.limiter.penalty) == (2, 5)
    assert server.limiter.max_global_failures == 7
    assert [server.limiter.failure("192.0.2.2") for _ in range(2)] == [False, True]
    assert 0 < server.limiter.locked("192.0.2.2") <= 5
