"""Benchmark the forced command ``tryserver`` against baselines measured in the same run.

1. Cold start: the wall time of one ``tryserver --jobdir J --user alice < job`` delivering a
   1 KB job (median of ``--runs``), against ``python3 -c pass`` (the system python3 and the
   venv's python) and against Buildbot's own ``buildbot tryserver --jobdir J``. tryserver is
   measured twice: as the venv has it (an editable install, whose import hook every python
   start in the venv pays for) and as ``pip install .`` installs it (a copy of the package
   and pip's console script in a throwaway venv on the same interpreter).
2. A 256 MiB v2 job (ASCII patch) piped into ``tryserver --max-size 300000000``: wall time,
   throughput and peak RSS, against ``cat < job > file && sync`` and ``... && sync -f
   file``; and Buildbot's ``buildbot tryserver`` on a 64 MiB job.

Targets (issue 2): cold start <= 3x ``python3 -c pass``; peak RSS <= 40 MB; throughput
>= 0.5x cat+sync. Usage: ``.venv/bin/python bench/bench_tryserver.py [--runs N]
[--big-runs N] [--big-mb MB] [--json]``. Exit status 1 if a target is missed.

The measured processes run without PYTHONDONTWRITEBYTECODE, so that like an installed
package they run from compiled bytecode. Peak RSS comes from ``wait4`` in a small parent
(``python -S``): a child's peak RSS starts at its parent's, so that parent's own peak
(printed as the floor) is the smallest figure this method can show.
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
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tryssh.core.jobdir import Jobdir  # noqa: E402
from tryssh.core.jobfile import Job, encode_job  # noqa: E402
from tryssh.core.records import RecordStore, new_record  # noqa: E402

BIN = Path(sys.executable).parent
MIB = 1024 * 1024

# pip's console script template (what `pip install .` writes for tryserver).
CONSOLE_SCRIPT = """#!{python}
import sys
from tryssh.server.tryserver import main
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit(main())
"""

RSS_WRAPPER = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - start
with open(out, "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} {elapsed}")
"""


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def fail(what: str, result: subprocess.CompletedProcess[bytes]) -> None:
    raise SystemExit(
        f"bench: {what} failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}"
    )


class Case:
    """One command to time: argv, the file on its stdin, a clean-up after each run."""

    def __init__(self, label: str, argv: list[str], stdin: Path, jobdir: Jobdir | None = None):
        self.label = label
        self.argv = argv
        self.stdin = stdin
        self.jobdir = jobdir
        self.times: list[float] = []

    def once(self, env: dict[str, str]) -> float:
        with open(self.stdin, "rb") as stdin:
            start = time.perf_counter()
            result = subprocess.run(self.argv, stdin=stdin, capture_output=True, env=env,
                                    timeout=300, check=False)  # fmt: skip
            elapsed = time.perf_counter() - start
        if result.returncode != 0:
            fail(self.label, result)
        if self.jobdir:
            for name in os.listdir(self.jobdir.new):
                os.unlink(os.path.join(self.jobdir.new, name))
        return elapsed

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


def regular_install(tmp: Path) -> Path:
    """tryserver as `pip install .` would install it, in a throwaway venv; its script path."""
    venv = tmp / "regular-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, check=True, text=True,
    ).stdout.strip()  # fmt: skip
    shutil.copytree(ROOT / "tryssh", Path(purelib) / "tryssh",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    subprocess.run([str(python), "-m", "compileall", "-q", str(Path(purelib) / "tryssh")],
                   check=True)  # fmt: skip
    script = venv / "bin" / "tryserver"
    script.write_text(CONSOLE_SCRIPT.format(python=python))
    script.chmod(0o755)
    return script


def system_python() -> str:
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("bench: no python3 found")


def small_job(path: Path) -> int:
    patch = b"--- a/hello.c\n+++ b/hello.c\n@@ -1,3 +1,3 @@\n" + b"-old line\n+new line\n" * 38
    job = Job("1795462678.15-42", "main", "0123456789abcdef0123456789abcdef01234567", 1, patch,
              ["unit"], "https://example.org/repo.git", "proj", "dev", "try", {})  # fmt: skip
    data = encode_job(job)
    path.write_bytes(data)
    return len(data)


PATCH_LINE = b"+" + b"x" * 98 + b"\n"  # the patch of every size and version: ASCII diff lines


def big_v2_job(path: Path, size: int) -> int:
    """A v2 job of about *size* bytes whose patch is ASCII diff lines."""
    count = max(1, size // len(PATCH_LINE))
    block = PATCH_LINE * 10_000
    with open(path, "wb") as f:
        f.write(b"1:2,2:id,4:main,3:abc,1:1,%d:" % (count * len(PATCH_LINE)))
        for _ in range(count // 10_000):
            f.write(block)
        f.write(PATCH_LINE * (count % 10_000))
        f.write(b",4:repo,4:proj,2:b1,")
    return path.stat().st_size


def big_json_job(path: Path, size: int, version: int) -> int:
    """A v5 (or v6) job of about *size* bytes as Buildbot's createJobfile writes it, with
    the same patch as :func:`big_v2_job` (v6: plus one byte that is not UTF-8), written
    piece by piece so that the bench itself stays small."""
    import base64

    count = max(1, size // len(PATCH_LINE))
    if version == 6:
        count = count * 3 // 4  # base64 makes it 4/3 longer
    fields = {"jobid": "1795462678.15-42", "branch": "main", "baserev": "abc", "patch_level": 1,
              "repository": "https://example.org/repo.git", "project": "proj", "who": "dev",
              "comment": "try", "builderNames": ["b1"], "properties": {}}  # fmt: skip
    key = "patch_body" if version == 5 else "patch_body_base64"
    prefix = json.dumps({**fields, key: ""})[:-2].encode()
    lines_per_block = 30_000  # a multiple of 3 lines: base64 blocks join cleanly
    pieces = [PATCH_LINE * lines_per_block] * (count // lines_per_block)
    tail = PATCH_LINE * (count % lines_per_block) + (b"\xff" if version == 6 else b"")

    def encoded(piece: bytes) -> bytes:
        if version == 5:
            return json.dumps(piece.decode())[1:-1].encode()
        return base64.b64encode(piece)

    block = encoded(pieces[0]) if pieces else b""
    body_len = len(block) * len(pieces) + len(encoded(tail))
    with open(path, "wb") as f:
        f.write(b"1:%d,%d:" % (version, len(prefix) + body_len + 2) + prefix)
        for _ in pieces:
            f.write(block)
        f.write(encoded(tail) + b'"},')
    return path.stat().st_size


def make_job(path: Path, size: int, version: int) -> int:
    return big_v2_job(path, size) if version == 2 else big_json_job(path, size, version)


def measured(argv: list[str], stdin: Path, report: Path, env: dict[str, str]) -> tuple[int, float]:
    """(peak RSS in KiB, wall seconds) of *argv* run under the small wait4 parent."""
    with open(stdin, "rb") as f:
        result = subprocess.run([sys.executable, "-S", "-c", RSS_WRAPPER, str(report), *argv],
                                stdin=f, capture_output=True, env=env, timeout=600,
                                check=False)  # fmt: skip
    rss, code, elapsed = report.read_text().split()
    if code != "0":
        fail(shlex.join(argv[:2]), result)
    return int(rss), float(elapsed)


def sync() -> None:
    subprocess.run(["sync"], check=True)


def cold_start(tmp: Path, runs: int, bb_runs: int, env: dict[str, str]) -> dict[str, object]:
    job = tmp / "small.job"
    size = small_job(job)
    jd = [Jobdir(str(tmp / f"jd-small-{i}")).create() for i in range(5)]
    regular = regular_install(tmp)
    system = system_python()
    # The policy at the door: the same job with a config; and with max_pending, which
    # counts the user's records and waiting jobs (10 other users' records here).
    configs = []
    for i, extra in ((3, ""), (4, "max_pending = 5\n")):
        path = tmp / f"config-{i}.toml"
        path.write_text(f'jobdir = "{jd[i].path}"\n[builders.unit]\ncommand = ["true"]\n'
                        f'[users.alice]\nbuilders = ["unit"]\n{extra}')  # fmt: skip
        configs.append(path)
    store = RecordStore(os.path.join(jd[4].path, "state")).create()
    for n in range(10):
        store.write(new_record(f"1700000000.M{n:06d}P1Q1R0.bench", who=f"user{n}"))
    cases = [
        Case(f"python3 -c pass ({system})", [system, "-c", "pass"], job),
        Case(f"venv python -c pass ({BIN / 'python'})", [str(BIN / "python"), "-c", "pass"], job),
        Case(
            "tryserver (venv, editable install)",
            [str(BIN / "tryserver"), "--jobdir", jd[0].path, "--user", "alice"],
            job,
            jd[0],
        ),
        Case(
            "tryserver (regular install)",
            [str(regular), "--jobdir", jd[1].path, "--user", "alice"],
            job,
            jd[1],
        ),
        Case(
            "tryserver --config (reads the config; policy at the door)",
            [str(regular), "--config", str(configs[0]), "--user", "alice"],
            job,
            jd[3],
        ),
        Case(
            "tryserver --config, max_pending (counts pending jobs)",
            [str(regular), "--config", str(configs[1]), "--user", "alice"],
            job,
            jd[4],
        ),
    ]
    buildbot = Case(
        "buildbot tryserver",
        [str(BIN / "buildbot"), "tryserver", "--jobdir", jd[2].path],
        job,
        jd[2],
    )
    for case in [*cases, buildbot]:  # warm up: bytecode written, files cached
        case.once(env)
        case.once(env)
    for _ in range(runs):  # interleaved, so that a burst of load hits every case alike
        for case in cases:
            case.times.append(case.once(env))
    for _ in range(bb_runs):
        buildbot.times.append(buildbot.once(env))
    base = cases[0].median_ms
    rows = [
        {"label": c.label, "ms": c.median_ms, "runs": len(c.times), "ratio": c.median_ms / base}
        for c in [*cases, buildbot]
    ]
    return {"job_bytes": size, "rows": rows, "base_ms": base,
            "door_ms": door_check_ms(configs[0]), "door_pending_ms": door_check_ms(configs[1])}


def door_check_ms(config_path: Path, runs: int = 200) -> float:
    """The policy check at the door alone, in process (config already read): median ms."""
    from tryssh.server.config import load_config
    from tryssh.server.policy import check_at_door

    config = load_config(str(config_path))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        check_at_door(config, "alice", ["unit"], "main", 1000)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


SIZES = {"1 KB": 1000, "16 MB": 16 * MIB, "64 MB": 64 * MIB, "256 MB": 256 * MIB}


def big_jobs(
    tmp: Path, sizes: list[str], runs: int, env: dict[str, str], tryserver_cmd: list[str]
) -> dict[str, object]:
    """Every version at every size through tryserver: time, MB/s and peak RSS, next to
    ``cat < job > file && sync`` on the same file (and ``sync -f file`` for the biggest)."""
    jd = Jobdir(str(tmp / "jd-big")).create()
    out = tmp / "cat.out"
    report = tmp / "rss"
    floor, _ = measured(["/bin/true"], tmp / "rss-stdin", report, env)
    tryserver = [*tryserver_cmd, "--jobdir", jd.path, "--user", "alice",
                 "--max-size", "400000000"]  # fmt: skip

    def clean() -> None:
        for name in os.listdir(jd.new):
            os.unlink(os.path.join(jd.new, name))
        out.unlink(missing_ok=True)
        sync()  # no dirty pages of one run left for the next one's sync

    rows = []
    for size_label in sizes:
        for version in (2, 5, 6):
            job = tmp / f"job-v{version}"
            size = make_job(job, SIZES[size_label], version)
            times: dict[str, list[float]] = {"cat": [], "tryserver": []}
            rss: list[int] = []
            clean()
            for _ in range(runs):
                with open(job, "rb") as f, open(out, "wb") as g:
                    start = time.perf_counter()
                    subprocess.run(["cat"], stdin=f, stdout=g, check=True)
                    subprocess.run(["sync"], check=True)
                    times["cat"].append(time.perf_counter() - start)
                clean()
                peak, elapsed = measured(tryserver, job, report, env)
                delivered = os.listdir(jd.new)
                if len(delivered) != 1:
                    raise SystemExit(f"bench: tryserver did not deliver the v{version} job")
                times["tryserver"].append(elapsed)
                rss.append(peak)
                clean()
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"size": size_label, "version": version, "job_bytes": size,
                         "seconds": med, "rss_kib": max(rss),
                         "ratio": med["cat"] / med["tryserver"]})  # fmt: skip
            job.unlink()
    return {"floor_kib": floor, "runs": runs, "rows": rows}


def big_job(tmp: Path, size_mb: int, runs: int, env: dict[str, str]) -> dict[str, object]:
    """The 256 MiB v2 job against cat + sync and cat + sync -f; Buildbot's own tryserver."""
    job = tmp / "big.job"
    size = big_v2_job(job, size_mb * MIB)
    bb_job = tmp / "bb.job"
    bb_size = big_v2_job(bb_job, min(64, size_mb) * MIB)
    jd = Jobdir(str(tmp / "jd-big")).create()
    out = tmp / "cat.out"
    report = tmp / "rss"
    floor, _ = measured(["/bin/true"], job, report, env)
    times: dict[str, list[float]] = {"cat": [], "cat_syncf": [], "tryserver": []}
    rss: list[int] = []
    tryserver = [str(BIN / "tryserver"), "--jobdir", jd.path, "--user", "alice",
                 "--max-size", "300000000"]  # fmt: skip

    def clean() -> None:
        for name in os.listdir(jd.new):
            os.unlink(os.path.join(jd.new, name))
        out.unlink(missing_ok=True)
        sync()

    clean()
    for _ in range(runs):
        for variant in ("cat", "cat_syncf"):
            with open(job, "rb") as f, open(out, "wb") as g:
                start = time.perf_counter()
                subprocess.run(["cat"], stdin=f, stdout=g, check=True)
                subprocess.run(["sync", "-f", str(out)] if variant == "cat_syncf" else ["sync"],
                               check=True)  # fmt: skip
                times[variant].append(time.perf_counter() - start)
            clean()
        peak, elapsed = measured(tryserver, job, report, env)
        delivered = os.listdir(jd.new)
        if len(delivered) != 1 or os.path.getsize(os.path.join(jd.new, delivered[0])) < size:
            raise SystemExit("bench: tryserver did not deliver the big job")
        times["tryserver"].append(elapsed)
        rss.append(peak)
        clean()

    bb_dir = Jobdir(str(tmp / "jd-bb")).create()
    bb_rss, bb_time = measured([str(BIN / "buildbot"), "tryserver", "--jobdir", bb_dir.path],
                               bb_job, report, env)  # fmt: skip
    shutil.rmtree(bb_dir.path)
    job.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "job_bytes": size,
        "runs": runs,
        "floor_kib": floor,
        "seconds": med,
        "mb_per_s": {k: size / v / 1e6 for k, v in med.items()},
        "tryserver_rss_kib": max(rss),
        "buildbot": {
            "job_bytes": bb_size,
            "seconds": bb_time,
            "rss_kib": bb_rss,
            "mb_per_s": bb_size / bb_time / 1e6,
        },
    }


def print_matrix(matrix: dict[str, object], elapsed: float | None) -> None:
    if elapsed is not None:
        print(f"tryserver v2/v5/v6 table: Python {sysconfig.get_python_version()}, "
              f"{os.cpu_count()} CPUs, {elapsed:.0f} s")  # fmt: skip
    print(f"Versions and sizes (median of {matrix['runs']} runs; baseline: cat < job > file "
          "&& sync on the same file; ratio = its time / tryserver's)")  # fmt: skip
    print(f"  {'job':<16} {'bytes':>11} {'cat+sync':>9} {'tryserver':>10} {'MB/s':>6} "
          f"{'ratio':>6} {'peak RSS':>9}")  # fmt: skip
    for row in matrix["rows"]:  # type: ignore[attr-defined]
        sec = row["seconds"]
        print(f"  v{row['version']} {row['size']:<13} {row['job_bytes']:>11} "
              f"{sec['cat'] * 1000:7.0f}ms {sec['tryserver'] * 1000:8.0f}ms "
              f"{row['job_bytes'] / sec['tryserver'] / 1e6:6.0f} x{row['ratio']:5.2f} "
              f"{row['rss_kib'] / 1024:6.1f} MB")  # fmt: skip
    print(f"  (peak RSS floor of the measuring parent: {matrix['floor_kib'] / 1024:.1f} MB)")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="cold-start runs per command")
    parser.add_argument("--bb-runs", type=int, default=5, help="runs of buildbot tryserver")
    parser.add_argument("--big-runs", type=int, default=5, help="runs with the big job")
    parser.add_argument("--big-mb", type=int, default=256, help="size of the big job in MiB")
    parser.add_argument("--matrix-runs", type=int, default=3,
                        help="runs per version and size in the v2/v5/v6 table")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a few runs, the table up to 16 MB, a 64 MiB big job")  # fmt: skip
    parser.add_argument("--only-matrix", action="store_true",
                        help="only the v2/v5/v6 table (no cold start, no big job)")  # fmt: skip
    parser.add_argument("--tryserver-tree", metavar="DIR",
                        help="run tryserver from this source tree (e.g. an older checkout, "
                             "for before/after figures) in the v2/v5/v6 table")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    sizes = list(SIZES)
    if args.quick:
        args.runs, args.bb_runs, args.big_runs, args.matrix_runs = 8, 2, 1, 1
        args.big_mb = min(args.big_mb, 64)
        sizes = ["1 KB", "16 MB"]
    tryserver_cmd = [str(BIN / "tryserver")]
    if args.tryserver_tree:
        tree = os.path.abspath(args.tryserver_tree)
        code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from tryssh.server.tryserver import main; sys.exit(main())")  # fmt: skip
        tryserver_cmd = [sys.executable, "-c", code, tree]

    env = child_env()
    tmp = Path(tempfile.mkdtemp(prefix="tryssh-bench-"))
    try:
        free = shutil.disk_usage(tmp).free
        need = max(args.big_mb, SIZES[sizes[-1]] // MIB * 3 // 2)
        if free < 3 * need * MIB:
            raise SystemExit(f"bench: {tmp} has {free // MIB} MiB free, need {3 * need}")
        (tmp / "rss-stdin").write_bytes(b"")
        started = time.monotonic()
        matrix = big_jobs(tmp, sizes, args.matrix_runs, env, tryserver_cmd)
        if args.only_matrix:
            elapsed = time.monotonic() - started
            print_matrix(matrix, elapsed)
            return 0
        cold = cold_start(tmp, args.runs, args.bb_runs, env)
        big = big_job(tmp, args.big_mb, args.big_runs, env)
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = {r["label"]: r for r in cold["rows"]}
    editable = rows["tryserver (venv, editable install)"]["ratio"]
    regular = rows["tryserver (regular install)"]["ratio"]
    rss_mb = big["tryserver_rss_kib"] / 1024
    thr = big["mb_per_s"]
    vs_sync = thr["tryserver"] / thr["cat"]
    vs_syncf = thr["tryserver"] / thr["cat_syncf"]
    targets = {
        "cold start <= 3x python3 -c pass (regular install)": regular <= 3,
        "peak RSS <= 40 MB for the big v2 job": rss_mb <= 40,
        "throughput >= 0.5x cat + sync": vs_sync >= 0.5,
        "throughput >= 0.5x cat + sync -f": vs_syncf >= 0.5,
    }
    biggest = sizes[-1]
    for row in matrix["rows"]:  # type: ignore[union-attr]
        if row["size"] == biggest and row["version"] in (5, 6):
            targets[f"v{row['version']} at {biggest}: peak RSS <= 40 MB"] = (
                row["rss_kib"] / 1024 <= 40
            )
            targets[f"v{row['version']} at {biggest}: throughput >= 0.5x cat + sync"] = (
                row["ratio"] >= 0.5
            )
    # The development venv's editable install is shown, not judged: setuptools' import hook
    # slows every python start in that venv (its own `python -c pass` line shows how much).
    editable_ok = editable <= 3
    if args.json:
        print(json.dumps({"cold_start": cold, "big_job": big, "versions": matrix,
                          "targets": targets,
                          "editable_within_3x": editable_ok}, indent=2))  # fmt: skip
        return 0 if all(targets.values()) else 1

    py = sysconfig.get_python_version()
    print(f"tryserver benchmark: Python {py}, {os.cpu_count()} CPUs, {elapsed:.0f} s, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    print()
    print(f"Cold start, {cold['job_bytes']} B v5 job (median wall time; ratio to the first line)")
    for row in cold["rows"]:
        print(f"  {row['label']:<58} {row['ms']:8.1f} ms  x{row['ratio']:5.2f}"
              f"  ({row['runs']} runs)")  # fmt: skip
    print(f"  of which the policy check at the door, in process: {cold['door_ms']:.3f} ms; "
          f"with max_pending (10 records): {cold['door_pending_ms']:.3f} ms")  # fmt: skip
    print()
    mib = big["job_bytes"] / MIB
    print(f"Big job, {big['job_bytes']} B ({mib:.0f} MiB) v2, ASCII patch "
          f"(median of {big['runs']} runs)")  # fmt: skip
    labels = {"cat": "cat < job > file && sync", "cat_syncf": "cat < job > file && sync -f file",
              "tryserver": "tryserver --max-size 300000000 < job"}  # fmt: skip
    for key, label in labels.items():
        rss = f"{rss_mb:6.1f} MB" if key == "tryserver" else "       -"
        print(f"  {label:<40} {big['seconds'][key]:6.2f} s {thr[key]:7.0f} MB/s  "
              f"peak RSS {rss}")  # fmt: skip
    bb = big["buildbot"]
    bb_label = f"buildbot tryserver ({bb['job_bytes'] / MIB:.0f} MiB job)"
    print(f"  {bb_label:<40} "
          f"{bb['seconds']:6.2f} s {bb['mb_per_s']:7.0f} MB/s  peak RSS "
          f"{bb['rss_kib'] / 1024:6.1f} MB")  # fmt: skip
    print(f"  (peak RSS floor of the measuring parent: {big['floor_kib'] / 1024:.1f} MB)")
    print(f"  throughput ratio: x{vs_sync:.2f} of cat+sync, x{vs_syncf:.2f} of cat+sync -f")
    print()
    print_matrix(matrix, None)
    print("Targets")
    for name, ok in targets.items():
        print(f"  {'ok    ' if ok else 'MISSED'} {name}")
    print(f"  {'(ok)  ' if editable_ok else '(over)'} cold start in the development venv: "
          f"x{editable:.2f}, including its editable-install hook (not a target)")  # fmt: skip
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
