"""Kaggle submissions: a streamed, resumable ``id,label`` CSV (``id,label,unknown`` with the
in-distribution model's verdict), sharded under torchrun."""

from __future__ import annotations

import glob
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import numpy as np
import torch.distributed as dist

from pawlab.atomic import atomic_write_text, check_output_file, write_all
from pawlab.data import Skipped, load_unlabeled
from pawlab.data.datasets import decode_task, decode_tasks
from pawlab.data.sources import Source
from pawlab.data.workers import default_workers, entry_point, parallel_map
from pawlab.errors import ConfigError, DataError, OutputError
from pawlab.inference.model import Model
from pawlab.inference.runtimes import load_model
from pawlab.progress import progress_bar
from pawlab.runtime import barrier, rank, world_size


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


HEADERS = ("id,label\n", "id,label,unknown\n")  # without and with the unknown column


def _header(unknown_column: bool) -> str:
    return HEADERS[unknown_column]


def _read_rows(path: Path, header: str | None) -> dict[int, str]:
    """id -> its whole row (with its newline) in a submission (its first line ``header``) or a
    shard's part file (no header), which may have been interrupted: a torn last line is cut
    off the file."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    start = 0
    if header is not None:
        if not raw.startswith(header.encode()):
            raise DataError(f"{path}: exists and is not a submission file (delete it to start over)")
        start = len(header)
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


def _part_files(out: Path) -> list[Path]:
    """Shards' rows under torchrun: ``<out>.part-<rank>``, merged into ``out`` at the end."""
    return sorted(out.parent.glob(f"{glob.escape(out.name)}.part-*"))


def _merge_parts(out: Path, header: str) -> None:
    """The submission and its shards' part files -> one file in id order (atomically)."""
    parts = _part_files(out)
    if not parts:
        return
    rows = _read_rows(out, header)
    for part in parts:
        rows.update(_read_rows(part, None))
    atomic_write_text(out, header + "".join(rows[i] for i in sorted(rows)))
    for part in parts:
        part.unlink()


_Numbered = list[tuple[int, str]]  # (numeric id, image name), in id order


def _numbered(names: list[str]) -> tuple[_Numbered, list[Skipped]]:
    """Image names -> (id, name) in id order, and the names that are not a numeric id."""
    numbered, unnumbered = [], []
    for n in names:
        i = _numeric_id(n)
        if i is None:
            unnumbered.append(Skipped(n, "name is not a numeric id"))
        else:
            numbered.append((i, n))
    numbered.sort()
    return numbered, unnumbered


def _check_ids(numbered: _Numbered, skipped: list[Skipped], where: object) -> None:
    """A DataError unless there is at least one numbered image and no id repeats (a CSV
    row per id)."""
    if not numbered:
        example = f", e.g. {skipped[0].name}" if skipped else ""
        raise DataError(f"{where}: no image is named by a numeric id like 1.jpg{example}")
    repeated = [i for i, n in Counter(i for i, _ in numbered).items() if n > 1]
    if repeated:
        same = [n for i, n in numbered if i == min(repeated)]
        raise DataError(f"{where}: several images share the id {min(repeated)}: {', '.join(same)}")


def _job(m: Model, test: object, hard: bool, tta: bool, unknown_column: bool) -> dict[str, Any]:
    """What the rows in the file depend on: the model file, the test source and the labels."""
    return {
        "model": _file_identity(m.path),
        "test": str(test),
        "hard": hard,
        "classes": m.classes,
        "tta": tta,
        "unknown_threshold": m.unknown_threshold if unknown_column else None,
    }


def _job_header(job: dict[str, Any]) -> str:
    return _header(job["unknown_threshold"] is not None)


def _sidecar(out: Path) -> Path:
    """``<out>.pawlab-job.json``: the job's identity, beside the file until it is complete."""
    return out.with_name(out.name + ".pawlab-job.json")


def _resumes(out: Path, job: dict[str, Any]) -> bool:
    """Whether the rows already in ``out`` are kept: only if this very job wrote them. A file
    to be written afresh must be a submission (or absent): pawlab overwrites nothing else."""
    sidecar = _sidecar(out)
    resumable = sidecar.exists() and _read_json(sidecar) == job
    if not resumable and out.exists() and not out.read_bytes().startswith(tuple(h.encode() for h in HEADERS)):
        raise DataError(f"{out}: exists and is not a submission file (delete it to start over)")
    return resumable


def _start_afresh(out: Path, job: dict[str, Any]) -> None:
    """A header-only ``out``, no part files, and the job's sidecar."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for part in _part_files(out):
        part.unlink()
    atomic_write_text(_sidecar(out), json.dumps(job))
    atomic_write_text(out, _job_header(job))


def _rows_done(out: Path, header: str) -> set[int]:
    """Ids already written: in the file, and in shards' part files of an interrupted torchrun."""
    done = set(_read_rows(out, header))
    for part in _part_files(out):
        done |= set(_read_rows(part, None))
    return done


def _open_job(out: Path, job: dict[str, Any]) -> set[int]:
    """Resume ``job`` in ``out`` or start it afresh (rank 0): the ids already done, which
    every rank has read before any rank appends."""
    resumable = _resumes(out, job)
    if rank() == 0 and not resumable:
        _start_afresh(out, job)
    barrier()  # rank 0 has started the job afresh, or not
    done = _rows_done(out, _job_header(job)) if resumable else set()
    barrier()  # every rank has read them before any appends
    return done


def _target(out: Path) -> Path:
    """Where this process appends: the submission itself, or under torchrun its part file."""
    return out if world_size() == 1 else out.with_name(f"{out.name}.part-{rank()}")


def _progress_bar(total: int, progress: bool) -> Any:
    """Images predicted, shown by rank 0 only."""
    world = world_size()
    desc = "predicting" if world == 1 else f"predicting (rank 0 of {world})"
    return progress_bar(total=total, desc=desc, enabled=progress and rank() == 0, leave=True)


def _batch_rows(
    m: Model,
    chunk: list[tuple[tuple[int, str], np.ndarray | str]],
    hard: bool,
    tta: bool,
    unknown_column: bool,
) -> tuple[str, list[Skipped]]:
    """A batch of ((id, name), image (H, W, C) or why it did not decode) -> its rows in order,
    and the undecodable images (their rows get the uninformative label, and with
    ``unknown_column`` an empty verdict)."""
    good = [(i, r) for (i, _), r in chunk if not isinstance(r, str)]
    failed = [Skipped(n, r) for (_, n), r in chunk if isinstance(r, str)]
    probs, typical = (
        m.predict_scored(np.stack([r for _, r in good]), tta=tta) if good else (np.empty((0, 0)), None)
    )
    by_id = {i: p for (i, _), p in zip(good, probs, strict=True)}
    unknown = (
        {i: str(int(t < m.unknown_threshold)) for (i, _), t in zip(good, typical, strict=True)}
        if typical is not None
        else {}
    )
    binary = len(m.classes) == 2
    rows = []
    for (i, _name), _image in chunk:
        verdict = f",{unknown.get(i, '')}" if unknown_column else ""
        rows.append(f"{i},{_label(by_id.get(i), m.classes, binary, hard)}{verdict}\n")
    return "".join(rows), failed


def _predict_and_append(
    m: Model,
    source: Source,
    todo: _Numbered,
    target: Path,
    *,
    hard: bool,
    batch_size: int,
    workers: int,
    progress: bool,
    tta: bool,
    unknown_column: bool,
) -> tuple[int, list[Skipped]]:
    """Predict ``todo`` a batch at a time, appending whole rows to ``target``: (rows written,
    images that could not be decoded)."""
    pre = m.preprocessing
    tasks = decode_tasks(source, [n for _, n in todo], pre.size, pre.channels, pre.resize)
    # decoding runs ahead in worker processes while the network computes; half the cores for
    # them (decoding costs a fraction of a forward pass; more would take the network's cores)
    results = parallel_map(
        decode_task, tasks, workers=workers or max(1, default_workers() // 2 // world_size())
    )
    bar = _progress_bar(len(todo), progress)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written, failed = 0, []
    try:
        for chunk in _chunks(zip(todo, results, strict=True), batch_size):
            rows, bad = _batch_rows(m, chunk, hard, tta, unknown_column)
            failed += bad
            try:
                write_all(fd, rows.encode(), target)  # whole rows, or none
            except OSError as exc:
                raise OutputError(f"{target}: cannot write the rows ({exc.strerror or exc})") from None
            written += len(chunk)
            bar.update(len(chunk))
    finally:
        os.close(fd)
        bar.close()
    return written, failed


def _gathered(written: int, failed: list[Skipped]) -> tuple[int, list[Skipped]]:
    """Under torchrun, every rank's (rows written, undecodable images) together, in rank order."""
    world = world_size()
    if world == 1:
        return written, failed
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (written, failed))
    return sum(w for w, _ in gathered), [f for _, fs in gathered for f in fs]


@entry_point
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
    unknown_column: bool = False,
    unknown_threshold: float | None = None,
) -> SubmitReport:
    """Write the Kaggle CSV ``id,label`` for a folder or zip of images named by numeric id.

    ``label`` is the probability of the second class (``dog`` for cat/dog) clipped to
    [0.005, 0.995], or 0/1 with ``hard``; with more than two classes, the predicted class
    name. Rows are appended in id order, a batch at a time: an interrupted run, started
    again with the same model, test set and labels, keeps the rows already written and does
    the rest (``<out>.pawlab-job.json`` records the job until it is complete); any other run
    writes the file afresh. Under torchrun, each rank takes every N-th image and appends to
    ``<out>.part-<rank>``; rank 0 merges the parts into ``out`` in id order at the end.
    ``unknown_column``: a third column, ``unknown``, 1 for an image the model's in-distribution
    model refuses (typicality below ``unknown_threshold``, default the model's: 0.05), else 0.
    """
    start = time.perf_counter()
    check_output_file(out, "submission")  # before any work
    m = _loaded(model, unknown_column, unknown_threshold)
    source, numbered, skipped = _listed(test, m)
    out_path = Path(out)
    job = _job(m, source.path, hard, tta, unknown_column)
    done = _open_job(out_path, job)
    todo = [(i, n) for i, n in numbered if i not in done][rank() :: world_size()]  # this rank's shard
    # compiled or not is decided by the whole job, not by what is left of it: a resumed run
    # computes its rows as the uninterrupted one would, so the file comes out the same
    m.prepare_for(len(numbered), tta)
    written, failed = _predict_and_append(
        m,
        source,
        todo,
        _target(out_path),
        hard=hard,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        tta=tta,
        unknown_column=unknown_column,
    )
    written, failed = _gathered(written, failed)
    if rank() == 0:
        _merge_parts(out_path, _job_header(job))  # shards (this run's, or an interrupted one's) into id order
        _sidecar(out_path).unlink()  # complete: a later run starts afresh
    barrier()  # the file is complete when any rank returns
    return SubmitReport(
        out_path, len(done) + written, written, len(done), skipped, failed, time.perf_counter() - start
    )


def _loaded(model: Model | str | os.PathLike[str], unknown_column: bool, threshold: float | None) -> Model:
    """``model`` (loaded if a path), its refusal threshold set; a `ConfigError` for an unknown
    column it cannot fill."""
    m = model if isinstance(model, Model) else load_model(model)
    if threshold is not None:
        m.unknown_threshold = threshold
    if unknown_column and m.unknown is None:
        raise ConfigError(
            f"{m.path or 'the model'}: no in-distribution model for --unknown-column (trained before pawlab "
            "fitted one): pawlab calibrate-unknown MODEL DATA fits it"
        )
    return m


def _listed(test: str | os.PathLike[str], m: Model) -> tuple[Source, _Numbered, list[Skipped]]:
    """The test set's source, its images by numeric id (id, name) and what is skipped (files
    that are not images, or not named by a number)."""
    source, names, skipped = load_unlabeled(test, m.preprocessing.size, m.preprocessing.channels)
    numbered, unnumbered = _numbered(names)
    skipped += unnumbered
    _check_ids(numbered, skipped, source.path)
    return source, numbered, skipped


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
