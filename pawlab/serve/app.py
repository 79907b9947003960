"""The server's web app: ``POST /v1/predict``, the health probes, the metrics, the token and
the limits.

The event loop only routes: uploads are decoded in a thread pool and run by each model's
engine thread (`pawlab.serve.batcher`). Every refusal is a 4xx or 503 whose body is one line
of JSON, ``{"error": "..."}``; a bug is a 500 with no traceback in its body (the server's log
has it).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
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

from pawlab.errors import DataError
from pawlab.serve.batcher import Expired, QueueFull
from pawlab.serve.metrics import Counting, Metrics
from pawlab.serve.models import Served

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # answered without the token
RETRY_AFTER = "1"  # seconds, with a 503 for a full queue


@dataclass(frozen=True)
class Limits:
    """What one request may ask: a body of at most ``max_body_mb`` MiB, at most ``max_parts``
    images, and an answer within ``deadline_ms`` of its arrival (else 503)."""

    max_body_mb: float = 32.0
    max_parts: int = 64
    deadline_ms: float = 10_000.0

    @property
    def max_body(self) -> int:
        return int(self.max_body_mb * 2**20)


class Refused(HTTPException):
    """A request the server will not answer: its status and one-line reason."""


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail, exc.headers)


async def _internal(request: Request, exc: Exception) -> Response:
    return error(500, "internal error (the server's log says more)")


class Service:
    """The app's state: its models by name (the first is the default), the decoding pool,
    the limits, and whether it takes requests."""

    def __init__(self, models: Sequence[Served], limits: Limits, ready: Callable[[], bool]) -> None:
        self.models = {m.name: m for m in models}
        self.default = models[0]
        self.limits = limits
        self.ready = ready
        self.decoders = ThreadPoolExecutor(thread_name_prefix="pawlab-decode")

    def model(self, name: str | None) -> Served:
        served = self.default if name is None else self.models.get(name)
        if served is None:
            raise Refused(404, f"no model named {name!r}; this server has {', '.join(self.models)}")
        return served

    async def predict(self, served: Served, uploads: list[tuple[str | None, bytes]]) -> np.ndarray:
        """Decode the uploads in the pool, run them in one batch -> probabilities (n, classes)."""
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decoders, served.decode, data, name) for name, data in uploads),
            return_exceptions=True,
        )
        images = []
        for image in decoded:  # the first refusal in upload order
            if isinstance(image, DataError):
                raise Refused(422, str(image))
            if isinstance(image, BaseException):
                raise image
            images.append(image)
        deadline = time.monotonic() + self.limits.deadline_ms / 1000  # the engine drops it after
        try:
            future = served.batcher.submit(np.stack(images), deadline)
        except QueueFull:
            raise Refused(503, "the server is busy: try again", {"Retry-After": RETRY_AFTER}) from None
        try:
            return await asyncio.wrap_future(future)
        except Expired:
            raise TimeoutError from None


async def _body(request: Request, limit: int) -> bytes:
    """The request's body; 413 past ``limit`` bytes (told by Content-Length, or counted)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is over the server's limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body is over the server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise Refused(400, "multipart body: no file in it")
    return [(f.filename, await f.read()) for f in files]


async def _uploads(request: Request, limits: Limits) -> tuple[list[tuple[str | None, bytes]], bool]:
    """The request's images as (file name, bytes), and whether it sent several (multipart)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "multipart/form-data" and not media.startswith("image/"):
        raise Refused(415, f"Content-Type {media or 'missing'}: send image/* or multipart/form-data")
    body = await _body(request, limits.max_body)
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
        top = _top(request)
        try:
            async with asyncio.timeout(service.limits.deadline_ms / 1000):
                uploads, several = await _uploads(request, service.limits)
                probs = await service.predict(served, uploads)
        except TimeoutError:
            raise Refused(
                503, f"not answered within the deadline ({service.limits.deadline_ms:g} ms)"
            ) from None
        answers = [served.answer(p, name, top) for p, (name, _) in zip(probs, uploads, strict=True)]
        return JSONResponse(answers if several else answers[0])

    return [Route("/v1/predict", predict, methods=["POST"])]


def health_routes(service: Service) -> list[BaseRoute]:
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        up = service.ready()
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    return [Route("/v2/health/live", live), Route("/v2/health/ready", ready)]


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
        routes=[*v1_routes(service), *health_routes(service), *metrics.routes()],
        middleware=middleware,
        exception_handlers={HTTPException: _refused, Exception: _internal},
    )
