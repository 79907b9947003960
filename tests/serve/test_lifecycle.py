"""A server's life: what it answered, counted for the line it ends with."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import httpx2 as httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from pawlab.serve.lifecycle import Tally, sigterm_ignored
from tests.serve.conftest import Server


async def whole(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"b"})


async def cut(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    raise asyncio.CancelledError  # as uvicorn cancels a request still running after --grace


def test_a_request_counts_as_answered_once_its_response_was_sent_whole() -> None:
    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        pass

    async def requests() -> tuple[int, int]:
        answered, unanswered = Tally(whole), Tally(cut)
        await answered({"type": "http"}, receive, send)
        with pytest.raises(asyncio.CancelledError):
            await unanswered({"type": "http"}, receive, send)
        await answered({"type": "lifespan"}, receive, send)  # not a request
        return answered.answered + unanswered.answered, answered.unanswered + unanswered.unanswered

    assert asyncio.run(requests()) == (1, 1)


def test_a_stopped_server_says_what_it_answered(models: dict[str, Path]) -> None:
    srv = Server(models["first"], quiet=False)
    for _ in range(3):
        assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200
    status, err = srv.stop()
    assert status == 0
    found = re.fullmatch(r"pawlab serve: stopped: (\d+) requests answered, 0 unanswered\n", err)
    assert found and int(found[1]) >= 4  # the three, and the probes that found it ready


def test_a_second_sigterm_while_the_engines_finish_is_ignored() -> None:
    got: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda sig, frame: got.append(sig))
    try:
        handler = signal.getsignal(signal.SIGTERM)
        with sigterm_ignored():
            os.kill(os.getpid(), signal.SIGTERM)  # would end this process without it
        assert got == [] and signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, before)
