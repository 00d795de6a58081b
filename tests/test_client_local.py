"""``tryssh try -c local``, --dry-run, --json, empty diffs, options files, and the client's
building blocks (remote command quoting, the --wait loop, exit codes)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import GIT_ENV, clone_with_change, git, run, venv_bin
from hypothesis import given
from hypothesis import strategies as st

from tryssh.client.job import TryRequest, build_job, parse_properties
from tryssh.client.transport import quote_remote_path, tryserver_command
from tryssh.client.wait import exit_code_for, wait_for
from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import parse_job
from tryssh.core.jobview import status_lines
from tryssh.errors import EX_NOPERM, EX_TEMPFAIL, EX_USAGE, TempFail, TrysshError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A clone of an upstream, with an uncommitted change."""
    return clone_with_change(tmp_path)


def tryssh(cwd: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    home = cwd.parent / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(HOME=str(home), **GIT_ENV)
    env.pop("XDG_CONFIG_HOME", None)
    return run([venv_bin("tryssh"), *args], input=input, env=env, cwd=cwd, timeout=60)


def ok(result: subprocess.CompletedProcess[bytes], code: int = 0) -> str:
    assert result.returncode == code, (
        f"exit {result.returncode}\nstdout: {result.stdout.decode()}\n"
        f"stderr: {result.stderr.decode()}"
    )
    return result.stdout.decode()


# -- -c local -------------------------------------------------------------------------------


def test_local_delivery_is_read_by_buildbot(repo: Path, jobdir: Jobdir) -> None:
    from buildbot.schedulers.trysched import Try_Jobdir

    out = ok(
        tryssh(
            repo,
            "try",
            "-c",
            "local",
            "--jobdir",
            jobdir.path,
            "-b",
            "unit",
            "--who",
            "alice",
            "--project",
            "demo",
            "--json",
        )
    )
    receipt = json.loads(out)
    [name] = jobdir.pending()
    assert receipt["job"] == name and receipt["transport"] == "local"
    path = Path(jobdir.new) / name
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == receipt["sha256"] and len(data) == receipt["size"]
    with open(path, "rb") as f:
        job = Try_Jobdir.parseJob(None, f)  # type: ignore[arg-type]
    assert job["who"] == "alice" and job["project"] == "demo" and job["builderNames"] == ["unit"]
    assert b"+two" in job["patch_body"] and job["patch_level"] == 1
    assert job["baserev"] == git(repo, "rev-parse", "HEAD")
    assert os.listdir(jobdir.tmp) == []


def test_local_prints_the_job_name(repo: Path, jobdir: Jobdir) -> None:
    result = tryssh(repo, "try", "-c", "local", "--jobdir", jobdir.path)
    assert ok(result).strip() == jobdir.pending()[0]
    assert "1 file, +1 -0 lines" in result.stderr.decode()


def test_local_missing_jobdir_is_73(repo: Path, tmp_path: Path) -> None:
    result = tryssh(repo, "try", "-c", "local", "--jobdir", str(tmp_path / "nope"))
    ok(result, 73)
    assert result.stderr.decode().splitlines()[-1].startswith("tryssh: ")


def test_dry_run_sends_nothing(repo: Path, jobdir: Jobdir) -> None:
    result = tryssh(repo, "try", "-c", "local", "--jobdir", jobdir.path, "--dry-run", "-b", "x")
    out = ok(result)
    assert "1 file, +1 -0 lines" in out and "not sent" in out and "builders:   x" in out
    assert jobdir.pending() == []
    as_json = json.loads(ok(tryssh(repo, "try", "--dry-run", "--json", "-p", "3")))
    assert as_json["patch"] == {
        "files": 1,
        "added": 1,
        "removed": 0,
        "bytes": as_json["patch"]["bytes"],
    }
    assert as_json["patch_level"] == 3 and as_json["vcs"] == "git" and as_json["dry_run"]


def test_empty_diff_refused_unless_allowed(repo: Path, jobdir: Jobdir) -> None:
    git(repo, "checkout", "--", "a.txt")
    result = tryssh(repo, "try", "-c", "local", "--jobdir", jobdir.path)
    ok(result, 65)
    assert "empty" in result.stderr.decode() and "--allow-empty" in result.stderr.decode()
    assert jobdir.pending() == []
    ok(tryssh(repo, "try", "-c", "local", "--jobdir", jobdir.path, "--allow-empty"))
    [name] = jobdir.pending()
    assert parse_job((Path(jobdir.new) / name).read_bytes()).patch_body is None


def test_diff_needs_baserev(repo: Path) -> None:
    result = tryssh(repo, "try", "--diff", "-", "--dry-run", input=b"x")
    ok(result, 64)
    assert "--baserev" in result.stderr.decode()


def test_ssh_needs_a_host(repo: Path) -> None:
    result = tryssh(repo, "try")
    ok(result, 64)
    assert "--host" in result.stderr.decode()


def test_options_file_with_code_is_never_executed(
    repo: Path, jobdir: Jobdir, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    (repo / ".buildbot").mkdir()
    (repo / ".buildbot" / "options").write_text(
        f"try_connect = 'local'\ntry_jobdir = {jobdir.path!r}\ntry_builders = ['from-options']\n"
        f"import os\nos.system('touch {marker}')\n"
        f"try_who = open({str(marker)!r}, 'w').name\n"
    )
    result = tryssh(repo, "try")
    ok(result)
    assert not marker.exists()
    [name] = jobdir.pending()
    job = parse_job((Path(jobdir.new) / name).read_bytes())
    assert job.builder_names == ["from-options"] and job.who == ""
    # The command line wins over the options file.
    ok(tryssh(repo, "try", "-b", "cli"))
    names = jobdir.pending()
    assert parse_job((Path(jobdir.new) / names[-1]).read_bytes()).builder_names == ["cli"]


def test_project_file_sets_defaults(repo: Path, jobdir: Jobdir) -> None:
    (repo / ".tryssh.toml").write_text(
        f'[try]\nconnect = "local"\njobdir = "{jobdir.path}"\nbuilders = ["p"]\n'
        '[try.properties]\nk = "v"\n'
    )
    ok(tryssh(repo, "try", "--untracked"))
    job = parse_job((Path(jobdir.new) / jobdir.pending()[0]).read_bytes())
    assert job.builder_names == ["p"] and job.properties == {"k": "v"}
    assert b".tryssh.toml" in (job.patch_body or b"")


def test_help_has_examples() -> None:
    out = run([venv_bin("tryssh"), "try", "--help"]).stdout.decode()
    for word in (
        "Examples:",
        "--accept-new-host-key",
        "--wait",
        "-c, --connect",
        "--dry-run",
        "--tryserver-cmd",
        "--buildbotbin",
        "--json",
        "--identity",
    ):
        assert word in out


# -- building blocks ------------------------------------------------------------------------


def test_tryserver_command() -> None:
    assert tryserver_command("buildbot", "~/jobdir") == "buildbot tryserver --jobdir ~/jobdir"
    assert tryserver_command("/opt/bin/tryserver", None, "status", "J", "--json") == (
        "/opt/bin/tryserver status J --json"
    )
    assert tryserver_command("tryssh", "/srv/a b") == "tryssh tryserver --jobdir '/srv/a b'"
    assert quote_remote_path("~/x;rm -rf /") == "~/'x;rm -rf /'"


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1
    )
)
def test_remote_command_words_survive_the_shell(jobdir: str) -> None:
    words = shlex.split(tryserver_command("buildbot", jobdir))
    assert words[:3] == ["buildbot", "tryserver", "--jobdir"]
    expected = jobdir[2:] if jobdir.startswith("~/") else jobdir
    assert words[3].removeprefix("~/") == expected.removeprefix("~/") or words[3] == jobdir
    assert len(words) == 4


def test_parse_properties() -> None:
    assert parse_properties(["a=b=c", "x="]) == {"a": "b=c", "x": ""}
    with pytest.raises(TrysshError):
        parse_properties(["novalue"])


def test_build_job_like_buildbot() -> None:
    from tryssh.client.vcs import SourceChange

    change = SourceChange(
        vcs="git",
        baserev="abc",
        patch=b"p",
        patch_level=1,
        branch="feature",
        repository="https://example.org/r.git",
        topdir="/x",
        upstream_branch="main",
    )
    job = build_job(change, TryRequest(builders=["a"], comment="c"))
    assert job.branch == "main" and job.baserev == "abc" and job.patch_level == 1
    assert job.builder_names == ["a"] and job.repository == "https://example.org/r.git"
    seconds, rand = job.jobid.split("-")
    assert float(seconds) > 0 and 0 <= int(rand) <= 1000000
    # With --branch, the name is the one vcs.extract settled on (a remote prefix dropped).
    renamed = SourceChange(vcs="git", baserev="abc", patch=b"p", patch_level=1, branch="x",
                           repository=None,
                           topdir="/x", upstream_branch="main")
    assert build_job(renamed, TryRequest(branch="origin/x", patchlevel=0)).branch == "x"
    assert build_job(change, TryRequest()).builder_names is None  # JSON null, as Buildbot


def test_wait_for_shows_changes_and_stops_on_a_final_state() -> None:
    states = iter([
        {"job": "J", "state": "queued", "builders": {}},
        {"job": "J", "state": "queued", "builders": {}},
        {"job": "J", "state": "running",
         "builders": {"u": {"state": "running", "result": None, "log": None}}},
        {"job": "J", "state": "failure",
         "builders": {"u": {"state": "done", "result": "failure", "log": "/l"}}},
    ])  # fmt: skip
    lines: list[str] = []
    record = wait_for(lambda: next(states), None, lines.append, sleep=lambda s: None)
    assert record["state"] == "failure" and exit_code_for(record) == 1
    assert lines == [
        "job J: queued",
        "job J: running",
        "  u: running",
        "job J: failure",
        "  u: failure",
    ]


def test_wait_for_retries_transient_errors_and_stops_on_refusal() -> None:
    calls = iter([TempFail("lost"), {"job": "J", "state": "success", "builders": {}}])

    def fetch() -> dict:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert wait_for(fetch, None, None, sleep=lambda s: None)["state"] == "success"

    for code in (EX_USAGE, 66, EX_NOPERM):  # refused, no such job, permission: final

        def refuse(code: int = code) -> dict:
            raise TrysshError("no", code)

        with pytest.raises(TrysshError):
            wait_for(refuse, None, None, sleep=lambda s: None)


def test_wait_for_timeout() -> None:
    with pytest.raises(TempFail, match="--wait-timeout"):
        wait_for(lambda: {"state": "queued"}, 0.01, None, interval=0.02, sleep=lambda s: None)


def test_exit_codes_and_status_lines() -> None:
    assert exit_code_for({"state": "success"}) == 0
    assert exit_code_for({"state": "rejected"}) == EX_NOPERM
    assert exit_code_for({"state": "interrupted"}) == EX_TEMPFAIL
    assert exit_code_for({"state": "error"}) == EX_TEMPFAIL
    lines = status_lines(
        {"job": "J", "state": "rejected", "reason": "builder x not allowed", "builders": {}}
    )
    assert lines == ["job J: rejected (builder x not allowed)"]


def test_a_job_that_cannot_be_built_is_reported_without_waiting_for_a_silent_host(
    repo: Path, tmp_path: Path
) -> None:
    """try connects while it builds the job; when the job cannot be built (here: an empty
    diff), that error comes at once, not after the handshake with a host that never answers
    (its timeout here is 60 s; the run's own is 20 s)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts, never sends a banner
    try:
        git(repo, "checkout", "--", "a.txt")
        result = subprocess.run(
            [venv_bin("tryssh"), "try", "--host", "127.0.0.1", "--port",
             str(silent.getsockname()[1]), "--timeout", "60", "--known-hosts",
             str(tmp_path / "kh"), "-q"],
            cwd=repo, env={**os.environ, **GIT_ENV, "HOME": str(tmp_path)},
            capture_output=True, timeout=20,
        )  # fmt: skip
        ok(result, 65)
        assert "empty" in result.stderr.decode()
    finally:
        silent.close()
