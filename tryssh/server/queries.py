"""Answers to the read-only tryserver requests: ``status JOB``, ``builders``, ``jobs``.

With ``--user`` (the forced command pins it) they only ever show that user's own jobs: a
job of another user answers exactly like a job that does not exist,
``no such job: NAME`` with exit code 66 (EX_NOINPUT). Without ``--user`` (an admin on the
master, outside sshd) every job is visible.

``status`` reads the job's record (:mod:`tryssh.core.records`). A job delivered but not yet
claimed answers state ``queued``, and so does one a consumer has claimed but not yet
recorded (its record says ``queued`` next); one that has left ``new/`` where no consumer
keeps records, or a ``[buildbot] api`` is named (a Buildbot master reads this jobdir
itself: the drop-in set-up), answers ``claimed``. Both have no builders yet, so a client
can poll right after delivery.
In the drop-in set-up a config with ``[buildbot] api = URL`` makes ``status`` ask that
master for the job's builds by ``jobid``. When neither a consumer's records nor an API
can ever tell more, the answer says ``"followable": false`` and ``tryssh try --wait``
stops at once instead of waiting forever. A drop-in job that ``cancel`` took back from
``new/`` (``withdrawn/``) answers ``cancelled``; one whose builds Buildbot ended CANCELLED
after tryssh asked (a cancel request is the evidence) answers ``cancelled`` too, like the
consumer's ``buildbot`` builders.

This module runs inside the forced command, so it imports only what it needs.
"""

from __future__ import annotations

import json
import os

from tryssh.core import defaults
from tryssh.core.jobview import format_jobs, format_status
from tryssh.errors import EX_NOINPUT, TrysshError, UsageError

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from typing import Any

    from tryssh.core.jobdir import Jobdir
    from tryssh.core.records import JobRecord
    from tryssh.core.request import Request
    from tryssh.server.config import Config

JOBS_LIMIT = 20
MAX_JOBS_LIMIT = 1000


class NoSuchJob(TrysshError):
    """The job does not exist, or belongs to another user (indistinguishable on purpose)."""

    exit_code = EX_NOINPUT


def answer(request: Request, config: Config | None, jobdir: Jobdir, user: str | None) -> str:
    """The text (or JSON) answer to a read-only request of *user* (None: an admin, who sees
    everything)."""
    if request.verb == "builders":
        return _builders(request, config, user)
    job_path, state_dir, _log_dir = state_dirs(config, jobdir)
    if request.verb == "status":
        if not request.job:
            raise UsageError("status needs a job name")
        buildbot = config.buildbot if config is not None else None
        record = job_status(job_path, state_dir, request.job, user, buildbot)
        return json.dumps(record) + "\n" if request.json else format_status(record)
    if request.verb == "jobs":
        limit = min(request.limit or JOBS_LIMIT, MAX_JOBS_LIMIT)
        if request.all_states:
            records = recent_jobs(state_dir, user, limit)
        else:
            records = active_jobs(state_dir, user, limit)
        if request.json:
            return json.dumps({"user": user, "all_states": request.all_states,
                               "jobs": records}) + "\n"  # fmt: skip
        return format_jobs(records, show_who=user is None)
    raise UsageError(f"{request.verb} is not available on this server")


def state_dirs(config: Config | None, jobdir: Jobdir) -> tuple[str, str, str]:
    """The jobdir, the state (records) directory and the log directory the server reads."""
    if config is not None:
        return config.jobdir, config.state_dir, config.log_dir
    return (jobdir.path, os.path.join(jobdir.path, defaults.STATE_DIR),
            os.path.join(jobdir.path, defaults.LOG_DIR))  # fmt: skip


def _builders(request: Request, config: Config | None, who: str | None) -> str:
    from tryssh.server.policy import allowed_builders

    if config is None:
        raise UsageError("this server has no config, so it cannot list builders")
    if who is None:
        names = list(config.builders)  # the admin sees them all
    else:
        names = allowed_builders(config, who)
    if request.json:
        described = {n: config.builders[n].options.get("description", "") for n in names}
        return json.dumps({"user": who, "builders": names, "descriptions": described}) + "\n"
    lines = []
    for name in names:
        description = config.builders[name].options.get("description")
        lines.append(f"{name}\t{description}\n" if description else f"{name}\n")
    return "".join(lines)


def local_status(config: Config, job: str, user: str | None = None) -> JobRecord:
    """The status of *job* on this master, read from the records directly (``tryssh status
    --config``). With *user*, only that user's jobs exist. Raises NoSuchJob."""
    return job_status(config.jobdir, config.state_dir, job, user, config.buildbot)


def job_status(
    jobdir: str,
    state_dir: str,
    job: str,
    user: str | None = None,
    buildbot: dict[str, Any] | None = None,
) -> JobRecord:
    """The record of *job* (or a ``queued``/``claimed`` stand-in for a job not recorded,
    completed from Buildbot's API when *buildbot* names one)."""
    from tryssh.core.jobdir import is_job_name
    from tryssh.core.records import RecordStore

    if not is_job_name(job):
        raise NoSuchJob(f"no such job: {job[:80]}")
    record = RecordStore(state_dir).read(job)
    if record is None:
        found = _unrecorded(jobdir, job)
        if found is not None and (user is None or found[0].get("who") == user):
            if found[0]["state"] == "cancelled":
                _withdrawn(found[0], state_dir)
            else:
                if found[0]["state"] == "claimed" and not (buildbot or {}).get("api") and (
                    not no_consumer(state_dir)
                ):
                    # A consumer has just claimed it and is writing its record, which says
                    # queued: "claimed" then would make the state go backwards.
                    found[0]["state"] = "queued"
                _from_buildbot(found[0], found[1], state_dir, buildbot or {})
        record = found[0] if found is not None else None
    if record is None or (user is not None and record.get("who") != user):
        raise NoSuchJob(f"no such job: {job}")
    return record


# A job Buildbot moved to cur/ has its buildset a moment later; after this long without
# one, Buildbot refused it (a builder not in its Try_Jobdir's list, a bad job).
NO_BUILDSET_GRACE = 30.0


def _unrecorded(jobdir: str, job: str) -> tuple[JobRecord, os.stat_result] | None:
    """A stand-in record for a job still in new/ (``queued``) or in cur/ without a record
    (``claimed``), and the job file's stat.

    Only the job's fields are read, never its patch (:func:`read_job_head`): a client
    polling a queued 64 MiB job costs a few kilobytes per poll.
    """
    from tryssh.core.jobdir import Jobdir
    from tryssh.core.jobfile import read_job_head
    from tryssh.core.records import job_fields, new_record
    from tryssh.errors import BadJob

    where = Jobdir(jobdir)
    for path, state in ((where.new_path(job), "queued"), (where.cur_path(job), "claimed"),
                        (where.withdrawn_path(job), "cancelled")):  # fmt: skip
        try:
            head = read_job_head(path)
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (BadJob, OSError):
            return None  # unreadable here: the consumer will record why
        return new_record(job, state=state, **job_fields(head)), info
    return None


def _withdrawn(record: JobRecord, state_dir: str) -> None:
    """Complete the stand-in of a job ``cancel`` took back from new/ before anyone claimed
    it: who asked, from the cancel request."""
    cancelled = _cancel_asked(state_dir, record["job"]) or {"by": "?", "requested": None}
    record["cancelled"] = cancelled
    record["reason"] = f"cancelled by {cancelled['by']} before Buildbot took it"


def _cancel_asked(state_dir: str, job: str) -> dict[str, Any] | None:
    """Who asked to cancel *job* and when (a record's ``cancelled``), from its cancel
    request; None when there is none."""
    from tryssh.core.records import RecordStore

    request = RecordStore(state_dir).cancel_request(job)
    if request is None:
        return None
    return {"by": request.get("by") or "?", "requested": request.get("requested")}


def no_consumer(state_dir: str) -> bool:
    """No consumer ever ran on this jobdir (it makes ``active/``): whoever takes its jobs
    (a Buildbot master: the drop-in set-up) keeps no tryssh record."""
    from tryssh.core.records import RecordStore

    return not os.path.isdir(RecordStore(state_dir).active)


def drop_in_site(config: Config | None, state_dir: str) -> bool:
    """Whether Buildbot itself takes this jobdir's jobs: no consumer ever ran here and none
    could (no config, or every builder it declares delivers into this very jobdir). Both,
    so that a job a consumer still owes is never taken for Buildbot's."""
    if not no_consumer(state_dir):
        return False
    return config is None or all(b.destination == config.jobdir for b in config.builders.values())


def _from_buildbot(
    record: JobRecord, info: os.stat_result, state_dir: str, buildbot: dict[str, Any]
) -> None:
    """Complete an unrecorded job's stand-in from Buildbot's API, or say that nothing can.
    *info* is the job file's stat: the delivery sets its mtime, the claim (a rename) its
    ctime."""
    import time

    api_url = buildbot.get("api")
    if not api_url:
        if no_consumer(state_dir):
            record["followable"] = False
            record["reason"] = (
                "this server cannot report results: no consumer keeps records here and no "
                "[buildbot] api is configured"
            )
        return
    from tryssh.server import buildbot as bb

    try:
        api = bb.Api(api_url, bb.read_token(buildbot.get("token_file")), retries=1)
        # From the delivery time on, the first buildset is the job's (see job_buildset).
        view = bb.job_view(api, record["jobid"] or "", info.st_mtime)
    except OSError as err:
        record["reason"] = f"cannot read buildbot.token_file: {err.strerror}"
        return
    except bb.Unavailable as err:
        record["reason"] = err.message  # not final: the client asks again
        return
    if view is not None:
        record.update(state=view["state"], builders=view["builders"])  # type: ignore[typeddict-item]
        record["buildbot"] = {"api": api_url, "bsids": view["bsids"]}
        _cancelled_by_request(record, state_dir)
    elif record["state"] == "claimed" and time.time() - info.st_ctime > NO_BUILDSET_GRACE:
        record["state"] = "error"
        record["reason"] = (
            f"Buildbot took the job but made no buildset for jobid {record['jobid']} "
            "(a builder not in its Try_Jobdir's list? see the master's log)"
        )


def _cancelled_by_request(record: JobRecord, state_dir: str) -> None:
    """Builds Buildbot ended CANCELLED after tryssh asked (``tryserver cancel`` left a
    request: the evidence) are ``cancelled``, and so is the job once Buildbot is done: the
    consumer's mapping. A build someone else stopped (the web UI) stays ``error``."""
    cancelled = _cancel_asked(state_dir, record["job"])
    if cancelled is None:
        return
    by = cancelled["by"]
    stopped = False
    for entry in record["builders"].values():
        if entry.get("buildbot_result") == "CANCELLED":
            entry.update(result="cancelled", reason=f"cancelled by {by} (Buildbot: CANCELLED)")
            stopped = True
    if stopped and record["state"] != "running":
        record["state"] = "cancelled"
        record["reason"] = f"cancelled by {by}"
        record["cancelled"] = cancelled


def recent_jobs(state_dir: str, user: str | None, limit: int = JOBS_LIMIT) -> list[JobRecord]:
    """Up to *limit* records of *user* (everyone's when None), newest first."""
    from tryssh.core.records import RecordStore

    store = RecordStore(state_dir)
    if user is not None:
        # The user's own index: the cost follows the user's jobs, not the whole history.
        indexed = store.user_jobs(user, limit)
        if indexed is not None:
            return indexed
    found = []
    # Job names start with the delivery time, so the name order is the age order and
    # only as many records as needed are read.
    for name in reversed(store.all_jobs()):
        record = store.read_or_skip(name)  # a damaged record must not break everyone's list
        if record is None or (user is not None and record.get("who") != user):
            continue
        found.append(record)
        if len(found) >= limit:
            break
    return found


def active_jobs(state_dir: str, user: str | None, limit: int = JOBS_LIMIT) -> list[dict[str, Any]]:
    """Up to *limit* queued or running records of *user* (everyone's when None), newest
    first."""
    from tryssh.core.records import RecordStore

    records = [
        r for r in RecordStore(state_dir).active_records()
        if user is None or r.get("who") == user
    ]  # fmt: skip
    return records[::-1][:limit]


def local_query(config_path: str, what: str, job: str | None = None) -> Any:
    """The same answers, read on the master itself (``--config``): every job and builder."""
    from tryssh.server.config import load_config

    config = load_config(config_path)
    if what == "status":
        assert job is not None
        return local_status(config, job)
    names = list(config.builders)
    described = {n: config.builders[n].options.get("description", "") for n in names}
    return {"user": None, "builders": names, "descriptions": described}
