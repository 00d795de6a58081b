"""Benchmark the client against OpenSSH and Buildbot's ``buildbot try --connect=ssh``.

In one run, against one real sshd on 127.0.0.1 whose key runs the forced command
``tryserver --jobdir J --user alice``:

1. the wall time to submit a 1 KB job: ``tryssh try -c ssh --diff`` vs ``ssh host tryserver
   < job`` (OpenSSH) vs ``buildbot try --connect=ssh --diff`` (medians);
2. the throughput of a 64 MB job: ``tryssh try`` vs OpenSSH's ``ssh host tryserver < job``.

Targets (issue 3): small submit <= 0.5x buildbot try's time; 64 MB >= 0.6x OpenSSH's
throughput. Usage: ``.venv/bin/python bench/bench_client.py [--runs N] [--big-runs N]
[--big-mb MB] [--json]``. Exit status 1 if a target is missed.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="small-job runs per client")
    parser.add_argument("--big-runs", type=int, default=3, help="64 MB runs per client")
    parser.add_argument("--big-mb", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tryssh-bench-"))
    server = None
    try:
        home = tmp / "home"
        (home / ".ssh").mkdir(parents=True)
        jobdir = Jobdir(str(tmp / "jobdir")).create()
        key = make_user_key(tmp, "key")
        max_size = (args.big_mb + 16) << 20
        forced = shlex.join(
            [
                str(BIN / "tryserver"),
                "--jobdir",
                jobdir.path,
                "--user",
                "alice",
                "--max-size",
                str(max_size),
            ]
        )
        server = Sshd(
            [f'restrict,command="{forced}" {key.public_line}'], directory=tmp / "sshd"
        ).start()
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
        big = {k: big_size / v / 1e6 for k, v in big_t.items()}  # MB/s
        small_ratio = small["tryssh"] / small["buildbot_try"]
        big_ratio = big["tryssh"] / big["openssh"]
        figures = {
            "small_job_bytes": small_job.stat().st_size,
            "small_seconds_median": small,
            "small_tryssh_vs_buildbot": small_ratio,
            "big_job_bytes": big_size,
            "big_seconds_median": big_t,
            "big_MBps": big,
            "big_tryssh_vs_openssh": big_ratio,
            "targets_met": small_ratio <= 0.5 and big_ratio >= 0.6,
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"small job ({figures['small_job_bytes']} bytes), median of {args.runs}:")
            for name, secs in small.items():
                print(f"  {name:13s} {secs * 1000:8.1f} ms")
            print(f"  tryssh / buildbot try = {small_ratio:.2f} (target <= 0.50)")
            print(f"big job ({big_size / 1e6:.1f} MB), median of {args.big_runs}:")
            for name, rate in big.items():
                print(f"  {name:13s} {rate:8.1f} MB/s ({big_t[name]:.2f} s)")
            print(f"  tryssh / OpenSSH throughput = {big_ratio:.2f} (target >= 0.60)")
        return 0 if figures["targets_met"] else 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
