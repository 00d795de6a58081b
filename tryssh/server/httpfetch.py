"""HTTP requests with a deadline for the whole exchange, not only for each read.

urllib's ``timeout`` bounds each connect and each read: a server (or a proxy) that sends
a byte every few seconds never trips it, and holds the caller for as long as it likes.
:func:`fetch` cuts the connection once the request's time is up. Proxies, redirects and
certificate checks are urllib's own. Standard library only.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def fetch(
    request: urllib.request.Request,
    *,
    timeout: float,
    deadline: float,
    read: Callable[[Any], T],
    on_error: Callable[[urllib.error.HTTPError], T] | None = None,
) -> T:
    """What *read* makes of *request*'s answer, all within *deadline* seconds (each read
    within *timeout*). An answer with an error status is HTTPError, or what *on_error*
    makes of it (its body read within the deadline too). Past the deadline the connection
    is cut and URLError says ``no whole answer within N s``: even an answer that was read
    is not trusted then (one without Content-Length ends at the connection's end, so a
    cut one may look whole)."""
    watch = Deadline(deadline)
    opener = urllib.request.build_opener(WatchedHTTP(watch), WatchedHTTPS(watch))
    try:
        try:
            with opener.open(request, timeout=timeout) as response:
                result = read(response)
        except urllib.error.HTTPError as err:
            if on_error is None:
                raise
            with err:
                result = on_error(err)
    except (OSError, http.client.HTTPException, ValueError):
        if not watch.stop():
            raise
    if watch.stop():
        raise urllib.error.URLError(f"no whole answer within {deadline:g} s")
    return result


class Deadline:
    """Cuts the connections of one request once *seconds* have passed since it began."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.lock = threading.Lock()
        self.timers: list[threading.Timer] = []
        self.socks: list[socket.socket] = []
        self.stopped = False
        self.cut = False

    def watch(self, sock: socket.socket) -> None:
        """Cut *sock*'s connection at the deadline (each connection of the request: a
        redirect opens one). Through a duplicate: TLS takes the socket's descriptor over
        (the original is left without one) before its handshake, which is cut too."""
        timer = threading.Timer(max(0.0, self.end - time.monotonic()), self._cut)
        timer.daemon = True
        with self.lock:
            if self.stopped:
                return
            self.socks.append(sock.dup())
            self.timers.append(timer)
        timer.start()

    def _cut(self) -> None:
        with self.lock:  # stop() closes the duplicates under it: never one closed meanwhile
            if self.stopped:
                return
            self.cut = True
            for sock in self.socks:
                try:
                    # A read blocked in another thread wakes with an end of file.
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> bool:
        """No cut after this; whether one happened."""
        with self.lock:
            self.stopped = True
            timers, self.timers = self.timers, []
            socks, self.socks = self.socks, []
            for sock in socks:
                sock.close()
        for timer in timers:
            timer.cancel()
        return self.cut


class _Watched:
    """An http.client connection whose sockets its request's Deadline cuts."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        create = self._create_connection  # type: ignore[attr-defined]

        # Watched from the TCP connection on: a proxy's CONNECT and the TLS handshake
        # (both inside connect()) are within the deadline too.
        def create_watched(*a: Any, **k: Any) -> socket.socket:
            sock = create(*a, **k)
            deadline.watch(sock)
            return sock

        self._create_connection = create_watched


class WatchedHTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class WatchedHTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class WatchedHTTP(urllib.request.HTTPHandler):
    """urllib's http handler (proxies and redirects as usual), its connections watched."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(WatchedHTTPConnection, req, deadline=self.deadline)


class WatchedHTTPS(urllib.request.HTTPSHandler):
    """urllib's https handler (the default context: certificates checked), watched."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(WatchedHTTPSConnection, req, context=self._context,
                            deadline=self.deadline)  # fmt: skip
