"""``--workers N``: N processes answering on one port, each with its own engines (and its own
followers of runs), under this process; by default one per core (`auto_workers`).

Each worker's engines run on its share of the cores (``torch.set_num_threads``): processes that
each keep one core busy answer more than one process whose threads meet at every operation,
and whose Python parts (HTTP, decoding, the engine's loop) take turns under one GIL
(bench/serve.py, EfficientNet-Lite0, 64 clients, 2 AMD EPYC cores with fast bf16: one process
95 img/s, two single-threaded workers 140; two workers of two threads each, oversubscribing
the cores, about 115).

The socket is bound here once and given to each worker (spawned, not forked: no threads or
torch state are copied). SIGTERM or Ctrl-C here becomes SIGTERM to every worker, each of which
drains as a single server does; a second Ctrl-C kills them. A worker that ends on its own is
replaced, with one line (unless it never started: then it says why, and the others go on).
Each worker tells this process through a pipe when it started, and what it answered when it
stopped; this process prints the sum.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import torch
import uvicorn
from prometheus_client import multiprocess
from tqdm import tqdm

from pawlab.data.workers import usable_cores
from pawlab.errors import PawlabError, WorkerError
from pawlab.runtime import resolve_device
from pawlab.serve.lifecycle import Settings, handling, run_server
from pawlab.serve.metrics import SHARED_DIR

_ctx = multiprocessing.get_context("spawn")
STARTED = "started"
# `auto_workers` at most: each worker holds torch, its models and their compiled graphs (two
# workers serving EfficientNet-Lite0 and their parent: 1.5 GB resident, bench/serve.py)
MAX_AUTO_WORKERS = 8


def auto_workers(device: str) -> int:
    """Workers by default: one per core on the CPU (at most `MAX_AUTO_WORKERS`); one for a GPU,
    whose engine gathers the batches."""
    if resolve_device(device).type != "cpu":
        return 1
    return min(usable_cores(), MAX_AUTO_WORKERS)


def _worker(settings: Settings, sock: socket.socket, number: int, threads: int, parent: Connection) -> None:
    """A worker process: its server on ``sock``, its engines on ``threads`` threads. It tells
    ``parent`` `STARTED` once its models are loaded, then (answered, unanswered) when it stops;
    or the error it could not start with."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    torch.set_num_threads(threads)
    # tqdm (inference's hidden progress bar) would make a lock between processes, which a killed
    # worker leaves behind for multiprocessing to warn of; one in this process is enough
    tqdm.set_lock(threading.RLock())
    try:
        tally = run_server(settings, lambda: parent.send(STARTED), [sock], worker=number)
    except PawlabError as exc:
        parent.send(exc)
        sys.exit(1)
    parent.send((tally.answered, tally.unanswered))


def _say(line: str) -> None:
    print(f"pawlab serve: {line}", file=sys.stderr, flush=True)


@dataclass
class _Slot:
    """A worker's place, numbered from 1: its process now, this end of its pipe, and what it
    said."""

    number: int
    proc: BaseProcess
    conn: Connection
    started: bool = False
    failure: PawlabError | None = None
    given_up: bool = False  # its replacement could not start: not tried again


class _Workers:
    """The worker processes, what they answered, and whether they were told to stop."""

    def __init__(self, settings: Settings, n: int, sock: socket.socket) -> None:
        self.settings, self.sock = settings, sock
        self.threads = max(1, usable_cores() // n)  # each worker's share of the cores
        self.answered = self.unanswered = 0
        self.stopping = False
        self.slots = [self._spawn(k) for k in range(1, n + 1)]

    def _spawn(self, number: int) -> _Slot:
        mine, theirs = _ctx.Pipe(duplex=False)
        args = (self.settings, self.sock, number, self.threads, theirs)
        proc = _ctx.Process(target=_worker, args=args, name=f"pawlab-serve-worker-{number}")
        proc.start()
        theirs.close()  # the worker has its own copy
        return _Slot(number, proc, mine)

    def _listen(self, slot: _Slot) -> None:
        """Take in what ``slot``'s worker said."""
        try:
            while slot.conn.poll():
                said = slot.conn.recv()
                if said == STARTED:
                    slot.started = True
                elif isinstance(said, PawlabError):
                    slot.failure = said
                else:
                    self.answered += said[0]
                    self.unanswered += said[1]
        except (EOFError, OSError):
            pass  # it ended

    def signal(self, sig: int, frame: types.FrameType | None) -> None:
        kill = self.stopping and sig == signal.SIGINT  # a second Ctrl-C: now
        self.stopping = True
        for slot in self.slots:
            if slot.proc.pid is not None and slot.proc.exitcode is None:
                os.kill(slot.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)

    def wait(self) -> None:
        """Until a worker says something or ends, or a signal comes (at most a second); then
        take in what they said."""
        running = [s for s in self.slots if s.proc.exitcode is None]
        wait([s.proc.sentinel for s in running] + [s.conn for s in running], timeout=1)
        for slot in self.slots:
            self._listen(slot)

    def await_start(self) -> None:
        """Return once every worker loaded its models; if one fails first, stop the others and
        raise its error."""
        while not all(s.started for s in self.slots):
            if self.stopping or any(s.proc.exitcode is not None for s in self.slots):
                self.signal(signal.SIGTERM, None)
                for slot in self.slots:
                    slot.proc.join()
                    self._listen(slot)
                failure = next((s.failure for s in self.slots if s.failure is not None), None)
                if failure is not None:
                    raise failure
                if self.stopping:
                    return
                raise WorkerError("a worker ended before it started; see above")
            self.wait()

    def supervise(self) -> None:
        """Until every worker ended after a signal. One that ends before is replaced, unless
        it never started (its model no longer loads: another would fail the same way)."""
        while True:
            self._replace_ended()
            if all(s.given_up for s in self.slots):
                raise WorkerError("no worker left to answer")
            if all(s.proc.exitcode is not None for s in self.slots):
                return  # after a signal: every one that ended before it was replaced above
            self.wait()

    def _replace_ended(self) -> None:
        """Replace each worker that ended though no signal came, unless it never started."""
        for k, slot in enumerate(self.slots):
            if slot.proc.exitcode is None or self.stopping or slot.given_up:
                continue
            self._listen(slot)  # all it said before it ended
            slot.conn.close()
            if slot.proc.pid is not None:
                multiprocess.mark_process_dead(slot.proc.pid)  # its queue leaves /metrics
            status = f"exit status {slot.proc.exitcode}"
            if slot.started:
                _say(f"worker {slot.number} ended unexpectedly ({status}); starting another")
                self.slots[k] = self._spawn(slot.number)
            else:
                why = slot.failure or status
                _say(f"warning: worker {slot.number} could not start ({why}); not replaced")
                slot.given_up = True


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` in the environment inside (for the workers spawned there)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def run_workers(settings: Settings, n: int, announce: Callable[[], None]) -> tuple[int, int]:
    """``n`` worker processes serving ``settings`` on one socket; ``announce`` once all have
    loaded their models; until SIGTERM or Ctrl-C and every worker drained -> requests
    (answered, unanswered), summed over the workers."""
    config = uvicorn.Config("pawlab.serve:serve", host=settings.bind, port=settings.port, log_level="warning")
    sock = config.bind_socket()  # its app is never loaded here: only the address is used
    with tempfile.TemporaryDirectory(prefix="pawlab-serve-metrics-") as shared, _environ(SHARED_DIR, shared):
        try:
            workers = _Workers(settings, n, sock)
            with handling(workers.signal, signal.SIGTERM, signal.SIGINT):
                workers.await_start()
                if not workers.stopping:
                    announce()
                workers.supervise()
        finally:
            sock.close()
    # a worker still loading its models when SIGTERM came ends by it, having accepted nothing
    ended = [(s.number, s.proc.exitcode) for s in workers.slots if not s.given_up]
    failed = [(k, code) for k, code in ended if code not in (0, -signal.SIGTERM)]
    if failed:
        raise WorkerError(", ".join(f"worker {k} ended with exit status {code}" for k, code in failed))
    return workers.answered, workers.unanswered
