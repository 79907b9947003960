"""``GET /metrics``: what the server did, in Prometheus' text format."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
from prometheus_client.parser import text_string_to_metric_families

from pawlab.serve import Limits, Served, create_app
from pawlab.serve.models import Batching
from tests.dashboard.conftest import AppServer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_batches_and_images_are_counted(models: dict[str, Path]) -> None:
    served = Served.load(
        "first", models["first"], Batching(max_batch=8, max_wait_ms=0), compile="off", precision="fp32"
    )
    jpeg = next(models["cats"].iterdir()).read_bytes()
    with AppServer(create_app([served], Limits())) as live:
        files = [("image", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(3)]
        assert httpx.post(f"{live.url}/v1/predict", files=files).status_code == 200
        assert httpx.post(f"{live.url}/v1/predict", content=b"").status_code == 415
        found = samples(httpx.get(f"{live.url}/metrics").text)
    served.batcher.stop()
    assert found[("pawlab_serve_requests_total", (("route", "/v1/predict"), ("status", "200")))] == 1
    assert found[("pawlab_serve_requests_total", (("route", "/v1/predict"), ("status", "415")))] == 1
    assert found[("pawlab_serve_request_seconds_count", (("route", "/v1/predict"),))] == 2
    assert found[("pawlab_serve_images_total", (("model", "first"),))] == 3
    assert found[("pawlab_serve_batch_images_count", (("model", "first"),))] == 1
    assert found[("pawlab_serve_batch_images_bucket", (("le", "2.0"), ("model", "first")))] == 0
    assert found[("pawlab_serve_batch_images_bucket", (("le", "4.0"), ("model", "first")))] == 1
    assert found[("pawlab_serve_queue_images", (("model", "first"),))] == 0
