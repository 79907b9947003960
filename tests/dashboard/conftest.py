"""A real run directory (a short training) and a live dashboard server over it."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from pawlab.config import RuntimeConfig, TrainConfig
from tests.conftest import TINY, write_tree


def train_run(root: Path, name: str = "tiny", epochs: int = 3, seed: int = 0) -> Path:
    """A finished run directory ``root/runs/<name>`` from a real (tiny) training."""
    from pawlab.training import train

    src = root / "src"
    if not src.is_dir():
        write_tree(src, {"cat": 20, "dog": 20})
    run = root / "runs" / name
    train(
        src,
        root / f"{name}.safetensors",
        TINY,
        TrainConfig(epochs=epochs, lr=3e-3, batch_size=8, seed=seed),
        workers=1,
        run_dir=run,
        stream=io.StringIO(),
        runtime=RuntimeConfig(progress=False),
    )
    return run


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``runs/`` holding two finished runs of 3 and 2 epochs."""
    root = tmp_path_factory.mktemp("dash")
    train_run(root, "first", epochs=3)
    train_run(root, "second", epochs=2, seed=1)
    return root / "runs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AppServer:
    """uvicorn serving an ASGI ``app`` in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class LiveServer(AppServer):
    """The dashboard app over ``roots``, served in a thread."""

    def __init__(self, roots: list[Path]) -> None:
        from pawlab.dashboard import create_app

        super().__init__(create_app(roots, closing=lambda: self.server.should_exit))


@pytest.fixture
def live(runs_root: Path) -> Iterator[LiveServer]:
    with LiveServer([runs_root]) as server:
        yield server
