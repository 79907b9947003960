"""`pawlab serve RUN_DIR`: the run's new model file answers from the next batch on."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from pawlab.serve.models import file_digest
from tests.dashboard.conftest import free_port
from tests.serve.conftest import ROOT, Server, wait_until


def run_dir(root: Path, model: Path) -> Path:
    """A training run's directory as far as the server looks: its model.safetensors."""
    run = root / "run"
    run.mkdir()
    shutil.copy(model, run / "model.safetensors")
    return run


def write_as_training_does(path: Path, data: bytes) -> None:
    """Write a temporary file beside ``path``, then rename it over ``path``."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def predicted(model: Path, *images: Path) -> list[dict[str, float]]:
    """``pawlab predict --json``'s probability map for each image."""
    return [answer["probability-map"] for answer in predictions(model, *images)]


def predictions(model: Path, *images: Path, threshold: float = 0.05) -> list[dict[str, Any]]:
    """``pawlab predict --json --unknown-threshold T``'s object for each image."""
    cmd = [sys.executable, "-m", "pawlab", "predict", model, *images, "--json"]
    cmd += ["--compile", "off", "--precision", "fp32", "--unknown-threshold", str(threshold)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return [json.loads(line) for line in out.splitlines()]


def ask(url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", content=body, headers={"Content-Type": "image/jpeg"}, timeout=60)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_a_run_s_new_model_answers_from_the_next_batch(models: dict[str, Path], tmp_path: Path) -> None:
    image = sorted(models["cats"].iterdir())[0]
    body = image.read_bytes()
    by_digest = {file_digest(models[n]): predicted(models[n], image)[0] for n in ("first", "second")}
    second = file_digest(models["second"])
    run = run_dir(tmp_path, models["first"])
    srv = Server(run, quiet=False)
    answers: list[tuple[int, dict[str, Any]]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            answer = ask(srv.url, body)
            answers.append((answer.status_code, answer.json()))

    client = threading.Thread(target=keep_asking)
    client.start()
    try:
        wait_until(lambda: len(answers) >= 3, "answered by the first model")
        write_as_training_does(run / "model.safetensors", models["second"].read_bytes())
        wait_until(lambda: answers[-1][1].get("digest") == second, "answered by the second model")
        seen = len(answers)
        wait_until(lambda: len(answers) >= seen + 3, "answered again")
    finally:
        stop.set()
        client.join(timeout=60)
        status, err = srv.stop()
    assert [code for code, _ in answers] == [200] * len(answers)
    digests = [a["digest"] for _, a in answers]
    assert digests[0] == file_digest(models["first"]) and digests[-1] == second
    assert digests == sorted(digests, key=lambda d: d == second)  # once swapped, never back
    for _, answer in answers:
        assert answer["model"] == "run"
        assert answer["probability-map"] == pytest.approx(by_digest[answer["digest"]], abs=1e-6)
    assert status == 0
    swapped = f"pawlab serve: run: now answering with {run / 'model.safetensors'} (digest {second[:8]}...)"
    assert err.splitlines()[0] == swapped


def test_a_broken_model_file_is_refused_and_the_old_one_answers(
    models: dict[str, Path], tmp_path: Path
) -> None:
    body = sorted(models["dogs"].iterdir())[0].read_bytes()
    first, second = file_digest(models["first"]), file_digest(models["second"])
    run = run_dir(tmp_path, models["first"])
    model = run / "model.safetensors"
    srv = Server(f"pets={run}")
    try:
        warned: list[str] = []
        reader = threading.Thread(target=lambda: warned.append(srv.proc.stderr.readline()))  # type: ignore[union-attr]
        reader.start()
        write_as_training_does(model, b"not a model file")
        reader.join(timeout=60)
        assert warned and warned[0].startswith(f"pawlab serve: warning: pets: {model}: ")
        assert warned[0].endswith(f"; still answering with digest {first[:8]}...\n")
        answer = ask(srv.url, body)
        assert (answer.status_code, answer.json()["digest"]) == (200, first)
        write_as_training_does(model, models["second"].read_bytes())  # the watching goes on
        wait_until(lambda: ask(srv.url, body).json()["digest"] == second, "answered by the second model")
        image = {
            "name": "image",
            "datatype": "BYTES",
            "shape": [1],
            "data": [base64.b64encode(body).decode()],
        }
        v2 = httpx.post(f"{srv.url}/v2/models/pets/infer", json={"inputs": [image]}).json()
    finally:
        status, err = srv.stop()
    assert v2["model_version"] == second
    assert status == 0 and err == ""  # -q: no line for the swap


def test_a_run_without_a_model_yet_is_waited_for(models: dict[str, Path], tmp_path: Path) -> None:
    run, best = tmp_path / "run", tmp_path / "best.safetensors"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(best)}))  # as training writes it
    port = free_port()
    cmd = [sys.executable, "-m", "pawlab", "serve", run, "--port", str(port), "--compile", "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert proc.stderr.readline() == f"pawlab serve: run: waiting for the run to write {best}\n"
        shutil.copy(models["first"], tmp_path / "written")
        (tmp_path / "written").rename(best)  # whole, as training writes it
        url = f"http://127.0.0.1:{port}"
        assert proc.stdout.readline() == f"serving run: {url}/v1/predict\n"
        wait_until(lambda: ready(url), "listening")
        answer = ask(url, sorted(models["cats"].iterdir())[0].read_bytes())
        assert answer.json()["digest"] == file_digest(models["first"])
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert re.fullmatch(r"pawlab serve: stopped: \d+ requests answered, 0 unanswered\n", err)


def test_sigterm_while_waiting_for_a_run_s_model_ends_it_with_status_0(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pawlab", "serve", tmp_path, "--port", str(free_port()), "--compile", "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    waiting = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert (
        waiting
        == f"pawlab serve: {tmp_path.name}: waiting for the run to write {tmp_path / 'model.safetensors'}\n"
    )
    assert (proc.returncode, out, err) == (
        0,
        "",
        "pawlab serve: stopped: 0 requests answered, 0 unanswered\n",
    )
