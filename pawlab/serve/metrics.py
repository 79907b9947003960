"""``GET /metrics`` in Prometheus' text format: requests by route and status, their latency,
batch sizes, images run (its rate is the images per second) and images queued, per model.

With ``--workers``, each worker keeps its metrics in files under `SHARED_DIR` (prometheus_client's
multiprocess mode, chosen when it is imported) and every worker answers with all of them summed:
a scrape that reaches any one of them sees the whole server, and counters never go back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pawlab.serve.models import Served

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREDICTING = ("/v1/predict", "/v2/models/{name}/infer")  # the routes that run images
COUNTS = {  # a model's `Metrics.counts`: its samples
    "images": "pawlab_serve_images_total",
    "batches": "pawlab_serve_batch_images_count",
    "queued": "pawlab_serve_queue_images",
}
SHARED_DIR = "PROMETHEUS_MULTIPROC_DIR"  # the workers' metrics files; set before they start


class Metrics:
    """The server's metrics, in a registry of its own (two apps in one process keep theirs)."""

    def __init__(self, models: Sequence[Served]) -> None:
        self.shared = os.environ.get(SHARED_DIR)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pawlab_serve_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "pawlab_serve_request_seconds", "from a request's arrival to its answer", ["route"], registry=r
        )
        self.batches = Histogram(
            "pawlab_serve_batch_images", "images per batch run", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter("pawlab_serve_images", "images run", ["model"], registry=r)
        queued = Gauge(
            "pawlab_serve_queue_images",
            "images waiting for a batch",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",  # the workers' queues, summed; a dead one's dropped
        )
        for served in models:
            served.batcher.on_queued = queued.labels(served.name).set
            served.batcher.on_batch = self.batch_counter(served.name)

    def batch_counter(self, model: str) -> Callable[[int], None]:
        batches, images = self.batches.labels(model), self.images.labels(model)

        def ran(size: int) -> None:
            batches.observe(size)
            images.inc(size)

        return ran

    def exposed(self) -> CollectorRegistry:
        """What ``/metrics`` shows: this registry, or with workers, all of theirs summed."""
        if self.shared is None:
            return self.registry
        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed, self.shared)
        return summed

    def counts(self, model: str) -> dict[str, int]:
        """``model``'s images run, batches run and images waiting, so far."""
        exposed = self.exposed()
        return {
            key: int(exposed.get_sample_value(sample, {"model": model}) or 0)
            for key, sample in COUNTS.items()
        }

    def answered(self) -> dict[str, int]:
        """Requests to the routes that run images (`PREDICTING`) answered so far, by status."""
        by_status: dict[str, int] = {}
        for family in self.exposed().collect():
            for s in family.samples:
                if s.name == "pawlab_serve_requests_total" and s.labels["route"] in PREDICTING:
                    by_status[s.labels["status"]] = by_status.get(s.labels["status"], 0) + int(s.value)
        return by_status

    def routes(self) -> list[BaseRoute]:
        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.exposed()), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", metrics)]


class Counting:
    """Counts each answer by its route (as declared, ``/v2/models/{name}/infer``) and status,
    and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
