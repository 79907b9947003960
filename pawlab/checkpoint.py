"""The self-describing model file: one ``.safetensors`` file, no pickle.

Tensors: the network's weights under ``model.`` and, for resuming, the optimizer's state
tensors under ``optim.`` and the random generators' states under ``rng.``; what else a model
carries under names of its own (``unknown.``: its in-distribution model, `pawlab.unknown`). The safetensors
header's metadata holds one JSON document under the key ``pawlab``, the file's `ModelCard`:
architecture, classes, preprocessing, metrics, history, the training record, the bf16 agreement
record, the in-distribution model's entry. A file alone is enough to predict, evaluate or resume.
The card is read from and written to that document here and nowhere else; keys this pawlab
does not know are kept as they were found, and a key it knows is never written as null.

Files are written atomically (temporary file, fsync, rename): a kill never leaves a broken
model where a good one was.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pawlab.atomic import atomic_write
from pawlab.errors import ArchitectureError, ModelFileError, OutputError

FORMAT = "pawlab-model"
FORMAT_VERSION = 1
MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."
RNG_PREFIX = "rng."


_Record = TypeVar("_Record", "TrainingRecord", "ModelCard")


def _from_json(cls: type[_Record], d: Mapping[str, Any], **parsed: Any) -> _Record:
    """``cls`` from a JSON object: its known keys as fields (``parsed`` in place of the raw
    ones), the others kept in ``other``."""
    known = {f.name for f in fields(cls)} - {"other"}
    values = {k: v for k, v in d.items() if k in known}
    return cls(**{**values, **parsed}, other={k: v for k, v in d.items() if k not in known})


def _to_json(record: TrainingRecord | ModelCard) -> dict[str, Any]:
    """The JSON object of a record: its fields that are set, then the keys it kept."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name != "other" and value is not None:
            out[f.name] = value.to_json() if isinstance(value, TrainingRecord) else value
    return {**out, **record.other}


@dataclass(frozen=True)
class TrainingRecord:
    """How a model was trained (``training`` in the header): enough to resume it. Values are
    JSON as `pawlab.config.TrainConfig.to_json` and the data loader wrote them."""

    config: dict[str, Any] | None = None  # the recipe, `TrainConfig.to_json()`
    data: dict[str, Any] | None = None  # the source, its origin and split, the counts
    monitor: str | None = None
    run_dir: str | None = None  # absolute
    epoch: int | None = None  # epochs completed when the file was written
    steps: int | None = None  # optimizer steps taken
    best: float | None = None  # the best monitored score so far, and its epoch
    best_epoch: int | None = None
    callbacks: dict[str, dict[str, Any]] | None = None  # each callback's state by its state_key
    other: Mapping[str, Any] = field(default_factory=dict)  # keys this pawlab does not know

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrainingRecord:
        return _from_json(cls, d)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)


@dataclass(frozen=True)
class ModelCard:
    """What a model file says of itself: the JSON document of its header, typed. Layer lists,
    preprocessing and records stay JSON as their own modules read them."""

    kind: str | None = None  # "classifier" when absent; "generator" (`pawlab.spec`)
    pawlab_version: str | None = None
    architecture: list[dict[str, Any]] | None = None  # the layer list
    classes: list[str] | None = None
    preprocessing: dict[str, Any] | None = None  # `Preprocessing.to_json()`
    training: TrainingRecord | None = None
    metrics: dict[str, float] | None = None  # the saved epoch's
    history: list[dict[str, float]] | None = None  # every epoch's metrics up to the saved one
    inference: dict[str, Any] | None = None  # the bf16 agreement record (`pawlab.inference.agreement`)
    unknown: dict[str, Any] | None = None  # the in-distribution model's entry (`pawlab.unknown`)
    other: Mapping[str, Any] = field(default_factory=dict)  # keys this pawlab does not know

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelCard:
        t = d.get("training")
        training = TrainingRecord.from_json(t) if isinstance(t, Mapping) else t
        return _from_json(cls, d, **({} if t is None else {"training": training}))

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)


@dataclass
class Checkpoint:
    card: ModelCard
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # random generators' states
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # other tensors, by their full names

    @property
    def meta(self) -> dict[str, Any]:
        """The header's JSON document: the card and the file's format."""
        return _document(self.card)

    def copy(self) -> Checkpoint:
        """A copy whose tensors are its own: kept past the next training step."""

        def own(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: t.detach().clone() for k, t in ts.items()}

        return Checkpoint(
            self.card,
            own(self.model_state),
            copy.deepcopy(self.optimizer_state),
            own(self.rng),
            own(self.extra),
        )


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIM_PREFIX}{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name[len(OPTIM_PREFIX) :].split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save(
    path: str | os.PathLike[str],
    model_state: dict[str, torch.Tensor],
    meta: ModelCard | Mapping[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Atomically write a model file; returns its path. ``extra``: tensors by their full names,
    outside the prefixes of the weights, the optimizer and the generators."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    card = meta if isinstance(meta, ModelCard) else _card(meta)
    document = _document(card)
    if optimizer_state is not None:
        opt_tensors, opt_rest = _flatten_optimizer(optimizer_state)
        tensors.update(opt_tensors)
        document["optimizer_state"] = opt_rest
    for name, state in (rng or {}).items():
        tensors[RNG_PREFIX + name] = state.detach().cpu().contiguous()
    for name, t in (extra or {}).items():
        if name.startswith((MODEL_PREFIX, OPTIM_PREFIX, RNG_PREFIX)):
            raise ValueError(f"{name}: an extra tensor's name must not start with model., optim. or rng.")
        tensors[name] = t.detach().cpu().contiguous()
    header = {"pawlab": json.dumps(document)}
    try:
        atomic_write(p, lambda tmp: save_file(tensors, str(tmp), metadata=header), fsync=True)
    except (OSError, SafetensorError) as exc:  # a full disk, a read-only folder
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise OutputError(
            f"{p}: cannot write the model file ({reason}); the one there before is unchanged"
        ) from None
    return p


def write(path: str | os.PathLike[str], ck: Checkpoint) -> Path:
    """`save` of everything ``ck`` holds."""
    return save(path, ck.model_state, ck.card, ck.optimizer_state, ck.rng, ck.extra)


def _meta(p: Path, header: dict[str, str]) -> dict[str, Any]:
    """The pawlab document of a safetensors header (raises ValueError for broken JSON)."""
    if "pawlab" not in header:
        raise ModelFileError(f"{p}: not a pawlab model file (no pawlab metadata)")
    meta = json.loads(header["pawlab"])
    if not isinstance(meta, dict):
        raise ModelFileError(
            f"{p}: damaged model file (its description is a JSON {type(meta).__name__}, not an object)"
        )
    return meta


def _check_format(p: Path, meta: dict[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{p}: not a pawlab model file")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{p}: written by a newer pawlab (format {meta['format_version']}); upgrade pawlab"
        )


def check_classes(path: str | os.PathLike[str], classes: object) -> list[str]:
    """A model file's class names: a non-empty list of distinct, non-empty strings."""
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ModelFileError(
            f"{path}: damaged model file (classes must be a list of names, got {classes!r:.80})"
        )
    repeated = next((c for c in classes if classes.count(c) > 1), None)
    if repeated is not None:
        raise ModelFileError(f"{path}: damaged model file (the class {repeated!r} is listed twice)")
    return list(classes)


def check_tensors(
    path: str | os.PathLike[str], expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]
) -> None:
    """Every tensor the architecture needs is in the file with its dtype and shape (a weight
    whose dtype changed would otherwise be cast silently and predict nonsense)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ModelFileError(f"{path}: damaged model file (weights do not match the architecture: {what})")
    for name, want in expected.items():
        got = found[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            raise ModelFileError(
                f"{path}: damaged model file ({name} is {_kind(got)}, the architecture needs {_kind(want)})"
            )


def _kind(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


def load_weights(
    path: str | os.PathLike[str], network: torch.nn.Module, state: dict[str, torch.Tensor]
) -> None:
    """Load a file's ``state`` into ``network``, once `check_tensors` has found it whole."""
    check_tensors(path, network.state_dict(), state)
    network.load_state_dict(state)


@contextmanager
def damaged(path: str | os.PathLike[str], what: str = "model file") -> Iterator[None]:
    """Errors met while rebuilding a network from a file's description are the file's: one-line
    `ModelFileError`s naming it."""
    try:
        yield
    except ArchitectureError as exc:  # a description this pawlab cannot build
        raise ModelFileError(str(exc)) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: damaged {what} ({str(exc).splitlines()[0]})") from None


def model_kind(meta: dict[str, Any]) -> str:
    """What a model file holds: ``classifier`` (files without a ``kind``) or ``generator``."""
    return str(meta.get("kind", "classifier"))


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such model file")
    return p


def _unreadable(p: Path, exc: Exception) -> ModelFileError:
    return ModelFileError(f"{p}: not a readable model file ({str(exc).splitlines()[0]})")


def _document(card: ModelCard) -> dict[str, Any]:
    """What a file's header holds of ``card`` (the optimizer's state aside)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **card.to_json()}


def _card(meta: Mapping[str, Any]) -> ModelCard:
    """The card of a checked document: the file's own keys (format, optimizer) left out."""
    return ModelCard.from_json({k: v for k, v in meta.items() if k not in _FILE_KEYS})


_FILE_KEYS = ("format", "format_version", "optimizer_state")


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """A model file's card alone, without reading its tensors; errors as `load`'s."""
    p = _existing(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = _meta(p, fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(p, exc) from None
    _check_format(p, meta)
    return _card(meta)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`read_card` as the header's JSON document."""
    return _document(read_card(path))


def load(path: str | os.PathLike[str], *, with_optimizer: bool = False) -> Checkpoint:
    """Read a model file written by `save`; a one-line `ModelFileError` for anything else."""
    p = _existing(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = _meta(p, fh.metadata() or {})
            model_state, optim_tensors, rng, extra = {}, {}, {}, {}
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.startswith(MODEL_PREFIX):
                    model_state[key[len(MODEL_PREFIX) :]] = fh.get_tensor(key)
                elif key.startswith(OPTIM_PREFIX):
                    if with_optimizer:
                        optim_tensors[key] = fh.get_tensor(key)
                elif key.startswith(RNG_PREFIX):
                    if with_optimizer:
                        rng[key[len(RNG_PREFIX) :]] = fh.get_tensor(key)
                else:  # a copy: kept past this call, it must not map a file that can be rewritten
                    extra[key] = fh.get_tensor(key).clone()
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(p, exc) from None
    _check_format(p, meta)
    optimizer_state = None
    if with_optimizer and "optimizer_state" in meta:
        optimizer_state = _unflatten_optimizer(optim_tensors, meta["optimizer_state"])
    return Checkpoint(_card(meta), model_state, optimizer_state, rng, extra)
