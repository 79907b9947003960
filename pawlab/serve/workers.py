"""``--workers N``: N processes answering on one port, each with its own engines (and its own
followers of runs), under this process.

The socket is bound here once and given to each worker (spawned, not forked: no threads or
torch state are copied). SIGTERM or Ctrl-C here becomes SIGTERM to every worker, each of which
drains as a single server does; a second Ctrl-C kills them. A worker that ends on its own is
replaced, with one line (unless it never started: then it says why, and the others go on).
Each worker adds what it answered to a shared array when it stops, and this process prints the
sum.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import types
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event

import uvicorn

from pawlab.errors import PawlabError, WorkerError
from pawlab.serve.lifecycle import Settings, run_server

_ctx = multiprocessing.get_context("spawn")


def _worker(
    settings: Settings,
    sock: socket.socket,
    number: int,
    started: Event,
    counts: SynchronizedArray[int],
    failures: Queue[PawlabError],
) -> None:
    """A worker process: its server on ``sock``; ``started`` once its models are loaded;
    (answered, unanswered) added to ``counts`` at its slot when it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    try:
        tally = run_server(settings, started.set, [sock], worker=number)
    except PawlabError as exc:
        failures.put(exc)
        sys.exit(1)
    with counts.get_lock():
        counts[2 * number - 2] += tally.answered
        counts[2 * number - 1] += tally.unanswered


def _say(line: str) -> None:
    print(f"pawlab serve: {line}", file=sys.stderr, flush=True)


class _Workers:
    """The worker processes, numbered from 1, and whether they were told to stop."""

    def __init__(self, settings: Settings, n: int, sock: socket.socket) -> None:
        self.settings, self.sock = settings, sock
        self.counts: SynchronizedArray[int] = _ctx.Array("q", 2 * n)
        self.failures: Queue[PawlabError] = _ctx.Queue()
        self.started = [_ctx.Event() for _ in range(n)]
        self.stopping = False
        self.given_up: set[int] = set()  # the workers that could not start again, by index
        self.procs = [self._spawn(k) for k in range(1, n + 1)]

    def _spawn(self, number: int) -> BaseProcess:
        self.started[number - 1].clear()
        args = (self.settings, self.sock, number, self.started[number - 1], self.counts, self.failures)
        proc = _ctx.Process(target=_worker, args=args, name=f"pawlab-serve-worker-{number}")
        proc.start()
        return proc

    def signal(self, sig: int, frame: types.FrameType | None) -> None:
        kill = self.stopping and sig == signal.SIGINT  # a second Ctrl-C: now
        self.stopping = True
        for proc in self.procs:
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)

    def wait(self) -> None:
        """Until a worker ends, or a signal comes (at most a second)."""
        wait([p.sentinel for p in self.procs if p.exitcode is None], timeout=1)

    def await_start(self) -> None:
        """Return once every worker loaded its models; if one fails first, stop the others and
        raise its error."""
        while not all(e.is_set() for e in self.started):
            if self.stopping or any(p.exitcode is not None for p in self.procs):
                self.signal(signal.SIGTERM, None)
                for proc in self.procs:
                    proc.join()
                if not self.failures.empty():
                    raise self.failures.get()
                if self.stopping:
                    return
                raise WorkerError("a worker ended before it started; see above")
            self.wait()

    def supervise(self) -> None:
        """Until every worker ended after a signal. One that ends before is replaced, unless
        it never started (its model no longer loads: another would fail the same way)."""
        while any(p.exitcode is None for p in self.procs):
            self.wait()
            for k, proc in enumerate(self.procs):
                if proc.exitcode is None or self.stopping or k in self.given_up:
                    continue
                if self.started[k].is_set():
                    _say(f"worker {k + 1} ended unexpectedly (exit status {proc.exitcode}); starting another")
                    self.procs[k] = self._spawn(k + 1)
                else:
                    why = self.failures.get() if not self.failures.empty() else f"exit status {proc.exitcode}"
                    _say(f"warning: worker {k + 1} could not start ({why}); not replaced")
                    self.given_up.add(k)
            if len(self.given_up) == len(self.procs):
                raise WorkerError("no worker left to answer")

    def tally(self) -> tuple[int, int]:
        return sum(self.counts[0::2]), sum(self.counts[1::2])


def run_workers(settings: Settings, n: int, announce: Callable[[], None]) -> tuple[int, int]:
    """``n`` worker processes serving ``settings`` on one socket; ``announce`` once all have
    loaded their models; until SIGTERM or Ctrl-C and every worker drained -> requests
    (answered, unanswered), summed over the workers."""
    config = uvicorn.Config("pawlab.serve:serve", host=settings.bind, port=settings.port, log_level="warning")
    sock = config.bind_socket()  # its app is never loaded here: only the address is used
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        workers = _Workers(settings, n, sock)
        for sig in handlers:
            signal.signal(sig, workers.signal)
        workers.await_start()
        if not workers.stopping:
            announce()
        workers.supervise()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sock.close()
    # a worker still loading its models when SIGTERM came ends by it, having accepted nothing
    ended = [(k + 1, p.exitcode) for k, p in enumerate(workers.procs) if k not in workers.given_up]
    failed = [(k, code) for k, code in ended if code not in (0, -signal.SIGTERM)]
    if failed:
        raise WorkerError(", ".join(f"worker {k} ended with exit status {code}" for k, code in failed))
    return workers.tally()
