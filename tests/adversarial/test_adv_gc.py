"""Hostile files where gc prunes drop-in leftovers: ``withdrawn/``, ``cur/``, ``STATE_DIR/cancel/``.

A member of the jobdir's group (or a crash) can leave anything there: symlinks out of the
jobdir, directories, FIFOs, names that are not jobs, or ``withdrawn/`` and ``cancel/``
themselves swapped for symlinks. The real ``tryssh gc`` runs under a deadline; it must end
by itself, remove only the regular files it owns, never follow a symlink nor touch its
target, and still prune what is really old.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import tryserver, venv_bin, write_master_config

from tryssh.core.jobdir import Jobdir
from tryssh.core.jobfile import Job, encode_job
from tryssh.core.records import RecordStore
from tryssh.server.config import load_config

PLANTED = "1700000000.M1P1Q1R1.planted"
OTHER = "1700000000.M2P2Q2R2.planted"
OLD = 946684800.0  # 2000-01-01


def drop_in_site(base: Path) -> Path:
    """A drop-in config: its builder forwards into its own jobdir, no consumer runs."""
    return write_master_config(base, {"try-git": {"forward": str(base / "jobdir")}}, {"*": {}})


def deliver_and_withdraw(site: Path) -> str:
    """A queued job, taken back by the real forced command's ``cancel``."""
    data = encode_job(Job("id", "main", "rev", 1, b"p\n", ["try-git"], who="alice"))
    name = Jobdir(str(site.parent / "jobdir")).deliver_bytes(data)
    proc = tryserver(site, b"", "cancel", name, text=True)
    assert proc.returncode == 0 and "taken back from new/" in proc.stdout, proc.stderr
    return name


def gc(site: Path) -> list[str]:
    """``tryssh gc --older-than 0`` in a subprocess (a hang fails the test); the paths it
    says it removed."""
    proc = subprocess.run(
        [venv_bin("tryssh"), "gc", "--config", str(site), "--older-than", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return sorted(line.removeprefix("removed ") for line in proc.stdout.splitlines())


def test_gc_leaves_symlinks_directories_and_fifos_planted_in_withdrawn_and_cancel(
    tmp_path: Path,
) -> None:
    site = drop_in_site(tmp_path)
    config = load_config(str(site))
    jobdir, store = Jobdir(config.jobdir), RecordStore(config.state_dir)
    real = deliver_and_withdraw(site)
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"keep")
    withdrawn, cancel = Path(jobdir.withdrawn), Path(store.cancel_dir)
    planted: list[Path] = []
    # cur/ too: on a drop-in site gc prunes what Buildbot claimed there.
    for directory in (withdrawn, cancel, Path(jobdir.cur)):
        (directory / PLANTED).symlink_to(victim)  # a job name, its job gone: a symlink out
        (directory / OTHER).mkdir()
        (directory / OTHER / "inside").write_bytes(b"keep")
        planted += [directory / PLANTED, directory / OTHER / "inside"]
    os.mkfifo(cancel / "1700000000.M3P3Q3R3.fifo")  # opened, it would block gc for ever
    os.mkfifo(Path(jobdir.cur) / "1700000000.M3P3Q3R3.fifo")
    (withdrawn / ".hidden").write_bytes(b"not a job name")
    for name, make in ((f".{PLANTED}.1.tmp", "symlink"), (f".{OTHER}.1.tmp", "dir")):
        path = cancel / name
        path.symlink_to(victim) if make == "symlink" else path.mkdir()
        os.utime(path, (OLD, OLD), follow_symlinks=False)  # "stale", but not a tmp file
        planted.append(path)
    longest = "9" * 255  # a job name as long as a name can be, its job gone: an orphan
    (cancel / longest).write_bytes(b"{}")
    planted += [cancel / "1700000000.M3P3Q3R3.fifo", withdrawn / ".hidden",
                Path(jobdir.cur) / "1700000000.M3P3Q3R3.fifo"]  # fmt: skip

    removed = gc(site)
    assert removed == sorted([jobdir.withdrawn_path(real), store.cancel_path(real),
                              store.cancel_path(longest)])  # fmt: skip
    assert victim.read_bytes() == b"keep"
    for path in planted:
        assert os.path.lexists(path), path  # left for a human
    status = tryserver(site, b"", "status", real, text=True)
    assert status.returncode == 66 and "no such job" in status.stderr


def test_gc_removes_the_records_of_an_old_job_beside_planted_directories(
    master_config,
) -> None:
    """A directory where the job's active record or cancel request would be: the final
    record still goes (it is the job's), the directories stay, gc does not crash."""
    site = master_config({"unit": {"command": ["true"]}}, {"*": {"builders": ["unit"]}})
    config = load_config(str(site))
    store = RecordStore(config.state_dir)
    data = encode_job(Job("id", "main", "rev", 1, b"p\n", ["unit"], who="alice"))
    name = Jobdir(config.jobdir).deliver_bytes(data)
    proc = subprocess.run([venv_bin("tryssh"), "consume", "--config", str(site), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = store.read(name)
    assert record is not None and record["state"] == "success"
    record["finished"] = "2000-01-01T00:00:00.000000Z"
    store.write(record)
    os.makedirs(store.cancel_path(name))
    os.makedirs(store.active_path(name))

    removed = gc(site)
    assert store.final_path(name) in removed and store.cancel_path(name) not in removed
    assert not os.path.exists(store.final_path(name))
    assert os.path.isdir(store.cancel_path(name)) and os.path.isdir(store.active_path(name))


@pytest.mark.parametrize("swapped", ["withdrawn", "cancel"])
def test_gc_does_not_follow_withdrawn_or_cancel_swapped_for_a_symlink(
    tmp_path: Path, swapped: str
) -> None:
    site = drop_in_site(tmp_path)
    config = load_config(str(site))
    jobdir, store = Jobdir(config.jobdir), RecordStore(config.state_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / PLANTED).write_bytes(json.dumps({"job": PLANTED, "by": "x"}).encode())
    os.utime(elsewhere / PLANTED, (OLD, OLD))
    link = Path(jobdir.withdrawn if swapped == "withdrawn" else store.cancel_dir)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    real = deliver_and_withdraw(site)  # written through the symlink, like any writer would
    orphan = "1700000000.M4P4Q4R4.gone"  # a request whose job never was, in a real cancel/
    if swapped == "withdrawn":
        store.request_cancel(orphan, "alice")

    removed = gc(site)
    if swapped == "withdrawn":
        # withdrawn/ is not read: the job taken back (through the symlink) is not pruned,
        # and its request stays (the job is still there); the orphan goes.
        assert removed == [store.cancel_path(orphan)]
        assert store.cancel_request(real) is not None
    else:
        # cancel/ is not read: the withdrawn job goes, its request (elsewhere) stays.
        assert removed == [jobdir.withdrawn_path(real)]
    assert sorted(os.listdir(elsewhere)) == sorted([PLANTED, real])
    assert link.is_symlink()
