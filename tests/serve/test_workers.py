"""``pawlab serve --workers N``: N processes on one port, stopped together."""

from __future__ import annotations

import re
import shutil
import signal
import threading
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest

import pawlab.serve.workers as workers_module
from pawlab.serve.workers import auto_workers
from tests.serve.conftest import Server, wait_until
from tests.serve.test_follow import ask, predictions
from tests.test_cli import assert_one_line_error, pawlab


def workers(srv: Server) -> list[psutil.Process]:
    """The server's live worker processes (not multiprocessing's resource tracker)."""
    found = []
    for child in psutil.Process(srv.proc.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass  # it ended: a zombie until the server reaps it
    return found


def accepted(procs: list[psutil.Process], port: int) -> int:
    """Connections to ``port`` the workers have accepted."""
    return sum(
        1
        for p in procs
        for c in p.net_connections("tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
    )


def sample(url: str, name: str) -> float | None:
    """The value of one sample (``name{labels}``) in ``url``'s ``/metrics``; None if absent."""
    text = httpx.get(f"{url}/metrics").text
    found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name} ")]
    return found[0] if len(found) == 1 else None


def lines(srv: Server, n: int) -> list[str]:
    """The next ``n`` lines the server prints on stderr, as they come."""
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(srv.proc.stderr.readline() for _ in range(n)))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=60)
    assert len(said) == n, said
    return said


@pytest.mark.slow  # three processes, each importing torch
def test_workers_answer_as_one_server_and_one_that_dies_is_replaced(
    models: dict[str, Path], tmp_path: Path
) -> None:
    images = sorted(models["cats"].iterdir())[:2] + sorted(models["dogs"].iterdir())[:2]
    model = tmp_path / "first.safetensors"
    shutil.copy(models["first"], model)
    srv = Server(model, "--workers", 2, "--unknown-threshold", 0.5, quiet=False)
    try:
        # ready once one worker answers; started once the parent has heard from both
        assert srv.proc.stdout is not None and srv.proc.stdout.readline().startswith("serving first: ")
        first = sorted(workers(srv), key=lambda w: w.create_time())
        assert len(first) == 2 and first[0].pid != first[1].pid
        for image, expected in zip(images, predictions(models["first"], *images, threshold=0.5), strict=True):
            answer = ask(srv.url, image.read_bytes())
            assert answer.status_code == 200
            assert answer.json()["probability-map"] == pytest.approx(expected["probability-map"], abs=1e-6)
            assert answer.json()["typicality"] == pytest.approx(expected["typicality"], abs=1e-6)
            assert answer.json()["unknown"] == expected["unknown"]  # each worker's threshold is 0.5
        # each scrape reaches one worker (a new connection each), and each counts both
        assert [sample(srv.url, 'pawlab_serve_images_total{model="first"}') for _ in range(6)] == [4.0] * 6
        model.write_bytes(b"broken")  # a worker that dies now cannot be replaced
        first[1].kill()
        first[1].wait(timeout=30)
        said = lines(srv, 2)
        assert ask(srv.url, images[0].read_bytes()).status_code == 200  # worker 1 answers
        shutil.copy(models["first"], model)
        first[0].kill()
        first[0].wait(timeout=30)  # dead: it can no longer take the next connection off the socket
        answer = ask(srv.url, images[0].read_bytes())  # only worker 1's replacement can answer it
        assert answer.status_code == 200 and first[0] not in workers(srv)
    finally:
        status, err = srv.stop()
    assert status == 0, err
    assert said[0] == "pawlab serve: worker 2 ended unexpectedly (exit status -9); starting another\n"
    assert said[1].startswith(f"pawlab serve: warning: worker 2 could not start ({model}: not a readable")
    assert said[1].endswith("); not replaced\n")
    rest = err.splitlines()  # nothing else: no lock left behind by the killed workers
    assert len(rest) == 2
    assert rest[0] == "pawlab serve: worker 1 ended unexpectedly (exit status -9); starting another"
    # the killed workers' counts are lost with them
    assert re.fullmatch(r"pawlab serve: stopped: \d+ requests answered, 0 unanswered", rest[1])


@pytest.mark.slow  # three processes, each importing torch
def test_sigterm_reaches_every_worker_and_each_answers_what_it_accepted(models: dict[str, Path]) -> None:
    # a batch would wait 10 minutes for 64 images: only the stop runs these
    srv = Server(models["first"], "--workers", 2, "--max-batch", 64, "--max-wait-ms", 600_000, quiet=False)
    procs = workers(srv)
    body = next(models["cats"].iterdir()).read_bytes()
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(ask(srv.url, body))) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: accepted(procs, srv.port) == 6, "six requests accepted")
        queued = 'pawlab_serve_queue_images{model="model"}'
        wait_until(lambda: sample(srv.url, queued) == 6.0, "the six images queued, in both workers' metrics")
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
    finally:
        status, err = srv.stop()
    assert [a.status_code for a in answers] == [200] * 6
    assert status == 0
    assert re.fullmatch(r"pawlab serve: stopped: \d+ requests answered, 0 unanswered", err.splitlines()[-1])
    assert not any(p.is_running() for p in procs)


def test_a_missing_model_file_is_one_line_before_any_worker_starts(tmp_path: Path) -> None:
    proc = pawlab("serve", tmp_path / "none.safetensors", "--workers", "2", "--compile", "off")
    assert_one_line_error(proc, f"pawlab serve: error: {tmp_path / 'none.safetensors'}: no such model file")
    assert proc.returncode == 1


class _Ended:
    """A process handle and its pipe, as the supervisor reads them."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode, self.pid, self.sentinel = exitcode, None, None

    def poll(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_auto_is_one_worker_per_core_up_to_a_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 2)
    assert auto_workers("cpu") == 2
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 64)
    assert auto_workers("cpu") == workers_module.MAX_AUTO_WORKERS


def test_a_worker_that_dies_when_no_other_runs_is_still_replaced() -> None:
    # worker 2 gave up earlier; worker 1 dies: the server must start another, not end
    from pawlab.serve.workers import _Slot, _Workers

    workers = object.__new__(_Workers)
    workers.stopping, workers.answered, workers.unanswered = False, 0, 0
    workers.slots = [
        _Slot(1, _Ended(-9), _Ended(None), started=True),  # type: ignore[arg-type]
        _Slot(2, _Ended(1), _Ended(None), given_up=True),  # type: ignore[arg-type]
    ]
    spawned: list[_Slot] = []

    def spawn(number: int) -> _Slot:
        spawned.append(_Slot(number, _Ended(None), _Ended(None), started=True))  # type: ignore[arg-type]
        return spawned[-1]

    def then_sigterm() -> None:  # the replacement drains and ends
        workers.stopping = True
        spawned[-1].proc.exitcode = 0  # type: ignore[misc]

    workers._spawn = spawn  # type: ignore[method-assign]
    workers.wait = then_sigterm  # type: ignore[method-assign]
    workers.supervise()
    assert [s.number for s in spawned] == [1]
