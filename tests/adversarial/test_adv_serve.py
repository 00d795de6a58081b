"""``tryssh serve`` under attack: each test is an attack that worked before its fix (issue 14).

Bounded: a few dozen connections at most, deadlines on every wait, loopback addresses only.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest
from advserve import client, key_login
from helpers import wait_until
from test_serve import Serve, make_job

MAX_SESSIONS = 10


def _open(transport: paramiko.Transport) -> paramiko.Channel | None:
    try:
        return transport.open_session(timeout=10)
    except paramiko.ChannelException:
        return None


def test_eleventh_session_is_refused_not_deadlocked(serve_factory: object) -> None:
    server: Serve = serve_factory()  # type: ignore[operator]
    transport = key_login(server)
    try:
        channels = [_open(transport) for _ in range(MAX_SESSIONS)]
        assert all(channels)
        # Before: the 11th open hung the connection's transport thread for good.
        assert _open(transport) is None
        server.wait_log("too many sessions")
        # The connection still answers: close one, and a new one opens.
        channels[0].close()  # type: ignore[union-attr]
        assert wait_until(lambda: _open(transport), timeout=30)
    finally:
        transport.close()
    # SIGTERM stops it, by itself, with 0.
    assert server.stop() == 0, server.output()


def test_sessions_opened_and_closed_without_exec_do_not_count(serve_factory: object) -> None:
    server: Serve = serve_factory()  # type: ignore[operator]
    transport = key_login(server)
    try:
        for _ in range(3 * MAX_SESSIONS):
            channel = _open(transport)
            assert channel is not None, server.output()
            channel.close()
        channel = _open(transport)
        assert channel is not None
        channel.exec_command("tryserver builders")
        assert channel.recv_exit_status() == 0
        assert b"unit" in channel.makefile().read()
    finally:
        transport.close()


def test_sigterm_stops_serve_with_full_connections(serve_factory: object) -> None:
    server: Serve = serve_factory()  # type: ignore[operator]
    transports = [key_login(server) for _ in range(3)]
    try:
        for transport in transports:
            for _ in range(MAX_SESSIONS + 1):
                _open(transport)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.output()
    finally:
        for transport in transports:
            transport.close()


@pytest.fixture(autouse=True)
def _quiet_paramiko() -> None:
    import logging

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


# -- slowloris and floods -------------------------------------------------------------------


def _trickle(server: Serve, source: str) -> socket.socket | None:
    """A connection from *source* that has sent one byte of its banner (None if dropped)."""
    try:
        sock = socket.create_connection(
            ("127.0.0.1", server.port), timeout=5, source_address=(source, 0)
        )
        sock.sendall(b"S")
    except OSError:
        return None
    return sock


def test_slowloris_from_one_address_leaves_room_for_others(serve_factory: object) -> None:
    server: Serve = serve_factory(  # type: ignore[operator]
        serve={"max_connections": 12, "per_source_max_startups": 3}
    )
    # Before: 30 half-open connections held all 12 slots for 30 s (paramiko's banner timeout).
    flood = [_trickle(server, "127.0.0.2") for _ in range(30)]
    try:
        for _ in range(5):
            result = server.ssh("tryserver", "builders")
            assert result.returncode == 0, server.output()
        server.wait_log("(per_source_max_startups)")
    finally:
        for sock in flood:
            if sock is not None:
                sock.close()
    assert "outcome=dropped" in server.audit()


def test_login_grace_time_is_a_hard_deadline(serve_factory: object) -> None:
    server: Serve = serve_factory(serve={"login_grace_time": 1})  # type: ignore[operator]
    sock = _trickle(server, "127.0.0.1")
    assert sock is not None
    # Before: every byte restarted paramiko's banner timeout; the deadline never came.
    deadline = time.monotonic() + 20
    closed = False
    with sock:
        sock.settimeout(0.3)
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"S")
                closed = sock.recv(4096) == b"" if _readable(sock) else False
            except TimeoutError:
                continue
            except OSError:
                closed = True
    assert closed, server.output()
    server.wait_log("authentication timeout")


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0.3)[0])


def test_request_time_is_a_hard_deadline(serve_factory: object) -> None:
    server: Serve = serve_factory(serve={"max_request_time": 1})  # type: ignore[operator]
    transport = key_login(server)
    try:
        channel = transport.open_session(timeout=10)
        channel.exec_command("tryserver")
        job = make_job()
        # One byte at a time, well inside the idle timeout (300 s), never finishing.
        deadline = time.monotonic() + 20
        for byte in job * 100:
            if channel.exit_status_ready() or time.monotonic() > deadline:
                break
            try:
                channel.sendall(bytes([byte]))
            except OSError:
                break
            channel.status_event.wait(0.2)
        assert channel.recv_exit_status() == 75
        assert b"longer than 1 s" in channel.makefile_stderr().read()
    finally:
        transport.close()
    assert server.delivered() == [] and server.leftovers() == []


# -- password guessing --------------------------------------------------------------------------


def _guess(server: Serve, source: str, user: str, attempts: int) -> None:
    try:
        transport = client(server, source)
    except (OSError, paramiko.SSHException, EOFError):
        return
    try:
        for _ in range(attempts):
            try:
                transport.auth_password(user, "wrong guess")
            except paramiko.AuthenticationException:
                continue
            except (OSError, paramiko.SSHException, EOFError):
                return
    finally:
        transport.close()


def _burst(server: Serve, sources: list[str], user: str = "nobody", attempts: int = 2) -> int:
    """Guess in parallel from every source; the number of guesses the server evaluated."""
    threads = [
        threading.Thread(target=_guess, args=(server, source, user, attempts)) for source in sources
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return server.audit().count("event=auth outcome=failed method=password")


def test_parallel_guesses_cannot_pass_the_per_address_limit(serve_factory: object) -> None:
    server: Serve = serve_factory(  # type: ignore[operator]
        serve={
            "max_auth_failures_per_address": 10,
            "per_source_max_startups": 64,
            "max_connections": 64,
            "max_startups": "64:100:64",
        }
    )
    # Before: 32 connections at once got 40 guesses evaluated past a limit of 10.
    evaluated = _burst(server, ["127.0.0.1"] * 32)
    assert evaluated <= 10, server.output()
    assert "too many attempts in flight" in server.log() or "locked out" in server.log()


def test_guesses_from_many_addresses_meet_a_global_limit(serve_factory: object) -> None:
    # max_startups high: the guessers' connections, closing, must not make the key login
    # below a random early drop (seen on a loaded machine); only the global limit is tested.
    limits = {"max_auth_failures_per_address": 10, "max_auth_failures": 12,
              "max_startups": "64:100:64"}  # fmt: skip
    server: Serve = serve_factory(serve=limits)  # type: ignore[operator]
    # Before: the limit was per address only (30 addresses: 300 guesses in 30 s).
    evaluated = _burst(server, [f"127.0.0.{i}" for i in range(2, 14)], attempts=3)
    assert evaluated <= 12, server.output()
    server.wait_log("too many failed logins from all addresses")
    # Keys still work: the global limit is on password guesses.
    assert server.ssh("tryserver", "builders").returncode == 0


# -- the limits' logic, without sockets -----------------------------------------------------------


def test_in_flight_attempts_count_against_the_limits() -> None:
    from tryssh.server.serve import AuthLimiter

    limiter = AuthLimiter(3, 60.0, clock=lambda: 100.0, max_global_failures=5)
    assert [limiter.begin("a") for _ in range(3)] == [None, None, None]
    assert limiter.begin("a") == "too many attempts in flight from this address"
    assert limiter.begin("b") is None and limiter.begin("c") is None
    assert limiter.begin("d") == "too many failed logins from all addresses"
    # An attempt never evaluated (no hashing slot) gives its place back and is no failure.
    limiter.end("c", None)
    assert limiter.begin("d") is None
    assert [limiter.end("a", False) for _ in range(3)] == [False, False, True]
    assert limiter.locked("a") == 60.0


def test_max_startups_random_early_drop(tmp_path: object) -> None:
    from tryssh.server.serve import EmbeddedServer, parse_max_startups

    assert parse_max_startups("10:30:20") == (10, 30, 20)
    assert parse_max_startups("7") == (7, 100, 7)
    for bad in ("", "1:2", "0:30:10", "10:30:5", "10:0:20", "10:101:20", "a:b:c", "-1"):
        with pytest.raises(Exception, match="max_startups"):
            parse_max_startups(bad)

    class Half:  # a connection not logged in yet
        def __init__(self, address: str) -> None:
            self.address, self.authenticated = address, False

    server = EmbeddedServer.__new__(EmbeddedServer)
    server.settings = type("S", (), {"max_connections": 100, "per_source_max_startups": 2,
                                     "max_startups": (4, 50, 8)})()  # fmt: skip
    server.random = __import__("random").Random(1)
    server.connections = {Half(f"10.0.0.{i}") for i in range(3)}  # type: ignore[misc]
    assert server._refusal("10.0.0.99") is None
    server.connections |= {Half("10.0.0.99"), Half("10.0.0.99")}  # type: ignore[misc]
    assert "per_source_max_startups" in (server._refusal("10.0.0.99") or "")
    drops = sum(server._refusal("10.0.0.50") is not None for _ in range(1000))
    assert 550 < drops < 800  # 5 of 4..8 not logged in: 50% + 50% * 1/4 = 62.5%
    server.connections |= {Half(f"10.0.1.{i}") for i in range(3)}  # type: ignore[misc]
    assert all(server._refusal("10.0.0.50") for _ in range(100))  # 8: full


# -- a client that failed must not deliver ------------------------------------------------------


def test_refused_pty_ends_the_session_before_anything_is_read(serve_factory: object) -> None:
    server: Serve = serve_factory()  # type: ignore[operator]
    # Before: ssh -tt exited 255 ("PTY allocation request failed") and the job was delivered.
    for _ in range(5):
        result = server.ssh("tryserver", input=make_job(), opts=["-tt"])
        assert result.returncode == 255
        assert b"PTY allocation request failed" in result.stderr
    # The same with paramiko, which waits for each reply: the exec after the pty is refused.
    transport = key_login(server)
    try:
        channel = transport.open_session(timeout=10)
        with pytest.raises(paramiko.SSHException):
            channel.get_pty()
        with pytest.raises(paramiko.SSHException):
            channel.exec_command("tryserver")
    finally:
        transport.close()
    server.wait_log("exec after a refused pty")
    assert server.delivered() == [] and server.leftovers() == []


def test_umask_000_makes_nothing_world_writable(tmp_path: Path) -> None:
    import stat

    from tryssh.server.config import load_config
    from tryssh.server.serve import EmbeddedServer

    audit = tmp_path / "logs" / "serve" / "audit.log"
    key = tmp_path / "keys" / "host_key"
    config = tmp_path / "c.toml"
    config.write_text(
        f'jobdir = "{tmp_path}"\naudit_log = "{audit}"\n[serve]\nhost_key = "{key}"\n'
        '[users.alice]\nkeys = []\npassword_hash = "scrypt$1024$8$1$c2FsdHNhbHQ=$'
        'aGFzaGhhc2hoYXNoaGFzaA=="\n'
    )
    old = os.umask(0)
    try:
        EmbeddedServer(load_config(str(config)))
    finally:
        os.umask(old)
    # Before: the .pub was 0666 and the audit log's new parents 0777.
    for path in (key.parent, Path(str(key) + ".pub"), audit.parent, audit.parent.parent):
        assert not path.stat().st_mode & stat.S_IWOTH, (path, oct(path.stat().st_mode))


def test_the_host_key_must_live_where_only_the_server_writes(tmp_path: Path) -> None:
    from tryssh.errors import ConfigError
    from tryssh.server.serve import load_host_key

    state = tmp_path / "state"
    state.mkdir(mode=0o2770)
    state.chmod(0o2770)  # the group-shared state directory
    # The default place: a 0700 directory of its own, under the shared state directory.
    _key, created = load_host_key(str(state / "serve" / "ssh_host_ed25519_key"))
    assert created and (state / "serve").stat().st_mode & 0o777 == 0o700
    # Before: the key sat in state/ itself, where any group member could replace it.
    with pytest.raises(ConfigError, match="writable by it alone"):
        load_host_key(str(state / "ssh_host_ed25519_key"))
    assert not (state / "ssh_host_ed25519_key").exists()


def test_a_trickling_request_cannot_hold_the_shutdown(serve_factory: object) -> None:
    server: Serve = serve_factory(serve={"stop_timeout": 1})  # type: ignore[operator]
    transport = key_login(server)
    try:
        channel = transport.open_session(timeout=10)
        channel.exec_command("tryserver")
        channel.sendall(make_job()[:10])  # and never the rest
        wait_until(server.leftovers, timeout=30, message="the request never started")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        # Before: serve waited for the request: up to its idle timeout, again at every byte.
        assert server.proc.wait(timeout=30) == 0, server.output()
    finally:
        transport.close()
    assert server.delivered() == [] and server.leftovers() == []
    assert "after stop_timeout" in server.log()


def test_doctor_names_a_host_key_directory_others_can_write(tmp_path: Path) -> None:
    from tryssh.server.config import config_from_dict
    from tryssh.server.doctor import check_serve

    shared = tmp_path / "state"
    shared.mkdir()
    shared.chmod(0o2770)
    (shared / "hk").write_text("x")
    (shared / "hk").chmod(0o600)
    config = config_from_dict({"jobdir": str(tmp_path), "serve": {"host_key": str(shared / "hk")}})
    problems = [f.message for f in check_serve(config) if f.level == "problem"]
    assert any("writable by group or others" in m for m in problems), problems
