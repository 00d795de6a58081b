"""Attack: reuse another developer's jobid (Buildbot's web UI shows it as the buildset's
external_idstring) so that their ``status`` / ``--wait`` shows your passing build.

tryssh takes, for a job, only the first buildset Buildbot submitted since that job's
delivery; the consumer never hands Buildbot a jobid it already knows. Real master.
"""

from __future__ import annotations

import os

from buildbot_master import BuildbotMaster
from helpers import wait_until

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
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
