"""``pawlab export``: a model file as an ONNX file, checked against pawlab's own answers."""

from __future__ import annotations

import argparse
from pathlib import Path

from pawlab.cli.command import Command
from pawlab.cli.options import quiet_option


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only one so far)")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write, e.g. model.onnx")
    p.add_argument(
        "--data",
        default=None,
        help="labelled images of the model's classes to check on (default: its training data's "
        "validation split, re-created as in training)",
    )
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="write it checked by onnx.checker only, not against pawlab's answers (no data needed)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantization (QDQ), calibrated on training images and checked against fp32",
    )
    p.add_argument("--force", action="store_true", help="write it even where it does not agree")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    quiet_option(p)


def _run_export(args: argparse.Namespace) -> int:
    from pawlab.export import export_onnx

    options = {name: getattr(args, name) for name in ("data", "check", "int8", "force", "workers")}
    report = export_onnx(args.model, args.out, progress=not args.quiet, log=print, **options)
    print(f"wrote {report.path} ({report.precision})")
    return 0


EXPORT = Command(
    "export",
    "a model file as an ONNX file for other runtimes, checked against pawlab",
    _export_arguments,
    _run_export,
)
