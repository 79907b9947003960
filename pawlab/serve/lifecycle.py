"""One server's life: wait for a followed run's first model, load the models (following the
runs among them), answer until SIGTERM or Ctrl-C, drain, and count what it answered (`Tally`)
for the line it ends with; the signal handlers set for a while (`handling`)."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pawlab.hosts import allowed_hosts
from pawlab.serve.app import create_app
from pawlab.serve.follow import POLL, Follower, stamp
from pawlab.serve.models import Batching, Loading, Served
from pawlab.serve.service import Limits


@dataclass(frozen=True)
class ModelFile:
    """A model to serve: its name, its file, and whether that file is a run's (followed)."""

    name: str
    path: Path
    follow: bool


@dataclass(frozen=True)
class Settings:
    """Everything a server (or each worker process) needs to start: a process can be given it."""

    models: tuple[ModelFile, ...]
    bind: str
    port: int
    batching: Batching
    limits: Limits
    loading: Loading
    token: str | None
    cors_origin: str | None
    grace: int
    quiet: bool


class Tally:
    """Counts the HTTP requests that reach the app: ``answered`` once its response was sent
    whole, ``unanswered`` if it ended without (failed, cancelled, the client gone)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.answered = self.unanswered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        whole = False

        async def sending(message: Message) -> None:
            nonlocal whole
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                whole = True

        try:
            await self.app(scope, receive, sending)
        finally:
            if whole:
                self.answered += 1
            else:
                self.unanswered += 1


def stopped_line(answered: int, unanswered: int) -> str:
    return f"pawlab serve: stopped: {answered} requests answered, {unanswered} unanswered"


class _Server(uvicorn.Server):
    """uvicorn, whose SIGTERM or Ctrl-C also tells ``stopping`` (readiness goes false, the
    engines run what they hold at once) and ends with status 0, not by the signal again. A
    worker process ignores Ctrl-C: its parent passes it on as SIGTERM."""

    def __init__(self, config: uvicorn.Config, stopping: Callable[[], None], worker: bool) -> None:
        super().__init__(config)
        self.stopping, self.worker = stopping, worker

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        if self.worker and sig == signal.SIGINT:
            return
        self.stopping()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: now
        self.should_exit = True


# what signal.signal takes: a function, or SIG_IGN / SIG_DFL
Handler = Callable[[int, types.FrameType | None], object] | int | None


@contextmanager
def handling(handler: Handler, *signals: int) -> Iterator[None]:
    """``handler`` handles ``signals`` inside; the handlers before are put back after. Only
    the main thread may set handlers: in any other, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous)


def sigterm_ignored() -> AbstractContextManager[None]:
    """SIGTERM is ignored inside. uvicorn puts the default handlers back once it has stopped;
    another SIGTERM while the engines and followers finish would then kill the process
    (status -15, not 0)."""
    return handling(signal.SIG_IGN, signal.SIGTERM)


def wait_for(path: Path, name: str, quiet: bool, poll: float = POLL) -> bool:
    """Wait until the run's model file ``path`` exists (True), saying once (unless ``quiet``)
    that the server waits for it; False if SIGTERM came first (in the main thread only)."""
    if path.exists():
        return True
    stopped = threading.Event()
    with handling(lambda sig, frame: stopped.set(), signal.SIGTERM):
        if not quiet:  # once SIGTERM is handled: a process manager may send it on this line
            print(f"pawlab serve: {name}: waiting for the run to write {path}", file=sys.stderr, flush=True)
        while not path.exists():
            if stopped.wait(poll):
                return False
    return True


def run_server(
    settings: Settings,
    announce: Callable[[], None],
    sockets: list[socket.socket] | None = None,
    worker: int | None = None,
) -> Tally:
    """Load the models, start following the runs among them, call ``announce`` and answer
    (on ``sockets`` if given, else on the settings' address) until SIGTERM or Ctrl-C; then
    finish the accepted requests within the grace time. The `Tally` says how many were
    answered. ``worker``: this process's number among several."""
    s = settings
    who = "" if worker is None else f"worker {worker}: "
    seen = [stamp(m.path) for m in s.models]  # before loading: a file written meanwhile is new
    served = [Served.start(m.name, m.path, s.batching, s.loading) for m in s.models]
    followers = [
        Follower(sv, m.path, was, who + m.name, s.quiet)
        for sv, m, was in zip(served, s.models, seen, strict=True)
        if m.follow
    ]
    servers: list[_Server] = []

    def stopping() -> None:
        for sv in served:
            sv.batcher.drain()

    tally = Tally(
        create_app(
            served,
            s.limits,
            token=s.token,
            trusted_hosts=allowed_hosts(s.bind),
            cors_origin=s.cors_origin,
            ready=lambda: servers[0].started and not servers[0].should_exit,
        )
    )
    config = uvicorn.Config(
        tally, host=s.bind, port=s.port, log_level="warning", timeout_graceful_shutdown=s.grace
    )
    servers.append(_Server(config, stopping, worker is not None))
    announce()
    try:
        servers[0].run(sockets)
    finally:
        with sigterm_ignored():
            for f in followers:
                f.stop()
            for sv in served:
                sv.batcher.stop()
    return tally
