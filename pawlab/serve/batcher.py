"""One model's engine thread: requests' decoded images wait in a bounded queue and are run
together, up to ``max_batch`` images gathered for at most ``max_wait`` seconds.

The queue counts images, not requests, and a request's images stay together in one batch. A
request that finds the queue full is refused at once (`QueueFull`: the server answers 503),
not kept in a growing backlog; one whose deadline passed before its batch ran, or whose client
gave up, is dropped unrun. `drain` makes the thread run what is queued without waiting for more
(the server is stopping), `stop` ends it once the queue is empty.

The batches run on an `Engine`, which `swap` replaces between two batches: a batch runs whole on
one engine, and each request's future holds the engine that ran it with its probabilities.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# uint8 (N, H, W, C) -> (N, classes + 1): probabilities, then typicality (NaN: the model has no
# in-distribution model)
Run = Callable[[np.ndarray], np.ndarray]
_POLL = 0.05  # seconds between looks at `draining` while a batch gathers


class Engine(Protocol):
    """What runs a batch (a model file as loaded, `pawlab.serve.models.Version`)."""

    @property
    def run(self) -> Run: ...


Ran = tuple[np.ndarray, Engine]  # a request's rows of `Run`'s output, and the engine that ran them


class QueueFull(Exception):
    """The engine's queue has no room for a request's images."""


class Expired(Exception):
    """A request's deadline passed before its batch ran."""


@dataclass
class _Job:
    images: np.ndarray  # uint8 (n, H, W, C)
    deadline: float  # time.monotonic()
    future: Future[Ran] = field(default_factory=Future)


class Batcher:
    """Runs ``engine`` on batches of the images `submit` queues, in a thread of its own."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
        on_queued: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.engine, self.max_batch, self.max_wait, self.max_queue = engine, max_batch, max_wait, max_queue
        self.on_batch = on_batch  # told each batch's size once it ran (the metrics set it)
        self.on_queued = on_queued  # told `queued` each time it changes (the metrics set it)
        self.draining = False  # set from a signal handler: a plain flag, no lock
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images in _jobs, and those reserved for requests still decoding
        self._stopping = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"pawlab-serve-{name}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Images waiting for a batch."""
        return self._queued

    def reserve(self, n: int) -> None:
        """Room for ``n`` images, counted as queued from now on (while a request decodes them,
        so a full queue refuses it before it spends any work); `QueueFull` when there is none.
        Then `submit` them with ``reserved=True``, or `release` the room."""
        with self._ready:
            self._make_room(n)

    def release(self, n: int) -> None:
        """Give back the room `reserve` held for ``n`` images that will not be submitted."""
        with self._ready:
            self._count(-n)

    def submit(self, images: np.ndarray, deadline: float, reserved: bool = False) -> Future[Ran]:
        """Queue uint8 (n, H, W, C) images to run before ``deadline`` (``time.monotonic``); the
        future holds their probabilities (n, classes) and the engine that ran them, or
        `Expired`. `QueueFull` when they do not fit, unless their room is ``reserved``."""
        job = _Job(images, deadline)
        with self._ready:
            if not reserved:
                self._make_room(len(images))
            self._jobs.append(job)
            self._ready.notify()
        return job.future

    def _make_room(self, n: int) -> None:
        """Count ``n`` more images queued (the lock held); a request larger than the whole
        queue fits only an empty one."""
        if self._queued and self._queued + n > self.max_queue:
            raise QueueFull(f"{self._queued} images queued, at most {self.max_queue}")
        self._count(n)

    def _count(self, n: int) -> None:
        """``n`` more images queued (fewer when negative); the lock held."""
        self._queued += n
        self.on_queued(self._queued)

    def swap(self, engine: Engine) -> None:
        """Run the batches after the one running now on ``engine``."""
        self.engine = engine

    def drain(self) -> None:
        self.draining = True

    def stop(self) -> None:
        """Run what is queued, then end the thread."""
        with self._ready:
            self.draining = self._stopping = True
            self._ready.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._run(batch)

    def _gather(self) -> list[_Job] | None:
        """The next batch: the first job waiting, and those behind it that fit in
        ``max_batch`` images, waited for until ``max_wait`` after the first (not while
        draining). None when stopping with nothing queued."""
        with self._ready:
            while not self._jobs:
                if self._stopping:
                    return None
                self._ready.wait()
            batch = [self._jobs.popleft()]
            size = len(batch[0].images)
            until = time.monotonic() + self.max_wait
            while size < self.max_batch:
                if self._jobs:
                    if size + len(self._jobs[0].images) > self.max_batch:
                        break
                    batch.append(self._jobs.popleft())
                    size += len(batch[-1].images)
                    continue
                left = until - time.monotonic()
                if left <= 0 or self.draining:
                    break
                self._ready.wait(min(left, _POLL))
            self._count(-size)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # its client gave up
            if job.deadline < now:
                job.future.set_exception(Expired())
            else:
                live.append(job)
        if not live:
            return
        engine = self.engine  # read once: a swap now takes the next batch
        try:
            probs = engine.run(np.concatenate([job.images for job in live]))
        except Exception as exc:  # a bug, not the request's fault: each request gets a 500
            for job in live:
                job.future.set_exception(exc)
            return
        self.on_batch(len(probs))
        start = 0
        for job in live:
            job.future.set_result((probs[start : start + len(job.images)], engine))
            start += len(job.images)
