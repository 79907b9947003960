"""A training run's directory: its file names, and JSON lines written and read while it runs.

Importable without torch: readers such as a dashboard in another process use it to follow a
run as it is written. Lines are appended whole (one ``write`` on a file opened for appending);
a reader waits for a last line that is not yet whole, and skips lines it cannot parse. Readers
take a run directory as data that may be damaged: `open_in` follows no link and waits on no
FIFO, and a line past `MAX_LINE` or `MAX_DEPTH` is skipped with the reason.

    RUN_DIR/
        config.json        the recipe, classes and data of the run (`CONFIG`)
        metrics.jsonl      one line per epoch (`METRICS`)
        events.jsonl       every event of the loop worth watching (`EVENTS`, kinds in `EVENT_KINDS`)
        validation/        every validation pass's probabilities and typicality, the images' index,
                           thumbnails
        seen/              grids of what the model sees (`SEEN`)
        last.safetensors   the resumable state (`LAST_STATE`)
        model.safetensors  the best model, unless ``--out`` names another file (`MODEL`)
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

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
# The longest line a reader parses: training's lines are well under 1 KiB; a longer one is damage,
# skipped as it streams past (never held whole, never read twice).
MAX_LINE = 1 << 20
# The deepest nesting of a record read: training's are 3 deep; deeper is damage (and would overflow
# the stack of whatever walks it recursively next).
MAX_DEPTH = 32
_CHUNK = 1 << 20  # bytes read at a time


class DamagedFile(Exception):
    """A file of a run directory that is not as training writes it: a link, a FIFO, JSON nested
    too deeply, an array of the wrong kind. The message is ``<file>: <why>``, the file relative
    to the run directory."""


@dataclass(frozen=True)
class Position:
    """Where a reader of a JSON-lines file stopped: the byte offset, and a checksum of the
    file's first line that tells the same file from a new one in its place (an inode number
    is reused at once after a delete). What was read past the last whole line is kept, so that
    no byte is read twice."""

    offset: int = 0
    first_line: int = 0  # zlib.crc32 of the first line, newline included
    lines: int = 0  # whole lines before ``offset`` (less the tail)
    tail: bytes = b""  # the unfinished last line, as far as it was written
    skipping: bool = False  # inside a line longer than `MAX_LINE`: on to its newline
    skipped: str = ""  # why the first damaged line was skipped, e.g. "line 3 is longer than 1 MiB"


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
    """The records after ``start``, and where to read from next time; no byte is read twice.
    A last line without its newline is still being written: it waits in the position for the
    rest. Lines that are not JSON objects are skipped; so are lines longer than `MAX_LINE` or
    nested too deeply for the parser, and the position says why (``skipped``). A file replaced
    since ``start`` (a new run in the same run directory) or cut shorter is read from its
    beginning; a missing file has no records. Raises `DamagedFile` for a link or a FIFO."""
    path = Path(path)
    try:
        fh = open_in(path.parent, path.name)
    except FileNotFoundError:
        return [], Position()
    with fh:
        head = fh.read(_FIRST_LINE_MAX)
        first_end = head.find(b"\n") + 1 or (len(head) if len(head) == _FIRST_LINE_MAX else 0)
        if not first_end:
            return [], Position()  # not one whole line yet: nothing identifies the file
        first = zlib.crc32(head[:first_end])
        same = first == start.first_line and os.fstat(fh.fileno()).st_size >= start.offset
        at = start if same else Position(first_line=first)
        fh.seek(at.offset)
        return _read_lines(fh, at)


def _read_lines(fh: BinaryIO, at: Position) -> tuple[list[dict[str, Any]], Position]:
    """The records from ``at`` to the end of ``fh`` (placed at ``at.offset``), in chunks: a line
    longer than `MAX_LINE` is never held whole."""
    records = []
    offset, lines, tail, skipping, skipped = at.offset, at.lines, at.tail, at.skipping, at.skipped
    while chunk := fh.read(_CHUNK):
        offset += len(chunk)
        if skipping:
            end = chunk.find(b"\n")
            if end < 0:
                continue
            chunk, skipping, lines = chunk[end + 1 :], False, lines + 1
        *whole, tail = (tail + chunk).split(b"\n")
        for line in whole:
            lines += 1
            record, why = _record(line)
            if record is not None:
                records.append(record)
            elif why and not skipped:
                skipped = f"line {lines} {why}"
        if len(tail) > MAX_LINE:
            tail, skipping = b"", True
            skipped = skipped or f"line {lines + 1} {_TOO_LONG}"
    return records, Position(offset, at.first_line, lines, tail, skipping, skipped)


_TOO_LONG = f"is longer than {MAX_LINE >> 20} MiB"


def _record(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The JSON object on ``line``, or None and why it is damage ("" for a line cut short by a
    crash, or not an object: skipped, as ever)."""
    if len(line) > MAX_LINE:
        return None, _TOO_LONG
    try:
        record = json.loads(line)
    except RecursionError:
        return None, _TOO_DEEP
    except ValueError:
        return None, ""
    if not isinstance(record, dict):
        return None, ""
    return (None, _TOO_DEEP) if _deeper_than(record, MAX_DEPTH) else (record, "")


_TOO_DEEP = f"is nested more than {MAX_DEPTH} deep"


def _deeper_than(value: Any, depth: int) -> bool:
    """Whether lists and objects nest in ``value`` more than ``depth`` deep (without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        inner = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if inner is not None:
            if level >= depth:
                return True
            stack += [(v, level + 1) for v in inner]
    return False


_KINDS = {
    stat.S_IFLNK: "a link",
    stat.S_IFDIR: "a folder",
    stat.S_IFREG: "a regular file",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}


def open_in(run_dir: Path, relative: str) -> BinaryIO:
    """The regular file at ``relative`` (``/``-separated) inside ``run_dir``, open for reading
    through no link at any step, so that nothing outside the run directory is read, and
    without blocking (a FIFO is refused, never waited on). Raises `DamagedFile` for a link or
    what is not a regular file, and OSError (FileNotFoundError, ...) for what is missing."""
    *folders, name = relative.split("/")
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            inner = _open_no_link(fd, folder, stat.S_IFDIR, relative)
            os.close(fd)
            fd = inner
        file_fd = _open_no_link(fd, name, stat.S_IFREG, relative)
    finally:
        os.close(fd)
    return os.fdopen(file_fd, "rb")


_NO_LINK = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_no_link(dir_fd: int, name: str, kind: int, relative: str) -> int:
    """``name`` in the folder ``dir_fd`` if it is of ``kind`` (a folder or a regular file):
    looked at without following a link, then opened so that a link or FIFO put in its place
    between the two is refused too."""
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if stat.S_IFMT(mode) == kind:
        try:
            fd = os.open(name, _NO_LINK | (os.O_DIRECTORY if kind == stat.S_IFDIR else 0), dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            mode = stat.S_IFLNK
        else:
            mode = os.fstat(fd).st_mode
            if stat.S_IFMT(mode) == kind:
                return fd
            os.close(fd)
    found = _KINDS.get(stat.S_IFMT(mode), "not a file")
    why = "not followed" if stat.S_ISLNK(mode) else f"not {_KINDS[kind]}"
    subject = "" if kind == stat.S_IFREG else f"{name} is "
    raise DamagedFile(f"{relative}: {subject}{found}, {why}")


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or not (yet) whole JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def write_config(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(record, indent=2) + "\n")


def read_config(run_dir: Path) -> dict[str, Any] | None:
    record = read_json(run_dir / CONFIG)
    return record if isinstance(record, dict) else None


# Every validation pass, for the dashboard's confusion matrix and per-image histories:
#   validation/index.json        classes, and each validation image's name and label (once)
#   validation/pass-00012.npy    float16 (N, classes): the pass's probabilities, after epoch 12
#   validation/typicality-00012.npy  float16 (N,): each image's typicality at that pass (if fitted)
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


def typicality_file(epoch: int) -> str:
    """A validation pass's typicality of each image, relative to the run directory."""
    return f"{VALIDATION}/typicality-{epoch:05d}.npy"


def pass_epochs(run_dir: Path) -> list[int]:
    """The epochs whose validation pass is recorded, in order."""
    found = []
    for p in (run_dir / VALIDATION).glob("pass-*.npy"):
        digits = p.stem.removeprefix("pass-")
        if len(digits) == 5 and digits.isdigit() and digits.isascii():  # as `pass_file` names them
            found.append(int(digits))
    return sorted(found)
