"""Who may build what: the ``[users.NAME]`` policy applied to a job.

Shared by the consumer, ``tryserver builders`` and ``tryssh serve`` so that every door
answers the same way.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase

from tryssh.errors import EX_DATAERR, PermissionDenied
from tryssh.server.config import Config, UserPolicy

MAX_SCAN = 100  # jobs of new/ the door reads, at most, to count a user's pending ones


class PolicyRefused(PermissionDenied):
    """The job breaks the policy; the message says which rule (exit 77)."""


class TooLarge(PolicyRefused):
    """The job is over the user's size limit: bad job data (65) rather than 77."""

    exit_code = EX_DATAERR


def user_policy(config: Config, who: str) -> UserPolicy:
    """The user's policy, or PolicyRefused for a user the config does not admit."""
    policy = config.user(who)
    if policy is None:
        raise PolicyRefused(f"user {who!r} is not allowed to submit jobs")
    return policy


def allowed_builders(config: Config, who: str) -> list[str]:
    """The configured builders *who* may use, in config order."""
    policy = user_policy(config, who)
    return [name for name in config.builders if any(fnmatchcase(name, g) for g in policy.builders)]


def choose_builders(
    config: Config,
    who: str,
    requested: list[str] | None,
    branch: str | None,
    size: int,
    pending: int = 0,
) -> list[str]:
    """The builders to run for a job, or PolicyRefused naming the first rule it breaks.

    An empty request means every builder the user may use. *pending* counts the user's
    other jobs still waiting or running.
    """
    policy = user_policy(config, who)
    limit = policy.max_job_size or config.max_job_size
    if size > limit:
        raise TooLarge(f"job is {size} bytes, more than the limit of {limit} for {who!r}")
    if policy.max_pending is not None and pending >= policy.max_pending:
        raise PolicyRefused(
            f"{who!r} already has {pending} pending jobs (max_pending is {policy.max_pending})"
        )
    if not any(fnmatchcase(branch or "", g) for g in policy.branches):
        raise PolicyRefused(f"branch {branch!r} is not allowed for {who!r}")
    allowed = allowed_builders(config, who)
    if not requested:
        if not allowed:
            raise PolicyRefused(f"no builder is allowed for {who!r}")
        return allowed
    for name in requested:
        if name not in config.builders:
            raise PolicyRefused(f"unknown builder {name!r}")
        if name not in allowed:
            raise PolicyRefused(f"builder {name!r} is not allowed for {who!r}")
    return list(dict.fromkeys(requested))  # keep order, drop duplicates


def check_at_door(
    config: Config, who: str, builders: list[str] | None, branch: str | None, size: int
) -> list[str]:
    """The consumer's check, made at delivery (tryserver and ``tryssh serve``).

    Raises PolicyRefused (TooLarge for the size) with the words the consumer would use,
    so that a job the consumer is going to refuse is never written. Only the parsed header fields
    and the size are needed, never the patch. The user's pending jobs are counted only when
    ``max_pending`` is set: the consumer checks again when it claims the job.
    """
    pending = 0
    policy = user_policy(config, who)
    if policy.max_pending is not None:
        pending = count_pending(config, who, stop_at=policy.max_pending)
    return choose_builders(config, who, builders, branch, size, pending)


def count_pending(config: Config, who: str, stop_at: int | None = None) -> int:
    """How many jobs of *who* wait in ``new/`` or are queued or running (by their record).

    Stops counting at *stop_at*: the door needs only to know whether the limit is reached.
    A job that cannot be read here is not counted (the consumer will record why).
    """
    from tryssh.core.jobfile import parse_job_file
    from tryssh.core.records import RecordStore
    from tryssh.errors import TrysshError

    count = 0
    for record in RecordStore(config.state_dir).active_records():
        if record.get("who") == who:
            count += 1
            if stop_at is not None and count >= stop_at:
                return count
    new = os.path.join(config.jobdir, "new")
    try:
        names = os.listdir(new)
    except OSError:
        return count
    # A running consumer empties new/ at once; a long backlog (no consumer) is read only in
    # part, so that one submission never reads every waiting job: the consumer rechecks.
    for name in sorted(n for n in names if not n.startswith("."))[-MAX_SCAN:]:
        try:
            job = parse_job_file(os.path.join(new, name), limit=config.hard_size_limit())
        except (OSError, TrysshError):
            continue
        if job.who == who:
            count += 1
            if stop_at is not None and count >= stop_at:
                break
    return count
