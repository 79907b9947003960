"""``pawlab train`` and ``pawlab compare`` (one run per optimizer), and the recipe rules they
share: which flags set which `TrainConfig` fields, and which flags --resume and --preset allow."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pawlab.cli.command import Command
from pawlab.cli.options import (
    check_port,
    layout_option,
    port_number,
    positive_int,
    quiet_option,
    train_options,
)
from pawlab.config import DEFAULT_ARCH, DEFAULT_BACKBONE, AugmentConfig, RuntimeConfig, TrainConfig
from pawlab.errors import ConfigError
from pawlab.hosts import DASHBOARD_PORT

if TYPE_CHECKING:
    from pawlab.training import TrainResult

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
    {"device", "precision", "runtime", "channels_last", "compile", "quiet", "dashboard", "port", "log"}
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
        runtime=args.runtime,
    )


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
        if "augment" in args.given:  # flips the user asks for are mirrored views at any size
            changes["mirror_below"] = None
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


def _recipe_source_options(p: argparse.ArgumentParser) -> None:
    """Where the recipe comes from, one of: --arch, --arch-file, --resume, --preset, --backbone."""
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
        type=positive_int,
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


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="a prepared folder or any source `prepare` accepts")
    _recipe_source_options(p)
    _transfer_options(p)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, default=None, help="default 10")
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
    train_options(p)
    p.add_argument("--val-fraction", type=float, default=0.2, help="for sources without their own split")
    layout_option(p)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument(
        "--dashboard", action="store_true", help="serve the live dashboard on 127.0.0.1 while training"
    )
    p.add_argument(
        "--port",
        type=port_number,
        default=DASHBOARD_PORT,
        help=f"the dashboard's port (default {DASHBOARD_PORT})",
    )
    p.add_argument(
        "--log",
        default="",
        metavar="NAME[,NAME...]",
        # the names of pawlab.training.loggers.LOGGERS (a test keeps them equal), written out
        # here: the CLI starts without importing torch
        help="log to experiment trackers too: tensorboard, mlflow, wandb (each an extra: see README)",
    )
    quiet_option(p)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _start_dashboard(args: argparse.Namespace, run_dir: Path, stop: ExitStack) -> None:
    """With --dashboard (on the first rank): the dashboard of ``run_dir`` in a process of its own,
    at a lower priority (nice 10), stopped when ``stop`` closes. Training only writes files, the
    server yields the cores to it, and a slow or absent browser never holds up a batch."""
    from pawlab.runtime import launched_rank

    if not args.dashboard or launched_rank() != 0:
        return
    check_port("127.0.0.1", args.port)
    cmd = [sys.executable, "-m", "pawlab", "dashboard", str(run_dir), "--port", str(args.port), "-q"]
    print(
        f"dashboard: http://127.0.0.1:{args.port}/ (while training; `pawlab dashboard {run_dir}` after)",
        flush=True,
    )
    dashboard = subprocess.Popen([*cmd, "--nice", "10"])
    stop.callback(dashboard.wait)  # callbacks run last in, first out: terminated, then waited for
    stop.callback(dashboard.terminate)


def _resume(args: argparse.Namespace, stop: ExitStack) -> TrainResult:
    from pawlab.training import resume
    from pawlab.training.loggers import loggers_for
    from pawlab.training.runs import resumed_run_dir

    _reject_changed(args, "--resume", {"resume", "epochs", "forever", "out", "workers"})
    run_dir = resumed_run_dir(Path(args.resume))
    _start_dashboard(args, run_dir, stop)
    return resume(
        args.resume,
        args.data,
        epochs=args.epochs,
        forever=args.forever,
        out=args.out,
        workers=args.workers,
        callbacks=loggers_for(args.log, run_dir),
        runtime=_runtime(args),
    )


def _train(args: argparse.Namespace, stop: ExitStack) -> TrainResult:
    from pawlab.training import train
    from pawlab.training.loggers import loggers_for
    from pawlab.training.runs import run_dir_for

    if args.data is None:
        raise ConfigError("train: DATA is required (or --resume RUN_DIR)")
    arch, cfg, size = _recipe(args)
    run_dir = run_dir_for(args.run_dir, args.out, arch)
    _start_dashboard(args, run_dir, stop)
    return train(
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


def _run_train(args: argparse.Namespace) -> int:
    from pawlab.runtime import init_distributed, launched_rank

    signal.signal(signal.SIGTERM, _raise_interrupt)
    init_distributed(args.device)
    with ExitStack() as stop:  # the dashboard, if one started, however training ends
        result = _resume(args, stop) if args.resume is not None else _train(args, stop)
    if launched_rank() == 0:
        b = result.best
        print(
            f"best: epoch {int(b['epoch'])}, val loss {b['val_loss']:.4f}, val acc {b['val_accuracy']:.4f} "
            f"-> {result.model_path} ({result.seconds:.0f}s; run: {result.run_dir})"
        )
    return 0


TRAIN = Command(
    "train", "train a network; saves the model whenever validation improves", _train_arguments, _run_train
)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a prepared folder or any source `prepare` accepts")
    p.add_argument("--optimizers", default="sgd,rmsprop,adagrad,adam", help="comma-separated, one run each")
    p.add_argument("--arch", default=DEFAULT_ARCH, help="a built-in architecture (see `pawlab archs`)")
    p.add_argument("--arch-file", type=Path, help="a network described in TOML, YAML or JSON")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs per run")
    p.add_argument("--out-dir", type=Path, default=Path("compare"), help="models, runs and the plot")
    train_options(p, optimizer=False)
    p.add_argument("--val-fraction", type=float, default=0.2, help="held out for validation (default 0.2)")
    layout_option(p)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per core)")
    quiet_option(p)


def _run_compare(args: argparse.Namespace) -> int:
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


COMPARE = Command(
    "compare", "one run per optimizer on the same data, seed and network", _compare_arguments, _run_compare
)
