"""Ctrl-C at the worst moments: just after the job's last byte, and through a ProxyCommand."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import venv_bin, wait_until
from sshd import Sshd
from test_client_ssh import RELAY, World

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def world(tmp_path: Path, sshd_factory: Callable[..., Sshd]) -> World:
    return World(tmp_path, sshd_factory)


def slow_receipt_server(world: World) -> Sshd:
    """A forced command that reads the whole job, says so, and answers only once 'go' exists."""
    script = world.tmp / "slow.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        cat > {world.tmp}/job
        touch {world.tmp}/received
        while [ ! -e {world.tmp}/go ]; do sleep 0.02; done
        exec {shlex.quote(world.tryserver)} --jobdir {world.jobdir.path} --user alice \\
            < {world.tmp}/job
        """))
    script.chmod(0o755)
    server = world.sshd(f'restrict,command="{script}" {world.key.public_line}')
    world.known_hosts(server)
    return server


def start(world: World, *args: str, new_session: bool = False) -> tuple[subprocess.Popen, Path]:
    err = world.tmp / f"stderr.{len(list(world.tmp.glob('stderr.*')))}"
    proc = subprocess.Popen(
        [venv_bin("tryssh"), "try", *args], cwd=world.repo, env=world.env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(err, "wb"),
        start_new_session=new_session,
    )
    return proc, err


def test_ctrl_c_after_the_last_byte_waits_for_the_receipt(world: World) -> None:
    server = slow_receipt_server(world)
    proc, err = start(world, *world.to(server))
    wait_until(lambda: (world.tmp / "received").exists(), timeout=60)
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: b"waiting up to" in err.read_bytes(), timeout=30)
    (world.tmp / "go").touch()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.read_text()
    [path] = world.delivered()
    assert out.decode().strip() == path.name


def test_second_ctrl_c_says_the_job_may_have_been_delivered(world: World) -> None:
    server = slow_receipt_server(world)
    proc, err = start(world, *world.to(server))
    wait_until(lambda: (world.tmp / "received").exists(), timeout=60)
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: b"waiting up to" in err.read_bytes(), timeout=30)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    text = err.read_text()
    assert proc.returncode == 130, text
    assert "may have been delivered" in text and "jobid" in text and "Traceback" not in text
    (world.tmp / "go").touch()


def test_ctrl_c_through_a_proxy_command_is_130_and_one_line(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    # A ProxyCommand that connects, then stalls (as a slow bastion would): Ctrl-C arrives
    # while tryssh waits for the banner, and hits the proxy too (same process group).
    relay = world.tmp / "relay.py"
    relay.write_text(textwrap.dedent(f"""\
        import socket, sys, time
        open({str(world.tmp / 'proxy-up')!r}, 'w').close()
        time.sleep(120)
        """))
    (world.home / ".ssh" / "config").write_text(
        f"Host ci\n  HostName 127.0.0.1\n  Port {server.port}\n"
        f"  ProxyCommand {sys.executable} {relay} %h %p\n")
    proc, err = start(world, "--host", "ci", "-u", server.user, "-i", world.key.private_path,
                      new_session=True)
    wait_until(lambda: (world.tmp / "proxy-up").exists(), timeout=60)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    proc.communicate(timeout=60)
    text = err.read_text()
    lines = [line for line in text.splitlines() if line.startswith("tryssh:")]
    assert proc.returncode == 130, text
    assert "Traceback" not in text and len(lines) == 1, text




def test_ctrl_c_after_upload_through_a_proxy_command(world: World) -> None:
    server = slow_receipt_server(world)
    relay = world.tmp / "relay.py"
    relay.write_text(RELAY)
    (world.home / ".ssh" / "config").write_text(
        f"Host ci\n  HostName 127.0.0.1\n  Port {server.port}\n"
        f"  ProxyCommand {sys.executable} {relay} %h %p\n")
    proc, err = start(world, "--host", "ci", "-u", server.user, "-i", world.key.private_path,
                      "-q", new_session=True)
    wait_until(lambda: (world.tmp / "received").exists(), timeout=60)
    os.killpg(proc.pid, signal.SIGINT)  # the relay dies with it: no receipt can come
    proc.communicate(timeout=60)
    text = err.read_text()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "may have been delivered" in text, text
    assert all(line.startswith("tryssh:") for line in text.splitlines()), text
    (world.tmp / "go").touch()
