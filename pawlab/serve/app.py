"""The server's web app: ``POST /v1/predict``, ``GET /v1/models``, the Open Inference
Protocol's endpoints (`protocol_v2`), ``GET /metrics``, the pages (`page`), ``GET
/openapi.json`` (`openapi`), the token and the Host check.

The event loop only routes: uploads are decoded in a thread pool and run by each model's
engine thread (`pawlab.serve.batcher`). Every refusal is a 4xx or 503 whose body is one line
of JSON, ``{"error": "..."}``; a bug is a 500 with no traceback in its body (the server's log
has it).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pawlab.serve import openapi, page, protocol_v2, uploads
from pawlab.serve.metrics import Counting, Metrics
from pawlab.serve.models import Served
from pawlab.serve.service import Limits, Refused, Service, error, internal, read_body, refused

# answered without the token: the probes, the pages and the API's description
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/openapi.json", *page.OPEN_PATHS})


async def _uploads(request: Request, limits: Limits) -> tuple[list[tuple[str | None, bytes]], bool]:
    """The request's images as (file name, bytes), and whether it sent several (multipart)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "multipart/form-data" and not media.startswith("image/"):
        raise Refused(415, f"Content-Type {media or 'missing'}: send image/* or multipart/form-data")
    body = await read_body(request, limits.max_body)
    if media == "multipart/form-data":
        content_type = request.headers["content-type"]
        return await asyncio.to_thread(uploads.files, content_type, body, limits.max_parts), True
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


def described(served: Served, metrics: Metrics) -> dict[str, Any]:
    """A model as ``GET /v1/models`` lists it: name, digest, classes, input, and its counts."""
    pre = served.model.preprocessing
    return {
        "name": served.name,
        "digest": served.digest,
        "classes": list(served.model.classes),
        "input": {"size": list(pre.size), "channels": pre.channels},
        **metrics.counts(served.name),
    }


def v1_routes(service: Service, metrics: Metrics) -> list[BaseRoute]:
    async def predict(request: Request) -> Response:
        served = service.model(request.query_params.get("model"))
        return await service.in_time(_predict(request, service, served, _top(request)))

    async def models(request: Request) -> Response:
        listed = [described(s, metrics) for s in service.models.values()]
        return JSONResponse({"models": listed, "requests": metrics.answered()})

    return [Route("/v1/predict", predict, methods=["POST"]), Route("/v1/models", models)]


async def _predict(request: Request, service: Service, served: Served, top: int | None) -> Response:
    uploads, several = await _uploads(request, service.limits)
    probs, ran = await service.predict(served, uploads)
    answers = [served.answer(p, name, top, ran) for p, (name, _) in zip(probs, uploads, strict=True)]
    return JSONResponse(answers if several else answers[0])


def _host_name(header: str) -> str:
    """A ``Host`` header's name, lower case, without its port: ``[::1]:8090`` -> ``[::1]``."""
    name = header.lower()
    if name.startswith("["):
        return name.partition("]")[0] + "]"
    return name.partition(":")[0]


class HostCheck:
    """Only requests whose ``Host`` header names one of ``allowed`` (against DNS rebinding);
    else 400 with one line of JSON, as every refusal."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = [h.lower() for h in allowed]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = Headers(scope=scope).get("host", "")
            if _host_name(given) not in self.allowed:
                shown = repr(given[:100]) if given else "missing"
                names = ", ".join(self.allowed)
                response = error(
                    400, f"Host {shown}: this server answers only {names} (against DNS rebinding)"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BearerToken:
    """Every request but to `OPEN_PATHS` must carry ``Authorization: Bearer TOKEN``
    (compared in constant time); else 401. ``GET /v1/models`` needs it too: it tells the
    models' classes and what they ran."""

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
    request but to `OPEN_PATHS` needs it; ``trusted_hosts``: the ``Host`` headers answered
    (None: any); ``cors_origin``: the one origin whose pages may call it; ``ready()``: whether
    it takes requests (false while stopping)."""
    service = Service(models, limits, ready)
    metrics = Metrics(models)
    middleware = [Middleware(Counting, metrics=metrics)]
    if trusted_hosts is not None:
        middleware.append(Middleware(HostCheck, allowed=trusted_hosts))
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
        routes=[
            *v1_routes(service, metrics),
            *protocol_v2.routes(service),
            *metrics.routes(),
            *page.routes(),
            *openapi.routes(token is not None),
        ],
        middleware=middleware,
        exception_handlers={HTTPException: refused, Exception: internal},
    )
