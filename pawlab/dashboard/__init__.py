"""The live training dashboard: curves, a confusion matrix whose cells open their images, run
comparison; served on localhost from run directories. Imports no torch.

    store.py     runs as read from their run directories (`pawlab.runlog`)
    app.py       the Starlette app: the page, its assets (plotly.js from the installed package)
                 and a read-only JSON API with a server-sent event stream
    export.py    one run's page as one offline HTML file (``pawlab dashboard RUN --export F``)
    notebook.py  `show`: the dashboard in a notebook's output, served from the kernel on
                 127.0.0.1 or inlined offline; `stop`
    static/      the page

``pawlab dashboard RUNS...`` or ``pawlab train ... --dashboard`` start it; in a notebook,
``pawlab.dashboard.show(result)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pawlab.dashboard.app import allowed_hosts, create_app, host_for_url
from pawlab.dashboard.notebook import Dashboard, show, stop
from pawlab.errors import ConfigError

__all__ = ["DEFAULT_PORT", "Dashboard", "bind_address", "create_app", "serve", "show", "stop"]

DEFAULT_PORT = 8091  # where Cortex's dashboard was
_EVERY_INTERFACE = ("0.0.0.0", "::")


def bind_address(host: str | None) -> str:
    """The address to listen on: 127.0.0.1 for None. An empty one is refused: to the socket
    it means every interface, far more likely an unset variable than a choice."""
    if host is None:
        return "127.0.0.1"
    if not host.strip():
        raise ConfigError(
            f"--host {host!r}: an empty address would listen on every interface; for that give "
            "--host 0.0.0.0 (the page has no authentication), or leave --host out for 127.0.0.1"
        )
    return host


def serve(
    roots: list[Path], *, host: str | None = None, port: int = DEFAULT_PORT, quiet: bool = False
) -> None:
    """Serve the runs under ``roots`` until Ctrl-C. ``host=None``: this machine only
    (127.0.0.1). On any loopback address requests must name a loopback host (against DNS
    rebinding); any other host is the user's explicit choice, and the page has no
    authentication."""
    import uvicorn

    bind = bind_address(host)
    servers: list[uvicorn.Server] = []
    trusted = allowed_hosts(bind)
    app = create_app(roots, trusted_hosts=trusted, closing=lambda: servers[0].should_exit)
    if trusted is None:
        where = f"{bind} (every interface)" if bind in _EVERY_INTERFACE else bind
        print(f"pawlab dashboard: listening on {where}: the page has no authentication", file=sys.stderr)
    if not quiet:
        shown = "127.0.0.1" if bind in _EVERY_INTERFACE else bind
        print(f"dashboard: http://{host_for_url(shown)}:{port}/", flush=True)
    config = uvicorn.Config(app, host=bind, port=port, log_level="warning", timeout_graceful_shutdown=1)
    servers.append(uvicorn.Server(config))
    servers[0].run()
