"""Hostile files in the jobdir and damaged state, against the real consumer (issue 14).

Each test plants what a group member (or a crash, or a full disk) can leave, runs the consumer
(``run(once=True)``, or the CLI under a deadline) and checks that it ends by itself, that
every job name ends with a record saying why, and that nothing is built twice.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import venv_bin, wait_until
from test_consumer import consume_once, store_of, submit, write_config

from tryssh.core.records import INTERRUPTED, RecordStore, new_record
from tryssh.server.config import load_config
from tryssh.server.consumer import Consumer, EventLog
from tryssh.server.queries import job_status, recent_jobs

NAME = "1700000000.M1P1Q1R1.planted"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    marker = tmp_path / "built"
    build = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    return write_config(tmp_path, {"unit": {"command": build}}, {"*": {"builders": ["unit"]}})


def jobdir(config: Path) -> Path:
    return config.parent / "jobdir"


def builds(config: Path) -> int:
    marker = config.parent / "built"
    return len(marker.read_text()) if marker.exists() else 0


def consume_bounded(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``tryssh consume --once`` in a subprocess: a hang fails the test instead of blocking it."""
    return subprocess.run(
        [venv_bin("tryssh"), "consume", "--config", str(config), "--once"],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


# -- odd files in new/ and cur/ -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["new", "cur"])
def test_a_fifo_gets_a_rejected_record_and_blocks_nothing(config: Path, where: str) -> None:
    os.mkfifo(jobdir(config) / where / NAME)
    name = submit(config, ["unit"])
    # Before: the FIFO blocked a slot for ever (and, in cur/, every restart).
    result = consume_bounded(config)
    assert result.returncode == 0, result.stderr
    store = store_of(config)
    assert store.read(name)["state"] == "success"
    record = store.read(NAME)
    assert record["state"] == "rejected"
    assert "a FIFO" in record["reason"]
    # tryserver status of it answers at once (from the record) and never hangs.
    assert job_status(str(jobdir(config)), store.path, NAME)["state"] == "rejected"


def test_status_of_an_unclaimed_fifo_does_not_hang(config: Path) -> None:
    os.mkfifo(jobdir(config) / "new" / NAME)
    result = subprocess.run(
        [venv_bin("tryserver"), "--config", str(config), "--user", "alice", "status", NAME],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "SSH_CONNECTION": "127.0.0.1 1 127.0.0.1 22",
             "SSH_ORIGINAL_COMMAND": f"tryserver status {NAME}"},
    )  # fmt: skip
    assert result.returncode in (0, 66), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["directory", "symlink", "unreadable"])
def test_other_non_jobs_get_a_rejected_record(config: Path, kind: str, tmp_path: Path) -> None:
    path = jobdir(config) / "new" / NAME
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        secret = tmp_path / "secret"
        secret.write_text("root:secret-hash\n")
        path.symlink_to(secret)
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.write_bytes(b"x")
        path.chmod(0)
    out = consume_once(config)
    record = store_of(config).read(NAME)
    assert record is not None and record["state"] == "rejected", out
    assert "secret" not in json.dumps(record)
    # Logged once, not at every scan.
    out = consume_once(config) + consume_once(config)
    assert NAME not in out


def test_a_planted_hard_link_is_not_read(config: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("5:$6$secret-hash-bytes\n")
    os.link(secret, jobdir(config) / "new" / NAME)
    out = consume_once(config)
    record = store_of(config).read(NAME)
    assert record["state"] == "rejected", out
    assert "hard link" in record["reason"]
    # Before: the reason quoted the first bytes ("found b'root:$6$secr'").
    assert "secret-hash" not in json.dumps(record) and "secret-hash" not in out


# -- damaged records -------------------------------------------------------------------------------


DAMAGED = {
    "truncated": b'{"job": "x", "state": "run',
    "wrong shape": b"[1, 2, 3]\n",
    "finished is a number": None,  # filled in below: a whole record with "finished": 12345
    "no builders": b'{"job": "x", "state": "success"}\n',
}


def _damage(path: Path, how: str, name: str) -> None:
    if how == "directory":
        path.mkdir()
    elif how == "finished is a number":
        record = new_record(name, state="success", finished=12345)
        path.write_text(json.dumps(record))
    else:
        path.write_bytes(DAMAGED[how])


@pytest.mark.parametrize("how", [*DAMAGED, "directory"])
def test_damaged_final_records_do_not_break_readers(config: Path, how: str) -> None:
    good = submit(config, ["unit"])
    consume_once(config)
    store = store_of(config)
    bad = submit(config, ["unit"], where="cur")
    _damage(Path(store.final_path(bad)), how, bad)
    # The consumer (start-up gc and resume) neither crashes nor builds the job again.
    config.write_text(config.read_text().replace("[builders", "keep_days = 1\n[builders", 1))
    result = consume_bounded(config)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert builds(config) == 1
    # status names the damage without a server path; jobs skips it and lists the rest.
    with pytest.raises(Exception) as caught:
        job_status(str(jobdir(config)), store.path, bad)
    assert getattr(caught.value, "exit_code", None) == 65
    assert "damaged" in str(caught.value) and str(config.parent) not in str(caught.value)
    assert [r["job"] for r in recent_jobs(store.path, None)] == [good]


@pytest.mark.parametrize("how", ["truncated", "wrong shape", "directory"])
def test_resumed_job_with_a_damaged_active_record_is_interrupted(config: Path, how: str) -> None:
    store = store_of(config)
    store.create()
    name = submit(config, ["unit"], where="cur")
    _damage(Path(store.active_path(name)), how, name)
    # Before: the job looked new and was built again, recorded as a plain success.
    result = consume_bounded(config)
    assert result.returncode == 0, result.stderr
    assert builds(config) == 0
    record = store.read(name)
    assert record["state"] == "interrupted"
    assert INTERRUPTED in record["reason"] and "damaged" in record["reason"]


# -- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only; the test is skipped elsewhere), unmounted at the end."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def test_a_job_claimed_on_a_full_disk_is_retried_when_space_returns(
    tmp_path: Path, tiny_fs: Path
) -> None:
    state = tiny_fs / "state"
    config = write_config(
        tmp_path, {"unit": {"command": ["true"]}}, {"*": {"builders": ["unit"]}},
        state_dir=str(state), log_dir=str(tmp_path / "logs"),
    )  # fmt: skip
    consumer = Consumer(load_config(str(config)), log=EventLog(io.StringIO(), verbose=True))
    consumer.retry_interval = 0.2
    consumer.prepare()
    filler = _fill(tiny_fs)
    name = submit(config, ["unit"])
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        out = consumer.log.stream  # type: ignore[attr-defined]
        wait_until(lambda: "cannot-record" in out.getvalue(), timeout=20, message=out.getvalue)
        store = RecordStore(str(state))
        assert store.read(name) is None  # claimed, no record: the disk is full
        filler.unlink()
        # Before: it stayed in cur/ without a record ("queued" for good) until a restart.
        record = wait_until(
            lambda: (r := store.read(name)) and r["state"] == "success" and r,
            timeout=20,
            message=out.getvalue,
        )
        assert record["builders"]["unit"]["result"] == "success"
    finally:
        consumer.stop()
        thread.join(timeout=30)
        consumer.close()


def test_a_planted_name_too_long_for_a_record_still_gets_one(config: Path) -> None:
    long_name = "1700000000.M1P1Q1R1." + "x" * 233  # 253 characters
    (jobdir(config) / "new" / long_name).write_bytes(b"not a job")
    out = consume_once(config)
    # Before: the record could not be written (ENAMETOOLONG) and the job ended with none.
    renamed = [line for line in out.splitlines() if "event=renamed" in line]
    assert len(renamed) == 1 and long_name in renamed[0], out
    new_name = renamed[0].split("job=", 1)[1].split()[0]
    record = store_of(config).read(new_name)
    assert record["state"] == "rejected"
    assert os.listdir(jobdir(config) / "new") == []


# -- kill -9 of the consumer: its build must not keep running unseen ------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_orphaned_build_is_ended_on_resume(tmp_path: Path) -> None:
    from test_consumer import blocking_builder, wait_file

    config = write_config(
        tmp_path,
        {"slow": {"command": blocking_builder(tmp_path), "concurrency": 1}},
        {"*": {}},
    )
    first = submit(config, ["slow"])
    proc = subprocess.Popen(
        [venv_bin("tryssh"), "consume", "--config", str(config)], stderr=subprocess.DEVNULL
    )
    try:
        wait_file(tmp_path / "started")
        # The consumer notes the build's process group right after starting it.
        wait_until(lambda: list((config.parent / "jobdir" / "logs").rglob("*.pgid")))
    finally:
        proc.kill()  # SIGKILL: its build, in a process group of its own, lives on
        proc.wait()
    orphan = int((tmp_path / "started").read_text().split()[1])
    try:
        assert _alive(orphan)
        second = submit(config, ["slow"])
        restarted = subprocess.Popen(
            [venv_bin("tryssh"), "consume", "--config", str(config)], stderr=subprocess.PIPE
        )
        try:
            # Before: the orphan kept running next to the resumed consumer's build of the
            # second job, two builds at once under concurrency = 1.
            wait_until(lambda: not _alive(orphan), timeout=30, message="the orphan still runs")
            record = wait_until(
                lambda: (r := store_of(config).read(first)) and r["state"] == "interrupted" and r,
                timeout=30,
            )
            assert f"process group {orphan} was killed" in record["builders"]["slow"]["reason"]
            wait_until(lambda: len((tmp_path / "started").read_text().splitlines()) == 2)
            (tmp_path / "go").touch()
            wait_until(
                lambda: (r := store_of(config).read(second)) and r["state"] == "success",
                timeout=30,
            )
        finally:
            (tmp_path / "go").touch()  # a stopping consumer waits for its builds
            restarted.terminate()
            restarted.wait(timeout=30)
    finally:
        if _alive(orphan):
            os.killpg(orphan, 9)


def test_a_name_that_cannot_be_claimed_is_logged_once(config: Path) -> None:
    (jobdir(config) / "new" / NAME).mkdir()
    (jobdir(config) / "cur" / NAME).mkdir()
    (jobdir(config) / "cur" / NAME / "x").write_text("x")  # rename onto it: ENOTEMPTY
    consumer = Consumer(load_config(str(config)), log=EventLog(io.StringIO(), verbose=True))
    consumer.prepare()
    try:
        for _ in range(3):
            consumer._drain()  # three scans
    finally:
        consumer._pool.shutdown(wait=True)
        consumer.close()
    # Before: one error line per scan, for ever.
    assert consumer.log.stream.getvalue().count("event=claim-failed") == 1  # type: ignore[attr-defined]
