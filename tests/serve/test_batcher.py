"""A model's engine thread: batches gathered in order, a bounded queue, deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from pawlab.serve.batcher import Batcher, Expired, QueueFull

LATER = time.monotonic() + 3600


@dataclass(frozen=True)
class Engine:
    run: Callable[[np.ndarray], np.ndarray]


class Held:
    """A run that gives each image its first pixel as its one 'probability', recording the
    batch sizes; the first batch is held until `opened` is set."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.entered, self.opened = threading.Event(), threading.Event()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.opened.wait(timeout=30)
        self.sizes.append(len(images))
        return images.reshape(len(images), -1)[:, :1].astype(np.float32)


def jobs(n: int, value: int) -> np.ndarray:
    return np.full((n, 2, 2, 1), value, np.uint8)


def test_waiting_requests_are_gathered_in_order_up_to_max_batch() -> None:
    run = Held()
    batcher = Batcher(Engine(run), "m", max_batch=4, max_wait=0, max_queue=16)
    first = batcher.submit(jobs(1, 1), LATER)
    assert run.entered.wait(timeout=30)
    waiting = [batcher.submit(jobs(n, v), LATER) for n, v in [(1, 2), (2, 3), (2, 4)]]
    assert batcher.queued == 5
    run.opened.set()
    batcher.stop()
    assert run.sizes == [1, 3, 2]  # the third waiting request did not fit the second batch
    assert first.result()[0].tolist() == [[1]]
    assert [f.result()[0].ravel().tolist() for f in waiting] == [[2], [3, 3], [4, 4]]


def test_a_batch_waits_for_more_requests_until_draining() -> None:
    run = Held()
    run.opened.set()
    batcher = Batcher(Engine(run), "m", max_batch=2, max_wait=3600, max_queue=16)
    pair = [batcher.submit(jobs(1, v), LATER) for v in (1, 2)]  # the first waits for the second
    assert [f.result(timeout=30)[0].tolist() for f in pair] == [[[1]], [[2]]]
    alone = batcher.submit(jobs(1, 3), LATER)  # waits for a second image that never comes ...
    batcher.drain()  # ... until the server stops
    assert alone.result(timeout=30)[0].tolist() == [[3]]
    assert run.sizes == [2, 1]
    batcher.stop()


def test_a_full_queue_refuses_at_once() -> None:
    run = Held()
    batcher = Batcher(Engine(run), "m", max_batch=1, max_wait=0, max_queue=2)
    batcher.submit(jobs(1, 0), LATER)
    assert run.entered.wait(timeout=30)
    batcher.submit(jobs(2, 0), LATER)
    with pytest.raises(QueueFull, match="2 images queued, at most 2"):
        batcher.submit(jobs(1, 0), LATER)
    run.opened.set()
    batcher.stop()
    alone = Batcher(Engine(run), "m", max_batch=1, max_wait=0, max_queue=2)
    assert alone.submit(jobs(3, 5), LATER).result(timeout=30)[0].shape == (3, 1)  # an empty queue takes any
    alone.stop()


def test_reserved_room_counts_as_queued_until_submitted_or_released() -> None:
    run = Held()
    run.opened.set()
    batcher = Batcher(Engine(run), "m", max_batch=4, max_wait=0, max_queue=2)
    batcher.reserve(2)  # a request decoding its two images
    assert batcher.queued == 2
    with pytest.raises(QueueFull, match="2 images queued, at most 2"):
        batcher.reserve(1)
    with pytest.raises(QueueFull):
        batcher.submit(jobs(1, 0), LATER)
    batcher.release(1)  # one was no image
    assert batcher.submit(jobs(1, 7), LATER, reserved=True).result(timeout=30)[0].tolist() == [[7.0]]
    batcher.reserve(2)
    batcher.release(2)
    assert batcher.queued == 0
    batcher.stop()


def test_expired_and_abandoned_requests_are_not_run() -> None:
    run = Held()
    batcher = Batcher(Engine(run), "m", max_batch=8, max_wait=0, max_queue=16)
    held = batcher.submit(jobs(1, 0), LATER)
    assert run.entered.wait(timeout=30)
    late = batcher.submit(jobs(1, 1), time.monotonic() - 1)
    gone = batcher.submit(jobs(1, 2), LATER)
    assert gone.cancel()
    kept = batcher.submit(jobs(1, 3), LATER)
    run.opened.set()
    batcher.stop()
    assert held.result()[0].tolist() == [[0]] and kept.result()[0].tolist() == [[3]]
    with pytest.raises(Expired):
        late.result()
    assert run.sizes == [1, 1]


def test_a_failing_run_fails_each_request_of_its_batch() -> None:
    def broken(images: np.ndarray) -> np.ndarray:
        raise RuntimeError("broken")

    batcher = Batcher(Engine(broken), "m", max_batch=4, max_wait=0, max_queue=4)
    future = batcher.submit(jobs(1, 0), LATER)
    with pytest.raises(RuntimeError, match="broken"):
        future.result(timeout=30)
    batcher.stop()


def test_a_swap_takes_the_next_batch_and_each_answer_names_its_engine() -> None:
    run = Held()
    old, new = Engine(run), Engine(lambda images: np.full((len(images), 1), -1, np.float32))
    batcher = Batcher(old, "m", max_batch=1, max_wait=0, max_queue=4)
    running = batcher.submit(jobs(1, 7), LATER)
    assert run.entered.wait(timeout=30)
    batcher.swap(new)  # while the old engine runs a batch
    waiting = batcher.submit(jobs(1, 8), LATER)
    run.opened.set()
    batcher.stop()
    probs, engine = running.result()
    assert probs.tolist() == [[7]] and engine is old  # the batch in flight finished on the old one
    probs, engine = waiting.result()
    assert probs.tolist() == [[-1]] and engine is new
