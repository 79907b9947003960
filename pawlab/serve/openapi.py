"""``GET /openapi.json``: every route of the server as an OpenAPI 3.1 document, built as plain
data (`document`); ``GET /docs`` renders it (`pawlab.serve.page`).

Refusals share one schema, ``{"error": string}``; with a token, every operation but the probes,
the pages and this document needs ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pawlab._version import __version__
from pawlab.serve.protocol_v2 import HEADER_LENGTH

JSON = dict[str, Any]
DESCRIPTION = (
    "Trained pawlab models as a web service. Every refusal is one line of JSON, "
    '{"error": "..."}; with a token, every operation but the probes and the pages needs '
    "Authorization: Bearer TOKEN."
)
REF = "#/components/schemas/"
REFUSALS = {
    "400": "a bad request: its reason",
    "401": "no token, or the wrong one (only when the server has a token)",
    "404": "no model of that name",
    "413": "a body over the server's limit",
    "415": "a Content-Type other than image/* or multipart/form-data",
    "422": "an upload that is no readable image (named)",
    "503": "the queue is full (Retry-After says when to try again), the deadline passed, or stopping",
}
_STRING, _INTEGER, _NUMBER, _BOOLEAN = ({"type": t} for t in ("string", "integer", "number", "boolean"))
_BINARY = {"type": "string", "format": "binary"}
OCTETS = "application/octet-stream"


def _ref(name: str) -> JSON:
    return {"$ref": REF + name}


def _json(schema: JSON, description: str) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(required: list[str], **properties: JSON) -> JSON:
    return {"type": "object", "required": required, "properties": properties}


def _refusal(status: str) -> JSON:
    answer = _json(_ref("Error"), REFUSALS[status])
    if status == "503":
        answer["headers"] = {
            "Retry-After": {"description": "seconds, when the queue is full", "schema": _INTEGER}
        }
    if status == "401":
        answer["headers"] = {"WWW-Authenticate": {"schema": {"const": "Bearer"}}}
    return answer


def _operation(tag: str, summary: str, ok: JSON, refusals: str = "", **more: Any) -> JSON:
    """An operation answering ``ok`` (200), else the refusals named by status ("400 422")."""
    responses = {"200": ok} | {s: {"$ref": f"#/components/responses/{s}"} for s in refusals.split()}
    return {"tags": [tag], "summary": summary, **more, "responses": responses}


def _query(name: str, description: str, schema: JSON) -> JSON:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


MODEL_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "a model's name (GET /v1/models lists them)",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
}


def _schemas() -> JSON:
    """The components' schemas: the refusals', ``/v1``'s, then the Open Inference Protocol's."""
    return {
        "Error": {**_object(["error"], error=_STRING), "additionalProperties": False},
        "Prediction": _object(
            ["image", "probability-map", "classification", "typicality", "unknown", "model", "digest"],
            image={"type": ["string", "null"], "description": "the upload's file name; null for a bare body"},
            **{"probability-map": {"type": "object", "additionalProperties": _NUMBER}},
            classification=_STRING,
            typicality={
                "type": ["number", "null"],
                "description": "the share of the model's validation images less typical than this one "
                "(null: the model file has no in-distribution model)",
            },
            unknown={
                "type": ["boolean", "null"],
                "description": "typicality below the server's threshold (--unknown-threshold, default 0.05): "
                "the image is none of the model's classes",
            },
            model=_STRING,
            digest={**_STRING, "description": "BLAKE2b-128 of the model file that answered, in hex"},
        ),
        "Models": _object(
            ["models", "requests"],
            models={"type": "array", "items": _ref("Model")},
            requests={
                "type": "object",
                "additionalProperties": _INTEGER,
                "description": "requests to /v1/predict and v2 infer answered so far, by status",
            },
        ),
        "Model": _object(
            ["name", "digest", "classes", "input", "images", "batches", "queued"],
            name=_STRING,
            digest=_STRING,
            classes={"type": "array", "items": _STRING},
            input=_object(["size", "channels"], size={"type": "array", "items": _INTEGER}, channels=_INTEGER),
            images={**_INTEGER, "description": "images run so far"},
            batches={**_INTEGER, "description": "batches run so far"},
            queued={**_INTEGER, "description": "images waiting for a batch now"},
        ),
        **_v2_schemas(),
    }


def _v2_schemas() -> JSON:
    tensor = _object(
        ["name", "datatype", "shape"],
        name=_STRING,
        datatype={"enum": ["BYTES", "UINT8", "FP32", "BOOL"]},
        shape={"type": "array", "items": _INTEGER},
        parameters={"type": "object", "description": "binary_data_size: its bytes after the JSON"},
        data={"type": "array", "description": "the values, flat (base64 strings for BYTES)"},
    )
    return {
        "Tensor": tensor,
        "ServerMetadata": _object(
            ["name", "version", "extensions"],
            name=_STRING,
            version=_STRING,
            extensions={"type": "array", "items": _STRING},
        ),
        "ModelMetadata": _object(
            ["name", "versions", "platform", "inputs", "outputs"],
            name=_STRING,
            versions={"type": "array", "items": _STRING},
            platform=_STRING,
            inputs={"type": "array", "items": _ref("Tensor")},
            outputs={"type": "array", "items": _ref("Tensor")},
        ),
        "InferenceRequest": _object(
            ["inputs"],
            id=_STRING,
            parameters={"type": "object", "description": "binary_data_output: outputs in binary"},
            inputs={
                "type": "array",
                "items": _ref("Tensor"),
                "minItems": 1,
                "maxItems": 1,
                "description": "image BYTES [N] (encoded images) or pixels UINT8 [N, H, W, C]",
            },
            outputs={
                "type": "array",
                "items": _object(["name"], name=_STRING, parameters={"type": "object"}),
                "description": "probabilities, classification and, with an in-distribution model, "
                "typicality and unknown (default: all of them)",
            },
        ),
        "InferenceResponse": _object(
            ["model_name", "model_version", "outputs"],
            id=_STRING,
            model_name=_STRING,
            model_version=_STRING,
            outputs={"type": "array", "items": _ref("Tensor")},
        ),
    }


def _v1() -> JSON:
    image = {"schema": {"type": "string", "contentMediaType": "image/*"}}
    several = {"schema": {"type": "object", "additionalProperties": _BINARY}}
    predictions = {"oneOf": [_ref("Prediction"), {"type": "array", "items": _ref("Prediction")}]}
    predict = _operation(
        "predict",
        "Classify one image (its bytes) or several (multipart, answered in upload order)",
        _json(predictions, "one answer for an image/* body; a list, in upload order, for multipart"),
        "400 401 404 413 415 422 503",
        parameters=[
            _query("top", "keep the K most probable classes only", {"type": "integer", "minimum": 1}),
            _query("model", "the model's name (default: the first the server names)", _STRING),
        ],
        requestBody={"required": True, "content": {"image/*": image, "multipart/form-data": several}},
    )
    models = _operation(
        "predict",
        "The models, their classes and input, and what they ran",
        _json(_ref("Models"), "the models"),
        "401",
    )
    return {"/v1/predict": {"post": predict}, "/v1/models": {"get": models}}


def _infer(tag: str) -> JSON:
    binary = {
        "name": HEADER_LENGTH,
        "in": "header",
        "required": False,
        "description": "Triton's binary extension: the JSON header's length; the tensors follow it",
        "schema": _INTEGER,
    }
    answer = {
        "description": "probabilities FP32 [N, classes] and classification BYTES [N]",
        "content": {"application/json": {"schema": _ref("InferenceResponse")}, OCTETS: {"schema": _BINARY}},
        "headers": {HEADER_LENGTH: {"description": "with binary outputs", "schema": _INTEGER}},
    }
    body = {"application/json": {"schema": _ref("InferenceRequest")}, OCTETS: {"schema": _BINARY}}
    return _operation(
        tag,
        "Run images: input image BYTES [N] or pixels UINT8 [N, H, W, C]",
        answer,
        "400 401 404 413 422 503",
        parameters=[MODEL_NAME, binary],
        requestBody={"required": True, "content": body},
    )


def _v2() -> JSON:
    tag = "Open Inference Protocol (v2)"
    live = _json(_object(["live"], live=_BOOLEAN), "live")
    model = _json(_ref("ModelMetadata"), "the model")
    ready = _object(["name", "ready"], name=_STRING, ready=_BOOLEAN)
    return {
        "/v2/health/live": {"get": _open(_operation(tag, "Liveness probe", live))},
        "/v2/health/ready": {
            "get": _open(_readiness(tag, "Readiness probe", _object(["ready"], ready=_BOOLEAN)))
        },
        "/v2": {
            "get": _operation(
                tag, "The server's metadata", _json(_ref("ServerMetadata"), "the server"), "401"
            )
        },
        "/v2/models/{name}": {
            "get": _operation(
                tag, "A model's metadata: inputs and outputs", model, "401 404", parameters=[MODEL_NAME]
            )
        },
        "/v2/models/{name}/ready": {
            "get": _readiness(
                tag, "Whether a model takes requests", ready, "401 404", parameters=[MODEL_NAME]
            )
        },
        "/v2/models/{name}/infer": {"post": _infer(tag)},
    }


def _readiness(tag: str, summary: str, schema: JSON, refusals: str = "", **more: Any) -> JSON:
    operation = _operation(tag, summary, _json(schema, "ready"), refusals, **more)
    operation["responses"]["503"] = _json(schema, "not ready: the server is stopping")
    return operation


def _open(operation: JSON) -> JSON:
    """``operation``, answered without the token."""
    return {**operation, "security": []}


def _file(media: str, summary: str, refusals: str = "", **more: Any) -> JSON:
    content = {"description": summary, "content": {media: {"schema": _STRING}}}
    return _open(_operation("pages", summary, content, refusals, **more))


def _pages() -> JSON:
    assets = {"name": "name", "in": "path", "required": True, "schema": _STRING}
    text = "text/plain; version=0.0.4"
    return {
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus text: requests, latency, batches, images, queue",
                {"description": "the metrics", "content": {text: {"schema": _STRING}}},
                "401",
            )
        },
        "/": {"get": _file("text/html", "The page: drop, pick or paste images and see their classes")},
        "/docs": {"get": _file("text/html", "This document, rendered")},
        "/openapi.json": {
            "get": _open(
                _operation("pages", "This document (OpenAPI 3.1)", _json({"type": "object"}, "the document"))
            )
        },
        "/static/{name}": {
            "get": _file("*/*", "The pages' script, style and icon", "404", parameters=[assets])
        },
    }


def document(token: bool) -> JSON:
    """The OpenAPI 3.1 document of every route; ``token``: whether the server needs one."""
    doc: JSON = {
        "openapi": "3.1.0",
        "info": {"title": "pawlab serve", "version": __version__, "description": DESCRIPTION},
        "tags": [{"name": t} for t in ("predict", "Open Inference Protocol (v2)", "metrics", "pages")],
        "paths": _v1() | _v2() | _pages(),
        "components": {
            "schemas": _schemas(),
            "responses": {status: _refusal(status) for status in REFUSALS},
        },
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    else:
        del doc["components"]["responses"]["401"]
        for operations in doc["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
                operation["responses"].pop("401", None)
    return doc


def routes(token: bool) -> list[BaseRoute]:
    body = document(token)

    async def openapi(request: Request) -> Response:
        return JSONResponse(body)

    return [Route("/openapi.json", openapi)]
