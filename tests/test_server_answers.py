"""What the client makes of a server's answers (``status``, ``jobs``, ``builders`` and the
``watch`` stream): any JSON at all is either shown, or refused in one line (TempFail,
exit 75), never a traceback. A hypothesis test feeds any JSON value to each reader."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh.cli.results import jobs_line
from tryssh.cli.try_ import _print_builders
from tryssh.client.results import LiveWait
from tryssh.client.transport import Destination
from tryssh.client.wait import answer_problem, record_problem, wait_for
from tryssh.core.jobview import status_lines

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
KEYS = st.sampled_from(["job", "state", "reason", "builders", "followable", "result", "log",
                        "url", "cancel", "received", "comment", "jobs", "descriptions",
                        "heartbeat", "who", "branch"]) | st.text(max_size=4)  # fmt: skip
JSON = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(KEYS, kids, max_size=4),
    max_leaves=12,
)  # fmt: skip
# Records whose containers are right and whose fields are anything.
RECORDS = st.fixed_dictionaries(
    {"builders": st.dictionaries(st.text(max_size=6), st.none() | st.dictionaries(KEYS, JSON))},
    optional={k: JSON for k in ("job", "state", "reason", "followable", "received", "comment")},
)  # fmt: skip


def show_everywhere(record: dict[str, Any]) -> None:
    """Every way the client shows a job record."""
    status_lines(record, show_log=False)
    jobs_line(record)
    lines: list[str] = []
    waiter = LiveWait(Destination(), lambda: None, "j", lines.append)  # type: ignore[arg-type]
    waiter._line(json.dumps(record).encode(), [])
    wait_for(lambda: record, timeout=None, echo=lines.append, sleep=lambda s: None)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(answer=JSON | RECORDS)
def test_any_answer_is_shown_or_refused_in_one_line(answer: Any) -> None:
    if record_problem(answer) is None:
        if answer.get("state") not in ("success", "failure", "error", "rejected", "cancelled",
                                       "interrupted", "delivered"):  # fmt: skip
            answer = {**answer, "state": "success"}  # wait_for returns at once
        show_everywhere(answer)
    if answer_problem("builders", answer) is None:
        _print_builders(answer, as_json=False)
    problem = answer_problem("jobs", answer)
    if problem is None:
        for record in answer["jobs"]:
            jobs_line(record)


@pytest.mark.parametrize(
    ("verb", "answer", "problem"),
    [
        ("status", [], "a job record that is not an object"),
        ("status", {"builders": ["unit"]}, "builders that are not an object"),
        ("status", {"builders": {"unit": "done"}}, "a builder's entry that is not an object"),
        ("jobs", {"jobs": {}}, "no list of jobs"),
        ("jobs", {"jobs": [{"builders": 1}]}, "builders that are not an object"),
        ("builders", {"builders": 5}, "no list of builders"),
        ("status", {"builders": {"unit": None}, "state": 3}, None),
    ],
)  # fmt: skip
def test_what_keeps_an_answer_from_being_read_is_named(verb, answer, problem) -> None:
    assert answer_problem(verb, answer) == problem
