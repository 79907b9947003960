"""The Open Inference Protocol, spoken to by Triton's own client (``tritonclient.http``)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from pawlab.serve import Limits, Served, create_app
from pawlab.serve.models import Batching
from tests.dashboard.conftest import AppServer
from tests.inference.test_unknowns import stripped


@pytest.fixture(scope="module")
def live(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AppServer, Served]]:
    """Both models served in this process, and ``old``: ``first`` as written before pawlab
    fitted an in-distribution model; ``first`` is returned with the server."""
    batching = Batching(max_batch=8, max_wait_ms=0)
    old = stripped(models["first"], tmp_path_factory.mktemp("old") / "old.safetensors")
    served = [
        Served.load(n, path, batching, compile="off", precision="fp32", unknown_threshold=0.3)
        for n, path in (("first", models["first"]), ("second", models["second"]), ("old", old))
    ]
    with AppServer(create_app(served, Limits())) as server:
        yield server, served[0]
    for s in served:
        s.batcher.stop()


@pytest.fixture(scope="module")
def client(live: tuple[AppServer, Served]) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{live[0].port}")


def jpegs(models: dict[str, Path]) -> list[bytes]:
    return [
        p.read_bytes() for p in [*sorted(models["cats"].iterdir())[:2], *sorted(models["dogs"].iterdir())[:1]]
    ]


def encoded(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def test_probes_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("first") and client.is_model_ready("second")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = client.get_model_metadata("first")
    assert meta["name"] == "first"
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 16, 16, 3]},
    ]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "classification", "datatype": "BYTES", "shape": [-1]},
        {"name": "typicality", "datatype": "FP32", "shape": [-1]},
        {"name": "unknown", "datatype": "BOOL", "shape": [-1]},
    ]
    assert [o["name"] for o in client.get_model_metadata("old")["outputs"]] == [
        "probabilities",
        "classification",
    ]
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.get_model_metadata("nope")


def test_encoded_images_in_binary_answer_as_v1_predict(
    client: triton.InferenceServerClient, live: tuple[AppServer, Served], models: dict[str, Path]
) -> None:
    server, _ = live
    images = jpegs(models)
    result = client.infer("second", [encoded(images)])  # tritonclient's default: binary both ways
    probs, classes = result.as_numpy("probabilities"), result.as_numpy("classification")
    assert probs.dtype == np.float32 and probs.shape == (3, 2) and classes.shape == (3,)
    for image, p, c in zip(images, probs, classes, strict=True):
        v1 = httpx.post(
            f"{server.url}/v1/predict",
            content=image,
            headers={"Content-Type": "image/jpeg"},
            params={"model": "second"},
        ).json()
        assert c.decode() == v1["classification"]
        assert p.tolist() == pytest.approx(list(v1["probability-map"].values()), abs=1e-6)


def test_typicality_and_unknown_as_v1_predict_says_them_in_binary_and_json(
    client: triton.InferenceServerClient, live: tuple[AppServer, Served], models: dict[str, Path]
) -> None:
    server, first = live
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    images = [*jpegs(models), buffer.getvalue()]
    result = client.infer("first", [encoded(images)])
    typical, refused = result.as_numpy("typicality"), result.as_numpy("unknown")
    assert typical.dtype == np.float32 and refused.dtype == np.bool_ and typical.shape == (4,)
    v1 = [
        httpx.post(f"{server.url}/v1/predict", content=i, headers={"Content-Type": "image/png"}).json()
        for i in images
    ]
    assert typical.tolist() == pytest.approx([a["typicality"] for a in v1], abs=1e-6)
    assert (
        refused.tolist() == [a["unknown"] for a in v1] == (typical < 0.3).tolist()
    )  # the server's threshold
    assert refused[-1]  # uniform noise is none of the classes
    asked = [triton.InferRequestedOutput(n, binary_data=False) for n in ("unknown", "typicality")]
    as_json = client.infer("first", [encoded(images)], outputs=asked).get_response()["outputs"]
    assert [o["name"] for o in as_json] == ["unknown", "typicality"]
    assert as_json[0]["data"] == refused.tolist()
    assert as_json[1]["data"] == pytest.approx(typical.tolist(), abs=1e-6)


def test_a_model_without_an_in_distribution_model_has_no_typicality_output(
    client: triton.InferenceServerClient, live: tuple[AppServer, Served], models: dict[str, Path]
) -> None:
    server, _ = live
    result = client.infer("old", [encoded(jpegs(models))]).get_response()
    assert [o["name"] for o in result["outputs"]] == ["probabilities", "classification"]
    asked = [triton.InferRequestedOutput("typicality")]
    with pytest.raises(
        InferenceServerException, match="no output named 'typicality': probabilities, classification"
    ):
        client.infer("old", [encoded(jpegs(models))], outputs=asked)


def test_json_requests_and_outputs(
    client: triton.InferenceServerClient, live: tuple[AppServer, Served], models: dict[str, Path]
) -> None:
    server, _ = live
    images = jpegs(models)
    asked = [triton.InferRequestedOutput("classification", binary_data=False)]
    binary = client.infer("first", [encoded(images)], outputs=asked, request_id="r1").get_response()
    assert binary["id"] == "r1"
    assert [o["name"] for o in binary["outputs"]] == ["classification"]
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [3],
                "datatype": "BYTES",
                "data": [base64.b64encode(i).decode() for i in images],
            }
        ]
    }
    answer = httpx.post(f"{server.url}/v2/models/first/infer", json=request).json()
    assert answer["model_name"] == "first"
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["classification"]["data"] == binary["outputs"][0]["data"]
    assert out["probabilities"]["shape"] == [3, 2] and len(out["probabilities"]["data"]) == 6


def test_pixels_in_binary_and_in_json(
    client: triton.InferenceServerClient, live: tuple[AppServer, Served]
) -> None:
    _, first = live
    arrays = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    expected = first.model.predict_proba(arrays)
    for binary in (True, False):
        tensor = triton.InferInput("pixels", list(arrays.shape), "UINT8")
        tensor.set_data_from_numpy(arrays, binary_data=binary)
        got = client.infer("first", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(got, expected, atol=1e-6)


def pixels(shape: list[int], **data: object) -> dict[str, object]:
    return {"inputs": [{"name": "pixels", "shape": shape, "datatype": "UINT8", **data}]}


def post(
    url: str, header: dict[str, object] | str, binary: bytes = b"", length: str | None = None
) -> httpx.Response:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    headers = {"Inference-Header-Content-Length": length or str(len(text))} if binary or length else {}
    return httpx.post(f"{url}/v2/models/first/infer", content=text + binary, headers=headers)


def test_bad_inference_requests_are_refused_with_one_line_of_json(
    client: triton.InferenceServerClient, live: tuple[AppServer, Served], models: dict[str, Path]
) -> None:
    url = live[0].url
    one = {"name": "image", "shape": [1], "datatype": "BYTES"}
    sized = {**one, "parameters": {"binary_data_size": 8}}
    cases = [
        (400, "not JSON", post(url, "{nope")),
        (400, 'no "inputs" list', post(url, {"outputs": []})),
        (400, "send one input", post(url, {"inputs": [one, one]})),
        (400, "no input named 'x'", post(url, {"inputs": [{**one, "name": "x", "data": []}]})),
        (400, "datatype must be BYTES", post(url, {"inputs": [{**one, "datatype": "FP32"}]})),
        (400, "shape must be 1 sizes", post(url, {"inputs": [{**one, "shape": [1, 2]}]})),
        (400, "base64 strings", post(url, {"inputs": [{**one, "data": ["not base64!"]}]})),
        (400, "0 images; send 1 to 64 a request", post(url, {"inputs": [{**one, "shape": [0], "data": []}]})),
        (400, "parameters must be an object", post(url, {"inputs": [{**one, "parameters": "x"}]})),
        (400, "shape [1] but 2 images", post(url, {"inputs": [{**one, "data": ["AA==", "AA=="]}]})),
        (400, "an element runs past the data", post(url, {"inputs": [sized]}, b"\xff\x00\x00\x00abcd")),
        (400, "binary_data_size 8: the body holds 3", post(url, {"inputs": [sized]}, b"abc")),
        (400, "is not a length within the body", post(url, {"inputs": []}, b"x", length="99999")),
        (
            400,
            "no output named 'logits'",
            post(url, {"inputs": [{**one, "data": ["AA=="]}], "outputs": [{"name": "logits"}]}),
        ),
        (422, "image[0]: not a readable image", post(url, {"inputs": [{**one, "data": ["AA=="]}]})),
        (
            400,
            "shape must be [N, 16, 16, 3]",
            post(url, pixels([1, 8, 8, 3])),
        ),
        (
            400,
            "but 2 values",
            post(url, pixels([1, 16, 16, 3], data=[1, 2])),
        ),
    ]
    for status, reason, answer in cases:
        assert answer.status_code == status, (reason, answer.text)
        assert list(answer.json()) == ["error"] and reason in answer.json()["error"], answer.text
        assert "\n" not in answer.text
    with pytest.raises(InferenceServerException, match=r"\[422\] image\[1\]: not a readable image"):
        client.infer("first", [encoded([jpegs(models)[0], b"GIF89a"])])
