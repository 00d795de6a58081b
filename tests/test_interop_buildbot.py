"""Interop with the real ``buildbot`` package: its client's job files, its master's parser.

Buildbot's master reads a job file by opening it as UTF-8 text (``util/maildir.py``) and
handing it to ``Try_Jobdir.parseJob``; :func:`buildbot_parse` does exactly that.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from buildbot.clients.tryclient import createJobfile
from buildbot.schedulers.trysched import BadJobfile, Try_Jobdir
from helpers import tryserver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_jobfile import BASE_JSON, UPSTREAM, V1, V2, V3, V4, jobs, netstring_jobs, netstrings, v5
from twisted.protocols import basic

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job, parse_job
from tryssh.errors import BadJob

SCHEDULER = Try_Jobdir("try", ["b1", "b2"], "jd")


@pytest.fixture(autouse=True)
def _big_netstrings(monkeypatch):
    """What Buildbot's docs tell admins to put in master.cfg for patches over 99,999 bytes."""
    monkeypatch.setattr(basic.NetstringReceiver, "MAX_LENGTH", 10**8)


def buildbot_parse(data: bytes, directory: Path) -> dict[str, object]:
    """Buildbot's parse of a job file holding *data*, read as the master reads it."""
    path = directory / "job"
    path.write_bytes(data)
    with open(path, encoding="utf-8") as f:  # as MaildirService.moveToCurDir opens it
        return SCHEDULER.parseJob(f)


def buildbot_parse_text(text: str) -> dict[str, object]:
    return SCHEDULER.parseJob(io.StringIO(text))


def through_tryserver(jobdir: Jobdir, data: bytes) -> bytes:
    """Deliver *data* with the real tryserver; the delivered file's bytes."""
    result = tryserver(jobdir, data)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    name = result.stdout.decode().strip()
    assert os.listdir(jobdir.new) == [name]
    delivered = Path(jobdir.new, name).read_bytes()
    os.unlink(os.path.join(jobdir.new, name))
    return delivered


def create(job: Job) -> str:
    """Buildbot's own client writing *job*."""
    return createJobfile(
        job.jobid, job.branch, job.baserev, job.patch_level, job.patch_body, job.repository,
        job.project, job.who, job.comment, job.builder_names, job.properties,
    )  # fmt: skip


def without_who(parsed: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in parsed.items() if k != "who"}


# -- jobs made by Buildbot's client, through tryserver, read by Buildbot's master -------------


def test_createjobfile_v5_through_tryserver(jobdir, tmp_path):
    text = createJobfile(
        "1795462678.15-4242", "main", "abc123", 1, b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
        "https://example.org/repo.git", "proj", "mallory", "please", ["b1", "b2"], {"k": "v"},
    )  # fmt: skip
    assert text.startswith("1:5,")
    before = buildbot_parse_text(text)
    delivered = through_tryserver(jobdir, text.encode())
    after = buildbot_parse(delivered, tmp_path)
    assert before["who"] == "mallory"
    assert after["who"] == "alice"
    assert without_who(after) == without_who(before)
    # Only "who" changed: the layout is still the client's.
    assert delivered == createJobfile(
        "1795462678.15-4242", "main", "abc123", 1, b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
        "https://example.org/repo.git", "proj", "alice", "please", ["b1", "b2"], {"k": "v"},
    ).encode()  # fmt: skip


def test_createjobfile_v6_binary_patch_through_tryserver(jobdir, tmp_path):
    patch = bytes(range(256)) * 40 + b"GIT binary patch\n\xff\xfe"
    text = createJobfile("id", "", "", 1, patch, None, "", "", "", None, {})
    assert text.startswith("1:6,")
    before = buildbot_parse_text(text)
    assert before["patch_body"] == patch
    after = buildbot_parse(through_tryserver(jobdir, text.encode()), tmp_path)
    assert after["patch_body"] == patch
    assert after["who"] == "alice"
    # A null repository crashes Buildbot's master: it is delivered as "".
    assert before["repository"] is None
    assert without_who(after) == {**without_who(before), "repository": ""}


def test_large_v5_job_through_tryserver(jobdir, tmp_path):
    """Larger than twisted's 99,999 bytes: tryssh has no ceiling of its own."""
    patch = b"".join(b"+line %d\n" % i for i in range(60_000))
    text = createJobfile("id", "b", "r", 1, patch, "repo", "p", "w", "c", ["b1"], {})
    after = buildbot_parse(through_tryserver(jobdir, text.encode()), tmp_path)
    assert after["patch_body"] == patch


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(job=jobs(optional_none=False))
def test_any_createjobfile_job_through_tryserver(job, jobdir, tmp_path):
    text = create(job)
    before = buildbot_parse_text(text)
    after = buildbot_parse(through_tryserver(jobdir, text.encode()), tmp_path)
    assert after["who"] == "alice"
    assert without_who(after) == without_who(before)


@pytest.mark.parametrize(("data", "version"), [(V1, "3"), (V2, "3"), (V3, "3"), (V4, "4")])
def test_v1_to_v4_through_tryserver(jobdir, tmp_path, data, version):
    """v1 and v2 have no 'who': tryserver upgrades them to v3, which Buildbot still reads."""
    delivered = through_tryserver(jobdir, data)
    assert delivered.startswith(b"1:%s," % version.encode())
    before = buildbot_parse(data, tmp_path)
    after = buildbot_parse(delivered, tmp_path)
    assert after["who"] == "alice"
    assert without_who(after) == without_who(before)


# -- tryssh's writer is Buildbot's writer ------------------------------------------------------


@given(jobs(optional_none=False))
def test_encode_job_is_byte_identical_to_createjobfile(job):
    data = encode_job(job)
    assert data == create(job).encode("ascii")
    assert buildbot_parse_text(data.decode("ascii")) == job.as_buildbot_dict()


@given(jobs())
def test_every_job_tryssh_writes_parses_in_buildbot(job):
    """Also with None where Buildbot's client never puts one (createJobfile would write 'None')."""
    assert buildbot_parse_text(encode_job(job).decode("ascii")) == job.as_buildbot_dict()


# -- tryssh's reader is Buildbot's reader (valid files) ----------------------------------------


@pytest.mark.parametrize(("data", "want"), UPSTREAM)
def test_upstream_examples_parse_alike(data, want, tmp_path):
    assert buildbot_parse(data, tmp_path) == want
    assert parse_job(data).as_buildbot_dict() == want


@given(netstring_jobs())
def test_v1_to_v4_parse_alike(case):
    data, _ = case
    assert parse_job(data).as_buildbot_dict() == buildbot_parse_text(data.decode("utf-8"))


REQUIRED = ("jobid", "branch", "baserev", "patch_level", "builderNames", "patch_body")
# No NUL and no lone surrogate: tryssh refuses both at the door (a job holding one could
# never build; tested in tests/adversarial and test_jobfile), while Buildbot's parser
# would take them.
maybe_text = st.none() | st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=5
)


@given(
    st.fixed_dictionaries(
        {k: st.just(BASE_JSON[k]) for k in REQUIRED},
        optional={
            "repository": maybe_text,
            "project": maybe_text,
            "who": maybe_text,
            "comment": maybe_text,
            "properties": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
            "future": st.integers(),
            "patch_body_base64": st.just("eA=="),
        },
    )
)
def test_v5_with_optional_and_unknown_keys_parse_alike(obj):
    data = v5(obj)
    assert parse_job(data).as_buildbot_dict() == buildbot_parse_text(data.decode("ascii"))


def test_truncated_tail_parses_alike(tmp_path):
    data = V4 + b"8:builderd"
    assert parse_job(data).as_buildbot_dict() == buildbot_parse(data, tmp_path)


# -- inputs on which Buildbot's master crashes: tryssh says BadJob ---------------------------

CRASHES = [
    pytest.param(netstrings("05", json.dumps(BASE_JSON)), IndexError, id="version-05"),
    pytest.param(netstrings("10", "x"), IndexError, id="version-10"),
    pytest.param(netstrings("1", "id", "b", "r", "1"), IndexError, id="v1-too-few"),
    pytest.param(
        netstrings("4", "id", "b", "r", "1", "p", "repo", "proj"), IndexError, id="v4-too-few"
    ),
    pytest.param(netstrings("5"), IndexError, id="v5-no-json"),
    pytest.param(netstrings(""), ValueError, id="version-empty"),
    pytest.param(netstrings("3.5"), ValueError, id="version-3.5"),
    pytest.param(netstrings("1", "id", "b", "r", "one", "p"), ValueError, id="level-text"),
    pytest.param(
        v5({k: v for k, v in BASE_JSON.items() if k != "patch_body"}),
        KeyError,
        id="v5-no-patch_body",
    ),
    pytest.param(v5(BASE_JSON, "6"), KeyError, id="v6-no-patch_body_base64"),
    pytest.param(
        v5({k: v for k, v in BASE_JSON.items() if k != "branch"}), KeyError, id="v5-no-branch"
    ),
    pytest.param(
        v5({k: v for k, v in BASE_JSON.items() if k != "baserev"}), KeyError, id="v5-no-baserev"
    ),
    pytest.param(
        v5({k: v for k, v in BASE_JSON.items() if k != "patch_level"}),
        KeyError,
        id="v5-no-patch_level",
    ),
    pytest.param(v5({**BASE_JSON, "patch_level": None}), TypeError, id="v5-level-null"),
    pytest.param(netstrings("5", "[]"), TypeError, id="json-list"),
    pytest.param(netstrings("5", "7"), TypeError, id="json-number"),
    pytest.param(netstrings("5", "[" * 100_000 + "]" * 100_000), RecursionError, id="json-deep"),
    pytest.param(
        netstrings("1", "id", "b", "r", "1", b"p\xff"), UnicodeDecodeError, id="v1-binary-patch"
    ),
    pytest.param(
        netstrings("1", b"\xffid", "b", "r", "1", "p"), UnicodeDecodeError, id="v1-binary-jobid"
    ),
    pytest.param(netstrings("5", b'{"jobid": "\xff"}'), UnicodeDecodeError, id="v5-binary-json"),
]


@pytest.mark.parametrize(("data", "crash"), CRASHES)
def test_buildbot_crashes_tryssh_refuses(data, crash, tmp_path):
    with pytest.raises(crash) as info:
        buildbot_parse(data, tmp_path)
    assert not isinstance(info.value, BadJobfile)
    with pytest.raises(BadJob) as ours:
        parse_job(data)
    assert "\n" not in ours.value.message


def test_version_0_is_refused_where_buildbot_guesses_v4(tmp_path):
    data = netstrings("0", "id", "b", "r", "1", "p", "repo", "proj", "who", "c")
    assert buildbot_parse(data, tmp_path)["comment"] == "c"
    with pytest.raises(BadJob, match="unknown job version 0"):
        parse_job(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not a netstring", b"1:9,", netstrings("5", '{"comment": "com}'), b"01:5,"],
)
def test_buildbot_badjobfile_is_badjob(data, tmp_path):
    with pytest.raises(BadJobfile):
        buildbot_parse(data, tmp_path)
    with pytest.raises(BadJob):
        parse_job(data)
