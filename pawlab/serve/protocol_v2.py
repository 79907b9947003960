"""The Open Inference Protocol (KServe v2; Triton's HTTP/REST API), so that its clients
(``tritonclient.http``, KServe, model meshes) talk to pawlab without an adapter.

    GET  /v2/health/live, /v2/health/ready      the probes (no token needed)
    GET  /v2                                    the server's metadata
    GET  /v2/models/{name}, .../ready           a model's metadata (inputs, outputs), readiness
    POST /v2/models/{name}/infer                one input of N images:
            image   BYTES [N]            encoded images (base64 strings in JSON)
            pixels  UINT8 [N, H, W, C]   at the model's input size
         -> probabilities FP32 [N, classes], classification BYTES [N]; with the model's
            in-distribution model, typicality FP32 [N] and unknown BOOL [N] (none of its classes)

Tensors travel in JSON or in Triton's binary extension: the body is the JSON header (its
length in ``Inference-Header-Content-Length``) followed by each tensor whose parameters give
a ``binary_data_size``; a BYTES element is its 4-byte little-endian length, then its bytes.
Outputs come back in binary when the request asks (``binary_data_output``, or an output's
``binary_data``), as ``tritonclient`` does by default.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pawlab._version import __version__
from pawlab.serve.models import Served, Version
from pawlab.serve.service import Refused, Service, read_body

IMAGE, PIXELS = "image", "pixels"
PROBABILITIES, CLASSIFICATION = "probabilities", "classification"
TYPICALITY, UNKNOWN = "typicality", "unknown"
HEADER_LENGTH = "Inference-Header-Content-Length"
_MAX_HEADER = 1 << 20  # bytes of JSON before the binary tensors


def _parameters(part: dict[str, Any]) -> dict[str, Any]:
    """A request's, an input's or an output's ``parameters`` ({} when it has none)."""
    found = part.get("parameters", {})
    if not isinstance(found, dict):
        raise Refused(400, f"parameters must be an object, got {json.dumps(found)[:40]}")
    return found


def metadata(served: Served) -> dict[str, Any]:
    pre = served.model.preprocessing
    return {
        "name": served.name,
        "versions": [served.digest],  # a version is a model file, known by its digest
        "platform": "pawlab",
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS, "datatype": "UINT8", "shape": [-1, *pre.size, pre.channels]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(served.model.classes)]},
            {"name": CLASSIFICATION, "datatype": "BYTES", "shape": [-1]},
            *(
                [
                    {"name": TYPICALITY, "datatype": "FP32", "shape": [-1]},
                    {"name": UNKNOWN, "datatype": "BOOL", "shape": [-1]},
                ]
                if served.model.unknown is not None
                else []
            ),
        ],
    }


def output_names(served: Served) -> list[str]:
    """The outputs a model gives: typicality and unknown only with an in-distribution model."""
    return [o["name"] for o in metadata(served)["outputs"]]


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON header and the binary tensors after it."""
    if header_length is None:
        size = len(body)
    elif header_length.isdigit() and len(header_length) <= 9 and int(header_length) <= len(body):
        size = int(header_length)
    else:
        raise Refused(400, f"{HEADER_LENGTH}: {header_length!r} is not a length within the body")
    if size > _MAX_HEADER:
        raise Refused(413, f"the JSON header is over {_MAX_HEADER} bytes")
    try:
        header = json.loads(body[:size])
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise Refused(400, f"the inference request is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise Refused(400, 'the inference request has no "inputs" list')
    return header, body[size:]


def _input(header: dict[str, Any], binary: bytes) -> tuple[dict[str, Any], bytes | None]:
    """The request's one input tensor and its binary data (None: its data is in the JSON)."""
    inputs = header["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise Refused(400, f"send one input, {IMAGE} (BYTES [N]) or {PIXELS} (UINT8 [N, H, W, C])")
    tensor = inputs[0]
    size = _parameters(tensor).get("binary_data_size")
    if size is None:
        return tensor, None
    if not isinstance(size, int) or size != len(binary):
        raise Refused(400, f"binary_data_size {size!r}: the body holds {len(binary)} bytes of tensors")
    return tensor, binary


def _shape(tensor: dict[str, Any], datatype: str, dims: int) -> list[int]:
    shape = tensor.get("shape")
    if tensor.get("datatype") != datatype:
        raise Refused(400, f"input {tensor.get('name')!r}: datatype must be {datatype}")
    if not (isinstance(shape, list) and len(shape) == dims and all(type(d) is int and d >= 0 for d in shape)):
        raise Refused(400, f"input {tensor.get('name')!r}: shape must be {dims} sizes, got {shape!r}")
    return shape


def _elements(binary: bytes) -> list[bytes]:
    """A BYTES tensor's elements: each a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(binary):
        if at + 4 > len(binary):
            raise Refused(400, "BYTES tensor: a truncated element length")
        (n,) = struct.unpack_from("<I", binary, at)
        if at + 4 + n > len(binary):
            raise Refused(400, "BYTES tensor: an element runs past the data")
        out.append(binary[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def _encoded_images(tensor: dict[str, Any], binary: bytes | None, max_parts: int) -> list[bytes]:
    (n,) = _shape(tensor, "BYTES", 1)
    if not 0 < n <= max_parts:
        raise Refused(400, f"input {IMAGE}: {n} images; send 1 to {max_parts} a request")
    if binary is not None:
        found = _elements(binary)
    else:
        data = tensor.get("data")
        if not (isinstance(data, list) and all(isinstance(d, str) for d in data)):
            raise Refused(400, f"input {IMAGE}: data must be a list of base64 strings")
        try:
            found = [base64.b64decode(d, validate=True) for d in data]
        except binascii.Error:
            raise Refused(400, f"input {IMAGE}: data must be a list of base64 strings") from None
    if len(found) != n:
        raise Refused(400, f"input {IMAGE}: shape [{n}] but {len(found)} images")
    return found


def _pixels(tensor: dict[str, Any], binary: bytes | None, served: Served) -> np.ndarray:
    pre = served.model.preprocessing
    shape = _shape(tensor, "UINT8", 4)
    if shape[1:] != [*pre.size, pre.channels] or shape[0] < 1:
        raise Refused(
            400, f"input {PIXELS}: shape must be [N, {', '.join(map(str, [*pre.size, pre.channels]))}]"
        )
    if binary is not None:
        flat = np.frombuffer(binary, np.uint8)
    else:
        data = tensor.get("data")
        ok = isinstance(data, list) and all(type(v) is int and 0 <= v <= 255 for v in data)
        flat = np.asarray(data if ok else [], np.uint8)
    if flat.size != np.prod(shape):
        raise Refused(400, f"input {PIXELS}: shape {shape} but {flat.size} values of 0-255")
    return flat.reshape(shape)


def _wanted(header: dict[str, Any], given: list[str]) -> list[tuple[str, bool]]:
    """The outputs asked for (every one ``given`` when none is named), each with whether it
    goes in binary."""
    everything = bool(_parameters(header).get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:
        return [(name, everything) for name in given]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise Refused(400, 'the inference request\'s "outputs" is not a list of objects')
    names = [o.get("name") for o in asked]
    foreign = [n for n in names if n not in given]
    if foreign:
        raise Refused(400, f"no output named {foreign[0]!r}: {', '.join(given)}")
    binary = [bool(_parameters(o).get("binary_data", everything)) for o in asked]
    return list(zip(names, binary, strict=True))


def _response(
    served: Served, header: dict[str, Any], wanted: list[tuple[str, bool]], scored: np.ndarray, ran: Version
) -> Response:
    probs = np.ascontiguousarray(scored[:, :-1])  # the engine's rows: probabilities, then typicality
    typical = np.ascontiguousarray(scored[:, -1])  # NaN: the version that ran has no in-distribution model
    refused = typical < ran.model.unknown_threshold
    classes = [served.model.classes[i] for i in probs.argmax(1)]
    tensors: dict[str, tuple[str, list[int], Any, bytes]] = {
        PROBABILITIES: ("FP32", list(probs.shape), probs.ravel().tolist(), probs.astype("<f4").tobytes()),
        CLASSIFICATION: (
            "BYTES",
            [len(classes)],
            classes,
            b"".join(struct.pack("<I", len(c.encode())) + c.encode() for c in classes),
        ),
        TYPICALITY: (
            "FP32",
            [len(typical)],
            [None if np.isnan(v) else v for v in typical.tolist()],
            typical.astype("<f4").tobytes(),
        ),
        UNKNOWN: ("BOOL", [len(refused)], refused.tolist(), refused.astype(np.uint8).tobytes()),
    }
    outputs, blobs = [], []
    for name, binary in wanted:
        datatype, shape, data, raw = tensors[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = data
        outputs.append(out)
    answer: dict[str, Any] = {"model_name": served.name, "model_version": ran.digest, "outputs": outputs}
    if "id" in header:
        answer["id"] = header["id"]
    text = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    headers = {HEADER_LENGTH: str(len(text))}
    return Response(b"".join([text, *blobs]), media_type="application/octet-stream", headers=headers)


async def _infer(request: Request, service: Service, served: Served) -> Response:
    body = await read_body(request, service.limits.max_body)
    header, binary = _split(body, request.headers.get(HEADER_LENGTH))
    tensor, data = _input(header, binary)
    wanted = _wanted(header, output_names(served))
    if tensor.get("name") == IMAGE:
        images = _encoded_images(tensor, data, service.limits.max_parts)
        probs, ran = await service.predict(served, [(f"{IMAGE}[{i}]", b) for i, b in enumerate(images)])
    elif tensor.get("name") == PIXELS:
        probs, ran = await service.run(served, _pixels(tensor, data, served))
    else:
        raise Refused(400, f"no input named {tensor.get('name')!r}: {IMAGE} or {PIXELS}")
    return _response(served, header, wanted, probs, ran)


def routes(service: Service) -> list[BaseRoute]:
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        up = service.ready()
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    async def server(request: Request) -> Response:
        return JSONResponse({"name": "pawlab", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model(request: Request) -> Response:
        return JSONResponse(metadata(service.model(request.path_params["name"])))

    async def model_ready(request: Request) -> Response:
        service.model(request.path_params["name"])
        up = service.ready()
        return JSONResponse(
            {"name": request.path_params["name"], "ready": up}, status_code=200 if up else 503
        )

    async def infer(request: Request) -> Response:
        served = service.model(request.path_params["name"])
        return await service.in_time(_infer(request, service, served))

    return [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server),
        Route("/v2/models/{name}", model),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ]
