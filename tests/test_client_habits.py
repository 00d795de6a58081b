"""``tryssh try`` keeps OpenSSH users' habits: destinations, -F, -o, -J, HostKeyAlias, host
certificates, and errors in OpenSSH's words. Real sshd servers on loopback, real config files.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sshd import Sshd
from test_client_ssh import RELAY, World, ok

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def world(tmp_path: Path, sshd_factory: Callable[..., Sshd]) -> World:
    return World(tmp_path, sshd_factory)


def key_only(world: World) -> list[str]:
    return ["-i", world.key.private_path]


# -- destinations ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["{user}@{host}:{port}", "ssh://{user}@{host}:{port}",
                                  "ssh://{user}@[{host}]:{port}/", "[{host}]:{port}"])
def test_host_forms_on_the_command_line(world: World, form: str) -> None:
    server = world.sshd()
    world.known_hosts(server)
    host = form.format(user=server.user, host=server.host, port=server.port)
    extra = [] if "@" in form else ["-u", server.user]
    ok(world.tryssh("try", "--host", host, *extra, *key_only(world)))
    assert len(world.delivered()) == 1


def test_host_form_in_a_config_file_and_in_buildbot_options(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    (world.repo / ".tryssh.toml").write_text(
        f'[try]\nhost = "ssh://{server.user}@{server.host}:{server.port}"\n')
    result = world.tryssh("try", *key_only(world))
    ok(result)
    assert f"set by {world.repo / '.tryssh.toml'}" in result.stderr.decode()
    (world.repo / ".tryssh.toml").unlink()
    (world.home / ".buildbot").mkdir()
    (world.home / ".buildbot" / "options").write_text(
        f"try_host = '{server.user}@{server.host}:{server.port}'\n")
    ok(world.tryssh("try", *key_only(world)))
    assert len(world.delivered()) == 2


def test_bad_destination_is_a_usage_error(world: World) -> None:
    result = world.tryssh("try", "--host", "ci:99999")
    ok(result, 64)
    assert "bad port" in result.stderr.decode()


# -- ssh config: HostKeyAlias, -F, -o -----------------------------------------------------------


def test_host_key_alias_is_used_exactly_as_written(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)  # "[127.0.0.1]:PORT ssh-ed25519 ..."
    (world.home / ".ssh" / "config").write_text(textwrap.dedent(f"""\
        Host ci
            HostName 127.0.0.1
            Port {server.port}
            User {server.user}
            HostKeyAlias [127.0.0.1]:{server.port}
        Host ci2
            HostName 127.0.0.1
            Port {server.port}
            User {server.user}
            HostKeyAlias ci-box
        """))
    ok(world.tryssh("try", "--host", "ci", *key_only(world)))
    keytype, blob = server.host_key_pub.split()[:2]
    (world.home / ".ssh" / "known_hosts").write_text(f"ci-box {keytype} {blob}\n")
    ok(world.tryssh("try", "--host", "ci2", *key_only(world)))
    assert len(world.delivered()) == 2


def test_dash_F_and_dash_o(world: World) -> None:
    server = world.sshd()
    known = world.tmp / "elsewhere_known_hosts"
    known.write_text(server.known_hosts_line() + "\n")
    config = world.tmp / "my_ssh_config"
    config.write_text(textwrap.dedent(f"""\
        Host ci
            HostName 127.0.0.1
            Port 1
            User nobody-here
            UserKnownHostsFile {known}
        """))
    # -o wins over the file, as with ssh; the first -o for a name wins.
    ok(world.tryssh("try", "--host", "ci", "-F", str(config), "-o", f"Port={server.port}",
                    "-o", f"User {server.user}", "-o", "Port=2", *key_only(world)))
    assert len(world.delivered()) == 1
    result = world.tryssh("try", "--host", "ci", "-F", str(config), "-o", "Ciphers=none")
    ok(result, 64)
    assert "does not support 'Ciphers'" in result.stderr.decode()


def test_proxy_command_from_dash_o(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    relay = world.tmp / "relay.py"
    relay.write_text(RELAY)
    ok(world.tryssh("try", *world.to(server), "-o",
                    f"ProxyCommand={sys.executable} {relay} %h %p"))
    assert len(world.delivered()) == 1


def test_batch_mode_never_asks_for_a_passphrase(world: World) -> None:
    from sshd import make_user_key

    server = world.sshd()
    world.known_hosts(server)
    locked = make_user_key(world.tmp, "locked", passphrase="secret phrase")
    result = world.tryssh("try", *world.to(server, key=False), "-i", locked.private_path,
                          "-o", "BatchMode=yes")
    ok(result, 77)
    assert "BatchMode forbids asking for its passphrase" in result.stderr.decode()


def test_strict_host_key_checking_accept_new_from_dash_o(world: World) -> None:
    server = world.sshd()
    ok(world.tryssh("try", *world.to(server), "-o", "StrictHostKeyChecking=accept-new"))
    assert f"[127.0.0.1]:{server.port}" in (world.home / ".ssh" / "known_hosts").read_text()


def test_proxy_jump_chain_with_dash_J(world: World) -> None:
    server = world.sshd()
    hop1 = world.sshd_factory([world.key.public_line])  # plain logins that may forward
    hop2 = world.sshd_factory([world.key.public_line])
    world.known_hosts(server, hop1, hop2)
    # The hops log in with the default identity, as ssh -J would.
    shutil.copy(world.key.private_path, world.home / ".ssh" / "id_ed25519")
    (world.home / ".ssh" / "id_ed25519").chmod(0o600)
    chain = f"{hop1.user}@127.0.0.1:{hop1.port},ssh://{hop2.user}@127.0.0.1:{hop2.port}"
    ok(world.tryssh("try", *world.to(server), "-J", chain))
    assert len(world.delivered()) == 1
    # hop2 was reached through hop1, the target through hop2.
    assert f"Accepted publickey for {hop1.user}" in hop1.log_text()
    assert f"Accepted publickey for {hop2.user}" in hop2.log_text()
    assert "direct-tcpip" in hop1.log_text() or "127.0.0.1" in hop2.log_text()


# -- host certificates ------------------------------------------------------------------------


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def cert_server(world: World) -> Iterator[tuple[Sshd, Path]]:
    """An sshd presenting a host certificate signed by a fresh CA (its public key returned)."""
    ca = world.tmp / "host_ca"
    keygen("-t", "ed25519", "-N", "", "-f", str(ca))
    server = Sshd([world.forced()], directory=world.tmp / "sshd-cert")
    keygen("-s", str(ca), "-I", "ci-host", "-h", "-n", "127.0.0.1,ci.example",
           "-V", "-5m:+1h", str(server.host_key_path) + ".pub")
    cert = str(server.host_key_path) + "-cert.pub"
    server.extra_config = [f"HostCertificate {cert}"]
    server.start()
    yield server, ca.with_name("host_ca.pub")
    server.stop()


def test_cert_authority_host_keys(world: World, cert_server: tuple[Sshd, Path]) -> None:
    server, ca_pub = cert_server
    known = world.home / ".ssh" / "known_hosts"
    keytype, blob = ca_pub.read_text().split()[:2]
    known.write_text(f"@cert-authority [127.0.0.1]:{server.port},ci.* {keytype} {blob}\n")
    ok(world.tryssh("try", *world.to(server)))
    assert len(world.delivered()) == 1
    # A CA for other hosts does not vouch for this one.
    known.write_text(f"@cert-authority other.example {keytype} {blob}\n")
    result = world.tryssh("try", *world.to(server))
    ok(result, 77)
    # A revoked CA key is refused.
    known.write_text(f"@cert-authority * {keytype} {blob}\n@revoked * {keytype} {blob}\n")
    result = world.tryssh("try", *world.to(server))
    ok(result, 77)
    assert "REVOKED" in result.stderr.decode()


def test_cert_principal_must_match(world: World, cert_server: tuple[Sshd, Path]) -> None:
    server, ca_pub = cert_server
    keytype, blob = ca_pub.read_text().split()[:2]
    (world.home / ".ssh" / "known_hosts").write_text(f"@cert-authority * {keytype} {blob}\n")
    (world.home / ".ssh" / "config").write_text(
        f"Host ci\n  HostName 127.0.0.1\n  Port {server.port}\n  HostKeyAlias not-listed\n")
    result = world.tryssh("try", "--host", "ci", "-u", server.user, *key_only(world))
    ok(result, 77)
    assert "not valid for not-listed" in result.stderr.decode()


# -- errors in OpenSSH's words ----------------------------------------------------------------


def test_changed_host_key_names_file_line_and_fix(world: World) -> None:
    server = world.sshd()
    other = world.sshd_factory([])
    known = world.home / ".ssh" / "known_hosts"
    keytype, blob = other.host_key_pub.split()[:2]
    known.write_text(f"# comment\nunrelated {keytype} {blob}\n"
                     f"[127.0.0.1]:{server.port} {keytype} {blob}\n")
    result = world.tryssh("try", *world.to(server))
    ok(result, 77)
    err = result.stderr.decode()
    assert f"{known}:3" in err
    assert f"ssh-keygen -f {known} -R '[127.0.0.1]:{server.port}'" in err
    assert "Traceback" not in err


def test_port_that_never_speaks(world: World) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)  # the kernel accepts; nobody ever answers
        port = listener.getsockname()[1]
        result = world.tryssh("try", "--host", f"127.0.0.1:{port}", "--timeout", "1.5")
    ok(result, 75)
    err = result.stderr.decode()
    assert "Connection timed out during banner exchange" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 5


class _Http(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_port_answering_http(world: World) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Http)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        result = world.tryssh("try", "--host", f"127.0.0.1:{httpd.server_port}", "-q")
    finally:
        httpd.shutdown()
        httpd.server_close()
    ok(result, 75)
    err = result.stderr.decode()
    assert "kex_exchange_identification:" in err and "not an SSH server" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_dash_v_shows_paramikos_log(world: World) -> None:
    server = world.sshd()
    world.known_hosts(server)
    quiet = world.tryssh("try", *world.to(server), "-q")
    assert "paramiko" not in quiet.stderr.decode()
    loud = world.tryssh("try", *world.to(server), "-q", "-vv")
    ok(loud)
    assert "debug2: paramiko" in loud.stderr.decode() and "kex" in loud.stderr.decode()


def test_port_that_closes_at_once(world: World) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]

        def close_one() -> None:
            conn, _ = listener.accept()
            conn.close()  # like sshd dropping a connection over MaxStartups

        thread = threading.Thread(target=close_one, daemon=True)
        thread.start()
        result = world.tryssh("try", "--host", f"127.0.0.1:{port}", "-q")
        thread.join(10)
    ok(result, 75)
    err = result.stderr.decode()
    assert "kex_exchange_identification: Connection closed by 127.0.0.1" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_host_certificate_checks(tmp_path: Path) -> None:
    """The certificate checks one by one, on certificates ssh-keygen makes."""
    import base64
    import time

    import paramiko

    from tryssh.client.sshclient import HostKeyError, KnownKey, check_host_certificate

    ca, other_ca, host = tmp_path / "ca", tmp_path / "other_ca", tmp_path / "host"
    for path in (ca, other_ca, host):
        keygen("-t", "ed25519", "-N", "", "-f", str(path))

    def sign(signer: Path, *args: str) -> bytes:
        keygen("-s", str(signer), "-I", "id", *args, str(host) + ".pub")
        text = (tmp_path / "host-cert.pub").read_text()
        return base64.b64decode(text.split()[1])

    def authority(path: Path) -> KnownKey:
        kind, blob = (path.with_name(path.name + ".pub")).read_text().split()[:2]
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        return KnownKey(["*"], key, "known_hosts", 1, "@cert-authority")

    good = sign(ca, "-h", "-n", "ci.example", "-V", "-5m:+1h")
    check_host_certificate(good, "ci.example", [authority(ca)], set())
    cases = [
        (good, "other.example", [authority(ca)], "not valid for other.example"),
        (good, "ci.example", [authority(other_ca)], "CA that known_hosts does not trust"),
        (sign(ca, "-n", "ci.example"), "ci.example", [authority(ca)], "user certificate"),
        (sign(ca, "-h", "-n", "ci.example", "-V", "+1h:+2h"), "ci.example", [authority(ca)],
         "not valid now"),
        (good[:-10] + bytes(10), "ci.example", [authority(ca)], "bad CA signature"),
    ]
    for cert, name, cas, message in cases:
        with pytest.raises(HostKeyError, match=message):
            check_host_certificate(cert, name, cas, set())
    ca_blob = authority(ca).key.get_base64()
    with pytest.raises(HostKeyError, match="REVOKED"):
        check_host_certificate(good, "ci.example", [authority(ca)], {ca_blob})
    with pytest.raises(HostKeyError, match="not valid now"):
        check_host_certificate(good, "ci.example", [authority(ca)], set(),
                               now=time.time() + 7200)
