"""``tryssh serve`` under attack: each test is an attack that worked before its fix (issue 14).

Bounded: a few dozen connections at most, deadlines on every wait, loopback addresses only.
"""

from __future__ import annotations

import signal

import paramiko
import pytest
from advserve import key_login
from helpers import wait_until
from test_serve import Serve, make_job, serve_factory  # noqa: F401  (the fixture)

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
        assert wait_until(lambda: _open(transport), timeout=10)
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
