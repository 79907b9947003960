"""``pawlab spec ...``: the model specs from the command line (`pawlab.cli` parses the flags
and calls these)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pawlab.config import RuntimeConfig
from pawlab.data.decode import load_image
from pawlab.spec.builtin import BUILTIN, use_digit_models
from pawlab.spec.core import SPECS, ModelSpec, get
from pawlab.spec.training import DigitModels, default_folder, train_digits


def _spec(args: argparse.Namespace) -> ModelSpec:
    if args.models is not None:
        use_digit_models(args.models)
    return get(args.name)


def _image(path: str, shape: tuple[int, int] | None) -> np.ndarray:
    """An image file as uint8 grayscale (H, W) at the discriminator's size; a line on stderr
    when it is far smaller than that (stdout keeps only the result)."""
    notes: list[str] = []
    image: np.ndarray = load_image(path, shape, 1, notes=notes)[..., 0]
    for note in notes:
        print(f"pawlab spec: note: {note}", file=sys.stderr)
    return image


def cmd_list(args: argparse.Namespace) -> int:
    folder = Path(args.models) if args.models is not None else default_folder()
    if DigitModels(folder).complete():
        state = "trained"
    elif args.models is None:
        state = "not trained yet: trained on first use, or by pawlab spec train-digits"
    else:  # a folder the user named is never trained into on demand
        state = f"not trained: pawlab spec train-digits --out {folder} trains them"
    print(f"specs (digit models in {folder}: {state}):")
    for name in SPECS.names():
        spec = SPECS.get(name)
        where = "built-in" if name in BUILTIN else "defined"
        print(f"  {name:<24} labels {list(spec.labels.allowed)}  {spec.labels.describe()}  ({where})")
    return 0


def cmd_train_digits(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out is not None else default_folder()
    models = train_digits(out, runtime=RuntimeConfig(progress=not args.quiet))
    for role in ("discriminator", "generator", "guide"):
        print(f"{role + ':':<15}{getattr(models, role)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    spec = _spec(args)
    image = _image(args.image, spec.discriminator.shape)
    required = True if args.in_distribution else None  # None: the spec's own setting
    result = spec.check(image, n=args.n, grid=args.grid, seed=args.seed, in_distribution=required)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(spec.explain(image, in_distribution=required))
    print(f"sample values ({args.n} generated, not filtered): {list(result.sample_values)}")
    print(f"grid: {result.grid}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    spec = _spec(args)
    samples = spec.sample(args.n, args.seed)
    reads = spec.readings(samples.images)
    path = spec.write_grid(samples, reads, Path(args.out), columns=args.columns)
    agree = float(np.mean(np.array(reads) == samples.labels))
    print(f"{args.n} samples of {spec.name} -> {path} (the discriminator reads {agree:.1%} as requested)")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from pawlab.spec.robustness import robustness_of

    report = robustness_of(
        args.model,
        args.data,
        args.transforms.split(",") if args.transforms else None,
        limit=args.limit,
        out_dir=args.out,
        progress=not args.quiet and not args.json,
        seed=args.seed,
        steps=args.steps,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


COMMANDS = {
    "list": cmd_list,
    "train-digits": cmd_train_digits,
    "check": cmd_check,
    "sample": cmd_sample,
    "robustness": cmd_robustness,
}


def run(args: argparse.Namespace) -> int:
    code: int = COMMANDS[args.spec_command](args)
    sys.stdout.flush()
    return code
