"""tryserver status / jobs / builders (the real forced command) and tryssh gc."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import tryserver, venv_bin

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.logfmt import EventLog
from tryssh.core.records import RecordStore, new_record
from tryssh.server.config import load_config
from tryssh.server.consumer import Consumer
from tryssh.server.gc import collect
from tryssh.server.queries import local_status

BUILDERS = {
    "unit": {"command": ["true"], "description": "unit tests"},
    "lint": {"command": ["false"]},
    "secret": {"command": ["true"]},
}
USERS = {"alice": {"builders": ["unit", "lint"]}, "bob": {"builders": ["unit"]}}


@pytest.fixture
def site(master_config) -> Path:
    return master_config(BUILDERS, USERS)


def deliver(site: Path, who: str, builders: list[str] | None) -> str:
    data = encode_job(Job("id", "main", "rev", 1, b"p\n", builders, who=who))
    return Jobdir(str(site.parent / "jobdir")).deliver_bytes(data)


def consume(site: Path) -> None:
    consumer = Consumer(load_config(str(site)), log=EventLog(open(os.devnull, "w")))
    try:
        consumer.run(once=True)
    finally:
        consumer.close()


def test_status_text_and_json(site):
    name = deliver(site, "alice", ["unit", "lint"])
    consume(site)
    proc = tryserver(site, b"", original=f"tryserver status {name} --json", text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["state"] == "failure" and record["reason"] is None
    assert record["builders"]["unit"]["result"] == "success"
    assert record["builders"]["lint"]["result"] == "failure"
    assert record["builders"]["lint"]["state"] == "done"
    assert record["builders"]["lint"]["log"].endswith(f"/logs/{name}/lint.log")
    text = tryserver(site, b"", "status", name, text=True).stdout
    assert f"job {name}: failure" in text
    assert "  lint: failure (exit status 1; log " in text and "  unit: success (log " in text
    assert local_status(load_config(str(site)), name)["state"] == "failure"


def test_status_of_a_job_not_yet_consumed_is_queued(site):
    name = deliver(site, "alice", ["unit"])
    record = json.loads(tryserver(site, b"", "status", name, "--json", text=True).stdout)
    assert record["state"] == "queued" and record["builders"] == {}
    assert record["who"] == "alice"


def test_other_users_jobs_do_not_exist(site):
    name = deliver(site, "alice", ["unit"])
    consume(site)
    for job in (name, "1700000000.M1P1Q1Rnone.host"):
        proc = tryserver(site, b"", "status", job, user="bob", text=True)
        assert proc.returncode == 66
        assert proc.stderr.strip() == f"tryserver: no such job: {job}"
    with pytest.raises(Exception, match="no such job"):
        local_status(load_config(str(site)), name, user="bob")
    # the admin (no --user) sees it
    assert tryserver(site, b"", "status", name, user=None, text=True).returncode == 0


def test_jobs_lists_own_recent_jobs_newest_first(site):
    mine = [deliver(site, "alice", ["unit"]) for _ in range(3)]
    theirs = deliver(site, "bob", ["unit"])
    rejected = deliver(site, "alice", ["secret"])
    consume(site)
    proc = tryserver(site, b"", "jobs", "--all-states", "--json", text=True)
    answer = json.loads(proc.stdout)
    assert answer["user"] == "alice"
    assert [r["job"] for r in answer["jobs"]] == [rejected, *reversed(mine)]
    assert answer["jobs"][0]["state"] == "rejected"
    text = tryserver(site, b"", "jobs", "--all-states", text=True).stdout.splitlines()
    assert text[0].split("\t")[:2] == [rejected, "rejected"]
    assert text[1].split("\t") == [mine[2], "success", "main", "unit=success", "-"]
    assert theirs not in tryserver(site, b"", "jobs", "--all-states", text=True).stdout
    admin = tryserver(site, b"", "jobs", "--all-states", user=None, text=True).stdout
    # The admin sees everyone's jobs, so each line says whose.
    assert admin.splitlines()[1].split("\t") == [theirs, "bob", "success", "main",
                                                 "unit=success", "-"]  # fmt: skip
    limited = json.loads(tryserver(site, b"", "jobs", "--all-states", "--limit", "2", "--json",
                                   text=True).stdout)  # fmt: skip
    assert [r["job"] for r in limited["jobs"]] == [rejected, mine[2]]
    # Without --all-states: only what is still queued or running (nothing, here).
    assert json.loads(tryserver(site, b"", "jobs", "--json", text=True).stdout)["jobs"] == []


def test_jobs_limit_is_20(site):
    store = RecordStore(str(site.parent / "jobdir" / "state")).create()
    for i in range(25):
        store.write(new_record(f"{1700000000 + i}.M000000P1Q{i}Rx.h", who="alice",
                               state="success"))  # fmt: skip
    answer = tryserver(site, b"", "jobs", "--all-states", "--json", text=True)
    jobs = json.loads(answer.stdout)["jobs"]
    assert len(jobs) == 20 and jobs[0]["job"].startswith("1700000024.")


def test_builders_for_the_user(site):
    assert tryserver(site, b"", "builders", text=True).stdout == "unit\tunit tests\nlint\n"
    assert json.loads(tryserver(site, b"", "builders", "--json", user="bob", text=True).stdout)[
        "builders"
    ] == ["unit"]
    assert (
        tryserver(site, b"", "builders", user=None, text=True).stdout.splitlines()[-1] == "secret"
    )


def test_status_without_config_reads_jobdir_state(site, tmp_path):
    name = deliver(site, "alice", ["unit"])
    consume(site)
    argv = [venv_bin("tryserver"), "--jobdir", str(tmp_path / "jobdir"), "--user", "alice",
            "status", name, "--json"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "success"


# --- gc ------------------------------------------------------------------------------


def test_gc_removes_old_finished_jobs_only(site):
    old = deliver(site, "alice", ["unit"])
    recent = deliver(site, "alice", ["unit"])
    consume(site)
    config = load_config(str(site))
    store = RecordStore(config.state_dir)
    record = store.read(old)
    record["finished"] = "2000-01-01T00:00:00.000000Z"
    store.write(record)
    waiting = deliver(site, "alice", ["unit"])  # unconsumed: never collected
    stale_tmp = Path(config.jobdir) / "tmp" / "stale"
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (time.time() - 40 * 3600,) * 2)

    would = collect(config, 1, dry_run=True)
    assert os.path.exists(os.path.join(config.jobdir, "cur", old))
    assert str(stale_tmp) in would
    proc = subprocess.run([venv_bin("tryssh"), "gc", "--config", str(site), "--older-than", "1"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(line.split(" ", 1)[1] for line in proc.stdout.splitlines()) == sorted(would)
    assert store.read(old) is None
    assert not os.path.exists(os.path.join(config.jobdir, "cur", old))
    assert not os.path.exists(os.path.join(config.log_dir, old))
    assert not stale_tmp.exists()
    assert store.read(recent)["state"] == "success"
    assert os.path.exists(os.path.join(config.log_dir, recent, "unit.log"))
    assert Jobdir(config.jobdir).pending() == [waiting]


def test_gc_needs_an_age(site):
    proc = subprocess.run([venv_bin("tryssh"), "gc", "--config", str(site)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 64 and "--older-than" in proc.stderr


def test_consumer_applies_keep_days(site, master_config):
    master_config(BUILDERS, USERS, keep_days=1)  # the same file, with keep_days
    old = deliver(site, "alice", ["unit"])
    consume(site)
    store = RecordStore(str(site.parent / "jobdir" / "state"))
    record = store.read(old)
    record["finished"] = "2000-01-01T00:00:00.000000Z"
    store.write(record)
    consume(site)  # gc runs at start, then once an hour
    assert store.read(old) is None


@pytest.fixture
def drop_in(master_config, tmp_path) -> Path:
    """A drop-in site: its one builder forwards into its own jobdir (a Buildbot master reads
    it), so no consumer runs here and ``cancel`` takes a queued job back from new/."""
    return master_config({"try-git": {"forward": str(tmp_path / "jobdir")}}, {"*": {}})


def withdraw(site: Path, name: str) -> None:
    """Cancel the queued drop-in job *name* the way a client does: the real forced command."""
    proc = tryserver(site, b"", "cancel", name, text=True)
    assert proc.returncode == 0 and "taken back from new/" in proc.stdout, proc.stderr


def test_gc_removes_a_withdrawn_job_once_its_cancel_is_old_with_its_request(drop_in):
    config = load_config(str(drop_in))
    jobdir, store = Jobdir(config.jobdir), RecordStore(config.state_dir)
    old, other = deliver(drop_in, "alice", ["try-git"]), deliver(drop_in, "bob", ["try-git"])
    withdraw(drop_in, old)
    tryserver(drop_in, b"", "cancel", other, user="bob", text=True)
    # Delivered long ago (the mtime), cancelled just now (the ctime: the rename): not old.
    os.utime(jobdir.withdrawn_path(old), (946684800, 946684800))
    assert collect(config, 1) == []
    status = tryserver(drop_in, b"", "status", old, "--json", text=True)
    assert json.loads(status.stdout)["reason"] == "cancelled by alice before Buildbot took it"
    # A request a live job still needs: one in new/ (a cancel between its request and its
    # rename). (One Buildbot claimed: the next test.)
    queued = deliver(drop_in, "alice", ["try-git"])
    store.request_cancel(queued, "alice")

    later = time.time() + 2 * 86400
    would = collect(config, 1, dry_run=True, now=later)
    assert sorted(would) == sorted(
        [jobdir.withdrawn_path(old), store.cancel_path(old),
         jobdir.withdrawn_path(other), store.cancel_path(other)]
    )  # fmt: skip
    assert os.path.exists(jobdir.withdrawn_path(old)) and store.cancel_request(old) is not None
    proc = subprocess.run([venv_bin("tryssh"), "gc", "--config", str(drop_in), "--older-than", "0"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(line.split(" ", 1)[1] for line in proc.stdout.splitlines()) == sorted(would)
    assert os.listdir(jobdir.withdrawn) == []
    assert store.cancel_requests() == [queued]
    assert jobdir.pending() == [queued]
    status = tryserver(drop_in, b"", "status", old, text=True)  # like any job gc removed
    assert status.returncode == 66 and status.stderr.strip() == f"tryserver: no such job: {old}"


def test_gc_removes_a_job_buildbot_claimed_once_its_claim_is_old_with_its_request(drop_in):
    """Drop-in: Buildbot claims into cur/ and never removes; no record will ever say the
    job finished, so the claim's age (the ctime: a rename) decides. Before, cur/ grew for
    ever on a drop-in site."""
    config = load_config(str(drop_in))
    jobdir, store = Jobdir(config.jobdir), RecordStore(config.state_dir)
    asked, plain = deliver(drop_in, "alice", ["try-git"]), deliver(drop_in, "bob", ["try-git"])
    for name in (asked, plain):
        jobdir.claim(name)  # as Buildbot's MaildirService does: a rename
    # A cancel through Buildbot's API leaves a request (status's evidence): kept with the job.
    store.request_cancel(asked, "alice")
    os.utime(jobdir.cur_path(asked), (946684800, 946684800))  # delivered long ago
    assert collect(config, 1) == []  # claimed just now
    later = time.time() + 2 * 86400
    would = collect(config, 1, dry_run=True, now=later)
    assert sorted(would) == sorted(
        [jobdir.cur_path(asked), store.cancel_path(asked), jobdir.cur_path(plain)])
    assert sorted(jobdir.claimed()) == sorted([asked, plain])
    proc = subprocess.run([venv_bin("tryssh"), "gc", "--config", str(drop_in), "--older-than", "0"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(line.split(" ", 1)[1] for line in proc.stdout.splitlines()) == sorted(would)
    assert jobdir.claimed() == [] and store.cancel_requests() == []
    status = tryserver(drop_in, b"", "status", asked, text=True)  # like any job gc removed
    assert status.returncode == 66, status.stderr


def owed_job_is_kept(where: Path, builder: str) -> None:
    """An unrecorded job claimed into cur/ a month ago survives gc."""
    config = load_config(str(where))
    jobdir = Jobdir(config.jobdir)
    owed = deliver(where, "alice", [builder])
    jobdir.claim(owed)
    assert collect(config, 0, now=time.time() + 30 * 86400) == []
    assert jobdir.claimed() == [owed]


def test_gc_never_removes_an_unrecorded_job_a_consumer_may_still_owe(site):
    """In cur/ without a record is also a job whose consumer died before writing it (it is
    run again at the consumer's restart): on a consumer's site it is kept whatever its
    age."""
    consume(site)  # a consumer ran (it makes active/)
    owed_job_is_kept(site, "unit")


def test_gc_keeps_unrecorded_jobs_of_a_drop_in_site_a_consumer_once_ran_on(drop_in):
    """A site turned drop-in after a consumer ran (active/ is there): what is in cur/ may
    be that consumer's, so it is kept."""
    os.makedirs(RecordStore(load_config(str(drop_in)).state_dir).active)
    owed_job_is_kept(drop_in, "try-git")


def test_gc_removes_cancel_requests_whose_job_is_gone_and_stale_tmp_files(site):
    config = load_config(str(site))
    jobdir, store = Jobdir(config.jobdir), RecordStore(config.state_dir)
    finished = deliver(site, "alice", ["unit"])
    consume(site)
    record = store.read(finished)
    record["finished"] = "2000-01-01T00:00:00.000000Z"
    store.write(record)
    store.request_cancel(finished, "alice")  # a consumer died before it forgot the request
    gone, queued = deliver(site, "alice", ["unit"]), deliver(site, "alice", ["unit"])
    for name in (gone, queued):  # the consumer's cancel: a request, the job stays in new/
        proc = tryserver(site, b"", "cancel", name, text=True)
        assert proc.returncode == 0, proc.stderr
    os.unlink(jobdir.new_path(gone))  # as a gc interrupted between the job and its request
    stale, fresh = (Path(store.cancel_dir) / f".{n}.4242.tmp" for n in (gone, queued))
    for path in (stale, fresh):
        path.write_bytes(b"{")
    os.utime(stale, (time.time() - 37 * 3600,) * 2)

    would = collect(config, 1, dry_run=True)
    assert store.cancel_path(finished) in would and store.cancel_path(gone) in would
    assert str(stale) in would and os.path.exists(stale)
    removed = collect(config, 1)
    assert sorted(removed) == sorted(would)
    assert store.read(finished) is None and store.cancel_requests() == [queued]
    assert not stale.exists() and fresh.exists()
    assert store.cancel_request(queued)["by"] == "alice"
    # A month on, the queued job's request is still needed; the fresh tmp file is stale.
    assert collect(config, 1, now=time.time() + 30 * 86400) == [str(fresh)]
    assert store.cancel_requests() == [queued]


def test_unrecorded_job_is_queued_then_claimed_and_says_whether_anything_can_follow_it(site):
    """The drop-in set-up: whoever takes jobs from new/ (a Buildbot master) keeps no record."""
    config = load_config(str(site))
    name = deliver(site, "alice", ["unit"])
    record = local_status(config, name, "alice")
    assert record["state"] == "queued" and record["jobid"] == "id"
    assert record["followable"] is False and "cannot report results" in record["reason"]
    Jobdir(config.jobdir).claim(name)  # what Buildbot's MaildirService does
    record = local_status(config, name, "alice")
    assert record["state"] == "claimed" and record["followable"] is False
    os.makedirs(os.path.join(config.state_dir, "cancel"))  # a drop-in cancel's: no records
    record = local_status(config, name, "alice")
    assert record["followable"] is False
    RecordStore(config.state_dir).create()  # a consumer's records: it will tell
    record = local_status(config, name, "alice")
    # Claimed by that consumer, which records it "queued" next: said "queued" already, or
    # --wait showed claimed, then queued (the state went backwards).
    assert record["state"] == "queued" and "followable" not in record
    # The text answer shows the jobid too.
    assert "jobid: id" in tryserver(site, b"", "status", name, text=True).stdout
