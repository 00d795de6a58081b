"""The audit log: group-readable whatever the umask, reopened after rotation, one line per write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tryssh.errors import TrysshError
from tryssh.server.audit import AuditLog


def test_created_group_readable_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        log = AuditLog(str(tmp_path / "audit.log"))
        log.write(user="alice", outcome="ok")
        log.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "audit.log").st_mode) == 0o660


def test_an_existing_log_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("")
    os.chmod(path, 0o600)
    AuditLog(str(path)).write(user="bob")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_reopens_after_logrotate_moves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    log.write(request=1)
    os.rename(path, tmp_path / "audit.log.1")
    log.write(request=2, cmd="evil\ninjected=line")
    assert "request=1" in (tmp_path / "audit.log.1").read_text()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "request=2" in lines[0] and '"evil\\ninjected=line"' in lines[0]


def test_symlinked_log_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "audit.log").symlink_to(target)
    with pytest.raises(TrysshError, match=r"audit\.log"):
        AuditLog(str(tmp_path / "audit.log"))
    assert target.read_text() == ""
