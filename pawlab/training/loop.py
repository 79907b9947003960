"""The training loop: one plain loop with named events; everything else is a callback.

`Trainer` runs a whole run: epochs over in-memory sets, and then any later `Phase` (fastai's
``fine_tune``: the head, then the whole network), each a fit of its own. It fires the events of
`Event` to its `Callback`s, in this order for each fit: ``before_fit``; per epoch
``before_epoch``, per batch ``before_batch``/``after_batch``, then
``before_validation``/``after_validation`` (with what validation produced, a `Validation`) and
``after_epoch``; ``on_exception`` when an error ends the run (not Ctrl-C or SIGTERM, which stop
it cleanly); and ``after_fit``, always, last. Checkpoints, the resumable state, the logs,
progress, early stopping and the NaN guard are callbacks (`pawlab.training.callbacks`), and the
loop knows none of them: it assembles a model file's contents (`Trainer.dump_checkpoint`), to
which every callback contributes through ``on_save_checkpoint``, and a callback writes it where
it keeps one.

Under ``torchrun`` the loop is data-parallel (DDP): every process draws the same shuffled
order and takes its own share of each batch; gradients are averaged; only rank 0 writes.
"""

from __future__ import annotations

import difflib
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist

from pawlab import checkpoint
from pawlab.config import RuntimeConfig, TrainConfig
from pawlab.data import ImageSet
from pawlab.errors import ConfigError, ModelFileError
from pawlab.models.network import Network
from pawlab.preprocessing import Preprocessing
from pawlab.runtime import is_distributed, is_main, rank, resolve_device, use_bf16, world_size
from pawlab.training.inputs import FeatureInputs, ImageInputs, Inputs, class_weights, epoch_order
from pawlab.training.objectives import Batch, Classification, Objective, Validation
from pawlab.training.optim import lr_factor, make_optimizer, param_groups

__all__ = ["Callback", "Event", "FeatureSet", "Phase", "TrainState", "Trainer"]


class Event(StrEnum):
    """The loop's events; each is the name of a `Callback` method."""

    BEFORE_FIT = "before_fit"
    BEFORE_EPOCH = "before_epoch"
    BEFORE_BATCH = "before_batch"
    AFTER_BATCH = "after_batch"
    BEFORE_VALIDATION = "before_validation"
    AFTER_VALIDATION = "after_validation"  # called with the pass's `Validation` as well
    AFTER_EPOCH = "after_epoch"
    ON_EXCEPTION = "on_exception"  # called with the error as well
    AFTER_FIT = "after_fit"


_PREFIXES = ("before_", "after_", "on_")
# not events: the loop calls them as it assembles a model file, and as it continues from one
_HOOKS = ("on_save_checkpoint", "on_load_checkpoint")


class Callback:
    """Override any of the event methods; ``order`` sorts callbacks (lower runs first).

    A callback with state to survive a resume implements ``state_dict``/``load_state_dict``;
    its state is saved under its ``state_key``, which must be unique among a run's callbacks.
    ``on_save_checkpoint`` adds what the callback knows to a model file's contents. Only the
    process of rank 0 writes files or prints (see ``trainer.is_main``).

    A method named almost like an event (``after_epcoh``) is a `TypeError` when the class is
    defined, not a callback that silently never runs."""

    order = 0
    _state_key: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        events = [e.value for e in Event]
        for name, value in vars(cls).items():
            if not callable(value) or not name.startswith(_PREFIXES) or name in (*events, *_HOOKS):
                continue
            close = difflib.get_close_matches(name, events, n=1, cutoff=0.8)
            if close:
                raise TypeError(
                    f"{cls.__name__}.{name} is not an event of the training loop: did you mean "
                    f"{close[0]}? (a helper method's name starts with _)"
                )

    @property
    def state_key(self) -> str:
        """Where this callback's state is saved (its class name unless set): two callbacks
        with state need keys of their own."""
        return self._state_key or type(self).__name__

    @state_key.setter
    def state_key(self, key: str) -> None:
        self._state_key = key

    def before_fit(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def before_batch(self, trainer: Trainer) -> None: ...
    def after_batch(self, trainer: Trainer) -> None: ...
    def before_validation(self, trainer: Trainer) -> None: ...
    def after_validation(self, trainer: Trainer, validation: Validation) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def on_exception(self, trainer: Trainer, error: BaseException) -> None: ...
    def after_fit(self, trainer: Trainer) -> None: ...

    def on_save_checkpoint(self, trainer: Trainer, ck: checkpoint.Checkpoint) -> checkpoint.Checkpoint:
        """``ck`` with what this callback adds to the model file (by default nothing)."""
        return ck

    def on_load_checkpoint(self, trainer: Trainer, ck: checkpoint.Checkpoint) -> None:
        """Read what this callback keeps in a model file's card, when a run continues from it."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class TrainState:
    """What callbacks can read (and a few things they may set)."""

    epoch: int = 0  # epochs completed; during an epoch, the 1-based number of the running one
    batch: int = 0
    batch_loss: float = math.nan
    batch_size: int = 0
    steps: int = 0  # optimizer steps taken
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch's, after validation
    history: list[dict[str, float]] = field(default_factory=list)
    improved: bool = False  # set by the checkpoint callback for this epoch
    stop: bool = False  # set by a callback to end training after this epoch
    interrupted: bool = False  # Ctrl-C or SIGTERM
    error: BaseException | None = None  # what ended the run, if an error did
    inputs: torch.Tensor | None = None  # during after_batch, the batch the network was given
    labels: torch.Tensor | None = None  # during after_batch, that batch's labels (B,)
    epoch_images: int = 0  # images trained on so far in the running epoch, all processes
    epoch_started: float = 0.0  # time.perf_counter() when the running epoch's batches began
    phase: str = ""  # the running phase's name ("" for a run's first, `Phase.name` after)
    last_phase: bool = True  # no phase follows this fit: the run ends with it

    def images_per_s(self) -> float:
        """Training images (all processes) per second so far in the running epoch."""
        return self.epoch_images / max(time.perf_counter() - self.epoch_started, 1e-9)


@dataclass(frozen=True)
class Phase:
    """A later stretch of a run (fastai's ``fine_tune``: the head, then the whole network). The
    epochs, history, callbacks and best score go on; the network, recipe and sets are new."""

    name: str  # what the run's lines call it ("fine-tuning the whole network")
    # the last phase's network as the callbacks left it (`BestCheckpoint`: at its best epoch) -> this one's
    network: Callable[[torch.nn.Module], torch.nn.Module]
    architecture: list[dict[str, Any]]  # that network's layer list, for its model files
    config: Callable[[int], TrainConfig]  # the epochs done so far -> this phase's recipe
    train_set: ImageSet
    val_set: ImageSet


@dataclass
class FeatureSet(ImageSet):
    """An `ImageSet` whose ``images`` are a frozen trunk's cached features (N, views, F)
    float32, memory-mapped: the loop trains the network's head on them."""

    # what computed them (`pawlab.inference.feature_routes`): fp32 or bf16 in torch, or
    # "onnxruntime fp32" / "onnxruntime int8"
    precision: str = "fp32"


@dataclass(frozen=True)
class _HeldOut:
    """The validation set as an objective reads it (`pawlab.training.objectives.HeldOut`)."""

    inputs: Inputs
    images: np.ndarray  # uint8 (N, H, W, C) images or (N, views, F) features
    labels: np.ndarray  # (N,)
    batch_size: int
    epoch: int

    def logits(self, network: Network, batch_size: int) -> torch.Tensor:
        return self.inputs.logits(network, self.images, batch_size)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        images, labels = torch.from_numpy(self.images), torch.from_numpy(self.labels)
        for idx in torch.arange(len(images)).split(batch_size):
            x = self.inputs.batch(images[idx], augment=False)
            yield Batch(x, labels[idx].to(x.device), self.epoch)


def _for_training(module: torch.nn.Module, device: torch.device, compile: bool) -> torch.nn.Module:
    """What the loop calls: ``module``, wrapped for DDP under torchrun and compiled if asked."""
    if is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module


def _unique_keys(callbacks: Iterable[Callback]) -> list[Callback]:
    """The callbacks in order; two with state under the same ``state_key`` would overwrite
    each other's."""
    ordered = sorted(callbacks, key=lambda c: c.order)
    keys = [cb.state_key for cb in ordered if type(cb).state_dict is not Callback.state_dict]
    repeated = next((k for k in keys if keys.count(k) > 1), None)
    if repeated is not None:
        raise ConfigError(
            f"callbacks: two callbacks save their state under {repeated!r}; give each a state_key"
        )
    return ordered


class Trainer:
    """Runs epochs of a network over in-memory sets and fires callback events.

    The sets hold images, or (`FeatureSet`) a frozen trunk's cached features, and then only
    ``network.head`` runs; the whole network is what gets saved.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        train_set: ImageSet,
        val_set: ImageSet,
        config: TrainConfig,
        preprocessing: Preprocessing,
        callbacks: Sequence[Callback] = (),
        card: checkpoint.ModelCard | None = None,
        stream: TextIO | None = None,
        runtime: RuntimeConfig = RuntimeConfig(),
        objective: Objective | None = None,
    ) -> None:
        self.runtime, self.preprocessing, self.given_objective = runtime, preprocessing, objective
        self.stream = stream or sys.stdout
        self.device = resolve_device(runtime.device)
        self.bf16 = use_bf16(runtime.precision, self.device)
        self.callbacks = _unique_keys(callbacks)
        self.state = TrainState()
        self.card = card or checkpoint.ModelCard()  # what the run's model files say of it
        self._take(network, train_set, val_set, config)

    def _take(
        self, network: torch.nn.Module, train_set: ImageSet, val_set: ImageSet, config: TrainConfig
    ) -> None:
        """Train ``network`` on these sets by ``config`` from now on: new inputs, optimizer and
        generators (seeded by the recipe)."""
        self.config = config
        fmt = torch.channels_last if self.runtime.channels_last else torch.contiguous_format
        self.network = network.to(self.device).to(memory_format=fmt)  # type: ignore[call-overload]
        self.train_set, self.val_set = train_set, val_set
        self.gen = torch.Generator().manual_seed(config.seed)  # shuffling: the same on every rank
        self.aug_gen = torch.Generator().manual_seed(config.seed * 1000 + self.rank + 1)
        self.inputs: Inputs = (
            FeatureInputs(self.device, self.aug_gen)
            if isinstance(train_set, FeatureSet)
            else ImageInputs(self.preprocessing, self.device, fmt, config.augment, self.aug_gen)
        )
        self.model = _for_training(self.inputs.learner(self.network), self.device, self.runtime.compile)
        # frozen parts (a pretrained backbone) have no gradients and no optimizer state
        self.optimizer = make_optimizer(param_groups(self.network, config), config)
        self.objective: Objective = self._objective(self.given_objective)

    def _objective(self, objective: Objective | None) -> Objective:
        """``objective``, or cross-entropy with the recipe's class weights and label smoothing
        (which another objective would silently ignore)."""
        config = self.config
        if objective is not None:
            if config.balance == "weights" or config.label_smoothing:
                raise ConfigError("balance=weights and label_smoothing are for classifiers' cross-entropy")
            return objective
        weights = (
            class_weights(self.train_set.labels, len(self.train_set.classes))
            if config.balance == "weights"
            else None
        )
        return Classification(None if weights is None else weights.to(self.device), config.label_smoothing)

    # -- where this process stands
    @property
    def rank(self) -> int:
        return rank()

    @property
    def world_size(self) -> int:
        return world_size()

    @property
    def is_main(self) -> bool:
        return is_main()

    # -- events and helpers
    def emit(self, event: Event, *data: Any) -> None:
        """Call every callback's method for ``event`` with the trainer and the event's data."""
        name = Event(event).value  # an unknown name is a ValueError, not a silent no-op
        if name == Event.ON_EXCEPTION:
            raise ValueError("on_exception carries the error: the loop fires it itself")
        for cb in self.callbacks:
            getattr(cb, name)(self, *data)

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, file=self.stream, flush=True)

    @property
    def per_process_batch(self) -> int:
        return max(1, math.ceil(self.config.batch_size / self.world_size))

    @property
    def batches_per_epoch(self) -> int:
        per_process = len(self.train_set) * self.config.augment_copies // self.world_size
        return math.ceil(per_process / self.per_process_batch)

    @property
    def lr(self) -> float:  # the head's (the largest) learning rate
        return max(float(g["lr"]) for g in self.optimizer.param_groups)

    def _set_lr(self) -> None:
        factor = lr_factor(self.config, self.state.steps, self.batches_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate * factor * group.get("lr_scale", 1.0)

    # -- one epoch
    def _order(self) -> torch.Tensor:
        order = epoch_order(self.train_set.labels, self.config, self.gen)
        if is_distributed():
            # every process takes an equal share (a few images of the epoch's tail are left out),
            # so that all take the same number of steps: DDP's gradient exchange needs that
            order = order[: len(order) // self.world_size * self.world_size][self.rank :: self.world_size]
        return order

    def _step(self, idx: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor) -> float:
        """One optimizer step on the rows ``idx``; returns the batch's loss."""
        x = self.inputs.batch(x_all[idx], augment=True)
        self.state.inputs = x
        y = self.state.labels = y_all[idx].to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.objective.loss(self.model, Batch(x, y, self.state.epoch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def train_epoch(self) -> tuple[float, float]:
        """(mean training loss, images per second of this process)."""
        self.model.train()
        total, count = 0.0, 0
        t0 = self.state.epoch_started = time.perf_counter()
        self.state.epoch_images = 0
        # uint8 (N, H, W, C) images (or features) stay on the host; a batch at a time goes over
        x_all, y_all = torch.from_numpy(self.train_set.images), torch.from_numpy(self.train_set.labels)
        for i, idx in enumerate(self._order().split(self.per_process_batch)):
            self.state.batch, self.state.batch_size = i, len(idx)
            self.emit(Event.BEFORE_BATCH)
            self._set_lr()
            self.state.batch_loss = self._step(idx, x_all, y_all)
            self.state.steps += 1
            total += self.state.batch_loss * len(idx)
            count += len(idx)
            self.state.epoch_images = count * self.world_size
            self.emit(Event.AFTER_BATCH)
            self.state.inputs = self.state.labels = None  # seen by callbacks; validation needs the memory
        seconds = max(time.perf_counter() - t0, 1e-9)
        if is_distributed():  # the loss over every process's share
            self._average_buffers()
            sums = torch.tensor([float(total), float(count)], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            return float(sums[0]) / max(float(sums[1]), 1.0), count / seconds
        return total / max(count, 1), count / seconds

    def _average_buffers(self) -> None:
        """Batch-norm statistics are updated by each process on its own share: average them
        so that every process validates and saves the same model."""
        for buf in self.network.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.world_size)

    def validate(self) -> Validation:
        """The objective's pass over the whole validation set (computed alike on every rank):
        for a classifier, loss and accuracy, and each image's class probabilities."""
        val = self.val_set
        held = _HeldOut(self.inputs, val.images, val.labels, self.config.batch_size, self.state.epoch)
        return self.objective.validate(self.network, held)

    def _run_epoch(self, epoch: int) -> None:
        self.state.epoch, self.state.improved = epoch, False
        self.emit(Event.BEFORE_EPOCH)
        t0 = time.perf_counter()
        train_loss, rate = self.train_epoch()
        self.emit(Event.BEFORE_VALIDATION)
        validation = self.validate()
        metrics = {
            "epoch": float(epoch),
            "train_loss": train_loss,
            **validation.metrics,
            "lr": self.lr,
            "images_per_s": rate * self.world_size,
        }
        metrics["seconds"] = time.perf_counter() - t0
        self.state.metrics = metrics
        self.state.history.append(metrics)  # the same dict: callbacks see one record
        self.emit(Event.AFTER_VALIDATION, validation)
        self.emit(Event.AFTER_EPOCH)

    def fit(self) -> TrainState:
        """Train until ``config.epochs`` (forever if None), a callback's ``stop``, Ctrl-C or
        SIGTERM (a clean stop: ``state.interrupted``) or an error (``on_exception``, then
        raised). ``after_fit`` fires in every case."""
        epochs = self.config.epochs
        start = self.state.epoch + 1
        numbers = itertools.count(start) if epochs is None else range(start, epochs + 1)
        try:
            self.emit(Event.BEFORE_FIT)
            for epoch in numbers:
                self._run_epoch(epoch)
                if self.state.stop:
                    break
        except KeyboardInterrupt:
            self.state.interrupted = True
            running = self.state.epoch >= start  # not when stopped in before_fit
            if running and (not self.state.history or self.state.history[-1]["epoch"] != self.state.epoch):
                self.state.epoch -= 1  # the running epoch did not finish: a resume starts it again
        except BaseException as exc:
            self.state.error = exc
            for cb in self.callbacks:
                cb.on_exception(self, exc)
            raise
        finally:
            self.emit(Event.AFTER_FIT)
        return self.state

    def run(self, then: Sequence[Phase] = ()) -> TrainState:
        """The whole run: `fit`, then each phase of ``then`` (unless a phase was interrupted
        or ended before its first epoch), each beginning where the one before left the network."""
        phases = list(then)
        self.state.last_phase = not phases
        state = self.fit()
        while phases and state.history and not state.interrupted:
            self._begin(phases.pop(0), last=not phases)
            state = self.fit()
        return state

    def _begin(self, phase: Phase, *, last: bool) -> None:
        """Go on with ``phase``: its epochs are counted on from the last phase's, its steps as
        whole epochs of its own batches (its schedule starts at ``config.schedule_start``)."""
        done, history = self.state.epoch, self.state.history
        config = phase.config(done)
        self._take(phase.network(self.network), phase.train_set, phase.val_set, config)
        self.state = TrainState(epoch=done, history=history, metrics=dict(history[-1]), phase=phase.name)
        self.state.steps, self.state.last_phase = done * self.batches_per_epoch, last
        training = replace(self.card.training or checkpoint.TrainingRecord(), config=config.to_json())
        self.card = replace(self.card, architecture=phase.architecture, training=training)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a run continues from: weights, optimizer, random generators, the loop's
        counters and history, and each callback's state under its ``state_key``."""
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "shuffle": self.gen.get_state(),
                "augment": self.aug_gen.get_state(),
                "torch": torch.get_rng_state(),
            },
            "loop": {
                "epoch": self.state.epoch,
                "steps": self.state.steps,
                "history": self.state.history,
                "metrics": self.state.metrics,
            },
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_dict()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from the parts of a `state_dict` that ``state`` has (a fine-tuning phase
        carries on only the loop's epochs and history and the best score; its steps are then
        counted as whole epochs of this trainer's batches)."""
        if "model" in state:
            self.network.load_state_dict(state["model"])
        saved = state.get("optimizer")
        if saved is not None:
            groups, ours = len(saved.get("param_groups", [])), len(self.optimizer.param_groups)
            if groups != ours:  # e.g. a run begun before weight decay spared biases and norms
                raise ModelFileError(
                    f"the saved optimizer state has {groups} parameter groups, this pawlab makes {ours}: "
                    "resume it with the pawlab that began it, or start a new run"
                )
            self.optimizer.load_state_dict(saved)
        rng = state.get("rng") or {}
        if "shuffle" in rng:
            self.gen.set_state(rng["shuffle"])
            self.aug_gen.set_state(rng["augment"])
            torch.set_rng_state(rng["torch"])
        loop = state.get("loop", {})
        self.state.epoch = int(loop.get("epoch", 0))
        self.state.steps = int(loop.get("steps", self.state.epoch * self.batches_per_epoch))
        self.state.history = list(loop.get("history", []))
        self.state.metrics = dict(loop.get("metrics", {}))
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in saved:
                cb.load_state_dict(saved[cb.state_key])

    def dump_checkpoint(self) -> checkpoint.Checkpoint:
        """What a model file of this moment holds: weights, metrics and the full training
        state, with each callback's ``on_save_checkpoint`` contribution. Its tensors are the
        live ones: whoever keeps it past the next step copies them."""
        state = self.state_dict()
        training = replace(
            self.card.training or checkpoint.TrainingRecord(),
            epoch=self.state.epoch,
            steps=self.state.steps,
            callbacks=state["callbacks"],
        )
        card = replace(self.card, metrics=self.state.metrics, history=self.state.history, training=training)
        ck = checkpoint.Checkpoint(card, state["model"], state["optimizer"], state["rng"])
        for cb in self.callbacks:
            ck = cb.on_save_checkpoint(self, ck)
        return ck

    def load_checkpoint(self, ck: checkpoint.Checkpoint) -> None:
        """Continue from a model file's training state; each callback reads its part."""
        self.load_state_dict(state_from_checkpoint(ck))
        for cb in self.callbacks:
            cb.on_load_checkpoint(self, ck)


def state_from_checkpoint(ck: checkpoint.Checkpoint) -> dict[str, Any]:
    """A model file's training state in the form `Trainer.load_state_dict` takes."""
    t = ck.card.training or checkpoint.TrainingRecord()
    return {
        "model": ck.model_state,
        "optimizer": ck.optimizer_state,
        "rng": ck.rng,
        "loop": {
            "epoch": int(t.epoch or 0),
            "steps": int(t.steps or 0),
            "history": list(ck.card.history or []),
            "metrics": dict(ck.card.metrics or {}),
        },
        "callbacks": dict(t.callbacks or {}),
    }
