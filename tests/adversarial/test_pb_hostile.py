"""Hostile clients at the PB door: each is refused with a PB error and an audit line,
nothing is delivered, memory stays bounded, and the door keeps serving others.

The attacks come from tests/pbclient.py (a Twisted PB client run as a subprocess) and from
raw sockets; the server is a real ``tryssh serve`` with ``[pb]`` on a run-time port.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run, wait_until
from pbserve import PASSWORD, PBServe

CLIENT = str(Path(__file__).resolve().parent.parent / "pbclient.py")
LIMIT = 4000  # alice's max_job_size
MAX_CONNECTIONS = 4
MAX_TRIES = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PBServe]:
    root = tmp_path_factory.mktemp("pbhostile")
    serve = PBServe(
        root,
        consume=False,
        pb={"max_connections": MAX_CONNECTIONS, "max_tries_per_connection": MAX_TRIES},
        alice_toml=f"max_job_size = {LIMIT}",
    ).start()
    yield serve
    serve.stop()


def attack(server: PBServe, scenario: str, size: int = 1, password: str = PASSWORD) -> list[dict]:
    result = run([sys.executable, CLIENT, str(server.port), password, scenario, str(size)],
                 timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def still_serving(server: PBServe) -> None:
    (answer,) = attack(server, "names")
    assert answer == {"ok": "['pass', 'fail', 'gate']"}, answer


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("too_few_args", "try: wrong arguments"),
        ("too_many_args", "try: wrong arguments"),
        ("patch_not_bytes", "the diff must be bytes, not int"),
        ("patch_not_pair", "patch must be (patchlevel, diff)"),
        ("patchlevel_huge", "patchlevel must be a small non-negative integer"),
        ("builders_not_list", "builderNames must be a list of names"),
        ("branch_not_text", "branch must be a string, not list"),
        ("properties_not_json", "properties must be JSON values"),
    ],
)
def test_bad_try_arguments_are_refused(server: PBServe, scenario: str, message: str) -> None:
    before = server.jobs()
    (answer,) = attack(server, scenario)
    assert message in answer.get("error", ""), answer
    assert server.jobs() == before
    assert message in server.audit()


def test_unknown_and_private_methods_are_refused(server: PBServe) -> None:
    unknown, after = attack(server, "unknown_method")
    assert "unknown remote method 'frobnicate'" in unknown["error"]
    assert after == {"ok": "['pass', 'fail', 'gate']"}  # the connection survives a refused call
    private, _ = attack(server, "private_method")
    assert "unknown remote method '__init__'" in private["error"]
    assert "what=\"unknown remote method 'frobnicate'\"" in server.audit()


def test_a_flood_of_refused_calls_closes_the_connection(server: PBServe) -> None:
    before = server.audit().count("unknown remote method")
    answers = attack(server, "refusal_flood", size=30)
    assert all("error" in a for a in answers)
    assert "too many refused calls: closing" in answers[10]["error"]
    assert "closing" not in answers[9]["error"]
    # At most 10 audit lines, however many calls: the client cannot flood the log.
    assert server.audit().count("unknown remote method") - before == 10
    assert answers[-1]["type"] in ("PBConnectionLost", "DeadReferenceError"), answers[-1]
    still_serving(server)


def test_a_flood_of_logins_on_one_connection_is_cut(server: PBServe) -> None:
    answers = attack(server, "login_flood", size=10)
    assert all("ok" in a for a in answers[:6])
    assert "too many attempts on one connection" in answers[6]["error"]
    assert all("error" in a for a in answers[7:])


def test_unknown_method_before_login_is_refused(server: PBServe) -> None:
    (answer,) = attack(server, "root_unknown")
    assert "unknown remote method 'frobnicate'" in answer["error"]
    still_serving(server)


def test_big_message_before_login_is_dropped_unbuffered(server: PBServe) -> None:
    (answer,) = attack(server, "big_login", size=200_000)
    assert "error" in answer  # the connection was cut while the client still sent
    assert "PB message over 16384 bytes" in server.audit()
    still_serving(server)


def test_oversized_diff_is_dropped_before_it_is_buffered_whole(server: PBServe) -> None:
    before = server.jobs()
    # Over alice's limit plus room for the other arguments, under Banana's own per-string
    # limit: the door cuts the connection once the message passes the limit.
    (answer,) = attack(server, "big_patch", size=300_000)
    assert "error" in answer
    assert f"PB message over {LIMIT + 64 * 1024} bytes" in server.audit()
    # Over Banana's limit: refused on the length prefix, before any of it is read.
    (answer,) = attack(server, "big_patch", size=700_000)
    assert "error" in answer
    assert "String too long" in server.audit()
    assert server.jobs() == before
    still_serving(server)


def test_many_small_parts_count_as_one_message(server: PBServe) -> None:
    # Banana's own limit is per string: 2000 strings of 100 bytes pass it, not ours.
    (answer,) = attack(server, "big_list", size=2000)
    assert "error" in answer
    assert server.jobs() == []
    still_serving(server)


def test_diff_over_the_limit_is_refused_at_the_door(server: PBServe) -> None:
    (answer,) = attack(server, "big_patch", size=LIMIT + 100)
    assert f"more than the limit of {LIMIT} for 'alice'" in answer["error"]
    assert server.jobs() == []


def test_flood_of_try_calls_is_cut_per_connection(server: PBServe) -> None:
    before = server.jobs()
    answers = attack(server, "flood", size=MAX_TRIES + 2)
    assert [("ok" in a) for a in answers] == [True] * MAX_TRIES + [False, False]
    assert "too many try calls on one connection" in answers[-1]["error"]
    assert len(server.jobs()) == len(before) + MAX_TRIES
    still_serving(server)


def test_garbage_bytes_are_dropped(server: PBServe) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(range(256)) * 4)
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass  # the door answers with its dialects, then cuts the connection
        except ConnectionResetError:
            pass
    wait_until(lambda: "malformed PB data" in server.audit(), timeout=30)
    still_serving(server)


def test_flood_of_connections_is_refused_over_the_limit(server: PBServe) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(MAX_CONNECTIONS)]  # fmt: skip
    try:
        for sock in held:
            assert sock.recv(100)  # accepted: the door sent its dialect list
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            extra.settimeout(10)
            assert extra.recv(100) == b""  # closed at once
        assert "outcome=\"too many connections\"" in server.audit()
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: _serves(server), timeout=20)


def _serves(server: PBServe) -> bool:
    answers = attack(server, "names")
    return answers == [{"ok": "['pass', 'fail', 'gate']"}]


def test_wrong_passwords_lock_the_address_out(tmp_path: Path) -> None:
    serve = PBServe(
        tmp_path, consume=False,
        top_toml="[serve]\nmax_auth_failures_per_address = 3\nauth_penalty_seconds = 600",
    )  # fmt: skip
    # serve's table is written by PBServe too: merge ours in by rewriting the file.
    text = serve.config.read_text().replace(
        "[serve]\nmax_auth_failures_per_address = 3\nauth_penalty_seconds = 600\n[serve]\n",
        "[serve]\nmax_auth_failures_per_address = 3\nauth_penalty_seconds = 600\n",
    )
    serve.config.write_text(text)
    serve.start()
    try:
        for _ in range(3):
            (answer,) = attack(serve, "names", password="wrong")
            assert "wrong user name or password" in answer["error"]
        # Locked out now: even the right password is refused, the SSH door's penalty.
        (answer,) = attack(serve, "names")
        assert "locked out" in answer["error"]
        audit = serve.audit()
        assert audit.count("event=auth outcome=failed method=pb user=alice") == 3
        assert "event=lockout address=127.0.0.1" in audit
    finally:
        serve.stop()


def test_a_silent_connection_is_closed_at_the_login_deadline(tmp_path: Path) -> None:
    serve = PBServe(tmp_path, consume=False, pb={"login_timeout": 1}).start()
    try:
        with socket.create_connection(("127.0.0.1", serve.port), timeout=30) as sock:
            sock.settimeout(30)
            while sock.recv(4096):  # the dialect list, then EOF at the deadline
                pass
        wait_until(lambda: 'outcome="login timeout"' in serve.audit(), timeout=30)
    finally:
        serve.stop()
