"""Who may build what: the ``[users.NAME]`` policy applied to a job.

Shared by the consumer, ``tryserver builders`` and ``tryssh serve`` so that every door
answers the same way.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from tryssh.errors import PermissionDenied
from tryssh.server.config import Config, UserPolicy


class PolicyRefused(PermissionDenied):
    """The job breaks the policy; the message says which rule (exit 77)."""


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
        raise PolicyRefused(f"job is {size} bytes, more than the limit of {limit} for {who!r}")
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
