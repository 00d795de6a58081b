"""Benchmark of ``tryssh serve`` under attack: logins during a slowloris, guesses per minute.

    .venv/bin/python bench/bench_attacks.py [--flood 300] [--logins 20] [--burst-seconds 20]

What is measured, and how (a real ``tryssh serve`` subprocess on 127.0.0.1, default limits):

* **Logins during a slowloris.** An attacker on 127.0.0.2 keeps ``--flood`` connections
  open (reconnecting each one the server drops), each sending one byte of its banner every
  second. Meanwhile ``--logins`` legitimate clients on 127.0.0.1 log in one after the other
  with a key (paramiko) and open a session; each is timed from connect to the open
  session. The baseline is the same logins with no flood, measured first. Target: every
  login served, each within 2 s.
* **Guesses per minute.** 30 addresses (127.0.0.2-31), 4 connections each, guess
  passwords as fast as the server answers for ``--burst-seconds``; the figure is the
  number of guesses the server evaluated (audit lines ``outcome=failed``) per minute,
  against the configured global limit (``max_auth_failures`` per ``auth_penalty_seconds``,
  scaled to a minute). Target: at most the limit plus one window's worth.
* **Peak RSS** of the server process (``VmHWM``) during that burst, with the default
  scrypt cost (32 MiB a hash). Target: under 150 MB (a burst took it to 964 MB when every
  connection hashed at once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import paramiko
from benchlib import serve_port

from tryssh.server.passwords import hash_password

BIN = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "tryssh")
# --against DIR: run the tryssh package found in DIR instead (a before/after comparison);
# the venv's editable-install finder is dropped so that DIR's copy is the one imported.
AGAINST = (
    "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
    "sys.path.insert(0, sys.argv.pop(1)); from tryssh.cli.main import main; "
    "sys.argv[0] = 'tryssh'; sys.exit(main())"
)


class Server:
    def __init__(self, root: str, serve: dict[str, object], against: str | None = None) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.root = root
        private = Ed25519PrivateKey.generate()
        self.key_path = os.path.join(root, "alice")
        with open(self.key_path, "wb") as f:
            f.write(private.private_bytes(serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))  # fmt: skip
        public = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        jobdir = os.path.join(root, "jobdir")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(jobdir, sub))
        settings = {"listen": "127.0.0.1:0", "host_key": os.path.join(root, "hostkey"), **serve}
        lines = [f'jobdir = "{jobdir}"', "[serve]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines += ["[builders.unit]", 'command = ["true"]', "[users.alice]",
                  f'keys = ["{public}"]', f'password_hash = "{hash_password("right")}"',
                  'builders = ["unit"]']  # fmt: skip
        config = os.path.join(root, "tryssh.toml")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.audit = os.path.join(jobdir, "audit.log")
        argv = [sys.executable, "-c", AGAINST, against] if against else [BIN]
        self.proc = subprocess.Popen([*argv, "serve", "--config", config], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        self.port = serve_port(self.proc)

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def evaluated(self) -> int:
        try:
            with open(self.audit) as f:
                return sum("event=auth outcome=failed method=password" in line for line in f)
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def transport(port: int, source: str, timeout: float = 30) -> paramiko.Transport:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))  # fmt: skip
    t = paramiko.Transport(sock)
    t.banner_timeout = timeout
    t.start_client(timeout=timeout)
    return t


def login(server: Server) -> float | None:
    """Seconds from connect to logged in with a key and a session open; None if refused.

    (The request itself is not part of it: paramiko's fast exec races serve's reply, the
    "Channel closed" of issue 9, which is not what this measures.)
    """
    start = time.monotonic()
    try:
        t = transport(server.port, "127.0.0.1")
        try:
            t.auth_publickey("alice", paramiko.PKey.from_path(server.key_path))
            t.open_session(timeout=30)
            elapsed = time.monotonic() - start
        finally:
            t.close()
    except (OSError, paramiko.SSHException, EOFError):
        return None
    return elapsed


def slowloris(port: int, count: int, stop: threading.Event) -> None:
    socks: list[socket.socket | None] = [None] * count
    while not stop.is_set():
        for i in range(count):
            sock = socks[i]
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1,
                                                    source_address=("127.0.0.2", 0))  # fmt: skip
                    sock.setblocking(False)
                    socks[i] = sock
                sock.send(b"S")
            except OSError:
                if sock is not None:
                    sock.close()
                socks[i] = None
        stop.wait(1.0)
    for sock in socks:
        if sock is not None:
            sock.close()


def guesser(port: int, source: str, until: float) -> None:
    while time.monotonic() < until:
        try:
            t = transport(port, source, timeout=10)
        except (OSError, paramiko.SSHException, EOFError):
            time.sleep(0.05)
            continue
        try:
            while time.monotonic() < until and t.is_active():
                try:
                    t.auth_password("alice", "wrong")
                except paramiko.AuthenticationException:
                    continue
        except (OSError, paramiko.SSHException, EOFError):
            pass
        finally:
            t.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood", type=int, default=300, help="slowloris connections")
    parser.add_argument("--logins", type=int, default=20, help="timed legitimate logins")
    parser.add_argument("--burst-seconds", type=float, default=20, help="password burst length")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument(
        "--against", metavar="DIR", help="run the tryssh package in DIR (an older checkout)"
    )
    args = parser.parse_args()
    import logging

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    root = tempfile.mkdtemp(prefix="tryssh-bench-attacks-")
    results: dict[str, object] = {}
    failed = False
    try:
        os.mkdir(os.path.join(root, "a"))
        server = Server(os.path.join(root, "a"), {}, args.against)
        try:
            base = [login(server) for _ in range(args.logins)]
            stop = threading.Event()
            flood = threading.Thread(target=slowloris, args=(server.port, args.flood, stop))
            flood.start()
            time.sleep(3)  # let the flood take what it can
            under = [login(server) for _ in range(args.logins)]
            stop.set()
            flood.join()
        finally:
            server.stop()
        base_ok = [t for t in base if t is not None]
        under_ok = [t for t in under if t is not None]
        b_med = statistics.median(base_ok) if base_ok else float("nan")
        u_med = statistics.median(under_ok) if under_ok else float("nan")
        u_max = max(under_ok) if under_ok else float("nan")
        print(f"Logins during a {args.flood}-connection slowloris from 127.0.0.2:")
        print(f"  {'no flood (baseline)':<24}{len(base_ok):>3}/{args.logins} served, "
              f"median {b_med * 1000:7.1f} ms")  # fmt: skip
        print(f"  {'under the flood':<24}{len(under_ok):>3}/{args.logins} served, "
              f"median {u_med * 1000:7.1f} ms, max {u_max * 1000:7.1f} ms, "
              f"{u_med / b_med:5.2f}x baseline")  # fmt: skip
        ok = len(under_ok) == args.logins and u_max <= 2.0
        print(f"  target: every login served within 2 s: {'met' if ok else 'MISSED'}")
        failed |= not ok
        results["slowloris"] = {"flood": args.flood, "served": len(under_ok),
                                "logins": args.logins, "median_s": u_med, "max_s": u_max,
                                "baseline_median_s": b_med}  # fmt: skip

        window, limit = 10.0, 10
        os.mkdir(os.path.join(root, "b"))
        server = Server(os.path.join(root, "b"),
                        {"auth_penalty_seconds": window, "max_auth_failures": limit,
                         "max_auth_failures_per_address": 5}, args.against)  # fmt: skip
        try:
            idle_rss = server.peak_rss_mb()
            until = time.monotonic() + args.burst_seconds
            threads = [threading.Thread(target=guesser, args=(server.port, f"127.0.0.{i}", until))
                       for i in range(2, 32) for _ in range(4)]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            evaluated = server.evaluated()
            peak = server.peak_rss_mb()
        finally:
            server.stop()
        per_minute = evaluated * 60 / args.burst_seconds
        allowed = limit * 60 / window
        print(f"\nPassword guesses, 120 connections, 30 addresses, {args.burst_seconds:g} s:")
        print(f"  evaluated {evaluated} guesses: {per_minute:.0f}/min; configured limit "
              f"{limit} per {window:g} s = {allowed:.0f}/min ({per_minute / allowed:.2f}x)")
        ok = evaluated <= limit * (args.burst_seconds / window + 1)
        print(f"  target: at most the limit (+ one window): {'met' if ok else 'MISSED'}")
        failed |= not ok
        print(f"  serve peak RSS: {peak:.0f} MB (after start-up: {idle_rss:.0f} MB)")
        rss_ok = peak < 150
        print(f"  target: under 150 MB: {'met' if rss_ok else 'MISSED'}")
        failed |= not rss_ok
        results["guesses"] = {"evaluated": evaluated, "per_minute": per_minute,
                              "limit_per_minute": allowed, "peak_rss_mb": peak,
                              "start_rss_mb": idle_rss}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
