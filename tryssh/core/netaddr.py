"""``host:port`` addresses as tryssh writes and reads them: ``[v6]:port`` for IPv6."""

from __future__ import annotations

from tryssh.errors import ConfigError


def format_address(host: str, port: int | str) -> str:
    """``host:port``, or ``[host]:port`` when the host is an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str, where: str = "listen") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); port 0 means any free port.

    Raises ConfigError naming *where*.
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{where}: expected [ADDRESS]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"{where}: expected HOST:PORT (IPv6 as [ADDR]:PORT), got {text!r}")
    if not host or not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ConfigError(f"{where}: expected HOST:PORT with a port 0-65535, got {text!r}")
    return host, int(port_text)
