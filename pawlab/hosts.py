"""Which addresses a local web server listens on and which ``Host`` headers it answers (the
dashboard's and `pawlab serve`'s): loopback unless the user names another address, and on a
loopback address only requests that name a loopback host (against DNS rebinding)."""

from __future__ import annotations

import ipaddress

from pawlab.errors import ConfigError

LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]
DASHBOARD_PORT = 8091  # where Cortex's dashboard was
SERVE_PORT = 8090
EVERY_INTERFACE = ("0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def host_for_url(host: str) -> str:
    """``host`` as it goes in a URL or a ``Host`` header: an IPv6 address in brackets."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def allowed_hosts(bind: str) -> list[str] | None:
    """The ``Host`` headers a server listening on ``bind`` answers: on a loopback address the
    loopback names and the address itself (against DNS rebinding); None, any, on an address
    beyond this machine (the user's choice)."""
    if not is_loopback(bind):
        return None
    return list(dict.fromkeys([*LOOPBACK_HOSTS, host_for_url(bind).lower()]))


def bind_address(host: str | None) -> str:
    """The address to listen on: 127.0.0.1 for None. An empty one is refused: to the socket
    it means every interface, far more likely an unset variable than a choice."""
    if host is None:
        return "127.0.0.1"
    if not host.strip():
        raise ConfigError(
            f"--host {host!r}: an empty address would listen on every interface; for that give "
            "--host 0.0.0.0, or leave --host out for 127.0.0.1"
        )
    return host


def url_host(bind: str) -> str:
    """How a URL printed for the user names a server listening on ``bind``: 127.0.0.1 for
    every interface."""
    return host_for_url("127.0.0.1" if bind in EVERY_INTERFACE else bind)
