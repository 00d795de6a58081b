"""Garbage collection: remove finished jobs, their records and logs once they are old.

Only jobs with a *final* record (success, failure, error, rejected, interrupted) whose
``finished`` time is older than the cutoff are removed: the job file in ``cur/``, the
record and ``LOG_DIR/JOB/``. A job without a final record is never removed,
since a consumer still owes it a result. Stale ``tmp/`` files (36 hours, the maildir rule)
go too.

A final record's mtime is its ``finished`` time (:mod:`tryssh.core.records`), so records
newer than the cutoff are passed over by their directory entry alone: a run costs a
listing of the state directory plus the records actually old enough to go.
"""

from __future__ import annotations

import os
import shutil
import time

from tryssh.core.jobdir import Jobdir
from tryssh.core.records import FINAL_STATES, RecordStore, parse_iso
from tryssh.server.config import Config

DAY = 86400  # seconds


def collect(
    config: Config, older_than_days: float, dry_run: bool = False, now: float | None = None
) -> list[str]:
    """Remove what is older than *older_than_days*; return the paths removed (or that
    would be, with *dry_run*)."""
    now = time.time() if now is None else now
    cutoff = now - older_than_days * DAY
    store = RecordStore(config.state_dir)
    jobdir = Jobdir(config.jobdir)
    removed: list[str] = []
    for name in _old_enough(store.path, cutoff):
        record = store.read_or_skip(name)  # a damaged record is kept for a human to see
        if record is None or record.get("state") not in FINAL_STATES:
            continue
        when = parse_iso(record.get("finished")) or parse_iso(record.get("updated"))
        if when is None:
            try:
                when = os.stat(store.final_path(name)).st_mtime
            except FileNotFoundError:
                continue
        if when >= cutoff:
            continue
        paths = [jobdir.cur_path(name), os.path.join(config.log_dir, name)]
        paths = [p for p in paths if os.path.lexists(p)]
        removed += [*paths, store.final_path(name)]
        if dry_run:
            continue
        # The job file first and the record last: an interrupted gc leaves a record whose
        # job is gone (harmless), never a job without its record (which would run again).
        for path in paths:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        store.remove(name)
    stale = jobdir.stale_tmp(now=now) if dry_run else jobdir.clean_tmp(now=now)
    return removed + [jobdir.tmp_path(n) for n in stale]


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
