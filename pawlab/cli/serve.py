"""``pawlab serve``: models behind HTTP (`pawlab.serve`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pawlab.cli.command import Command
from pawlab.cli.options import (
    check_port,
    inference_options,
    non_negative_float,
    port_number,
    positive_float,
    positive_int,
    unknown_threshold_option,
    worker_count,
)
from pawlab.hosts import SERVE_PORT


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "models",
        nargs="+",
        help="model files or training runs' directories (followed: each better model answers), each "
        "PATH or NAME=PATH (default name: the file's stem, the run's directory name)",
    )
    p.add_argument("--port", type=port_number, default=SERVE_PORT, help=f"default {SERVE_PORT}")
    p.add_argument(
        "--host", default=None, help="listen on this address instead of 127.0.0.1 (beyond it: --token-file)"
    )
    p.add_argument("--token-file", type=Path, default=None, help="every request must send this bearer token")
    p.add_argument("--no-auth", action="store_true", help="beyond 127.0.0.1 without a token: anyone may ask")
    p.add_argument("--cors-origin", default=None, help="the one origin whose pages may call the server")
    _batching_options(p)
    p.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        help="processes answering on the one port, each with its own engines on its share of the cores "
        "(default auto: one per core on the CPU, at most 8; one for a GPU)",
    )
    inference_options(p, auto="compiled before the first request: tens of seconds at start")
    unknown_threshold_option(p)
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print no 'serving' line, no line per model swap, no 'waiting for' line and no 'stopped' "
        "summary (warnings and errors still print)",
    )


def _batching_options(p: argparse.ArgumentParser) -> None:
    """The batches, the queue and the limits: --max-batch ... --grace."""
    p.add_argument(
        "--max-batch", type=positive_int, default=None, help="images per batch (default: 8 on CPUs)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=5.0,
        help="how long a batch waits to fill (default 5)",
    )
    p.add_argument(
        "--max-queue", type=positive_int, default=256, help="images waiting; beyond it 503 (default 256)"
    )
    p.add_argument(
        "--deadline-ms",
        type=positive_float,
        default=10_000.0,
        help="a request not answered by then: 503 (default 10000)",
    )
    p.add_argument("--max-body-mb", type=positive_float, default=32.0, help="a larger body: 413 (default 32)")
    p.add_argument(
        "--grace",
        type=positive_int,
        default=10,
        help="seconds to finish accepted requests on SIGTERM (default 10)",
    )


def _run_serve(args: argparse.Namespace) -> int:
    from pawlab.hosts import bind_address
    from pawlab.serve import Batching, Limits, check_access, read_token, serve

    host = bind_address(args.host)
    token = read_token(args.token_file) if args.token_file is not None else None
    check_access(host, token, args.no_auth)
    check_port(host, args.port)
    serve(
        args.models,
        host=host,
        port=args.port,
        batching=Batching(args.max_batch, args.max_wait_ms, args.max_queue),
        limits=Limits(max_body_mb=args.max_body_mb, deadline_ms=args.deadline_ms),
        token=token,
        no_auth=args.no_auth,
        cors_origin=args.cors_origin,
        grace=args.grace,
        workers=args.workers,
        tta=args.tta,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        runtime=args.runtime,
        unknown_threshold=args.unknown_threshold,
        quiet=args.quiet,
    )
    return 0


SERVE = Command(
    "serve", "models behind HTTP: batched, bounded, with health probes", _serve_arguments, _run_serve
)
