"""The server's pages, from the files in ``static/``: ``GET /`` (drop, pick or paste images and
see their probabilities, with the models and a few live metrics) and ``GET /docs`` (the API,
as ``GET /openapi.json`` describes it).

They load nothing from outside the machine, and their Content-Security-Policy lets them run
no script but their own files. None of them is secret: they answer without the token (the
page asks for it when ``/v1/models`` or ``/v1/predict`` answers 401).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from pawlab.serve.service import Refused

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/docs": "docs.html"}
ASSETS = {  # what /static/{name} serves: name -> media type
    "dom.js": "text/javascript",
    "page.js": "text/javascript",
    "docs.js": "text/javascript",
    "page.css": "text/css",
    "icon.svg": "image/svg+xml",
}
OPEN_PATHS = frozenset([*PAGES, *(f"/static/{name}" for name in ASSETS)])  # answered without the token
POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",  # blob: the thumbnails of the images picked
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def routes() -> list[BaseRoute]:
    def page(path: str) -> Route:
        async def answer(request: Request) -> Response:
            return FileResponse(STATIC / PAGES[path], media_type="text/html", headers=HEADERS)

        return Route(path, answer)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise Refused(404, f"no file /static/{name}")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)

    return [*(page(path) for path in PAGES), Route("/static/{name}", asset)]
