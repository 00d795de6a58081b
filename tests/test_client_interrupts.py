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


def test_a_ctrl_c_while_the_answer_is_awaited_never_cuts_the_answer_short() -> None:
    """After Ctrl-C the client waits again for the server's receipt (``_await_receipt``).
    Python 3.11's Thread.join() interrupted by Ctrl-C marks a thread that still runs as
    stopped, so the second wait did not wait for the answer's stream: the job name was
    lost while the exit status said 0 (test_ctrl_c_after_the_last_byte_waits_for_the_receipt
    failed so on a loaded machine). Here the Ctrl-C is sent exactly while the client waits,
    and the exit status comes before the answer's last bytes."""
    import threading

    from tryssh.client import transport

    answer = b"1700000000.M1P1Q1R1.host\n"
    gate = threading.Event()
    chunks = iter([answer, b""])

    def read(size: int) -> bytes:
        gate.wait()  # the server answers only when the test says so
        return next(chunks)

    class Channel:  # what _finish asks of a paramiko channel, here with no SSH at all
        closed = False
        status_event = threading.Event()

        def get_transport(self) -> Channel:
            return self

        def is_active(self) -> bool:
            return True

        def recv_exit_status(self) -> int:
            return 0

    class Conn:
        target = "server"

    chan = Channel()
    out, err = transport._Drain(read), transport._Drain(lambda size: b"")
    out.start()
    err.start()
    main = threading.main_thread().ident
    done = threading.Event()

    def waiting() -> bool:
        """Whether the main thread is blocked in a wait inside _finish."""
        frame = sys._current_frames().get(main)
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        return "_finish" in names and names[0] in ("wait", "acquire", "_wait_for_tstate_lock")

    def interrupter() -> None:
        wait_until(lambda: waiting() or done.is_set(), timeout=30)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first wait blocks
        chan.status_event.set()  # the exit status comes first, the answer's end later
        wait_until(lambda: second.is_set() and (waiting() or done.is_set()), timeout=30)
        gate.set()

    second = threading.Event()
    helper = threading.Thread(target=interrupter, daemon=True)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            transport._finish(chan, out, err, 30, "tryserver", Conn())  # type: ignore[arg-type]
        second.set()
        status = transport._finish(chan, out, err, 30, "tryserver", Conn(),  # type: ignore[arg-type]
                                   limit=30)  # fmt: skip
        got = bytes(out.data)  # what the client prints: read now, before the gate opens below
    finally:
        done.set()
        gate.set()
        helper.join(30)
    assert (status, got) == (0, answer)
