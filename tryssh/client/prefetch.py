"""Read the working copy's change while ``tryssh try`` is still loading.

The change comes from git (hg, svn) in subprocesses that run on their own core, while the
command line's modules load and its options and config files are read: the two take about
the longer of them, not the sum. The change is read as a plain ``tryssh try`` in this
directory would read it (the VCS found here, its upstream as the base, no untracked files)
and used only if the request, once read, turns out to be exactly that; otherwise it is
thrown away and the change read again as asked. Reading never writes the working copy or
its index (see :func:`tryssh.client.vcs.extract`), so a change read for nothing costs
only time on the other core. In a git working copy the diff itself starts even sooner,
before this thread (see :mod:`tryssh.client.diffahead`), and the thread's read uses it.

This module is imported on every ``tryssh try`` before anything else: stdlib only, and
the rest is imported once git runs.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tryssh.client.job import TryRequest
    from tryssh.client.vcs import SourceChange

# Options that change how the change is read (or stop before it is): with one of them on
# the command line, reading ahead would only be thrown away.
_OTHER_READS = ("--diff", "--vc", "--branch", "--baserev", "--untracked", "--topdir",
                "--get-builder-names", "--help", "-h")  # fmt: skip

SWITCH_INTERVAL = 0.0005  # seconds, while the thread runs (Python's default: 0.005)

_pending: Prefetch | None = None


class Prefetch:
    """The change of the working copy around *cwd*, read in a thread."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.change: SourceChange | None = None
        # The threads run Python only in short bursts between their gits' output: let
        # them have the GIL soon after they ask, not after the 5 ms that import-heavy code
        # holds it for.
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        # git's diff first, if git's files say enough to start it (most of the time).
        from tryssh.client import diffahead

        self._ahead = diffahead.start(cwd)
        # Imported here, before the thread starts: the first git then starts without
        # waiting for the GIL that click's imports would hold in the main thread.
        try:
            import threading

            import tryssh.client.vcs  # noqa: F401

            self._thread = threading.Thread(target=self._read, name="tryssh-prefetch",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        except BaseException:
            if self._ahead is not None:
                self._ahead.discard()
            sys.setswitchinterval(self._interval)
            raise

    def _read(self) -> None:
        try:
            from tryssh.client import vcs

            # As gather_change reads it for a request with nothing set.
            self.change = vcs.extract(*vcs.detect_vcs(self.cwd), ahead=self._ahead)
        except BaseException:  # the real read reports it, in its own words
            self.change = None
        finally:
            if self._ahead is not None:
                self._ahead.discard()  # not used (or used: then there is nothing left)

    def wait(self) -> SourceChange | None:
        """The change read ahead, or None if reading it failed (read it again, as asked)."""
        self._thread.join()
        sys.setswitchinterval(self._interval)
        return self.change


def start(argv: list[str]) -> None:
    """Start reading ahead for ``tryssh try`` *argv* (its arguments), unless they ask for
    another change than the working copy's default one."""
    global _pending
    options = argv[: argv.index("--")] if "--" in argv else argv
    if any(arg.split("=", 1)[0] in _OTHER_READS for arg in options):
        return
    try:
        cwd = os.getcwd()
    except OSError:
        return  # the directory is gone: the real read says so
    _pending = Prefetch(cwd)


def take(req: TryRequest, cwd: str) -> SourceChange | None:
    """The change read ahead, if *req* asks for exactly that one; None otherwise."""
    global _pending
    pending, _pending = _pending, None
    if pending is None:
        return None
    default = (req.diff is None and req.baserev is None and req.branch is None
               and not req.untracked and cwd == pending.cwd)  # fmt: skip
    change = pending.wait()  # also when unused: its git runs end before tryssh does
    if not default or change is None or (req.vc and req.vc != change.vcs):
        return None
    return change


def finish() -> None:
    """Wait for a read that nobody took (the command failed early), so that its private
    copy of the index is removed before the process exits."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        try:
            pending.wait()  # not long: a Ctrl-C reached git too
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: exit now (a private index copy may stay in $TMPDIR)
