"""The builders with real parts: git + a build script, a loopback HTTP server, jobdirs and
Buildbot's own Try_Jobdir parser."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from helpers import LoopbackHttp, wait_until

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.server import builders
from tryssh.server.config import config_from_dict

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
}  # fmt: skip


def git(cwd: Path, *args: str, home: Path) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(home)}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, check=True)
    return out.stdout.decode()


def make_config(tmp_path: Path, builders_table: dict, **top):
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    data = {"jobdir": jobdir.path, "builders": builders_table, "users": {"*": {}}, **top}
    return config_from_dict(data, str(tmp_path / "tryssh.toml"))


def context(config, builder_name: str, job: Job, name: str = "1700000000.M1P1Q1Rab.host"):
    path = os.path.join(config.jobdir, "cur", name)
    with open(path, "wb") as f:
        f.write(encode_job(job))
    return builders.BuildContext(
        config, name, job, path, config.builders[builder_name],
        builders.log_path(config, name, builder_name),
    )  # fmt: skip


# --- command -------------------------------------------------------------------------


@pytest.fixture
def git_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository whose check.sh passes when greeting.txt says hello (and other.txt y)."""
    home = tmp_path / "home"
    home.mkdir()
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main", home=home)
    (repo / "greeting.txt").write_text("hello\n")
    # other.txt is added by the test and only the patch turns it into "y".
    (repo / "check.sh").write_text(
        'grep -qx hello greeting.txt && grep -qx y other.txt && echo "checked ok"\n'
    )
    git(repo, "add", ".", home=home)
    git(repo, "commit", "-q", "-m", "init", home=home)
    return repo, home


def patch_for(repo: Path, home: Path, new_text: str) -> bytes:
    (repo / "greeting.txt").write_text(new_text)
    diff = git(repo, "diff", home=home).encode()
    git(repo, "checkout", "--", "greeting.txt", home=home)
    return diff


def build_script(tmp_path: Path) -> Path:
    script = tmp_path / "build.sh"
    script.write_text(
        "set -e\n"
        'echo "job=$TRY_JOB builder=$TRY_BUILDER who=$TRY_WHO branch=$TRY_BRANCH '
        'props=$TRY_PROPERTIES level=$TRY_PATCH_LEVEL pwd=$(pwd)"\n'
        'git clone -q "$UPSTREAM" src\n'
        "cd src\n"
        'git apply -p"$TRY_PATCH_LEVEL" "$TRY_PATCH"\n'
        "sh ./check.sh\n"
    )
    return script


@pytest.mark.parametrize(
    ("text", "result"), [("hello\nworld\n", "success"), ("goodbye\n", "failure")]
)
def test_command_applies_patch_to_real_git_clone(tmp_path, git_repo, text, result):
    repo, home = git_repo
    # A patch that changes something else too, so that "hello" must survive the apply.
    (repo / "other.txt").write_text("x\n")
    git(repo, "add", "other.txt", home=home)
    git(repo, "commit", "-q", "-m", "other", home=home)
    (repo / "other.txt").write_text("y\n")
    patch = patch_for(repo, home, text)
    assert b"greeting.txt" in patch and b"other.txt" in patch
    config = make_config(tmp_path, {"unit": {
        "command": ["sh", str(build_script(tmp_path))],
        "env": {"UPSTREAM": str(repo), "HOME": str(home), **GIT_ENV},
    }})  # fmt: skip
    job = Job("id1", "main", "abc", 1, patch, ["unit"], who="alice",
              properties={"color": "blue"})  # fmt: skip
    ctx = context(config, "unit", job)
    outcome = builders.run(ctx)
    log = Path(ctx.log_path).read_text()
    assert outcome.result == result, log
    assert outcome.exit == (0 if result == "success" else 1)
    assert f"job={ctx.name} builder=unit who=alice branch=main" in log
    assert 'props={"color": "blue"} level=1' in log
    assert ("checked ok" in log) == (result == "success")
    # a fresh working directory under JOBDIR/work, removed afterwards
    pwd = log.split("pwd=", 1)[1].split()[0]
    assert pwd.startswith(os.path.join(config.jobdir, "work") + "/")
    assert not os.path.exists(pwd)
    assert oct(os.stat(ctx.log_path).st_mode & 0o777) == oct(0o640)


def test_command_environment_is_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_OF_CONSUMER", "leak")
    config = make_config(tmp_path, {"env": {"command": ["env"], "env": {"EXTRA": "1"}}})
    ctx = context(config, "env", Job("i", "b", "r", 0, b"p", None, who="w"))
    assert builders.run(ctx).result == "success"
    lines = Path(ctx.log_path).read_text().splitlines()
    names = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("[")}
    assert "SECRET_OF_CONSUMER" not in names
    assert {"PATH", "TRY_JOB", "TRY_PATCH", "TRY_PROPERTIES", "EXTRA", "TRY_REPOSITORY"} <= names


def test_command_timeout_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    config = make_config(tmp_path, {"slow": {
        "command": ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], "timeout": 0.5,
    }})  # fmt: skip
    ctx = context(config, "slow", Job("i", "b", "r", 0, b"", None))
    start = time.monotonic()
    outcome = builders.run(ctx)
    assert outcome.result == "error" and "timed out" in outcome.reason
    assert time.monotonic() - start < 10
    child = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout=30, message="the build's background child survived the timeout")


def test_command_that_cannot_start_is_error(tmp_path):
    config = make_config(tmp_path, {"gone": {"command": [str(tmp_path / "no-such-program")]}})
    ctx = context(config, "gone", Job("i", "b", "r", 0, b"", None))
    outcome = builders.run(ctx)
    assert outcome.result == "error" and "cannot run" in outcome.reason


# --- webhook -------------------------------------------------------------------------


class Hook:
    """A real HTTP server on 127.0.0.1 that checks the signature like a receiver would."""

    def __init__(self, secret: bytes, statuses: list[int]) -> None:
        self.secret = secret
        self.statuses = statuses
        self.received: list[tuple[dict, dict]] = []
        self.bad_signatures = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                want = "sha256=" + hmac.new(hook.secret, body, hashlib.sha256).hexdigest()
                got = self.headers.get("X-Tryssh-Signature-256", "")
                if not hmac.compare_digest(want, got):
                    hook.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                hook.received.append((dict(self.headers), json.loads(body)))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"nope")

            def log_message(self, *args: object) -> None:
                pass

        self.http = LoopbackHttp(Handler)
        self.url = self.http.url + "try"

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def hook_factory():
    hooks = []

    def make(secret: bytes, statuses: list[int]) -> Hook:
        hooks.append(Hook(secret, statuses))
        return hooks[-1]

    yield make
    for hook in hooks:
        hook.close()


def webhook_config(tmp_path, hook, secret_text: str, **options):
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret_text)
    return make_config(tmp_path, {"hook": {
        "webhook": hook.url, "secret_file": str(secret_file), **options,
    }})  # fmt: skip


def test_webhook_signed_and_received(tmp_path, hook_factory):
    hook = hook_factory(b"s3cret", [])
    config = webhook_config(tmp_path, hook, "s3cret\n")  # trailing newline is not the secret
    patch = b"\xff\xfebinary patch\n"
    job = Job("id9", "dev", "rev", 2, patch, ["hook"], who="bob", comment="hi",
              properties={"a": 1})  # fmt: skip
    ctx = context(config, "hook", job)
    outcome = builders.run(ctx)
    assert outcome.result == "success", Path(ctx.log_path).read_text()
    assert hook.bad_signatures == 0
    headers, body = hook.received[0]
    assert headers["X-Tryssh-Job"] == ctx.name
    assert body["patch_encoding"] == "base64"
    assert base64.b64decode(body["patch"]) == patch
    assert (body["job"], body["who"], body["branch"], body["patch_level"]) == (
        ctx.name, "bob", "dev", 2)  # fmt: skip
    assert body["properties"] == {"a": 1} and body["comment"] == "hi"


def test_webhook_retries_500_then_succeeds(tmp_path, hook_factory):
    hook = hook_factory(b"k", [500, 200])
    config = webhook_config(tmp_path, hook, "k")
    ctx = context(config, "hook", Job("i", "b", "r", 0, b"p", None))
    outcome = builders.run(ctx)
    assert outcome.result == "success"
    assert len(hook.received) == 2
    log = Path(ctx.log_path).read_text()
    assert "HTTP 500" in log and "retrying" in log


def test_webhook_wrong_secret_is_error_without_retry(tmp_path, hook_factory):
    hook = hook_factory(b"right", [])
    config = webhook_config(tmp_path, hook, "wrong", retries=5)
    ctx = context(config, "hook", Job("i", "b", "r", 0, b"p", None))
    outcome = builders.run(ctx)
    assert outcome.result == "error" and "401" in outcome.reason
    assert hook.bad_signatures == 1  # a 4xx does not improve on retry


def test_webhook_still_failing_is_error_after_retries(tmp_path, hook_factory, monkeypatch):
    monkeypatch.setattr(builders, "BACKOFF_BASE", 0.01)
    hook = hook_factory(b"k", [503, 503, 503])
    config = webhook_config(tmp_path, hook, "k", retries=2)
    ctx = context(config, "hook", Job("i", "b", "r", 0, b"p", None))
    outcome = builders.run(ctx)
    assert outcome.result == "error" and "503" in outcome.reason
    assert len(hook.received) == 3


def test_webhook_connection_refused_is_error(tmp_path, hook_factory, monkeypatch):
    monkeypatch.setattr(builders, "BACKOFF_BASE", 0.01)
    hook = hook_factory(b"k", [])
    hook.close()
    config = webhook_config(tmp_path, hook, "k", retries=1)
    ctx = context(config, "hook", Job("i", "b", "r", 0, b"p", None))
    assert builders.run(ctx).result == "error"


# --- forward -------------------------------------------------------------------------


def test_forward_into_jobdir_parsed_by_real_buildbot(tmp_path):
    """The receiver gets the job naming only its own builders; the result is not known."""
    from buildbot.schedulers.trysched import Try_Jobdir

    target = Jobdir(str(tmp_path / "buildbot-jobdir")).create()
    config = make_config(tmp_path, {"bb": {"forward": target.path, "builders": ["full"]}})
    job = Job("id7", "main", "deadbeef", 1, b"--- a/x\n+++ b/x\n", ["bb", "lint"], who="carol",
              comment="c", properties={"p": "v"}, repository=None, project="proj")  # fmt: skip
    ctx = context(config, "bb", job)
    outcome = builders.run(ctx)
    assert outcome.result == "unknown"  # never "success": tryssh cannot see the build
    [name] = target.pending()
    assert name in outcome.reason and outcome.fields == {"delivered_as": name}
    path = os.path.join(target.new, name)
    with open(path, encoding="utf-8") as f:
        parsed = Try_Jobdir("try", ["full"], "x").parseJob(f)
    assert parsed["who"] == "carol" and parsed["builderNames"] == ["full"]
    assert parsed["patch_body"] == job.patch_body and parsed["baserev"] == "deadbeef"
    assert parsed["properties"] == {"p": "v"} and parsed["jobid"] == "id7"
    assert parsed["repository"] == ""  # null would crash Buildbot's master


def test_forward_into_missing_jobdir_is_error(tmp_path):
    config = make_config(tmp_path, {"bb": {"forward": str(tmp_path / "nowhere")}})
    ctx = context(config, "bb", Job("i", "b", "r", 0, b"", None))
    outcome = builders.run(ctx)
    assert outcome.result == "error" and "not set up" in outcome.reason


def test_parse_ssh_url():
    assert builders.parse_ssh_url("ssh://bb@ci.example:2222/srv/jobdir") == (
        "bb", "ci.example", 2222, "/srv/jobdir")  # fmt: skip
    assert builders.parse_ssh_url("ssh://ci/~/jobdir") == (None, "ci", None, "~/jobdir")
    from tryssh.errors import UsageError

    for bad in ("ssh://ci", "ssh://ci/", "http://ci/x", "ssh://ci:port/x"):
        with pytest.raises(UsageError):
            builders.parse_ssh_url(bad)
