"""Runs as read from their run directories: damaged files are one run's or one pass's damage,
with the reason; the event log is read once; cells are computed once per pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pawlab import runlog
from pawlab.dashboard import store


def _copy(runs_root: Path, tmp_path: Path, name: str = "first") -> Path:
    return Path(shutil.copytree(runs_root / name, tmp_path / name))


def _header(path: Path, header: dict[str, object], data: bytes = b"") -> None:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(data)


def _images(run: Path) -> int:
    return len(json.loads((run / runlog.VALIDATION_INDEX).read_text())["labels"])


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda p, n: _header(p, {"descr": "<f2", "fortran_order": False, "shape": (10**11,)}),
         "(100000000000,), not ({n}, 2): the index has {n} images of 2 classes"),
        (lambda p, n: np.save(p, np.zeros(n, dtype=[("a", "<f4"), ("b", "<f4")])),
         "structured values, not floats"),
        (lambda p, n: np.save(p, np.zeros((n, 2), dtype=np.int64)), "<i8 values, not floats"),
        (lambda p, n: np.save(p, np.zeros((n, 2), dtype=object), allow_pickle=True), "|O values, not floats"),
        (lambda p, n: _header(p, {"descr": "<f2", "fortran_order": False, "shape": (n, 2)}, b"\0" * 6),
         "cut short"),
        (lambda p, n: p.write_bytes(b"\x93NUMPY\x01\x00" + b"(" * 5000), "not an array as NumPy writes it"),
    ],
)  # fmt: skip
def test_a_damaged_pass_is_that_pass_only(runs_root: Path, tmp_path: Path, write: object, why: str) -> None:
    path = _copy(runs_root, tmp_path)
    n = _images(path)
    write(path / runlog.pass_file(2), n)  # type: ignore[operator]
    run = store.Run(path)
    assert run.probabilities(2) is None
    assert run.pass_damage == {2: f"validation/pass-00002.npy: {why.format(n=n)}"}
    assert store.passes(run)["damaged"] == {"2": run.pass_damage[2]}
    assert store.matrix(run, 3) is not None and len(store.history(run, 0) or []) == 2
    assert run.summary()["state"] == "finished"  # the run itself is whole


@pytest.mark.parametrize(
    ("file", "content", "why"),
    [
        (runlog.CONFIG, "[" * 10**6, "config.json: nested too deeply"),
        (runlog.CONFIG, '["a list"]', "config.json: not a JSON object"),
        (runlog.VALIDATION_INDEX, "[" * 10**6, "validation/index.json: nested too deeply"),
        (runlog.VALIDATION_INDEX, '{"classes": ["a"], "names": ["x"], "labels": [' + "9" * 5000 + "]}",
         "validation/index.json: not JSON (Exceeds the limit (4300 digits) for integer string conversion: "
         "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit)"),
        (runlog.VALIDATION_INDEX, '{"classes": ["a", "b"], "names": ["x"], "labels": [true]}',
         "validation/index.json: labels: true is not a class number (0-1)"),
        (runlog.VALIDATION_INDEX, '{"classes": ["a", "b"], "names": ["x"], "labels": [1.0]}',
         "validation/index.json: labels: 1.0 is not a class number (0-1)"),
        (runlog.VALIDATION_INDEX, '{"classes": ["a", "b"], "names": ["x", "y"], "labels": [1]}',
         "validation/index.json: labels: not a list as long as names (2)"),
        (runlog.VALIDATION_INDEX, '{"classes": [{"a": 1}], "names": [], "labels": []}',
         "validation/index.json: classes: not a list of class names"),
        (runlog.VALIDATION_INDEX, '{"classes": ["a"], "names": [7], "labels": [0]}',
         "validation/index.json: names: not a list of file names"),
    ],
)  # fmt: skip
def test_a_damaged_run_file_is_the_runs_damage(
    runs_root: Path, tmp_path: Path, file: str, content: str, why: str
) -> None:
    path = _copy(runs_root, tmp_path)
    (path / file).write_text(content)
    summary = store.Run(path).summary()
    assert summary["state"] == "damaged" and summary["reason"] == why
    assert summary["epochs"] == 3  # what is whole is still shown


def test_the_event_log_is_read_once_and_a_long_line_is_damage(runs_root: Path, tmp_path: Path) -> None:
    path = _copy(runs_root, tmp_path)
    events = path / runlog.EVENTS
    whole = len(events.read_bytes().splitlines())
    with open(events, "ab") as fh:
        fh.write(b'{"event": "batch", "pad": "' + b"x" * (8 << 20) + b'"}\n')
    run = store.Run(path)
    records, generation = run.events()
    assert len(records) == whole
    assert run.summary()["reason"] == f"events.jsonl: line {whole + 1} is longer than 1 MiB"
    before = _bytes_read()
    for _ in range(5):  # a run list, every few seconds: nothing read twice
        assert run.events() == (records, generation)
        run.summary()
    assert _bytes_read() - before < 5 * 64 << 10
    events.unlink()  # a new run in the same directory: a new log, from its first line
    runlog.append_json_line(events, {"event": "start", "run": 2})
    assert run.events() == ([{"event": "start", "run": 2}], generation + 1)
    assert run.summary()["state"] == "running" and run.summary()["reason"] is None


def _bytes_read() -> int:
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["rchar"])


def test_cells_are_computed_once_per_pass_however_many_classes(tmp_path: Path) -> None:
    """200 classes, 400 images: every cell that holds images, as one cell's answer lists it."""
    rng = np.random.default_rng(0)
    k, n = 200, 400
    labels = rng.integers(0, k, n)
    (tmp_path / runlog.VALIDATION).mkdir()
    index = {"classes": [f"c{i}" for i in range(k)], "names": [f"{i}.jpg" for i in range(n)]}
    (tmp_path / runlog.VALIDATION_INDEX).write_text(json.dumps({**index, "labels": labels.tolist()}))
    probs = rng.dirichlet(np.ones(k) * 0.05, n).astype(np.float16)
    probs[: n // 2, :] = np.eye(k, dtype=np.float16)[labels[: n // 2]]  # half of them right
    np.save(tmp_path / runlog.pass_file(1), probs)
    run = store.Run(tmp_path)
    cells = store.cells(run, 1)
    assert cells is not None and n // 2 / k <= len(cells) <= n
    assert sum(len(v) for v in cells.values()) == n
    for (t, p), items in cells.items():
        assert items == store.cell(run, 1, t, p)
    empty = [(t, p) for t in range(k) for p in range(k) if (t, p) not in cells]
    assert all(store.cell(run, 1, t, p) == [] for t, p in empty[:500])


def test_a_cell_lists_each_images_typicality_and_sorts_by_it(runs_root: Path) -> None:
    run = store.Run(runs_root / "first")
    typical = np.load(runs_root / "first" / runlog.typicality_file(3)).astype(np.float32)
    assert store.passes(run)["typicality"] == [1, 2, 3]
    by_p = store.cell(run, 3, 0, 0)
    by_typicality = store.cell(run, 3, 0, 0, "typicality")
    assert (
        by_p
        and by_typicality
        and sorted(by_p, key=lambda it: it["index"]) == sorted(by_typicality, key=lambda it: it["index"])
    )
    assert all(it["typicality"] == float(typical[it["index"]]) for it in by_p)
    assert [it["p"] for it in by_p] == sorted(it["p"] for it in by_p)  # the least sure first, as ever
    shown = [it["typicality"] for it in by_typicality]
    assert shown == sorted(shown)  # the least typical first
    with pytest.raises(ValueError, match="order: p or typicality"):
        store.cell(run, 3, 0, 0, "size")


def test_a_run_without_typicality_lists_its_cells_as_before(runs_root: Path, tmp_path: Path) -> None:
    path = _copy(runs_root, tmp_path)
    for epoch in (1, 2, 3):
        (path / runlog.typicality_file(epoch)).unlink()
    run = store.Run(path)
    info = store.passes(run)
    assert info["typicality"] == [] and info["typicality_damaged"] == {} and info["damaged"] == {}
    items = store.cell(run, 3, 1, 1)
    assert items and all(set(it) == {"index", "name", "p"} for it in items)
    assert store.cell(run, 3, 1, 1, "typicality") == items  # nothing to sort by: by probability
    assert store.matrix(run, 3) is not None


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda p, n: _header(p, {"descr": "<f2", "fortran_order": False, "shape": (10**11,)}),
         "(100000000000,), not ({n},): the index has {n} images"),
        (lambda p, n: np.save(p, np.zeros((n, 2), dtype=np.float16)),
         "({n}, 2), not ({n},): the index has {n} images"),
        (lambda p, n: np.save(p, np.zeros(n, dtype=np.int8)), "|i1 values, not floats"),
        (lambda p, n: _header(p, {"descr": "<f2", "fortran_order": False, "shape": (n,)}, b"\0" * 6),
         "cut short"),
    ],
)  # fmt: skip
def test_damaged_typicality_is_that_passes_typicality_only(
    runs_root: Path, tmp_path: Path, write: object, why: str
) -> None:
    path = _copy(runs_root, tmp_path)
    n = _images(path)
    write(path / runlog.typicality_file(2), n)  # type: ignore[operator]
    run = store.Run(path)
    assert run.typicality(2) is None
    damage = f"validation/typicality-00002.npy: {why.format(n=n)}"
    assert run.typicality_damage == {2: damage}
    info = store.passes(run)
    assert info["typicality"] == [1, 3] and info["typicality_damaged"] == {"2": damage}
    assert info["damaged"] == {} and store.matrix(run, 2) is not None
    items = store.cell(run, 2, 0, 0, "typicality")
    assert items and all("typicality" not in it for it in items)
