"""Helpers for attacking a running ``tryssh serve`` from the tests: raw paramiko clients."""

from __future__ import annotations

import socket

import paramiko
from test_serve import Serve


def client(server: Serve, source: str = "127.0.0.1", timeout: float = 20) -> paramiko.Transport:
    """A paramiko transport to *server* from *source*, host key checked, not yet logged in."""
    sock = socket.create_connection(
        ("127.0.0.1", server.port), timeout=timeout, source_address=(source, 0)
    )
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.start_client(timeout=timeout)
    key = transport.get_remote_server_key()
    assert key.fingerprint == server.fingerprint
    return transport


def key_login(server: Serve, source: str = "127.0.0.1", timeout: float = 20) -> paramiko.Transport:
    """A transport logged in as alice with her key."""
    transport = client(server, source, timeout)
    transport.auth_publickey("alice", paramiko.PKey.from_path(server.alice.private_path))
    return transport
