"""What the benchmarks share: starting ``tryssh serve`` and printing targets."""

from __future__ import annotations

import re
import subprocess
import threading

# serve's first line on stdout: "listening on ADDR:PORT, host key SHA256:..."
READY = re.compile(r"listening on (\S+):(\d+), host key (SHA256:\S+)")


def serve_port(proc: subprocess.Popen[str]) -> int:
    """The port a just-started ``tryssh serve`` (stdout piped, text) listens on; its
    further output is drained in a thread so that it never blocks on a full pipe."""
    assert proc.stdout is not None
    for line in proc.stdout:
        match = READY.search(line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return int(match.group(2))
    raise SystemExit("bench: tryssh serve did not start")


def print_targets(targets: dict[str, bool]) -> int:
    """Print each target as ok or MISSED; the exit status (1 if any was missed)."""
    print("Targets")
    for name, ok in targets.items():
        print(f"  {'ok    ' if ok else 'MISSED'} {name}")
    return 0 if all(targets.values()) else 1
