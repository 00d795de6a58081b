"""Every exit code each ``tryssh`` command can return, and what it means there.

The help texts list these, and tests/test_help.py checks that each code below appears in its
command's ``--help``: add a code here when a command learns to return it. Codes that every
command shares through ``tryssh.cli.main`` (64 for a bad command line, 130 for Ctrl-C) are
listed too, because a user reading one command's help should not have to look elsewhere.
"""

from __future__ import annotations

EXIT_CODES: dict[str, dict[int, str]] = {
    "try": {
        0: "delivered (with --wait: every build succeeded)",
        1: "a build failed (--wait)",
        64: "usage",
        65: "bad or empty job",
        66: "no such file (--diff) or job",
        69: "(--wait) the server cannot report the results",
        73: "cannot create the job (jobdir missing or not writable)",
        75: "connection or server trouble",
        77: "refused (host key, login, policy)",
        78: "config error",
        130: "interrupted",
    },
    "status": {
        0: "succeeded (or, without --wait, still going: queued, claimed, running)",
        1: "a build failed",
        64: "usage",
        66: "no such job (or not yours)",
        69: "delivered elsewhere or not followable (results not visible here)",
        75: "error, interrupted, cancelled or connection trouble",
        77: "rejected, or refused (host key, login)",
        78: "config error",
        130: "interrupted",
    },
    "builders": {
        0: "ok",
        64: "usage",
        75: "connection or server trouble",
        77: "refused (host key, login, policy)",
        78: "config error",
        130: "interrupted",
    },
    "log": {
        0: "ok (the log may be empty: nothing written yet)",
        1: "the builder failed",
        64: "usage",
        66: "no such job, builder or log (or not yours)",
        75: "connection trouble",
        77: "refused",
        78: "config error",
        130: "interrupted",
    },
    "jobs": {
        0: "ok",
        64: "usage",
        75: "connection trouble",
        77: "refused",
        78: "config error",
        130: "interrupted",
    },
    "cancel": {
        0: "cancelled",
        2: "the job had already finished: nothing to cancel",
        64: "usage",
        66: "no such job (or not yours)",
        69: "drop-in without [buildbot] api: the server cannot stop a job Buildbot has taken",
        75: "connection trouble, or Buildbot's API did not answer the stop",
        77: "refused (also: Buildbot's authz does not let the server's token stop builds)",
        78: "config error",
        130: "interrupted",
    },
    "consume": {
        0: "stopped cleanly",
        64: "usage",
        73: "cannot create the jobdir's records or logs",
        75: "temporary failure",
        77: "permission denied",
        78: "config error (file, key and problem named)",
    },
    "gc": {
        0: "ok",
        64: "usage",
        73: "cannot remove (a file system error)",
        77: "permission denied",
        78: "config error",
    },
    "serve": {
        0: "stopped by SIGTERM/SIGINT",
        64: "usage",
        73: "cannot create the host key or state",
        75: "cannot listen (address in use)",
        77: "permission denied (a port below 1024 without CAP_NET_BIND_SERVICE)",
        78: "config error",
    },
    "passwd": {0: "ok", 64: "usage, or the passwords differ", 130: "interrupted"},
    "doctor": {0: "no problem found", 1: "a problem found", 64: "usage"},
    "contrib": {0: "ok", 64: "usage", 66: "no such file (the message lists them)"},
    "hostkey": {
        0: "ok",
        64: "usage",
        66: "no host key found (or a key file unreadable)",
        78: "config error",
    },
    "manpages": {0: "ok", 64: "usage", 73: "cannot create DIRECTORY or a page"},
}


def exit_codes_text(command: str) -> str:
    """``Exit codes: 0 ..., 64 ...`` for a help text."""
    codes = EXIT_CODES[command]
    return "Exit codes: " + ", ".join(f"{code} {meaning}" for code, meaning in codes.items()) + "."
