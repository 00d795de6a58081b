"""run_request, the one request handler of both doors, in-process: how each way a request
ends is answered (one ``tryserver:`` line) and accounted for (one audit line)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from test_tryserver import JOB_BYTES, audit_lines

from tryssh.core.jobdir import Jobdir
from tryssh.core.request import CommandRefused
from tryssh.errors import EX_NOPERM, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, PermissionDenied
from tryssh.server.audit import AuditLog
from tryssh.server.tryserver import Options, RequestContext, run_request


def _run(jobdir: Jobdir, tmp_path: Path, open_request, data: bytes = JOB_BYTES):
    said: list[str] = []
    warned: list[str] = []
    fields: dict[str, object] = {"user": "alice"}
    audit = AuditLog(str(tmp_path / "door.log"))
    code = run_request(open_request, io.BytesIO(data), io.StringIO(), fields,
                       say=said.append, warn=warned.append, audit=audit)  # fmt: skip
    audit.close()
    return code, said, warned, audit_lines(tmp_path / "door.log")


def _context(jobdir: Jobdir, command: str) -> RequestContext:
    opts = Options(jobdir=jobdir.path, user="alice")
    return RequestContext(opts, env={"SSH_ORIGINAL_COMMAND": command})


def test_delivery_is_ok_and_audited_in_the_requests_own_log(jobdir, tmp_path) -> None:
    code, said, _, door = _run(jobdir, tmp_path, lambda: _context(jobdir, "tryserver"))
    assert code == EX_OK and said == [] and door == []  # the request's own log was used
    [line] = audit_lines(Path(jobdir.path, "audit.log"))
    assert line["outcome"] == "ok" and line["verb"] == "deliver" and line["exit"] == "0"
    assert line["job"] == jobdir.pending()[0]


@pytest.mark.parametrize(
    ("error", "code", "outcome"),
    [
        (CommandRefused("command refused: nope"), 64, "refused"),
        (PermissionDenied("not yours"), EX_NOPERM, "refused"),
        (OSError("disk"), EX_SOFTWARE, "failed"),  # not a client hang-up: a bug
        (BrokenPipeError(), EX_TEMPFAIL, "client gone"),
        (KeyboardInterrupt(), EX_TEMPFAIL, "interrupted"),
        (RuntimeError("bug"), EX_SOFTWARE, "failed"),
    ],
)
def test_errors_before_the_request_opens(jobdir, tmp_path, error, code, outcome) -> None:
    def open_request() -> RequestContext:
        raise error

    got, said, warned, [line] = _run(jobdir, tmp_path, open_request)
    assert got == code and line["outcome"] == outcome and line["exit"] == str(code)
    assert all(s.startswith("tryserver: ") and "\n" not in s for s in said)
    assert len(said) == (0 if outcome == "client gone" else 1)
    assert warned == [] and jobdir.pending() == []


def test_a_refused_command_is_audited_in_the_requests_log(jobdir, tmp_path) -> None:
    code, said, _, door = _run(jobdir, tmp_path, lambda: _context(jobdir, "rm -rf /"))
    assert code == 64 and said[0].startswith("tryserver: command refused")
    [line] = audit_lines(Path(jobdir.path, "audit.log"))
    assert line["outcome"] == "refused" and line["reason"] == said[0].removeprefix("tryserver: ")
    assert door == [] and jobdir.pending() == []
