"""Benchmark results that come back: a live ``--wait`` against polling, and ``log --follow``.

In one run, against a real sshd whose key runs ``tryserver --config C --user alice`` and
against ``tryssh serve`` on the same config (the "consumer" is this script: it writes the
job records itself, exactly as the consumer does, so that the moment a result is recorded
is known):

1. Result latency: the time from the final record's write to the client showing it,
   median of ``--runs``: the live wait (``LiveWait``: one ``tryserver watch``) against the
   polling it replaces (``wait_for`` asking ``status`` every second over one connection).
2. Server cost of ``--developers`` developers waiting for a ``--build-seconds`` build:
   server CPU seconds (sshd and everything it ran, or the serve process) and audit lines,
   polling (before) against watching (after).
3. ``log --follow`` of a builder that writes ``--log-mb`` MB: the rate the client receives
   it (``tryssh log --follow --raw``) against ``ssh host cat bigfile`` through the same
   sshd (a second key without the forced command), and tryserver's peak RSS.

Targets (issue 9): live latency <= 100 ms (median); ``log --follow`` >= 0.5x ``ssh cat``;
server peak RSS < 40 MB. Usage: ``.venv/bin/python bench/bench_results.py [--runs N]
[--developers N] [--build-seconds S] [--log-mb MB] [--json]``. Exit status 1 if a target
is missed. Figures of the cost test are shown side by side, not judged.
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_tryserver import RSS_WRAPPER  # noqa: E402
from benchlib import serve_port  # noqa: E402
from sshd import Sshd, client_options, make_user_key, write_known_hosts  # noqa: E402

from tryssh.client.results import LiveWait  # noqa: E402
from tryssh.client.sshclient import Connection, SshOptions, connect  # noqa: E402
from tryssh.client.transport import Destination  # noqa: E402
from tryssh.client.wait import remote_query, wait_for  # noqa: E402
from tryssh.core.jobdir import Jobdir, unique_name  # noqa: E402
from tryssh.core.records import RecordStore, builder_entry, new_record  # noqa: E402

BIN = Path(sys.executable).parent


class Site:
    """A config, its jobdir and records, and the two doors to it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.jobdir = Jobdir(str(tmp / "jobdir")).create()
        self.key = make_user_key(tmp, "alice")
        self.plain_key = make_user_key(tmp, "plain")  # no forced command: `ssh host cat`
        self.config = tmp / "tryssh.toml"
        self.config.write_text(
            f'jobdir = "{self.jobdir.path}"\n[serve]\nlisten = "127.0.0.1:0"\n'
            # 20 developers connect at once from one address (sshd: MaxStartups below)
            'max_startups = "100:30:100"\nper_source_max_startups = 100\n'
            f'host_key = "{tmp / "serve_host_key"}"\n[builders.unit]\ncommand = ["true"]\n'
            f'[users.alice]\nkeys = ["{self.key.public_line}"]\nbuilders = ["unit"]\n'
        )
        self.store = RecordStore(str(Path(self.jobdir.path) / "state")).create()
        self.log_dir = Path(self.jobdir.path) / "logs"
        self.rss_file = tmp / "rss"
        (tmp / "rss_wrapper.py").write_text(RSS_WRAPPER)
        forced = shlex.join([sys.executable, "-S", str(tmp / "rss_wrapper.py"),
                             str(self.rss_file), str(BIN / "tryserver"), "--config",
                             str(self.config), "--user", "alice"])  # fmt: skip
        self.sshd = Sshd([f'restrict,command="{forced}" {self.key.public_line}',
                          self.plain_key.public_line], directory=tmp / "sshd",
                         extra_config=["MaxStartups 100"]).start()  # fmt: skip
        self.known = write_known_hosts(tmp / "known_hosts", self.sshd)
        self.serve: subprocess.Popen[str] | None = None
        self.serve_port = 0

    def start_serve(self) -> None:
        self.serve = subprocess.Popen([str(BIN / "tryssh"), "serve", "--config", str(self.config)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True)  # fmt: skip
        self.serve_port = serve_port(self.serve)
        pub = (self.tmp / "serve_host_key.pub").read_text().split()
        with open(self.known, "a") as f:
            f.write(f"[127.0.0.1]:{self.serve_port} {pub[0]} {pub[1]}\n")

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.terminate()
            self.serve.wait(30)
        self.sshd.stop()

    def options(self, door: str) -> SshOptions:
        port = self.sshd.port if door == "sshd" else self.serve_port
        user = self.sshd.user if door == "sshd" else "alice"
        return SshOptions(host="127.0.0.1", port=port, user=user, identity=self.key.private_path,
                          known_hosts=str(self.known), ssh_config="/dev/null", agent=False,
                          timeout=60, quiet=True)  # fmt: skip

    def destination(self, door: str) -> Destination:
        return Destination(connect="ssh", ssh=self.options(door), tryserver_cmd="tryserver")

    def connect(self, door: str) -> Connection:
        return connect(self.options(door))

    def running_job(self) -> str:
        name = unique_name()
        log = self.log_dir / name / "unit.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_bytes(b"")
        self.store.write(new_record(name, who="alice", state="running", builders={
            "unit": builder_entry(state="running", log=str(log))}))  # fmt: skip
        return name

    def finish(self, name: str) -> None:
        record = self.store.read(name)
        assert record is not None
        record["builders"]["unit"].update(state="done", result="success", exit=0)
        record["state"] = "success"
        self.store.write(record)

    def audit_lines(self) -> int:
        path = Path(self.jobdir.path) / "audit.log"
        return len(path.read_bytes().splitlines()) if path.exists() else 0

    def server_cpu(self, door: str) -> float:
        """CPU seconds of the door's server so far (for sshd: its reaped children too)."""
        if door == "sshd":
            assert self.sshd.proc is not None
            pid = self.sshd.proc.pid
        else:
            assert self.serve is not None
            pid = self.serve.pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")


# -- waiting clients ------------------------------------------------------------------------


def live_waiter(site: Site, door: str, job: str, seen: threading.Event,
                done: Callable[[], None]) -> Callable[[], None]:  # fmt: skip
    dest = site.destination(door)

    def echo(line: str) -> None:
        if f"job {job}: running" in line:
            seen.set()
        if f"job {job}: success" in line:
            done()

    def run() -> None:
        waiter = LiveWait(dest, lambda: site.connect(door), job, echo, tail_lines=0)
        try:
            waiter.run()
        finally:
            if waiter.conn is not None:
                waiter.conn.close()

    return run


def polling_waiter(site: Site, door: str, job: str, seen: threading.Event,
                   done: Callable[[], None]) -> Callable[[], None]:  # fmt: skip
    dest = site.destination(door)

    def run() -> None:
        with site.connect(door) as conn:

            def fetch() -> dict[str, Any]:
                record = remote_query(conn, dest, "status", job)
                seen.set()
                return record

            wait_for(fetch, None, None, interval=1.0)  # the --wait tryssh had before
            done()

    return run


def latency(site: Site, door: str, make: Callable[..., Callable[[], None]], runs: int) -> float:
    """Median seconds from the final record's write to the client knowing it."""
    samples = []
    for _ in range(runs):
        job = site.running_job()
        seen = threading.Event()
        shown: list[float] = []
        thread = threading.Thread(
            target=make(site, door, job, seen, lambda s=shown: s.append(time.perf_counter()))
        )
        thread.start()
        if not seen.wait(60):
            raise SystemExit(f"bench: the {door} client never saw the job running")
        time.sleep(0.3)  # mid-wait, not right after a poll
        start = time.perf_counter()
        site.finish(job)
        thread.join(60)
        if not shown:
            raise SystemExit(f"bench: the {door} client never showed the result")
        samples.append(shown[0] - start)
    return statistics.median(samples)


def waiting_cost(site: Site, door: str, make: Callable[..., Callable[[], None]],
                 developers: int, seconds: float) -> dict[str, float]:  # fmt: skip
    job = site.running_job()
    cpu0, audit0 = site.server_cpu(door), site.audit_lines()
    threads = []
    for _ in range(developers):
        seen = threading.Event()
        thread = threading.Thread(target=make(site, door, job, seen, lambda: None))
        thread.start()
        threads.append(thread)
    time.sleep(seconds)  # the build
    site.finish(job)
    for thread in threads:
        thread.join(120)
    time.sleep(0.5)  # let sshd reap its last sessions
    return {"cpu_seconds": site.server_cpu(door) - cpu0,
            "audit_lines": site.audit_lines() - audit0}  # fmt: skip


# -- log --follow ---------------------------------------------------------------------------


def follow_rate(site: Site, door: str, size: int) -> tuple[float, int | None]:
    """(MB/s received by ``tryssh log --follow --raw``, tryserver's peak RSS in KB)."""
    job = site.running_job()
    log = site.log_dir / job / "unit.log"
    opts = site.options(door)
    argv = [str(BIN / "tryssh"), "log", job, "-b", "unit", "--follow", "--raw", "--host",
            "127.0.0.1", "--port", str(opts.port), "-u", str(opts.user), "-i",
            site.key.private_path, "--known-hosts", str(site.known),
            "--tryserver-cmd", "tryserver"]  # fmt: skip
    site.rss_file.unlink(missing_ok=True)
    start = time.perf_counter()
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunk = b"x" * 1023 + b"\n"
    block = chunk * 1024
    with open(log, "ab") as f:  # the builder writing its log
        for _ in range(size // len(block)):
            f.write(block)
    site.finish(job)
    received = 0
    assert client.stdout is not None
    while data := client.stdout.read(1 << 20):
        received += len(data)
    client.wait(300)
    elapsed = time.perf_counter() - start
    if client.returncode != 0 or received != size:
        raise SystemExit(f"bench: log --follow got {received} of {size} bytes "
                         f"(exit {client.returncode}): {client.stderr.read()!r}")  # type: ignore[union-attr]
    rss = None
    if door == "sshd" and site.rss_file.exists():
        rss = int(site.rss_file.read_text().split()[0])
    return size / elapsed / 1e6, rss


def cat_rate(site: Site, size: int) -> float:
    big = site.tmp / "bigfile"
    with open(big, "wb") as f:
        f.write((b"x" * 1023 + b"\n") * (size // 1024))
    opts = client_options(site.sshd, site.plain_key.private_path, site.known)
    argv = ["/usr/bin/ssh", *opts, "-p", str(site.sshd.port), site.sshd.host, "cat", str(big)]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or len(result.stdout) != size:
        raise SystemExit(f"bench: ssh cat failed: {result.stderr!r}")
    return size / elapsed / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="latency runs per client")
    parser.add_argument("--developers", type=int, default=20)
    parser.add_argument("--build-seconds", type=float, default=60.0)
    parser.add_argument("--log-mb", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tryssh-bench-"))
    site = None
    try:
        site = Site(tmp)
        site.start_serve()
        figures: dict[str, Any] = {"latency_seconds": {}, "waiting_cost": {}, "follow": {}}
        for door in ("sshd", "serve"):
            figures["latency_seconds"][door] = {
                "polling (before)": latency(site, door, polling_waiter, args.runs),
                "watch (after)": latency(site, door, live_waiter, args.runs),
            }
        for door in ("sshd", "serve"):
            figures["waiting_cost"][door] = {
                "polling (before)": waiting_cost(site, door, polling_waiter, args.developers,
                                                 args.build_seconds),
                "watch (after)": waiting_cost(site, door, live_waiter, args.developers,
                                              args.build_seconds),
            }  # fmt: skip
        size = args.log_mb << 20
        cat = cat_rate(site, size)
        sshd_rate, rss = follow_rate(site, "sshd", size)
        serve_rate, _ = follow_rate(site, "serve", size)
        figures["follow"] = {"ssh cat MB/s": cat, "tryssh log --follow (sshd) MB/s": sshd_rate,
                             "tryssh log --follow (serve) MB/s": serve_rate,
                             "ratio (sshd) vs ssh cat": sshd_rate / cat,
                             "tryserver peak RSS KB": rss}  # fmt: skip
        live = [figures["latency_seconds"][d]["watch (after)"] for d in ("sshd", "serve")]
        figures["targets_met"] = (max(live) <= 0.1 and sshd_rate / cat >= 0.5
                                  and rss is not None and rss < 40 * 1024)  # fmt: skip
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            report(figures, args)
        return 0 if figures["targets_met"] else 1
    finally:
        if site is not None:
            site.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"result latency (final record written -> client shows it), median of {args.runs}:")
    for door, cases in figures["latency_seconds"].items():
        before, after = cases["polling (before)"], cases["watch (after)"]
        print(f"  {door:6s} polling {before * 1000:7.1f} ms   watch {after * 1000:7.1f} ms"
              f"   ratio {after / before:.3f} (target: watch <= 100 ms)")  # fmt: skip
    print(f"server cost of {args.developers} developers waiting for a "
          f"{args.build_seconds:g} s build:")
    for door, cases in figures["waiting_cost"].items():
        before, after = cases["polling (before)"], cases["watch (after)"]
        print(f"  {door:6s} polling {before['cpu_seconds']:6.2f} CPU s "
              f"{before['audit_lines']:5d} audit lines   watch {after['cpu_seconds']:6.2f} "
              f"CPU s {after['audit_lines']:5d} audit lines")  # fmt: skip
    follow = figures["follow"]
    print(f"log --follow of a builder writing {args.log_mb} MB:")
    print(f"  ssh host cat bigfile        {follow['ssh cat MB/s']:7.1f} MB/s")
    print(f"  tryssh log --follow (sshd)  {follow['tryssh log --follow (sshd) MB/s']:7.1f} MB/s"
          f"   ratio {follow['ratio (sshd) vs ssh cat']:.2f} (target >= 0.50)")  # fmt: skip
    print(f"  tryssh log --follow (serve) {follow['tryssh log --follow (serve) MB/s']:7.1f} MB/s")
    rss = follow["tryserver peak RSS KB"]
    print(f"  tryserver peak RSS          {rss / 1024 if rss else float('nan'):7.1f} MB"
          " (target < 40 MB)")


if __name__ == "__main__":
    sys.exit(main())
