"""Two tiny trained models, their images, and `pawlab serve` as a real process on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest

from pawlab.config import TrainConfig
from tests.conftest import train_tiny
from tests.dashboard.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``first`` and ``second``: `TINY` trained for an epoch with two seeds; ``cats`` and
    ``dogs``: their image folders."""
    root = tmp_path_factory.mktemp("serve")
    src, first = train_tiny(root / "first", 8, TrainConfig(epochs=1, batch_size=8))
    _, second = train_tiny(root / "second", 8, TrainConfig(epochs=1, batch_size=8, seed=1))
    return {"first": first, "second": second, "cats": src / "cat", "dogs": src / "dog"}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds; fail after a minute (something is broken)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after 60 s"
        time.sleep(0.02)


class Server:
    """``python -m pawlab serve ARGS --port P --compile off --precision fp32 -q`` (the same
    answers on any CPU; ``-q`` unless not ``quiet``; one process unless ARGS name
    ``--workers``) until `stop`; `url` once ``/v2/health/ready`` answers 200."""

    def __init__(self, *args: object, quiet: bool = True) -> None:
        for _ in range(3):  # the free port may be taken by another socket before the server binds it
            if self._start(args, quiet):
                return
        raise RuntimeError("pawlab serve found each free port taken")

    def _start(self, args: tuple[object, ...], quiet: bool) -> bool:
        """Started, and ready; False where its port was taken meanwhile."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "pawlab", "serve", *map(str, args), "--port", str(self.port)]
        cmd += [] if "--workers" in args else ["--workers", "1"]
        self.proc = subprocess.Popen(
            [*cmd, "--compile", "off", "--precision", "fp32", *(["-q"] if quiet else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                status, err = self.stop()
                if "address already in use" in err.lower():
                    return False
                raise RuntimeError(f"pawlab serve did not start (exit status {status}): {err}")
            time.sleep(0.1)
        return True

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then (exit status, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err
