"""``pawlab calibrate-unknown`` and ``pawlab evaluate-unknown``: a model file's in-distribution
model fitted, and how well it tells the model's own kind of image from others."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pawlab.cli.command import Command
from pawlab.cli.options import eval_data_options, quiet_option, unknown_threshold_option


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path)
    p.add_argument(
        "data",
        help="labelled images of the model's classes: its training source (split as in training) or another",
    )
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    quiet_option(p)


def _run_calibrate(args: argparse.Namespace) -> int:
    from pawlab.inference import calibrate_unknown

    calibrate_unknown(
        args.model, args.data, workers=args.workers, progress=not args.quiet, device=args.device
    )
    return 0


CALIBRATE_UNKNOWN = Command(
    "calibrate-unknown",
    "fit a model file's in-distribution model (for a file trained before it had one)",
    _calibrate_arguments,
    _run_calibrate,
)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path)
    p.add_argument("data", help="labelled images of the model's classes (its validation split if it has one)")
    p.add_argument("others", nargs="+", metavar="OTHER", help="folders or zips of images none of the classes")
    p.add_argument("--json", action="store_true")
    unknown_threshold_option(p)
    eval_data_options(p)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    quiet_option(p)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pawlab.inference import evaluate_unknown, load_model

    report = evaluate_unknown(
        load_model(args.model, args.device, precision="fp32", compile="off"),
        args.data,
        args.others,
        report_dir=args.report_dir,
        unknown_threshold=args.unknown_threshold,
        workers=args.workers,
        progress=not args.quiet and not args.json,
        class_map=args.class_map,
        layout=args.layout,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


EVALUATE_UNKNOWN = Command(
    "evaluate-unknown",
    "how well a model tells its own kind of image from others",
    _evaluate_arguments,
    _run_evaluate,
)
