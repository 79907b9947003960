"""The server's web app: ``POST /v1/predict``, the Open Inference Protocol's endpoints
(`protocol_v2`), ``GET /metrics``, the token and the Host check.

The event loop only routes: uploads are decoded in a thread pool and run by each model's
engine thread (`pawlab.serve.batcher`). Every refusal is a 4xx or 503 whose body is one line
of JSON, ``{"error": "..."}``; a bug is a 500 with no traceback in its body (the server's log
has it).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncGenerator, Callable, Sequence

from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pawlab.serve import protocol_v2
from pawlab.serve.metrics import Counting, Metrics
from pawlab.serve.models import Served
from pawlab.serve.service import Limits, Refused, Service, error, internal, read_body, refused

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # answered without the token


async def _parts(headers: Headers, body: bytes, limits: Limits) -> list[tuple[str | None, bytes]]:
    """A multipart body's files, in upload order, as (file name, bytes)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        headers,
        stream(),
        max_files=limits.max_parts,
        max_fields=limits.max_parts,
        max_part_size=limits.max_body,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Refused(400, f"multipart body: {exc}") from None
    try:
        files = [(v.filename, await v.read()) for _, v in form.multi_items() if isinstance(v, UploadFile)]
    finally:
        await form.close()
    if not files:
        raise Refused(400, "multipart body: no file in it")
    return files


async def _uploads(request: Request, limits: Limits) -> tuple[list[tuple[str | None, bytes]], bool]:
    """The request's images as (file name, bytes), and whether it sent several (multipart)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "multipart/form-data" and not media.startswith("image/"):
        raise Refused(415, f"Content-Type {media or 'missing'}: send image/* or multipart/form-data")
    body = await read_body(request, limits.max_body)
    if media == "multipart/form-data":
        return await _parts(request.headers, body, limits), True
    if not body:
        raise Refused(400, "empty body: send an image")
    return [(None, body)], False


def _top(request: Request) -> int | None:
    raw = request.query_params.get("top")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 9 and int(raw) > 0):
        raise Refused(400, f"top={raw!r}: not a whole number >= 1")
    return int(raw)


def v1_routes(service: Service) -> list[BaseRoute]:
    async def predict(request: Request) -> Response:
        served = service.model(request.query_params.get("model"))
        return await service.in_time(_predict(request, service, served, _top(request)))

    return [Route("/v1/predict", predict, methods=["POST"])]


async def _predict(request: Request, service: Service, served: Served, top: int | None) -> Response:
    uploads, several = await _uploads(request, service.limits)
    probs, ran = await service.predict(served, uploads)
    answers = [served.answer(p, name, top, ran) for p, (name, _) in zip(probs, uploads, strict=True)]
    return JSONResponse(answers if several else answers[0])


class BearerToken:
    """Every request but the health probes must carry ``Authorization: Bearer TOKEN``
    (compared in constant time); else 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = Headers(scope=scope).get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, self.expected):
                headers = {"WWW-Authenticate": "Bearer"}
                response = error(401, "missing or wrong token: send Authorization: Bearer TOKEN", headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    models: Sequence[Served],
    limits: Limits = Limits(),
    *,
    token: str | None = None,
    trusted_hosts: list[str] | None = None,
    cors_origin: str | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> Starlette:
    """The app over ``models`` (the first answers requests that name none). ``token``: every
    request but the health probes needs it; ``trusted_hosts``: the ``Host`` headers answered
    (None: any); ``cors_origin``: the one origin whose pages may call it; ``ready()``: whether
    it takes requests (false while stopping)."""
    service = Service(models, limits, ready)
    metrics = Metrics(models)
    middleware = [Middleware(Counting, metrics=metrics)]
    if trusted_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts))
    if cors_origin is not None:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=[cors_origin],
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"],
            )
        )
    if token is not None:
        middleware.append(Middleware(BearerToken, token=token))
    return Starlette(
        routes=[*v1_routes(service), *protocol_v2.routes(service), *metrics.routes()],
        middleware=middleware,
        exception_handlers={HTTPException: refused, Exception: internal},
    )
