"""By hand (not run by bench/run): patch_stats against the line-by-line one it replaced.

Times both (median of --runs) on bench_dry_run's diff (its repository built with its
``make_repo`` into --repo, kept there for the next run), on ``git log -p -n 300`` of this
checkout (real code: many small hunks with context, commit messages between) and on any diff
FILE given. The old implementation is tests/test_patchstats.py's reference.

Usage: ``.venv/bin/python bench/time_patchstats.py [--runs N] [--repo DIR] [FILE ...]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_dry_run import GIT_ENV, make_repo  # noqa: E402
from test_patchstats import _reference_patch_stats  # noqa: E402

from tryssh.client.patchstats import patch_stats  # noqa: E402


def median_ms(func: Callable[[bytes], object], patch: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func(patch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--repo", type=Path, default=Path("/tmp/tryssh-patchstats-repo"))
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    env = {**os.environ, **GIT_ENV}
    if not (args.repo / ".git").is_dir():
        make_repo(args.repo, 20000, env)
    git = ["git", "-c", "core.quotepath=off"]
    patches = {
        "bench_dry_run's git diff HEAD": subprocess.run(
            [*git, "diff", "HEAD"], cwd=args.repo, env=env, capture_output=True, check=True
        ).stdout,
        "git log -p -n 300 of this checkout": subprocess.run(
            [*git, "log", "-p", "-n", "300"], cwd=HERE, env=env, capture_output=True, check=True
        ).stdout,
    }
    patches.update((str(path), path.read_bytes()) for path in args.files)
    for name, patch in patches.items():
        if patch_stats(patch) != _reference_patch_stats(patch):
            print(f"{name}: DIFFERENT RESULTS")
            return 1
        old = median_ms(_reference_patch_stats, patch, args.runs)
        new = median_ms(patch_stats, patch, args.runs)
        hunks = patch.count(b"\n@@ ")
        print(f"{name} ({len(patch) / 1e6:.1f} MB, {hunks} hunks): "
              f"old {old:.1f} ms, new {new:.1f} ms, {old / new:.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
