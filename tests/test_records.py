"""Job records: atomic group-readable writes, active/final placement, locks, overall state."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from tryssh.core.records import (
    INTERRUPTED,
    RecordStore,
    builder_entry,
    lock_job,
    new_record,
    now_iso,
    overall_state,
    parse_iso,
)

JOB = "1700000000.M000001P1Q1Rdeadbeef.host"


def test_active_then_final(tmp_path):
    store = RecordStore(str(tmp_path / "state")).create()
    record = new_record(JOB, who="alice", builders={"unit": builder_entry(log="/x")})
    store.write(record)
    assert os.path.exists(store.active_path(JOB))
    assert not os.path.exists(store.final_path(JOB))
    assert store.read(JOB)["state"] == "queued"
    assert store.pending_count("alice") == 1
    assert store.pending_count("bob") == 0

    record["state"] = "success"
    store.write(record)
    assert os.path.exists(store.final_path(JOB))
    assert not os.path.exists(store.active_path(JOB))
    assert store.read(JOB)["state"] == "success"
    assert store.pending_count("alice") == 0
    assert store.all_jobs() == [JOB]


def test_record_file_is_0640_json_with_every_key(tmp_path):
    store = RecordStore(str(tmp_path)).create()
    old = os.umask(0o077)  # the umask must not take the group's read bit
    try:
        store.write(new_record(JOB, state="rejected", reason="no"))
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(store.final_path(JOB)).st_mode)
    assert mode == 0o640
    with open(store.final_path(JOB), encoding="utf-8") as f:
        data = json.load(f)
    for key in ("job", "state", "reason", "who", "branch", "baserev", "project",
                "repository", "comment", "size", "sha256", "received", "started",
                "finished", "updated", "builders"):  # fmt: skip
        assert key in data
    assert data["reason"] == "no"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_final_wins_over_stale_active_copy(tmp_path):
    store = RecordStore(str(tmp_path)).create()
    record = new_record(JOB, who="a")
    store.write(record)
    stale = open(store.active_path(JOB), "rb").read()
    record["state"] = "failure"
    store.write(record)
    with open(store.active_path(JOB), "wb") as f:  # as if the unlink was lost in a crash
        f.write(stale)
    assert store.read(JOB)["state"] == "failure"
    assert list(store.active_records()) == []


def test_job_lock_is_exclusive_across_processes_and_threads(tmp_path):
    job = tmp_path / JOB
    job.write_bytes(b"job")
    lock = lock_job(str(job))
    assert lock is not None
    assert lock_job(str(job)) is None  # another open description, same process
    code = (
        "import sys; from tryssh.core.records import lock_job;"
        f"sys.exit(0 if lock_job({str(job)!r}) is None else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    lock.release()
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 1
    assert job.read_bytes() == b"job"  # the lock never writes the job


def test_job_lock_dies_with_its_process(tmp_path):
    job = tmp_path / JOB
    job.write_bytes(b"job")
    code = (
        "import os, sys; from tryssh.core.records import lock_job;"
        f"lock = lock_job({str(job)!r}); print('locked', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "locked\n"
    assert lock_job(str(job)) is None
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait()
    assert lock_job(str(job)) is not None


def test_overall_state():
    def rec(*entries):
        return {"builders": {str(i): e for i, e in enumerate(entries)}}

    ok = builder_entry(state="done", result="success")
    bad = builder_entry(state="done", result="failure")
    err = builder_entry(state="done", result="error")
    intr = builder_entry(state="done", result="error", reason=INTERRUPTED)
    assert overall_state(rec(ok, ok)) == "success"
    assert overall_state(rec(ok, bad)) == "failure"
    assert overall_state(rec(bad, err)) == "error"
    assert overall_state(rec(err, intr, bad)) == "interrupted"


@settings(deadline=None)  # each example makes a state directory: disk time, not CPU
@given(st.sampled_from(["..", "../outside", "a/b", ".hidden", "", "x\0y"]), st.text(max_size=10))
def test_read_never_leaves_the_state_dir(tmp_path_factory, bad, suffix):
    root = tmp_path_factory.mktemp("records")
    state = root / "state"
    store = RecordStore(str(state)).create()
    (root / "outside.json").write_text('{"job": "outside", "state": "success"}')
    (state / ".hidden.json").write_text('{"job": ".hidden", "state": "success"}')
    name = bad if bad in ("..", "", ".hidden") else bad + suffix
    assert store.read(name) is None
    try:
        store.write(new_record(name, state="success"))
    except Exception as err:
        assert "not a job name" in str(err)
    else:
        raise AssertionError(f"wrote a record for {name!r}")


def test_iso_round_trip():
    stamp = now_iso()
    assert stamp.endswith("Z")
    assert abs(parse_iso(stamp) - __import__("time").time()) < 5
    assert parse_iso(None) is None
    assert parse_iso("garbage") is None


# -- history that scales: the per-user index, mtimes for gc ------------------------------------


def _final(store, job, who, finished="2026-01-01T00:00:00.000000Z"):
    from tryssh.core.records import new_record

    store.write(new_record(job, who=who, state="success", finished=finished))


def test_user_jobs_come_from_the_users_index(tmp_path):
    from tryssh.core.records import RecordStore, new_record, user_index_name

    store = RecordStore(str(tmp_path / "state")).create()
    for i in range(30):
        _final(store, f"{1_700_000_000 + i}.M000000P1Q{i}Rx.h", "bob" if i % 3 else "al/ice")
    store.write(new_record("1800000000.M000000P1Q99Rx.h", who="al/ice", state="running"))
    got = store.user_jobs("al/ice", 5)
    assert [r["job"] for r in got] == [
        "1800000000.M000000P1Q99Rx.h", "1700000027.M000000P1Q27Rx.h",
        "1700000024.M000000P1Q24Rx.h", "1700000021.M000000P1Q21Rx.h",
        "1700000018.M000000P1Q18Rx.h",
    ]  # fmt: skip
    assert user_index_name("al/ice") == "al%2Fice.log"
    assert user_index_name("..") == "%2E%2E.log"
    index = tmp_path / "state" / "by-user" / "al%2Fice.log"
    assert len(index.read_text().split()) == 10  # the finished jobs only
    # A record removed by gc is skipped.
    store.remove("1700000027.M000000P1Q27Rx.h")
    assert [r["job"] for r in store.user_jobs("al/ice", 2)][1] == "1700000024.M000000P1Q24Rx.h"
    assert store.user_jobs("nobody", 5) == []


def test_index_is_built_once_for_an_older_state_directory(tmp_path):
    import shutil

    from tryssh.core.records import RecordStore

    store = RecordStore(str(tmp_path / "state")).create()
    for i in range(5):
        _final(store, f"{1_700_000_000 + i}.M0P1Q{i}Rx.h", "bob")
    shutil.rmtree(tmp_path / "state" / "by-user")  # as a state dir of an older version
    assert RecordStore(str(tmp_path / "state")).user_jobs("bob", 3) is None  # no index
    store = RecordStore(str(tmp_path / "state")).create()
    assert [r["job"] for r in store.user_jobs("bob", 3)] == [
        f"{1_700_000_000 + i}.M0P1Q{i}Rx.h" for i in (4, 3, 2)
    ]


def test_final_record_mtime_is_its_finished_time(tmp_path):
    from tryssh.core.records import RecordStore, parse_iso

    store = RecordStore(str(tmp_path / "state")).create()
    _final(store, "1700000000.M0P1Q1Rx.h", "bob", finished="2000-01-01T00:00:00.000000Z")
    mtime = os.stat(store.final_path("1700000000.M0P1Q1Rx.h")).st_mtime
    assert mtime == parse_iso("2000-01-01T00:00:00.000000Z")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_iso_time_is_datetimes_utc_iso_and_reads_back(stamp: float) -> None:
    import datetime

    from tryssh.core.logfmt import iso_time

    micros = round(stamp * 1_000_000)
    when = datetime.datetime.fromtimestamp(micros // 1_000_000, datetime.UTC).replace(
        microsecond=micros % 1_000_000
    )
    assert iso_time(stamp, micros=True) == when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert iso_time(stamp) == when.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert abs(parse_iso(iso_time(stamp, micros=True)) - micros / 1_000_000) < 1e-6


def test_the_cancel_directory_is_group_writable_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = RecordStore(str(tmp_path / "state")).create()
    finally:
        os.umask(old)
    assert os.stat(store.cancel_dir).st_mode & 0o070 == 0o070  # tryserver writes requests
    assert store.request_cancel("1700000000.M1P1Q1R1.h", "alice")["by"] == "alice"
    assert store.cancel_requests() == ["1700000000.M1P1Q1R1.h"]


def test_a_cancel_request_for_the_longest_job_name_a_record_takes(tmp_path):
    """A record takes a name of up to 250 characters (``NAME.json``); its cancel request's
    temporary file must fit NAME_MAX too (it once said ENAMETOOLONG)."""
    store = RecordStore(str(tmp_path / "state")).create()
    job = "1700000000.M1P1Q1R1." + "h" * (250 - 20)
    store.write(new_record(job, who="alice", builders={"unit": builder_entry(log="/x")}))
    assert store.request_cancel(job, "alice")["by"] == "alice"
    assert store.cancel_requests() == [job]
    assert not [n for n in os.listdir(store.cancel_dir) if n.startswith(".")]
