"""Who may build what (:mod:`tryssh.server.policy`), rule by rule, in-process."""

from __future__ import annotations

from typing import Any

import pytest

from tryssh.errors import EX_DATAERR, EX_NOPERM
from tryssh.server.config import config_from_dict
from tryssh.server.policy import PolicyRefused, allowed_builders, choose_builders

CONFIG = config_from_dict(
    {
        "jobdir": "/srv/j",
        "max_job_size": 1000,
        "builders": {n: {"command": ["true"]} for n in ("unit", "unit-slow", "lint", "deploy")},
        "users": {
            "alice": {"builders": ["unit*", "lint"], "branches": ["main", "feature/*"]},
            "bob": {"builders": ["lint"], "max_pending": 2, "max_job_size": 100},
            "carol": {"builders": []},
            "*": {"builders": ["lint"], "branches": ["main"]},
        },
    },
    "/etc/t.toml",
)

# (who, requested builders, branch, size, pending) -> the builders chosen
CHOSEN: list[tuple[str, list[str] | None, str, int, int, list[str]]] = [
    ("alice", None, "main", 10, 0, ["unit", "unit-slow", "lint"]),
    ("alice", [], "feature/x", 10, 0, ["unit", "unit-slow", "lint"]),
    ("alice", ["lint", "unit", "lint"], "main", 10, 0, ["lint", "unit"]),
    ("bob", None, "anything", 100, 1, ["lint"]),
    ("stranger", None, "main", 10, 0, ["lint"]),  # users."*"
]


@pytest.mark.parametrize(("who", "requested", "branch", "size", "pending", "chosen"), CHOSEN)
def test_choose(who, requested, branch, size, pending, chosen) -> None:
    assert choose_builders(CONFIG, who, requested, branch, size, pending) == chosen


# (who, requested builders, branch, size, pending) -> a fragment of the refusal
REFUSED: list[tuple[str, list[str] | None, str | None, int, int, str]] = [
    ("alice", ["deploy"], "main", 10, 0, "builder 'deploy' is not allowed for 'alice'"),
    ("alice", ["nope"], "main", 10, 0, "unknown builder 'nope'"),
    ("alice", None, "release", 10, 0, "branch 'release' is not allowed"),
    ("alice", None, None, 10, 0, "branch None is not allowed"),
    ("alice", None, "main", 1001, 0, "more than the limit of 1000"),
    ("bob", None, "main", 101, 0, "more than the limit of 100 for 'bob'"),
    ("bob", None, "main", 10, 2, "already has 2 pending jobs (max_pending is 2)"),
    ("carol", None, "main", 10, 0, "no builder is allowed for 'carol'"),
    ("stranger", None, "dev", 10, 0, "branch 'dev' is not allowed"),
]


@pytest.mark.parametrize(("who", "requested", "branch", "size", "pending", "needle"), REFUSED)
def test_refused(who, requested, branch, size, pending, needle) -> None:
    with pytest.raises(PolicyRefused) as info:
        choose_builders(CONFIG, who, requested, branch, size, pending)
    assert needle in info.value.message
    # Too large is bad job data (65), as the forced command says at the door; the rest 77.
    too_large = "more than the limit" in needle
    assert info.value.exit_code == (EX_DATAERR if too_large else EX_NOPERM)


def test_without_a_fallback_unknown_users_are_refused() -> None:
    data: dict[str, Any] = {"jobdir": "/j", "builders": {"b": {"command": ["x"]}},
                            "users": {"alice": {}}}  # fmt: skip
    config = config_from_dict(data)
    assert allowed_builders(config, "alice") == ["b"]
    with pytest.raises(PolicyRefused, match="'eve' is not allowed to submit"):
        allowed_builders(config, "eve")
