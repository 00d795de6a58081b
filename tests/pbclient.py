"""A hostile Twisted PB client for the PB door's adversarial tests (run as a subprocess).

    python pbclient.py PORT PASSWORD SCENARIO [SIZE]

Logs in as alice (unless the scenario works before login), makes the scenario's calls one
after another and prints one JSON line per call: {"ok": repr} or {"error": message}.
A subprocess because Twisted's reactor runs once per process.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.cred import credentials
from twisted.internet import defer, reactor
from twisted.spread import banana, pb

DIFF = b"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"


def try_args(**changes: Any) -> tuple[Any, ...]:
    args = {"branch": b"main", "revision": b"abc123", "patch": (1, DIFF), "repository": b"",
            "project": "", "builderNames": ["pass"], "who": None, "comment": None,
            "properties": {}}  # fmt: skip
    args.update(changes)
    return tuple(args.values())


def scenario_calls(name: str, size: int) -> list[tuple[str, tuple[Any, ...]]]:
    calls = {
        "names": [("getAvailableBuilderNames", ())],
        "refusal_flood": [("frobnicate", ())] * size,
        "unknown_method": [("frobnicate", ()), ("getAvailableBuilderNames", ())],
        "private_method": [("__init__", ()), ("getAvailableBuilderNames", ())],
        "too_few_args": [("try", (b"main",))],
        "too_many_args": [("try", (*try_args(), "extra"))],
        "patch_not_bytes": [("try", try_args(patch=(1, 12345)))],
        "patch_not_pair": [("try", try_args(patch=DIFF))],
        "patchlevel_huge": [("try", try_args(patch=(10**12, DIFF)))],
        "builders_not_list": [("try", try_args(builderNames={"pass": 1}))],
        "branch_not_text": [("try", try_args(branch=[1, 2]))],
        "properties_not_json": [("try", try_args(properties={"x": b"\xff"}))],
        "flood": [("try", try_args()) for _ in range(size)],
        "big_patch": [("try", try_args(patch=(1, b"+" * size)))],
        "big_list": [("try", try_args(builderNames=["x" * 100] * size))],
    }
    return calls[name]


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


@defer.inlineCallbacks
def main(port: int, password: str, name: str, size: int) -> Any:
    factory = pb.PBClientFactory()
    reactor.connectTCP("127.0.0.1", port, factory)
    if name in ("root_unknown", "big_login", "login_flood"):
        root = yield factory.getRootObject()
        calls = {"root_unknown": [("frobnicate", ())], "big_login": [("login", (b"a" * size,))],
                 "login_flood": [("login", (b"alice",))] * size}[name]  # fmt: skip
        for method, args in calls:
            yield call(root, method, args)
        return
    try:
        user = yield factory.login(credentials.UsernamePassword(b"alice", password.encode()))
    except Exception as err:
        report(error=f"login: {err}")
        return
    for method, args in scenario_calls(name, size):
        yield call(user, method, args)


@defer.inlineCallbacks
def call(obj: Any, method: str, args: tuple[Any, ...]) -> Any:
    try:
        result = yield obj.callRemote(method, *args)
    except banana.BananaError as err:
        report(error=f"client refused to send: {err}")
    except Exception as err:
        report(error=str(err) or type(err).__name__, type=type(err).__name__)
    else:
        report(ok=repr(result)[:200])


def run() -> None:
    port, password, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    banana.SIZE_LIMIT = 64 * 1024 * 1024  # a hostile client ignores Twisted's own limit
    d = main(port, password, name, size)
    d.addErrback(lambda f: report(error=f"client: {f.getErrorMessage()}"))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    run()
