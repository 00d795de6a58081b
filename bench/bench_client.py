"""Benchmark the client against OpenSSH and Buildbot's ``buildbot try --connect=ssh``.

In one run, against one real sshd on 127.0.0.1 whose key runs the forced command
``tryserver --jobdir J --user alice``:

1. the wall time to submit a 1 KB job: ``tryssh try -c ssh --diff`` vs ``ssh host tryserver
   < job`` (OpenSSH) vs ``buildbot try --connect=ssh --diff`` (medians);
2. the throughput of a 64 MB job: ``tryssh try`` vs OpenSSH's ``ssh host tryserver < job``;
3. the same 64 MB job file through tryssh's SSH channel alone (``sshclient.connect`` +
   ``transport.run_remote`` in this process: handshake, login and upload, no job encoding)
   vs OpenSSH, and the split of ``tryssh try``'s time, step by step in a fresh interpreter:
   imports, reading the diff, sizing the job, importing paramiko, connecting, the upload
   (which encodes as it sends; the command itself connects while it reads and sizes);
4. the whole command for a one-line change in a git working copy (``tryssh try`` without
   ``--diff``) against OpenSSH's small job, and its split, as in 3.

Run as root, sshd logs in to a dedicated account ``tryssh-bench`` (shell /bin/sh, no home,
so no rc files run per session, as on a real try account; root's bash would read ~/.bashrc
on each: +110 ms), whose tryserver is installed for the system's python3. An existing
account is reused; one the run creates with useradd is removed (userdel) when it exits.
Otherwise it logs in as the current user.

Targets (issues 3, 12 and 15): small submit <= 0.5x buildbot try's time; 64 MB end to
end >= 0.9x OpenSSH's throughput (issue 15; issue 12 asked 0.6x); the channel alone
>= 0.9x OpenSSH's. Usage:
``.venv/bin/python bench/bench_client.py [--runs N] [--big-runs N] [--big-mb MB] [--quick]
[--json]``. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sshd import Sshd, client_options, make_user_key, write_known_hosts  # noqa: E402

from tryssh.core.jobdir import Jobdir  # noqa: E402
from tryssh.core.jobfile import Job, encode_job  # noqa: E402

BIN = Path(sys.executable).parent


def diff_of(size: int) -> bytes:
    line = b"+" + b"x" * 71 + b"\n"
    head = b"--- a/f\n+++ b/f\n@@ -0,0 +1,%d @@\n" % max(1, size // len(line))
    return head + line * max(1, size // len(line))


def timed(argv: list[str], stdin_path: Path | None, env: dict[str, str], cwd: Path) -> float:
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        result = subprocess.run(
            argv, stdin=stdin, capture_output=True, env=env, cwd=cwd, timeout=600, check=False
        )
        elapsed = time.perf_counter() - start
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    if result.returncode != 0:
        raise SystemExit(
            f"bench: {shlex.join(argv[:3])}... failed ({result.returncode}):\n"
            f"{result.stderr.decode(errors='replace')}"
        )
    return elapsed


# One `tryssh try` of a one-line change, in process, timed step by step.
SPLIT = """
import json, sys, time
t0 = time.perf_counter()
import tryssh.cli.try_  # noqa: F401  (click, the client modules: what start-up imports)
from tryssh.client.job import TryRequest, build_job, gather_change
from tryssh.client.sshoptions import SshOptions
from tryssh.core.jobfile import EncodedJob
t1 = time.perf_counter()
where = sys.argv[1]  # a working copy, or a diff file
if where.endswith(".diff"):
    req = TryRequest(builders=["unit"], diff=where, baserev="abc", patchlevel=1)
else:
    req = TryRequest(builders=["unit"])
job = build_job(gather_change(req, where), req)
t2 = time.perf_counter()
encoded = EncodedJob(job)  # its size: the rest is encoded while it is sent
size = encoded.size
t3 = time.perf_counter()
from tryssh.client import sshclient, transport
t4 = time.perf_counter()
host, port, user, key, known, jobdir = sys.argv[2:8]
conn = sshclient.connect(SshOptions(host=host, port=int(port), user=user, identity=key,
                                    known_hosts=known, ssh_config="/dev/null", quiet=True))
t5 = time.perf_counter()
transport.deliver_ssh(conn, encoded, jobdir, show_progress=False)
t6 = time.perf_counter()
conn.close()
print(json.dumps({"imports": t1 - t0, "vcs or read": t2 - t1, "size the job": t3 - t2,
                  "import paramiko": t4 - t3, "connect": t5 - t4, "upload": t6 - t5,
                  "job_bytes": size}))
"""

BENCH_ACCOUNT = "tryssh-bench"


def login_account() -> str | None:
    """The account the sshd baseline logs in to: like a real try account, its shell is
    /bin/sh and it has no rc files (root's bash would read ~/.bashrc on every session:
    +110 ms). When run as root: an existing one is reused, else it is created and removed
    again when this process exits (the sshds are stopped by then). None (the current user)
    when not root."""
    import atexit
    import pwd

    if os.getuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(BENCH_ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/bin/sh", "--home-dir",
                        "/nonexistent", "--no-create-home", BENCH_ACCOUNT], check=True)  # fmt: skip
        atexit.register(remove_account, BENCH_ACCOUNT)  # only the one this run made
        entry = pwd.getpwnam(BENCH_ACCOUNT)
    if entry.pw_shell != "/bin/sh" or os.path.exists(entry.pw_dir):
        raise SystemExit(f"bench: account {BENCH_ACCOUNT} must have /bin/sh and no home")
    return BENCH_ACCOUNT


def remove_account(name: str) -> None:
    """``userdel`` the account :func:`login_account` made (and its group); a failure (a
    process of it still running) is said, not raised: the figures are already out."""
    done = subprocess.run(["userdel", name], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"bench: could not remove account {name}: {done.stderr.strip()}", file=sys.stderr)


def server_install(where: Path) -> str:
    """tryserver (stdlib only) installed for /usr/bin/python3 under *where*: its script."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        raise SystemExit("bench: the login account needs /usr/bin/python3 for tryserver")
    site = where / "lib"
    shutil.copytree(ROOT / "tryssh", site / "tryssh",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    subprocess.run([python, "-m", "compileall", "-q", str(site / "tryssh")], check=True)
    script = where / "tryserver"
    script.write_text(f"#!{python} -sE\nimport sys\nsys.path.insert(0, {str(site)!r})\n"
                      "from tryssh.server.tryserver import main\nsys.exit(main())\n")  # fmt: skip
    script.chmod(0o755)
    for path in (where, site):
        os.chmod(path, 0o755)  # noqa: S103 (the login account runs it)
    return str(script)


def one_line_change(tmp: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A git working copy at *tmp*/repo with a one-line change; the env to run git in it."""
    repo = tmp / "repo"
    repo.mkdir()
    genv = {**env, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
            "GIT_COMMITTER_EMAIL": "a@b", "GIT_CONFIG_NOSYSTEM": "1"}  # fmt: skip
    for argv in (["init", "-q"], ["add", "."], ["commit", "-qm", "base"]):
        if argv[0] == "add":
            (repo / "hello.c").write_text("int main(void) { return 0; }\n" * 50)
        subprocess.run(["git", *argv], cwd=repo, env=genv, check=True)
    (repo / "hello.c").write_text("int main(void) { return 1; }\n" + "int x;\n" * 49)
    return repo, genv


def forced_command_sshd(
    tmp: Path, key_line: str, jobdir: Jobdir, args: list[str], extra_config: list[str] = ()
) -> Sshd:
    """A started sshd whose key runs ``tryserver --jobdir J ARGS``, logging in to
    :func:`login_account` when run as root (tryserver then installed for it)."""
    account = login_account()
    tryserver_bin = str(BIN / "tryserver")
    if account is not None:
        import pwd

        user = pwd.getpwnam(account)
        os.chmod(tmp, 0o755)  # noqa: S103 (the login account reads the key files)
        # The venv's interpreter may live where that account cannot run it (~root): the
        # server side is installed as an admin would, for the system's python3.
        tryserver_bin = server_install(tmp / "server-install")
        for sub in ("", "tmp", "new", "cur"):
            os.chown(os.path.join(jobdir.path, sub), user.pw_uid, user.pw_gid)
    forced = shlex.join([tryserver_bin, "--jobdir", jobdir.path, *args])
    server = Sshd([f'restrict,command="{forced}" {key_line}'], directory=tmp / "sshd",
                  extra_config=list(extra_config))  # fmt: skip
    if account is not None:
        server.user = account
        # sshd reads authorized_keys as the user who logs in.
        os.chmod(server.dir, 0o755)  # noqa: S103 (sshd reads it as that account)
        os.chmod(server.authorized_keys_path, 0o644)
    return server.start()


def median_of(
    runs: int,
    argv: list[str],
    stdin_path: Path | None,
    env: dict[str, str],
    cwd: Path,
    jobdir: Jobdir,
) -> float:
    times = []
    for _ in range(runs):
        times.append(timed(argv, stdin_path, env, cwd))
        for name in os.listdir(jobdir.new):  # keep the jobdir small
            os.unlink(os.path.join(jobdir.new, name))
    return statistics.median(times)


def channel_seconds(runs: int, server: Sshd, key_path: str, known: Path, data: bytes,
                    jobdir: Jobdir) -> float:
    """Median time to connect, log in and upload *data* with tryssh's SSH code, in-process."""
    from tryssh.client.sshclient import SshOptions, connect
    from tryssh.client.transport import run_remote

    opts = SshOptions(host=server.host, port=server.port, user=server.user,
                      identity=key_path, known_hosts=str(known))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        with connect(opts) as conn:
            run_remote(conn, "tryserver", data)
        times.append(time.perf_counter() - start)
        for name in os.listdir(jobdir.new):
            os.unlink(os.path.join(jobdir.new, name))
    return statistics.median(times)


def run_split(where: Path, server: Sshd, key_path: str, known: Path, jobdir: Jobdir,
              env: dict[str, str], runs: int) -> dict[str, float]:
    """Median seconds of each step of ``tryssh try``, run one after the other in a fresh
    interpreter (the command itself connects while it reads and sizes the job)."""
    argv = [str(BIN / "python"), "-c", SPLIT, str(where), server.host, str(server.port),
            server.user, key_path, str(known), jobdir.path]  # fmt: skip
    splits = []
    for _ in range(runs):
        out = subprocess.run(argv, env=env, capture_output=True, check=True, timeout=300,
                             cwd=where if where.is_dir() else where.parent).stdout  # fmt: skip
        splits.append(json.loads(out))
        for name in os.listdir(jobdir.new):
            os.unlink(os.path.join(jobdir.new, name))
    return {k: statistics.median(s[k] for s in splits) for k in splits[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="small-job runs per client")
    parser.add_argument("--big-runs", type=int, default=3, help="64 MB runs per client")
    parser.add_argument("--big-mb", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="5 small runs, 1 big run of 16 MB")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.big_runs, args.big_mb = 5, 1, 16

    tmp = Path(tempfile.mkdtemp(prefix="tryssh-bench-"))
    server = None
    try:
        home = tmp / "home"
        (home / ".ssh").mkdir(parents=True)
        jobdir = Jobdir(str(tmp / "jobdir")).create()
        key = make_user_key(tmp, "key")
        max_size = (args.big_mb + 16) << 20
        server = forced_command_sshd(tmp, key.public_line, jobdir,
                                     ["--user", "alice", "--max-size", str(max_size)])  # fmt: skip
        known = write_known_hosts(home / ".ssh" / "known_hosts", server)
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(home)
        # Compiled bytecode is cached for every client alike (this environment may set
        # PYTHONDONTWRITEBYTECODE, which would make each run recompile uncached modules).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        work = tmp / "work"
        work.mkdir()

        small_diff = work / "small.diff"
        small_diff.write_bytes(diff_of(1024 - 300))
        job = Job("1-1", "main", "abc", 1, small_diff.read_bytes(), ["unit"])
        small_job = work / "small.job"
        small_job.write_bytes(encode_job(job))
        big_diff = work / "big.diff"
        big_diff.write_bytes(diff_of(args.big_mb << 20))
        big_job = work / "big.job"
        big_job.write_bytes(
            encode_job(Job("1-2", "main", "abc", 1, big_diff.read_bytes(), ["unit"]))
        )
        big_size = big_job.stat().st_size

        ssh_opts = client_options(server, key.private_path, known)
        openssh = [
            "/usr/bin/ssh",
            *ssh_opts,
            "-p",
            str(server.port),
            server.host,
            "tryserver",
            "--jobdir",
            jobdir.path,
        ]
        tryssh = [
            str(BIN / "tryssh"),
            "try",
            "-c",
            "ssh",
            "--host",
            server.host,
            "--port",
            str(server.port),
            "-u",
            server.user,
            "-i",
            key.private_path,
            "--known-hosts",
            str(known),
            "--jobdir",
            jobdir.path,
            "--baserev",
            "abc",
            "-b",
            "unit",
            "-q",
        ]
        buildbot = [
            str(BIN / "buildbot"),
            "try",
            "--connect=ssh",
            "--host",
            server.host,
            "--port",
            str(server.port),
            "-u",
            server.user,
            "--jobdir",
            jobdir.path,
            "--ssh",
            shlex.join(["/usr/bin/ssh", *ssh_opts]),
            "--diff",
            str(small_diff),
            "--baserev",
            "abc",
            "-b",
            "unit",
            "--buildbotbin",
            "buildbot",
        ]
        if shutil.which("buildbot", path=str(BIN)) is None:
            raise SystemExit("bench: buildbot is not installed in the venv")

        # Warm the page cache and the bytecode caches of every client once.
        timed([*tryssh, "--diff", str(small_diff)], None, env, work)
        timed(openssh, small_job, env, work)
        timed(buildbot, None, env, work)
        small = {
            "tryssh": median_of(
                args.runs, [*tryssh, "--diff", str(small_diff)], None, env, work, jobdir
            ),
            "openssh": median_of(args.runs, openssh, small_job, env, work, jobdir),
            "buildbot_try": median_of(args.runs, buildbot, None, env, work, jobdir),
        }
        big_t = {
            "tryssh": median_of(
                args.big_runs, [*tryssh, "--diff", str(big_diff)], None, env, work, jobdir
            ),
            "openssh": median_of(args.big_runs, openssh, big_job, env, work, jobdir),
        }
        channel_t = channel_seconds(args.big_runs, server, key.private_path, known,
                                    big_job.read_bytes(), jobdir)
        big_t["tryssh_channel"] = channel_t
        split = run_split(big_diff, server, key.private_path, known, jobdir, env, args.big_runs)
        big = {k: big_size / v / 1e6 for k, v in big_t.items()}  # MB/s
        # The whole command for a one-line change in a git working copy, and its split.
        repo, genv = one_line_change(tmp, env)
        one_line = [a for a in tryssh if a != "--baserev" and a != "abc"]
        small["tryssh, one-line git change"] = median_of(args.runs, one_line, None, genv, repo,
                                                         jobdir)  # fmt: skip
        one_line_split = run_split(repo, server, key.private_path, known, jobdir, genv, args.runs)
        small_ratio = small["tryssh"] / small["buildbot_try"]
        big_ratio = big["tryssh"] / big["openssh"]
        channel_ratio = big["tryssh_channel"] / big["openssh"]
        figures = {
            "small_job_bytes": small_job.stat().st_size,
            "small_seconds_median": small,
            "small_tryssh_vs_buildbot": small_ratio,
            "big_job_bytes": big_size,
            "big_seconds_median": big_t,
            "big_MBps": big,
            "big_tryssh_vs_openssh": big_ratio,
            "channel_tryssh_vs_openssh": channel_ratio,
            "tryssh_split_seconds": split,
            "one_line_split_seconds": one_line_split,
            "one_line_vs_openssh": small["tryssh, one-line git change"] / small["openssh"],
            "targets_met": small_ratio <= 0.5 and big_ratio >= 0.9 and channel_ratio >= 0.9,
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"small job ({figures['small_job_bytes']} bytes), median of {args.runs}:")
            for name, secs in small.items():
                print(f"  {name:13s} {secs * 1000:8.1f} ms")
            print(f"  tryssh / buildbot try = {small_ratio:.2f} (target <= 0.50)")
            print(f"  tryssh one-line change / OpenSSH ssh host tryserver < job = "
                  f"{figures['one_line_vs_openssh']:.2f} (issue 15's target, through serve: "
                  "<= 3)")  # fmt: skip
            print("  split of that command, in process (median): " + ", ".join(
                f"{k} {v * 1000:.1f} ms" for k, v in one_line_split.items() if k != "job_bytes"))
            print(f"big job ({big_size / 1e6:.1f} MB), median of {args.big_runs}:")
            for name, rate in big.items():
                print(f"  {name:13s} {rate:8.1f} MB/s ({big_t[name]:.2f} s)")
            print(f"  tryssh / OpenSSH throughput = {big_ratio:.2f} (target >= 0.90)")
            print(f"  tryssh's SSH channel alone / OpenSSH = {channel_ratio:.2f} (target >= 0.90)")
            print("  split of tryssh try, step by step in process (median): " + ", ".join(
                f"{k} {v * 1000:.0f} ms" for k, v in split.items() if k != "job_bytes"))
        return 0 if figures["targets_met"] else 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
