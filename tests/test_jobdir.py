"""The jobdir: maildir names, atomic delivery, claims, tmp/ cleanup, modes."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from subprocess import PIPE, Popen

import pytest
from helpers import run

from tryssh.core import jobdir as jobdir_mod
from tryssh.core.jobdir import (
    JOB_MODE,
    TMP_MAX_AGE,
    AlreadyTaken,
    Jobdir,
    fsync_dir,
    is_job_name,
    unique_name,
    write_all,
)
from tryssh.errors import BadJob, CannotCreate, TrysshError

NAME = re.compile(r"(\d+)\.M(\d{6})P(\d+)Q(\d+)R([0-9a-f]{8})\.(.+)")


def listing(jobdir: Jobdir) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(getattr(jobdir, sub))) for sub in ("tmp", "new", "cur")}


# -- names ------------------------------------------------------------------------------------


def test_unique_name_follows_the_maildir_rules():
    before = time.time()
    name = unique_name()
    match = NAME.fullmatch(name)
    assert match, name
    assert abs(int(match.group(1)) - before) < 5
    assert int(match.group(3)) == os.getpid()
    assert ":" not in name and "/" not in name
    assert is_job_name(name)


def test_unique_names_differ_within_one_process():
    names = [unique_name() for _ in range(20_000)]
    assert len(set(names)) == len(names)
    counters = [int(NAME.fullmatch(n).group(4)) for n in names]
    assert counters == sorted(counters)


def test_host_name_is_escaped(monkeypatch):
    fake = os.uname_result(("Linux", "we/ird:host", "6", "#1", "x86_64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    name = unique_name()
    assert name.endswith(".we\\057ird\\072host")
    assert "/" not in name and ":" not in name


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("1795462678.M1P2Q3R0a0b0c0d.host", True),
        ("1795462678.1531966-c465421589feae7614924ef2a41e52b3", True),  # Buildbot's tryserver
        ("", False),
        (".hidden", False),
        ("..", False),
        ("a/b", False),
        ("a\0b", False),
        ("x" * 256, False),
        ("x" * 255, True),
    ],
)
def test_is_job_name(name, ok):
    assert is_job_name(name) is ok


# -- set-up -----------------------------------------------------------------------------------


def test_create_and_check(tmp_path):
    jobdir = Jobdir(str(tmp_path / "a" / "b"))
    with pytest.raises(CannotCreate, match="tmp/ is missing") as info:
        jobdir.check()
    assert info.value.exit_code == 73
    jobdir.create()
    jobdir.check()
    for sub in ("tmp", "new", "cur"):
        assert os.path.isdir(os.path.join(jobdir.path, sub))
    jobdir.create()  # idempotent


def test_path_is_absolute_and_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Jobdir("~/jobdir").path == str(tmp_path / "jobdir")
    monkeypatch.chdir(tmp_path)
    jobdir = Jobdir("rel")
    assert jobdir.path == str(tmp_path / "rel")
    assert jobdir.new == str(tmp_path / "rel" / "new")


def test_new_that_is_a_file_is_not_a_jobdir(jobdir):
    os.rmdir(jobdir.new)
    Path(jobdir.new).write_text("not a directory")
    with pytest.raises(CannotCreate, match="new/ is missing"):
        jobdir.deliver_bytes(b"x")
    assert os.listdir(jobdir.tmp) == []


def test_create_failure_is_cannot_create(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CannotCreate, match="cannot create jobdir"):
        Jobdir(str(blocker / "jobdir")).create()


# -- delivery ---------------------------------------------------------------------------------


def test_deliver_bytes(jobdir):
    name = jobdir.deliver_bytes(b"1:5,2:{},")
    assert listing(jobdir) == {"tmp": [], "new": [name], "cur": []}
    assert Path(jobdir.new, name).read_bytes() == b"1:5,2:{},"
    assert NAME.fullmatch(name)


def test_deliver_streams_and_returns_the_writers_result(jobdir):
    def write(fd: int) -> int:
        for i in range(100):
            write_all(fd, b"%d," % i)
        return 42

    name, result = jobdir.deliver(write)
    assert result == 42
    assert Path(jobdir.new, name).read_bytes() == b"".join(b"%d," % i for i in range(100))


def test_delivered_job_is_group_readable_whatever_the_umask(jobdir):
    old = os.umask(0o077)
    try:
        name = jobdir.deliver_bytes(b"job")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(os.path.join(jobdir.new, name)).st_mode) == JOB_MODE == 0o640


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (BadJob("truncated"), BadJob, 65),
        (ValueError("bug"), ValueError, None),
        (KeyboardInterrupt(), KeyboardInterrupt, None),
        (OSError(errno.ENOSPC, "No space left on device"), TrysshError, 75),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), TrysshError, 75),
        (OSError(errno.EIO, "Input/output error"), TrysshError, 75),
        (OSError(errno.EACCES, "Permission denied"), TrysshError, 77),
        (OSError(errno.EROFS, "Read-only file system"), TrysshError, 77),
        (OSError(errno.EFBIG, "File too large"), TrysshError, 73),
    ],
)
def test_failed_delivery_leaves_nothing(jobdir, error, kind, code):
    def write(fd: int) -> None:
        write_all(fd, b"half a job")
        assert os.listdir(jobdir.tmp)  # the tmp file exists while writing
        raise error

    with pytest.raises(kind) as info:
        jobdir.deliver(write)
    if code is not None:
        assert info.value.exit_code == code
        assert "\n" not in info.value.message
    assert listing(jobdir) == {"tmp": [], "new": [], "cur": []}


def test_link_never_replaces_a_job(jobdir, monkeypatch):
    """A name clash (impossible with unique names) must fail, not overwrite a job."""
    monkeypatch.setattr(jobdir_mod, "unique_name", lambda: "fixed-name")
    jobdir.deliver_bytes(b"first")
    with pytest.raises(TrysshError) as info:
        jobdir.deliver_bytes(b"second")
    assert info.value.exit_code == 73
    assert Path(jobdir.new, "fixed-name").read_bytes() == b"first"
    assert listing(jobdir) == {"tmp": [], "new": ["fixed-name"], "cur": []}


def test_tmp_name_clash_is_refused(jobdir, monkeypatch):
    """O_EXCL: a stale tmp file with the same name is never written through."""
    monkeypatch.setattr(jobdir_mod, "unique_name", lambda: "fixed-name")
    Path(jobdir.tmp, "fixed-name").write_bytes(b"someone else's")
    with pytest.raises(TrysshError, match="cannot create"):
        jobdir.deliver_bytes(b"mine")
    assert Path(jobdir.tmp, "fixed-name").read_bytes() == b"someone else's"
    assert os.listdir(jobdir.new) == []


def test_tmp_symlink_is_not_followed(jobdir, monkeypatch, tmp_path):
    monkeypatch.setattr(jobdir_mod, "unique_name", lambda: "fixed-name")
    target = tmp_path / "target"
    os.symlink(target, os.path.join(jobdir.tmp, "fixed-name"))
    with pytest.raises(TrysshError):
        jobdir.deliver_bytes(b"mine")
    assert not target.exists()


def test_write_all_handles_short_writes():
    r, w = os.pipe()
    try:
        data = os.urandom(200_000)  # more than a pipe buffer: os.write returns short
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(w)
            got = b""
            while chunk := os.read(r, 65536):
                got += chunk
            os._exit(0 if got == data else 1)
        os.close(r)
        write_all(w, data)
        os.close(w)
        w = -1
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if w >= 0:
            os.close(w)


def test_fsync_dir(jobdir):
    fsync_dir(jobdir.new)
    with pytest.raises(FileNotFoundError):
        fsync_dir(os.path.join(jobdir.path, "missing"))


# -- consumers --------------------------------------------------------------------------------


def test_pending_is_oldest_first_and_skips_dot_files(jobdir):
    names = [
        "1795462679.M000001P1Q1R00000000.h",
        "1795462678.M900000P1Q1R00000000.h",
        "1795462678.5-c465421589feae7614924ef2a41e52b3",  # Buildbot's tryserver: .5 s
        "1795462678.M100000P1Q1R00000000.h",
        ".hidden",
    ]
    for name in names:
        Path(jobdir.new, name).write_bytes(b"")
    assert jobdir.pending() == [
        "1795462678.M100000P1Q1R00000000.h",
        "1795462678.5-c465421589feae7614924ef2a41e52b3",
        "1795462678.M900000P1Q1R00000000.h",
        "1795462679.M000001P1Q1R00000000.h",
    ]


def test_pending_of_delivered_jobs_is_delivery_order(jobdir):
    names = [jobdir.deliver_bytes(b"%d" % i) for i in range(30)]
    assert jobdir.pending() == names


def test_pending_without_new_is_empty(tmp_path):
    assert Jobdir(str(tmp_path / "none")).pending() == []


def test_claim(jobdir):
    name = jobdir.deliver_bytes(b"job")
    path = jobdir.claim(name)
    assert path == os.path.join(jobdir.cur, name)
    assert Path(path).read_bytes() == b"job"
    assert jobdir.pending() == []
    with pytest.raises(AlreadyTaken, match="already taken"):
        jobdir.claim(name)
    with pytest.raises(TrysshError, match="not a job name"):
        jobdir.claim("../tmp/x")
    with pytest.raises(TrysshError, match="not a job name"):
        jobdir.claim(".hidden")


CLAIMER = """
import json, sys, time
from tryssh.core.jobdir import AlreadyTaken, Jobdir
jobdir = Jobdir(sys.argv[1])
names = json.loads(sys.argv[2])
while time.time() < float(sys.argv[3]):
    pass  # start together
won, lost = [], []
for name in names:
    try:
        jobdir.claim(name)
        won.append(name)
    except AlreadyTaken:
        lost.append(name)
print(json.dumps([won, lost]))
"""


def test_claim_race_between_two_processes(jobdir):
    names = [jobdir.deliver_bytes(b"%d" % i) for i in range(300)]
    start = time.time() + 1.0
    procs = [
        Popen(
            [sys.executable, "-c", CLAIMER, jobdir.path, json.dumps(order), str(start)],
            stdout=PIPE,
        )
        for order in (names, names[::-1])
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        results.append(json.loads(out))
    (won_a, lost_a), (won_b, lost_b) = results
    assert sorted(won_a + won_b) == sorted(names)  # every job claimed exactly once
    assert not set(won_a) & set(won_b)
    assert sorted(lost_a) == sorted(won_b)
    assert sorted(lost_b) == sorted(won_a)
    assert sorted(os.listdir(jobdir.cur)) == sorted(names)


# -- tmp/ cleanup -----------------------------------------------------------------------------


def test_clean_tmp_removes_files_older_than_36_hours(jobdir):
    now = time.time()
    ages = {"old": 37 * 3600, "ancient": 400 * 86400, "young": 35 * 3600, "fresh": 0}
    for name, age in ages.items():
        path = os.path.join(jobdir.tmp, name)
        Path(path).write_bytes(b"partial")
        os.utime(path, (now - age, now - age))
    os.mkdir(os.path.join(jobdir.tmp, "subdir"))
    os.utime(os.path.join(jobdir.tmp, "subdir"), (now - 99 * 3600, now - 99 * 3600))
    assert TMP_MAX_AGE == 36 * 3600
    assert sorted(jobdir.clean_tmp()) == ["ancient", "old"]
    assert sorted(os.listdir(jobdir.tmp)) == ["fresh", "subdir", "young"]
    # A later "now" makes the young one stale too.
    assert jobdir.clean_tmp(now=now + 2 * 3600) == ["young"]
    assert jobdir.clean_tmp(max_age=-1) == ["fresh"]
    assert os.listdir(jobdir.new) == []


def test_clean_tmp_without_tmp(tmp_path):
    assert Jobdir(str(tmp_path / "none")).clean_tmp() == []


def test_clean_tmp_skips_symlinks(jobdir, tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    link = os.path.join(jobdir.tmp, "link")
    os.symlink(target, link)
    os.utime(link, (0, 0), follow_symlinks=False)
    assert jobdir.clean_tmp() == []
    assert target.read_text() == "keep"


def test_jobdir_module_imports_no_typing():
    """The jobdir is on the forced command's start-up path."""
    code = "import sys, tryssh.core.jobdir; print('typing' in sys.modules)"
    result = run([sys.executable, "-c", code])
    assert result.stdout.strip() == b"False", result.stderr
