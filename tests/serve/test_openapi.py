"""``GET /openapi.json``: every route of the app described, and nothing else; valid OpenAPI 3.1."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jsonschema
import openapi_spec_validator as validator
import pytest
from starlette.routing import Route

from pawlab.serve import Served, create_app
from pawlab.serve.models import Batching
from pawlab.serve.openapi import document
from tests.dashboard.conftest import AppServer


@pytest.fixture(scope="module")
def served(models: dict[str, Path]) -> Iterator[Served]:
    model = Served.load("first", models["first"], Batching(), compile="off", precision="fp32")
    yield model
    model.batcher.stop()


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_route_is_described_and_nothing_else(served: Served) -> None:
    app = create_app([served], token="t")
    methods = [(r.path, r.methods or set()) for r in app.routes if isinstance(r, Route)]
    routes = {(path, method) for path, found in methods for method in found - {"HEAD"}}
    assert len(routes) == len(app.routes) > 10  # each route one method
    assert operations(document(token=True)) == routes
    assert operations(document(token=False)) == routes


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_the_document_is_served_to_anyone_as_openapi_3_1(served: Served, token: str | None) -> None:
    with AppServer(create_app([served], token=token)) as live:
        answer = httpx.get(f"{live.url}/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    doc = json.loads(answer.text)
    assert doc["openapi"] == "3.1.0" and doc == document(token is not None)
    every = [op for ops in doc["paths"].values() for op in ops.values()]
    needs = {status for op in every for status in op["responses"]}
    if token is None:
        assert "security" not in doc and "securitySchemes" not in doc["components"] and "401" not in needs
        return
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert doc["security"] == [{"bearer": []}]
    unsecured = {
        path for path, ops in doc["paths"].items() for op in ops.values() if op.get("security") == []
    }
    probes = {"/v2/health/live", "/v2/health/ready"}
    assert unsecured == {"/", "/docs", "/openapi.json", "/static/{name}", *probes}


def test_refusals_share_the_error_schema_and_every_ref_resolves() -> None:
    doc = document(token=True)
    for ref in set(refs(doc)):
        node: Any = doc
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]  # a KeyError names a dangling reference
    responses = doc["components"]["responses"]
    assert set(responses) == {"400", "401", "404", "413", "415", "422", "503"}
    for answer in responses.values():
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "Retry-After" in responses["503"]["headers"]
    predict = doc["paths"]["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"image/*", "multipart/form-data"}
    assert [p["name"] for p in predict["parameters"]] == ["top", "model"]
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert {p["name"] for p in infer["parameters"]} == {"name", "Inference-Header-Content-Length"}


def test_the_schemas_are_json_schema_2020_12() -> None:
    for schema in document(token=True)["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_document_passes_openapi_spec_validator() -> None:
    validator.validate(document(token=True))
    validator.validate(document(token=False))


def test_real_answers_match_their_documented_schemas(served: Served, models: dict[str, Path]) -> None:
    doc = document(token=False)

    def check(answer: httpx.Response, path: str, method: str = "get") -> None:
        response = doc["paths"][path][method]["responses"][str(answer.status_code)]
        response = doc["components"]["responses"].get(response.get("$ref", "").rpartition("/")[2], response)
        schema = response["content"]["application/json"]["schema"]
        jsonschema.validate(answer.json(), {**schema, "components": doc["components"]})

    jpeg = next(models["cats"].iterdir()).read_bytes()
    with AppServer(create_app([served])) as live:
        url = live.url
        image = {"Content-Type": "image/jpeg"}
        check(httpx.post(f"{url}/v1/predict", content=jpeg, headers=image), "/v1/predict", "post")
        files = [("image", ("a.jpg", jpeg, "image/jpeg"))] * 2
        check(httpx.post(f"{url}/v1/predict", files=files), "/v1/predict", "post")
        check(httpx.post(f"{url}/v1/predict", content=b"x", headers=image), "/v1/predict", "post")  # 422
        check(httpx.get(f"{url}/v1/models"), "/v1/models")
        check(httpx.get(f"{url}/v2/models/first"), "/v2/models/{name}")
        check(httpx.get(f"{url}/v2/models/nope"), "/v2/models/{name}")  # 404
        check(httpx.get(f"{url}/v2"), "/v2")
        shape = [1, *served.model.preprocessing.size, served.model.preprocessing.channels]
        pixels = {"name": "pixels", "datatype": "UINT8", "shape": shape, "data": [0] * math.prod(shape)}
        infer = {"inputs": [pixels]}
        check(httpx.post(f"{url}/v2/models/first/infer", json=infer), "/v2/models/{name}/infer", "post")
