"""`pawlab serve` answered over HTTP: as `pawlab predict --json` answers, in upload order,
hostile uploads refused with one line of JSON, the Host check, the token, back-pressure."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from pawlab.serve import Limits, Served, create_app
from pawlab.serve.batcher import Batcher
from pawlab.serve.models import Batching
from tests.dashboard.conftest import AppServer
from tests.serve.conftest import ROOT, Server, wait_until

MAX_BODY_MB = 0.25
FIELD_ONLY = b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--\r\n'


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[Server]:
    """Both models (``first`` answers by default), a body limit of 256 KiB."""
    srv = Server(f"first={models['first']}", f"second={models['second']}", "--max-body-mb", MAX_BODY_MB)
    yield srv
    srv.stop()


def digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def post(url: str, body: bytes, content_type: str = "image/jpeg", **params: object) -> httpx.Response:
    # a request may be held while a test sets up the next (a loaded machine: seconds)
    return httpx.post(
        f"{url}/v1/predict", content=body, headers={"Content-Type": content_type}, params=params, timeout=60
    )


def images(models: dict[str, Path]) -> list[Path]:
    return sorted(models["cats"].iterdir())[:2] + sorted(models["dogs"].iterdir())[:2]


def test_an_image_is_answered_as_pawlab_predict_prints_it(server: Server, models: dict[str, Path]) -> None:
    paths = images(models)
    options = ["--json", "--compile", "off", "--precision", "fp32"]
    cmd = [sys.executable, "-m", "pawlab", "predict", models["first"], *paths, *options]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    for path, line in zip(paths, out.splitlines(), strict=True):
        expected = {**json.loads(line), "image": None, "model": "first", "digest": digest(models["first"])}
        answer = post(server.url, path.read_bytes())
        assert answer.status_code == 200
        assert answer.json() == expected


def test_several_images_are_answered_in_upload_order(server: Server, models: dict[str, Path]) -> None:
    paths = images(models)[::-1]
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    answers = httpx.post(f"{server.url}/v1/predict", files=files).json()
    assert [a["image"] for a in answers] == [p.name for p in paths]
    for path, answer in zip(paths, answers, strict=True):
        alone = post(server.url, path.read_bytes()).json()
        assert answer["classification"] == alone["classification"]
        assert answer["probability-map"] == pytest.approx(alone["probability-map"], abs=1e-6)


def test_the_model_and_top_are_chosen_by_the_query(server: Server, models: dict[str, Path]) -> None:
    body = images(models)[0].read_bytes()
    answer = post(server.url, body, model="second", top=1).json()
    full = post(server.url, body, model="second").json()
    assert (answer["model"], answer["digest"]) == ("second", digest(models["second"]))
    assert answer["probability-map"] == {
        full["classification"]: full["probability-map"][full["classification"]]
    }
    assert (
        post(server.url, body, top=5).json()["probability-map"]
        == post(server.url, body).json()["probability-map"]
    )


def multipart(parts: int, body: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.jpg", body, "image/jpeg")) for i in range(parts)]


def test_hostile_uploads_are_refused_with_one_line_of_json(server: Server, models: dict[str, Path]) -> None:
    jpeg = images(models)[0].read_bytes()
    cases: list[tuple[int, str, httpx.Response]] = [
        (400, "empty body", post(server.url, b"")),
        (422, "the request body: not a readable image", post(server.url, b"GIF89a not really")),
        (422, "the request body:", post(server.url, jpeg[: len(jpeg) // 2])),
        (415, "Content-Type text/plain", post(server.url, jpeg, "text/plain")),
        (415, "Content-Type missing", httpx.post(f"{server.url}/v1/predict", content=jpeg)),
        (400, "multipart body", post(server.url, b"--x\r\nnonsense", "multipart/form-data; boundary=x")),
        (400, "no file in it", post(server.url, FIELD_ONLY, "multipart/form-data; boundary=x")),
        (400, "Too many files", httpx.post(f"{server.url}/v1/predict", files=multipart(65, b"x"))),
        (
            422,
            "0.jpg: not a readable image",
            httpx.post(f"{server.url}/v1/predict", files=multipart(2, b"x")),
        ),
        (404, "no model named 'nope'", post(server.url, jpeg, model="nope")),
        (400, "top='-1'", post(server.url, jpeg, top=-1)),
        (405, "Method Not Allowed", httpx.get(f"{server.url}/v1/predict")),
    ]
    for status, reason, answer in cases:
        assert answer.status_code == status, (reason, answer.text)
        assert list(answer.json()) == ["error"] and reason in answer.json()["error"], answer.text
        assert "\n" not in answer.text and "Traceback" not in answer.text


def test_a_body_over_the_limit_is_413(server: Server) -> None:
    big = b"\xff" * int(MAX_BODY_MB * 2**20 + 1)
    assert post(server.url, big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        yield from (big[i : i + 65536] for i in range(0, len(big), 65536))

    answer = httpx.post(f"{server.url}/v1/predict", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 413 and "over the server's limit" in answer.json()["error"]


def test_only_loopback_host_names_are_answered(server: Server, models: dict[str, Path]) -> None:
    jpeg = images(models)[0].read_bytes()
    evil = {"Content-Type": "image/jpeg", "Host": f"rebound.example:{server.port}"}
    assert httpx.post(f"{server.url}/v1/predict", content=jpeg, headers=evil).status_code == 400
    named = {"Content-Type": "image/jpeg", "Host": f"localhost:{server.port}"}
    assert httpx.post(f"{server.url}/v1/predict", content=jpeg, headers=named).status_code == 200


def test_the_token_is_needed_but_not_by_the_probes(models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  s3cret-token\n")
    srv = Server(models["first"], "--token-file", tmp_path / "token")
    try:
        jpeg = images(models)[0].read_bytes()
        assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200
        assert post(srv.url, jpeg).status_code == 401
        wrong = {"Content-Type": "image/jpeg", "Authorization": "Bearer s3cret"}
        assert httpx.post(f"{srv.url}/v1/predict", content=jpeg, headers=wrong).status_code == 401
        right = {"Content-Type": "image/jpeg", "Authorization": "Bearer s3cret-token"}
        assert httpx.post(f"{srv.url}/v1/predict", content=jpeg, headers=right).status_code == 200
    finally:
        assert srv.stop()[0] == 0


class Gate:
    """A model's run held until `open`: the engine thread stays busy for as long as a test
    needs, whatever the machine's speed."""

    def __init__(self, served: Served) -> None:
        self.run, self.entered, self.opened = served.version.run, threading.Event(), threading.Event()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.opened.wait(timeout=60)
        return self.run(images)


def gated(model: Path, limits: Limits, max_queue: int) -> tuple[AppServer, Gate, Batcher]:
    """The app in this process over ``model`` whose engine runs batches of one image through a
    `Gate`, with room for ``max_queue`` images waiting."""
    served = Served.load(
        "first", model, Batching(max_batch=1, max_wait_ms=0, max_queue=max_queue), compile="off"
    )
    served.batcher.stop()
    gate = Gate(served)
    served.batcher = Batcher(replace(served.version, run=gate), "first", 1, 0.0, max_queue)
    return AppServer(create_app([served], limits)), gate, served.batcher


def test_a_full_queue_is_503_with_retry_after(models: dict[str, Path]) -> None:
    live, gate, batcher = gated(models["first"], Limits(), max_queue=1)
    jpeg = images(models)[0].read_bytes()
    answers: list[httpx.Response | Exception] = []

    def send() -> None:
        try:
            answers.append(post(live.url, jpeg))
        except Exception as exc:  # noqa: BLE001  (shown by the assertion below, not lost in a thread)
            answers.append(exc)

    with live:
        sent = [threading.Thread(target=send) for _ in range(2)]
        sent[0].start()
        assert gate.entered.wait(timeout=30)  # the first is running, held
        sent[1].start()
        wait_until(lambda: batcher.queued == 1, "the second request queued")  # the queue is now full
        refused = post(live.url, jpeg)
        gate.opened.set()
        for t in sent:
            t.join()
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json() == {"error": "the server is busy: try again"}
    assert [getattr(a, "status_code", a) for a in answers] == [200, 200], answers
    batcher.stop()


def test_a_full_queue_refuses_before_decoding(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, gate, batcher = gated(models["first"], Limits(), max_queue=1)
    jpeg = images(models)[0].read_bytes()
    with live:
        held = threading.Thread(target=post, args=(live.url, jpeg))
        held.start()
        assert gate.entered.wait(timeout=30)
        batcher.reserve(1)  # a request decoding: the queue is full
        decoded: list[object] = []
        decode = Served.decode
        monkeypatch.setattr(Served, "decode", lambda self, *a: (decoded.append(a), decode(self, *a))[1])
        refused = post(live.url, jpeg)
        batcher.release(1)
        gate.opened.set()
        held.join()
    assert refused.status_code == 503 and decoded == []
    batcher.stop()


def test_a_request_past_its_deadline_is_503(models: dict[str, Path]) -> None:
    live, gate, batcher = gated(models["first"], Limits(deadline_ms=200), max_queue=4)
    with live:
        answer = post(live.url, images(models)[0].read_bytes())  # the engine is held past the deadline
        gate.opened.set()
    assert answer.status_code == 503
    assert answer.json() == {"error": "not answered within the deadline (200 ms)"}
    batcher.stop()


def test_no_cors_unless_an_origin_is_named(server: Server, models: dict[str, Path]) -> None:
    origin = {"Origin": "https://app.example"}
    assert (
        "access-control-allow-origin" not in httpx.get(f"{server.url}/v2/health/live", headers=origin).headers
    )
    served = Served.load("first", models["first"], Batching(), compile="off")
    with AppServer(create_app([served], cors_origin="https://app.example")) as live:
        named = httpx.get(f"{live.url}/v2/health/live", headers=origin)
        other = httpx.get(f"{live.url}/v2/health/live", headers={"Origin": "https://elsewhere.example"})
    served.batcher.stop()
    assert named.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_a_foreign_host_is_refused_with_one_line_of_json(server: Server) -> None:
    for host in [f"rebound.example:{server.port}", f"[::2]:{server.port}"]:
        answer = httpx.get(f"{server.url}/v2/health/live", headers={"Host": host})
        assert answer.status_code == 400
        assert answer.json() == {
            "error": f"Host {host!r}: this server answers only 127.0.0.1, localhost (against DNS rebinding)"
        }
    assert httpx.get(f"{server.url}/v2/health/live", headers={"Host": "LocalHost"}).status_code == 200


def test_a_multipart_body_cut_short_or_of_a_thousand_parts_is_refused(
    server: Server, models: dict[str, Path]
) -> None:
    jpeg = images(models)[0].read_bytes()
    whole = b'--x\r\nContent-Disposition: form-data; name="a"; filename="a.jpg"\r\n\r\n' + jpeg + b"\r\n"
    cut = whole + b'--x\r\nContent-Disposition: form-data; name="b"; filename="b.jpg"\r\n\r\n' + jpeg[:99]
    answer = post(server.url, cut, "multipart/form-data; boundary=x")
    assert answer.status_code == 400
    assert answer.json() == {"error": "multipart body: it ends before its closing boundary"}
    assert post(server.url, whole + b"--x--\r\n", "multipart/form-data; boundary=x").status_code == 200
    many = httpx.post(f"{server.url}/v1/predict", files=multipart(1000, b"x"))
    assert many.status_code == 400
    assert many.json() == {"error": "multipart body: Too many files (more than 64)"}
    bare = post(server.url, whole, "multipart/form-data")
    assert bare.json() == {"error": "multipart body: its Content-Type names no boundary"}


def test_a_multipart_body_is_parsed_off_the_event_loop(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pawlab.serve import uploads

    parsed_in: list[threading.Thread] = []
    parse = uploads.files

    def recording(*args: object) -> object:
        parsed_in.append(threading.current_thread())
        return parse(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(uploads, "files", recording)
    served = Served.load("first", models["first"], Batching(), compile="off", precision="fp32")
    with AppServer(create_app([served])) as live:
        answer = httpx.post(f"{live.url}/v1/predict", files=multipart(2, images(models)[0].read_bytes()))
    served.batcher.stop()
    assert answer.status_code == 200 and len(answer.json()) == 2
    assert len(parsed_in) == 1 and parsed_in[0] is not live.thread  # the loop runs in live.thread


def test_the_models_are_listed_with_what_they_ran(server: Server, models: dict[str, Path]) -> None:
    before = httpx.get(f"{server.url}/v1/models").json()
    assert [m["name"] for m in before["models"]] == ["first", "second"]
    for listed in before["models"]:
        pixels = httpx.get(f"{server.url}/v2/models/{listed['name']}").json()["inputs"][1]["shape"]
        assert listed["digest"] == digest(models[listed["name"]]) and listed["classes"] == ["cat", "dog"]
        assert [*listed["input"]["size"], listed["input"]["channels"]] == pixels[1:]
    jpeg = images(models)[0].read_bytes()
    assert httpx.post(f"{server.url}/v1/predict?model=second", files=multipart(3, jpeg)).status_code == 200
    assert post(server.url, b"", model="second").status_code == 400
    after = httpx.get(f"{server.url}/v1/models").json()
    (first, second), (first_then, second_then) = after["models"], before["models"]
    assert second["images"] == second_then["images"] + 3 and second["batches"] > second_then["batches"]
    assert first["images"] == first_then["images"] and second["queued"] == 0
    assert after["requests"]["200"] == before["requests"].get("200", 0) + 1
    assert after["requests"]["400"] == before["requests"].get("400", 0) + 1


def test_the_pages_answer_without_the_token_but_the_models_need_it(models: dict[str, Path]) -> None:
    served = Served.load("first", models["first"], Batching(), compile="off", precision="fp32")
    with AppServer(create_app([served], token="s3cret")) as live:
        pages = {p: httpx.get(f"{live.url}{p}") for p in ["/", "/docs", "/static/page.js", "/openapi.json"]}
        models_answer = httpx.get(f"{live.url}/v1/models")
        with_token = httpx.get(f"{live.url}/v1/models", headers={"Authorization": "Bearer s3cret"})
        unknown = httpx.get(f"{live.url}/static/nope", headers={"Authorization": "Bearer s3cret"})
    served.batcher.stop()
    assert {p: a.status_code for p, a in pages.items()} == dict.fromkeys(pages, 200)
    assert pages["/"].headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    assert '<script src="static/page.js"></script>' in pages["/"].text and "<script>" not in pages["/"].text
    assert models_answer.status_code == 401 and "token" in models_answer.json()["error"]
    assert with_token.status_code == 200 and with_token.json()["models"][0]["name"] == "first"
    assert unknown.status_code == 404 and unknown.json() == {"error": "no file /static/nope"}


def test_a_malformed_multipart_body_is_refused_with_its_reason(server: Server) -> None:
    part = b'Content-Disposition: form-data; name="a"; filename="a.jpg"\r\n\r\nb\r\n'
    cases = {
        b"--y\r\n"
        + part
        + b"--y--\r\n": "multipart body: malformed: Expected boundary character 120, got 121",
        b"--x\r\n" + part.replace(b'name="a"; ', b"") + b"--x--\r\n": (
            'multipart body: a part\'s Content-Disposition has no "name"'
        ),
    }
    for body, reason in cases.items():
        answer = post(server.url, body, "multipart/form-data; boundary=x")
        assert answer.status_code == 400 and answer.json()["error"].startswith(reason), answer.text
