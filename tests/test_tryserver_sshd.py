"""tryserver behind a real OpenSSH sshd, with the real ssh, scp, sftp and buildbot clients."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from buildbot.schedulers.trysched import Try_Jobdir
from helpers import run, venv_bin
from sshd import SSH_KEYGEN, Sshd, UserKey, client_options, sftp_argv, ssh_argv
from test_tryserver import JOB, JOB_BYTES, V2_JOB, audit_lines, listing

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import parse_job

EMPTY = {"tmp": [], "new": [], "cur": []}


@dataclass
class Setup:
    sshd: Sshd
    key: UserKey
    known_hosts: Path
    jobdir: Jobdir

    def ssh(self, *words: str, data: bytes | None = b"", opts: tuple[str, ...] = ()):
        argv = ssh_argv(self.sshd, self.key.private_path, self.known_hosts, *words,
                        extra_opts=opts)  # fmt: skip
        return run(argv, input=data, timeout=60)

    def audit(self) -> list[dict[str, str]]:
        path = os.path.join(self.jobdir.path, "audit.log")
        return audit_lines(path) if os.path.exists(path) else []

    def fingerprint(self) -> str:
        result = run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", self.key.private_path + ".pub"])
        return result.stdout.split()[1].decode()


@pytest.fixture
def setup(sshd_factory, user_key, known_hosts, tmp_path) -> Setup:
    jobdir = Jobdir(str(tmp_path / "jobdir")).create()
    forced = f"{venv_bin('tryserver')} --jobdir {jobdir.path} --user alice"
    server = sshd_factory([f'restrict,command="{forced}" {user_key.public_line}'])
    return Setup(server, user_key, known_hosts(server), jobdir)


def out(result: subprocess.CompletedProcess[bytes], setup: Setup) -> str:
    return (f"rc={result.returncode} stdout={result.stdout!r} stderr={result.stderr!r}\n"
            f"--- sshd log ---\n{setup.sshd.log_text()[-3000:]}")  # fmt: skip


# -- (a) delivery with plain ssh ----------------------------------------------------------------


def test_plain_ssh_delivers_a_job_as_alice(setup):
    assert JOB.who == "mallory"
    result = setup.ssh("buildbot", "tryserver", "--jobdir", "~/x", data=JOB_BYTES)
    assert result.returncode == 0, out(result, setup)
    name = result.stdout.decode().strip()
    assert result.stdout == f"{name}\n".encode()
    assert listing(setup.jobdir) == {"tmp": [], "new": [name], "cur": []}
    data = Path(setup.jobdir.new, name).read_bytes()
    job = parse_job(data)
    assert job.who == "alice"
    assert job.patch_body == JOB.patch_body
    assert not os.path.exists(os.path.expanduser("~/x/new"))  # the client's jobdir: ignored

    [line] = setup.audit()
    peer_ip, peer_port = result_peer(setup)
    assert line["user"] == "alice"
    assert line["from"] == f"{peer_ip}:{peer_port}"
    assert line["key"] == setup.fingerprint()  # ExposeAuthInfo yes in the fixture
    assert line["cmd"] == "buildbot tryserver --jobdir ~/x"
    assert line["job"] == name
    assert line["size"] == str(len(data))
    assert line["sha256"] == hashlib.sha256(data).hexdigest()
    assert line["outcome"] == "ok"


def result_peer(setup: Setup) -> tuple[str, str]:
    """The client address and port sshd logged for the last accepted connection."""
    log = setup.sshd.log_text()
    accepted = [ln for ln in log.splitlines() if "Accepted publickey" in ln][-1]
    words = accepted.split()
    return words[words.index("from") + 1], words[words.index("port") + 1]


def test_plain_tryserver_command_and_a_v2_job(setup):
    result = setup.ssh("tryserver", data=V2_JOB)
    assert result.returncode == 0, out(result, setup)
    job = parse_job(Path(setup.jobdir.new, result.stdout.decode().strip()).read_bytes())
    assert job.who == "alice"
    assert job.version == 3  # upgraded to carry who


def test_bad_job_over_ssh_is_refused_with_65(setup):
    result = setup.ssh("tryserver", data=JOB_BYTES[:-10])
    assert result.returncode == 65, out(result, setup)
    assert result.stderr.decode().startswith("tryserver: ")
    assert listing(setup.jobdir) == EMPTY
    assert setup.audit()[0]["outcome"] == "refused"


# -- (a) everything else is refused ----------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    [
        ("bash",),
        ("bash", "-c", "id"),
        ("tryserver; id",),
        ("tryserver", "|", "cat"),
        ("tryserver", "--user", "bob"),
        ("sh", "-c", "'tryserver'"),
        ("scp", "-t", "/tmp"),
    ],
    ids=lambda w: " ".join(w),
)
def test_commands_other_than_tryserver_are_refused(setup, words):
    result = setup.ssh(*words, data=JOB_BYTES)
    assert result.returncode == 64, out(result, setup)
    assert result.stdout == b""
    assert listing(setup.jobdir) == EMPTY
    [line] = setup.audit()
    assert line["cmd"] == " ".join(words)
    assert line["outcome"] == "refused"
    assert line["key"] == setup.fingerprint()


def test_ssh_without_a_command_is_refused(setup):
    result = setup.ssh(data=JOB_BYTES)
    assert result.returncode == 64, out(result, setup)
    assert b"interactive sessions are not allowed" in result.stderr
    assert listing(setup.jobdir) == EMPTY
    [line] = setup.audit()
    assert line["outcome"] == "refused"
    assert line["cmd"] == ""  # the client's (empty) command, not the forced command's options


def test_ssh_with_a_tty_request_is_refused(setup):
    result = setup.ssh("bash", opts=("-tt",), data=b"id\n")
    assert result.returncode != 0, out(result, setup)
    assert listing(setup.jobdir) == EMPTY


@pytest.mark.parametrize("legacy", [True, False], ids=["scp-protocol", "scp-over-sftp"])
def test_scp_is_refused(setup, tmp_path, legacy):
    src = tmp_path / "job"
    src.write_bytes(JOB_BYTES)
    target = tmp_path / "scp-target"
    scp = shutil.which("scp") or "/usr/bin/scp"
    opts = client_options(setup.sshd, setup.key.private_path, setup.known_hosts)
    argv = [scp, *(["-O"] if legacy else []), *opts, "-P", str(setup.sshd.port), str(src),
            f"{setup.sshd.host}:{target}"]  # fmt: skip
    result = run(argv, timeout=60)
    assert result.returncode != 0, out(result, setup)
    assert not target.exists()
    assert listing(setup.jobdir) == EMPTY
    [line] = setup.audit()
    assert line["outcome"] == "refused"
    assert line["cmd"].startswith("scp -t" if legacy else "internal-sftp")


def test_sftp_is_refused(setup, tmp_path):
    target = tmp_path / "sftp-target"
    batch = f'put "{__file__}" "{target}"\nls /\n'.encode()
    result = run(sftp_argv(setup.sshd, setup.key.private_path, setup.known_hosts),
                 input=batch, timeout=60)  # fmt: skip
    assert result.returncode != 0, out(result, setup)
    assert not target.exists()
    assert listing(setup.jobdir) == EMPTY
    assert setup.audit()[0]["cmd"] == "internal-sftp"


def test_port_forwarding_is_refused(setup):
    """restrict: no -L forwarding even though the command is allowed."""
    result = setup.ssh("tryserver", data=JOB_BYTES,
                       opts=("-o", "ExitOnForwardFailure=yes", "-L", "0:127.0.0.1:22"))  # fmt: skip
    assert result.returncode == 255, out(result, setup)
    assert listing(setup.jobdir) == EMPTY


# -- (c) the real `buildbot try --connect=ssh` ----------------------------------------------------


def test_buildbot_try_delivers_a_job(setup, tmp_path):
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    diff = work / "change.diff"
    diff.write_bytes(b"--- a/hello.c\n+++ b/hello.c\n@@ -1 +1 @@\n-old\n+new \xc3\xa9\n")
    ssh_command = shlex.join(
        ["ssh", *client_options(setup.sshd, setup.key.private_path, setup.known_hosts)]
    )
    argv = [
        venv_bin("buildbot"), "try", "--connect=ssh",
        "--host", setup.sshd.host, "--port", str(setup.sshd.port),
        "--username", setup.sshd.user, "--jobdir", "/srv/whatever/jobdir",
        "--ssh", ssh_command, "--builder", "b1", "--diff", str(diff),
        "--baserev", "abc", "--patchlevel", "1", "--who", "mallory",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["HOME"] = str(home)
    try:
        # buildbot try hangs forever after an error: the timeout is the failure.
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, timeout=90,
                                check=False)  # fmt: skip
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"buildbot try hung: {err.stdout!r} {err.stderr!r}\n{setup.sshd.log_text()}")
    assert result.returncode == 0, out(result, setup)
    assert b"job has been delivered" in result.stdout, out(result, setup)
    [name] = os.listdir(setup.jobdir.new)
    assert os.listdir(setup.jobdir.tmp) == []

    scheduler = Try_Jobdir("try", ["b1"], "jd")
    with open(os.path.join(setup.jobdir.new, name), encoding="utf-8") as f:
        parsed = scheduler.parseJob(f)
    assert parsed["who"] == "alice"
    assert parsed["builderNames"] == ["b1"]
    assert parsed["baserev"] == "abc"
    assert parsed["patch_level"] == 1
    assert parsed["patch_body"] == diff.read_bytes()
    [line] = setup.audit()
    assert line["cmd"] == "buildbot tryserver --jobdir /srv/whatever/jobdir"
    assert line["job"] == name
