"""HTTP servers that trickle their answer: a Buildbot master (or a proxy in front of it)
and a webhook receiver that send a byte every 50 ms.

A per-read timeout never trips on such a server: before, tryssh's calls lasted as long as
the trickle did (hours for a 16 MiB answer), holding the consumer's follow loop, a
``status --wait`` or a webhook builder. Each request now has a deadline for the whole
exchange (:mod:`tryssh.server.httpfetch`): the connection is cut, the request is retried
like one that got no answer, and the caller gets one line. The servers are raw sockets on
127.0.0.1 (ports chosen at run time); each test ends by itself.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from test_builders import context, make_config

from tryssh.core.jobfile import Job
from tryssh.server import buildbot, builders

STATUS_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
# Where the trickle is: in a header that never ends, or in a body that Content-Length
# says is 10,000 bytes long (a byte every 50 ms: over 8 minutes).
TRICKLES = {
    "headers": STATUS_200 + b"X-Pad: " + b"x" * 10_000 + b"\r\n\r\n",
    "body": STATUS_200 + b"Content-Length: 10000\r\n\r\n" + b'{"buildsets": []}' + b" " * 9_983,
    "error body": b"HTTP/1.1 503 Busy\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10_000,
    # To an https:// URL: a TLS record header that promises 16 KiB of handshake, then the
    # bytes of it one at a time (the handshake is inside urllib's connect).
    "tls handshake": b"\x16\x03\x03\x40\x00" + b"\x02" * 16_384,
}


class Trickler:
    """A loopback server that answers every request with *answer*, a byte at a time."""

    def __init__(self, answer: bytes, interval: float = 0.05) -> None:
        self.answer, self.interval = answer, interval
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in self.answer:
                if self.stopped.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # cut by the client: what it should do
                    return

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def trickler() -> Iterator[Callable[[bytes], Trickler]]:
    made: list[Trickler] = []

    def make(answer: bytes) -> Trickler:
        made.append(Trickler(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def bounded(call: Callable[[], Any]) -> Any:
    """*call*'s result (or the exception it raised), from a thread: a call that is still
    reading the trickle after a minute fails the test instead of blocking the suite."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as err:  # the test inspects it
            outcome.append(err)

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    wait_until(lambda: not caller.is_alive(), timeout=60,
               message="the call is still reading the trickle")  # fmt: skip
    return outcome[0]


@pytest.mark.parametrize("where", ["headers", "body", "tls handshake"])
def test_buildbot_answer_trickled_is_cut_at_the_deadline_and_asked_again(trickler, where):
    server = trickler(TRICKLES[where])
    url = server.url.replace("http:", "https:") if where.startswith("tls") else server.url
    api = buildbot.Api(url, retries=1, timeout=5, deadline=1, sleep=lambda s: None)
    err = bounded(lambda: api.buildsets("jid-1"))
    assert isinstance(err, buildbot.Unavailable), err
    assert err.message.endswith("no whole answer within 1 s"), err.message
    assert server.connections == 2  # asked again once (retries=1)


def test_buildbot_stop_answered_by_a_trickle_is_one_line(trickler):
    """A stop (POST, not retried) is cut the same way."""
    server = trickler(TRICKLES["body"])
    api = buildbot.Api(server.url, timeout=5, deadline=1)
    err = bounded(lambda: api.post("builds/7", "stop", {"reason": "r"}))
    assert isinstance(err, buildbot.Unavailable), err
    assert err.message.endswith("(stop): no whole answer within 1 s"), err.message


@pytest.mark.parametrize("where", ["headers", "body", "error body"])
def test_webhook_receiver_that_trickles_is_cut_at_the_builders_timeout(
    trickler, tmp_path: Path, where: str
) -> None:
    """The webhook builder's ``timeout`` is for the whole request: the builder ends
    ``error`` naming the cut, after its retries, where it waited for the whole trickle."""
    server = trickler(TRICKLES[where])
    secret = tmp_path / "secret"
    secret.write_text("k")
    config = make_config(tmp_path, {"hook": {"webhook": server.url + "try",
                                             "secret_file": str(secret), "timeout": 1,
                                             "retries": 1}})  # fmt: skip
    ctx = context(config, "hook", Job("i", "b", "r", 0, b"p", None))
    outcome = bounded(lambda: builders.run(ctx))
    assert isinstance(outcome, builders.Outcome), outcome
    assert outcome.result == "error"
    assert outcome.reason == f"POST {server.url}try: no whole answer within 1 s"
    assert server.connections == 2
    assert "no whole answer within 1 s" in Path(ctx.log_path).read_text()
