"""``tryssh doctor``: the whole picture of a try server's setup, as findings.

Each check yields findings of three levels: ``ok``, ``warn`` (works, but weaker than it
should be) and ``problem`` (will fail, or is unsafe). Nothing is changed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator

from tryssh.core import defaults
from tryssh.core.jobdir import Jobdir
from tryssh.errors import TrysshError
from tryssh.server.checks import Finding, config_findings
from tryssh.server.config import Config, load_config
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


def _dir_findings(path: str, what: str) -> Iterator[Finding]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield Finding("problem", "jobdir", f"{what} {path} is missing (run tryssh-jobdir-setup)")
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


def check_builders(config: Config) -> Iterator[Finding]:
    if not config.builders:
        yield Finding("problem", "builders", "no [builders.NAME] table: nothing would be built")
    yield from config_findings(config)


def check_users(config: Config) -> Iterator[Finding]:
    if not config.users:
        yield Finding("problem", "users", "no [users.NAME] table: every job would be refused")
        return
    for user in config.users.values():
        if not allowed_builders(config, user.name):
            yield Finding("warn", "users", f"users.{user.name}: may use no configured builder")
    names = ", ".join(sorted(config.users))
    yield Finding("ok", "users", f"{len(config.users)} user table(s): {names}")


def check_authorized_keys(path: str, config: Config | None) -> Iterator[Finding]:
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
    for entry in entries:
        options = split_options(entry.options)
        if "restrict" not in options:
            yield Finding("problem", "keys", f"{entry.user}'s key {entry.fingerprint}: no restrict")
        command = next((o for o in options if o.startswith("command=")), "")
        words = command[len("command=") :].strip('"').split()
        if not words or not os.access(words[0], os.X_OK):
            yield Finding("problem", "keys", f"key {entry.fingerprint} of {entry.user}: "
                          f"forced command {words[:1]} is not an executable")  # fmt: skip
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
    yield Finding("ok", "keys", f"{path}: {len(entries)} tryssh key(s)")


def check_sshd(user: str) -> Iterator[Finding]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK):
        yield Finding("warn", "sshd", "sshd is not installed (fine with tryssh serve)")
        return
    spec = f"user={user},host=localhost,addr=127.0.0.1"
    try:
        out = subprocess.run([sshd, "-T", "-C", spec], capture_output=True, text=True,
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
    yield Finding("ok", "sshd", f"read sshd settings for user {user}")


def check_serve(config: Config) -> Iterator[Finding]:
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
        yield Finding("warn", "serve", "no user has keys or password_hash: nobody can log in")
    yield Finding("ok", "serve", f"listen {config.serve.get('listen', defaults.SERVE_LISTEN)}")


def diagnose(
    config_path: str | None, authorized_keys: str | None, ssh_user: str | None
) -> list[Finding]:
    """Run every check that applies; never raises for what it finds."""
    findings: list[Finding] = []
    config = None
    if config_path:
        try:
            config = load_config(config_path)
            findings.append(Finding("ok", "config", f"{config_path} is valid"))
        except TrysshError as err:
            findings.append(Finding("problem", "config", err.message))
    if config:
        for check in (check_jobdir, check_builders, check_users, check_serve):
            findings += check(config)
    if authorized_keys:
        findings += check_authorized_keys(authorized_keys, config)
    if ssh_user:
        findings += check_sshd(ssh_user)
    return findings
