"""Exit codes (sysexits.h) and the one exception family every tryssh command reports.

Every expected failure is a :class:`TrysshError`: the command line prints its one-line
message and exits with its code, never a traceback.
"""

from __future__ import annotations

EX_OK = 0
EX_USAGE = 64  # bad command line, or a command the server refuses
EX_DATAERR = 65  # malformed, truncated or oversized job
EX_NOINPUT = 66  # an input file (job, diff, config) does not exist
EX_UNAVAILABLE = 69  # a service or program we need is missing
EX_SOFTWARE = 70  # internal error (a bug)
EX_CANTCREAT = 73  # cannot create the output (jobdir missing, not writable)
EX_IOERR = 74
EX_TEMPFAIL = 75  # try again later: disk full, connection lost, lock busy
EX_NOPERM = 77  # permission denied, policy refusal
EX_CONFIG = 78  # configuration file error

#: The codes that mean "the client asked for something wrong": refused, not failed. Asking
#: again will not help (``tryssh try --wait`` stops on them).
REFUSALS = (EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOPERM)


class TrysshError(Exception):
    """An expected failure: a one-line message and a sysexits code."""

    exit_code = EX_SOFTWARE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        # One line, always: a message that reaches a terminal or a log must not forge lines.
        return " ".join(str(self).split())


class UsageError(TrysshError):
    exit_code = EX_USAGE


class BadJob(TrysshError):
    """The job file is malformed, truncated or too large."""

    exit_code = EX_DATAERR


class JobTooLarge(BadJob):
    """The job is over the size limit (found while reading it)."""


class CannotCreate(TrysshError):
    exit_code = EX_CANTCREAT


class TempFail(TrysshError):
    exit_code = EX_TEMPFAIL


class PermissionDenied(TrysshError):
    exit_code = EX_NOPERM


class ConfigError(TrysshError):
    exit_code = EX_CONFIG


def describe_oserror(err: OSError, operation: str, path: str | None = None) -> str:
    """One line naming the operation, the path(s) and the system's reason.

    ``describe_oserror(err, "rename")`` gives ``rename /a -> /b: Permission denied``.
    """
    where = path or err.filename
    text = operation if where is None else f"{operation} {where}"
    if err.filename2 is not None and path is None:
        text += f" -> {err.filename2}"
    return f"{text}: {err.strerror or err}"


def exit_code_for_oserror(err: OSError) -> int:
    """Map an OS error met while writing a job to the sysexits code a client can act on."""
    import errno

    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR, errno.EIO):
        return EX_TEMPFAIL
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EX_NOPERM
    return EX_CANTCREAT
