"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests, plus argv builders for the real clients.

Each :class:`Sshd` owns a directory with its config, a fresh ed25519 host key, an
``authorized_keys`` file the test controls, a pid file and a VERBOSE log. It listens on a port
chosen at run time and logs in the current user (root in CI).
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from helpers import StrPath, free_port, wait_until

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SFTP = "/usr/bin/sftp"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
HOST = "127.0.0.1"
PRIVSEP_DIR = "/run/sshd"

# sshd refuses to start on a bind failure; a port picked by free_port() can be taken by
# another test in between, so a start is retried on a fresh port a few times.
_START_ATTEMPTS = 5
_BIND_FAILURE = re.compile(r"Bind to port \d+ on \S+ failed|Cannot bind any address")


class OpensshMissing(RuntimeError):
    """The OpenSSH server or client programs are not installed."""


def check_openssh() -> None:
    """Raise OpensshMissing naming the missing programs and the fix."""
    missing = [p for p in (SSHD, SSH, SFTP, SSH_KEYGEN) if not os.access(p, os.X_OK)]
    if missing:
        raise OpensshMissing(
            f"OpenSSH programs missing: {', '.join(missing)}; run scripts/bootstrap "
            "(as root it installs openssh-server and openssh-client)"
        )


@functools.cache
def openssh_version() -> tuple[int, int]:
    """(major, minor) of the installed sshd, e.g. (9, 2)."""
    out = subprocess.run([SSHD, "-V"], capture_output=True, check=False, timeout=30)
    match = re.search(rb"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    if not match:
        raise OpensshMissing(f"cannot read the OpenSSH version from {SSHD} -V")
    return int(match.group(1)), int(match.group(2))


class UserKey(NamedTuple):
    """A client key pair: the private key file and the public key line."""

    private_path: str
    public_line: str


def make_user_key(directory: StrPath, name: str, passphrase: str = "") -> UserKey:
    """Generate ``directory/name`` (+ ``.pub``), an ed25519 key, and return (path, public line)."""
    path = Path(directory) / name
    _keygen(path, passphrase=passphrase, comment=f"{name}@tryssh-test")
    return UserKey(str(path), path.with_name(name + ".pub").read_text().strip())


def _keygen(path: Path, passphrase: str = "", comment: str = "") -> None:
    result = subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace")
        raise RuntimeError(f"ssh-keygen failed for {path}: {err}")


def _keyword(line: str) -> str:
    """The config keyword of an sshd_config line, lower-cased ('' for blanks and comments)."""
    words = line.split(None, 1)
    if not words or words[0].startswith("#"):
        return ""
    return words[0].split("=", 1)[0].lower()


class Sshd:
    """A running ``sshd -D`` on 127.0.0.1 (use as a context manager, or call start/stop).

    ``extra_config`` lines before the first ``Match`` are global: they go first, and a default
    with the same keyword is dropped, so they override the defaults (sshd keeps the first value
    it reads). ``Match`` blocks are appended at the end. HostKey, ListenAddress and PidFile
    are fixed.
    """

    def __init__(
        self,
        authorized_keys: Iterable[str] = (),
        extra_config: Sequence[str] = (),
        directory: StrPath | None = None,
    ) -> None:
        check_openssh()
        self._own_dir = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="tryssh-sshd-")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra_config = list(extra_config)
        self.host = HOST
        self.port = 0
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.config_path = self.dir / "sshd_config"
        self.authorized_keys_path = self.dir / "authorized_keys"
        self.host_key_path = self.dir / "ssh_host_ed25519_key"
        self.pid_path = self.dir / "sshd.pid"
        self.log_path = self.dir / "sshd.log"
        self.stderr_path = self.dir / "sshd.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        _keygen(self.host_key_path, comment="tryssh-test-host")
        self.host_key_pub = (
            self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text().strip()
        )
        self.set_authorized_keys(authorized_keys)

    # -- files -----------------------------------------------------------------------------

    def set_authorized_keys(self, lines: Iterable[str]) -> None:
        """Rewrite authorized_keys atomically; sshd reads it at each authentication."""
        text = "".join(line.rstrip("\n") + "\n" for line in lines)
        tmp = self.authorized_keys_path.with_name("authorized_keys.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.authorized_keys_path)

    def known_hosts_line(self) -> str:
        """``[127.0.0.1]:PORT ssh-ed25519 AAAA...`` for a known_hosts file."""
        keytype, blob = self.host_key_pub.split()[:2]
        return f"[{self.host}]:{self.port} {keytype} {blob}"

    def log_text(self) -> str:
        """The sshd log so far (VERBOSE), plus anything sshd wrote to stderr."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def config_text(self) -> str:
        """The sshd_config for the current port."""
        overrides = []
        matches: list[str] = []
        for line in self.extra_config:
            if matches or _keyword(line) == "match":
                matches.append(line)
            else:
                overrides.append(line)
        overridden = {_keyword(line) for line in overrides} - {""}
        root = os.getuid() == 0
        defaults = [
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "AuthorizedPrincipalsFile none",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            # PAM needs root; without it sshd itself checks the account, which works for the
            # invoking user because a non-root sshd cannot read /etc/shadow.
            f"UsePAM {'yes' if root else 'no'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "Subsystem sftp internal-sftp",
            "ExposeAuthInfo yes",
            "LogLevel VERBOSE",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            # Tests open many connections at once; the default 10:30:100 drops some.
            "MaxStartups 200",
        ]
        if openssh_version() >= (9, 8):
            # Failed logins are expected in tests; penalties would then refuse 127.0.0.1.
            defaults.append("PerSourcePenalties no")
        # Not overridable: start(), known_hosts_line() and stop() depend on these.
        fixed = [
            f"HostKey {self.host_key_path}",
            f"ListenAddress {self.host}:{self.port}",
            "AddressFamily inet",
            f"PidFile {self.pid_path}",
        ]
        kept = [line for line in defaults if _keyword(line) not in overridden]
        return "\n".join([*fixed, *overrides, *kept, *matches]) + "\n"

    # -- process -----------------------------------------------------------------------------

    def start(self) -> Sshd:
        """Start sshd on a fresh port and wait until it answers with an SSH banner."""
        if self.proc is not None:
            raise RuntimeError("sshd already started")
        if os.getuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        try:
            for _ in range(_START_ATTEMPTS):
                self.port = free_port(self.host)
                self.config_path.write_text(self.config_text())
                self._check_config()
                if self._launch():
                    return self
            raise RuntimeError(
                f"sshd could not bind a port after {_START_ATTEMPTS} tries:\n{self.log_text()}"
            )
        except BaseException:
            # __exit__ does not run when __enter__ raises: clean up here.
            self.stop()
            raise

    def _check_config(self) -> None:
        result = subprocess.run(
            [SSHD, "-t", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"sshd -t rejected {self.config_path}:\n{result.stderr.decode(errors='replace')}"
                f"\n--- config ---\n{self.config_path.read_text()}"
            )

    def _launch(self) -> bool:
        """Run sshd once; True when it serves, False on a bind failure (port stolen)."""
        self.log_path.touch()
        log_start = self.log_path.stat().st_size
        with open(self.stderr_path, "ab") as err:
            # Absolute path: sshd re-executes itself and refuses a relative argv[0].
            # New session: a Ctrl-C meant for pytest must not kill sshd before teardown.
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        outcome = wait_until(
            lambda: self._probe(log_start),
            timeout=30,
            message=lambda: f"sshd did not come up on {self.host}:{self.port}:\n" + self.log_text(),
        )
        if outcome == "up":
            return True
        self._reap()
        with open(self.log_path, "rb") as log:
            log.seek(log_start)
            tail = log.read().decode(errors="replace")
        if _BIND_FAILURE.search(tail):
            return False
        raise RuntimeError(f"sshd exited with status {outcome}:\n{self.log_text()}")

    def _probe(self, log_start: int) -> str | None:
        """'up' once sshd sends its banner, the exit status if it died, else None."""
        assert self.proc is not None
        status = self.proc.poll()
        if status is not None:
            return f"exit {status}"
        # Our own "listening" line first: a banner alone could come from another server that
        # grabbed the port between free_port() and our bind.
        listening = f"Server listening on {self.host} port {self.port}."
        with open(self.log_path, "rb") as log:
            log.seek(log_start)
            if listening.encode() not in log.read():
                return None
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.settimeout(5)
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return "up"
        except OSError:
            return None
        return None

    def stop(self) -> None:
        """Terminate sshd (then kill it if it lingers). Idempotent."""
        self._reap()
        if self._own_dir and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            self._own_dir = False

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Sshd {self.user}@{self.host}:{self.port} dir={self.dir}>"


# -- client argv builders -----------------------------------------------------------------------


def client_options(sshd: Sshd, key_path: StrPath, known_hosts_path: StrPath) -> list[str]:
    """Options shared by ssh and sftp: no user config, only this key, strict host checking."""
    return [
        "-F",
        "/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={os.fspath(known_hosts_path)}",
        # The system file must not vouch for (or against) the test server.
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "ConnectTimeout=20",
        "-o",
        f"User={sshd.user}",
        "-i",
        os.fspath(key_path),
    ]


def ssh_argv(
    sshd: Sshd,
    key_path: StrPath,
    known_hosts_path: StrPath,
    *remote_words: str,
    extra_opts: Sequence[str] = (),
) -> list[str]:
    """argv for the real ssh client logging into ``sshd`` and running ``remote_words``."""
    return [
        SSH,
        *client_options(sshd, key_path, known_hosts_path),
        "-p",
        str(sshd.port),
        "-l",
        sshd.user,
        *extra_opts,
        sshd.host,
        *remote_words,
    ]


def sftp_argv(
    sshd: Sshd,
    key_path: StrPath,
    known_hosts_path: StrPath,
    batch_path: StrPath = "-",
    extra_opts: Sequence[str] = (),
) -> list[str]:
    """argv for the real sftp client in batch mode (``-b``; "-" reads commands from stdin)."""
    return [
        SFTP,
        *client_options(sshd, key_path, known_hosts_path),
        "-P",
        str(sshd.port),
        "-b",
        os.fspath(batch_path),
        *extra_opts,
        sshd.host,
    ]


def write_known_hosts(path: StrPath, *sshds: Sshd) -> Path:
    """Write a known_hosts file trusting exactly ``sshds`` (none: an empty file)."""
    out = Path(path)
    out.write_text("".join(s.known_hosts_line() + "\n" for s in sshds))
    return out


def wait_for_log(sshd: Sshd, needle: str, timeout: float = 10.0) -> str:
    """Wait until ``needle`` appears in the sshd log and return the log."""
    return wait_until(
        lambda: sshd.log_text() if needle in sshd.log_text() else "",
        timeout=timeout,
        message=lambda: f"{needle!r} not in sshd log:\n{sshd.log_text()}",
    )
