"""``tryserver``, the forced command, run as a real process: delivery, refusals, audit."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, run, tryserver, unprivileged, venv_bin, wait_until
from hostile import HOSTILE_COMMANDS
from sshd import SSH_KEYGEN, make_user_key

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job, parse_job
from tryssh.core.netstring import encode as ns
from tryssh.core.request import MAX_COMMAND
from tryssh.errors import exit_code_for_oserror
from tryssh.server.tryserver import clip

SSH_ENV = {"SSH_CONNECTION": "192.0.2.7 52144 127.0.0.1 22", "SSH_CLIENT": "192.0.2.7 52144 22"}


def netstrings(*fields: str | bytes) -> bytes:
    return b"".join(ns(f.encode() if isinstance(f, str) else f) for f in fields)


JOB = Job(
    "1795462678.15-42", "main", "abc123", 1, b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n",
    ["b1"], "repo", "proj", "mallory", "try this", {"p": 1},
)  # fmt: skip
JOB_BYTES = encode_job(JOB)
V2_JOB = netstrings("2", "id", "main", "abc", "1", "diff\n", "repo", "proj", "b1")


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return f"rc={result.returncode} stdout={result.stdout!r} stderr={result.stderr!r}"


def listing(jobdir: Jobdir) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(getattr(jobdir, sub))) for sub in ("tmp", "new", "cur")}


EMPTY = {"tmp": [], "new": [], "cur": []}

_AUDIT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def audit_lines(path: str | Path) -> list[dict[str, str]]:
    """The audit log as dicts (JSON-quoted values unquoted)."""
    records = []
    for line in Path(path).read_text().splitlines():
        fields = {}
        for key, value in _AUDIT_FIELD.findall(line):
            fields[key] = json.loads(value) if value.startswith('"') else value
        records.append(fields)
    return records


def assert_refused(result, code: int, jobdir: Jobdir, *, message: str = "") -> None:
    assert result.returncode == code, out(result)
    assert result.stdout == b"", out(result)
    err = result.stderr.decode()
    assert err.startswith("tryserver: ") and err.endswith("\n"), out(result)
    assert err.count("\n") == 1, f"not one line: {err!r}"
    assert "Traceback" not in err
    assert message in err, out(result)
    assert listing(jobdir) == EMPTY


# -- delivery ---------------------------------------------------------------------------------


def test_delivers_and_prints_the_name(jobdir):
    result = tryserver(jobdir, JOB_BYTES)
    assert result.returncode == 0, out(result)
    name = result.stdout.decode().strip()
    assert result.stdout == f"{name}\n".encode()
    assert result.stderr == b""
    assert listing(jobdir) == {"tmp": [], "new": [name], "cur": []}
    got = parse_job(Path(jobdir.new, name).read_bytes())
    assert got.who == "alice"
    JOB.who = "alice"
    try:
        assert got == JOB
    finally:
        JOB.who = "mallory"


def test_json_receipt(jobdir):
    result = tryserver(jobdir, JOB_BYTES, "--json")
    assert result.returncode == 0, out(result)
    receipt = json.loads(result.stdout)
    data = Path(jobdir.new, receipt["job"]).read_bytes()
    assert receipt == {"job": receipt["job"], "jobid": JOB.jobid, "size": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    # Buildbot's id for the job is in the audit line too.
    [line] = audit_lines(os.path.join(jobdir.path, "audit.log"))
    assert line["jobid"] == JOB.jobid and line["job"] == receipt["job"]


@pytest.mark.parametrize("patch_size", [0, 200_000, 262_000, 263_000, 3_000_000])
def test_receipt_sha256_small_and_big(jobdir, patch_size):
    """Small jobs are hashed by the built-in SHA-256, big ones by OpenSSL's: same digest."""
    data = netstrings("2", "id", "b", "r", "1", b"+" * patch_size, "repo", "proj")
    result = tryserver(jobdir, data, "--json")
    assert result.returncode == 0, out(result)
    receipt = json.loads(result.stdout)
    delivered = Path(jobdir.new, receipt["job"]).read_bytes()
    assert receipt["size"] == len(delivered)
    assert receipt["sha256"] == hashlib.sha256(delivered).hexdigest()
    [line] = audit_lines(os.path.join(jobdir.path, "audit.log"))
    assert line["sha256"] == receipt["sha256"]


def test_without_user_the_job_is_passed_through(jobdir):
    result = tryserver(jobdir, JOB_BYTES, user=None)
    assert result.returncode == 0, out(result)
    assert Path(jobdir.new, result.stdout.decode().strip()).read_bytes() == JOB_BYTES


def test_v2_job_is_upgraded_to_carry_the_user(jobdir):
    result = tryserver(jobdir, V2_JOB)
    assert result.returncode == 0, out(result)
    data = Path(jobdir.new, result.stdout.decode().strip()).read_bytes()
    assert data == netstrings("3", "id", "main", "abc", "1", "diff\n", "repo", "proj", "alice",
                              "b1")  # fmt: skip


def test_tryssh_tryserver_is_the_same_command(jobdir):
    result = subprocess.run(
        [venv_bin("tryssh"), "tryserver", "--jobdir", jobdir.path, "--user", "alice"],
        input=JOB_BYTES, capture_output=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, out(result)
    assert parse_job(Path(jobdir.new, result.stdout.decode().strip()).read_bytes()).who == "alice"


def test_group_readable_with_a_restrictive_umask(jobdir):
    result = tryserver(jobdir, JOB_BYTES, umask=0o077)
    assert result.returncode == 0, out(result)
    mode = os.stat(os.path.join(jobdir.new, result.stdout.decode().strip())).st_mode
    assert stat.S_IMODE(mode) == 0o640


def test_help_and_usage_errors(jobdir):
    result = run([venv_bin("tryserver"), "--help"], env=clean_env())
    assert result.returncode == 0
    assert b"usage: tryserver --jobdir DIR" in result.stdout
    assert b"65 bad job" in result.stdout
    for argv, message in [
        ([], "--jobdir is required"),
        (["--jobdir"], "--jobdir needs a value"),
        (["--jobdir", jobdir.path, "--max-size", "0"], "--max-size must be a positive number"),
        (["--jobdir", jobdir.path, "--max-size", "1k"], "--max-size must be a positive number"),
        (["--jobdir", jobdir.path, "--bogus"], "unknown option '--bogus'"),
    ]:
        result = run([venv_bin("tryserver"), *argv], input=JOB_BYTES, env=clean_env())
        assert_refused(result, 64, jobdir, message=message)


# -- bad jobs: exit 65, one line, nothing delivered ------------------------------------------

v5_obj = json.loads(JOB_BYTES.split(b":", 2)[2][:-1])


def v5(obj: object, version: str = "5") -> bytes:
    return netstrings(version, json.dumps(obj))


BAD_JOBS = [
    pytest.param(b"", "could not find any complete netstrings", id="empty"),
    pytest.param(b"garbage\n", "expected a length", id="garbage"),
    pytest.param(b"01:5," + JOB_BYTES[4:], "leading zero", id="leading-zero"),
    pytest.param(JOB_BYTES + b"\n", "expected a length", id="stray-newline"),
    pytest.param(b"\n" + JOB_BYTES, "expected a length", id="leading-newline"),
    pytest.param(JOB_BYTES[:-1] + b";", "missing comma", id="missing-comma"),
    pytest.param(JOB_BYTES[:-1], "input ends", id="truncated-comma"),
    pytest.param(JOB_BYTES[: len(JOB_BYTES) // 2], "input ends", id="truncated-half"),
    pytest.param(V2_JOB + b"8:builderc", "input ends", id="truncated-last-builder"),
    pytest.param(V2_JOB + b"12", "input ends", id="truncated-length"),
    pytest.param(netstrings("7", "{}"), "unknown job version 7", id="version-7"),
    pytest.param(netstrings("05") + JOB_BYTES[4:], "unknown job version '05'", id="version-05"),
    pytest.param(netstrings("five"), "unknown job version", id="version-five"),
    pytest.param(
        v5({k: v for k, v in v5_obj.items() if k != "patch_body"}),
        "no 'patch_body' key",
        id="v5-missing-patch",
    ),
    pytest.param(
        v5({k: v for k, v in v5_obj.items() if k != "baserev"}),
        "no 'baserev' key",
        id="v5-missing-baserev",
    ),
    pytest.param(netstrings("5", "[1, 2]"), "must be an object", id="json-list"),
    pytest.param(netstrings("5", "{"), "unable to parse JSON", id="json-broken"),
    pytest.param(
        netstrings("5", '{"properties": ' + "[" * 50_000 + "]" * 50_000 + "}"),
        "unable to parse JSON",
        id="json-nested-too-deeply",
    ),
    pytest.param(
        v5({**v5_obj, "patch_body_base64": "abcde"}, "6"), "not valid base64", id="bad-base64"
    ),
    pytest.param(
        netstrings("2", b"\xffid", "b", "r", "1", "p", "", ""),
        "not valid UTF-8",
        id="non-utf8-jobid",
    ),
    pytest.param(
        netstrings("4", "id", "b", "r", "1", "p", "repo", "proj", "w", b"\xc0"),
        "comment field is not valid UTF-8",
        id="non-utf8-comment",
    ),
    pytest.param(
        netstrings("2", "id", "b", "r", "1", b"\x89PNG\r\n\x1a\n", "", ""),
        "patch is not valid UTF-8",
        id="non-utf8-v2-patch",
    ),
    pytest.param(
        netstrings("5", b'{"jobid": "\xff"}'), "JSON is not valid UTF-8", id="non-utf8-json"
    ),
    pytest.param(
        netstrings("1", "id", "b", "r", "x", "p"),
        "patch_level 'x' is not a number",
        id="bad-patch-level",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_JOBS)
def test_bad_jobs_are_refused(jobdir, data, message):
    result = tryserver(jobdir, data)
    assert_refused(result, 65, jobdir, message=message)
    [line] = audit_lines(os.path.join(jobdir.path, "audit.log"))
    assert line["outcome"] == "refused"
    assert line["exit"] == "65"
    assert message in line["reason"]


def test_oversized_job_is_refused(jobdir):
    result = tryserver(jobdir, JOB_BYTES, "--max-size", str(len(JOB_BYTES) - 1))
    assert_refused(result, 65, jobdir, message=f"larger than the limit of {len(JOB_BYTES) - 1}")
    result = tryserver(jobdir, JOB_BYTES, "--max-size", str(len(JOB_BYTES)))
    assert result.returncode == 0, out(result)


def test_oversized_v2_job_is_refused_while_streaming(jobdir):
    big = netstrings("2", "id", "b", "r", "1", b"+x\n" * 2_000_000, "", "")
    result = tryserver(jobdir, big, "--max-size", "1000000")
    assert_refused(result, 65, jobdir, message="larger than the limit of 1000000 bytes")


def test_default_size_limit_is_64_mib(jobdir):
    patch = b"+" * (64 * 1024 * 1024)
    result = tryserver(jobdir, netstrings("2", "id", "b", "r", "1", patch, "", ""))
    assert_refused(result, 65, jobdir, message="larger than the limit of 67108864 bytes")


# -- hostile SSH commands: exit 64, nothing delivered ------------------------------------------

HOSTILE = HOSTILE_COMMANDS


@pytest.mark.parametrize("command", HOSTILE, ids=lambda t: repr(t)[:30])
def test_hostile_commands_are_refused(jobdir, command):
    result = tryserver(jobdir, JOB_BYTES, env={**SSH_ENV, "SSH_ORIGINAL_COMMAND": command})
    assert_refused(result, 64, jobdir)
    assert re.search(r"command refused|unknown option", result.stderr.decode()), out(result)
    [line] = audit_lines(os.path.join(jobdir.path, "audit.log"))
    assert line["cmd"] == clip(command)  # the whole command, or its first MAX_COMMAND chars
    assert line["cmd"].startswith(command[:MAX_COMMAND])
    assert line["outcome"] == "refused"
    assert line["user"] == "alice"
    assert line["from"] == "192.0.2.7:52144"


def test_shell_request_without_command_is_refused(jobdir):
    """`ssh host` with no command: sshd runs the forced command without SSH_ORIGINAL_COMMAND."""
    result = tryserver(jobdir, b"", env=SSH_ENV)
    assert_refused(result, 64, jobdir, message="interactive sessions are not allowed")


@pytest.mark.parametrize(
    "command",
    [
        "tryserver",
        "buildbot tryserver --jobdir ~/jobdir",
        "/usr/bin/buildbot tryserver --jobdir /elsewhere",
        "tryssh tryserver",
        "tryserver --jobdir ../../etc",
        "tryserver --jobdir=/tmp",
    ],
)
def test_accepted_commands_deliver_into_the_pinned_jobdir(jobdir, tmp_path, command):
    other = Jobdir(str(tmp_path / "elsewhere")).create()
    result = tryserver(jobdir, JOB_BYTES, env={**SSH_ENV, "SSH_ORIGINAL_COMMAND": command})
    assert result.returncode == 0, out(result)
    name = result.stdout.decode().strip()
    assert listing(jobdir) == {"tmp": [], "new": [name], "cur": []}
    assert listing(other) == EMPTY
    assert audit_lines(os.path.join(jobdir.path, "audit.log"))[0]["cmd"] == command


def test_client_cannot_choose_the_user(jobdir):
    env = {**SSH_ENV, "SSH_ORIGINAL_COMMAND": "tryserver --user=root"}
    result = tryserver(jobdir, JOB_BYTES, env=env)  # fmt: skip
    assert_refused(result, 64, jobdir)
    # Nor through the environment sshd passes on (SSH_ORIGINAL_COMMAND is all it reads).
    result = tryserver(jobdir, JOB_BYTES, env={**SSH_ENV, "SSH_ORIGINAL_COMMAND": "tryserver",
                                           "USER": "root", "LOGNAME": "root"})  # fmt: skip
    assert result.returncode == 0, out(result)
    assert parse_job(Path(jobdir.new, result.stdout.decode().strip()).read_bytes()).who == "alice"


# -- the jobdir cannot take the job -----------------------------------------------------------


def test_missing_jobdir(tmp_path):
    missing = Jobdir(str(tmp_path / "missing"))
    result = tryserver(missing.path, JOB_BYTES)
    assert result.returncode == 73, out(result)
    assert result.stderr.decode().count("\n") == 1
    assert b"is not set up" in result.stderr
    assert not os.path.exists(missing.path)


def test_new_is_a_regular_file(jobdir):
    os.rmdir(jobdir.new)
    Path(jobdir.new).write_text("")
    result = tryserver(jobdir, JOB_BYTES)
    assert result.returncode == 73, out(result)
    assert b"new/ is missing" in result.stderr
    assert os.listdir(jobdir.tmp) == []


@pytest.mark.parametrize("sub", ["tmp", "new"])
def test_unwritable_jobdir_is_permission_denied(jobdir, tmp_path, sub):
    os.chmod(getattr(jobdir, sub), 0o555)  # noqa: S103 - read-only on purpose
    try:
        audit = tmp_path / "audit.log"
        argv = [venv_bin("tryserver"), "--jobdir", jobdir.path, "--user", "alice",
                "--audit-log", str(audit)]  # fmt: skip
        result = subprocess.run(unprivileged(argv), input=JOB_BYTES, capture_output=True,
                                env=clean_env(), timeout=60, check=False)  # fmt: skip
    finally:
        os.chmod(getattr(jobdir, sub), 0o755)  # noqa: S103 - restored
    assert_refused(result, 77, jobdir, message="Permission denied")
    [line] = audit_lines(audit)
    assert line["outcome"] == "refused" and line["exit"] == "77"


def test_unwritable_audit_log_is_refused_before_reading(jobdir, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir(mode=0o555)
    argv = [venv_bin("tryserver"), "--jobdir", jobdir.path, "--audit-log", str(logdir / "a.log")]
    result = subprocess.run(unprivileged(argv), input=JOB_BYTES, capture_output=True,
                            env=clean_env(), timeout=60, check=False)  # fmt: skip
    assert_refused(result, 77, jobdir, message="cannot open audit log")


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errno.ENOSPC, 75),
        (errno.EDQUOT, 75),
        (errno.EIO, 75),
        (errno.EAGAIN, 75),
        (errno.EINTR, 75),
        (errno.EACCES, 77),
        (errno.EPERM, 77),
        (errno.EROFS, 77),
        (errno.ENOENT, 73),
        (errno.EEXIST, 73),
        (errno.ENOTDIR, 73),
        (errno.EFBIG, 73),
    ],
)
def test_exit_code_for_oserror(err, code):
    assert exit_code_for_oserror(OSError(err, os.strerror(err))) == code


ENOSPC_SCRIPT = """
import json, os, subprocess, sys
mnt, tryserver, audit, job = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], check=True)
for sub in ("tmp", "new", "cur"):
    os.makedirs(os.path.join(mnt, "jobdir", sub))
with open(job, "rb") as stdin:
    r = subprocess.run([tryserver, "--jobdir", os.path.join(mnt, "jobdir"), "--audit-log", audit],
                       stdin=stdin, capture_output=True)
print(json.dumps({"rc": r.returncode, "stderr": r.stderr.decode(),
                  "left": {s: os.listdir(os.path.join(mnt, "jobdir", s)) for s in ("tmp", "new")}}))
"""


def test_disk_full_is_a_temporary_failure(tmp_path):
    """A real ENOSPC: a 256 KiB tmpfs in a private mount namespace (needs root)."""
    unshare = shutil.which("unshare")
    probe = run([unshare, "-m", "true"]) if unshare and os.geteuid() == 0 else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs root and unshare -m for a private tmpfs (mapping tested above)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    job = tmp_path / "job"
    job.write_bytes(netstrings("2", "id", "b", "r", "1", b"+x\n" * 200_000, "", ""))
    result = run([unshare, "-m", sys.executable, "-c", ENOSPC_SCRIPT, str(mnt),
                  venv_bin("tryserver"), str(tmp_path / "audit.log"), str(job)])  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rc"] == 75, report
    assert "No space left on device" in report["stderr"]
    assert report["stderr"].count("\n") == 1
    assert report["left"] == {"tmp": [], "new": []}
    assert audit_lines(tmp_path / "audit.log")[0]["outcome"] == "failed"


# -- the audit log ----------------------------------------------------------------------------


def test_audit_line_records_the_request(jobdir, tmp_path):
    key = make_user_key(tmp_path, "k")
    auth_info = tmp_path / "auth-info"
    auth_info.write_text(f"publickey {' '.join(key.public_line.split()[:2])}\n")
    fingerprint = run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", key.private_path + ".pub"])
    expected_fp = fingerprint.stdout.split()[1].decode()
    env = {**SSH_ENV, "SSH_ORIGINAL_COMMAND": "buildbot tryserver --jobdir ~/jobdir",
           "SSH_USER_AUTH": str(auth_info)}  # fmt: skip
    result = tryserver(jobdir, JOB_BYTES, env=env)
    assert result.returncode == 0, out(result)
    name = result.stdout.decode().strip()
    data = Path(jobdir.new, name).read_bytes()
    [line] = audit_lines(os.path.join(jobdir.path, "audit.log"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line["time"])
    assert line["user"] == "alice"
    assert line["from"] == "192.0.2.7:52144"
    assert line["key"] == expected_fp
    assert line["cmd"] == "buildbot tryserver --jobdir ~/jobdir"
    assert line["verb"] == "deliver"
    assert line["job"] == name
    assert line["size"] == str(len(data))
    assert line["sha256"] == hashlib.sha256(data).hexdigest()
    assert line["outcome"] == "ok"
    assert line["exit"] == "0"


def test_audit_log_one_line_per_request_and_newlines_neutralised(jobdir):
    commands = ["tryserver", "tryserver\nfake=line outcome=ok", "tryserver\r\nx", "bash"]
    for command in commands:
        tryserver(jobdir, JOB_BYTES, env={**SSH_ENV, "SSH_ORIGINAL_COMMAND": command})
    tryserver(jobdir, b"garbage")  # outside sshd, refused job
    text = Path(jobdir.path, "audit.log").read_text()
    assert text.count("\n") == 5
    lines = audit_lines(os.path.join(jobdir.path, "audit.log"))
    assert [rec["cmd"] for rec in lines[:4]] == commands
    assert [rec["outcome"] for rec in lines] == ["ok", "refused", "refused", "refused", "refused"]
    assert "fake" not in lines[1]


def test_audit_log_path_option(jobdir, tmp_path):
    audit = tmp_path / "elsewhere.log"
    result = tryserver(jobdir, JOB_BYTES, "--audit-log", str(audit))
    assert result.returncode == 0, out(result)
    assert not os.path.exists(os.path.join(jobdir.path, "audit.log"))
    assert audit_lines(audit)[0]["outcome"] == "ok"


def test_audit_log_is_not_followed_through_a_symlink(jobdir, tmp_path):
    target = tmp_path / "target"
    os.symlink(target, os.path.join(jobdir.path, "audit.log"))
    result = tryserver(jobdir, JOB_BYTES)
    assert result.returncode != 0
    assert not target.exists()
    assert listing(jobdir) == EMPTY


# -- concurrency and interrupted writers -------------------------------------------------------


def test_100_simultaneous_identical_submissions(jobdir):
    procs = [
        subprocess.Popen(
            [venv_bin("tryserver"), "--jobdir", jobdir.path, "--user", "alice"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        for _ in range(100)
    ]
    # All are started before any gets its job: they deliver at the same moment.
    results = [proc.communicate(JOB_BYTES, timeout=120) for proc in procs]
    assert [p.returncode for p in procs] == [0] * 100, results[:3]
    names = {stdout.decode().strip() for stdout, _ in results}
    assert len(names) == 100
    assert listing(jobdir) == {"tmp": [], "new": sorted(names), "cur": []}
    contents = {Path(jobdir.new, n).read_bytes() for n in names}
    assert len(contents) == 1
    assert len(audit_lines(os.path.join(jobdir.path, "audit.log"))) == 100


def half_written(jobdir: Jobdir) -> tuple[subprocess.Popen[bytes], bytes]:
    """A tryserver that has received half of a 6 MB job and is writing it to tmp/."""
    job = netstrings("2", "id", "b", "r", "1", b"+line\n" * 1_000_000, "repo", "proj", "b1")
    proc = subprocess.Popen(
        [venv_bin("tryserver"), "--jobdir", jobdir.path, "--user", "alice"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(job[: len(job) // 2])
    proc.stdin.flush()
    wait_until(lambda: any(e.stat().st_size > 1_000_000 for e in os.scandir(jobdir.tmp)),
               timeout=30, message="tryserver did not start writing to tmp/")  # fmt: skip
    return proc, job


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_writer_killed_mid_stream_delivers_nothing(jobdir, sig):
    proc, _ = half_written(jobdir)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == -sig
    assert os.listdir(jobdir.new) == []
    # What a killed writer leaves in tmp/ is what the 36-hour cleanup is for.
    assert len(os.listdir(jobdir.tmp)) == 1
    assert len(jobdir.clean_tmp(max_age=-1)) == 1
    assert listing(jobdir) == EMPTY


def test_client_gone_mid_stream_delivers_nothing_and_cleans_tmp(jobdir):
    proc, _ = half_written(jobdir)
    assert proc.stdin is not None
    proc.stdin.close()  # EOF in the middle of the patch
    proc.stdin = None
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 65, stderr
    assert stdout == b""
    assert b"input ends inside netstring" in stderr
    assert listing(jobdir) == EMPTY


# -- memory -----------------------------------------------------------------------------------


# A small parent: a child's ru_maxrss starts at its parent's RSS (vfork/fork before exec), so
# pytest itself (50+ MB) must not be the one that spawns the measured tryserver.
RSS_WRAPPER = """
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def peak_rss_kib(jobdir: Jobdir, job_path: Path, *args: str) -> int:
    """Peak RSS (KiB) of one tryserver delivering the job in *job_path* (from wait4)."""
    report = job_path.with_suffix(".rss")
    argv = [venv_bin("tryserver"), "--jobdir", jobdir.path, "--user", "alice", *args]
    with open(job_path, "rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-S", "-c", RSS_WRAPPER, str(report), *argv],
            stdin=stdin,
            capture_output=True,
            env=clean_env(),
            timeout=120,
            check=False,
        )
    rss, code = report.read_text().split()
    assert code == "0", out(result)
    return int(rss)


def test_memory_stays_flat_for_a_v2_job(jobdir, tmp_path):
    # The baseline job is big enough (1 MB) to take the same code path: OpenSSL's hash.
    small = tmp_path / "small"
    small.write_bytes(netstrings("2", "id", "main", "abc", "1", b"+line\n" * 200_000, "r", "p"))
    big = tmp_path / "big"
    patch = b"+" + b"x" * 98 + b"\n"
    with open(big, "wb") as f:
        f.write(b"1:2,2:id,4:main,3:abc,1:1,%d:" % (len(patch) * 200_000))
        for _ in range(200):
            f.write(patch * 1000)
        f.write(b",4:repo,4:proj,2:b1,")
    size = big.stat().st_size
    assert size > 20_000_000
    base = peak_rss_kib(jobdir, small)
    peak = peak_rss_kib(jobdir, big)
    # Streaming: a few 1 MiB buffers at most, not the 20 MB job.
    assert (peak - base) * 1024 < 6_000_000, (base, peak)
    [name] = [
        n for n in os.listdir(jobdir.new) if os.path.getsize(os.path.join(jobdir.new, n)) > size
    ]
    assert os.path.getsize(os.path.join(jobdir.new, name)) == size + len("5:alice,")


def test_a_flood_of_tiny_netstrings_is_refused_early(jobdir):
    """Millions of tiny netstrings (10 MB) must neither fill memory nor take long."""
    flood = netstrings("2", "id", "b", "r", "1", "p", "", "") + b"2:ab," * 2_000_000
    assert_refused(tryserver(jobdir, flood), 65, jobdir, message="more than 10000 builders")
    after_json = JOB_BYTES + b"0:," * 3_000_000  # after the JSON this time
    assert_refused(tryserver(jobdir, after_json), 65, jobdir,
                   message="more than 1000 netstrings after the JSON")  # fmt: skip


def test_start_up_path_stays_lean():
    """paramiko, click, dataclasses, typing, even hashlib (OpenSSL) stay out of start-up."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from tryssh.server import tryserver\nfrom tryssh.core import jobfile\n"
        "new = set(sys.modules) - before\n"
        "heavy = {'paramiko', 'click', 'dataclasses', 'typing', 'tomllib', 'pathlib',\n"
        "         'hashlib', '_hashlib', 'base64', 'importlib.metadata', 'threading'}\n"
        "print(sorted(new & heavy))\n"
    )
    result = run([sys.executable, "-c", code], env=clean_env())
    assert result.stdout.strip() == b"[]", out(result)


def test_import_time_shows_no_heavy_package():
    """The whole process, site included, as ``-X importtime`` reports it: no heavy package."""
    result = run(
        [venv_bin("python"), "-X", "importtime", "-c", "import tryssh.server.tryserver"],
        env=clean_env(),
    )
    assert result.returncode == 0, out(result)
    loaded = {
        line.rpartition("|")[2].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "tryssh.server.tryserver" in loaded, out(result)  # the report was read right
    heavy = {
        "paramiko", "click", "cryptography", "nacl", "bcrypt", "invoke", "dataclasses", "typing",
        "tomllib", "hashlib", "_hashlib",
    }  # fmt: skip
    assert not {name.partition(".")[0] for name in loaded} & heavy, sorted(loaded)
