"""Watching a directory with inotify, through libc with ctypes (no extra package)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


class Inotify:
    """A minimal inotify watch on one directory, through libc with ctypes.

    The events are not parsed: any event means "list the directory again", which also
    covers a queue overflow.
    """

    def __init__(self, path: str) -> None:
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        libc = ctypes.CDLL(libc_name, use_errno=True)
        init = getattr(libc, "inotify_init1", None)
        if init is None:
            raise OSError("inotify is not available")
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self.fd = fd
        mask = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE
        add = libc.inotify_add_watch
        add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        if add(fd, os.fsencode(path), mask) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, os.strerror(errno), path)

    def drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
