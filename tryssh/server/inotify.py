"""A minimal inotify watch on directories, through libc with ctypes (stdlib only).

The events are not parsed: any event means "look again", which also covers a queue
overflow. The consumer watches ``new/`` with it; ``watch`` and ``log --follow`` watch a
job's record and log. Where inotify is missing (or the per-user limit of instances is
reached) the constructor raises OSError and callers poll instead.
"""

from __future__ import annotations

import ctypes
import os
import select

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
DIRECTORY_EVENTS = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE


def _libc() -> ctypes.CDLL:
    # The running process already has libc loaded: no ldconfig run (find_library) needed.
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, "inotify_init1", None) is None:
        from ctypes.util import find_library

        libc = ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
    return libc


class Inotify:
    """Watches on one or more directories; ``fd`` is readable when something happened."""

    def __init__(self, path: str | None = None, mask: int = DIRECTORY_EVENTS) -> None:
        libc = _libc()
        init = getattr(libc, "inotify_init1", None)
        if init is None:
            raise OSError("inotify is not available")
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self.fd = fd
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        if path is not None:
            try:
                self.add(path, mask)
            except OSError:
                os.close(fd)
                raise

    def add(self, path: str, mask: int = DIRECTORY_EVENTS) -> None:
        """Watch *path* too (OSError if it cannot be watched, e.g. it does not exist)."""
        if self._add(self.fd, os.fsencode(path), mask) < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path)

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for an event; True if there was one (drained)."""
        try:
            ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        except InterruptedError:
            return False
        if ready:
            self.drain()
        return bool(ready)

    def drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
