"""The README's OpenSSH guide, followed from nothing, as root, with real parts.

Accounts made with useradd, tryssh installed from its wheel into a venv of the system
python3 (steps 1-3), the jobdir, the config with the contrib build script, keys added as
the try account with runuser, the contrib sshd block in a second sshd on a loopback
port, the consumer as its own account. A developer with an ssh Host alias and a user
config submits from a git clone: a policy refusal at submit time, then a passing build.
The admin adds a builder and sends SIGHUP; the next job uses it, and no job is lost.
doctor on that set-up reports no problem and no warning.

The account names carry a random suffix (other tests may run on this machine at once)
and are removed at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import GIT_ENV, ROOT, build_wheel, git, install_wheel, wait_until
from sshd import SSH_KEYGEN, Sshd, check_openssh, openssh_version

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the guide is run as root")
SYSTEM_PYTHON = "/usr/bin/python3"


def sh(*argv: str | Path, env: dict[str, str] | None = None, input: str | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env,
                            input=input, timeout=300)  # fmt: skip
    if check:
        assert result.returncode == 0, f"{argv}: {result.stderr}{result.stdout}"
    return result


class Site:
    """Paths and names of one run of the guide."""

    def __init__(self, top: Path) -> None:
        suffix = secrets.token_hex(3)
        self.group, self.try_user, self.consumer = f"tg{suffix}", f"tt{suffix}", f"tc{suffix}"
        self.top = top
        self.opt = top / "opt"  # /opt/tryssh
        self.bin = self.opt / "bin"
        self.srv = top / "srv"  # /srv/tryssh
        self.jobdir = self.srv / "jobdir"
        self.etc = top / "etc"  # /etc/tryssh
        self.config = self.etc / "config.toml"
        self.home = top / "home" / self.try_user
        self.repo = top / "git" / "project"
        self.dev = top / "dev"  # the developer's home
        self.accounts: list[tuple[str, str]] = []

    def tryssh(self, *args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
        return sh(self.bin / "tryssh", *args, **kw)  # type: ignore[arg-type]

    def config_text(self, builders: dict[str, str]) -> str:
        lines = [f'jobdir = "{self.jobdir}"', 'keep_days = 30', ""]
        for name, check in builders.items():
            command = [str(self.bin / "tryssh-build-git"), str(self.repo), "sh", "-c", check]
            lines += [f"[builders.{name}]", "command = [" + ", ".join(f'"{w}"' for w in command)
                      + "]", f'description = "{name} checks"', ""]  # fmt: skip
        lines += ["[users.alice]", "builders = [" + ", ".join(f'"{b}"' for b in builders) + "]",
                  'branches = ["*"]', "max_pending = 5"]  # fmt: skip
        return "\n".join(lines) + "\n"


@pytest.fixture
def site() -> Iterator[Site]:
    check_openssh()
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("no system python3")
    top = Path(tempfile.mkdtemp(prefix="tryssh-guide-", dir="/tmp"))
    top.chmod(0o755)  # the service accounts must reach the venv, the repository, the config
    s = Site(top)
    try:
        yield s
    finally:
        for kind, name in reversed(s.accounts):
            sh("userdel" if kind == "user" else "groupdel", name, check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_the_openssh_guide_from_nothing(site: Site, tmp_path: Path) -> None:
    s = site
    # 1. Install tryssh: the wheel alone, into a venv of the system python3.
    wheel = build_wheel(tmp_path / "dist")
    install_wheel(wheel, s.opt, SYSTEM_PYTHON, copy_deps=True)
    script = s.bin / "tryssh-build-git"
    script.write_text(s.tryssh("contrib", "tryssh-build-git").stdout)
    script.chmod(0o755)

    # 2. The accounts.
    sh("groupadd", "--system", s.group)
    s.accounts.append(("group", s.group))
    s.home.parent.mkdir(mode=0o755)
    sh("useradd", "--system", "--gid", s.group, "--create-home", "--home-dir", s.home,
       "--shell", "/bin/sh", s.try_user)  # fmt: skip
    s.accounts.append(("user", s.try_user))
    sh("usermod", "-p", "*", s.try_user)
    sh("useradd", "--system", "--gid", s.group, "--home-dir", s.srv, "--no-create-home",
       "--shell", "/usr/sbin/nologin", s.consumer)  # fmt: skip
    s.accounts.append(("user", s.consumer))

    # 3. The jobdir.
    sh("install", "-d", "-m", "0750", "-o", s.consumer, "-g", s.group, s.srv)
    s.tryssh("jobdir-setup", "--group", s.group, "--owner", s.consumer, s.jobdir)
    assert s.tryssh("jobdir-setup", "--check", "--group", s.group, s.jobdir).stdout.startswith(
        "ok: ")

    # The project's repository (root's: the consumer's clone meets "dubious ownership").
    s.repo.parent.mkdir()
    s.repo.mkdir()
    git(s.repo, "init", "-q", "-b", "main")
    (s.repo / "greeting.txt").write_text("hello\n")
    git(s.repo, "add", "greeting.txt")
    git(s.repo, "commit", "-qm", "first")

    # 4. The configuration, with the contrib build script.
    sh("install", "-d", "-m", "0750", "-o", "root", "-g", s.group, s.etc)
    s.config.write_text(s.config_text({"unit": "grep -qx patched greeting.txt"}))
    shutil.chown(s.config, "root", s.group)
    s.config.chmod(0o640)

    # 5. The developer's key, added as the try account with runuser.
    s.dev.mkdir(mode=0o755)
    (s.dev / ".ssh").mkdir(mode=0o700)
    key = s.dev / ".ssh" / "id_ed25519"
    sh(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", key)
    public = s.top / "alice.pub"
    shutil.copy(f"{key}.pub", public)
    public.chmod(0o644)
    # As the README has it: no --jobdir, the line takes the config's.
    sh("runuser", "-u", s.try_user, "--", s.bin / "tryssh", "keys", "add", "alice", public,
       "--tryserver", s.bin / "tryserver", "--config", s.config)  # fmt: skip

    # 6. The contrib sshd block, for this try account, in a second sshd on loopback.
    block = (ROOT / "contrib" / "sshd_config.tryssh").read_text()
    block = block.replace("Match User try", f"Match User {s.try_user}")
    if openssh_version() < (9, 2):
        block = "\n".join(x for x in block.splitlines() if "ChannelTimeout" not in x)
    sshd = Sshd(extra_config=["AuthorizedKeysFile .ssh/authorized_keys", "StrictModes yes",
                              *block.splitlines()]).start()  # fmt: skip
    consumer = None
    log = s.top / "consumer.log"
    try:
        # 7. The consumer, as its own account (setpriv: SIGHUP reaches it, not a wrapper).
        with open(log, "w") as err:
            consumer = subprocess.Popen(
                ["setpriv", f"--reuid={s.consumer}", f"--regid={s.group}", "--init-groups", "--",
                 str(s.bin / "tryssh"), "consume", "--config", str(s.config)],
                stderr=err, stdin=subprocess.DEVNULL, cwd="/",
            )  # fmt: skip
        wait_until(lambda: "event=start" in log.read_text(), message=log.read_text)

        # 11. The developer: known_hosts from tryssh hostkey, a Host alias, the user config.
        known = s.tryssh("hostkey", "--sshd-dir", sshd.dir, "--host", "127.0.0.1",
                         "--port", str(sshd.port)).stdout  # fmt: skip
        (s.dev / ".ssh" / "known_hosts").write_text(known)
        (s.dev / ".ssh" / "config").write_text(textwrap.dedent(f"""\
            Host try
                HostName 127.0.0.1
                Port {sshd.port}
                User {s.try_user}
                IdentityFile {key}
                IdentitiesOnly yes
                StrictHostKeyChecking yes
            """))
        (s.dev / ".config" / "tryssh").mkdir(parents=True)
        (s.dev / ".config" / "tryssh" / "config.toml").write_text('[try]\nhost = "try"\n')
        dev_env = {"PATH": f"{s.bin}:/usr/bin:/bin", "HOME": str(s.dev), **GIT_ENV}
        work = s.dev / "project"
        sh("git", "clone", "-q", s.repo, work, env=dev_env)
        (work / "greeting.txt").write_text("patched\n")  # not committed: that is the point

        def tryssh_try(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            result = subprocess.run([str(s.bin / "tryssh"), "try", *args], cwd=work, env=dev_env,
                                    capture_output=True, text=True, timeout=120)  # fmt: skip
            if check:
                assert result.returncode == 0, f"{result.stderr}\n{site_state()}"
            return result

        def site_state() -> str:
            """What the jobdir and the consumer's log held (a failure's evidence)."""
            listing = {sub: sorted(os.listdir(s.jobdir / sub)) for sub in ("new", "cur")}
            state = s.jobdir / "state"
            records = sorted(os.listdir(state)) if state.is_dir() else []
            active = sorted(os.listdir(state / "active")) if (state / "active").is_dir() else []
            return (f"jobdir: {listing}\nrecords: {records} active: {active}\n"
                    f"consumer log:\n{log.read_text()}")

        refused = tryssh_try("-b", "lint", check=False)
        assert refused.returncode == 77, refused.stderr
        assert "unknown builder 'lint'" in refused.stderr
        assert os.listdir(s.jobdir / "new") == [] and os.listdir(s.jobdir / "tmp") == []

        first = tryssh_try("-b", "unit", "--wait")
        assert "unit: success" in first.stderr, first.stderr
        first_job = first.stdout.strip()

        # 10. The admin adds a builder and reloads the consumer.
        s.config.write_text(s.config_text({"unit": "grep -qx patched greeting.txt",
                                           "lint": "test -s greeting.txt"}))  # fmt: skip
        assert consumer.poll() is None
        consumer.send_signal(signal.SIGHUP)
        wait_until(lambda: "event=reloaded" in log.read_text(), message=log.read_text)
        second = tryssh_try("-b", "lint", "--wait")
        assert "lint: success" in second.stderr, second.stderr
        second_job = second.stdout.strip()

        # No job lost: both recorded as successes; nothing waits or is left half-written.
        states = {}
        for job in (first_job, second_job):
            status = sh(s.bin / "tryssh", "status", job, "--config", s.config, "--json")
            states[job] = status.stdout
        assert all('"state": "success"' in text for text in states.values()), states
        assert os.listdir(s.jobdir / "new") == [] and os.listdir(s.jobdir / "tmp") == []

        # doctor on this set-up: no problem, no warning (and each area checked).
        doctor = s.tryssh("doctor", "--config", s.config, "--authorized-keys",
                          s.home / ".ssh" / "authorized_keys", "--ssh-user", s.try_user,
                          "--sshd-config", sshd.config_path, "--consumer-user", s.consumer,
                          check=False)  # fmt: skip
        lines = doctor.stdout.splitlines()
        assert doctor.returncode == 0 and all(line.startswith("ok") for line in lines), lines
        for area in ("jobdir", "builders", "users", "consumer", "keys", "sshd"):
            assert any(line.split()[1] == area for line in lines), (area, lines)
        assert any(f"{s.try_user} runs {s.bin / 'tryserver'}" in line for line in lines)
    finally:
        if consumer is not None:
            consumer.send_signal(signal.SIGTERM)
            try:
                consumer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                consumer.kill()
                consumer.wait()
        sshd.stop()
    assert consumer.returncode == 0, log.read_text()
