"""Benchmark the PB door against Buildbot's own ``Try_Userpass`` on a real master.

In one run, the same unchanged client, ``buildbot try --connect=pb --wait --diff F -b pass``,
submits to:

1. ``tryssh serve --consume`` with ``[pb]`` (the builder: a command);
2. a real Buildbot 4.x master (``Try_Userpass`` scheduler, a ``LocalWorker``, a builder whose
   one ``ShellCommand`` is the same command), if ``buildbot-worker`` is installed.

Both builders run one command that appends ``time.time()`` to a stamp file. From it:
*submit-to-build-start* = stamp - the client's launch, *build-end-to-client-exit* = the
client's exit - stamp (medians over --runs). Ratios are tryssh / Buildbot: lower is
better. Targets: none judged (information), exit status 1 only if a run fails.
Usage: ``.venv/bin/python bench/bench_pb.py [--runs N] [--quick] [--json] [--tryssh-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "bench-password"  # noqa: S105 - a throwaway account on loopback
STAMP_CODE = "import sys, time; open(sys.argv[1], 'a').write('%.6f\\n' % time.time())"
DIFF = b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} not ready after {timeout:g} s")


def submit(port: int, work: Path, stamp: Path) -> tuple[float, float]:
    """One ``buildbot try --wait``: (submit-to-build-start, build-end-to-client-exit)."""
    before = len(stamp.read_text().split()) if stamp.exists() else 0
    argv = [str(BIN / "buildbot"), "try", "--connect=pb", f"--master=127.0.0.1:{port}",
            "--username=alice", f"--passwd={PASSWORD}", "--wait", "-q",
            f"--diff={work / 'change.diff'}", "-p", "1", "--branch=main", "--baserev=abc",
            "--repository=r", "-b", "pass"]  # fmt: skip
    env = {"HOME": str(work), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    launched = time.time()
    result = subprocess.run(argv, cwd=work, env=env, capture_output=True, timeout=300,
                            check=False)  # fmt: skip
    exited = time.time()
    if result.returncode != 0:
        raise SystemExit(f"bench: buildbot try failed ({result.returncode}):\n"
                         f"{result.stdout.decode()}{result.stderr.decode()}")  # fmt: skip
    stamps = stamp.read_text().split()
    if len(stamps) != before + 1:
        raise SystemExit(f"bench: expected one build, stamps: {stamps[before:]}")
    built = float(stamps[-1])
    return built - launched, exited - built


def tryssh_side(root: Path, work: Path, runs: int) -> list[tuple[float, float]]:
    root.mkdir()
    stamp = root / "stamp"
    secret = root / "alice.pb"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    line = subprocess.run([str(BIN / "tryssh"), "passwd", "--pb", "--stdin"],
                          input=PASSWORD.encode(), capture_output=True, check=True).stdout
    os.write(fd, line)
    os.close(fd)
    config = root / "tryssh.toml"
    config.write_text("\n".join([
        f'jobdir = "{root / "jobdir"}"',
        "[serve]", 'listen = "127.0.0.1:0"', f'host_key = "{root / "hostkey"}"',
        "[pb]", 'listen = "127.0.0.1:0"',
        "[builders.pass]",
        f"command = {json.dumps([sys.executable, '-c', STAMP_CODE, str(stamp)])}",
        "[users.alice]", f'pb_secret_file = "{secret}"',
    ]) + "\n")  # fmt: skip
    for sub in ("tmp", "new", "cur"):
        (root / "jobdir" / sub).mkdir(parents=True)
    proc = subprocess.Popen([str(BIN / "tryssh"), "serve", "--config", str(config), "--consume"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        port = 0
        assert proc.stdout is not None
        for text in proc.stdout:
            if "PB door" in text:
                port = int(text.split("listening on ")[1].split(";")[0].rsplit(":", 1)[1])
                break
        if not port:
            raise SystemExit("bench: tryssh serve did not start")
        return [submit(port, work, stamp) for _ in range(runs)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


MASTER_CFG = """\
import sys
from buildbot.plugins import schedulers, steps, util, worker
c = BuildmasterConfig = {{}}
c['workers'] = [worker.LocalWorker('local')]
c['protocols'] = {{'pb': {{'port': {worker_port}}}}}
c['schedulers'] = [schedulers.Try_Userpass(name='try', builderNames=['pass'], port={port},
                                           userpass=[('alice', {password!r})])]
f = util.BuildFactory([steps.ShellCommand(command={command!r})])
c['builders'] = [util.BuilderConfig(name='pass', workernames=['local'], factory=f)]
c['db'] = {{'db_url': 'sqlite:///state.sqlite'}}
c['buildbotNetUsageData'] = None
c['title'] = 'bench'
c['buildbotURL'] = 'http://localhost/'
"""


def buildbot_side(root: Path, work: Path, runs: int) -> list[tuple[float, float]] | str:
    try:
        import buildbot_worker  # noqa: F401
    except ImportError:
        return "buildbot-worker is not installed (pip install buildbot-worker)"
    root.mkdir()
    stamp = root / "stamp"
    master = root / "master"
    created = subprocess.run([str(BIN / "buildbot"), "create-master", "-q", str(master)],
                             capture_output=True, check=False)  # fmt: skip
    if created.returncode != 0:
        return f"create-master failed: {created.stderr.decode()[-300:]}"
    port = free_port()
    command = [sys.executable, "-c", STAMP_CODE, str(stamp)]
    (master / "master.cfg").write_text(
        MASTER_CFG.format(port=f"'tcp:{port}:interface=127.0.0.1'", password=PASSWORD,
                          worker_port=f"'tcp:{free_port()}:interface=127.0.0.1'",
                          command=command)
    )  # fmt: skip
    proc = subprocess.Popen([str(BIN / "buildbot"), "start", "--nodaemon", str(master)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    log = master / "twistd.log"
    try:
        wait_for(lambda: log.exists() and "BuildMaster is running" in log.read_text(), 120,
                 "the Buildbot master")  # fmt: skip
        return [submit(port, work, stamp) for _ in range(runs)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="submissions per server")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--tryssh-only", action="store_true", help="skip the Buildbot master")
    parser.add_argument("--quick", action="store_true", help="3 submissions per server")
    args = parser.parse_args()
    if args.quick:
        args.runs = 3
    with tempfile.TemporaryDirectory(prefix="tryssh-bench-pb-") as tmp:
        base = Path(tmp)
        work = base / "work"
        work.mkdir()
        (work / "change.diff").write_bytes(DIFF)
        ours = tryssh_side(base / "tryssh", work, args.runs)
        theirs = ("skipped (--tryssh-only)" if args.tryssh_only
                  else buildbot_side(base / "buildbot", work, args.runs))  # fmt: skip
    figures: dict[str, object] = {"runs": args.runs}
    rows = []
    for label, index in (("submit-to-build-start", 0), ("build-end-to-client-exit", 1)):
        mine = statistics.median(r[index] for r in ours)
        figures[f"tryssh_{label}"] = mine
        if isinstance(theirs, list):
            base_value = statistics.median(r[index] for r in theirs)
            figures[f"buildbot_{label}"] = base_value
            rows.append((label, base_value, mine, mine / base_value))
        else:
            rows.append((label, None, mine, None))
    if not isinstance(theirs, list):
        figures["buildbot_missing"] = theirs
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"buildbot try --connect=pb --wait, median of {args.runs} (seconds; lower is better)")
    print(f"{'':28}{'Buildbot master':>17}{'tryssh serve':>14}{'ratio':>8}")
    for label, base_value, mine, ratio in rows:
        shown = f"{base_value:17.3f}" if base_value is not None else f"{'n/a':>17}"
        ratio_text = f"{ratio:7.2f}x" if ratio is not None else f"{'':8}"
        print(f"{label:28}{shown}{mine:14.3f}{ratio_text}")
    if not isinstance(theirs, list):
        print(f"Buildbot side not measured: {theirs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
