"""`pawlab serve` as a process: refusals at start, SIGTERM with requests in flight."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pawlab as pawlab_api
from pawlab.cli import main
from pawlab.errors import ConfigError
from tests.serve.conftest import Server, wait_until
from tests.test_cli import assert_one_line_error, pawlab


def test_beyond_loopback_it_needs_a_token(models: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(
        pawlab("serve", models["first"], "--host", "0.0.0.0"),
        "pawlab serve: error: --host 0.0.0.0 (every interface): beyond this machine requests need a token",
        "--token-file FILE",
    )
    (tmp_path / "blank").write_text(" \n")
    for path, reason in [(tmp_path / "absent", "No such file or directory"), (tmp_path / "blank", "empty")]:
        proc = pawlab("serve", models["first"], "--host", "0.0.0.0", "--token-file", path)
        assert_one_line_error(proc, f"--token-file {path}: {reason}")
        assert proc.returncode == 2


def test_no_auth_warns_and_pawlab_serve_refuses_as_the_command_does(
    models: dict[str, Path], tmp_path: Path
) -> None:
    proc = pawlab(
        "serve", tmp_path / "none.safetensors", "--host", "0.0.0.0", "--no-auth", "--compile", "off"
    )
    warning, failure = proc.stderr.splitlines()
    assert warning == "pawlab serve: warning: --no-auth: anyone who can reach 0.0.0.0 may use it"
    assert failure.startswith("pawlab serve: error: ") and proc.returncode == 1
    with pytest.raises(ConfigError, match="--host 0.0.0.0 .every interface.: beyond this machine"):
        pawlab_api.serve([models["first"]], host="0.0.0.0")


def test_a_missing_model_file_is_one_line(tmp_path: Path) -> None:
    proc = pawlab("serve", tmp_path / "none.safetensors", "--compile", "off")
    assert_one_line_error(proc, "none.safetensors")
    assert proc.returncode == 1


def queued(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "pawlab_serve_queue_images")
    return sum(s.value for s in family.samples)


def test_sigterm_answers_every_accepted_request_then_exits_0(models: dict[str, Path]) -> None:
    # a batch would wait 10 minutes for 64 images: only the stop runs these four
    srv = Server(models["first"], "--max-batch", 64, "--max-wait-ms", 600_000)
    body = next(models["cats"].iterdir()).read_bytes()
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(
            httpx.post(
                f"{srv.url}/v1/predict", content=body, headers={"Content-Type": "image/jpeg"}, timeout=60
            )
        )

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: queued(srv.url) == 4, "four images queued")  # accepted, waiting for a batch
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    status, err = srv.stop()
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.json()["classification"] for a in answers} <= {"cat", "dog"}
    assert (status, err) == (0, "")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-wait-ms", "-1", "argument --max-wait-ms: must be a finite number >= 0, got -1"),
        ("--deadline-ms", "nan", "argument --deadline-ms: must be a finite number > 0, got nan"),
        ("--max-body-mb", "0", "argument --max-body-mb: must be a finite number > 0, got 0"),
        ("--unknown-threshold", "2", "argument --unknown-threshold: a typicality between 0 and 1, got 2"),
    ],
)
def test_limits_out_of_range_are_usage_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "m.safetensors", flag, value])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"pawlab serve: error: {message} (see pawlab serve --help)\n"
