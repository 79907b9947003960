"""``pawlab dashboard``: the live dashboard of training runs served, or one run's page exported
as an offline HTML file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pawlab.cli.command import Command
from pawlab.cli.options import check_port, port_number, quiet_option
from pawlab.errors import ConfigError
from pawlab.hosts import DASHBOARD_PORT

_SKIPPED_SHOWN = 10  # damaged files an export names; the rest are counted


def _dashboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", type=Path, help="run directories, or folders of them (default: runs/)")
    p.add_argument("--port", type=port_number, default=DASHBOARD_PORT, help=f"default {DASHBOARD_PORT}")
    p.add_argument(
        "--host",
        default=None,
        help="listen on this address instead of 127.0.0.1 (beyond loopback: the page has no authentication)",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="FILE.html",
        help="write one run's page as one offline HTML file",
    )
    p.add_argument(
        "--nice", type=int, default=0, help="lower the server's priority by N (train --dashboard uses 10)"
    )
    quiet_option(p)


def _export(roots: list[Path], out: Path) -> int:
    from pawlab.dashboard.export import export_html
    from pawlab.dashboard.store import is_run_dir

    if len(roots) != 1 or not is_run_dir(roots[0]):
        raise ConfigError("--export: name exactly one run directory (with its events.jsonl)")
    if out.is_dir():
        raise ConfigError(f"--export: {out} is a folder; name the HTML file to write")
    exported = export_html(roots[0], out)
    print(f"wrote {exported.path}")
    for reason in exported.skipped[:_SKIPPED_SHOWN]:
        print(f"  skipped {reason}")
    if len(exported.skipped) > _SKIPPED_SHOWN:
        print(f"  skipped {len(exported.skipped) - _SKIPPED_SHOWN} more damaged files")
    return 0


def _run_dashboard(args: argparse.Namespace) -> int:
    from pawlab.dashboard import serve
    from pawlab.hosts import bind_address

    roots = list(args.runs) or [Path("runs")]  # a folder that does not exist yet is watched
    if args.export is not None:
        return _export(roots, args.export)
    host = bind_address(args.host)
    check_port(host, args.port)
    if args.nice > 0:
        os.nice(args.nice)
    serve(roots, host=host, port=args.port, quiet=args.quiet)
    return 0


DASHBOARD = Command(
    "dashboard",
    "serve the live dashboard of training runs, past and running",
    _dashboard_arguments,
    _run_dashboard,
)
