"""Attack: reuse another developer's jobid (Buildbot's web UI shows it as the buildset's
external_idstring) so that their ``status`` / ``--wait`` shows your passing build.

tryssh takes, for a job, only the first buildset Buildbot submitted since that job's
delivery; the consumer never hands Buildbot a jobid it already knows. Real master.
"""

from __future__ import annotations

import os
from pathlib import Path

from buildbot_master import BuildbotMaster
from helpers import tryserver, wait_until

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.errors import EX_NOPERM
from tryssh.server.queries import job_status

FAILING = b"--- a/state.txt\n+++ b/state.txt\n@@ -1 +1 @@\n-good\n+bad\n"


def test_a_later_job_with_the_same_jobid_cannot_answer_for_the_first(
    buildbot_master: BuildbotMaster,
) -> None:
    jobdir = Jobdir(str(buildbot_master.jobdir))
    api = {"api": buildbot_master.api}
    nostate = str(buildbot_master.dir / "no-state")
    victim = jobdir.deliver_bytes(encode_job(Job(
        "stolen-jobid", None, None, 1, FAILING, ["try-git"], who="alice")))  # fmt: skip
    wait_until(lambda: buildbot_master.buildsets("stolen-jobid"), timeout=60,
               message="no buildset for the first job")  # fmt: skip
    # The attacker copies the jobid and sends a change that passes.
    attacker = jobdir.deliver_bytes(encode_job(Job(
        "stolen-jobid", None, None, 1, None, ["try-git"], who="mallory")))  # fmt: skip
    wait_until(lambda: len(buildbot_master.buildsets("stolen-jobid")) == 2
               and all(b["complete"] for b in buildbot_master.buildsets("stolen-jobid")),
               timeout=120, message="the two buildsets did not complete")  # fmt: skip
    assert os.path.exists(os.path.join(jobdir.cur, attacker))

    mine = job_status(jobdir.path, nostate, victim, "alice", api)
    assert mine["state"] == "failure"  # alice's own build, not mallory's success
    assert mine["builders"]["try-git"]["result"] == "failure"
    [first, _] = sorted(b["bsid"] for b in buildbot_master.buildsets("stolen-jobid"))
    assert mine["buildbot"]["bsids"] == [first]
    # (mallory's own status may show alice's build when both came in the same second:
    # Buildbot's web UI, where mallory read the jobid, shows it to everyone anyway.)


def test_a_job_with_a_copied_jobid_cannot_cancel_the_first_jobs_build(
    buildbot_master: BuildbotMaster, tmp_path: Path
) -> None:
    """Mallory's job copies alice's jobid and (delivered in the same second, or before
    Buildbot claimed alice's) its status reads alice's buildset. A cancel of mallory's job
    must not stop alice's build: Buildbot's buildset reason names alice ('try' job by user
    alice, from the who tryserver pinned), so the cancel is refused (77) and nothing stops.
    """
    from tryssh.server.buildbot import Api, job_view

    jobdir = Jobdir(str(buildbot_master.jobdir))
    config = tmp_path / "tryssh.toml"
    config.write_text(f'jobdir = "{jobdir.path}"\n[buildbot]\napi = "{buildbot_master.api}"\n'
                      '[users."*"]\n')  # fmt: skip
    jobid = f"copied-{tmp_path.name}"
    slow = b"--- a/check.sh\n+++ b/check.sh\n@@ -1 +1 @@\n-grep -q good state.txt\n+sleep 60\n"
    alice = jobdir.deliver_bytes(encode_job(Job(jobid, None, None, 1, slow, ["try-git"],
                                                who="alice")))  # fmt: skip
    api = Api(buildbot_master.api)
    wait_until(lambda: (v := job_view(api, jobid)) and v["builders"].get("try-git", {})
               .get("state") == "running", timeout=60, interval=0.2,
               message="alice's build did not start")  # fmt: skip
    # Mallory's copy names a builder Buildbot lacks (it builds nothing), and it was
    # delivered "at the same time" as alice's: its status finds alice's buildset.
    mallory = jobdir.deliver_bytes(encode_job(Job(jobid, None, None, 1, None, ["no-such"],
                                                  who="mallory")))  # fmt: skip
    wait_until(lambda: os.path.exists(jobdir.cur_path(mallory)), timeout=30,
               message="Buildbot did not take mallory's job")  # fmt: skip
    then = os.stat(jobdir.cur_path(alice)).st_mtime
    os.utime(jobdir.cur_path(mallory), (then, then))
    try:
        seen = job_status(jobdir.path, str(tmp_path / "state"), mallory, "mallory",
                          {"api": buildbot_master.api})  # fmt: skip
        assert seen["state"] == "running"  # alice's build, read (not stopped) by mallory
        proc = tryserver(config, b"", "cancel", mallory, user="mallory", text=True)
        assert proc.returncode == EX_NOPERM, proc.stderr
        [line] = proc.stderr.splitlines()
        assert "not stopping buildset" in line and "'try' job by user alice" in line
        view = job_view(api, jobid)
        assert view is not None and view["builders"]["try-git"]["state"] == "running"
        assert not (tmp_path / "state" / "cancel" / mallory).exists()  # no false evidence
        # Alice's own cancel goes through.
        proc = tryserver(config, b"", "cancel", alice, user="alice", text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("asked Buildbot to stop buildset ")
    finally:
        api.stop(jobid, "test over")
    assert buildbot_master.results_by_builder(jobid) == {"try-git": 6}  # CANCELLED
