"""Training runs: `train` and `resume`, recipe -> `Trainer` -> result.

A run loads its data, builds (or restores) the network and describes it (the model file's
`ModelCard`), and hands one `Trainer` the sets, the standard callbacks (which write into its
run directory: `pawlab.runlog` names the files) and its phases: with ``fine_tune_epochs`` a
second phase unfreezes the pretrained backbone (fastai's ``fine_tune``) and carries on the
first phase's epochs, history and best score.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from pawlab import checkpoint, runlog
from pawlab._version import __version__
from pawlab.atomic import check_output_file, check_output_folder
from pawlab.checkpoint import ModelCard, TrainingRecord
from pawlab.config import DEFAULT_ARCH, DataConfig, RuntimeConfig, TrainConfig
from pawlab.data import Dataset, ImageSet, load_dataset
from pawlab.data.datasets import layout_of
from pawlab.data.workers import entry_point
from pawlab.errors import ConfigError, ModelFileError, OutputError
from pawlab.inference.engine import COMPILE_MIN_IMAGES
from pawlab.inference.feature_routes import calibration_rows, choose, feature_route
from pawlab.inference.features import TORCH_FP32, backbone_members, features_label, trunk_features
from pawlab.inference.routes import Route
from pawlab.models import (
    LayerSpec,
    Network,
    build,
    get_architecture,
    input_shape,
    preprocessing_for,
    validate_spec,
    with_input_size,
)
from pawlab.preprocessing import Preprocessing
from pawlab.runtime import decided_by_main, is_main, main_first, resolve_device
from pawlab.training.callbacks import (
    BestCheckpoint,
    Callback,
    EarlyStopping,
    EventLog,
    InDistribution,
    InferenceAgreement,
    InputsLog,
    LastState,
    MetricsLog,
    NaNGuard,
    ProgressPrinter,
    RunDirectory,
    TypicalityLog,
    ValidationLog,
)
from pawlab.training.loop import FeatureSet, Phase, Trainer

__all__ = [
    "TrainResult",
    "default_run_dir",
    "resolve_architecture",
    "resume",
    "resumed_run_dir",
    "run_dir_for",
    "train",
]


@dataclass
class TrainResult:
    model_path: Path  # the best model
    run_dir: Path
    history: list[dict[str, float]]
    best: dict[str, float]  # the metrics of the saved (best) epoch
    classes: list[str]
    interrupted: bool
    seconds: float

    def _headline(self) -> str:
        """``3 epochs, best epoch 2, val_loss 0.5069, val_accuracy 1.0000``."""
        from pawlab import display

        best = display.best_epoch(self.best) if "epoch" in self.best else "no epoch"
        n = len(self.history)
        return f"{n} epoch{'s' * (n != 1)}{', interrupted' if self.interrupted else ''}, {best}"

    def __repr__(self) -> str:
        return f"TrainResult({self._headline()}; {self.model_path}; {self.seconds:.1f}s)"

    def _repr_html_(self) -> str:
        from pawlab import display

        about = {
            "model": str(self.model_path),
            "run directory": str(self.run_dir),
            "classes": f"{len(self.classes)}: {', '.join(self.classes)}",
            "epochs": f"{len(self.history)}{' (interrupted)' if self.interrupted else ''}",
            "took": f"{self.seconds:.1f}s",
        }
        best = {("best epoch" if k == "epoch" else k): v for k, v in self.best.items()}
        if "best epoch" in best:
            best["best epoch"] = int(best["best epoch"])
        parts = [display.fields(about), display.fields(best), display.curves(self.history)]
        return display.section(f"pawlab TrainResult: {self._headline()}", *parts)


@dataclass(frozen=True)
class _Run:
    """What the phases of one run share: its data, model file, run directory and settings."""

    ds: Dataset
    card: ModelCard  # what the model file says of itself (architecture, classes, recipe, ...)
    pre: Preprocessing  # how images become the network's input (the card's, resolved)
    out: Path
    run_dir: Path
    callbacks: Sequence[Callback]
    stream: TextIO | None
    runtime: RuntimeConfig


def resolve_architecture(arch: str | Sequence[LayerSpec]) -> list[LayerSpec]:
    """A registered name or a layer list -> a validated layer list."""
    if isinstance(arch, str):
        return get_architecture(arch)
    return validate_spec(list(arch))


def default_run_dir(out: Path | None, arch_name: str) -> Path:
    if out is not None:
        return out.with_name(out.stem + "-run")
    return Path("runs") / f"{arch_name}-{datetime.now():%Y%m%d-%H%M%S}"


def run_dir_for(
    run_dir: str | os.PathLike[str] | None, out: str | os.PathLike[str] | None, arch: object
) -> Path:
    """Where `train` writes: ``run_dir``, else beside ``out`` (``<out>-run/``), else
    ``runs/<arch>-<time>/`` (``net`` for a layer list)."""
    if run_dir is not None:
        return Path(run_dir)
    return default_run_dir(Path(out) if out is not None else None, arch if isinstance(arch, str) else "net")


def resumed_run_dir(path: Path, training: TrainingRecord | None = None) -> Path:
    """Where `resume` of ``path`` writes: the run directory itself, or the one its model file
    records (``training``: the file's training record, read from the file if not given)."""
    if path.is_dir():
        return path
    if training is None:
        training = checkpoint.read_card(path).training or TrainingRecord()
    return Path(training.run_dir or path.with_name(path.stem + "-run"))


@dataclass(frozen=True)
class _Source:
    """Where a run's images come from and how they are split and read: `train`'s and `resume`'s
    data arguments, loaded for a network's input (`load`)."""

    data: str | os.PathLike[str] | Dataset
    val_fraction: float = 0.2
    layout: str = "auto"
    workers: int = 0

    def load(self, spec: list[LayerSpec], config: TrainConfig, resize: str, progress: bool) -> Dataset:
        """The images at the network's input size and ``resize`` policy (its `Preprocessing`'s),
        split by the recipe's data seed; a loaded `Dataset` must match them."""
        c, h, w = input_shape(spec)
        if h != w:
            raise ConfigError("size: non-square inputs are not supported by the data loader yet")
        if isinstance(self.data, Dataset):
            return _matching(self.data, (c, h, w), resize)
        cfg = DataConfig(
            size=h,
            val_fraction=self.val_fraction,
            seed=config.data_seed,
            workers=self.workers,
            resize=resize,
            layout=self.layout,
        )
        with main_first():  # rank 0 builds the packed cache; the others then read it
            return load_dataset(self.data, cfg, channels=c, progress=progress and is_main())


def _matching(data: Dataset, shape: tuple[int, int, int], resize: str) -> Dataset:
    c, h, w = shape
    if data.size != (h, w) or data.train.images.shape[-1] != c:
        raise ConfigError(f"data: loaded at {data.size} but the network expects {c}x{h}x{w}")
    if data.resize != resize:
        raise ConfigError(f"data: loaded with resize={data.resize} but the network expects resize={resize}")
    return data


def _model_card(
    spec: list[LayerSpec],
    classes: list[str],
    pre: Preprocessing,
    config: TrainConfig,
    data: dict[str, Any],
    run_dir: Path,
) -> ModelCard:
    """The model file's card (the loop adds metrics, history and state)."""
    training = TrainingRecord(
        config=config.to_json(), data=data, monitor=config.monitor, run_dir=str(run_dir.resolve())
    )
    return ModelCard(
        pawlab_version=__version__,
        architecture=spec,
        classes=classes,
        preprocessing=pre.to_json(),
        training=training,
    )


@entry_point
def train(
    data: str | os.PathLike[str] | Dataset,
    out: str | os.PathLike[str] | None = None,
    arch: str | Sequence[LayerSpec] = DEFAULT_ARCH,
    config: TrainConfig = TrainConfig(),
    *,
    size: int | None = None,
    resize: str | None = None,
    val_fraction: float = 0.2,
    layout: str = "auto",
    workers: int = 0,
    run_dir: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Callback] = (),
    stream: TextIO | None = None,
    patience: int | None = None,
    runtime: RuntimeConfig = RuntimeConfig(),
    overwrite: bool = False,
) -> TrainResult:
    """Train a network on ``data`` (a prepared folder, any source `prepare` accepts, or a
    loaded `Dataset`) and write the best model (by ``config.monitor``) to ``out``. An existing
    model file or an earlier run's logs are an error unless ``overwrite``; so is a run
    directory another training is writing.

    The run directory (default: beside ``out`` as ``<out>-run/``, or ``runs/<arch>-<time>/``)
    holds ``config.json``, ``metrics.jsonl``, ``events.jsonl`` and ``last.safetensors``, the
    state that `resume` continues from. ``resize`` (``squash`` or ``crop``) defaults to
    ``crop`` for a pretrained backbone, as it was trained, and ``squash`` otherwise. ``layout``:
    how a source's top folders are read (`DataConfig.layout`). ``runtime``: device, precision,
    progress (never saved with the recipe).
    """
    if patience is not None:
        config = config.with_(patience=patience)
    spec = resolve_architecture(arch)
    if size is not None:
        spec = with_input_size(spec, size)
    out_path = Path(out) if out is not None else None
    run = run_dir_for(run_dir, out_path, arch)
    out_path = out_path or run / runlog.MODEL
    _check_fine_tune(config, spec)  # before anything is made
    _check_features_route(runtime, spec, config)
    pre = preprocessing_for(spec, resize)  # a bad resize too
    with _claimed(out_path, run, fresh=True, overwrite=overwrite):
        source = _Source(data, val_fraction, layout, workers)
        return _train(source, pre, out_path, run, spec, config, callbacks, stream, runtime)


def _train(
    source: _Source,
    pre: Preprocessing,
    out_path: Path,
    run: Path,
    spec: list[LayerSpec],
    config: TrainConfig,
    callbacks: Sequence[Callback],
    stream: TextIO | None,
    runtime: RuntimeConfig,
) -> TrainResult:
    ds = source.load(spec, config, pre.resize, progress=runtime.progress)
    torch.manual_seed(config.seed)
    network = build(spec, num_classes=len(ds.classes))
    data_record = {
        "source": ds.source,
        "origin": ds.origin,
        "presplit": ds.presplit,
        "val_fraction": source.val_fraction,
        "seed": config.data_seed,
        "train_count": len(ds.train),
        "validation_count": len(ds.validation),
    }
    card = _model_card(spec, ds.classes, pre, config, data_record, run)
    return _fit_run(network, config, _Run(ds, card, pre, out_path, run, callbacks, stream, runtime), None)


@contextmanager
def _claimed(out: Path, run: Path, *, fresh: bool, overwrite: bool) -> Iterator[None]:
    """A training's outputs, checked before any work and held until it ends: the model file
    and run directory can be written, no other training holds the run directory, and a new
    run replaces nothing of an earlier one unless ``overwrite`` (under torchrun: rank 0's)."""
    if not is_main():
        yield
        return
    check_output_file(out, "model file")
    check_output_folder(run, "run directory")
    with runlog.locked(run):
        if fresh and not overwrite and out.exists():
            raise OutputError(
                f"{out}: a model file is already there (--overwrite replaces it, --resume continues it)"
            )
        if fresh and not overwrite and (run / runlog.METRICS).exists():
            raise OutputError(
                f"{run}: holds an earlier run's logs (--overwrite starts it afresh, --resume continues it, "
                "--run-dir names another)"
            )
        yield


def _resumed_config(config: TrainConfig, epochs: int | None, forever: bool) -> TrainConfig:
    if forever:
        return config.with_(epochs=None)
    if epochs is not None:
        if epochs <= config.schedule_start:
            raise ConfigError(
                f"epochs: must be above {config.schedule_start}, the epoch this run's fine-tuning began after"
            )
        return config.with_(epochs=epochs)
    return config


@entry_point
def resume(
    path: str | os.PathLike[str],
    data: str | os.PathLike[str] | Dataset | None = None,
    *,
    epochs: int | None = None,
    forever: bool = False,
    out: str | os.PathLike[str] | None = None,
    workers: int = 0,
    callbacks: Sequence[Callback] = (),
    stream: TextIO | None = None,
    runtime: RuntimeConfig = RuntimeConfig(),
) -> TrainResult:
    """Continue a run from its run directory (its ``last.safetensors``) or a model file:
    weights, optimizer, schedule, epoch, random state and the best score so far, so that a
    resumed run never replaces a better model with a worse one. ``epochs`` raises the total.
    The recipe is the saved one; ``runtime`` (device, precision, progress) is this call's.
    """
    p = Path(path)
    state_file = p / runlog.LAST_STATE if p.is_dir() else p
    ck = checkpoint.load(state_file, with_optimizer=True)
    card, t = ck.card, ck.card.training
    if t is None or t.config is None or t.data is None or card.architecture is None:
        raise ModelFileError(f"{state_file}: has no training state to resume from")
    config = _resumed_config(TrainConfig.from_json(t.config), epochs, forever)
    spec, pre = card.architecture, Preprocessing.from_json(card.preprocessing or {})
    _check_features_route(runtime, spec, config)  # before the data is read
    d = t.data
    given = data if data is not None else d["source"]
    source = _Source(given, d["val_fraction"], layout_of(d.get("origin") or {}), workers)
    ds = source.load(spec, config, pre.resize, progress=runtime.progress)
    if ds.classes != card.classes:
        raise ConfigError(f"data: classes {ds.classes} differ from the run's {card.classes}")
    run = resumed_run_dir(p, t)
    out_path = Path(out) if out is not None else run / runlog.MODEL
    if out is None and not out_path.exists():
        out_path = Path((runlog.read_config(run) or {}).get("model", out_path))
    network = build(spec, num_classes=len(ds.classes), pretrained=False)  # the state has every weight
    network.load_state_dict(ck.model_state)  # before a frozen backbone's features are computed
    new_card = _model_card(spec, ds.classes, pre, config, d, run)
    resumed = _Run(ds, new_card, pre, out_path, run, callbacks, stream, runtime)
    with _claimed(out_path, run, fresh=False, overwrite=True):
        return _fit_run(network, config, resumed, ck)


def _unfrozen(spec: Sequence[LayerSpec]) -> list[LayerSpec] | None:
    """``spec`` with its frozen backbone trainable; None when it has no frozen backbone."""
    if not any(
        layer.get("type") in ("backbone", "pretrained") and layer.get("frozen", True) for layer in spec
    ):
        return None
    return [
        {**layer, "frozen": False} if layer.get("type") in ("backbone", "pretrained") else dict(layer)
        for layer in spec
    ]


def _check_fine_tune(config: TrainConfig, spec: Sequence[LayerSpec]) -> None:
    if config.fine_tune_epochs and (_unfrozen(spec) is None or config.epochs is None):
        raise ConfigError(
            "fine_tune_epochs: needs a frozen pretrained backbone (--backbone) and a number of epochs"
        )


# The unfrozen phase's head rate is the head phase's over this. Chosen on cats_and_dogs_filtered's
# train/ split 80/20 (1 unfrozen epoch after 20 of the head, batch-norm statistics kept):
# lr/2 (fastai's) gave val loss 0.042 and lr/30 0.021, against 0.019 for the head alone.
FINE_TUNE_LR_DIVISOR = 30.0


def _fine_tune_config(config: TrainConfig, done: int) -> TrainConfig:
    """The unfrozen phase's recipe, after ``done`` epochs of the head."""
    return config.with_(
        epochs=done + config.fine_tune_epochs,
        schedule_start=done,
        schedule="one-cycle",
        lr=config.learning_rate / FINE_TUNE_LR_DIVISOR
        if config.fine_tune_lr is None
        else config.fine_tune_lr,
        lr_spread=config.lr_spread if config.lr_spread > 1 else 100.0,
        fine_tune_epochs=0,
    )


def _fit_run(
    network: Network, config: TrainConfig, run: _Run, resumed: checkpoint.Checkpoint | None
) -> TrainResult:
    """The run: its sets, its callbacks and phases on one `Trainer`, and what came of it."""
    start = time.perf_counter()
    _check_fine_tune(config, run.card.architecture or [])
    train_set, val_set = _sets(network, run.ds, config, run.runtime, run.pre)
    best = BestCheckpoint(run.out, config.monitor)  # one best score to beat, over every phase
    callbacks = _callbacks(config, run, best, fresh=resumed is None)
    trainer = Trainer(
        network, train_set, val_set, config, run.pre, callbacks, run.card, run.stream, run.runtime
    )
    if resumed is not None:
        trainer.load_checkpoint(resumed)
    done = trainer.run(_phases(config, run))
    if not done.history:
        raise KeyboardInterrupt  # stopped before the first epoch ended: nothing was saved
    metrics = best.best_metrics(done.history)
    seconds = time.perf_counter() - start
    return TrainResult(run.out, run.run_dir, done.history, metrics, run.ds.classes, done.interrupted, seconds)


def _phases(config: TrainConfig, run: _Run) -> list[Phase]:
    """With ``config.fine_tune_epochs``, fastai's ``fine_tune``: the best model of the head's
    training with its backbone unfrozen for that many more epochs, at ``fine_tune_lr`` (default
    the head's rate / `FINE_TUNE_LR_DIVISOR`) spread over the backbone's stages (``lr_spread``,
    default 100), a new one-cycle schedule, the same run directory and best score to beat."""
    unfrozen = _unfrozen(run.card.architecture or [])
    if not config.fine_tune_epochs or unfrozen is None:
        return []
    whole = partial(_unfrozen_network, unfrozen, len(run.ds.classes))
    tuned = partial(_fine_tune_config, config)
    ds = run.ds
    return [Phase("fine-tuning the whole network", whole, unfrozen, tuned, ds.train, ds.validation)]


def _unfrozen_network(spec: list[LayerSpec], classes: int, head: torch.nn.Module) -> Network:
    """The network of ``spec`` (its backbone trainable) with the weights of ``head``'s."""
    network = build(spec, num_classes=classes, pretrained=False)
    network.load_state_dict(head.state_dict())
    return network


def _callbacks(config: TrainConfig, run: _Run, best: BestCheckpoint, *, fresh: bool) -> list[Callback]:
    v, pre = run.ds.validation, run.pre
    cbs: list[Callback] = [
        RunDirectory(run.run_dir, run.out, run.ds, fresh),
        NaNGuard(),
        best,
        MetricsLog(run.run_dir / runlog.METRICS),
        EventLog(run.run_dir / runlog.EVENTS),
        LastState(run.run_dir / runlog.LAST_STATE),
        ValidationLog(run.run_dir, v.images, v.names, v.labels, v.classes),
        TypicalityLog(run.run_dir),
        InputsLog(run.run_dir, pre, v.images),
        ProgressPrinter(run.stream, bar=run.runtime.progress),
        *run.callbacks,
        # what the finished model's file records of it: bf16's agreement, its unknowns
        InferenceAgreement(v.images, v.labels, pre),
        InDistribution(pre),
    ]
    if config.patience is not None:
        cbs.append(EarlyStopping(config.patience))
    return cbs


def _sets(
    network: Network, ds: Dataset, config: TrainConfig, rt: RuntimeConfig, pre: Preprocessing
) -> tuple[ImageSet, ImageSet]:
    """The training and validation sets: with a frozen backbone first, as its cached features
    (`FeatureSet`, mirrored too when augmenting with flips, as `TrainConfig.mirrored_views`
    says); the images themselves when there is no frozen trunk, or augmentations other than flips."""
    if _why_no_features(config, frozen_backbone=network.trunk_length is not None):
        return ds.train, ds.validation
    device = resolve_device(rt.device)
    trunk = network.trunk.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    views = ("plain", "flip") if config.mirrored_views(len(ds.train)) else ("plain",)
    # compiled when the job is long, both passes (the second finds the code in inductor's cache)
    passes = len(ds.train) * len(views) + len(ds.validation)
    compile = device.type == "cpu" and passes >= COMPILE_MIN_IMAGES
    route = _features_route(rt, trunk, pre, device, ds.train.images, compile)
    # int8's activation ranges from training images: both sets' features from the same graph
    calibration = ds.train.images[calibration_rows(len(ds.train))] if route.precision == "int8" else None
    show = rt.progress and is_main()
    features = partial(
        trunk_features, trunk, pre=pre, device=device, route=route, calibration=calibration,
        compile=compile, progress=show,
    )  # fmt: skip
    with main_first():  # rank 0 computes and caches; the others then read the cache
        train_feats = features(ds.train.images, views=views, what="training images")
        val_feats = features(ds.validation.images, what="validation images")
    t, v = ds.train, ds.validation
    label = features_label(route)
    return FeatureSet(train_feats, t.labels, t.names, t.classes, label), FeatureSet(
        val_feats, v.labels, v.names, v.classes, label
    )


def _features_route(
    rt: RuntimeConfig,
    trunk: torch.nn.Module,
    pre: Preprocessing,
    device: torch.device,
    train_images: np.ndarray,
    long_job: bool,
) -> Route:
    """What computes the frozen trunk's features (`pawlab.inference.feature_routes`): as asked;
    with ``auto``, torch bf16 where it is fast (the head learns from them as well as from fp32's:
    bench/transfer.py features), else, for a long job of one backbone on a CPU, the route
    measured fastest here (once per backbone), else torch fp32."""
    route = feature_route(rt.runtime, rt.precision, device)
    ensemble = bool(backbone_members(trunk))
    if route is not None and route.runtime == "onnxruntime" and ensemble:
        raise ConfigError(
            f"{_route_flag(rt)}: a single backbone only (an ensemble's members resize the input "
            f"inside the network, which ONNX opset 17 cannot express); {_torch_instead(rt)}"
        )
    if route is None:  # rank 0 measures (once per backbone and CPU); every rank trains on its choice
        measured = long_job and not ensemble
        route = decided_by_main(lambda: choose(trunk, pre, train_images) if measured else TORCH_FP32)
    return route


def _route_flag(rt: RuntimeConfig) -> str:
    """The flag that put a run's features in onnxruntime."""
    return "--runtime onnxruntime" if rt.runtime == "onnxruntime" else "--precision int8"


def _torch_instead(rt: RuntimeConfig) -> str:
    return "use --runtime torch" if rt.runtime == "onnxruntime" else "use --precision auto, fp32 or bf16"


def _check_features_route(rt: RuntimeConfig, spec: Sequence[LayerSpec], config: TrainConfig) -> None:
    """A one-line `ConfigError`, before any work, where the settings ask for a features route
    (onnxruntime, int8) that a run without cached backbone features has no use for."""
    if rt.runtime != "onnxruntime" and rt.precision != "int8":
        return
    why = _why_no_features(config, frozen_backbone=_unfrozen(spec) is not None)
    if why is not None:
        raise ConfigError(f"{_route_flag(rt)}: only a frozen backbone's cached features run there, and {why}")


def _why_no_features(config: TrainConfig, *, frozen_backbone: bool) -> str | None:
    """Why a run trains on its images rather than a frozen backbone's cached features, or None."""
    if not frozen_backbone:
        return "the network has no frozen backbone"
    if replace(config.augment, flip=False).enabled:
        return "augmentations other than flips train on the images themselves"
    if not config.cache_features:
        return "backbone features are not cached (cache_features is off)"
    return None
