"""Inference: load a model file, predict images, evaluate labelled data, write submissions."""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from pawlab import checkpoint
from pawlab._atomic import atomic_write_text
from pawlab._features import frozen_trunk, trunk_features
from pawlab._imageio import ImageDecodeError, decode, default_workers, parallel_map
from pawlab._infer import (
    COMPILE_MIN_IMAGES,
    COMPILED_BATCH,
    TTA_VIEWS,
    Compiled,
    folded,
    predict_outputs,
)
from pawlab.data import Skipped, decode_task, decode_tasks, load_eval_set, load_unlabeled
from pawlab.errors import ConfigError, DataError, ModelFileError
from pawlab.models import Network, build
from pawlab.preprocessing import Preprocessing
from pawlab.training import resolve_device, use_bf16

ImageLike = str | os.PathLike[str] | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's class probabilities, in the Cortex tutorial's shape."""

    probabilities: dict[str, float]
    classification: str

    def to_json(self) -> dict[str, Any]:
        return {"probability-map": self.probabilities, "classification": self.classification}


class Model:
    """A trained classifier loaded from its model file."""

    def __init__(
        self,
        network: Network,
        classes: list[str],
        preprocessing: Preprocessing,
        meta: dict[str, Any],
        path: Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        compile: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.network = network.to(self.device).to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.classes = classes
        self.preprocessing = preprocessing
        self.meta = meta
        self.path = path
        self.bf16 = self._use_bf16(precision)
        # images whose bf16 top-class probability is below 1 - guard are run again in fp32
        record = meta.get("inference", {})
        agreed = bool(record.get("ok")) and "guard" in record
        self.guard: float | None = float(record["guard"]) if self.bf16 and agreed else None
        if compile not in ("auto", "on", "off"):
            raise ConfigError(f"compile: must be auto, on or off, got {compile!r}")
        self.compile = compile
        self._compiled: Compiled | None = None  # bf16 (autocast) or fp32, as self.bf16
        self._rerun: Compiled | None = None  # fp32, for the images the guard sends back

    @functools.cached_property
    def _runner(self) -> torch.nn.Module:
        """What predicts images: `network` with batch-norms folded. A copy made on first use:
        `evaluate` of a frozen backbone reads cached features (`trunk_features` folds its own
        copy of the trunk) and needs nothing else."""
        return folded(self.network)

    def _use_bf16(self, precision: str) -> bool:
        """``auto``: bf16 only where the hardware runs it fast and training recorded that
        this model's guarded bf16 predictions agree with fp32 (`pawlab._infer.check_agreement`);
        ``bf16``: bf16 regardless (guarded where the check agreed)."""
        if precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision: must be auto, fp32 or bf16, got {precision!r}")
        if precision != "auto":
            return precision == "bf16"
        agreed = bool(self.meta.get("inference", {}).get("ok"))
        return agreed and use_bf16("auto", self.device)

    def prepare_for(self, images: int, tta: bool = False) -> None:
        """Get ready for a job of ``images`` images (each run once per view with ``tta``):
        ``compile`` ``on``, or ``auto`` and at least `COMPILE_MIN_IMAGES` forward passes
        (compiling costs tens of seconds once, then each batch runs faster). With guarded
        bf16, the fp32 re-runs get a compiled graph of their own."""
        images *= len(TTA_VIEWS) if tta else 1
        wanted = self.compile == "on" or (self.compile == "auto" and images >= COMPILE_MIN_IMAGES)
        if wanted and self._compiled is None:
            self._compiled = Compiled(self._runner, COMPILED_BATCH["bf16" if self.bf16 else "fp32"])
            if self.guard is not None:
                self._rerun = Compiled(self._runner, COMPILED_BATCH["fp32"])

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        precision: str = "auto",
        compile: str = "auto",
    ) -> Model:
        ck = checkpoint.load(path)
        try:
            classes = list(ck.meta["classes"])
            pre = Preprocessing.from_json(ck.meta["preprocessing"])
            network = build(
                ck.meta["architecture"], num_classes=len(classes), where=str(path), pretrained=False
            )
            network.load_state_dict(ck.model_state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: damaged model file ({str(exc).splitlines()[0]})") from None
        return cls(network, classes, pre, ck.meta, Path(path), device, precision, compile)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.meta.get("metrics", {}))

    def _load_image(self, image: ImageLike) -> np.ndarray:
        """Anything image-like -> uint8 (H, W, C) at the model's input size."""
        size, c = self.preprocessing.size, self.preprocessing.channels
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise DataError("image array must be uint8 with shape (H, W) or (H, W, C)")
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data, name = buf.getvalue(), "<image>"
        elif isinstance(image, bytes):
            data, name = image, "<bytes>"
        else:
            name = str(image)
            try:
                data = Path(image).read_bytes()
            except OSError as exc:
                raise DataError(f"{name}: cannot read ({exc.strerror})") from None
        try:
            return decode(data, size, c, self.preprocessing.resize)
        except ImageDecodeError as exc:
            raise DataError(f"{name}: {exc}") from None

    def predict_proba(
        self,
        images: np.ndarray,
        batch_size: int | None = None,
        tta: bool = False,
        cached: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """uint8 (N, H, W, C) at the model's size -> probabilities (N, classes); ``tta``:
        averaged over the image, its mirror and two crops. ``cached``: a frozen backbone's
        features come from (and go to) the feature cache, as in training."""
        views = TTA_VIEWS if tta else ("plain",)
        # cached features are fp32: the probabilities are exact, whatever the precision
        trunk = frozen_trunk(self.network) if cached else None
        if trunk is not None:
            body = self.network.body
            feats = trunk_features(
                body[:trunk], images, self.preprocessing, self.device, views=views, progress=progress
            )
            with torch.inference_mode():
                x = torch.from_numpy(feats).to(self.device)  # (N, views, F)
                out = body[trunk:](x.flatten(0, 1)).float().softmax(1)
                mean: np.ndarray = out.view(len(images), len(views), -1).mean(1).cpu().numpy()
                return mean
        probs = predict_outputs(
            self._runner,
            images,
            self.preprocessing,
            self.device,
            self._compiled.batch_size if self._compiled is not None else batch_size,
            bf16=self.bf16,
            guard=self.guard,
            forward=self._compiled,
            rerun=self._rerun,
            views=views,
            softmax=True,
        )
        return probs.numpy()

    def predict(self, image: ImageLike, tta: bool = False) -> Prediction:
        """One image (path, bytes, PIL image or uint8 array) -> its probability map."""
        self.prepare_for(1, tta)
        probs = self.predict_proba(self._load_image(image)[None], tta=tta)[0]
        return self._prediction(probs)

    def predict_many(self, images: Sequence[ImageLike], tta: bool = False) -> list[Prediction]:
        arrays = np.stack([self._load_image(im) for im in images])
        self.prepare_for(len(arrays), tta)
        return [self._prediction(p) for p in self.predict_proba(arrays, tta=tta)]

    def _prediction(self, probs: np.ndarray) -> Prediction:
        pm = {c: float(p) for c, p in zip(self.classes, probs, strict=True)}
        return Prediction(pm, self.classes[int(np.argmax(probs))])


def load_model(
    path: str | os.PathLike[str], device: str = "auto", precision: str = "auto", compile: str = "auto"
) -> Model:
    """Load a model file written by `pawlab.train`. ``precision``: auto, fp32 or bf16;
    ``compile``: auto (for jobs of many images), on or off (see `Model.prepare_for`)."""
    return Model.load(path, device, precision, compile)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalReport:
    classes: list[str]
    count: int
    accuracy: float
    log_loss: float
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    precision: dict[str, float]
    recall: dict[str, float]
    split: str  # which images were evaluated, in words
    figures: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    top_losses: list[dict[str, Any]] = field(default_factory=list)  # the most confidently wrong

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "log_loss": self.log_loss,
            "count": self.count,
            "classes": self.classes,
            "confusion_matrix": self.confusion_matrix,
            "precision": self.precision,
            "recall": self.recall,
            "evaluated": self.split,
            "figures": self.figures,
            "top_losses": self.top_losses,
            "skipped": self.skipped,
        }

    def table(self) -> str:
        w = max(8, *(len(c) for c in self.classes))
        lines = [
            f"evaluated {self.count} images ({self.split})",
            f"accuracy  {self.accuracy:.4f}",
            f"log loss  {self.log_loss:.4f}",
            "",
            f"{'class':<{w}}  precision  recall",
        ]
        lines += [f"{c:<{w}}  {self.precision[c]:>9.4f}  {self.recall[c]:>6.4f}" for c in self.classes]
        lines += [
            "",
            "confusion matrix (rows: true, columns: predicted)",
            " " * w + "  " + "  ".join(f"{c:>{w}}" for c in self.classes),
        ]
        for c, row in zip(self.classes, self.confusion_matrix, strict=True):
            lines.append(f"{c:<{w}}  " + "  ".join(f"{v:>{w}}" for v in row))
        for name, path in self.figures.items():
            lines.append(f"{name}: {path}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files (see --json for the list)")
        return "\n".join(lines)


def metrics_from_probs(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, log loss, confusion matrix, per-class precision and recall."""
    k = len(classes)
    pred = probs.argmax(1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1.0)
    col, row = cm.sum(0), cm.sum(1)
    diag = np.diag(cm)
    return {
        "accuracy": float((pred == labels).mean()),
        "log_loss": float(-np.log(p_true).mean()),
        "confusion_matrix": cm.tolist(),
        "precision": {c: float(diag[i] / col[i]) if col[i] else 0.0 for i, c in enumerate(classes)},
        "recall": {c: float(diag[i] / row[i]) if row[i] else 0.0 for i, c in enumerate(classes)},
    }


def evaluate(
    model: Model | str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    report_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    progress: bool = True,
    samples: int = 24,
    tta: bool = False,
) -> EvalReport:
    """Evaluate on labelled data: its validation split when it has one, never training images.

    Writes to ``report_dir`` (default: beside the model file, ``<model>-eval/``)
    ``predictions.png`` (sample predictions, wrong ones marked), ``confusion_matrix.png`` and
    ``top_losses.png`` (the most confidently wrong images). ``tta``: test-time augmentation.
    """
    m = model if isinstance(model, Model) else load_model(model)
    data_info = m.meta.get("training", {}).get("data", {})
    ev = load_eval_set(
        data,
        m.preprocessing.size,
        m.preprocessing.channels,
        m.classes,
        trained_on=data_info,
        workers=workers,
        progress=progress,
        resize=m.preprocessing.resize,
    )
    m.prepare_for(len(ev.images), tta)
    probs = m.predict_proba(ev.images.images, tta=tta, cached=True, progress=progress)
    stats = metrics_from_probs(probs, ev.images.labels, m.classes)
    if report_dir is None:
        base = m.path if m.path is not None else Path("model")
        report_dir = base.with_name(base.stem + "-eval")
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    from pawlab.reports import confusion_matrix_plot, prediction_grid, top_losses, top_losses_grid

    images, labels = ev.images.images, ev.images.labels
    figures = {
        "predictions": prediction_grid(
            images, labels, probs, m.classes, out / "predictions.png", samples=samples
        ),
        "confusion_matrix": confusion_matrix_plot(
            stats["confusion_matrix"], m.classes, out / "confusion_matrix.png"
        ),
        "top_losses": top_losses_grid(images, labels, probs, m.classes, out / "top_losses.png"),
    }
    worst = [
        {
            "name": ev.images.names[i],
            "true": m.classes[int(labels[i])],
            "predicted": m.classes[int(probs[i].argmax())],
            "loss": loss,
            "p_true": float(probs[i, int(labels[i])]),
        }
        for i, loss in top_losses(labels, probs, 12)
    ]
    return EvalReport(
        classes=m.classes,
        count=len(ev.images),
        split=ev.description + (", test-time augmentation" if tta else ""),
        figures={k: str(v) for k, v in figures.items()},
        top_losses=worst,
        skipped=[{"name": s.name, "reason": s.reason} for s in ev.skipped],
        **stats,
    )


# ----------------------------------------------------------------------------- submission


@dataclass
class SubmitReport:
    path: Path
    rows: int  # rows in the file now
    written: int  # rows written by this run
    resumed: int  # rows already there
    skipped: list[Skipped]
    failed: list[Skipped]  # images that could not be decoded: written with an uninformative label
    seconds: float


def _numeric_id(name: str) -> int | None:
    stem = PurePosixPath(name).stem
    return int(stem) if re.fullmatch(r"\d+", stem) else None


def _file_identity(path: Path | None) -> str:
    """A model file's path, size and modification time (a retrained model differs)."""
    if path is None:
        return "<in memory>"
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_rows(path: Path, header: bool) -> dict[int, str]:
    """id -> its whole row (with its newline) in a submission or a shard's part file, which
    may have been interrupted: a torn last line is cut off the file."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    start = 0
    if header:
        if not raw.startswith(b"id,label\n"):
            raise DataError(f"{path}: exists and is not a submission file (delete it to start over)")
        start = 9
    cut = raw.rfind(b"\n") + 1
    if cut < len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(cut)
    rows = {}
    for n, line in enumerate(raw[start:cut].decode(errors="replace").splitlines(), 1 + bool(header)):
        head = line.split(",", 1)[0]
        if not head.isdigit() or "," not in line:
            raise DataError(f"{path}: line {n} is not an id,label row (delete the file to start over)")
        rows[int(head)] = line + "\n"
    return rows


def _write_all(fd: int, data: bytes) -> None:
    """Every byte, or an error: a short write (a full disk) must not leave half a row that the
    next rows would be appended to."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _part_files(out: Path) -> list[Path]:
    """Shards' rows under torchrun: ``<out>.part-<rank>``, merged into ``out`` at the end."""
    return sorted(out.parent.glob(f"{glob.escape(out.name)}.part-*"))


def _merge_parts(out: Path) -> None:
    """The submission and its shards' part files -> one file in id order (atomically)."""
    parts = _part_files(out)
    if not parts:
        return
    rows = _read_rows(out, header=True)
    for part in parts:
        rows.update(_read_rows(part, header=False))
    atomic_write_text(out, "id,label\n" + "".join(rows[i] for i in sorted(rows)))
    for part in parts:
        part.unlink()


def _world() -> tuple[int, int]:
    """(rank, world size): several under torchrun, once the process group is set up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def submit(
    model: Model | str | os.PathLike[str],
    test: str | os.PathLike[str],
    out: str | os.PathLike[str] = "submission.csv",
    *,
    hard: bool = False,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
    stream: TextIO | None = None,
    tta: bool = False,
) -> SubmitReport:
    """Write the Kaggle CSV ``id,label`` for a folder or zip of images named by numeric id.

    ``label`` is the probability of the second class (``dog`` for cat/dog) clipped to
    [0.005, 0.995], or 0/1 with ``hard``; with more than two classes, the predicted class
    name. Rows are appended in id order, a batch at a time: an interrupted run, started
    again with the same model, test set and labels, keeps the rows already written and does
    the rest (``<out>.pawlab-job.json`` records the job until it is complete); any other run
    writes the file afresh. Under torchrun, each rank takes every N-th image and appends to
    ``<out>.part-<rank>``; rank 0 merges the parts into ``out`` in id order at the end.
    """
    start = time.perf_counter()
    m = model if isinstance(model, Model) else load_model(model)
    source, names, skipped = load_unlabeled(test, m.preprocessing.size, m.preprocessing.channels)
    numbered = []
    for n in names:
        i = _numeric_id(n)
        if i is None:
            skipped.append(Skipped(n, "name is not a numeric id"))
        else:
            numbered.append((i, n))
    numbered.sort()
    if not numbered:
        example = f", e.g. {skipped[0].name}" if skipped else ""
        raise DataError(f"{source.path}: no image is named by a numeric id like 1.jpg{example}")
    repeated = [i for i, n in Counter(i for i, _ in numbered).items() if n > 1]
    if repeated:
        same = [n for i, n in numbered if i == min(repeated)]
        raise DataError(f"{source.path}: several images share the id {min(repeated)}: {', '.join(same)}")
    out_path = Path(out)
    rank, world = _world()
    # The rows already in the file are kept only if this very job wrote them: same model file,
    # same test source, same labels. The job's identity lives beside the file until it is done.
    job = {
        "model": _file_identity(m.path),
        "test": str(source.path),
        "hard": hard,
        "classes": m.classes,
        "tta": tta,
    }
    sidecar = out_path.with_name(out_path.name + ".pawlab-job.json")
    resumable = sidecar.exists() and _read_json(sidecar) == job
    if not resumable and out_path.exists() and not out_path.read_bytes()[:9] == b"id,label\n":
        raise DataError(f"{out_path}: exists and is not a submission file (delete it to start over)")
    if rank == 0 and not resumable:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        for part in _part_files(out_path):
            part.unlink()
        atomic_write_text(sidecar, json.dumps(job))
        atomic_write_text(out_path, "id,label\n")
    if world > 1:
        dist.barrier()  # rank 0 has started the job afresh, or not
    # rows already written: in the file, and in shards' part files of an interrupted torchrun
    done = set(_read_rows(out_path, header=True)) if resumable else set()
    if resumable:
        for part in _part_files(out_path):
            done |= set(_read_rows(part, header=False))
    if world > 1:
        dist.barrier()  # every rank has read them before any appends
    todo = [(i, n) for i, n in numbered if i not in done][rank::world]  # this rank's shard
    binary = len(m.classes) == 2
    failed: list[Skipped] = []
    pre = m.preprocessing
    m.prepare_for(len(todo), tta)
    tasks = decode_tasks(source, [n for _, n in todo], pre.size, pre.channels, pre.resize)
    # decoding runs ahead in worker processes while the network computes; half the cores for
    # them (decoding costs a fraction of a forward pass; more would take the network's cores)
    results = parallel_map(decode_task, tasks, workers=workers or max(1, default_workers() // 2 // world))
    bar = tqdm(
        total=len(todo),
        desc="predicting" if world == 1 else f"predicting (rank 0 of {world})",
        unit="img",
        disable=not progress or rank != 0 or None,
        file=sys.stderr,
    )
    # one process appends to the submission itself; under torchrun each rank to its part file
    target = out_path if world == 1 else out_path.with_name(f"{out_path.name}.part-{rank}")
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written = 0
    try:
        for chunk in _chunks(zip(todo, results, strict=True), batch_size):
            good = [(i, r) for (i, _), r in chunk if not isinstance(r, str)]
            failed += [Skipped(n, r) for (_, n), r in chunk if isinstance(r, str)]
            probs = m.predict_proba(np.stack([r for _, r in good]), tta=tta) if good else np.empty((0, 0))
            by_id = {i: p for (i, _), p in zip(good, probs, strict=True)}
            rows = []
            for (i, _), _r in chunk:
                p = by_id.get(i)
                rows.append(f"{i},{_label(p, m.classes, binary, hard)}\n")
            _write_all(fd, "".join(rows).encode())  # whole rows
            written += len(rows)
            bar.update(len(chunk))
    finally:
        os.close(fd)
        bar.close()
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (written, failed))
        written = sum(w for w, _ in gathered)
        failed = [f for _, fs in gathered for f in fs]
    if rank == 0:
        _merge_parts(out_path)  # shards (this run's, or an interrupted one's) into id order
        sidecar.unlink()  # complete: a later run starts afresh
    if world > 1:
        dist.barrier()  # the file is complete when any rank returns
    return SubmitReport(
        out_path, len(done) + written, written, len(done), skipped, failed, time.perf_counter() - start
    )


def _label(p: np.ndarray | None, classes: list[str], binary: bool, hard: bool) -> str:
    if p is None:  # undecodable image: the uninformative answer
        return "0.5" if binary and not hard else ("0" if binary else classes[0])
    if not binary:
        return classes[int(np.argmax(p))]
    if hard:
        return str(int(p[1] >= 0.5))
    return f"{float(np.clip(p[1], 0.005, 0.995)):.6f}"


def _chunks(it: Iterator[Any] | Any, n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def report_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)
