"""``tryssh doctor`` on a real jobdir (made by the setup script), real keys and real sshd -T."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run, venv_bin
from sshd import make_user_key

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "bin" / "tryssh-jobdir-setup"


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A jobdir set up by the real script, a config and an authorized_keys with one key."""
    jobdir = tmp_path / "jobdir"
    subprocess.run([str(SETUP), str(jobdir)], check=True, capture_output=True)
    config = tmp_path / "tryssh.toml"
    config.write_text(
        f'jobdir = "{jobdir}"\n'
        '[builders.unit]\ncommand = ["true"]\n'
        '[users.alice]\nbuilders = ["unit"]\n'
    )
    key = make_user_key(tmp_path, "alice")
    auth = tmp_path / "authorized_keys"
    added = run([venv_bin("tryssh"), "keys", "add", "alice", key.private_path + ".pub",
                 "--authorized-keys", str(auth), "--jobdir", str(jobdir)])  # fmt: skip
    assert added.returncode == 0, added.stderr
    return {"jobdir": jobdir, "config": config, "auth": auth}


def doctor(*args: str) -> tuple[int, list[dict[str, str]]]:
    result = run([venv_bin("tryssh"), "doctor", "--json", *args])
    return result.returncode, json.loads(result.stdout)


def problems(findings: list[dict[str, str]]) -> list[str]:
    return [f["message"] for f in findings if f["level"] == "problem"]


def test_a_good_setup_has_no_problem(site: dict[str, Path]) -> None:
    code, findings = doctor("--config", str(site["config"]), "--authorized-keys", str(site["auth"]))
    assert problems(findings) == []
    assert code == 0
    areas = {f["area"] for f in findings if f["level"] == "ok"}
    assert {"config", "jobdir", "builders", "users", "keys"} <= areas


def test_breakage_is_reported(site: dict[str, Path]) -> None:
    os.chmod(site["jobdir"] / "new", 0o2777)  # noqa: S103 - broken on purpose
    text = site["config"].read_text().replace('["true"]', '["/nonexistent/build"]')
    site["config"].write_text(text)
    with open(site["auth"], "a") as f:
        f.write("restrict,command=\"/nonexistent/tryserver --user bob\" "
                + (site["auth"].read_text().split()[-2]) + "\n")  # fmt: skip
    code, findings = doctor("--config", str(site["config"]), "--authorized-keys", str(site["auth"]))
    found = " | ".join(problems(findings))
    assert code == 1
    assert "world-writable" in found
    assert "/nonexistent/build" in found


def test_config_error_is_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('jobdir = "x"\n[users.alice]\nbuilder = ["typo"]\n')
    code, findings = doctor("--config", str(bad))
    assert code == 1
    assert any("users.alice.builder" in m for m in problems(findings))


def test_missing_jobdir_is_a_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'jobdir = "{tmp_path / "nowhere"}"\n[builders.b]\ncommand = ["true"]\n'
                      '[users.a]\n')  # fmt: skip
    code, findings = doctor("--config", str(config))
    assert code == 1
    assert any("tmp/" in m and "missing" in m for m in problems(findings))
    # The command pip installs: tryssh-jobdir-setup is only in a source tree's bin/.
    assert any("(run tryssh jobdir-setup)" in m for m in problems(findings)), findings


@pytest.mark.skipif(os.geteuid() != 0, reason="sshd -T needs root")
def test_reads_sshd_settings_as_root() -> None:
    _, findings = doctor("--ssh-user", "root")
    sshd = [f for f in findings if f["area"] == "sshd"]
    assert any(f["level"] == "ok" for f in sshd), sshd
    # A stock sshd_config does not lock the account down: doctor says what to change.
    assert any("disableforwarding" in f["message"] for f in sshd)


def test_nothing_to_check_is_a_usage_error(tmp_path: Path) -> None:
    result = run([venv_bin("tryssh"), "doctor"], env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 64


# --- the truth, both ways: no false "ok", no false warning ---------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another account needs root")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="tryssh-doctor-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def fake_tryserver(directory: Path) -> Path:
    """A stand-in that answers --version like tryserver: what doctor runs as the account."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    script = directory / "tryserver"
    script.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "tryserver 9.9"\n')
    script.chmod(0o755)
    return script


def key_file(site: dict[str, Path], command: str) -> Path:
    line = site["auth"].read_text().splitlines()[1]
    key = line[line.index(" ssh-ed25519 ") + 1 :]
    auth = site["auth"].parent / "authorized_keys2"
    auth.write_text(f'# tryssh start\nrestrict,command="{command} --user alice" {key}\n'
                    "# tryssh end\n")  # fmt: skip
    return auth


def keys_findings(auth: Path, user: str) -> list[dict[str, str]]:
    _, findings = doctor("--authorized-keys", str(auth), "--ssh-user", user)
    return [f for f in findings if f["area"] == "keys"]


def test_serve_users_are_checked_as_serve_checks_them(site, tmp_path) -> None:
    """A key or password hash that tryssh serve refuses (at start or at a reload) is a
    problem for doctor too: the README has admins run doctor before the reload."""
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f",
                    str(tmp_path / "weak")], check=True, capture_output=True)  # fmt: skip
    weak = (tmp_path / "weak.pub").read_text().strip()
    good = site["config"].read_text()
    site["config"].write_text(f'{good}keys = ["{weak}"]\n[serve]\nlisten = "127.0.0.1:0"\n')
    code, findings = doctor("--config", str(site["config"]))
    assert code == 1
    assert any("users.alice.keys[0]" in m and "1024 bits" in m and "tryssh serve refuses" in m
               for m in problems(findings)), findings  # fmt: skip
    site["config"].write_text(f'{good}password_hash = "scrypt$nonsense"\n[serve]\n'
                              'listen = "127.0.0.1:0"\n')  # fmt: skip
    code, findings = doctor("--config", str(site["config"]))
    assert code == 1
    assert any("users.alice.password_hash" in m for m in problems(findings)), findings
    # A key left at the old default place, with no [serve] host_key: serve refuses to start.
    site["config"].write_text(f'{good}keys = ["{(tmp_path / "alice.pub").read_text().strip()}"]\n'
                              '[serve]\nlisten = "127.0.0.1:0"\n')  # fmt: skip
    code, findings = doctor("--config", str(site["config"]))
    assert problems(findings) == [], findings
    (site["jobdir"] / "state" / "ssh_host_ed25519_key").write_text("old\n")
    code, findings = doctor("--config", str(site["config"]))
    assert any("old default place" in m for m in problems(findings)), findings


@needs_root
def test_a_tryserver_the_account_cannot_run_is_a_problem(site, open_dir) -> None:
    home = open_dir / "home"
    program = fake_tryserver(home / "venv")
    home.chmod(0o700)  # a venv under a 0700 home: root can run it, nobody cannot
    auth = key_file(site, str(program))
    keys = keys_findings(auth, "nobody")
    bad = [f["message"] for f in keys if f["level"] == "problem"]
    assert any(f"nobody cannot run {program}" in m and "0700 home" in m for m in bad), keys
    assert not any("runs" in f["message"] for f in keys if f["level"] == "ok")

    home.chmod(0o755)  # the other way: no false problem (but nobody's login shell)
    keys = keys_findings(auth, "nobody")
    bad = [f["message"] for f in keys if f["level"] == "problem"]
    assert [m for m in bad if "login shell" not in m] == []
    assert any(f"nobody runs {program}: tryserver 9.9" == f["message"] for f in keys)


@needs_root
def test_a_login_shell_that_refuses_commands_is_a_problem(site, open_dir) -> None:
    """sshd runs the forced command as '$SHELL -c COMMAND': with nologin (a usual shell for
    system accounts) every submission fails, yet doctor said the key account 'runs' it."""
    import pwd

    auth = key_file(site, str(fake_tryserver(open_dir / "bin")))
    shell = pwd.getpwnam("nobody").pw_shell
    keys = keys_findings(auth, "nobody")
    bad = [f["message"] for f in keys if f["level"] == "problem"]
    if os.path.basename(shell) in ("nologin", "false"):
        assert f"nobody's login shell is {shell}: sshd runs the forced command with it " \
            "($SHELL -c), so every submission fails; usermod -s /bin/sh nobody" in bad, keys
    keys = keys_findings(auth, "root")  # /bin/bash or the like: no false problem
    assert not any("login shell" in f["message"] for f in keys), keys


@needs_root
def test_a_venv_whose_python_the_account_cannot_run_is_a_problem(site, open_dir) -> None:
    """The script is reachable, its interpreter (the Python that made the venv) is under a
    0700 home: sshd's shell cannot run it, so doctor must not say 'runs'."""
    home = open_dir / "root"
    home.mkdir(mode=0o700)
    (home / "python3").symlink_to("/bin/sh")
    venv = open_dir / "venv"
    venv.mkdir(mode=0o755)
    program = venv / "tryserver"
    program.write_text(f'#!{home}/python3\n[ "$1" = --version ] && echo "tryserver 9.9"\n')
    program.chmod(0o755)
    auth = key_file(site, str(program))
    keys = keys_findings(auth, "nobody")
    bad = [f["message"] for f in keys if f["level"] == "problem"]
    assert any(f"nobody cannot run {program}" in m for m in bad), keys
    home.chmod(0o755)  # no false problem
    keys = keys_findings(auth, "nobody")
    assert any(f"nobody runs {program}: tryserver 9.9" == f["message"] for f in keys), keys


def test_tryserver_version() -> None:
    result = run([venv_bin("tryserver"), "--version"])
    assert result.returncode == 0
    assert result.stdout.decode().startswith("tryserver ")


def forward_config(site: dict[str, Path], **files: str) -> Path:
    text = site["config"].read_text() + '[builders.far]\nforward = "ssh://try@b.example/j"\n'
    text += "".join(f'{key} = "{value}"\n' for key, value in files.items())
    site["config"].write_text(text)
    return site["config"]


def builder_findings(config: Path, *args: str) -> list[dict[str, str]]:
    _, findings = doctor("--config", str(config), *args)
    return [f for f in findings if f["area"] == "builders" and "far" in f["message"]]


def test_ssh_forward_with_missing_files_is_not_ok(site) -> None:
    config = forward_config(site, identity="/nonexistent/id", known_hosts="/nonexistent/kh")
    far = builder_findings(config)
    assert {f["level"] for f in far} == {"problem"}, far
    assert any("identity: /nonexistent/id does not exist" in f["message"] for f in far)
    assert any("known_hosts: /nonexistent/kh does not exist" in f["message"] for f in far)


def test_ssh_forward_with_its_files_is_ok(site, tmp_path) -> None:
    (tmp_path / "id").write_text("key\n")
    (tmp_path / "kh").write_text("host\n")
    config = forward_config(site, identity=str(tmp_path / "id"), known_hosts=str(tmp_path / "kh"))
    far = builder_findings(config, "--consumer-user", "root" if os.geteuid() == 0 else "")
    assert [f["level"] for f in far] == ["ok"], far


def test_serve_table_warns_only_where_serve_is_the_door(site) -> None:
    site["config"].write_text(site["config"].read_text() + '[serve]\nlisten = "127.0.0.1:0"\n')
    _, findings = doctor("--config", str(site["config"]), "--authorized-keys", str(site["auth"]))
    serve = [f for f in findings if f["area"] == "serve"]
    assert [f["level"] for f in serve] == ["ok"], serve  # OpenSSH site: no false warning
    _, findings = doctor("--config", str(site["config"]))
    serve = [f for f in findings if f["area"] == "serve"]
    assert any(f["level"] == "warn" and "nobody can log in" in f["message"] for f in serve)


@needs_root
def test_consumer_account_must_write_the_jobdir(site) -> None:
    """The jobdir is root's with mode 2770: root's consumer can claim, nobody cannot."""
    _, findings = doctor("--config", str(site["config"]), "--consumer-user", "nobody")
    bad = [f["message"] for f in findings if f["area"] == "consumer" and f["level"] == "problem"]
    assert any(f"nobody cannot read and write into {site['jobdir']}/new" in m for m in bad), bad
    _, findings = doctor("--config", str(site["config"]), "--consumer-user", "root")
    assert [f for f in findings if f["area"] == "consumer" and f["level"] == "problem"] == []


def test_consumer_heartbeat(site) -> None:
    def heartbeat() -> dict[str, str]:
        _, findings = doctor("--config", str(site["config"]))
        (found,) = [f for f in findings
                    if f["area"] == "consumer" and "heartbeat" in f["message"]]  # fmt: skip
        return found

    assert heartbeat()["level"] == "warn"  # never ran
    result = run([venv_bin("tryssh"), "consume", "--config", str(site["config"]), "--once"])
    assert result.returncode == 0, result.stderr
    found = heartbeat()
    assert found["level"] == "ok" and "alive" in found["message"], found
    beat = site["jobdir"] / "state" / "consumer.heartbeat"
    old = beat.stat().st_mtime - 3600
    os.utime(beat, (old, old))
    found = heartbeat()
    assert found["level"] == "warn" and "is tryssh consume running?" in found["message"], found


@pytest.mark.skipif(os.geteuid() != 0, reason="sshd -T needs root")
def test_sshd_config_file_of_a_second_sshd(tmp_path) -> None:
    host_key = tmp_path / "host_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
    plain = tmp_path / "sshd_config"
    plain.write_text(f"HostKey {host_key}\n")
    locked = tmp_path / "sshd_config_try"
    block = (ROOT / "contrib" / "sshd_config.tryssh").read_text()
    locked.write_text(f"HostKey {host_key}\nPasswordAuthentication no\n{block}")
    _, findings = doctor("--ssh-user", "try", "--sshd-config", str(locked))
    sshd = [f for f in findings if f["area"] == "sshd"]
    assert [f["level"] for f in sshd] == ["ok"], sshd  # no false warning
    assert str(locked) in sshd[0]["message"]
    _, findings = doctor("--ssh-user", "try", "--sshd-config", str(plain))
    assert any(f["level"] == "warn" and "permittty" in f["message"] for f in findings)


@needs_root
def test_a_python_the_consumer_cannot_run_is_a_problem(site) -> None:
    """This venv's python lives under root's 0700 home here (pyenv), or it does not:
    either way doctor's answer for 'nobody' must match what nobody can actually do."""
    import sys

    can = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          sys.executable, "-c", "import tryssh"], capture_output=True,
                         cwd="/", check=False).returncode == 0  # fmt: skip
    _, findings = doctor("--config", str(site["config"]), "--consumer-user", "nobody")
    python = [f for f in findings if f["area"] == "consumer" and "cannot run" in f["message"]]
    assert bool(python) != can, (can, python)


@needs_root
def test_the_keys_account_must_write_the_audit_log(site, open_dir) -> None:
    """nobody (the key's account here) may run the command but not append to the log."""
    program = fake_tryserver(open_dir / "bin")
    auth = key_file(site, str(program))
    site["config"].write_text(site["config"].read_text().replace(
        "[builders", f'audit_log = "{open_dir / "audit.log"}"\n[builders', 1))  # fmt: skip
    (open_dir / "audit.log").write_text("")
    (open_dir / "audit.log").chmod(0o644)
    _, findings = doctor("--config", str(site["config"]), "--authorized-keys", str(auth),
                         "--ssh-user", "nobody")  # fmt: skip
    bad = [f["message"] for f in findings if f["area"] == "keys" and f["level"] == "problem"]
    assert f"nobody cannot write {open_dir / 'audit.log'} (the audit log)" in bad, bad
    (open_dir / "audit.log").chmod(0o666)  # the other way: no false problem
    _, findings = doctor("--config", str(site["config"]), "--authorized-keys", str(auth),
                         "--ssh-user", "nobody")  # fmt: skip
    bad = [f["message"] for f in findings if f["area"] == "keys" and f["level"] == "problem"]
    assert not any("audit" in m for m in bad), bad


def test_a_drop_in_site_without_keep_days_is_warned_that_cur_grows(site) -> None:
    """Drop-in (every builder delivers into this very jobdir, no consumer ran): Buildbot
    never removes what it claims, and no consumer runs gc hourly."""
    jobdir = site["jobdir"]
    drop_in = (f'jobdir = "{jobdir}"\n[builders.unit]\nbuildbot = {{ jobdir = "{jobdir}", '
               'api = "http://127.0.0.1:9/" }\n[users.alice]\nbuilders = ["unit"]\n')  # fmt: skip
    site["config"].write_text(drop_in)
    (jobdir / "cur" / "1700000000.M1P1Q1R1.claimed").write_bytes(b"job")
    _, findings = doctor("--config", str(site["config"]))
    gc = [f for f in findings if f["area"] == "gc"]
    assert [f["level"] for f in gc] == ["warn"], findings
    assert "without keep_days" in gc[0]["message"] and "(1 in cur/)" in gc[0]["message"]
    site["config"].write_text("keep_days = 14\n" + drop_in)
    _, findings = doctor("--config", str(site["config"]))
    assert [f["level"] for f in findings if f["area"] == "gc"] == ["ok"]
    site["config"].write_text(site["config"].read_text().replace(  # a consumer's site
        f'buildbot = {{ jobdir = "{jobdir}", api = "http://127.0.0.1:9/" }}', 'command = ["true"]'))
    _, findings = doctor("--config", str(site["config"]))
    assert [f for f in findings if f["area"] == "gc"] == []
