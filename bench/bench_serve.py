"""Benchmark ``tryssh serve`` under concurrent OpenSSH clients, next to sshd + tryserver.

1. *Concurrency*: C = 1, 10, 50 and 100 OpenSSH clients (``ssh host tryserver < job``, a
   1 KB v5 job, each client a real ssh process) submit jobs at once, against ``tryssh
   serve`` and against OpenSSH's sshd running the forced command ``tryserver``: jobs/s,
   p50 and p99 of the submit time, the server's peak RSS (serve's ``VmHWM``; for sshd the
   listener's, its per-connection processes come and go) and the server's CPU time per job
   (serve's user+system; sshd's listener with its reaped children: the per-connection
   sshd and tryserver processes). The baseline for each C is sshd + tryserver.
2. *One-line change*: the whole ``tryssh try`` of a one-line change in a git working copy
   into serve, against OpenSSH's ``ssh host tryserver < job`` into sshd. Target (issue 15):
   at most 3x.
3. *Big uploads*: 8 concurrent 64 MiB v5 jobs into a fresh serve: its peak RSS. Target
   (issue 15): at most 100 MB.
4. *One big try*: ``tryssh try --diff`` of a 64 MiB patch into serve, against OpenSSH's
   ``ssh host tryserver < job`` sending the same job. Target (issue 15): at least 0.9x.

As in bench_client, sshd logs in to the /bin/sh account ``tryssh-bench`` when run as root.
Usage: ``.venv/bin/python bench/bench_serve.py [--quick] [--json]`` (--quick: C = 1 and 10,
8 uploads of 16 MiB). Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_client import diff_of, forced_command_sshd, one_line_change  # noqa: E402
from bench_tryserver import big_json_job  # noqa: E402
from benchlib import print_targets, serve_port  # noqa: E402
from sshd import client_options, make_user_key, write_known_hosts  # noqa: E402

from tryssh.core.jobdir import Jobdir  # noqa: E402
from tryssh.core.jobfile import Job, encode_job  # noqa: E402

BIN = Path(sys.executable).parent
MIB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped children
    return ticks / TICK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Serve:
    """A ``tryssh serve`` process with one user, alice."""

    def __init__(self, root: Path, key_line: str, max_job: int) -> None:
        self.jobdir = Jobdir(str(root / "jobdir")).create()
        config = root / "tryssh.toml"
        config.write_text(
            f'jobdir = "{self.jobdir.path}"\nmax_job_size = {max_job}\n'
            f'[serve]\nlisten = "127.0.0.1:0"\nhost_key = "{root / "hostkey"}"\n'
            "max_connections = 256\n"
            # 100 clients at once from one address: sshd's side gets MaxStartups 400 too
            'max_startups = "400:30:400"\nper_source_max_startups = 400\n'
            '[builders.unit]\ncommand = ["true"]\n'
            '[builders.b1]\ncommand = ["true"]\n'  # the builder bench_tryserver's big jobs name
            f'[users.alice]\nkeys = ["{key_line}"]\nbuilders = ["unit", "b1"]\n'
        )
        self.root = root
        self.proc = subprocess.Popen([str(BIN / "tryssh"), "serve", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)  # fmt: skip
        self.port = serve_port(self.proc)
        keytype, blob = (root / "hostkey.pub").read_text().split()[:2]
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {keytype} {blob}\n")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def ssh_argv(port: int, user: str, key: str, known: Path) -> list[str]:
    return ["/usr/bin/ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "UpdateHostKeys=no", "-p", str(port), "-l", user, "127.0.0.1",
            "tryserver"]  # fmt: skip


def storm(argv: list[str], job: Path, clients: int, per_client: int) -> list[float]:
    """*clients* threads, each running *per_client* submissions one after the other."""
    times: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        for _ in range(per_client):
            with open(job, "rb") as stdin:
                start = time.perf_counter()
                result = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=600,
                                        check=False)  # fmt: skip
                elapsed = time.perf_counter() - start
            with lock:
                if result.returncode != 0:
                    failures.append(result.stderr.decode(errors="replace")[-300:])
                times.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"bench: {len(failures)} submissions failed: {failures[0]}")
    return times


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def clean(jobdir: Jobdir) -> None:
    for name in os.listdir(jobdir.new):
        os.unlink(os.path.join(jobdir.new, name))


def concurrency(levels: list[int], tmp: Path, key) -> list[dict]:  # type: ignore[no-untyped-def]
    job = tmp / "small.job"
    job.write_bytes(encode_job(Job("1-1", "main", "abc", 1, b"--- a/f\n+++ b/f\n" * 40, ["unit"])))
    serve = Serve(tmp / "serve", key.public_line, 64 * MIB)
    # sshd + tryserver, the baseline
    jobdir = Jobdir(str(tmp / "sshd-jobdir")).create()
    sshd = forced_command_sshd(tmp, key.public_line, jobdir, ["--user", "alice"],
                               ["MaxStartups 400", "MaxSessions 400"])  # fmt: skip
    known = write_known_hosts(tmp / "sshd_known_hosts", sshd)
    doors = {
        "tryssh serve": (ssh_argv(serve.port, "alice", key.private_path, serve.known_hosts),
                         serve.proc.pid, False, serve.jobdir),
        "sshd + tryserver": ([*(["/usr/bin/ssh", *client_options(sshd, key.private_path, known)]),
                              "-p", str(sshd.port), sshd.host, "tryserver"],
                             sshd.proc.pid if sshd.proc else 0, True, jobdir),
    }  # fmt: skip
    rows = []
    try:
        for argv, _pid, _children, jd in doors.values():  # warm up
            storm(argv, job, 2, 2)
            clean(jd)
        one_line(tmp, key, serve, doors["sshd + tryserver"][0], job, rows)
        for clients in levels:
            per_client = max(2, 60 // clients)
            for door, (argv, pid, children, jd) in doors.items():
                cpu0 = cpu_seconds(pid, children)
                start = time.perf_counter()
                times = storm(argv, job, clients, per_client)
                elapsed = time.perf_counter() - start
                cpu = cpu_seconds(pid, children) - cpu0
                clean(jd)
                rows.append({"door": door, "clients": clients, "jobs": len(times),
                             "jobs_per_s": len(times) / elapsed,
                             "p50_ms": percentile(times, 50) * 1000,
                             "p99_ms": percentile(times, 99) * 1000,
                             "peak_rss_mb": peak_rss_mb(pid),
                             "cpu_ms_per_job": cpu / len(times) * 1000})  # fmt: skip
    finally:
        serve.stop()
        sshd.stop()
    return rows


def one_line(tmp: Path, key, serve: Serve, openssh: list[str], job: Path, rows: list) -> None:  # type: ignore[no-untyped-def]
    """The whole ``tryssh try`` of a one-line change into serve, against OpenSSH's ``ssh
    host tryserver < job`` into sshd (issue 15's target: at most 3x)."""
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(tmp)
    repo, genv = one_line_change(tmp, env)
    tryssh = [str(BIN / "tryssh"), "try", "-c", "ssh", "--host", "127.0.0.1", "--port",
              str(serve.port), "-u", "alice", "-i", key.private_path, "--known-hosts",
              str(serve.known_hosts), "-b", "unit", "-q"]  # fmt: skip
    times: dict[str, list[float]] = {"tryssh try into serve": [], "ssh into sshd": []}
    for attempt in range(8):
        for label, argv, stdin in (("tryssh try into serve", tryssh, None),
                                   ("ssh into sshd", openssh, job)):  # fmt: skip
            with open(stdin or os.devnull, "rb") as f:
                start = time.perf_counter()
                subprocess.run(argv, stdin=f, cwd=repo, env=genv, check=True, capture_output=True,
                               timeout=120)  # fmt: skip
                if attempt:  # the first round warms the caches
                    times[label].append(time.perf_counter() - start)
    for label, values in times.items():
        rows.append({"door": label, "clients": "1-line", "seconds": statistics.median(values)})


def big_uploads(tmp: Path, key, count: int, size_mb: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    job = tmp / "big.job"
    big_json_job(job, size_mb * MIB, 5)
    serve = Serve(tmp / "serve-big", key.public_line, (size_mb + 16) * MIB)
    try:
        argv = ssh_argv(serve.port, "alice", key.private_path, serve.known_hosts)
        start = time.perf_counter()
        storm(argv, job, count, 1)
        elapsed = time.perf_counter() - start
        delivered = len(os.listdir(serve.jobdir.new))
        if delivered != count:
            raise SystemExit(f"bench: {delivered} of {count} big jobs delivered")
        return {"uploads": count, "job_mb": job.stat().st_size / 1e6, "seconds": elapsed,
                "peak_rss_mb": peak_rss_mb(serve.proc.pid)}  # fmt: skip
    finally:
        serve.stop()
        job.unlink()


def big_try(tmp: Path, key, size_mb: int, runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """``tryssh try --diff`` of a *size_mb* MiB patch into serve, against OpenSSH's ``ssh
    host tryserver < job`` sending the job tryssh would build (issue 15: >= 0.9x)."""
    diff = tmp / "big.diff"
    diff.write_bytes(diff_of(size_mb * MIB))
    job = tmp / "big-try.job"
    job.write_bytes(encode_job(Job("1-2", "main", "abc", 1, diff.read_bytes(), ["unit"])))
    serve = Serve(tmp / "serve-try", key.public_line, (size_mb + 16) * MIB)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(tmp)
    tryssh = [str(BIN / "tryssh"), "try", "-c", "ssh", "--host", "127.0.0.1", "--port",
              str(serve.port), "-u", "alice", "-i", key.private_path, "--known-hosts",
              str(serve.known_hosts), "-b", "unit", "-q", "--baserev", "abc", "--diff",
              str(diff)]  # fmt: skip
    openssh = ssh_argv(serve.port, "alice", key.private_path, serve.known_hosts)
    times: dict[str, list[float]] = {"tryssh try --diff": [], "ssh host tryserver < job": []}
    try:
        for attempt in range(runs + 1):
            for label, argv, stdin in (("tryssh try --diff", tryssh, None),
                                       ("ssh host tryserver < job", openssh, job)):  # fmt: skip
                with open(stdin or os.devnull, "rb") as f:
                    start = time.perf_counter()
                    subprocess.run(argv, stdin=f, cwd=tmp, env=env, check=True,
                                   capture_output=True, timeout=300)  # fmt: skip
                    if attempt:  # the first round warms the caches
                        times[label].append(time.perf_counter() - start)
                clean(serve.jobdir)
    finally:
        serve.stop()
        diff.unlink()
    size = job.stat().st_size
    job.unlink()
    rates = {label: size / statistics.median(v) / 1e6 for label, v in times.items()}
    return {"job_mb": size / 1e6, "runs": runs, **rates,
            "ratio": rates["tryssh try --diff"] / rates["ssh host tryserver < job"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [1, 10] if args.quick else [1, 10, 50, 100]
    big_mb = 16 if args.quick else 64
    tmp = Path(tempfile.mkdtemp(prefix="tryssh-bench-serve-"))
    started = time.monotonic()
    try:
        key = make_user_key(tmp, "key")
        rows = concurrency(levels, tmp, key)
        big = big_uploads(tmp, key, 8, big_mb)
        upload = big_try(tmp, key, big_mb, 1 if args.quick else 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    targets = {f"serve, 8 concurrent {big_mb} MiB v5 uploads: peak RSS <= 100 MB":
               big["peak_rss_mb"] <= 100}  # fmt: skip
    targets[f"tryssh try --diff of {big_mb} MiB into serve >= 0.9x OpenSSH sending the job"] = (
        upload["ratio"] >= 0.9
    )
    one = {r["door"]: r["seconds"] for r in rows if r["clients"] == "1-line"}
    rows = [r for r in rows if r["clients"] != "1-line"]
    one_ratio = one["tryssh try into serve"] / one["ssh into sshd"]
    targets["one-line change into serve <= 3x ssh host tryserver < job"] = one_ratio <= 3
    if args.json:
        print(json.dumps({"concurrency": rows, "one_line": one, "big_uploads": big,
                          "big_try": upload, "targets": targets}, indent=2))  # fmt: skip
        return 0 if all(targets.values()) else 1
    print(f"serve benchmark: {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s; "
          "baseline: sshd + tryserver at the same concurrency")  # fmt: skip
    print(f"  {'door':<18} {'clients':>7} {'jobs':>5} {'jobs/s':>7} {'ratio':>6} {'p50':>9} "
          f"{'p99':>9} {'peak RSS':>9} {'CPU/job':>9}")  # fmt: skip
    base = {r["clients"]: r for r in rows if r["door"] == "sshd + tryserver"}
    for r in rows:
        ratio = r["jobs_per_s"] / base[r["clients"]]["jobs_per_s"]
        print(f"  {r['door']:<18} {r['clients']:>7} {r['jobs']:>5} {r['jobs_per_s']:7.1f} "
              f"x{ratio:5.2f} {r['p50_ms']:6.0f} ms {r['p99_ms']:6.0f} ms "
              f"{r['peak_rss_mb']:6.1f} MB {r['cpu_ms_per_job']:6.1f} ms")  # fmt: skip
    print(f"  one-line change, whole command: tryssh try into serve "
          f"{one['tryssh try into serve'] * 1000:.0f} ms, ssh host tryserver < job into sshd "
          f"{one['ssh into sshd'] * 1000:.0f} ms: x{one_ratio:.2f}")  # fmt: skip
    print(f"  8 concurrent {big['job_mb']:.0f} MB v5 uploads into serve: {big['seconds']:.1f} s, "
          f"peak RSS {big['peak_rss_mb']:.1f} MB")  # fmt: skip
    print(f"  one {upload['job_mb']:.0f} MB try into serve (median of {upload['runs']}): "
          f"tryssh try --diff {upload['tryssh try --diff']:.0f} MB/s, ssh host tryserver < job "
          f"{upload['ssh host tryserver < job']:.0f} MB/s: x{upload['ratio']:.2f}")  # fmt: skip
    return print_targets(targets)


if __name__ == "__main__":
    sys.exit(main())
