"""``pawlab predict``, ``pawlab evaluate`` and ``pawlab submit``: a model file's answers on
images, on labelled data, and as a Kaggle submission."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pawlab.cli.command import Command
from pawlab.cli.options import (
    eval_data_options,
    inference_options,
    positive_int,
    quiet_option,
    unknown_threshold_option,
)


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    unknown_threshold_option(p)
    inference_options(p)


def _run_predict(args: argparse.Namespace) -> int:
    """One line per image on stdout (a JSON object with ``--json``); a note about an image
    (far smaller than the model's input) as a line of its own on stderr."""
    import warnings

    from pawlab.errors import SmallImageWarning
    from pawlab.inference import load_model

    model = load_model(args.model, args.device, args.precision, args.compile, args.runtime)
    model.unknown_threshold = args.unknown_threshold
    for path in args.images:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallImageWarning)  # its notes are printed below
            pred = model.predict(path, tta=args.tta)
        if args.json:
            print(json.dumps({"image": str(path), **pred.to_json()}))
        else:
            probs = "  ".join(f"{c} {p:.4f}" for c, p in pred.probabilities.items())
            typical = "" if pred.typicality is None else f"  typicality {pred.typicality:.3f}"
            print(f"{path}: {pred.classification}{' (unknown)' if pred.unknown else ''}  ({probs}){typical}")
        for note in pred.notes:
            print(f"pawlab predict: note: {note}", file=sys.stderr)
    return 0


PREDICT = Command("predict", "class probabilities of images", _predict_arguments, _run_predict)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path)
    p.add_argument("data", help="a prepared folder or labelled source (its validation split if it has one)")
    p.add_argument("--json", action="store_true")
    unknown_threshold_option(p)
    eval_data_options(p)
    inference_options(p)
    quiet_option(p)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pawlab.inference import evaluate, load_model

    report = evaluate(
        load_model(args.model, args.device, args.precision, args.compile, args.runtime),
        args.data,
        report_dir=args.report_dir,
        workers=args.workers,
        progress=not args.quiet and not args.json,
        tta=args.tta,
        class_map=args.class_map,
        layout=args.layout,
        unknown_threshold=args.unknown_threshold,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


EVALUATE = Command(
    "evaluate", "accuracy, log loss and confusion matrix on labelled data", _evaluate_arguments, _run_evaluate
)


def _submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path)
    p.add_argument("test", help="folder or zip of images named by numeric id (1.jpg ...)")
    p.add_argument("--out", type=Path, default=Path("submission.csv"))
    p.add_argument("--hard", action="store_true", help="labels 0/1 instead of probabilities")
    p.add_argument(
        "--batch-size", type=positive_int, default=256, help="images predicted, then written, at a time"
    )
    p.add_argument("--workers", type=int, default=0)
    p.add_argument(
        "--unknown-column",
        action="store_true",
        help="a third column, unknown: 1 for an image that is none of the model's classes, else 0",
    )
    unknown_threshold_option(p)
    inference_options(p)
    quiet_option(p)


def _run_submit(args: argparse.Namespace) -> int:
    """Under torchrun, ranks predict shards and rank 0 merges them and reports."""
    from pawlab.atomic import check_output_file
    from pawlab.inference import load_model, submit
    from pawlab.runtime import init_distributed, launched_rank

    init_distributed(args.device)
    check_output_file(args.out, "submission")  # before the model is loaded
    r = submit(
        load_model(args.model, args.device, args.precision, args.compile, args.runtime),
        args.test,
        args.out,
        hard=args.hard,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.quiet,
        tta=args.tta,
        unknown_column=args.unknown_column,
        unknown_threshold=args.unknown_threshold,
    )
    if launched_rank() != 0:
        return 0  # rank 0 reports for all
    resumed = f" ({r.resumed} already there, resumed)" if r.resumed else ""
    print(f"wrote {r.written} rows to {r.path}{resumed}: {r.rows} in all, {r.seconds:.1f}s")
    for s in r.failed:
        print(f"  undecodable, written with an uninformative label: {s.name}: {s.reason}")
    if r.skipped:
        print(f"  skipped {len(r.skipped)} files, e.g. {r.skipped[0].name}: {r.skipped[0].reason}")
    return 0


SUBMIT = Command(
    "submit",
    "Kaggle submission CSV (id,label) for a folder or zip of test images",
    _submit_arguments,
    _run_submit,
)
