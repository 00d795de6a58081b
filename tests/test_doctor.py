"""``tryssh doctor`` on a real jobdir (made by the setup script), real keys and real sshd -T."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import run, venv_bin
from sshd import make_user_key

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "bin" / "tryssh-jobdir-setup"


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A jobdir set up by the real script, a config and an authorized_keys with one key."""
    jobdir = tmp_path / "jobdir"
    subprocess.run([str(SETUP), str(jobdir)], check=True, capture_output=True)
    config = tmp_path / "tryssh.toml"
    config.write_text(
        f'jobdir = "{jobdir}"\n'
        '[builders.unit]\ncommand = ["true"]\n'
        '[users.alice]\nbuilders = ["unit"]\n'
    )
    key = make_user_key(tmp_path, "alice")
    auth = tmp_path / "authorized_keys"
    added = run([venv_bin("tryssh"), "keys", "add", "alice", key.private_path + ".pub",
                 "--authorized-keys", str(auth), "--jobdir", str(jobdir)])  # fmt: skip
    assert added.returncode == 0, added.stderr
    return {"jobdir": jobdir, "config": config, "auth": auth}


def doctor(*args: str) -> tuple[int, list[dict[str, str]]]:
    result = run([venv_bin("tryssh"), "doctor", "--json", *args])
    return result.returncode, json.loads(result.stdout)


def problems(findings: list[dict[str, str]]) -> list[str]:
    return [f["message"] for f in findings if f["level"] == "problem"]


def test_a_good_setup_has_no_problem(site: dict[str, Path]) -> None:
    code, findings = doctor("--config", str(site["config"]), "--authorized-keys", str(site["auth"]))
    assert problems(findings) == []
    assert code == 0
    areas = {f["area"] for f in findings if f["level"] == "ok"}
    assert {"config", "jobdir", "builders", "users", "keys"} <= areas


def test_breakage_is_reported(site: dict[str, Path]) -> None:
    os.chmod(site["jobdir"] / "new", 0o2777)  # noqa: S103 - broken on purpose
    text = site["config"].read_text().replace('["true"]', '["/nonexistent/build"]')
    site["config"].write_text(text)
    with open(site["auth"], "a") as f:
        f.write("restrict,command=\"/nonexistent/tryserver --user bob\" "
                + (site["auth"].read_text().split()[-2]) + "\n")  # fmt: skip
    code, findings = doctor("--config", str(site["config"]), "--authorized-keys", str(site["auth"]))
    found = " | ".join(problems(findings))
    assert code == 1
    assert "world-writable" in found
    assert "/nonexistent/build" in found


def test_config_error_is_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('jobdir = "x"\n[users.alice]\nbuilder = ["typo"]\n')
    code, findings = doctor("--config", str(bad))
    assert code == 1
    assert any("users.alice.builder" in m for m in problems(findings))


def test_missing_jobdir_is_a_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'jobdir = "{tmp_path / "nowhere"}"\n[builders.b]\ncommand = ["true"]\n'
                      '[users.a]\n')  # fmt: skip
    code, findings = doctor("--config", str(config))
    assert code == 1
    assert any("tmp/" in m and "missing" in m for m in problems(findings))


@pytest.mark.skipif(os.geteuid() != 0, reason="sshd -T needs root")
def test_reads_sshd_settings_as_root() -> None:
    _, findings = doctor("--ssh-user", "root")
    sshd = [f for f in findings if f["area"] == "sshd"]
    assert any(f["level"] == "ok" for f in sshd), sshd
    # A stock sshd_config does not lock the account down: doctor says what to change.
    assert any("disableforwarding" in f["message"] for f in sshd)


def test_nothing_to_check_is_a_usage_error(tmp_path: Path) -> None:
    result = run([venv_bin("tryssh"), "doctor"], env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 64
