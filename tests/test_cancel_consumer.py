"""The consumer's side of cancel: what a cancel does to builders of each kind and state."""

from __future__ import annotations

import io
import threading
from pathlib import Path

from helpers import wait_until
from helpers import write_master_config as write_config
from test_consumer import store_of, submit

from tryssh.client.results import LiveWait
from tryssh.client.transport import Destination
from tryssh.core.jobdir import Jobdir
from tryssh.core.logfmt import EventLog
from tryssh.server import builders as builders_mod
from tryssh.server.config import load_config
from tryssh.server.consumer import SENT, Consumer


def test_a_webhook_already_sent_is_marked_and_pending_builders_never_start(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        builders={"hook": {"webhook": "http://127.0.0.1:9/never-called"},
                  "later": {"command": ["true"], "concurrency": 1}},
        users={"*": {}}, consume={"poll_interval": 0.05},
    )  # fmt: skip
    sent = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def runner(ctx: builders_mod.BuildContext) -> builders_mod.Outcome:
        ran.append(ctx.builder.name)
        if ctx.builder.name == "hook":
            sent.set()
            release.wait(30)  # the POST is out; the cancel comes meanwhile
            return builders_mod.Outcome("success", reason="HTTP 200")
        return builders_mod.Outcome("success")

    consumer = Consumer(load_config(str(config)), log=EventLog(io.StringIO()), runner=runner)
    # Hold "later"'s only slot so that it stays pending while the hook is in flight.
    consumer._builder_slots["later"].acquire()
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        name = submit(config, builders=["hook", "later"])
        assert sent.wait(30)
        store = store_of(config)
        store.request_cancel(name, "alice")
        wait_until(lambda: (store.read(name) or {}).get("cancelled"))
        release.set()
        record = wait_until(lambda: (r := store.read(name)) and r["state"] == "cancelled" and r)
    finally:
        release.set()
        consumer._builder_slots["later"].release()
        consumer.stop()
        thread.join(30)
        consumer.close()
    hook, later = record["builders"]["hook"], record["builders"]["later"]
    assert hook["result"] == "success"
    assert hook["cancel"] == "already sent: a cancel cannot take it back"
    assert later["result"] == "cancelled" and later["reason"] == "cancelled by alice"
    assert ran == ["hook"]  # "later" never started
    assert record["cancelled"]["by"] == "alice"


def test_a_long_quiet_wait_shows_the_elapsed_time_now_and_then() -> None:
    lines: list[str] = []
    waiter = LiveWait(Destination(), lambda: None, "j", lines.append)  # type: ignore[arg-type]
    waiter.show({"job": "j", "state": "running", "builders": {"unit": {"state": "running"}}})
    assert lines == ["job j: running", "  unit: running"]
    waiter._line(b'{"heartbeat": 10}', [])
    assert len(lines) == 2  # not yet: something was said a moment ago
    waiter.started -= 125
    waiter.last_output -= 61
    waiter._line(b'{"heartbeat": 130}', [])
    assert lines[-1] == "  ... running, 2m05s so far"


def test_followed_lines_carry_the_builders_name_when_there_are_several() -> None:
    lines: list[str] = []
    waiter = LiveWait(Destination(), lambda: None, "j", lines.append)  # type: ignore[arg-type]
    waiter.show({"job": "j", "state": "running", "builders": {"unit": {"state": "pending"}}})
    waiter.show_log_line("unit", "ok")
    two = {"unit": {"state": "pending"}, "lint": {"state": "pending"}}
    waiter.show({"job": "j", "state": "running", "builders": two})
    waiter.show_log_line("lint", "warning: x")
    assert lines[-1] == "lint| warning: x" and "ok" in lines


def forward_site(tmp_path: Path) -> tuple[Path, Jobdir]:
    """A config whose ``fwd`` forwards into a jobdir of its own (``elsewhere``) and whose
    ``slow`` runs until it is stopped (a minute at most)."""
    elsewhere = Jobdir(str(tmp_path / "elsewhere")).create()
    config = write_config(
        tmp_path,
        builders={"fwd": {"forward": elsewhere.path, "concurrency": 1},
                  "slow": {"command": ["sleep", "60"]}},
        users={"*": {}}, consume={"poll_interval": 0.05},
    )  # fmt: skip
    return config, elsewhere


def run_consumer(config: Path, hold: str | None = None) -> tuple[Consumer, threading.Thread]:
    consumer = Consumer(load_config(str(config)), log=EventLog(io.StringIO()))
    if hold:
        consumer._builder_slots[hold].acquire()  # its only slot is busy
    thread = threading.Thread(target=consumer.run)
    thread.start()
    return consumer, thread


def stop_consumer(consumer: Consumer, thread: threading.Thread) -> None:
    consumer.stop()
    thread.join(60)
    consumer.close()


def test_a_forward_cancelled_while_it_waits_for_its_slot_is_never_sent(tmp_path: Path) -> None:
    config, elsewhere = forward_site(tmp_path)
    consumer, thread = run_consumer(config, hold="fwd")
    store = store_of(config)
    try:
        name = submit(config, builders=["fwd"])
        wait_until(lambda: (store.read(name) or {}).get("state") == "queued")  # slot busy
        store.request_cancel(name, "alice")
        record = wait_until(lambda: (r := store.read(name)) and r["state"] == "cancelled" and r)
    finally:
        consumer._builder_slots["fwd"].release()
        stop_consumer(consumer, thread)
    entry = record["builders"]["fwd"]
    assert entry["result"] == "cancelled" and entry["reason"] == "cancelled by alice"
    assert elsewhere.pending() == []  # nothing to take back: nothing was sent


def test_a_forward_sent_before_the_cancel_says_it_cannot_be_taken_back(tmp_path: Path) -> None:
    config, elsewhere = forward_site(tmp_path)
    consumer, thread = run_consumer(config)
    store = store_of(config)
    try:
        name = submit(config, builders=["fwd", "slow"])
        wait_until(lambda: [e.get("state") for e in (store.read(name) or {}).get(
            "builders", {}).values()] == ["done", "running"])  # fmt: skip
        store.request_cancel(name, "alice")
        record = wait_until(lambda: (r := store.read(name)) and r["state"] == "cancelled" and r)
    finally:
        stop_consumer(consumer, thread)
    fwd, slow = record["builders"]["fwd"], record["builders"]["slow"]
    assert fwd["result"] == "unknown" and fwd["cancel"] == SENT
    assert len(elsewhere.pending()) == 1  # it stays sent
    assert slow["result"] == "cancelled" and slow["reason"] == "cancelled by alice"
