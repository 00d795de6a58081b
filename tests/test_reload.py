"""SIGHUP reloads the consumer's config: new jobs use it, running builds keep theirs, and
a config that fails to check is refused with a log line while the old one stays."""

from __future__ import annotations

import signal
import subprocess

from helpers import venv_bin, wait_until
from test_consumer import blocking_builder, store_of, submit, wait_file, write_config


def test_sighup_reloads_the_consumer_without_losing_a_build(tmp_path):
    slow = {"command": blocking_builder(tmp_path)}
    config = write_config(tmp_path, builders={"slow": slow}, users={"*": {}})
    first = submit(config, builders=["slow"])
    log = tmp_path / "consumer.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([venv_bin("tryssh"), "consume", "--config", str(config)],
                                stderr=err)  # fmt: skip
    try:
        wait_file(tmp_path / "started")
        # The admin removes "slow" and adds "lint", then reloads.
        write_config(tmp_path, builders={"lint": {"command": ["true"]}}, users={"*": {}})
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "event=reloaded" in log.read_text(), timeout=30, message=log.read_text)
        second = submit(config, builders=["lint"])
        wait_until(lambda: (store_of(config).read(second) or {}).get("state") == "success",
                   timeout=30, message=log.read_text)  # fmt: skip

        # A broken config is refused, logged, and the one in use stays.
        config.write_text(config.read_text() + "[builders.bad]\ncommand = []\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "event=reload-failed" in log.read_text(), timeout=30,
                   message=log.read_text)
        third = submit(config, builders=["lint"])
        wait_until(lambda: (store_of(config).read(third) or {}).get("state") == "success",
                   timeout=30, message=log.read_text)  # fmt: skip
        assert proc.poll() is None, "SIGHUP must not stop the consumer"

        # The first build, started under the old config, finishes under it.
        (tmp_path / "go").touch()
        wait_until(lambda: (store_of(config).read(first) or {}).get("state") == "success",
                   timeout=30, message=log.read_text)  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    failed = next(line for line in text.splitlines() if "event=reload-failed" in line)
    assert "builders.bad.command: must not be empty" in failed
    assert 'kept="the config in use"' in failed


def test_reload_refuses_a_new_jobdir_and_keeps_the_old_config(tmp_path):
    import io

    from tryssh.server.config import load_config
    from tryssh.server.consumer import Consumer, EventLog

    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    out = io.StringIO()
    consumer = Consumer(load_config(str(config)), log=EventLog(out))
    try:
        text = config.read_text()
        config.write_text(text.replace(str(tmp_path / "jobdir"), str(tmp_path / "elsewhere")))
        assert consumer.reload() is False
        assert "jobdir: changed; a change of jobdir takes a restart" in out.getvalue()
        assert consumer.config.jobdir == str(tmp_path / "jobdir")
        config.write_text(text + '[builders.lint]\ncommand = ["true"]\nconcurrency = 3\n')
        assert consumer.reload() is True
        assert set(consumer.config.builders) == {"unit", "lint"}
        slots = consumer._builder_slots["lint"]
        assert all(slots.acquire(blocking=False) for _ in range(3))
        assert not slots.acquire(blocking=False)  # concurrency 3, from the new config
    finally:
        consumer.close()
