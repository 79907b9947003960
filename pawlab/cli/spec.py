"""``pawlab spec ...``: the model specs' subcommands parsed here, run by `pawlab.spec.commands`."""

from __future__ import annotations

import argparse

from pawlab.cli.command import Command
from pawlab.cli.options import Parser, positive_int, quiet_option

# the help lines of two subcommands whose flags have functions of their own
_CHECK = "is IMAGE valid, and what do n generated samples read as (a PNG grid)"
_ROBUSTNESS = "how often a classifier's answer flips under label-preserving changes"


def _models_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", metavar="DIR", help="the built-in specs' digit models (default: the pawlab cache's)"
    )


def _spec_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="spec_command", required=True, parser_class=Parser)
    s = sub.add_parser("list", help="the registered specs and their labels")
    _models_option(s)
    s = sub.add_parser("train-digits", help="train the digit discriminator and generator (a few minutes)")
    s.add_argument("--out", metavar="DIR", help="where to write them (default: the pawlab cache)")
    quiet_option(s)
    _check_arguments(sub.add_parser("check", help=_CHECK))
    s = sub.add_parser("sample", help="draw a grid of generated images")
    s.add_argument("name", help="a spec's name (pawlab spec list)")
    s.add_argument("-n", type=positive_int, default=100, help="images (default 100)")
    s.add_argument("--out", required=True, help="the PNG grid to write")
    s.add_argument("--columns", type=positive_int, default=10)
    s.add_argument("--seed", type=int, default=0, help="the latents")
    _models_option(s)
    _robustness_arguments(sub.add_parser("robustness", help=_ROBUSTNESS))


def _check_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", help="a spec's name (pawlab spec list)")
    s.add_argument("image", help="an image file")
    s.add_argument("-n", type=positive_int, default=10, help="samples to generate (default 10)")
    s.add_argument("--grid", help="where to write the samples' PNG grid (default NAME-samples.png)")
    s.add_argument("--seed", type=int, default=0, help="the samples' latents")
    s.add_argument(
        "--in-distribution",
        action="store_true",
        help="valid only if the image is also typical of the discriminator's digits, typicality >= 0.05"
        " (needs its in-distribution model: pawlab calibrate-unknown)",
    )
    s.add_argument(
        "--json",
        action="store_true",
        help='{"spec", "valid", "sample_values", "grid", "typicality", "in_distribution"}',
    )
    _models_option(s)


def _robustness_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("model", help="a model file")
    s.add_argument("data", help="labelled images: a class-per-folder tree, a zip or a prepared folder")
    s.add_argument(
        "--transforms", help="comma-separated, e.g. rotate,blur,jpeg (default: all the model allows)"
    )
    s.add_argument("--limit", type=positive_int, help="a seeded random subset of this many images")
    s.add_argument(
        "--steps",
        type=positive_int,
        default=5,
        help="worst-case search: severities per direction (default 5)",
    )
    s.add_argument(
        "--out", metavar="DIR", help="the report and fragile-image grids (default: beside the model)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="the report as JSON")
    quiet_option(s)


def _run_spec(args: argparse.Namespace) -> int:
    from pawlab.spec.commands import run

    return run(args)


SPEC = Command(
    "spec", "model specs: Hypothesis strategies backed by models, and robustness", _spec_arguments, _run_spec
)
