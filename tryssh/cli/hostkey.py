"""``tryssh hostkey``: print the server's host keys for the developers' known_hosts."""

from __future__ import annotations

import socket

import click

from tryssh.errors import EX_NOINPUT, TrysshError, UsageError


def default_host() -> str:
    """This machine's fully qualified name; its host name where the resolver answers
    'localhost' (an /etc/hosts with the name on 127.0.0.1), a name no developer can use."""
    fqdn = socket.getfqdn()
    if fqdn == "localhost" or fqdn.startswith("localhost."):
        return socket.gethostname()
    return fqdn


@click.command("hostkey")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The tryssh config: also print tryssh serve's key ([serve] host_key).")
@click.option("--host", metavar="NAME", help="The name developers connect to "
              "(default: this machine's fully qualified name).")
@click.option("--port", type=click.IntRange(1, 65535), default=22, show_default=True,
              help="OpenSSH's port.")
@click.option("--serve-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="tryssh serve's port (default: the one in [serve] listen).")
@click.option("--sshd-dir", default="/etc/ssh", show_default=True, metavar="DIR",
              help="Where OpenSSH's ssh_host_*_key.pub files are.")
@click.option("--no-openssh", is_flag=True, help="Only tryssh serve's key.")
def hostkey_cmd(config_path: str | None, host: str | None, port: int, serve_port: int | None,
                sshd_dir: str, no_openssh: bool) -> int:  # fmt: skip
    """Print this server's host keys as known_hosts lines, each with its fingerprint.

    Run it on the server; give the output to developers over a channel they already
    trust (the team's wiki over HTTPS, a signed mail, the repository). They append it to
    ~/.ssh/known_hosts and keep StrictHostKeyChecking on: the first connection is then
    checked, never answered 'yes' blindly.

    \b
    Examples:
      tryssh hostkey --host build.example.org > tryssh-known_hosts
      tryssh hostkey --config /etc/tryssh/config.toml --no-openssh
    \b
    Developers:
      cat tryssh-known_hosts >> ~/.ssh/known_hosts
      ssh-keygen -F build.example.org        shows what is now trusted

    Exit codes: 0 ok, 64 usage, 66 no host key found (or a key file unreadable), 78 config
    error.
    """
    from tryssh.server.hostkeys import format_keys, openssh_host_keys, serve_host_key

    host = host or default_host()
    keys = []
    if not no_openssh:
        keys += [(key, port) for key in openssh_host_keys(sshd_dir)]
    if config_path:
        from tryssh.server.config import load_config
        from tryssh.server.serve import Settings

        config = load_config(config_path)
        if config.serve:
            settings = Settings.from_config(config)
            if not (serve_port or settings.port):
                raise UsageError(f"{config_path}: [serve] listen has port 0 (any free port): "
                                 "give the port tryssh serve listens on with --serve-port")
            keys.append((serve_host_key(settings.host_key), serve_port or settings.port))
    if not keys:
        where = f"no ssh_host_*_key.pub in {sshd_dir}" if not no_openssh else "nothing asked"
        hint = "" if config_path else "; add --config for tryssh serve's key"
        raise TrysshError(f"no host key found ({where}){hint}", EX_NOINPUT)
    click.echo(format_keys(keys, host), nl=False)
    return 0
