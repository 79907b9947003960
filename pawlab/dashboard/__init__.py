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

from pawlab.dashboard.app import create_app
from pawlab.dashboard.notebook import Dashboard, show, stop
from pawlab.hosts import DASHBOARD_PORT, EVERY_INTERFACE, allowed_hosts, bind_address, url_host

__all__ = ["DEFAULT_PORT", "Dashboard", "bind_address", "create_app", "serve", "show", "stop"]

DEFAULT_PORT = DASHBOARD_PORT


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
        where = f"{bind} (every interface)" if bind in EVERY_INTERFACE else bind
        print(f"pawlab dashboard: listening on {where}: the page has no authentication", file=sys.stderr)
    if not quiet:
        print(f"dashboard: http://{url_host(bind)}:{port}/", flush=True)
    config = uvicorn.Config(app, host=bind, port=port, log_level="warning", timeout_graceful_shutdown=1)
    servers.append(uvicorn.Server(config))
    servers[0].run()
