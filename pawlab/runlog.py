"""A training run's directory: its file names, and JSON lines written and read while it runs.

Importable without torch: readers such as a dashboard in another process use it to follow a
run as it is written. Lines are appended whole (one ``write`` on a file opened for appending);
a reader skips a last line that is not yet whole, and lines it cannot parse.

    RUN_DIR/
        config.json        the recipe, classes and data of the run (`CONFIG`)
        metrics.jsonl      one line per epoch (`METRICS`)
        events.jsonl       every event of the loop worth watching (`EVENTS`, kinds in `EVENT_KINDS`)
        last.safetensors   the resumable state (`LAST_STATE`)
        model.safetensors  the best model, unless ``--out`` names another file (`MODEL`)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

from pawlab.atomic import atomic_write_text

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
LAST_STATE = "last.safetensors"
MODEL = "model.safetensors"

# What `events.jsonl` records: the run started; a sampled batch (loss, learning rate,
# images/s); an epoch's metrics; the run ended (also when interrupted); the run failed.
EventKind = Literal["start", "batch", "epoch", "end", "failed"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


def append_json_line(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append ``record`` as one line, written whole (a reader never sees half of it)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_json_lines(path: str | os.PathLike[str], start: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The records from byte ``start`` on, and the offset to read from next time. A last line
    without its newline is still being written: it is left for the next read. Lines that are
    not JSON objects are skipped. A missing file has no records."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            raw = fh.read()
    except FileNotFoundError:
        return [], start
    whole = raw[: raw.rfind(b"\n") + 1]
    records = []
    for line in whole.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, start + len(whole)


def write_config(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(record, indent=2) + "\n")


def read_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
