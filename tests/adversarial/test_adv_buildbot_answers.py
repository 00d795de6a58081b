"""A Buildbot master (or a proxy in front of it) that answers tryssh's REST calls with
nonsense: JSON of the wrong shape, answers too large to hold, error objects that are not.

A real HTTP server on 127.0.0.1 (port chosen at run time) serves the answers. Whatever it
says, tryssh's Buildbot client ends in :class:`Unavailable` with one line naming what was
wrong (never a KeyError or TypeError traceback), reads no more than ``MAX_ANSWER`` bytes,
and its callers (``tryssh cancel``/``status`` of a drop-in job, the consumer's buildbot
builder) end as they do when the master does not answer at all.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from helpers import LoopbackHttp, free_port, venv_bin, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.errors import EX_TEMPFAIL
from tryssh.server import buildbot, builders
from tryssh.server.config import config_from_dict

WHO = "bob"
JOBID = "jid-1"
# Buildbot's answers for the buildset of one running build whose step "compile" failed
# (what each public function reads), by path.
GOOD: dict[str, Any] = {
    "/api/v2/buildsets": {"buildsets": [{
        "bsid": 5, "external_idstring": JOBID, "results": None, "complete": False,
        "submitted_at": 100, "complete_at": None, "reason": buildbot.try_reason(WHO)}]},
    "/api/v2/buildrequests": {"buildrequests": [{
        "buildrequestid": 3, "builderid": 1, "complete": False, "results": None}]},
    "/api/v2/builders": {"builders": [{"builderid": 1, "name": "unit"}]},
    "/api/v2/builds": {"builds": [{
        "buildid": 7, "number": 1, "builderid": 1, "complete": False, "results": None,
        "state_string": "building", "complete_at": None}]},
    "/api/v2/builds/7/steps": {"steps": [{
        "stepid": 11, "number": 0, "name": "compile", "results": 2}]},
    "/api/v2/steps/11/logs": {"logs": [{"logid": 21, "type": "s", "num_lines": 2}]},
    "/api/v2/logs/21/contents": {"logchunks": [{"content": "hmake\noboom\n"}]},
    "POST": {"jsonrpc": "2.0", "id": 1, "result": None},
}  # fmt: skip
PATHS = sorted(GOOD)


class Master:
    """What the loopback server answers: GOOD, but *hostile* (raw bytes or a JSON value)
    for the path set; how many requests it had."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.requests = 0

    def set(self, path: str, hostile: Any, **calls: Callable[[], Any]) -> None:
        """Answer *hostile* to *path*, and what *calls* return to theirs (by name)."""
        self.answers = {path: hostile, **{f"/api/v2/{k}": v for k, v in calls.items()}}

    def body(self, path: str) -> bytes | None:
        self.requests += 1
        answer = self.answers.get(path, GOOD.get(path))
        answer = answer() if callable(answer) else answer
        if answer is None and path not in self.answers:
            return None
        return answer if isinstance(answer, bytes) else json.dumps(answer).encode()


def serve(master: Master) -> LoopbackHttp:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, key: str) -> None:
            body = master.body(key)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def do_GET(self) -> None:
            self.answer(self.path.partition("?")[0])

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.answer("POST")

    return LoopbackHttp(Handler)


@pytest.fixture(scope="module")
def master() -> Iterator[tuple[Master, str]]:
    state = Master()
    server = serve(state)
    yield state, server.url
    server.close()


def every_call(url: str) -> list[str]:
    """Run each public function that reads Buildbot's answers; what each came to (``ok`` or
    ``unavailable``). Any other exception escapes: the bug these tests look for."""
    came: list[str] = []

    def attempt(call: Any) -> None:
        try:
            call()
        except buildbot.Unavailable as err:
            assert "\n" not in err.message and len(err.message) < 400, err.message
            came.append("unavailable")
        else:
            came.append("ok")

    api = buildbot.Api(url, retries=0, sleep=lambda s: None)
    attempt(lambda: buildbot.job_view(api, JOBID, 50.0))
    attempt(lambda: buildbot.foreign_buildsets(api, JOBID, [5], WHO))
    attempt(lambda: api.failed_step_tail(7))
    attempt(lambda: api.stop(JOBID, "tryssh job X cancelled by bob"))
    code, note = buildbot.stop_buildsets(api, [5], "tryssh job X cancelled by bob")
    assert code in (0, EX_TEMPFAIL) and "\n" not in note, (code, note)
    return came


def test_the_good_answers_are_read(master):
    """The baseline the hostile answers are made from: every call works on it."""
    state, url = master
    state.set("", None)
    assert every_call(url) == ["ok"] * 4
    api = buildbot.Api(url, retries=0)
    assert api.failed_step_tail(7) == ("compile", ["make", "boom"])
    view = buildbot.job_view(api, JOBID, 50.0)
    assert view is not None and view["builders"]["unit"]["state"] == "running"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def hostile_answer(draw: st.DrawFn) -> tuple[str, Any]:
    """One path's answer made wrong: the whole answer, its list, an item of it, or one
    field of an item replaced by any JSON value, or a field left out."""
    path = draw(st.sampled_from(PATHS))
    answer = copy.deepcopy(GOOD[path])
    key = next(iter(answer))
    how = draw(st.sampled_from(["answer", "list", "item", "field", "missing"]))
    if how == "answer" or path == "POST":
        if path == "POST" and how != "answer":
            answer["error"] = draw(JSON)
        else:
            answer = draw(JSON)
    elif how == "list":
        answer[key] = draw(JSON)
    elif how == "item":
        answer[key][0] = draw(JSON)
    else:
        field = draw(st.sampled_from(sorted(answer[key][0])))
        if how == "field":
            answer[key][0][field] = draw(JSON)
        else:
            del answer[key][0][field]
    return path, answer


@settings(max_examples=200, deadline=None)
@given(hostile_answer())
def test_any_wrong_shape_is_unavailable_never_another_exception(master, case):
    state, url = master
    state.set(*case)
    every_call(url)


@pytest.mark.parametrize(("path", "hostile", "said"), [
    ("/api/v2/buildsets", {"buildsets": "none"}, "buildsets without a list"),
    ("/api/v2/buildsets", {"builds": []}, "buildsets without a list"),
    ("/api/v2/buildsets", [], "with a list, not an object"),
    ("/api/v2/buildsets", None, "with null, not an object"),
    ("/api/v2/buildsets", {"buildsets": [{"bsid": 5, "submitted_at": "soon"}]},
     "buildsets[0].submitted_at a string, not a number or null"),
    ("/api/v2/buildsets", b"<html>Bad gateway</html>", "with no JSON"),
    ("/api/v2/buildsets", b"[" * 100_000, "with no JSON"),
    ("/api/v2/buildrequests", {"buildrequests": [1]},
     "buildrequests[0] an integer, not an object"),
    ("/api/v2/buildrequests", {"buildrequests": [{"buildrequestid": 3}]},
     "buildrequests[0].builderid missing, not an integer"),
    ("/api/v2/builders", {"builders": [{"builderid": [1], "name": "unit"}]},
     "builders[0].builderid a list, not an integer"),
    ("/api/v2/builds", {"builds": [{"buildid": "7", "number": 1, "builderid": 1}]},
     "builds[0].buildid a string, not an integer"),
    ("/api/v2/builds", {"builds": [{"buildid": 7, "number": 1, "builderid": 1,
                                    "results": True}]},
     "builds[0].results a boolean, not an integer or null"),
    ("/api/v2/builds/7/steps", {"steps": [{"stepid": "../../builders", "number": 0,
                                           "name": "x", "results": 2}]},
     "steps[0].stepid a string, not an integer"),
    ("/api/v2/steps/11/logs", {"logs": [{"logid": 21, "num_lines": "many"}]},
     "logs[0].num_lines a string, not an integer or null"),
    ("/api/v2/logs/21/contents", {"logchunks": [{"content": ["o", "x"]}]},
     "logchunks[0].content a list, not a string or null"),
])  # fmt: skip
def test_a_wrong_shape_is_unavailable_naming_what_is_wrong(master, path, hostile, said):
    state, url = master
    state.set(path, hostile)
    api = buildbot.Api(url, retries=0)
    call = api.failed_step_tail if "steps" in path or "logs" in path else None
    with pytest.raises(buildbot.Unavailable) as caught:
        if call is not None:
            call(7)
        else:
            buildbot.job_view(api, JOBID, 50.0)
    message = caught.value.message
    assert message.startswith(f"Buildbot's API answered GET {url}api/v2/{path[8:]}")
    assert said in message and "\n" not in message


def test_a_malformed_answer_is_asked_again_like_one_that_did_not_come(master):
    state, url = master
    state.set("/api/v2/buildsets", {"buildsets": {}})
    delays: list[float] = []
    before = state.requests
    with pytest.raises(buildbot.Unavailable, match="buildsets without a list"):
        buildbot.Api(url, retries=2, sleep=delays.append).buildsets(JOBID)
    assert delays == [0.5, 1.0] and state.requests - before == 3


@pytest.mark.parametrize(("error", "said"), [
    ("denied\n\x1b[2Jby the proxy", "(stop): denied \\x1b[2Jby the proxy"),
    (["no"], "(stop): ['no']"),
    ({"code": -32600, "message": "x" * 5000}, "(stop): " + "x" * 200 + "..."),
])  # fmt: skip
def test_a_stop_answered_with_an_error_that_is_not_an_object_is_one_line(master, error, said):
    state, url = master
    state.set("POST", {"jsonrpc": "2.0", "id": 1, "error": error})
    code, note = buildbot.stop_buildsets(buildbot.Api(url, retries=0), [5], "cancelled")
    assert code == EX_TEMPFAIL
    assert note.startswith("could not ask Buildbot to stop buildset 5: POST ")
    assert note.endswith(said) and "\n" not in note


@pytest.mark.parametrize("declared", [False, True])
def test_an_answer_too_large_is_not_read_whole(declared):
    """64 MiB of one JSON string, streamed up to the connection's close or announced by
    Content-Length: tryssh reads no more than MAX_ANSWER of it, and does not ask again."""
    total = 64 * 2**20
    sent = [0]
    served = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            if declared:
                self.send_header("Content-Length", str(total))
            self.end_headers()
            chunk = b"x" * 2**16
            try:
                self.wfile.write(b'{"buildsets": "')
                while sent[0] < total:
                    self.wfile.write(chunk)
                    sent[0] += len(chunk)
            except OSError:  # the client hung up: what it should do
                pass
            finally:
                served.set()

    server = LoopbackHttp(Handler)
    try:
        api = buildbot.Api(server.url, retries=3, sleep=lambda s: None)
        with pytest.raises(buildbot.Unavailable) as caught:
            api.buildsets(JOBID)
        wait_until(served.is_set, timeout=30, message="the server is still sending")
    finally:
        server.close()
    message = caught.value.message
    assert message == (f"Buildbot's API answered GET {server.url}api/v2/buildsets?"
                       f"external_idstring={JOBID}&" + "&".join(
                           f"field={f}" for f in buildbot.BUILDSET_FIELDS)
                       + " with more than 16 MiB")  # fmt: skip
    # Not read to the end (the loopback's buffers hold a few MiB more than was read).
    assert sent[0] < total - 16 * 2**20


def claimed_job(tmp_path: Path, api: str) -> tuple[Path, str]:
    """A drop-in site whose ``[buildbot] api`` is *api*, and a job Buildbot has claimed
    (moved to cur/, as its MaildirService does); (config, job name)."""
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    config = tmp_path / "tryssh.toml"
    config.write_text(f"jobdir = {json.dumps(jobdir.path)}\n[buildbot]\napi = "
                      f"{json.dumps(api)}\n[builders.unit]\nforward = "
                      f"{json.dumps(jobdir.path)}\n[users.\"*\"]\n")  # fmt: skip
    name = jobdir.deliver_bytes(encode_job(Job(JOBID, None, None, 1, b"patch", ["unit"],
                                               who=WHO)))  # fmt: skip
    os.rename(os.path.join(jobdir.new, name), os.path.join(jobdir.cur, name))
    return config, name


def tryssh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_bin("tryssh"), *args], capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)  # fmt: skip


def test_drop_in_cancel_and_status_against_a_hostile_master_end_as_with_an_absent_one(
    master, tmp_path
):
    """``tryssh cancel --config`` of a claimed drop-in job whose master answers nonsense:
    exit 75 and one line naming it, as when the master does not answer at all; ``status``
    says the job is still claimed, with the reason, exactly as it does then."""
    state, url = master
    state.set("/api/v2/buildsets", {"buildsets": [{"submitted_at": "now"}]})
    config, name = claimed_job(tmp_path / "hostile", url)
    cancel = tryssh("cancel", "--config", str(config), name)
    assert cancel.returncode == EX_TEMPFAIL, cancel.stderr
    [line] = cancel.stderr.splitlines()
    assert line.startswith("tryssh: Buildbot's API answered GET ")
    assert line.endswith("with buildsets[0].bsid missing, not an integer")
    status = tryssh("status", "--config", str(config), "--json", name)
    record = json.loads(status.stdout)
    assert record["state"] == "claimed" and "buildsets[0].bsid missing" in record["reason"]

    absent, absent_name = claimed_job(tmp_path / "absent", f"http://127.0.0.1:{free_port()}/")
    gone = tryssh("cancel", "--config", str(absent), absent_name)
    assert gone.returncode == cancel.returncode and len(gone.stderr.splitlines()) == 1
    gone_status = tryssh("status", "--config", str(absent), "--json", absent_name)
    assert gone_status.returncode == status.returncode
    assert json.loads(gone_status.stdout)["state"] == "claimed"
    assert "Traceback" not in cancel.stderr + status.stderr


def test_the_consumers_buildbot_builder_ends_in_one_line_not_an_internal_error(
    master, tmp_path
):
    """The consumer's buildbot builder follows a buildset whose build requests come back
    malformed: its result is ``error`` with the one line, as when the master goes away,
    not an ``internal error: KeyError``; the job was delivered once."""
    state, url = master
    asked: list[int] = []

    def buildsets() -> dict[str, Any]:
        # None for the jobid at first (the job is sent), then the one it made just now.
        asked.append(1)
        found = [{**GOOD["/api/v2/buildsets"]["buildsets"][0], "submitted_at": time.time()}]
        return {"buildsets": found if len(asked) > 1 else []}

    state.set("/api/v2/buildrequests", {"buildrequests": [{"builderid": 1}]},
              buildsets=buildsets)  # fmt: skip
    target = Jobdir(str(tmp_path / "bb")).create()
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    config = config_from_dict({"jobdir": jobdir.path, "builders": {"bb": {"buildbot": {
        "jobdir": target.path, "api": url, "retries": 0, "poll_interval": 0.05}}}},
        str(tmp_path / "tryssh.toml"))  # fmt: skip
    name = "1700000000.M1P1Q1Rab.host"
    job = Job(JOBID, "main", None, 1, b"patch", ["bb"])
    path = Path(config.jobdir, "cur", name)
    path.write_bytes(encode_job(job))
    ctx = builders.BuildContext(config, name, job, str(path), config.builders["bb"],
                                builders.log_path(config, name, "bb"))  # fmt: skip
    outcome = builders.run(ctx)
    assert outcome.result == "error"
    assert outcome.reason is not None and "internal error" not in outcome.reason
    assert "buildrequests[0].buildrequestid missing, not an integer" in outcome.reason
    assert "\n" not in outcome.reason
    assert len(target.pending()) == 1  # handed over once


def test_doctor_says_an_api_that_answers_nonsense_is_a_problem(master, tmp_path):
    """A ``buildbot.api`` URL that answers JSON but not Buildbot's (a wrong path behind a
    proxy, say) is a problem that names it, not "answers"."""
    from tryssh.server.doctor import check_builders

    state, url = master
    state.set("/api/v2/builders", {"builders": "none"})
    target = Jobdir(str(tmp_path / "bb")).create()
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    config = config_from_dict({"jobdir": jobdir.path, "builders": {"bb": {"buildbot": {
        "jobdir": target.path, "api": url}}}}, str(tmp_path / "tryssh.toml"))  # fmt: skip
    findings = list(check_builders(config))
    assert [f.level for f in findings] == ["ok", "problem"]  # the jobdir, then the API
    assert findings[1].message.startswith("builders.bb.buildbot.api: Buildbot's API answered")
    assert findings[1].message.endswith("with builders without a list")


def test_the_deadline_leaves_a_good_answer_alone(master):
    """An answer that comes in time is read; its deadline's timer ends with the call."""
    state, url = master
    state.set("", None)
    before = threading.active_count()
    api = buildbot.Api(url, deadline=30)
    assert api.buildsets(JOBID)[0]["bsid"] == 5
    # The timer's thread ends once cancelled (the server's request thread ends too).
    wait_until(lambda: threading.active_count() <= before, timeout=30,
               message=lambda: f"threads left: {threading.enumerate()}")


def test_a_buildset_with_thousands_of_requests_is_not_asked_about_each(master):
    """Each build request costs a GET at every poll: a buildset said to have 5,000 (a try
    job has one per builder) is Unavailable after one GET, not 10,000."""
    state, url = master
    many = {"buildrequests": [{"buildrequestid": n, "builderid": 1, "complete": False,
                               "results": None} for n in range(5000)]}  # fmt: skip
    state.set("/api/v2/buildrequests", many)
    state.requests = 0
    api = buildbot.Api(url, retries=0, sleep=lambda s: None)
    with pytest.raises(buildbot.Unavailable, match="buildset 5 with 5000 build requests"):
        api.builds(5)
    assert state.requests == 1
    state.set("/api/v2/buildrequests",
              {"buildrequests": many["buildrequests"][:buildbot.MAX_REQUESTS]})
    assert len(api.builds(5)) == 1  # as many as the cap are read (all of builder 1)
    state.set("", None)
