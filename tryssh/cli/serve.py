"""``tryssh serve`` (the embedded SSH server) and ``tryssh passwd`` (its password hashes)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

import click

from tryssh.core.logfmt import ERR, INFO, EventLog
from tryssh.errors import ConfigError, TrysshError, UsageError

if TYPE_CHECKING:
    from tryssh.server.config import Config
    from tryssh.server.consumer import Consumer
    from tryssh.server.pb import PBDoor
    from tryssh.server.serve import EmbeddedServer


@click.command("serve")
@click.option(
    # Not dir_okay=False: a directory is the loader's one-line exit 78, not click's usage.
    "--config", "config_path", required=True, type=click.Path(),
    help="the tryssh TOML config ([serve], [users.NAME], jobdir)",
)  # fmt: skip
@click.option("--consume", is_flag=True, help="also run the consumer in this process")
def serve_cmd(config_path: str, consume: bool) -> None:
    """Run the embedded SSH server: only tryserver requests, users from the config.

    Prints a ready line on stdout once listening:
    'tryssh serve: listening on HOST:PORT, host key SHA256:... (ssh-ed25519)'.
    SIGTERM or SIGINT stops it: no new connections, running requests finish, exit 0.
    SIGHUP (systemctl reload) reads the config again: users, keys, builders and policy
    change for the next login or request; a config that fails to check is refused with a
    log line and the old one stays; listen, host_key, jobdir and audit_log take a restart.
    The host key is generated on the first start (mode 0600) and its fingerprint printed;
    it must live in a directory only this account writes (default STATE_DIR/serve/).
    Keys in [users.NAME] are checked as strictly as by `tryssh keys add`.
    Logins must finish within [serve] login_grace_time; connections not logged in yet are
    capped per address and in all (per_source_max_startups, max_startups).

    With a [pb] table it also opens Buildbot's PB door, for unchanged
    "buildbot try --connect=pb" clients (needs pip install 'tryssh[pb]'; plaintext,
    loopback unless insecure_network = true; see the README).

    \b
    Examples:
      tryssh serve --config /etc/tryssh/config.toml
      tryssh serve --config /etc/tryssh/config.toml --consume   server and consumer in one
    \b
    Clients:
      ssh -p 2222 alice@host buildbot tryserver --jobdir x < job
      buildbot try --connect=ssh --host host --port 2222 --username alice --jobdir x -b unit
      tryssh try --host host --port 2222 -u alice -b unit --wait
      buildbot try --connect=pb --master=host:8031 -u alice --passwd PW -b unit  ([pb])

    Exit codes: 0 stopped by SIGTERM/SIGINT, 64 usage, 73 cannot create the host key or
    state, 75 cannot listen (address in use), 77 permission denied (a port below 1024
    without CAP_NET_BIND_SERVICE), 78 config error (a weak or malformed key, a
    bad [serve] or [pb] value, no [users.NAME] account, a host key or a pb_secret_file
    others can read or replace, [pb] without Twisted or on a non-loopback address).
    """
    from tryssh.server.config import load_config
    from tryssh.server.serve import EmbeddedServer

    config = load_config(config_path)
    server = EmbeddedServer(config)
    if server.host_key_created:
        click.echo(
            f"tryssh serve: generated host key {server.settings.host_key} ({server.fingerprint})"
        )
    address = server.bind()
    door = _pb_door(config, server) if config.pb is not None else None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    reload_wanted = threading.Event()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_wanted.set()  # the reload runs in a thread: a handler must not take locks

    # Kept until exit: a second signal during the shutdown must not kill in-flight requests.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    consumer = consumer_thread = None
    try:
        if consume:
            consumer, consumer_thread = _start_consumer(config, stop, server.log.events)
        if door is not None:
            click.echo(
                f"tryssh serve: PB door (buildbot try --connect=pb) listening on "
                f"{door.address}; its wire is plaintext"
            )
            door.start()
        _start_reloader(server, consumer, door, reload_wanted, stop)
        click.echo(
            f"tryssh serve: listening on {address}, host key {server.fingerprint} "
            f"({server.host_key.get_name()})"
        )
        sys.stdout.flush()
        server.serve(stop)
    finally:
        stop.set()
        if door is not None:
            door.stop()
        if consumer is not None and consumer_thread is not None:
            consumer.stop()  # in-flight builds finish first
            consumer_thread.join()
            consumer.close()
    server.log.events(INFO, event="serve-stopped")


def _pb_door(config: Config, server: EmbeddedServer) -> PBDoor:
    """The PB door of ``[pb]``, bound; Twisted is only imported here."""
    try:
        from tryssh.server.pb import start_door
    except ImportError as err:
        raise ConfigError(
            f"{config.path}: [pb] needs Twisted ({err.name} is missing): "
            "pip install 'tryssh[pb]'"
        ) from None
    settings = server.settings
    return start_door(config, server.log, server.limiter, settings.max_auth_tries)


def _start_reloader(
    server: EmbeddedServer, consumer: Consumer | None, door: PBDoor | None,
    wanted: threading.Event, stop: threading.Event,
) -> None:
    """A thread that reloads the server (its PB door, its consumer) each time SIGHUP sets
    *wanted*."""

    def run() -> None:
        while not stop.is_set():
            if wanted.wait(0.25):
                wanted.clear()
                server.reload()
                if door is not None:
                    door.reload(server.config)
                if consumer is not None:
                    consumer.request_reload()

    threading.Thread(target=run, name="tryssh-reload", daemon=True).start()


def _start_consumer(
    config: Config, stop: threading.Event, events: EventLog
) -> tuple[Consumer, threading.Thread]:
    from tryssh.server.consumer import Consumer

    consumer = Consumer(config, log=events)  # one stream, one format: the server's
    consumer.prepare()  # config and directory errors before the ready line, not in a thread

    def run() -> None:
        try:
            consumer.run()
        except Exception as err:
            message = err.message if isinstance(err, TrysshError) else repr(err)
            events(ERR, event="consumer-stopped", reason=message)
        finally:
            stop.set()  # a dead consumer must not leave a server taking jobs nobody runs

    thread = threading.Thread(target=run, name="tryssh-consumer", daemon=True)
    thread.start()
    return consumer, thread


@click.command("passwd")
@click.option("--stdin", "from_stdin", is_flag=True, help="read the password once from stdin")
@click.option(
    "--pb", "for_pb", is_flag=True,
    help="print the PB door's secret (for pb_secret_file) instead of the SSH door's hash",
)  # fmt: skip
def passwd_cmd(from_stdin: bool, for_pb: bool) -> None:
    """Print a salted scrypt hash for password_hash in a [users.NAME] table.

    On a terminal the password is asked twice without echo; with --stdin it is read once
    (the first line) from stdin.

    With --pb it prints the PB door's secret instead: "pb-md5:" and the MD5 of the
    password. Buildbot's PB login needs exactly that on the server, so the line is as good
    as the password for logging in to the PB door: keep it in a file of mode 0600 named by
    pb_secret_file in [users.NAME], e.g.
    (umask 077; tryssh passwd --pb > /etc/tryssh/alice.pb).

    Exit codes: 0 ok, 64 usage, or the passwords differ, 130 interrupted.
    """
    import getpass

    from tryssh.server.passwords import hash_password

    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        if not sys.stdin.isatty():
            raise UsageError("stdin is not a terminal: use --stdin to read the password from it")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the passwords differ")
    if not password:
        raise UsageError("empty password refused")
    if for_pb:
        from tryssh.server.passwords import pb_secret

        click.echo(pb_secret(password))
        if not from_stdin:
            click.echo('save it to a file of mode 0600; in the user\'s table: '
                       'pb_secret_file = "<that file>"', err=True)  # fmt: skip
        return
    click.echo(hash_password(password))
    if not from_stdin:
        click.echo('put it in the user\'s table: password_hash = "<the line above>"', err=True)
