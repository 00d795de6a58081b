"""``tryssh doctor``: the whole picture of a try server's setup, as findings.

Each check yields findings of three levels: ``ok``, ``warn`` (works, but weaker than it
should be) and ``problem`` (will fail, or is unsafe). Nothing is changed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence

from tryssh.core import defaults
from tryssh.core.jobdir import Jobdir
from tryssh.errors import ConfigError, TrysshError
from tryssh.server.checks import (
    Finding,
    builder_findings,
    find_program,
    shared_api_findings,
)
from tryssh.server.config import Builder, Config, load_config
from tryssh.server.policy import allowed_builders

MIN_FREE_BYTES = 100 * 1024 * 1024
# What sshd -T must say for the try account (see contrib/sshd_config.tryssh).
SSHD_WANTED = {
    "disableforwarding": "yes",
    "permittty": "no",
    "permituserrc": "no",
    "exposeauthinfo": "yes",
    "passwordauthentication": "no",
}


# --- acting as another account ------------------------------------------------------------

VENV_HINT = (
    "a venv made by a Python under a 0700 home? Make it with the system python3 "
    "outside /root and /home, e.g. python3 -m venv /opt/tryssh"
)


NEEDS = {"r": "read", "w": "write", "x": "execute", "wx": "write into",
         "rwx": "read and write into"}  # fmt: skip


class CannotSwitch(Exception):
    """This process cannot act as that account (not root): the check cannot be made."""


def as_account(account: str | None, argv: Sequence[str]) -> list[str]:
    """*argv* run as *account* (setpriv, else runuser); unchanged for this process's own
    account. Raises CannotSwitch when not root, KeyError for an unknown account."""
    if account is None:
        return list(argv)
    entry = pwd.getpwnam(account)
    if entry.pw_uid == os.geteuid():
        return list(argv)
    if os.geteuid() != 0:
        raise CannotSwitch(f"cannot act as {account}: run tryssh doctor as root")
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--init-groups", "--", *argv]  # fmt: skip
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", account, "--", *argv]
    raise CannotSwitch(f"cannot act as {account}: neither setpriv nor runuser is installed")


def run_as(account: str | None, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run *argv* as *account* with a small clean environment; never raises for a failure
    of the program itself (CannotSwitch and KeyError pass through)."""
    full = as_account(account, argv)
    home = pwd.getpwnam(account).pw_dir if account else os.environ.get("HOME", "/")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LC_ALL": "C"}
    try:
        return subprocess.run(full, capture_output=True, text=True, env=env, timeout=20,
                              check=False, cwd="/")  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(full, 127, "", f"cannot run {argv[0]}: {err}")


def first_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[0] if lines else f"exit {result.returncode}"


def can_access(account: str | None, path: str, flags: str) -> bool:
    """Whether *account* passes ``test -FLAG path`` for each letter of *flags* (r, w, x)."""
    test = shutil.which("test") or "/usr/bin/test"
    argv = [test]
    for i, flag in enumerate(flags):
        argv += (["-a"] if i else []) + [f"-{flag}", path]
    return run_as(account, argv).returncode == 0


def access_findings(
    account: str | None, area: str, checks: Sequence[tuple[str, str, str]]
) -> Iterator[Finding]:
    """A problem for each (path, flags, what) that *account* cannot do; a warn if we
    cannot tell (not root)."""
    try:
        for path, flags, what in checks:
            if not can_access(account, path, flags):
                need = NEEDS.get(flags, flags)
                who = account or "this account"
                yield Finding("problem", area, f"{who} cannot {need} {path} ({what})")
    except KeyError:
        yield Finding("problem", area, f"no such account: {account}")
    except CannotSwitch as err:
        yield Finding("warn", area, str(err))


def account_of(path: str) -> str | None:
    """The owner of *path*, or None when it does not exist or has no name."""
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (OSError, KeyError):
        return None


def _dir_findings(path: str, what: str) -> Iterator[Finding]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield Finding("problem", "jobdir", f"{what} {path} is missing (run tryssh jobdir-setup)")
        return
    if not stat.S_ISDIR(st.st_mode):
        yield Finding("problem", "jobdir", f"{what} {path} is not a directory")
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        yield Finding("problem", "jobdir", f"{what} {path} is world-writable ({mode:o})")
    elif mode & stat.S_IRWXO:
        yield Finding("warn", "jobdir", f"{what} {path} is world-accessible ({mode:o})")
    if mode & stat.S_IRWXG != stat.S_IRWXG:
        yield Finding("warn", "jobdir", f"{what} {path}: the group lacks rwx ({mode:o})")
    if not mode & stat.S_ISGID:
        yield Finding("warn", "jobdir", f"{what} {path}: no setgid bit (jobs get the wrong group)")
    if not os.access(path, os.W_OK | os.X_OK):
        yield Finding("problem", "jobdir", f"{what} {path} is not writable by this user")


def check_jobdir(config: Config) -> Iterator[Finding]:
    jobdir = Jobdir(config.jobdir)
    subs = {"tmp": jobdir.tmp, "new": jobdir.new, "cur": jobdir.cur}
    found = False
    for name, path in subs.items():
        bad = list(_dir_findings(path, f"{name}/"))
        found = found or any(f.level == "problem" for f in bad)
        yield from bad
    for path, what in ((config.state_dir, "state_dir"), (config.log_dir, "log_dir")):
        if not os.path.isdir(path):
            yield Finding("warn", "jobdir", f"{what} {path} is missing (the consumer makes it)")
    if found:
        return
    if os.stat(subs["tmp"]).st_dev != os.stat(subs["new"]).st_dev:
        yield Finding("problem", "jobdir", "tmp/ and new/ are on different file systems")
    free = shutil.disk_usage(config.jobdir).free
    if free < MIN_FREE_BYTES:
        yield Finding("problem", "jobdir", f"only {free // 2**20} MiB free under {config.jobdir}")
    backlog = len(os.listdir(subs["new"]))
    yield Finding("ok", "jobdir", f"{config.jobdir}: set up, {free // 2**20} MiB free, "
                  f"{backlog} job(s) waiting in new/")  # fmt: skip
    audit_dir = os.path.dirname(config.audit_log)
    if os.path.exists(config.audit_log):
        if not os.access(config.audit_log, os.W_OK):
            yield Finding("problem", "audit", f"audit log {config.audit_log} is not writable")
    elif not os.access(audit_dir, os.W_OK):
        yield Finding("problem", "audit", f"cannot create audit log in {audit_dir}")


def check_cleanup(config: Config) -> Iterator[Finding]:
    """Whether anything removes old jobs: a drop-in site has no consumer to do it hourly,
    and Buildbot never removes what it claims into cur/."""
    from tryssh.server.queries import drop_in_site

    if not drop_in_site(config, config.state_dir):
        return
    try:
        claimed = len(os.listdir(Jobdir(config.jobdir).cur))
    except OSError:
        return  # check_jobdir has said why
    if config.keep_days is None:
        yield Finding("warn", "gc", f"drop-in site without keep_days: Buildbot never removes "
                      f"the jobs it claims ({claimed} in cur/); set keep_days and run tryssh "
                      "gc daily (tryssh contrib tryssh-gc.timer)")  # fmt: skip
    else:
        yield Finding("ok", "gc", f"drop-in site: tryssh gc removes jobs claimed over "
                      f"{config.keep_days:g} days ago ({claimed} in cur/) when it runs "
                      "(tryssh contrib tryssh-gc.timer runs it daily)")  # fmt: skip


def check_builders(config: Config, account: str | None = None) -> Iterator[Finding]:
    """Each builder's program and files, checked as *account* (the consumer's)."""
    if not config.builders:
        yield Finding("problem", "builders", "no [builders.NAME] table: nothing would be built")
    for builder in config.builders.values():
        found = list(builder_findings(builder))
        found += access_findings(account, "builders", _builder_needs(builder))
        yield from (f for f in found if f.level != "ok")
        if not any(f.level == "problem" for f in found):  # no "ok" beside a problem
            yield from (f for f in found if f.level == "ok")

    yield from shared_api_findings(config)
    for builder in config.builders.values():
        if builder.kind == "buildbot":
            yield buildbot_api_finding(builder)

def buildbot_api_finding(builder: Builder) -> Finding:
    """Whether a buildbot builder's master answers on its REST API (doctor only: the
    consumer starts without it, and its builds say ``error`` while the master is away)."""
    from tryssh.server.buildbot import Api, read_token

    where = f"builders.{builder.name}.buildbot.api"
    try:
        # The builders list, checked as the builds' reads check it: not just any JSON.
        Api(builder.target["api"], read_token(builder.target.get("token_file")),
            retries=0).items("builders", [("field", "builderid"), ("field", "name")],
                             "builders")  # fmt: skip
    except (OSError, TrysshError) as err:
        reason = err.message if isinstance(err, TrysshError) else err.strerror
        return Finding("problem", "builders", f"{where}: {reason}")
    return Finding("ok", "builders", f"{where}: {builder.target['api']} answers")


def _builder_needs(builder: Builder) -> list[tuple[str, str, str]]:
    """The files the consumer's account must reach for *builder*: (path, flags, what)."""
    where = f"builders.{builder.name}"
    needs = []
    if builder.kind == "command":
        found = find_program(builder.target[0], builder.options.get("env", {}))
        if found:
            needs.append((found, "x", f"{where}'s program"))
    for key in ("secret_file", "identity", "known_hosts"):
        value = builder.options.get(key)
        if value and os.path.exists(value):
            needs.append((value, "r", f"{where}.{key}"))
    target = builder.destination  # a forward's target, a buildbot builder's jobdir
    if target is not None and not target.startswith("ssh://"):
        for sub in ("tmp", "new"):
            needs.append((os.path.join(target, sub), "wx", f"{where}'s target"))
    return needs


def check_python(account: str | None) -> Iterator[Finding]:
    """This tryssh's Python, run as *account* (the consumer runs ``tryssh consume`` so)."""
    import sys

    try:
        result = run_as(account, [sys.executable, "-c", "import tryssh"])
    except (KeyError, CannotSwitch):
        return  # already reported by access_findings
    if result.returncode != 0:
        who = account or "this account"
        yield Finding("problem", "consumer", f"{who} cannot run {sys.executable} with "
                      f"tryssh: {first_line(result)} ({VENV_HINT})")  # fmt: skip


def consumer_account(config: Config) -> str | None:
    """Who runs the consumer: the owner of state_dir (jobdir-setup --owner), else of new/."""
    return account_of(config.state_dir) or account_of(os.path.join(config.jobdir, "new"))


def check_consumer(config: Config, account: str | None, now: float | None = None) -> Iterator[
    Finding
]:
    """The consumer's account can claim and record jobs; its heartbeat is recent."""
    from tryssh.server.consumer import HEARTBEAT_FILE, INOTIFY_RESCAN

    needs = [
        (config.path, "r", "the config"),
        (os.path.join(config.jobdir, "new"), "rwx", "the jobdir"),
        (os.path.join(config.jobdir, "cur"), "rwx", "the jobdir"),
    ]
    for path, what in ((config.state_dir, "state_dir"), (config.log_dir, "log_dir")):
        target = path if os.path.isdir(path) else os.path.dirname(path)
        needs.append((target, "wx", what if target == path else f"the parent of {what}"))
    yield from access_findings(account, "consumer", needs)
    yield from check_python(account)
    heartbeat = os.path.join(config.state_dir, HEARTBEAT_FILE)
    try:
        st = os.stat(heartbeat)
    except OSError:
        yield Finding("warn", "consumer", f"no consumer heartbeat ({heartbeat}): tryssh consume "
                      "has not run here (fine if a Buildbot master reads the jobdir)")  # fmt: skip
        return
    age = (time.time() if now is None else now) - st.st_mtime
    poll = float(config.consume.get("poll_interval", 1.0))
    limit = 3 * max(INOTIFY_RESCAN, poll)
    try:
        with open(heartbeat, encoding="utf-8", errors="replace") as f:
            ident = f.read(200).strip()
    except OSError:
        ident = "?"
    if age > limit:
        yield Finding("warn", "consumer", f"last consumer heartbeat {age:.0f}s ago ({ident}): "
                      "is tryssh consume running?")  # fmt: skip
    else:
        yield Finding("ok", "consumer", f"consumer {ident} alive: heartbeat {age:.0f}s ago")


def check_users(config: Config) -> Iterator[Finding]:
    if not config.users:
        yield Finding("problem", "users", "no [users.NAME] table: every job would be refused")
        return
    for user in config.users.values():
        if not allowed_builders(config, user.name):
            yield Finding("warn", "users", f"users.{user.name}: may use no configured builder")
    names = ", ".join(sorted(config.users))
    yield Finding("ok", "users", f"{len(config.users)} user table(s): {names}")


def check_forced_command(account: str | None, program: str) -> Iterator[Finding]:
    """Run ``PROGRAM --version`` as *account*: sshd will run it so for every submission."""
    who = account or "this account"
    try:
        # Through a shell, as sshd runs it ($SHELL -c COMMAND): a direct exec right after
        # the switch of account can pass where sshd's fails (gVisor let an interpreter
        # under a 0700 home through).
        result = run_as(account, ["/bin/sh", "-c", 'exec "$0" --version', program])
    except KeyError:
        yield Finding("problem", "keys", f"no such account: {account}")
        return
    except CannotSwitch as err:
        yield Finding("warn", "keys", f"{program}: {err}")
        return
    if result.returncode != 0 or not result.stdout.startswith("tryserver "):
        yield Finding("problem", "keys", f"{who} cannot run {program}: {first_line(result)} "
                      f"({VENV_HINT})")  # fmt: skip
        return
    yield Finding("ok", "keys", f"{who} runs {program}: {result.stdout.strip()}")


# Login shells that never run a forced command: sshd runs it as "$SHELL -c COMMAND".
REFUSING_SHELLS = {"nologin", "false", "true", "git-shell", "rssh", "scponly"}


def check_login_shell(account: str | None) -> Iterator[Finding]:
    """The key account's login shell must run ``-c COMMAND`` (README step 2: /bin/sh)."""
    try:
        entry = pwd.getpwnam(account) if account else pwd.getpwuid(os.geteuid())
    except KeyError:
        return  # reported by the other checks
    shell = entry.pw_shell or "/bin/sh"  # sshd's default for an empty field
    if os.path.basename(shell) in REFUSING_SHELLS or not os.access(shell, os.X_OK):
        yield Finding("problem", "keys", f"{entry.pw_name}'s login shell is {shell}: sshd runs "
                      "the forced command with it ($SHELL -c), so every submission fails; "
                      f"usermod -s /bin/sh {entry.pw_name}")  # fmt: skip


def _option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def check_authorized_keys(
    path: str, config: Config | None, account: str | None = None
) -> Iterator[Finding]:
    from tryssh.server.authorized_keys import list_keys, split_options

    if not os.path.exists(path):
        yield Finding("warn", "keys", f"{path} does not exist (tryssh keys add creates it)")
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o022:
        yield Finding("problem", "keys", f"{path} is writable by others ({mode:o})")
    try:
        entries = list_keys(path)
    except TrysshError as err:
        yield Finding("problem", "keys", err.message)
        return
    programs: dict[str, None] = {}
    needs: dict[tuple[str, str, str], None] = {}
    for entry in entries:
        options = split_options(entry.options)
        if "restrict" not in options:
            yield Finding("problem", "keys", f"{entry.user}'s key {entry.fingerprint}: no restrict")
        command = next((o for o in options if o.startswith("command=")), "")
        words = command[len("command=") :].strip('"').split()
        if not words or not os.access(words[0], os.X_OK):
            yield Finding("problem", "keys", f"key {entry.fingerprint} of {entry.user}: "
                          f"forced command {words[:1]} is not an executable")  # fmt: skip
        else:
            programs[words[0]] = None
        if _option(words, "--config"):
            needs[(_option(words, "--config") or "", "r", "the config")] = None
        key_jobdir = _option(words, "--jobdir") or (config.jobdir if config else None)
        if key_jobdir:
            for sub in ("tmp", "new"):
                needs[(os.path.join(key_jobdir, sub), "wx", "the jobdir")] = None
        if config and "--jobdir" in words:
            jobdir = words[words.index("--jobdir") + 1]
            if os.path.normpath(jobdir) != config.jobdir:
                yield Finding("warn", "keys", f"key of {entry.user} delivers to {jobdir}, "
                              f"not the config's {config.jobdir}")  # fmt: skip
        if config and config.user(entry.user) is None:
            yield Finding("warn", "keys", f"{entry.user} has a key but no [users] policy: "
                          "their jobs will be refused")  # fmt: skip
    with open(path, encoding="utf-8", errors="replace") as f:
        outside = [line for line in f if line.strip() and not line.startswith("#")]
    extra = len(outside) - len(entries)
    if extra > 0:
        yield Finding("warn", "keys", f"{extra} line(s) outside the tryssh block: check they "
                      "cannot open a shell")  # fmt: skip
    if config is not None and entries:
        # Every request appends a line to the audit log, as the key's account.
        audit = config.audit_log
        if os.path.exists(audit):
            needs[(audit, "w", "the audit log")] = None
        else:
            needs[(os.path.dirname(audit), "wx", "the audit log's directory")] = None
    if entries:
        yield from check_login_shell(account)
    for program in programs:
        yield from check_forced_command(account, program)
    yield from access_findings(account, "keys", list(needs))
    yield Finding("ok", "keys", f"{path}: {len(entries)} tryssh key(s)")


def check_sshd(user: str, sshd_config: str | None = None) -> Iterator[Finding]:
    """``sshd -T`` for *user*, with the system's config or *sshd_config* (a second sshd)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK):
        yield Finding("warn", "sshd", "sshd is not installed (fine with tryssh serve)")
        return
    spec = f"user={user},host=localhost,addr=127.0.0.1"
    try:
        extra = ["-f", sshd_config] if sshd_config else []
        out = subprocess.run([sshd, "-T", *extra, "-C", spec], capture_output=True, text=True,
                             timeout=20, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        yield Finding("warn", "sshd", f"cannot run sshd -T: {err}")
        return
    if out.returncode != 0:
        first = (out.stderr.strip().splitlines() or ["no output"])[0]
        yield Finding("warn", "sshd", f"cannot read sshd settings (needs root): {first}")
        return
    settings = dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line)
    for key, want in SSHD_WANTED.items():
        have = settings.get(key, "?")
        if have != want:
            yield Finding("warn", "sshd", f"for user {user}: {key} is {have}, should be {want} "
                          "(see contrib/sshd_config.tryssh)")  # fmt: skip
    source = sshd_config or "the system's sshd_config"
    yield Finding("ok", "sshd", f"read sshd settings for user {user} from {source}")


def check_serve(config: Config, openssh: bool = False) -> Iterator[Finding]:
    """The [serve] table; with *openssh* (the site's door is sshd), a [serve] nobody can
    log in to is just unused, not a warning."""
    if not config.serve:
        return
    key = config.serve.get("host_key")
    if key and os.path.exists(key):
        mode = stat.S_IMODE(os.stat(key).st_mode)
        if mode & 0o077:
            yield Finding("problem", "serve", f"host key {key} is readable by others ({mode:o})")
        where = os.path.dirname(os.path.abspath(key))
        dmode = stat.S_IMODE(os.stat(where).st_mode)
        if dmode & 0o022:
            # tryssh serve refuses to start: a group member could swap the key there.
            yield Finding("problem", "serve", f"host key directory {where} is writable by "
                          f"group or others ({dmode:o}): keep the key where only the "
                          "service account writes")  # fmt: skip
    with_auth = [u.name for u in config.users.values() if u.keys or u.password_hash]
    if not with_auth:
        if openssh:
            yield Finding("ok", "serve", "[serve] is not used: no user has keys or "
                          "password_hash there (OpenSSH is the door)")  # fmt: skip
            return
        yield Finding("warn", "serve", "no user has keys or password_hash: nobody can log in")
    from tryssh.server.serve import accounts_from_config, refuse_old_default_key

    try:
        # What tryssh serve checks at start and at a reload (SIGHUP), in its words.
        accounts_from_config(config)
        refuse_old_default_key(config)
    except ConfigError as err:
        yield Finding("problem", "serve", f"{err.message} (tryssh serve refuses this config)")
        return
    yield Finding("ok", "serve", f"listen {config.serve.get('listen', defaults.SERVE_LISTEN)}")


def diagnose(
    config_path: str | None,
    authorized_keys: str | None,
    ssh_user: str | None,
    sshd_config: str | None = None,
    consumer_user: str | None = None,
) -> list[Finding]:
    """Run every check that applies; never raises for what it finds.

    Files are checked as the account that will use them: the key's command, the config
    and the jobdir as *ssh_user* (default: the owner of *authorized_keys*), the builders'
    files and the jobdir as *consumer_user* (default: the owner of state_dir).
    """
    findings: list[Finding] = []
    config = None
    if config_path:
        try:
            config = load_config(config_path)
            findings.append(Finding("ok", "config", f"{config_path} is valid"))
        except TrysshError as err:
            findings.append(Finding("problem", "config", err.message))
    if config:
        consumer = consumer_user or consumer_account(config)
        findings += check_jobdir(config)
        findings += check_cleanup(config)
        findings += check_builders(config, consumer)
        findings += check_users(config)
        findings += check_serve(config, openssh=bool(authorized_keys or ssh_user))
        findings += check_consumer(config, consumer)
    if authorized_keys:
        findings += check_authorized_keys(authorized_keys, config, ssh_user)
    if ssh_user:
        findings += check_sshd(ssh_user, sshd_config)
    # "cannot act as X" (not root) would repeat once per builder: say each thing once.
    return list(dict.fromkeys(findings))
