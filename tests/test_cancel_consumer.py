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
from tryssh.core.logfmt import EventLog
from tryssh.server import builders as builders_mod
from tryssh.server.config import load_config
from tryssh.server.consumer import Consumer


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
