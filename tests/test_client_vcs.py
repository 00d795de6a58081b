"""``tryssh try`` from real hg and svn working copies, end to end through the command line.

The job lands in a local queuedir, a real Buildbot master parses it, and the patch it
carries applies at its base revision with the VCS's own tool (binary and non-UTF-8 files
included), giving back the developer's working tree byte for byte.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from types import SimpleNamespace

from buildbot.schedulers.trysched import Try_Jobdir
from helpers import run, venv_bin
from test_vcs import (  # the real-repository helpers, and their isolated environment
    hg_apply_at,
    hg_mutate,
    hg_upstream_and_clone,
    isolated_vcs_env,  # noqa: F401 - an autouse fixture, active here too
    snapshot,
    svn_apply_at,
    svn_mutate,
    svn_repo_and_wc,
)

from tryssh.core.jobdir import Jobdir


def submit(cwd: Path, jobdir: Path) -> dict:
    """Run ``tryssh try -c local`` in *cwd*; return the job as Buildbot's parseJob reads it."""
    Jobdir(str(jobdir)).create()
    result = run(
        [venv_bin("tryssh"), "try", "-c", "local", "--jobdir", str(jobdir), "-b", "unit",
         "-C", "from the working copy"],
        cwd=str(cwd),
        env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (name,) = os.listdir(jobdir / "new")
    assert result.stdout.decode().strip() == name
    data = (jobdir / "new" / name).read_bytes()
    return Try_Jobdir("try", ["unit"], str(jobdir)).parseJob(io.StringIO(data.decode("ascii")))


def test_try_from_hg_working_copy(tmp_path: Path) -> None:
    up, work, base = hg_upstream_and_clone(tmp_path)
    hg_mutate(work)
    job = submit(work, tmp_path / "jobdir")
    assert job["baserev"] == base
    assert job["patch_level"] == 1
    assert job["branch"] == "default"
    assert job["builderNames"] == ["unit"]
    assert job["comment"] == "from the working copy"
    change = SimpleNamespace(patch=job["patch_body"], patch_level=job["patch_level"])
    assert hg_apply_at(up, base, change, tmp_path / "fresh") == snapshot(work)


def test_try_from_svn_working_copy(tmp_path: Path) -> None:
    url, wc = svn_repo_and_wc(tmp_path)
    svn_mutate(wc)
    job = submit(wc, tmp_path / "jobdir")
    assert job["baserev"] == "1"
    assert job["patch_level"] == 0
    change = SimpleNamespace(patch=job["patch_body"], patch_level=job["patch_level"])
    assert svn_apply_at(url, "1", change, tmp_path / "fresh") == snapshot(wc)
