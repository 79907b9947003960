"""Trained models as a web service: ``pawlab serve MODEL...``, or ``pawlab.serve([...])``.

    models.py       the models served, each by name, with its file's digest and its engine
    batcher.py      a model's engine thread: requests gathered into batches from a bounded queue
    service.py      what the endpoints share: decoding pool, deadline, limits, refusals
    app.py          the Starlette app: ``POST /v1/predict``, the token, the Host check, CORS
    protocol_v2.py  the Open Inference Protocol (KServe v2, Triton): probes, metadata, infer
    metrics.py      ``GET /metrics`` in Prometheus' text format

The module itself is callable: ``pawlab.serve(models, ...)`` is `serve`.
"""

from __future__ import annotations

import os
import signal
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from pawlab.errors import ConfigError
from pawlab.hosts import EVERY_INTERFACE, allowed_hosts, bind_address, is_loopback, url_host
from pawlab.serve.app import create_app
from pawlab.serve.models import Batching, Served, model_names
from pawlab.serve.service import Limits

__all__ = [
    "DEFAULT_PORT",
    "Batching",
    "Limits",
    "Served",
    "check_access",
    "create_app",
    "read_token",
    "serve",
]

DEFAULT_PORT = 8090


def read_token(path: Path) -> str:
    """The bearer token in ``path``, surrounding whitespace stripped."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise ConfigError(f"--token-file {path}: {reason}") from None
    if not token:
        raise ConfigError(f"--token-file {path}: empty; write the token in it")
    return token


def check_access(bind: str, token: str | None, no_auth: bool) -> None:
    """Beyond this machine, a server needs a token or an explicit ``no_auth``."""
    if not is_loopback(bind) and token is None and not no_auth:
        where = f"{bind} (every interface)" if bind in EVERY_INTERFACE else bind
        raise ConfigError(
            f"--host {where}: beyond this machine requests need a token; give --token-file FILE "
            "(or --no-auth to answer anyone who can reach it)"
        )


class _Server(uvicorn.Server):
    """uvicorn, whose SIGTERM or Ctrl-C also tells ``stopping`` (readiness goes false, the
    engines run what they hold at once) and ends with status 0, not by the signal again."""

    def __init__(self, config: uvicorn.Config, stopping: Callable[[], None]) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        self.stopping()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: now
        self.should_exit = True


def serve(
    models: Sequence[str | os.PathLike[str]],
    *,
    host: str | None = None,
    port: int = DEFAULT_PORT,
    batching: Batching = Batching(),
    limits: Limits = Limits(),
    token: str | None = None,
    no_auth: bool = False,
    cors_origin: str | None = None,
    grace: int = 10,
    tta: bool = False,
    device: str = "auto",
    precision: str = "auto",
    compile: str = "auto",
    quiet: bool = False,
) -> None:
    """Serve ``models`` (paths, or ``NAME=PATH``; the first answers requests naming none)
    until SIGTERM or Ctrl-C, then finish the accepted requests within ``grace`` seconds.
    ``host=None``: this machine only; any other address needs ``token`` (every request but
    the health probes must send it) or ``no_auth``."""
    bind = bind_address(host)
    check_access(bind, token, no_auth)
    if no_auth and not is_loopback(bind):
        print(f"pawlab serve: warning: --no-auth: anyone who can reach {bind} may use it", file=sys.stderr)
    served = [
        Served.load(name, path, batching, tta=tta, device=device, precision=precision, compile=compile)
        for name, path in model_names(models)
    ]
    servers: list[_Server] = []

    def stopping() -> None:
        for s in served:
            s.batcher.drain()

    app = create_app(
        served,
        limits,
        token=token,
        trusted_hosts=allowed_hosts(bind),
        cors_origin=cors_origin,
        ready=lambda: servers[0].started and not servers[0].should_exit,
    )
    config = uvicorn.Config(app, host=bind, port=port, log_level="warning", timeout_graceful_shutdown=grace)
    servers.append(_Server(config, stopping))
    if not quiet:
        names = ", ".join(s.name for s in served)
        print(f"serving {names}: http://{url_host(bind)}:{port}/v1/predict", flush=True)
    try:
        servers[0].run()
    finally:
        for s in served:
            s.batcher.stop()


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> None:
        serve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
