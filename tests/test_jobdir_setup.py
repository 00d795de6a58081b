"""bin/tryssh-jobdir-setup run for real, and the sysadmin files in contrib/ checked by the real
tools that consume them (sshd -t/-T, systemd-analyze, logrotate, Buildbot, tryssh's config)."""

# The tests break modes on purpose (o+w, missing setgid, ...) to see --check report them.
# ruff: noqa: S103

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run, unprivileged, venv_bin

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bin" / "tryssh-jobdir-setup"
CONTRIB = ROOT / "contrib"
SUBDIRS = ("tmp", "new", "cur", "state", "logs")
IS_ROOT = os.geteuid() == 0


def setup(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    result = run([str(SCRIPT), *map(str, args)], timeout=60)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("problem: ")]


@pytest.fixture
def group() -> Iterator[str]:
    """A real group: a fresh system group as root (removed afterwards), else our own."""
    if not IS_ROOT:
        yield grp.getgrgid(os.getgid()).gr_name
        return
    name = "tsg" + secrets.token_hex(6)
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def jobdir(tmp_path: Path, group: str) -> Path:
    path = tmp_path / "srv" / "jobdir"
    result = setup("--group", group, path)
    assert result.returncode == 0, result.stdout + result.stderr
    return path


def all_dirs(jobdir: Path) -> list[Path]:
    return [jobdir, *(jobdir / sub for sub in SUBDIRS)]


# --- setup -------------------------------------------------------------------------------------


def test_setup_creates_every_directory_2770_with_the_group(jobdir: Path, group: str) -> None:
    gid = grp.getgrnam(group).gr_gid
    for d in all_dirs(jobdir):
        st = d.lstat()
        assert stat.S_ISDIR(st.st_mode), d
        assert stat.S_IMODE(st.st_mode) == 0o2770, (d, oct(st.st_mode))
        assert st.st_gid == gid, d


def test_setgid_makes_new_jobs_inherit_the_group(jobdir: Path, group: str) -> None:
    job = jobdir / "new" / "job1"
    job.write_bytes(b"1:5,")
    (jobdir / "state" / "sub").mkdir()
    gid = grp.getgrnam(group).gr_gid
    assert job.stat().st_gid == gid
    sub = (jobdir / "state" / "sub").stat()
    assert sub.st_gid == gid and sub.st_mode & stat.S_ISGID


def test_setup_is_idempotent_and_repairs(jobdir: Path, group: str) -> None:
    before = {d: d.stat() for d in all_dirs(jobdir)}
    (jobdir / "new" / "keep-me").write_text("a job")
    again = setup("--group", group, jobdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("ok: ")
    for d, st in before.items():
        now = d.stat()
        assert (now.st_ino, now.st_mode, now.st_gid) == (st.st_ino, st.st_mode, st.st_gid)
    assert (jobdir / "new" / "keep-me").read_text() == "a job"
    # Repairs what was broken: a missing directory and wrong modes.
    (jobdir / "cur").rmdir()
    os.chmod(jobdir / "tmp", 0o777)
    os.chmod(jobdir / "logs", 0o4775)
    fixed = setup("--group", group, jobdir)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    for d in all_dirs(jobdir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o2770, d


def test_default_group_is_the_owners_primary_group(tmp_path: Path) -> None:
    path = tmp_path / "jd"
    result = setup(path)
    assert result.returncode == 0, result.stdout + result.stderr
    primary = pwd.getpwuid(os.geteuid()).pw_gid
    for d in all_dirs(path):
        assert d.stat().st_gid == primary


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_owner_option_chowns_and_is_checked(tmp_path: Path, group: str) -> None:
    path = tmp_path / "jd"
    result = setup("--group", group, "--owner", "nobody", path)
    assert result.returncode == 0, result.stdout + result.stderr
    nobody = pwd.getpwnam("nobody").pw_uid
    assert all(d.stat().st_uid == nobody for d in all_dirs(path))
    check = setup("--check", "--group", group, "--owner", "root", path)
    assert check.returncode == 1
    assert len([p for p in problems(check) if "is owned by nobody, want root" in p]) == 6


def test_setup_refuses_a_symlinked_subdirectory(tmp_path: Path, group: str) -> None:
    path = tmp_path / "jd"
    path.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (path / "new").symlink_to(elsewhere)
    result = setup("--group", group, path)
    assert result.returncode == 1
    assert "new is a symbolic link" in result.stderr
    assert stat.S_IMODE(elsewhere.stat().st_mode) != 0o2770


def test_setup_with_an_unknown_group_fails(tmp_path: Path) -> None:
    result = setup("--group", "no-such-group-" + secrets.token_hex(4), tmp_path / "jd")
    assert result.returncode == 1
    assert "no such group" in result.stderr
    assert not (tmp_path / "jd").exists()


# --- check -------------------------------------------------------------------------------------


def test_check_ok_changes_nothing(jobdir: Path, group: str) -> None:
    before = {d: d.stat() for d in all_dirs(jobdir)}
    result = setup("--check", "--group", group, jobdir)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith(f"ok: {jobdir} looks right (group {group}, mode 2770")
    assert problems(result) == []
    assert {d: d.stat() for d in all_dirs(jobdir)} == before
    # Without --group, the jobdir's own group is the reference.
    assert setup("--check", jobdir).returncode == 0


def test_check_reports_world_writable(jobdir: Path, group: str) -> None:
    os.chmod(jobdir / "new", 0o2772)
    result = setup("--check", "--group", group, jobdir)
    assert result.returncode == 1
    assert problems(result) == [f"problem: {jobdir}/new mode 2772: world-writable (want 2770)"]
    # --check changed nothing.
    assert stat.S_IMODE((jobdir / "new").stat().st_mode) == 0o2772


def test_check_reports_world_accessible_missing_setgid_and_group_bits(
    jobdir: Path, group: str
) -> None:
    os.chmod(jobdir / "cur", 0o2775)
    os.chmod(jobdir / "tmp", 0o0770)
    os.chmod(jobdir / "logs", 0o2750)
    found = "\n".join(problems(setup("--check", "--group", group, jobdir)))
    assert f"{jobdir}/cur mode 2775: world-accessible" in found
    assert f"{jobdir}/tmp mode 0770: setgid is missing" in found
    assert f"{jobdir}/logs mode 2750: the group lacks rwx" in found
    assert len(found.splitlines()) == 3


def test_check_reports_a_missing_directory(jobdir: Path, group: str) -> None:
    (jobdir / "new").rmdir()
    result = setup("--check", "--group", group, jobdir)
    assert result.returncode == 1
    assert problems(result) == [f"problem: {jobdir}/new is missing"]
    assert not (jobdir / "new").exists()


def test_check_reports_a_missing_jobdir(tmp_path: Path, group: str) -> None:
    result = setup("--check", "--group", group, tmp_path / "nothing")
    assert result.returncode == 1
    assert "does not exist" in problems(result)[0]


def test_check_says_permission_denied_not_missing(jobdir: Path, group: str) -> None:
    """A monitoring account that may not look into the jobdir's parent was told the jobdir
    'does not exist (run ... without --check to create it)'."""

    def check_with_closed(closed: Path, mode: int) -> tuple[int, str]:
        closed.chmod(0)
        try:
            result = run(unprivileged([str(SCRIPT), "--check", str(jobdir)]))
        finally:
            closed.chmod(mode)
        return result.returncode, result.stdout.decode()

    code, out = check_with_closed(jobdir.parent, 0o755)
    assert code == 1
    assert f"problem: {jobdir} cannot be looked at by " in out
    assert "permission denied" in out and "does not exist" not in out
    # The jobdir itself closed: its subdirectories are not 'missing' either.
    code, out = check_with_closed(jobdir, 0o2770)
    assert f"problem: {jobdir}/new cannot be looked at by " in out
    assert f"{jobdir}/new is missing" not in out


def test_check_reports_the_wrong_group(jobdir: Path, group: str) -> None:
    if IS_ROOT:
        os.chown(jobdir / "new", -1, 0)
        result = setup("--check", "--group", group, jobdir)
        assert problems(result) == [f"problem: {jobdir}/new has group root, want {group}"]
    else:
        others = [g.gr_name for g in grp.getgrall() if g.gr_gid != os.getgid()]
        if not others:
            pytest.skip("no second group on this system")
        result = setup("--check", "--group", others[0], jobdir)
        assert len([p for p in problems(result) if f"want {others[0]}" in p]) == 6
    assert result.returncode == 1


def test_check_reports_low_free_space(jobdir: Path, group: str) -> None:
    result = setup("--check", "--group", group, "--min-free-mb", "999999999999", jobdir)
    assert result.returncode == 1
    [line] = problems(result)
    assert re.fullmatch(
        rf"problem: only \d+ MiB free on the filesystem of {re.escape(str(jobdir))} "
        r"\(want at least 999999999999 MiB; see --min-free-mb\)",
        line,
    )
    assert setup("--check", "--group", group, "--min-free-mb", "0", jobdir).returncode == 0


def test_check_reports_a_symlinked_subdirectory(jobdir: Path, group: str, tmp_path: Path) -> None:
    target = tmp_path / "real-tmp"
    target.mkdir(mode=0o2770)
    os.chmod(target, 0o2770)
    (jobdir / "tmp").rmdir()
    (jobdir / "tmp").symlink_to(target)
    assert "tmp is a symbolic link" in "\n".join(problems(setup("--check", jobdir)))


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_check_reports_tmp_and_new_on_different_filesystems(jobdir: Path, group: str) -> None:
    tmp = jobdir / "tmp"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=2770", "tryssh-test", str(tmp)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
        result = setup("--check", "--group", group, jobdir)
        assert result.returncode == 1
        assert problems(result) == [
            f"problem: {jobdir}/tmp and {jobdir}/new are on different filesystems "
            "(deliveries need rename within one filesystem)"
        ]
    finally:
        subprocess.run(["umount", str(tmp)], check=True, capture_output=True)


def test_check_reports_every_problem_at_once(jobdir: Path, group: str) -> None:
    os.chmod(jobdir / "new", 0o2777)
    (jobdir / "cur").rmdir()
    os.chmod(jobdir / "state", 0o770)
    result = setup("--check", "--group", group, "--min-free-mb", "999999999999", jobdir)
    assert result.returncode == 1
    found = problems(result)
    assert len(found) == 4, found
    assert "ok:" not in result.stdout


# --- usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "missing JOBDIR"),
        (("--bogus", "x"), "unknown option: --bogus"),
        (("a", "b"), "only one JOBDIR"),
        (("--min-free-mb", "lots", "x"), "whole number"),
        (("--min-free-mb", "-5", "x"), "whole number"),
        (("--group",), "needs an argument"),
        (("--check", ""), "must not be empty"),
    ],
)
def test_usage_errors_exit_64(args: tuple[str, ...], message: str) -> None:
    result = setup(*args)
    assert result.returncode == 64
    assert message in result.stderr
    assert result.stdout == ""


def test_help() -> None:
    result = setup("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: tryssh-jobdir-setup [--group GROUP]")
    for word in ("--check", "--min-free-mb", "2770", "setgid", "Exit status"):
        assert word in result.stdout


@pytest.mark.parametrize(
    "script",
    [SCRIPT, CONTRIB / "tryssh-jobdir-setup", CONTRIB / "tryssh-build-git"],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_script_is_posix_sh_and_shellcheck_clean(script: Path) -> None:
    assert script.read_text().startswith("#!/bin/sh\n")
    assert os.access(script, os.X_OK)
    # dash is the strictest common /bin/sh: it must parse the script.
    dash = shutil.which("dash")
    if dash:
        assert run([dash, "-n", str(script)]).returncode == 0
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = run(["shellcheck", "-s", "sh", str(script)])
    assert result.returncode == 0, result.stdout.decode()


# --- contrib/ ----------------------------------------------------------------------------------

SSHD = "/usr/sbin/sshd"


def _sshd_version() -> tuple[int, int]:
    out = run([SSHD, "-V"])
    m = re.search(rb"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.fixture
def sshd_config(tmp_path: Path) -> Path:
    if not os.access(SSHD, os.X_OK):
        pytest.fail("sshd is missing: run scripts/bootstrap", pytrace=False)
    host_key = tmp_path / "host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
        check=True,
        capture_output=True,
    )
    block = (CONTRIB / "sshd_config.tryssh").read_text()
    if _sshd_version() < (9, 2):
        block = block.replace("ChannelTimeout", "#ChannelTimeout")
    config = tmp_path / "sshd_config"
    config.write_text(f"HostKey {host_key}\nUsePAM no\nPasswordAuthentication yes\n{block}")
    return config


def _effective(config: Path, user: str) -> dict[str, str]:
    result = run([SSHD, "-T", "-f", str(config), "-C", f"user={user},host=h,addr=192.0.2.1"])
    assert result.returncode == 0, result.stderr.decode()
    pairs = (line.split(" ", 1) for line in result.stdout.decode().splitlines())
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def test_sshd_match_block_is_valid_and_locks_down_the_try_user(sshd_config: Path) -> None:
    check = run([SSHD, "-t", "-f", str(sshd_config)])
    assert check.returncode == 0, check.stderr.decode()
    try_user = _effective(sshd_config, "try")
    expected = {
        "authenticationmethods": "publickey",
        "passwordauthentication": "no",
        "disableforwarding": "yes",
        "allowtcpforwarding": "no",
        "x11forwarding": "no",
        "allowagentforwarding": "no",
        "permittunnel": "no",
        "permittty": "no",
        "permituserrc": "no",
        "exposeauthinfo": "yes",
        "clientaliveinterval": "30",
        "clientalivecountmax": "4",
        "maxsessions": "4",
        # Commented out on purpose: it would override each key's --user pinning.
        "forcecommand": "none",
    }
    assert {k: try_user.get(k) for k in expected} == expected
    if _sshd_version() >= (9, 2):
        assert try_user["channeltimeout"] == "session=10m"
    # Other accounts are untouched by the Match block.
    other = _effective(sshd_config, "alice")
    assert other["permittty"] == "yes"
    assert other["passwordauthentication"] == "yes"


def test_sshd_match_block_works_from_sshd_config_d(sshd_config: Path, tmp_path: Path) -> None:
    """Included at the top (Debian's sshd_config.d), the Match block does not leak into the
    global settings that follow, and its settings win for the try user."""
    header, _, block = sshd_config.read_text().partition("# sshd_config block")
    included = tmp_path / "50-tryssh.conf"
    included.write_text("# sshd_config block" + block)
    sshd_config.write_text(f"Include {included}\n{header}X11Forwarding yes\nMaxSessions 7\n")
    assert run([SSHD, "-t", "-f", str(sshd_config)]).returncode == 0
    other, try_user = _effective(sshd_config, "bob"), _effective(sshd_config, "try")
    assert (other["x11forwarding"], other["maxsessions"], other["permittty"]) == ("yes", "7", "yes")
    assert (try_user["x11forwarding"], try_user["maxsessions"]) == ("no", "4")
    assert try_user["permittty"] == "no"


def test_sshd_forcecommand_line_is_valid_when_enabled(sshd_config: Path) -> None:
    text = sshd_config.read_text().replace("#ForceCommand ", "ForceCommand ")
    sshd_config.write_text(text)
    assert run([SSHD, "-t", "-f", str(sshd_config)]).returncode == 0
    assert _effective(sshd_config, "try")["forcecommand"] == (
        "/usr/local/bin/tryserver --jobdir /srv/tryssh/jobdir --config /etc/tryssh/config.toml"
    )


def _unit(name: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (CONTRIB / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("name", ["tryssh-consume.service", "tryssh-serve.service"])
def test_systemd_units_are_hardened(name: str) -> None:
    unit = _unit(name)
    verb = name.removeprefix("tryssh-").removesuffix(".service")
    assert unit["ExecStart"] == [f"/usr/local/bin/tryssh {verb} --config /etc/tryssh/config.toml"]
    want = {
        "User": "tryssh",
        "Group": "tryssh",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/srv/tryssh",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
        "UMask": "0007",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
    }
    assert {k: unit.get(k, [None])[-1] for k in want} == want
    assert "TimeoutStopSec" in unit
    # A config error (78) or a refused port (77) is not fixed by restarting every 5 s.
    assert set(unit["RestartPreventExitStatus"][-1].split()) == {"64", "73", "77", "78"}
    families = set(unit["RestrictAddressFamilies"][-1].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families
    # Setgid jobdir directories: RestrictSUIDSGID would make their creation fail.
    assert "RestrictSUIDSGID" not in unit


def test_the_gc_unit_is_hardened_and_has_no_network() -> None:
    """gc reads and removes files under /srv/tryssh: the same sandbox, and no network."""
    unit = _unit("tryssh-gc.service")
    assert unit["ExecStart"] == ["/usr/local/bin/tryssh gc --config /etc/tryssh/config.toml"]
    want = {"Type": "oneshot", "User": "tryssh", "Group": "tryssh", "NoNewPrivileges": "yes",
            "ProtectSystem": "strict", "ReadWritePaths": "/srv/tryssh", "ProtectHome": "yes",
            "PrivateNetwork": "yes", "RestrictAddressFamilies": "AF_UNIX",
            "CapabilityBoundingSet": "", "SystemCallFilter": "@system-service",
            "UMask": "0007"}  # fmt: skip
    assert {k: unit.get(k, [None])[-1] for k in want} == want
    timer = (CONTRIB / "tryssh-gc.timer").read_text()
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer


@pytest.mark.parametrize("name", ["tryssh-consume.service", "tryssh-serve.service",
                                  "tryssh-gc.service", "tryssh-gc.timer"])  # fmt: skip
def test_systemd_units_verify(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's program exists: point it at the installed tryssh.
    text = (CONTRIB / name).read_text().replace("/usr/local/bin/tryssh", venv_bin("tryssh"))
    unit = tmp_path / name
    unit.write_text(text)
    if name.endswith(".timer"):  # verify checks the unit it starts, beside it
        service = (CONTRIB / name.replace(".timer", ".service")).read_text()
        unit.with_suffix(".service").write_text(
            service.replace("/usr/local/bin/tryssh", venv_bin("tryssh")))
    result = run([analyze, "verify", str(unit)], timeout=120)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, out
    assert "Unknown" not in out and "Invalid" not in out and "Failed" not in out, out


def test_logrotate_rotates_the_audit_log_with_create(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if os.access("/usr/sbin/logrotate", os.X_OK) else None
    )
    if not logrotate:
        pytest.skip("logrotate is not installed (apt-get install logrotate)")
    text = (CONTRIB / "logrotate.tryssh").read_text()
    assert "\n    create 0660 try tryssh\n" in text
    # copytruncate only ever appears commented out (it would lose lines of the audit log).
    assert re.search(r"^\s*copytruncate", text, re.M) is None
    me = pwd.getpwuid(os.geteuid()).pw_name
    mygroup = grp.getgrgid(os.getegid()).gr_name
    jobdir = tmp_path / "jobdir"
    jobdir.mkdir()
    os.chmod(jobdir, 0o2770)
    log = jobdir / "audit.log"
    log.write_text("time=1 user=alice outcome=ok\n")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        text.replace("/srv/tryssh/jobdir", str(jobdir)).replace("try tryssh", f"{me} {mygroup}")
    )
    os.chmod(conf, 0o644)
    result = run([logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)], timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    rotated = [p for p in jobdir.iterdir() if p.name.startswith("audit.log-")]
    assert len(rotated) == 1 and rotated[0].read_text() == "time=1 user=alice outcome=ok\n"
    st = log.stat()
    assert log.read_text() == "" and stat.S_IMODE(st.st_mode) == 0o660


def test_master_cfg_builds_a_real_try_jobdir_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    """contrib/master.cfg read as Buildbot reads it; the suite's Buildbot fixture runs it."""
    from buildbot.schedulers.trysched import Try_Jobdir
    from buildbot.util import maildir
    from twisted.protocols.basic import NetstringReceiver

    monkeypatch.setattr(NetstringReceiver, "MAX_LENGTH", NetstringReceiver.MAX_LENGTH)
    monkeypatch.setattr(maildir.MaildirService, "pollInterval", 10)
    monkeypatch.setenv("TRYSSH_BB_GIT", "/srv/git/project.git")
    namespace: dict[str, object] = {}
    source = (CONTRIB / "master.cfg").read_text()
    exec(compile(source, "master.cfg", "exec"), namespace)  # noqa: S102
    c = namespace["BuildmasterConfig"]
    assert isinstance(c, dict)
    [sched] = c["schedulers"]
    assert isinstance(sched, Try_Jobdir)
    assert sched.name == "try"
    assert sched._config_kwargs["jobdir"] == "/srv/tryssh/jobdir"
    assert sched._config_kwargs["builderNames"] == ["try-git"]
    assert NetstringReceiver.MAX_LENGTH > 99_999
    assert maildir.MaildirService.pollInterval == 1


def test_example_config_loads_with_every_builder_kind() -> None:
    from tryssh.server.config import load_config

    config = load_config(str(CONTRIB / "tryssh.example.toml"))
    assert config.jobdir == "/srv/tryssh/jobdir"
    assert config.audit_log == "/srv/tryssh/jobdir/audit.log"
    kinds = {b.kind for b in config.builders.values()}
    assert kinds == {"command", "webhook", "forward", "buildbot"}
    assert config.user("alice") is not None and config.user("stranger") is config.users["*"]
    assert config.serve["listen"] and config.serve["host_key"]
