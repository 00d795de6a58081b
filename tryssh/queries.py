"""Answers to the read-only tryserver requests: ``status JOB``, ``builders``, ``jobs``.

They only ever show the pinned user's own jobs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .command import Request
from .errors import UsageError

if TYPE_CHECKING:
    from .tryserver import Server


def answer(server: Server, request: Request) -> str:
    """The text (or JSON) answer to a read-only request."""
    if request.verb == "builders":
        return _builders(server, request)
    raise UsageError(f"{request.verb} is not available on this server yet")


def _builders(server: Server, request: Request) -> str:
    from .policy import allowed_builders

    if server.config is None:
        raise UsageError("this server has no config, so it cannot list builders")
    who = server.opts.user or "*"
    names = allowed_builders(server.config, who)
    if request.json:
        return json.dumps({"user": who, "builders": names}) + "\n"
    return "".join(f"{n}\n" for n in names)
