"""A training run's directory: its file names, and JSON lines written and read while it runs.

Importable without torch: readers such as a dashboard in another process use it to follow a
run as it is written. Lines are appended whole (one ``write`` on a file opened for appending);
a reader skips a last line that is not yet whole, and lines it cannot parse.

    RUN_DIR/
        config.json        the recipe, classes and data of the run (`CONFIG`)
        metrics.jsonl      one line per epoch (`METRICS`)
        events.jsonl       every event of the loop worth watching (`EVENTS`, kinds in `EVENT_KINDS`)
        validation/        every validation pass's probabilities, the images' index, thumbnails
        seen/              grids of what the model sees (`SEEN`)
        last.safetensors   the resumable state (`LAST_STATE`)
        model.safetensors  the best model, unless ``--out`` names another file (`MODEL`)
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pawlab.atomic import atomic_write_text, write_all
from pawlab.errors import OutputError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
LAST_STATE = "last.safetensors"
MODEL = "model.safetensors"

# What `events.jsonl` records: the run started; a sampled batch (loss, learning rate,
# images/s); an epoch's metrics; the run ended (also when interrupted); the run failed.
EventKind = Literal["start", "batch", "epoch", "end", "failed"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

_FIRST_LINE_MAX = 4096  # bytes of the first line that identify a file


@dataclass(frozen=True)
class Position:
    """Where a reader of a JSON-lines file stopped: the byte offset, and a checksum of the
    file's first line that tells the same file from a new one in its place (an inode number
    is reused at once after a delete)."""

    offset: int = 0
    first_line: int = 0  # zlib.crc32 of the first line, newline included


def append_json_line(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append ``record`` as one line, written whole (a reader never sees half of it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, (json.dumps(record) + "\n").encode(), path)
    finally:
        os.close(fd)


def drop_epochs_after(path: str | os.PathLike[str], epoch: int) -> None:
    """Remove the lines of epochs after ``epoch`` from the metrics file at ``path``: a resumed
    run repeats them, and its history must not hold an epoch twice."""
    p = Path(path)
    if not p.exists():
        return
    lines = p.read_bytes().splitlines(keepends=True)
    keep = [line for line in lines if _epoch_of(line) <= epoch]
    if len(keep) != len(lines):
        atomic_write_text(p, b"".join(keep).decode())


def _epoch_of(line: bytes) -> float:
    """The ``epoch`` of a metrics line; infinite for a line cut short or not a record."""
    try:
        record = json.loads(line)
        return float(record["epoch"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_json_lines(
    path: str | os.PathLike[str], start: Position = Position()
) -> tuple[list[dict[str, Any]], Position]:
    """The records after ``start``, and where to read from next time. A last line without its
    newline is still being written: it is left for the next read. Lines that are not JSON
    objects are skipped. A file replaced since ``start`` (a new run in the same run directory)
    or cut shorter is read from its beginning; a missing file has no records."""
    try:
        with open(path, "rb") as fh:
            first = zlib.crc32(fh.readline(_FIRST_LINE_MAX))
            same = first == start.first_line and os.fstat(fh.fileno()).st_size >= start.offset
            offset = start.offset if same else 0
            fh.seek(offset)
            raw = fh.read()
    except FileNotFoundError:
        return [], Position()
    whole = raw[: raw.rfind(b"\n") + 1]
    records = []
    for line in whole.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, Position(offset + len(whole), first)


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or not (yet) whole JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_config(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(record, indent=2) + "\n")


def read_config(run_dir: Path) -> dict[str, Any] | None:
    record = read_json(run_dir / CONFIG)
    return record if isinstance(record, dict) else None


# Every validation pass, for the dashboard's confusion matrix and per-image histories:
#   validation/index.json        classes, and each validation image's name and label (once)
#   validation/pass-00012.npy    float16 (N, classes): the pass's probabilities, after epoch 12
#   validation/thumbs/17.jpg     a small JPEG of validation image 17 (once)
VALIDATION = "validation"
VALIDATION_INDEX = f"{VALIDATION}/index.json"
THUMBS = f"{VALIDATION}/thumbs"
# What the model sees: a grid of one training batch after augmentation (each epoch), and one
# of validation images (once)
SEEN_DIR = "seen"
SEEN = {"train": f"{SEEN_DIR}/train.jpg", "validation": f"{SEEN_DIR}/validation.jpg"}


LOCK = ".lock"  # held by the training that writes the run directory; holds its pid


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory for one training: a second one at the same time gets a one-line
    `OutputError` naming the holder's pid, instead of interleaving its logs and model files. A
    run directory made here and left holding nothing but the lock (the run failed before it
    wrote anything) is removed again."""
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # innermost first
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _lock(run_dir):
            yield
    finally:
        if made and [p.name for p in run_dir.iterdir()] == [LOCK]:
            (run_dir / LOCK).unlink(missing_ok=True)
            for folder in made:
                try:
                    folder.rmdir()  # only while empty
                except OSError:
                    break


@contextmanager
def _lock(run_dir: Path) -> Iterator[None]:
    with open(run_dir / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise OutputError(
                f"{run_dir}: another training (pid {holder}) is writing this run directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_fresh(run_dir: Path) -> None:
    """Remove what an earlier run in ``run_dir`` logged (metrics, events, validation passes,
    grids): a new run starts new logs, and a reader never mixes two runs."""
    (run_dir / METRICS).unlink(missing_ok=True)
    (run_dir / EVENTS).unlink(missing_ok=True)
    for folder in (VALIDATION, SEEN_DIR):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def pass_file(epoch: int) -> str:
    """A validation pass's probabilities, relative to the run directory."""
    return f"{VALIDATION}/pass-{epoch:05d}.npy"


def pass_epochs(run_dir: Path) -> list[int]:
    """The epochs whose validation pass is recorded, in order."""
    found = []
    for p in (run_dir / VALIDATION).glob("pass-*.npy"):
        digits = p.stem.removeprefix("pass-")
        if digits.isdigit():
            found.append(int(digits))
    return sorted(found)
