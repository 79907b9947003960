"""The dashboard's web app: a page, its assets, and a read-only JSON API over run directories.

GET only. Runs are found under the roots given at start (looked for again on every run list,
so a run that starts later appears); each is named by an opaque id, each image by its index in
the validation set: nothing a request sends becomes a path. The event log streams as
server-sent events, resumable after a reconnect (``Last-Event-ID``). Unless the server was
asked to listen beyond this machine, requests must name a loopback host (against DNS
rebinding). Files are read in worker threads, never on the event loop: a slow disk or a
damaged run holds up no other request, and Ctrl-C stops the server at once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.responses import JSONResponse as StarletteJSON
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pawlab import runlog
from pawlab.dashboard import store
from pawlab.hosts import LOOPBACK_HOSTS
from pawlab.runlog import DamagedFile

STATIC = Path(__file__).with_name("static")
POLL_SECONDS = 0.25  # how often a stream looks for new events
MAX_STREAMS = 64  # event streams open at once; more get 503
_MAX_DIGITS = 18  # of an integer in a request: more is no image, epoch or class of any run


def plotly_js() -> Path | None:
    """plotly.js as the installed ``plotly`` package ships it (never a CDN)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def _assets() -> dict[str, tuple[Path | None, str]]:
    return {
        "app.js": (STATIC / "app.js", "text/javascript"),
        "style.css": (STATIC / "style.css", "text/css"),
        "plotly.min.js": (plotly_js(), "text/javascript"),
    }


class Runs:
    """The runs under the roots, by id; a run keeps its cached passes between requests."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._known: dict[str, store.Run] = {}

    def all(self) -> list[store.Run]:
        found = store.find_runs(self.roots)
        runs = [self._known.setdefault(store.run_id(p), store.Run(p)) for p in found]
        return runs

    def get(self, rid: str) -> store.Run | None:
        run = self._known.get(rid)
        if run is None:
            run = next((r for r in self.all() if r.id == rid), None)
        return run if run is not None and run.path.is_dir() else None


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers (a diverging run
    writes them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class JSONResponse(StarletteJSON):
    def render(self, content: Any) -> bytes:
        return json.dumps(finite(content), separators=(",", ":")).encode()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _integer(raw: str | None, name: str) -> int:
    if raw is None:
        raise ValueError(f"{name}: missing")
    digits = raw.removeprefix("-")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS):
        raise ValueError(f"{name}: not an integer")
    return int(raw)


def _int(request: Request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    return default if raw is None and default is not None else _integer(raw, name)


def _found(value: Any, missing: str) -> Response:
    """``value`` as JSON, or 404 with ``missing`` when there is none."""
    return JSONResponse(value) if value is not None else _error(404, missing)


RunHandler = Callable[[Request, store.Run], Response]  # run in a worker thread


async def _page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def _events(request: Request, run: store.Run) -> Response:
    records, _ = run.events()
    return JSONResponse(records)


def _passes(request: Request, run: store.Run) -> Response:
    return JSONResponse(store.passes(run))


def _no_pass(run: store.Run, epoch: int) -> str:
    return run.pass_damage.get(epoch) or f"no validation pass after epoch {epoch}"


def _matrix(request: Request, run: store.Run) -> Response:
    epochs = run.pass_epochs()
    epoch = _int(request, "epoch", epochs[-1] if epochs else 0)
    found = store.matrix(run, epoch)
    return _found(found, _no_pass(run, epoch))


def _cell(request: Request, run: store.Run) -> Response:
    k = len(run.index().get("classes", []))
    true, predicted, epoch = _int(request, "true"), _int(request, "predicted"), _int(request, "epoch")
    if not (0 <= true < k and 0 <= predicted < k):
        raise ValueError("true, predicted: not classes of this run")
    found = store.cell(run, epoch, true, predicted, request.query_params.get("order", "p"))
    return _found(found, _no_pass(run, epoch))


def _image_index(request: Request) -> int:
    return _integer(request.path_params["index"], "index")


def _history(request: Request, run: store.Run) -> Response:
    return _found(store.history(run, _image_index(request)), "no such image")


def _jpeg(request: Request, found: tuple[bytes, str] | None, missing: str) -> Response:
    if found is None:
        return _error(404, missing)
    data, etag = found
    # revalidated (ETag): a new run in the same run directory has new images
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


def _thumb(request: Request, run: store.Run) -> Response:
    return _jpeg(request, run.thumb(_image_index(request)), "no such image")


def _seen(request: Request, run: store.Run) -> Response:
    name = runlog.SEEN.get(request.path_params["which"])
    return _jpeg(request, run.image(name) if name is not None else None, "no such grid")


def _suspects(request: Request, run: store.Run) -> Response:
    rows = store.suspects(run)
    if request.query_params.get("format") == "csv":
        headers = {"Content-Disposition": f'attachment; filename="suspects-{run.id}.csv"'}
        return Response(store.suspects_csv(rows), media_type="text/csv", headers=headers)
    return JSONResponse(rows)


class _Stream(StreamingResponse):
    """An event stream that gives back its slot when it ends, however it ends (also when the
    client left before it started)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], headers: dict[str, str]):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


class _Api:
    """The handlers that need the app's state: its runs, assets and open streams."""

    def __init__(self, roots: list[Path], closing: Callable[[], bool]) -> None:
        self.runs = Runs([Path(r) for r in roots])
        self.assets = _assets()
        self.closing = closing
        self.streams = 0  # open, counted from their admission (on the event loop: no race)

    async def asset(self, request: Request) -> Response:
        path, media = self.assets.get(request.path_params["name"], (None, ""))
        if path is None:
            return _error(404, "no such asset")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    async def run_list(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(lambda: [r.summary() for r in self.runs.all()]))

    async def compare(self, request: Request) -> Response:
        return await run_in_threadpool(self._compare, request)

    def _compare(self, request: Request) -> Response:
        a, b = (self.runs.get(request.query_params.get(k, "")) for k in ("a", "b"))
        if a is None or b is None:
            return _error(404, "no such run")
        return _found(store.disagreements(a, b), "the two runs have no validation pass over the same classes")

    async def stream(self, request: Request) -> Response:
        run = await run_in_threadpool(self.runs.get, request.path_params["rid"])
        if run is None:
            return _error(404, "no such run")
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # holds no slot: there is no stream
            return Response(media_type="text/event-stream", headers=headers)
        if self.streams >= MAX_STREAMS:
            return _error(503, "too many open streams")
        self.streams += 1
        last = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        sent = int(last) if last.isdigit() and len(last) <= _MAX_DIGITS else 0
        return _Stream(_event_stream(request, run, sent, self.closing), self._release, headers)

    def _release(self) -> None:
        self.streams -= 1

    def of_run(self, handler: RunHandler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` given the run the path names, in a worker thread: 404 for an unknown
        run or a damaged file, 400 for a bad query."""

        def answer(request: Request) -> Response:
            run = self.runs.get(request.path_params["rid"])
            if run is None:
                return _error(404, "no such run")
            try:
                return handler(request, run)
            except ValueError as exc:
                return _error(400, str(exc))
            except DamagedFile as exc:
                return _error(404, str(exc))

        async def wrapped(request: Request) -> Response:
            return await run_in_threadpool(answer, request)

        return wrapped


def create_app(
    roots: list[Path],
    trusted_hosts: list[str] | None = LOOPBACK_HOSTS,
    closing: Callable[[], bool] = lambda: False,
) -> Starlette:
    """The app over the run directories under ``roots``; ``trusted_hosts=None`` accepts any
    ``Host`` header (a server the user asked to listen beyond this machine). ``closing()``
    says the server is stopping: open event streams then end, so that Ctrl-C with a page
    open stops at once and cleanly."""
    api = _Api(roots, closing)
    per_run: dict[str, RunHandler] = {
        "events": _events,
        "passes": _passes,
        "matrix": _matrix,
        "cell": _cell,
        "images/{index}/history": _history,
        "images/{index}/thumb": _thumb,
        "suspects": _suspects,
        "seen/{which}": _seen,
    }
    routes = [
        Route("/", _page),
        Route("/static/{name}", api.asset),
        Route("/api/runs", api.run_list),
        Route("/api/compare", api.compare),
        Route("/api/runs/{rid}/stream", api.stream),
        *(Route(f"/api/runs/{{rid}}/{path}", api.of_run(handler)) for path, handler in per_run.items()),
    ]
    middleware = (
        [] if trusted_hosts is None else [Middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)]
    )
    return Starlette(routes=routes, middleware=middleware)


async def _event_stream(
    request: Request, run: store.Run, sent: int, closing: Callable[[], bool]
) -> AsyncIterator[str]:
    """The run's events after the first ``sent``, then each new one as it is written. Each
    message's id is its number in the log, so a reconnecting browser (``Last-Event-ID``)
    gets only what it missed. A new log in the run directory (a new run) sends ``reset`` and
    its events from the first; a deleted run ends the stream with a ``gone`` event."""
    yield "retry: 1000\n\n"
    count, generation = 0, None
    while True:
        (records, now), there = await run_in_threadpool(lambda: (run.events(), run.path.is_dir()))
        if generation is not None and now != generation:
            count, sent = 0, 0
            yield "event: reset\ndata: {}\n\n"
        generation = now
        for record in records[count:]:  # the list only grows, while it is this generation's
            count += 1
            if count > sent:
                yield f"id: {count}\ndata: {json.dumps(finite(record))}\n\n"
        sent = max(sent, count)
        if not there:
            yield "event: gone\ndata: {}\n\n"
            return
        if closing() or await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)
