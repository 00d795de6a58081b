"""Garbage collection: remove finished jobs, their records and logs once they are old.

What goes, once older than the cutoff:

- A job with a *final* record (success, failure, error, rejected, interrupted, cancelled,
  delivered) whose ``finished`` time is older: its job file (in ``cur/``, or ``withdrawn/``),
  ``LOG_DIR/JOB/``, the record and a cancel request left for it. A job without a final
  record is never removed, since a consumer still owes it a result.
- A job a drop-in ``cancel`` took back from ``new/`` into ``withdrawn/`` and that has no
  record (:func:`tryssh.server.results.drop_in_cancel`): the job file, ``LOG_DIR/JOB/`` if
  any, then its cancel request. Its age is the file's *ctime*, the time it was cancelled:
  the withdrawal is a rename, which sets the ctime but leaves the mtime at the delivery
  time (a job queued for days and cancelled a minute ago is not old). Anything done to the
  file later only makes its ctime younger, so a withdrawn job is kept at least the cutoff
  after its cancel. While the file exists ``status`` answers ``cancelled`` and reads who
  asked from the request, so the request goes last; after, ``status`` answers like any
  pruned job (no such job).
- In the drop-in set-up only (no consumer ever ran here, and the config's builders, if
  any, all deliver into this very jobdir), a job Buildbot claimed into ``cur/`` (it has
  no record; Buildbot read it when it claimed it and never removes it): the job file and
  its cancel request, once the claim is older than the cutoff. The claim is a rename, so
  its time is the file's ctime, as for a withdrawn job.
- A cancel request (``STATE_DIR/cancel/JOB``) whose job is gone: no record and no file in
  ``new/``, ``cur/`` or ``withdrawn/`` (a gc interrupted between the two, or a job pruned
  before gc knew of requests). Whatever its age: nothing can read it any more. A request
  of a job still in ``new/`` or ``cur/``, or with a record, is kept: a consumer or Buildbot
  may still act on it, and it goes with its job.

Stale temporary files go too, by the maildir rule (mtime older than 36 hours): ``tmp/``
files and the ``.JOB.PID.tmp`` files an interrupted cancel request left in ``cancel/``.

The order makes an interrupted gc harmless: the job file first and the record (or the
cancel request) last, so a crash leaves a record or request whose job is gone (the next
run removes it), never a job without its record (which would run again).

Only regular files are removed from ``withdrawn/`` and ``cancel/``: a symlink or a
directory planted there is left for a human (a symlink's target is never touched), and
``withdrawn/`` or ``cancel/`` that is itself a symlink is not read. Both are read and
changed through a descriptor of the directory opened without following a symlink.

A final record's mtime is its ``finished`` time (:mod:`tryssh.core.records`), so records
newer than the cutoff are passed over by their directory entry alone: a run costs a
listing of the state directory plus the records actually old enough to go.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Iterator

from tryssh.core.jobdir import TMP_MAX_AGE, Jobdir, is_job_name
from tryssh.core.records import FINAL_STATES, RecordStore, parse_iso
from tryssh.server.config import Config
from tryssh.server.queries import drop_in_site

DAY = 86400  # seconds


def collect(
    config: Config, older_than_days: float, dry_run: bool = False, now: float | None = None
) -> list[str]:
    """Remove what is older than *older_than_days*; return the paths removed (or that
    would be, with *dry_run*)."""
    now = time.time() if now is None else now
    jobdir = Jobdir(config.jobdir)
    store = RecordStore(config.state_dir)
    with _Dir(jobdir.withdrawn) as withdrawn, _Dir(store.cancel_dir) as cancel:
        run = _Run(config, jobdir, store, withdrawn, cancel, now - older_than_days * DAY, dry_run)
        run.finished_jobs()
        run.withdrawn_jobs()
        if drop_in_site(config, config.state_dir):
            with _Dir(jobdir.cur) as cur:
                run.claimed_jobs(cur)
        run.cancel_requests(now)
    stale = jobdir.stale_tmp(now=now) if dry_run else jobdir.clean_tmp(now=now)
    return run.removed + [jobdir.tmp_path(n) for n in stale]


class _Run:
    """One gc run: what it removed (or would), and the jobs it pruned."""

    def __init__(self, config: Config, jobdir: Jobdir, store: RecordStore, withdrawn: _Dir,
                 cancel: _Dir, cutoff: float, dry_run: bool) -> None:  # fmt: skip
        self.log_dir = config.log_dir
        self.jobdir, self.store = jobdir, store
        self.withdrawn, self.cancel = withdrawn, cancel
        self.cutoff, self.dry_run = cutoff, dry_run
        self.removed: list[str] = []
        self.pruned: set[str] = set()  # their cancel requests went with them

    def finished_jobs(self) -> None:
        """Jobs whose final record says they finished before the cutoff."""
        store, withdrawn, cancel = self.store, self.withdrawn, self.cancel
        for name in _old_enough(store.path, self.cutoff):
            record = store.read_or_skip(name)  # a damaged record is kept for a human to see
            if record is None or record.get("state") not in FINAL_STATES:
                continue
            when = parse_iso(record.get("finished")) or parse_iso(record.get("updated"))
            if when is None:
                try:
                    when = os.stat(store.final_path(name)).st_mtime
                except FileNotFoundError:
                    continue
            if when >= self.cutoff:
                continue
            paths = [self.jobdir.cur_path(name), os.path.join(self.log_dir, name)]
            paths = [p for p in paths if os.path.lexists(p)]
            self.removed += paths + [withdrawn.path_of(name)] * withdrawn.holds(name)
            self.removed += [store.final_path(name)] + [cancel.path_of(name)] * cancel.holds(name)
            self.pruned.add(name)
            if self.dry_run:
                continue
            # The job file first and the record last: an interrupted gc leaves a record whose
            # job is gone (harmless), never a job without its record (which would run again).
            for path in paths:
                _remove(path)
            withdrawn.remove(name)
            store.remove(name)
            cancel.remove(name)

    def withdrawn_jobs(self) -> None:
        """Jobs a drop-in cancel took back from new/ before the cutoff (no record)."""
        for name, info in self.withdrawn.files():
            # The ctime is the withdrawal, the mtime the delivery (see the module's text).
            if not is_job_name(name) or name in self.pruned or info.st_ctime >= self.cutoff:
                continue
            if self.store.exists(name) or _queued(self.jobdir, name):
                continue  # a record decides (above), or the name is also a live job
            log = os.path.join(self.log_dir, name)
            logs = [log] if os.path.lexists(log) else []
            self.removed += [self.withdrawn.path_of(name), *logs]
            self.removed += [self.cancel.path_of(name)] * self.cancel.holds(name)
            self.pruned.add(name)
            if self.dry_run:
                continue
            self.withdrawn.remove(name)  # the job first, the request (status reads it) last
            for path in logs:
                _remove(path)
            self.cancel.remove(name)

    def claimed_jobs(self, cur: _Dir) -> None:
        """Drop-in jobs Buildbot claimed before the cutoff (no record)."""
        for name, info in cur.files():
            # The ctime is the claim (a rename), the mtime the delivery.
            if not is_job_name(name) or name in self.pruned or info.st_ctime >= self.cutoff:
                continue
            if self.store.exists(name):
                continue  # a record decides (finished_jobs)
            self.removed += [cur.path_of(name)]
            self.removed += [self.cancel.path_of(name)] * self.cancel.holds(name)
            self.pruned.add(name)
            if self.dry_run:
                continue
            cur.remove(name)  # the job first, its request last
            self.cancel.remove(name)

    def cancel_requests(self, now: float) -> None:
        """Requests whose job is gone, and stale tmp files of interrupted requests."""
        for name, info in self.cancel.files():
            if name.startswith("."):  # an interrupted request's .JOB.PID.tmp
                stale = name.endswith(".tmp") and now - info.st_mtime > TMP_MAX_AGE
            else:
                stale = is_job_name(name) and name not in self.pruned and not _job_exists(
                    self.jobdir, self.store, name)  # fmt: skip
            if stale:
                self.removed.append(self.cancel.path_of(name))
                if not self.dry_run:
                    self.cancel.remove(name)


def _queued(jobdir: Jobdir, name: str) -> bool:
    """Whether *name* is in ``new/`` or ``cur/``: a consumer or Buildbot may act on it."""
    return os.path.lexists(jobdir.new_path(name)) or os.path.lexists(jobdir.cur_path(name))


def _job_exists(jobdir: Jobdir, store: RecordStore, name: str) -> bool:
    """Whether anything of job *name* is left. In the order a job moves (new/, then cur/
    or withdrawn/, then a record), so a job moving meanwhile is seen in one place or the
    next."""
    return (
        _queued(jobdir, name)
        or os.path.lexists(jobdir.withdrawn_path(name))
        or store.exists(name)
    )


def _remove(path: str) -> None:
    """Remove *path*: a directory with what it holds, anything else (a symlink too:
    never its target) by unlinking it."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Dir:
    """A directory whose regular files gc lists and removes through a descriptor opened
    without following a symlink: one planted in its place, now or later, is never followed.
    A missing directory, or a symlink, holds nothing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _Dir:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(self.path, flags)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as err:
            if err.errno != errno.ELOOP:  # ELOOP: a symlink; anything else is worth a report
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def path_of(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _lstat(self, name: str) -> os.stat_result | None:
        """The stat of *name* if it is a regular file here, else None."""
        if self.fd is None:
            return None
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:
                return None
            raise
        return info if stat.S_ISREG(info.st_mode) else None

    def holds(self, name: str) -> bool:
        """Whether *name* is a regular file here."""
        return self._lstat(name) is not None

    def files(self) -> Iterator[tuple[str, os.stat_result]]:
        """The names of the regular files here with their stat (not following symlinks)."""
        if self.fd is None:
            return
        with os.scandir(self.fd) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            info = self._lstat(name)
            if info is not None:
                yield name, info

    def remove(self, name: str) -> None:
        """Unlink *name* if it is still a regular file (a symlink or a directory planted
        meanwhile is left alone)."""
        if self.holds(name):
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                pass


def _old_enough(state_dir: str, cutoff: float) -> list[str]:
    """Names of final records last written before *cutoff* (from the directory entries)."""
    names = []
    try:
        with os.scandir(state_dir) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(".json") or name.startswith("."):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        names.append(name[:-5])
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        return []
    return names
