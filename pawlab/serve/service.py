"""What every endpoint shares: the models by name, decoding in a thread pool, the engines
behind a deadline, the limits, and refusals as one line of JSON."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pawlab.errors import DataError
from pawlab.serve.batcher import Expired, QueueFull
from pawlab.serve.models import Served, Version

T = TypeVar("T")
RETRY_AFTER = "1"  # seconds, with a 503 for a full queue
# when the request being answered must be (time.monotonic): its arrival plus the deadline
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("deadline")


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


async def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail, exc.headers)


async def internal(request: Request, exc: Exception) -> Response:
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

    async def predict(
        self, served: Served, uploads: list[tuple[str | None, bytes]]
    ) -> tuple[np.ndarray, Version]:
        """Decode the uploads in the pool and run them in one batch -> their rows (n, classes + 1:
        probabilities, typicality) and the version that ran them; 422 naming the first upload,
        in their order, that is no image; 503 when the queue is full, before any is decoded."""
        self._reserve(served, len(uploads))
        try:
            images = await self._decoded(served, uploads)
        except BaseException:
            served.batcher.release(len(uploads))
            raise
        return await self._submit(served, images)

    async def _decoded(self, served: Served, uploads: list[tuple[str | None, bytes]]) -> np.ndarray:
        """The uploads decoded and stacked in the pool -> uint8 (n, H, W, C)."""
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decoders, served.decode, data, name) for name, data in uploads),
            return_exceptions=True,
        )
        images = []
        for image in decoded:
            if isinstance(image, DataError):
                raise Refused(422, str(image))
            if isinstance(image, BaseException):
                raise image
            images.append(image)
        return await loop.run_in_executor(self.decoders, np.stack, images)

    async def run(self, served: Served, images: np.ndarray) -> tuple[np.ndarray, Version]:
        """uint8 (n, H, W, C) at the model's size -> their rows (probabilities, typicality) and
        the version that ran them; 503 when the queue is full."""
        self._reserve(served, len(images))
        return await self._submit(served, images)

    def _reserve(self, served: Served, n: int) -> None:
        try:
            served.batcher.reserve(n)
        except QueueFull:
            raise Refused(503, "the server is busy: try again", {"Retry-After": RETRY_AFTER}) from None

    async def _submit(self, served: Served, images: np.ndarray) -> tuple[np.ndarray, Version]:
        """Images whose room is reserved -> their rows (probabilities, typicality) and the version
        that ran them. The engine drops them unrun once the request's deadline (set by
        `in_time`) has passed."""
        deadline = _deadline.get(time.monotonic() + self.limits.deadline_ms / 1000)
        future = served.batcher.submit(images, deadline, reserved=True)
        try:
            probs, version = await asyncio.wrap_future(future)
        except Expired:
            raise TimeoutError from None
        assert isinstance(version, Version)
        return probs, version

    async def in_time(self, work: Awaitable[T]) -> T:
        """``work``'s result, or 503 if it is not done within the deadline from now (the
        request's arrival)."""
        _deadline.set(time.monotonic() + self.limits.deadline_ms / 1000)
        try:
            async with asyncio.timeout(self.limits.deadline_ms / 1000):
                return await work
        except TimeoutError:
            raise Refused(503, f"not answered within the deadline ({self.limits.deadline_ms:g} ms)") from None


async def read_body(request: Request, limit: int) -> bytes:
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
