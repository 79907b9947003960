"""What the endpoints share: decoding and stacking off the event loop, the request's deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pawlab.serve.batcher import Ran
from pawlab.serve.models import Version
from pawlab.serve.service import Limits, Service

VERSION = Version(model=None, digest="d", path=Path("m.safetensors"), run=lambda images: images)  # type: ignore[arg-type]


class Recording:
    """A model whose uploads take ``decoding`` seconds each to decode, and whose engine
    answers at once, recording each request's deadline."""

    def __init__(self, decoding: float = 0.0) -> None:
        self.name, self.batcher, self.decoding = "m", self, decoding
        self.deadlines: list[float] = []

    def decode(self, data: bytes, filename: str | None) -> np.ndarray:
        time.sleep(self.decoding)
        return np.zeros((2, 2, 1), np.uint8)

    def reserve(self, n: int) -> None:
        pass

    def release(self, n: int) -> None:
        pass

    def submit(self, images: np.ndarray, deadline: float, reserved: bool = False) -> Future[Ran]:
        self.deadlines.append(deadline)
        done: Future[Ran] = Future()
        done.set_result((np.zeros((len(images), 1), np.float32), VERSION))
        return done


def predict(served: Recording, limits: Limits, uploads: int) -> Any:
    service = Service([served], limits, lambda: True)  # type: ignore[list-item]
    work = service.predict(served, [(None, b"x")] * uploads)  # type: ignore[arg-type]
    return asyncio.run(service.in_time(work))


def test_the_event_loop_never_touches_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    stacked_in: list[str] = []
    stack = np.stack

    def recording(arrays: Any, *args: Any, **kwargs: Any) -> Any:
        stacked_in.append(threading.current_thread().name)
        return stack(arrays, *args, **kwargs)

    monkeypatch.setattr(np, "stack", recording)
    probs, ran = predict(Recording(), Limits(), uploads=3)
    assert probs.shape == (3, 1) and ran is VERSION
    assert stacked_in and all(name.startswith("pawlab-decode") for name in stacked_in)


def test_the_engine_s_deadline_counts_from_the_request_s_arrival() -> None:
    served = Recording(decoding=2.0)
    arrived = time.monotonic()
    predict(served, Limits(deadline_ms=10_000), uploads=1)
    # not from when its images were decoded, two seconds later (a second of slack for a slow machine)
    assert served.deadlines[0] < arrived + 11.0
