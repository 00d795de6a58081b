"""The real Buildbot master and worker fixture builds try jobs from its own jobdir."""

from __future__ import annotations

from buildbot_master import BuildbotMaster

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job


def test_master_builds_a_job_dropped_into_its_jobdir(buildbot_master: BuildbotMaster) -> None:
    patch = b"--- a/state.txt\n+++ b/state.txt\n@@ -1 +1 @@\n-good\n+bad\n"
    job = Job(jobid="fixture-1", branch="main", baserev=None, patch_level=1,
              patch_body=patch, builder_names=["try-git"])  # fmt: skip
    Jobdir(str(buildbot_master.jobdir)).deliver_bytes(encode_job(job))
    assert buildbot_master.results_by_builder("fixture-1") == {"try-git": 2}  # FAILURE
