"""Benchmark the history: ``tryserver jobs``, gc and resume at 10^2 .. 10^5 records.

For each size N, a state directory holds N final records of 100 users, 20 of them of
alice (spread over the history), and ``cur/`` holds their N job files, as a long-lived
master has them. Measured, median of ``--runs``:

1. ``tryserver --jobdir J --user alice jobs`` (the whole command) and the listing alone
   (``recent_jobs``, in process); the baseline is the same listing without the per-user
   index (the full scan every version before it did), in the same run.
2. gc with nothing old enough to remove (the hourly case): the time of a whole run, and
   the time the consumer's loop is held by it (it runs in a thread: starting it).
3. resume at start (``Consumer.resume``) with no job to take over.

Target (issue 15): ``tryserver jobs`` for alice at 10^5 records <= 2x its time at 10^2;
gc never holds the consumer's loop for more than 50 ms. Usage: ``.venv/bin/python
bench/bench_history.py [--runs N] [--quick] [--json]``; --quick stops at 10^4.
Exit status 1 if a target is missed.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import print_targets  # noqa: E402

from tryssh.core.records import RecordStore, new_record  # noqa: E402
from tryssh.server.config import config_from_dict  # noqa: E402
from tryssh.server.consumer import Consumer  # noqa: E402
from tryssh.server.queries import recent_jobs  # noqa: E402

BIN = Path(sys.executable).parent
FINISHED = "2026-11-30T12:00:00.000000Z"


def populate(base: Path, count: int) -> None:
    """*count* final records (written directly: fsyncs would take minutes) and job files."""
    jobdir = base / "jobdir"
    for sub in ("tmp", "new", "cur"):
        (jobdir / sub).mkdir(parents=True)
    state = jobdir / "state"
    (state / "active").mkdir(parents=True)
    alice_every = max(1, count // 20)
    start = 1_790_000_000
    for i in range(count):
        name = f"{start + i}.M{i % 1_000_000:06d}P1Q{i}R0a1b2c3d.bench"
        who = "alice" if i % alice_every == alice_every - 1 else f"user{i % 100}"
        record = new_record(name, who=who, state="success", branch="main",
                            finished=FINISHED, updated=FINISHED)  # fmt: skip
        path = state / f"{name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        (jobdir / "cur" / name).write_bytes(b"")
    RecordStore(str(state)).create()  # builds the per-user index once, as an upgrade does


def median_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def command_times(bases: dict[int, Path], runs: int) -> dict[int, float]:
    """``tryserver jobs`` at every size, the runs interleaved so that a burst of load on a
    shared machine hits every size alike."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    times: dict[int, list[float]] = {n: [] for n in bases}
    for attempt in range(runs + 1):
        for n, base in bases.items():
            argv = [str(BIN / "tryserver"), "--jobdir", str(base / "jobdir"), "--user", "alice",
                    "jobs"]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env=env, timeout=300)
            if attempt:  # the first round warms bytecode and the page cache
                times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def measure(base: Path, runs: int) -> dict[str, float]:
    jobdir = base / "jobdir"
    state = str(jobdir / "state")
    config = config_from_dict({"jobdir": str(jobdir), "keep_days": 30,
                               "builders": {"unit": {"command": ["true"]}}},
                              str(base / "c.toml"))  # fmt: skip
    figures: dict[str, float] = {}
    assert len(recent_jobs(state, "alice", 20)) == 20
    figures["jobs_listing"] = median_of(runs, lambda: recent_jobs(state, "alice", 20))
    index = jobdir / "state" / "by-user"
    hidden = jobdir / "state" / "by-user.hidden"
    index.rename(hidden)  # the baseline: the full scan, as before the index
    try:
        figures["jobs_listing_full_scan"] = median_of(
            max(1, runs // 2), lambda: recent_jobs(state, "alice", 20)
        )
    finally:
        hidden.rename(index)

    from tryssh.server.gc import collect

    figures["gc_run"] = median_of(max(1, runs // 2), lambda: collect(config, 30))
    consumer = Consumer(config, use_inotify=False)

    def hold() -> None:
        consumer._last_gc = None
        consumer._maybe_gc()  # what the loop pays: starting the thread

    figures["gc_loop_hold"] = median_of(runs, hold)
    for thread in consumer._extra_threads:
        thread.join()
    figures["resume"] = median_of(max(1, runs // 2), consumer.resume)
    consumer._pool.shutdown(wait=True)
    consumer.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="stop at 10^4 records, 3 runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [100, 1000, 10_000] if args.quick else [100, 1000, 10_000, 100_000]
    runs = 3 if args.quick else args.runs
    tmp = Path(tempfile.mkdtemp(prefix="tryssh-bench-history-"))
    started = time.monotonic()
    try:
        bases = {n: tmp / str(n) for n in sizes}
        for n, base in bases.items():
            populate(base, n)
        commands = command_times(bases, runs)
        results = {n: {"jobs_command": commands[n], **measure(base, runs)}
                   for n, base in bases.items()}  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    small, big = results[sizes[0]], results[sizes[-1]]
    targets = {
        f"tryserver jobs at {sizes[-1]} records <= 2x its time at {sizes[0]}":
            big["jobs_command"] <= 2 * small["jobs_command"],
        "gc holds the consumer's loop <= 50 ms": all(
            r["gc_loop_hold"] <= 0.05 for r in results.values()
        ),
    }  # fmt: skip
    if args.json:
        print(json.dumps({"results": results, "targets": targets}, indent=2))
        return 0 if all(targets.values()) else 1
    print(f"history benchmark: {os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s, "
          f"median of {runs} runs")  # fmt: skip
    cols = ("jobs_command", "jobs_listing", "jobs_listing_full_scan", "gc_run", "gc_loop_hold",
            "resume")  # fmt: skip
    heads = ("tryserver jobs", "listing", "full scan", "gc run", "gc holds", "resume")
    print(f"  {'records':>8} " + " ".join(f"{h:>14}" for h in heads))
    for n, figures in results.items():
        print(f"  {n:>8} " + " ".join(f"{figures[c] * 1000:11.1f} ms" for c in cols))
    print(f"  ratios at {sizes[-1]} vs {sizes[0]}: tryserver jobs "
          f"x{big['jobs_command'] / small['jobs_command']:.2f}, listing "
          f"x{big['jobs_listing'] / small['jobs_listing']:.2f}; listing vs the full scan at "
          f"{sizes[-1]}: x{big['jobs_listing'] / big['jobs_listing_full_scan']:.3f}")  # fmt: skip
    return print_targets(targets)


if __name__ == "__main__":
    sys.exit(main())
