"""Hostile or unlucky values at the doors: URLs with credentials, odd names, bad config."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_consumer import consume_once, store_of, submit, write_config

from tryssh.core.jobview import format_status
from tryssh.core.safetext import printable, redact_in, redact_url

SECRETS = ("s3cr3t-pass", "tok-123")


@pytest.fixture
def failing_hook() -> Iterator[int]:
    """A real HTTP server on loopback that answers every POST with 500; its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("with_userinfo", [False, True])
def test_webhook_credentials_never_reach_developers(
    tmp_path: Path, failing_hook: int, with_userinfo: bool
) -> None:
    auth = "deploy:s3cr3t-pass@" if with_userinfo else ""
    url = f"http://{auth}127.0.0.1:{failing_hook}/hook?token=tok-123"
    config = write_config(
        tmp_path, {"hook": {"webhook": url, "retries": 0}}, {"*": {"builders": ["hook"]}}
    )
    name = submit(config, ["hook"])
    out = consume_once(config)
    record = store_of(config).read(name)
    assert record["state"] == "error"
    # Before: the reason was "POST http://deploy:s3cr3t-pass@.../hook?token=...: ...".
    log = Path(record["builders"]["hook"]["log"]).read_text()
    for shown in (json.dumps(record), format_status(record), out, log):
        for secret in SECRETS:
            assert secret not in shown
    assert "/hook?***" in record["builders"]["hook"]["reason"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h/x?t=1", "http://***@h/x?***"),
        ("https://h:8443/a#frag", "https://h:8443/a"),
        ("http://a@b@h/", "http://***@h/"),
        ("https://h/p", "https://h/p"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@given(st.text(alphabet="abc:@/?#=&x", max_size=30), st.text(alphabet="XYZ", min_size=3))
def test_redacted_text_holds_no_userinfo_or_query(rest: str, secret: str) -> None:
    url = f"https://user:{secret}@host/{rest}?q={secret}"
    text = f"cannot POST {url}: nonnumeric port: '{secret}@host'"
    assert secret not in redact_url(url)
    assert secret not in redact_in(text, url)


def test_printable_escapes_control_characters() -> None:
    assert printable("main") == "main"
    assert printable("x\x1b]0;owned\x07y\n") == "x\\x1b]0;owned\\x07y\\n"
    assert printable("caf\u00e9") == "caf\u00e9"


# -- text that could never build is refused at the door -------------------------------------------


def _v5(**fields: object) -> bytes:
    from tryssh.core import netstring

    obj = {"jobid": "j", "branch": "main", "baserev": "r", "patch_level": 1,
           "builderNames": ["unit"], "patch_body": "p\n", **fields}  # fmt: skip
    return netstring.encode(b"5") + netstring.encode(json.dumps(obj).encode())


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (None, "branch field holds a NUL"),  # v2 netstrings, filled in below
        (_v5(branch="a\0b"), "branch field holds a NUL"),
        (_v5(comment="\ud800"), "comment field holds a lone surrogate"),
        (_v5(builderNames=["u"] * 10_001), "more than 10000 builders"),
    ],
)
def test_unbuildable_text_is_refused_at_the_door(
    tmp_path: Path, data: bytes | None, needle: str
) -> None:
    from test_tryserver import tryserver

    from tryssh.core.jobdir import Jobdir
    from tryssh.core.jobfile import Job, encode_job

    if data is None:
        data = encode_job(Job("j", "a\0b", "r", 1, b"p\n", ["unit"]))
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    # Before: accepted (exit 0), and the job could never build.
    result = tryserver(jobdir, data)
    assert result.returncode == 65, result.stderr
    assert needle in result.stderr.decode()
    assert os.listdir(jobdir.new) == [] and os.listdir(jobdir.tmp) == []


def test_text_answers_escape_control_characters() -> None:
    from tryssh.core.jobview import format_jobs
    from tryssh.core.records import new_record

    record = new_record("j1", state="queued", branch="x\x1b]0;owned\x07\nfake\tline")
    record["builders"] = {"u\x1b[2J": {"state": "pending"}}
    # Before: an admin's `tryserver jobs` printed the escape sequences raw.
    for text in (format_jobs([record]), format_status(record)):
        assert "\x1b" not in text and "\x07" not in text
        assert "fake\tline" not in text
    assert format_jobs([record]).count("\n") == 1


@pytest.mark.parametrize("length", [251, 255])
def test_status_of_a_name_too_long_for_a_record(tmp_path: Path, length: int) -> None:
    from tryssh.server.queries import NoSuchJob, job_status

    state = tmp_path / "state"
    state.mkdir()
    for sub in ("new", "cur"):
        (tmp_path / sub).mkdir()
    # Before: ENAMETOOLONG escaped as a traceback (exit 1).
    with pytest.raises(NoSuchJob):
        job_status(str(tmp_path), str(state), "1" * length)


def test_try_diff_from_an_endless_file_is_capped(tmp_path: Path) -> None:
    import subprocess

    from helpers import venv_bin

    # Before: it read /dev/zero until memory ran out. Then, at times: exit 134 or 139, when
    # the process ended while the connection's thread was inside paramiko's cryptography
    # (a loaded machine made it one run in four): a few runs give that a chance to show.
    for _ in range(5):
        result = subprocess.run(
            [venv_bin("tryssh"), "try", "--diff", "/dev/zero", "--baserev", "abc",
             "--host", "127.0.0.1", "--port", "1", "-u", "alice", "-b", "unit"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert result.returncode == 65, result.stderr
        assert "larger than 64 MiB" in result.stderr
        assert "FATAL" not in result.stderr


# -- configs that were tracebacks or silent nonsense -----------------------------------------------

BAD_CONFIGS = {
    "not UTF-8": (b'jobdir = "j"\n# \xff\xfe\n', "not UTF-8"),
    "max_parallel = 0": (b'jobdir = "j"\n[consume]\nmax_parallel = 0\n', "max_parallel"),
    "poll_interval = nan": (b'jobdir = "j"\n[consume]\npoll_interval = nan\n', "poll_interval"),
    "timeout = inf": (
        b'jobdir = "j"\n[builders.u]\ncommand = ["true"]\ntimeout = inf\n',
        "timeout",
    ),
    "retries = -5": (
        b'jobdir = "j"\n[builders.u]\nwebhook = "http://h/"\nretries = -5\n',
        "retries",
    ),
    "builder ../../escape": (
        b'jobdir = "j"\n[builders."../../escape"]\ncommand = ["true"]\n',
        "builder name",
    ),
}


@pytest.mark.parametrize("case", [*BAD_CONFIGS, "a directory"])
def test_bad_configs_are_one_line_exit_78(tmp_path: Path, case: str) -> None:
    import subprocess

    from helpers import venv_bin

    config = tmp_path / "tryssh.toml"
    if case == "a directory":
        config.mkdir()
        needle = "is a directory"
    else:
        data, needle = BAD_CONFIGS[case]
        config.write_bytes(data)
    (tmp_path / "j").mkdir()
    for sub in ("tmp", "new", "cur"):
        (tmp_path / "j" / sub).mkdir()
    # Before: tracebacks (exit 1), or a config taken with a limit that means nothing.
    for argv in (["consume", "--once"], ["serve"]):
        result = subprocess.run(
            [venv_bin("tryssh"), *argv, "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 78, (argv, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_client_escapes_what_the_server_says() -> None:
    from tryssh.core.jobview import status_lines

    record = {"job": "j", "state": "failure", "reason": "\x1b]0;pwned\x07",
              "builders": {"u\x1b[2J": {"state": "done", "result": "failure"}}}  # fmt: skip
    assert not any("\x1b" in line or "\x07" in line for line in status_lines(record))
