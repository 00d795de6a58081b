"""The consumer with real parts: jobdirs, inotify, subprocesses, signals, the CLI."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import unprivileged, venv_bin, wait_until
from helpers import write_master_config as write_config

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.logfmt import EventLog
from tryssh.core.records import INTERRUPTED, RecordStore, builder_entry, lock_job, new_record
from tryssh.server.config import load_config
from tryssh.server.consumer import Consumer


def submit(config_path: Path, builders=None, who="alice", branch="main", patch=b"p\n",
           where="new") -> str:  # fmt: skip
    jobdir = Jobdir(str(config_path.parent / "jobdir"))
    data = encode_job(Job("id", branch, "rev", 1, patch, builders, who=who))
    name = jobdir.deliver_bytes(data)
    if where == "cur":
        jobdir.claim(name)
    return name


def store_of(config_path: Path) -> RecordStore:
    return RecordStore(str(config_path.parent / "jobdir" / "state"))


def consume_once(config_path: Path) -> str:
    out = io.StringIO()
    consumer = Consumer(load_config(str(config_path)), log=EventLog(out, verbose=True))
    try:
        assert consumer.run(once=True) == 0
    finally:
        consumer.close()
    return out.getvalue()


# --- per job: policy -----------------------------------------------------------------


@pytest.fixture
def policy_config(master_config):
    return master_config(
        builders={"unit": {"command": ["true"]}, "docs": {"command": ["true"]},
                  "other": {"command": ["true"]}},
        users={"alice": {"builders": ["unit", "docs"], "branches": ["main", "rel/*"],
                         "max_job_size": 1000, "max_pending": 1}},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"builders": ["nope"]}, "unknown builder 'nope'"),
        ({"builders": ["other"]}, "builder 'other' is not allowed for 'alice'"),
        ({"branch": "dev"}, "branch 'dev' is not allowed for 'alice'"),
        ({"patch": b"x" * 2000}, "more than the limit of 1000"),
        ({"who": "mallory"}, "user 'mallory' is not allowed"),
    ],
)
def test_refused_jobs_are_kept_with_reason(policy_config, kwargs, reason):
    name = submit(policy_config, **{"builders": ["unit"], **kwargs})
    log = consume_once(policy_config)
    record = store_of(policy_config).read(name)
    assert record["state"] == "rejected"
    assert reason in record["reason"]
    assert record["builders"] == {}
    assert os.path.exists(policy_config.parent / "jobdir" / "cur" / name)  # kept
    assert f"job={name}" in log and "state=rejected" in log


def test_max_pending_refuses_beyond_the_limit(policy_config):
    store = store_of(policy_config).create()
    running = submit(policy_config, builders=["unit"], where="cur")
    store.write(new_record(running, who="alice", state="running",
                           builders={"unit": builder_entry(state="running")}))  # fmt: skip
    lock = lock_job(str(policy_config.parent / "jobdir" / "cur" / running))  # a live consumer
    try:
        name = submit(policy_config, builders=["unit"])
        consume_once(policy_config)
    finally:
        lock.release()
    record = store.read(name)
    assert record["state"] == "rejected"
    assert "already has 1 pending jobs (max_pending is 1)" in record["reason"]


def test_unparsable_job_is_rejected_not_dropped(policy_config):
    jobdir = Jobdir(str(policy_config.parent / "jobdir"))
    name = jobdir.deliver_bytes(b"5:hello,")
    consume_once(policy_config)
    record = store_of(policy_config).read(name)
    assert record["state"] == "rejected" and record["reason"].startswith("bad job:")
    assert record["size"] == 8
    assert os.path.exists(os.path.join(jobdir.cur, name))


def test_empty_builder_list_means_the_allowed_builders(policy_config):
    name = submit(policy_config, builders=None)
    consume_once(policy_config)
    record = store_of(policy_config).read(name)
    assert record["state"] == "success"
    assert list(record["builders"]) == ["unit", "docs"]
    assert all(e["result"] == "success" for e in record["builders"].values())
    assert record["sha256"] and record["size"] and record["received"] and record["finished"]


def test_claimed_job_without_record_is_processed(policy_config):
    name = submit(policy_config, builders=["unit"], where="cur")
    consume_once(policy_config)
    assert store_of(policy_config).read(name)["state"] == "success"


def test_per_builder_concurrency_limit(tmp_path):
    log = tmp_path / "events"
    script = f'echo "start $$" >> {log}; sleep 0.2; echo "end $$" >> {log}'
    config = write_config(
        tmp_path,
        builders={"one": {"command": ["sh", "-c", script], "concurrency": 2}},
        users={"*": {}},
    )
    names = [submit(config, builders=["one"]) for _ in range(6)]
    consume_once(config)
    assert all(store_of(config).read(n)["state"] == "success" for n in names)
    depth = peak = 0
    for line in log.read_text().splitlines():
        depth += 1 if line.startswith("start") else -1
        peak = max(peak, depth)
    assert peak == 2


# --- the claim loop ------------------------------------------------------------------


@pytest.mark.parametrize("inotify", [True, False])
def test_running_consumer_picks_up_new_jobs(tmp_path, inotify):
    config_path = write_config(tmp_path, builders={"unit": {"command": ["true"]}},
                               users={"*": {}}, consume={"poll_interval": 0.05})  # fmt: skip
    out = io.StringIO()
    consumer = Consumer(load_config(str(config_path)), log=EventLog(out), use_inotify=inotify)
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        wait_until(lambda: "event=start" in out.getvalue())
        assert ("watch=inotify" in out.getvalue()) == inotify
        names = [submit(config_path, builders=["unit"]) for _ in range(5)]
        store = store_of(config_path)
        for name in names:
            wait_until(lambda n=name: (store.read(n) or {}).get("state") == "success",
                       message=out.getvalue)  # fmt: skip
    finally:
        consumer.stop()
        thread.join(30)
        consumer.close()
    assert not thread.is_alive()


def test_cli_once_with_journald_lines(tmp_path):
    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    names = [submit(config, builders=["unit"]) for _ in range(3)]
    env = {**os.environ, "JOURNAL_STREAM": "8:1234"}
    proc = subprocess.run([venv_bin("tryssh"), "consume", "--config", str(config), "--once"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines)
    assert f"<6>job={names[0]} who=alice state=running builder=unit attempt=1" in lines
    assert all(store_of(config).read(n)["state"] == "success" for n in names)
    assert not Jobdir(str(tmp_path / "jobdir")).pending()


@pytest.mark.parametrize(
    ("builders", "needle"),
    [
        ({"unit": {"command": ["true"], "colour": "red"}}, "builders.unit.colour: unknown key"),
        ({"unit": {"command": ["/no/such/prog"]}}, "builders.unit.command: program"),
        ({"hook": {"webhook": "http://127.0.0.1:9/", "secret_file": "/no/secret"}},
         "builders.hook.secret_file: cannot read"),
        ({"fwd": {"forward": "/no/such/jobdir"}}, "builders.fwd.forward:"),
    ],
)  # fmt: skip
def test_config_errors_exit_78_before_anything_runs(tmp_path, builders, needle):
    config = write_config(tmp_path, builders=builders, users={"*": {}})
    name = submit(config)
    proc = subprocess.run([venv_bin("tryssh"), "consume", "--config", str(config), "--once"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 78, proc.stderr
    assert str(config) in proc.stderr and needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert Jobdir(str(tmp_path / "jobdir")).pending() == [name]  # nothing ran


def wait_file(path: Path, timeout: float = 30) -> None:
    wait_until(path.exists, timeout=timeout, message=f"{path} never appeared")


def blocking_builder(tmp_path: Path) -> list[str]:
    """A build that says it started (appending to 'started') and waits for the file 'go'."""
    script = (
        f'echo "$TRY_JOB $$" >> {tmp_path}/started\n'
        f"while [ ! -e {tmp_path}/go ]; do sleep 0.02; done\n"
    )
    return ["sh", "-c", script]


def test_sigterm_finishes_in_flight_work_then_exits_0(tmp_path):
    config = write_config(tmp_path, builders={"slow": {"command": blocking_builder(tmp_path)}},
                          users={"*": {}})  # fmt: skip
    name = submit(config, builders=["slow"])
    errfile = tmp_path / "consumer.log"
    with open(errfile, "w") as err:
        proc = subprocess.Popen([venv_bin("tryssh"), "consume", "--config", str(config)],
                                stderr=err)  # fmt: skip
    try:
        wait_file(tmp_path / "started")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "event=stopping" in errfile.read_text())
        later = submit(config, builders=["slow"])
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)  # still finishing its build
        (tmp_path / "go").touch()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert store_of(config).read(name)["state"] == "success"
    assert Jobdir(str(tmp_path / "jobdir")).pending() == [later]  # not claimed after SIGTERM
    assert "event=stopped" in errfile.read_text()


# --- several consumers, crashes ------------------------------------------------------


def test_two_consumers_race_on_500_jobs(tmp_path):
    out = tmp_path / "done.txt"
    config = write_config(
        tmp_path,
        builders={"noop": {"command": ["sh", "-c", f'echo "$TRY_JOB" >> {out}'],
                           "concurrency": 4}},
        users={"*": {}}, consume={"max_parallel": 8},
    )  # fmt: skip
    names = [submit(config, builders=["noop"]) for _ in range(250)]  # a backlog at start
    argv = [venv_bin("tryssh"), "consume", "--config", str(config)]
    # stderr into files: an unread pipe fills up and blocks the consumer's logging.
    errs = [open(tmp_path / f"consumer{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(argv, stderr=err) for err in errs]
    try:
        wait_until(lambda: all("event=start" in (tmp_path / f"consumer{i}.log").read_text()
                               for i in range(2)))  # fmt: skip
        names += [submit(config, builders=["noop"]) for _ in range(250)]  # and while running
        store = store_of(config)
        wait_until(lambda: len(store.final_jobs()) == 500, timeout=120, interval=0.2)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc in procs]
    assert codes == [0, 0]
    done = out.read_text().split()
    assert sorted(done) == sorted(names)  # each job exactly once
    assert all(store.read(n)["state"] == "success" for n in names)
    for err in errs:
        err.close()
    logs = [(tmp_path / f"consumer{i}.log").read_text() for i in range(2)]
    assert all("state=success" in log for log in logs), "one consumer did all the work"


def test_sigkill_mid_build_then_restart_loses_nothing(tmp_path):
    config = write_config(
        tmp_path,
        builders={"slow": {"command": blocking_builder(tmp_path), "concurrency": 1},
                  "fast": {"command": ["true"]}},
        users={"*": {}},
    )  # fmt: skip
    first = submit(config, builders=["slow", "fast"])
    store = store_of(config)
    proc = subprocess.Popen([venv_bin("tryssh"), "consume", "--config", str(config)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_file(tmp_path / "started")
        second = submit(config, builders=["slow"])  # waits for slow's only slot

        def crashed_state() -> bool:
            rec, rec2 = store.read(first), store.read(second)
            return bool(rec and rec2 and rec["builders"]["fast"]["result"] == "success"
                        and rec2["state"] == "queued")  # fmt: skip

        wait_until(crashed_state)
    finally:
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait()
    # The orphaned build (its own process group) is killed too, as a reboot would.
    build_pid = int((tmp_path / "started").read_text().split()[1])
    os.kill(build_pid, signal.SIGKILL)
    assert store.read(first)["builders"]["slow"]["state"] == "running"

    (tmp_path / "go").touch()
    log = consume_once(config)
    record = store.read(first)
    assert record["state"] == "interrupted"
    assert record["builders"]["fast"]["result"] == "success"  # kept
    slow = record["builders"]["slow"]
    assert (slow["state"], slow["result"]) == ("done", "error")
    assert slow["reason"].startswith(INTERRUPTED)  # (maybe: its leftover group was killed)
    assert "slow was running and was not run again" in record["reason"]
    assert record["resumed"]
    assert record["resumed_from"] == f"{os.uname().nodename}:{proc.pid}"
    assert record["consumer"] == f"{os.uname().nodename}:{os.getpid()}"
    # The queued job's build never started, so it runs now, once.
    assert store.read(second)["state"] == "success"
    starts = (tmp_path / "started").read_text().split("\n")
    assert [s.split()[0] for s in starts if s] == [first, second]
    assert f"job={first}" in log and "event=resumed" in log
    assert store.active_jobs() == []


def test_record_whose_job_file_is_gone_ends_as_error(tmp_path):
    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    store = store_of(config).create()
    name = "1600000000.M000001P1Q1Rx.gone"
    store.write(new_record(name, who="alice", state="queued",
                           builders={"unit": builder_entry()}))  # fmt: skip
    consume_once(config)
    record = store.read(name)
    assert record["state"] == "error" and "gone" in record["reason"]
    assert record["builders"]["unit"]["result"] == "error"


def test_a_live_consumers_job_is_not_resumed(tmp_path):
    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    store = store_of(config).create()
    name = submit(config, builders=["unit"], where="cur")
    store.write(new_record(name, who="alice", state="running",
                           builders={"unit": builder_entry(state="running")}))  # fmt: skip
    lock = lock_job(str(tmp_path / "jobdir" / "cur" / name))  # as a live consumer holds it
    try:
        consume_once(config)
        assert store.read(name)["state"] == "running"
    finally:
        lock.release()
    consume_once(config)
    assert store.read(name)["state"] == "interrupted"


def test_consumer_refuses_missing_jobdir(tmp_path):
    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    os.rmdir(tmp_path / "jobdir" / "new")
    proc = subprocess.run([venv_bin("tryssh"), "consume", "--config", str(config), "--once"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 73 and "new/ is missing" in proc.stderr


def test_module_imports_stay_lean():
    code = (
        "import sys, tryssh.server.queries; "
        "print('paramiko' in sys.modules, 'click' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split() == ["False", "False"]


def test_stale_active_copy_is_cleaned_at_start(tmp_path):
    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    store = store_of(config).create()
    name = submit(config, builders=["unit"], where="cur")
    record = new_record(name, who="alice", state="running")
    store.write(record)
    stale = Path(store.active_path(name)).read_bytes()
    record["state"] = "success"
    store.write(record)
    Path(store.active_path(name)).write_bytes(stale)
    consume_once(config)
    assert store.active_jobs() == []
    assert store.read(name)["state"] == "success"


# --- permissions: named paths, no endless loop -----------------------------------------


def consume_once_with_mode(config: Path, directory: Path, mode: int):
    """``consume --once`` without the power to ignore modes, *directory* set to *mode*."""
    directory.chmod(mode)
    try:
        argv = unprivileged([venv_bin("tryssh"), "consume", "--config", str(config), "--once"])
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        directory.chmod(0o2770)


def test_once_exits_when_cur_is_not_writable(tmp_path):
    """--once must end (a cron job would hang) and the log must name the path."""
    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    name = submit(config, builders=["unit"])
    cur = tmp_path / "jobdir" / "cur"
    result = consume_once_with_mode(config, cur, 0o555)
    assert result.returncode == 77, result.stderr
    claim = next(x for x in result.stderr.splitlines() if "event=claim-failed" in x)
    assert f"rename {tmp_path}/jobdir/new/{name} -> {cur}/{name}: Permission denied" in claim
    assert result.stderr.endswith(
        f"tryssh: 1 jobs left in new/, cannot claim: rename {tmp_path}/jobdir/new/{name} -> "
        f"{cur}/{name}: Permission denied\n"
    )
    assert Jobdir(str(tmp_path / "jobdir")).pending() == [name]  # nothing lost


def test_unreadable_jobdir_says_permission_denied_not_missing(tmp_path):
    config = write_config(tmp_path, builders={"unit": {"command": ["true"]}}, users={"*": {}})
    jobdir = tmp_path / "jobdir"
    # No search permission: as for an account outside the jobdir's group.
    result = consume_once_with_mode(config, jobdir, 0o600)
    assert result.returncode == 77, result.stderr
    assert "is missing" not in result.stderr
    assert f"permission denied: stat {jobdir}/tmp: Permission denied" in result.stderr
