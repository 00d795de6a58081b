"""The Buildbot builder kind without a build: its config, its REST client when the master
does not answer, and its result mapping. (Builds with a real master: test_buildbot_engine.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import free_port

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.server import buildbot, builders
from tryssh.server.checks import refuse_problems
from tryssh.server.config import ConfigError, config_from_dict


def config_with(tmp_path: Path, **builder: object):
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    return config_from_dict({"jobdir": jobdir.path, "builders": {"bb": builder}},
                            str(tmp_path / "tryssh.toml"))  # fmt: skip


def test_result_mapping_never_turns_trouble_into_success():
    assert [buildbot.tryssh_result(c) for c in range(7)] == [
        "success", "success", "failure", "error", "error", "error", "error"]  # fmt: skip
    assert buildbot.result_name(2) == "FAILURE" and buildbot.result_name(None) == "running"
    assert buildbot.tryssh_result(99) == "error"


@pytest.mark.parametrize(("table", "message"), [
    ({"api": "http://x/"}, "buildbot.jobdir: missing"),
    ({"jobdir": "/j"}, "buildbot.api: missing"),
    ({"jobdir": "/j", "api": "ftp://x/"}, "must be an http:// or https:// URL"),
    ({"jobdir": "/j", "api": "http://x/", "builders": []}, "must not be empty"),
    ({"jobdir": "/j", "api": "http://x/", "poll_interval": 0}, "greater than 0"),
    ({"jobdir": "/j", "api": "http://x/", "colour": 1}, "unknown key"),
])  # fmt: skip
def test_buildbot_table_is_checked(tmp_path, table, message):
    with pytest.raises(ConfigError, match=message):
        config_with(tmp_path, buildbot=table)


def test_remote_names_and_destination(tmp_path):
    config = config_with(tmp_path, buildbot={"jobdir": "bbjobs", "api": "http://x:8010/",
                                             "builders": ["a", "b"]})  # fmt: skip
    builder = config.builders["bb"]
    assert builder.kind == "buildbot" and builder.remote_names == ["a", "b"]
    assert builder.destination == str(tmp_path / "bbjobs")  # relative to the config file
    plain = config_with(tmp_path, forward="/elsewhere").builders["bb"]
    assert plain.remote_names == ["bb"] and plain.destination == "/elsewhere"


def test_builders_sharing_a_master_must_share_its_api(tmp_path):
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    target = Jobdir(str(tmp_path / "bb")).create()
    config = config_from_dict({"jobdir": jobdir.path, "builders": {
        "a": {"buildbot": {"jobdir": target.path, "api": "http://one/"}},
        "b": {"buildbot": {"jobdir": target.path, "api": "http://two/"}},
    }})  # fmt: skip
    with pytest.raises(ConfigError, match="another buildbot builder with api http://one/"):
        refuse_problems(config)


def test_api_that_does_not_answer_is_retried_with_backoff_then_unavailable():
    delays: list[float] = []
    api = buildbot.Api(f"http://127.0.0.1:{free_port()}/", retries=3, sleep=delays.append)
    with pytest.raises(buildbot.Unavailable, match="Buildbot's API does not answer"):
        api.buildsets("some-jobid")
    assert delays == [0.5, 1.0, 2.0]


def test_builder_whose_master_does_not_answer_is_error_and_delivers_nothing(tmp_path):
    target = Jobdir(str(tmp_path / "bb")).create()
    config = config_with(tmp_path, buildbot={
        "jobdir": target.path, "api": f"http://127.0.0.1:{free_port()}/", "retries": 1})
    name = "1700000000.M1P1Q1Rab.host"
    job = Job("jid", "main", None, 1, b"patch", ["bb"])
    path = Path(config.jobdir, "cur", name)
    path.write_bytes(encode_job(job))
    ctx = builders.BuildContext(config, name, job, str(path), config.builders["bb"],
                                builders.log_path(config, name, "bb"))  # fmt: skip
    outcome = builders.run(ctx)
    assert outcome.result == "error"  # never a success it did not see
    assert "does not answer" in outcome.reason
    assert target.pending() == []  # not handed over: nobody could follow it
    assert "result: error" in Path(ctx.log_path).read_text()


def test_doctor_reports_a_buildbot_api_that_does_not_answer(tmp_path):
    from tryssh.server.doctor import check_builders

    target = Jobdir(str(tmp_path / "bb")).create()
    config = config_with(tmp_path, buildbot={
        "jobdir": target.path, "api": f"http://127.0.0.1:{free_port()}/"})
    findings = list(check_builders(config))
    assert [f.level for f in findings] == ["ok", "problem"]  # the jobdir, then the API
    assert "buildbot.api" in findings[1].message and "does not answer" in findings[1].message


def test_an_answer_cut_short_is_retried_like_a_connection_error():
    """Buildbot's web server under load may close a connection mid-answer (IncompleteRead):
    retried, then Unavailable, never an internal error."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    answers = 0

    def serve() -> None:
        nonlocal answers
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            # Counted before the answer goes out: once the client has it, it may give up
            # and the test read the count before this thread runs again.
            answers += 1
            # A 200 that promises 276 bytes and sends none.
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 276\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    delays: list[float] = []
    try:
        api = buildbot.Api(f"http://127.0.0.1:{server.getsockname()[1]}/", retries=2,
                           sleep=delays.append)  # fmt: skip
        with pytest.raises(buildbot.Unavailable, match="IncompleteRead"):
            api.buildsets("x")
    finally:
        server.close()
    assert delays == [0.5, 1.0] and answers == 3


@pytest.mark.parametrize(("status", "code"), [(403, 77), (401, 77), (503, 75)])
def test_a_stop_buildbot_refuses_is_77_and_one_it_cannot_take_now_is_75(status, code):
    """A real HTTP server on loopback answers the stop: 401/403 (its authz does not let
    the token stop builds) will not get better by asking again, a 503 may."""
    from http.server import BaseHTTPRequestHandler

    from helpers import LoopbackHttp

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # Buildbot's answers for a buildset with one running build
            path = self.path.partition("?")[0]
            body = {
                "/api/v2/buildrequests": b'{"buildrequests": [{"buildrequestid": 3, '
                                         b'"builderid": 1, "complete": false}]}',
                "/api/v2/builds": b'{"builds": [{"buildid": 7, "number": 1, "builderid": 1, '
                                  b'"complete": false, "results": null}]}',
                "/api/v2/builders": b'{"builders": [{"builderid": 1, "name": "unit"}]}',
            }[path]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = LoopbackHttp(Handler)
    try:
        api = buildbot.Api(server.url, retries=0)
        got, note = buildbot.stop_buildsets(api, [5], "tryssh job X cancelled by alice")
    finally:
        server.close()
    assert got == code
    assert note.startswith("could not ask Buildbot to stop buildset 5: ")
    assert f"HTTP {status}" in note and "\n" not in note
    if status == 403:
        assert "authz" in note
