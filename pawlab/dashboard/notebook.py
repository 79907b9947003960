"""The dashboard in a notebook's output: `show` embeds it, `stop` ends its server.

One server per kernel (per port), on 127.0.0.1 in a daemon thread; each `show` of a set of runs
is a view of its own under ``/v/<key>/`` (the page's URLs are relative, so it works there
unchanged), and the output is an iframe of that view. The browser must be on the kernel's
machine to reach it; ``static=True`` embeds the offline export (`export.py`) instead, which
also survives in a notebook saved with its outputs.
"""

from __future__ import annotations

import hashlib
import html
import os
import socket
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.routing import Mount

from pawlab.dashboard import store
from pawlab.dashboard.app import create_app
from pawlab.errors import ConfigError
from pawlab.hosts import LOOPBACK_HOSTS

if TYPE_CHECKING:
    import uvicorn

__all__ = ["Dashboard", "show", "stop"]

HOST = "127.0.0.1"  # never anything else: the page has no authentication
START_SECONDS = 30.0  # how long `show` waits for a new server to answer
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


@dataclass
class Dashboard:
    """What `show` returns: an iframe in a notebook, the URL in a console."""

    url: str | None  # the live view; None for a static one
    height: int
    pages: list[str] = field(default_factory=list)  # static: each run's offline page

    def _repr_html_(self) -> str:
        style = f'width="100%" height="{self.height}" style="border: 0"'
        if self.url is not None:
            return f'<iframe src="{html.escape(self.url)}" {style} title="pawlab dashboard"></iframe>'
        return "".join(
            f'<iframe srcdoc="{html.escape(page, quote=True)}" {style} title="pawlab dashboard"></iframe>'
            for page in self.pages
        )

    def __repr__(self) -> str:
        if self.url is not None:
            return f"pawlab dashboard: {self.url}"
        return f"pawlab dashboard: {len(self.pages)} run(s) embedded offline"


@dataclass
class _Server:
    """A uvicorn server in a daemon thread, its socket, and the views mounted on its app."""

    port: int
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket
    app: Starlette
    views: set[str] = field(default_factory=set)


_SERVERS: dict[int, _Server] = {}  # by port: the servers this kernel started
_LOCK = threading.Lock()


def _run_path(run: Any) -> Path:
    """A run directory from a path or from what `pawlab.train` returns (its ``run_dir``)."""
    path = getattr(run, "run_dir", run)
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"show: {run!r} is neither a run directory nor a training result")
    return Path(path).resolve()


def _listening_socket(port: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port or 0))  # 0: a free port, held from here on (no race)
    except OverflowError:
        sock.close()
        raise ConfigError(f"show: port {port} is not a port (1-65535)") from None
    except OSError as exc:
        sock.close()
        raise ConfigError(f"show: port {port} on {HOST} is not free ({exc.strerror})") from exc
    sock.listen(128)
    return sock


def _start(port: int | None) -> _Server:
    import uvicorn

    sock = _listening_socket(port)
    bound = int(sock.getsockname()[1])
    app = Starlette()
    # log_config=None: the kernel's logging stays as the user set it up
    config = uvicorn.Config(
        app,
        host=HOST,
        port=bound,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,  # a page's open event stream must not hold up stop()
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"pawlab-dashboard-{bound}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the dashboard server on {HOST}:{bound} did not start")
        time.sleep(0.02)
    return _Server(bound, server, thread, sock, app)


def _server(port: int | None) -> _Server:
    """The server on ``port`` (any running one when None), started if there is none."""
    for dead in [p for p, s in _SERVERS.items() if not s.thread.is_alive()]:
        _SERVERS.pop(dead).sock.close()
    if port is None and _SERVERS:
        return next(iter(_SERVERS.values()))
    if port is not None and port in _SERVERS:
        return _SERVERS[port]
    started = _start(port)
    _SERVERS[started.port] = started
    return started


def _view(server: _Server, roots: list[Path]) -> str:
    """The path of the view of ``roots`` on ``server``, mounted on first use."""
    key = hashlib.blake2b("\0".join(map(str, roots)).encode(), digest_size=6).hexdigest()
    if key not in server.views:
        sub = create_app(roots, trusted_hosts=LOOPBACK_HOSTS, closing=lambda: server.server.should_exit)
        server.app.router.routes.append(Mount(f"/v/{key}", app=sub))
        server.views.add(key)
    return f"/v/{key}/"


def _wait_answers(url: str) -> None:
    """Return once ``url`` answers 200 (a server just started, a view just mounted)."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with _DIRECT.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard at {url} does not answer")
        time.sleep(0.05)


def _static_pages(roots: list[Path]) -> list[str]:
    from pawlab.dashboard.export import export_html

    found = store.find_runs(roots)
    if not found:
        raise ConfigError(f"show: no run directory (with its events.jsonl) in {', '.join(map(str, roots))}")
    pages = []
    with tempfile.TemporaryDirectory(prefix="pawlab-show-") as tmp:
        for i, run in enumerate(found):
            pages.append(export_html(run, Path(tmp) / f"{i}.html").path.read_text(encoding="utf-8"))
    return pages


def show(*runs: Any, port: int | None = None, height: int = 640, static: bool = False) -> Dashboard:
    """Embed the dashboard of ``runs`` (run directories, folders of them, or the results of
    `pawlab.train`; default ``runs/``) in a notebook cell's output.

    Live: served from this kernel on 127.0.0.1 (a free port, or ``port``), started on the
    first call and reused by later ones. ``static=True``: each run's offline page, inlined
    (several megabytes each), for a notebook to be read where no server runs.
    """
    roots = [_run_path(r) for r in runs] or [Path("runs").resolve()]
    if static:
        return Dashboard(None, height, _static_pages(roots))
    with _LOCK:
        server = _server(port)
        url = f"http://{HOST}:{server.port}{_view(server, roots)}"
    _wait_answers(url + "api/runs")
    return Dashboard(url, height)


def stop(port: int | None = None) -> None:
    """Shut down the server on ``port``, or every one this kernel started; frees the port."""
    with _LOCK:
        ports = list(_SERVERS) if port is None else [port] if port in _SERVERS else []
        stopping = [_SERVERS.pop(p) for p in ports]
    for s in stopping:
        s.server.should_exit = True
        s.thread.join(timeout=10)
        s.sock.close()
