"""Trained models as a web service: ``pawlab serve MODEL...``, or ``pawlab.serve([...])``.

    models.py       the models served, each by name, with its engine and the version it runs
    batcher.py      a model's engine thread: requests gathered into batches from a bounded queue
    follow.py       a training run followed: its new model file loaded and swapped in
    lifecycle.py    one server: start, answer, drain on SIGTERM, count what it answered
    workers.py      ``--workers N``: N server processes on one socket (default: one per core)
    service.py      what the endpoints share: decoding pool, deadline, limits, refusals
    app.py          the Starlette app: ``POST /v1/predict``, ``GET /v1/models``, the token, the
                    Host check, CORS
    uploads.py      a multipart body's files, parsed off the event loop
    page.py         ``GET /`` (drop, pick or paste images) and ``GET /docs``, from ``static/``
    openapi.py      ``GET /openapi.json``: every route, described
    protocol_v2.py  the Open Inference Protocol (KServe v2, Triton): probes, metadata, infer
    metrics.py      ``GET /metrics`` in Prometheus' text format

The module itself is callable: ``pawlab.serve(models, ...)`` is `serve`.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pawlab import unknown
from pawlab.checkpoint import read_meta
from pawlab.data.workers import entry_point
from pawlab.errors import ConfigError
from pawlab.hosts import EVERY_INTERFACE, SERVE_PORT, bind_address, is_loopback, url_host
from pawlab.serve.app import create_app
from pawlab.serve.lifecycle import ModelFile, Settings, run_server, stopped_line, wait_for
from pawlab.serve.models import Batching, Loading, Served, model_names, run_model_file
from pawlab.serve.service import Limits
from pawlab.serve.workers import auto_workers, run_workers

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

DEFAULT_PORT = SERVE_PORT


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


@entry_point
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
    workers: int | None = None,
    tta: bool = False,
    device: str = "auto",
    precision: str = "auto",
    compile: str = "auto",
    unknown_threshold: float = unknown.DEFAULT_THRESHOLD,
    quiet: bool = False,
    runtime: str = "auto",
) -> None:
    """Serve ``models`` (model files or training runs' directories, each ``PATH`` or
    ``NAME=PATH``; the first answers requests naming none) until SIGTERM or Ctrl-C, then
    finish the accepted requests within ``grace`` seconds. A run is followed: each better
    model file it writes answers from the next batch on. ``host=None``: this machine only; any
    other address needs ``token`` (every request but the health probes must send it) or
    ``no_auth``. ``workers``: processes answering on the one port, each with its own engines on
    its share of the cores (None: one per core on the CPU, one for a GPU; spawned: a script
    calling this with more than one needs ``if __name__ == "__main__":``). An image less
    typical than ``unknown_threshold`` is answered as none of a model's classes. ``runtime``,
    ``precision``: what runs each model (`pawlab.inference.load_model`)."""
    bind = bind_address(host)
    check_access(bind, token, no_auth)
    workers = auto_workers(device) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers={workers}: give 1 or more")
    if no_auth and not is_loopback(bind):
        print(f"pawlab serve: warning: --no-auth: anyone who can reach {bind} may use it", file=sys.stderr)
    named = _model_files(models, quiet)
    if named is None:
        return
    loading = Loading(tta, device, precision, compile, unknown_threshold, runtime)
    settings = Settings(tuple(named), bind, port, batching, limits, loading, token, cors_origin, grace, quiet)
    _run(settings, workers)


def _model_files(models: Sequence[str | os.PathLike[str]], quiet: bool) -> list[ModelFile] | None:
    """The files to serve (`model_names`), a run's once it wrote one (None: SIGTERM came first);
    a missing or foreign file is its one line now, before any worker starts."""
    named = [
        ModelFile(name, run_model_file(path), True) if path.is_dir() else ModelFile(name, path, False)
        for name, path in model_names(models)
    ]
    if not all(wait_for(m.path, m.name, quiet) for m in named if m.follow):
        if not quiet:
            print(stopped_line(0, 0), file=sys.stderr, flush=True)  # SIGTERM before a model came
        return None
    for m in named:
        read_meta(m.path)
    return named


def _run(settings: Settings, workers: int) -> None:
    """Answer on the port, in this process or ``workers`` of them, until stopped."""

    def announce() -> None:
        if not settings.quiet:
            names = ", ".join(m.name for m in settings.models)
            print(f"serving {names}: http://{url_host(settings.bind)}:{settings.port}/v1/predict", flush=True)

    if workers == 1:
        tally = run_server(settings, announce)
        answered, unanswered = tally.answered, tally.unanswered
    else:
        answered, unanswered = run_workers(settings, workers, announce)
    if not settings.quiet:
        print(stopped_line(answered, unanswered), file=sys.stderr, flush=True)


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> None:
        serve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
