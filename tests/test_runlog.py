"""The run directory's JSON lines: appended whole, read incrementally, torn lines left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pawlab import runlog


def test_append_and_read_from_a_position(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    assert runlog.read_json_lines(log) == ([], runlog.Position())  # no file yet: nothing
    runlog.append_json_line(log, {"event": "start", "epoch": 0})
    runlog.append_json_line(log, {"event": "epoch", "epoch": 1})
    records, position = runlog.read_json_lines(log)
    assert [r["event"] for r in records] == ["start", "epoch"]
    runlog.append_json_line(log, {"event": "end", "epoch": 1})
    more, after = runlog.read_json_lines(log, position)
    assert more == [{"event": "end", "epoch": 1}] and after.offset == log.stat().st_size
    assert runlog.read_json_lines(log, after) == ([], after)


def test_a_torn_last_line_waits_and_garbage_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\nnot json\n[1, 2]\n{"epoch": 2}\n{"epo')
    records, position = runlog.read_json_lines(log)
    assert records == [{"epoch": 1}, {"epoch": 2}]
    with open(log, "a") as fh:  # the writer finishes the line
        fh.write('ch": 3}\n')
    rest, _ = runlog.read_json_lines(log, position)
    assert rest == [{"epoch": 3}]


def test_a_replaced_log_is_read_from_its_beginning(tmp_path: Path) -> None:
    """A new run in the same run directory starts a new log: a reader loses none of it."""
    log = tmp_path / "events.jsonl"
    for epoch in range(5):
        runlog.append_json_line(log, {"event": "epoch", "epoch": epoch, "pad": "x" * 40})
    _, position = runlog.read_json_lines(log)
    log.unlink()
    runlog.append_json_line(log, {"event": "start", "run": 2})  # shorter than the old offset
    records, position = runlog.read_json_lines(log, position)
    assert records == [{"event": "start", "run": 2}]
    log.unlink()
    for epoch in range(8):  # longer than the old offset, and a new file
        runlog.append_json_line(log, {"event": "epoch", "epoch": epoch, "pad": "y" * 40})
    records, _ = runlog.read_json_lines(log, position)
    assert [r["epoch"] for r in records] == list(range(8))


def test_config_round_trip_and_damaged_config(tmp_path: Path) -> None:
    runlog.write_config(tmp_path, {"model": "m.safetensors"})
    assert runlog.read_config(tmp_path) == {"model": "m.safetensors"}
    assert json.loads((tmp_path / runlog.CONFIG).read_text())["model"] == "m.safetensors"
    (tmp_path / runlog.CONFIG).write_text("[1")
    assert runlog.read_config(tmp_path) is None
    assert runlog.read_config(tmp_path / "missing") is None


def test_kinds_are_data_and_the_module_needs_no_torch() -> None:
    assert runlog.EVENT_KINDS == ("start", "batch", "epoch", "end", "failed")
    code = "import sys, pawlab.runlog; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_drop_epochs_after_keeps_the_history_a_resumed_run_continues(tmp_path: Path) -> None:
    path = tmp_path / runlog.METRICS
    for epoch in (1, 2, 3):
        runlog.append_json_line(path, {"epoch": float(epoch), "val_loss": 1.0 / epoch})
    with open(path, "ab") as fh:
        fh.write(b'{"epoch": 4.0, "val_l')  # cut short by a kill
    runlog.drop_epochs_after(path, 2)
    assert [r["epoch"] for r in runlog.read_json_lines(path)[0]] == [1.0, 2.0]
    runlog.drop_epochs_after(tmp_path / "none.jsonl", 2)  # no file: nothing to do
    assert not (tmp_path / "none.jsonl").exists()


def _bytes_read() -> int:
    """Bytes this process has read so far (Linux: /proc/self/io)."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["rchar"])


def test_a_line_past_the_limit_is_skipped_and_never_read_twice(tmp_path: Path) -> None:
    log = tmp_path / runlog.EVENTS
    runlog.append_json_line(log, {"event": "start"})
    with open(log, "ab") as fh:  # an unfinished line of 5 MiB
        fh.write(b'{"pad": "' + b"x" * (5 << 20))
    records, position = runlog.read_json_lines(log)
    assert records == [{"event": "start"}]
    assert position.offset == log.stat().st_size and position.tail == b"" and position.skipping
    assert position.skipped == f"line 2 is longer than {runlog.MAX_LINE >> 20} MiB"
    before = _bytes_read()
    again = runlog.read_json_lines(log, position)
    assert again == ([], position) and _bytes_read() - before < 64 << 10  # the head only
    with open(log, "ab") as fh:  # the long line ends, a whole one follows, and half of another
        fh.write(b'"}\n{"event": "end"}\n{"event": "ep')
    records, position = runlog.read_json_lines(log, position)
    assert records == [{"event": "end"}] and position.tail == b'{"event": "ep' and position.lines == 3
    with open(log, "ab") as fh:
        fh.write(b'och"}\n')
    assert runlog.read_json_lines(log, position)[0] == [{"event": "epoch"}]  # the tail, not read again


def test_lines_nested_too_deeply_are_skipped_with_the_reason(tmp_path: Path) -> None:
    log = tmp_path / runlog.EVENTS
    depth = 10**6 // 2  # within the line limit, far beyond the parser's recursion
    log.write_bytes(
        b"[" * depth + b"]" * depth + b"\n" + b'{"a": ' * 40 + b"1" + b"}" * 40 + b'\n{"ok": 1}\n'
    )
    records, position = runlog.read_json_lines(log)
    assert records == [{"ok": 1}]
    assert position.skipped == f"line 1 is nested more than {runlog.MAX_DEPTH} deep"


def test_links_and_fifos_are_refused_without_waiting(tmp_path: Path) -> None:
    import os
    import threading

    outside = tmp_path / "secret"
    outside.write_text("root:x:0:0\n")
    run = tmp_path / "run"
    (run / "validation").mkdir(parents=True)
    os.mkfifo(run / runlog.EVENTS)
    (run / "validation" / "index.json").symlink_to(outside)
    (run / "seen").symlink_to(tmp_path)
    found: dict[str, str] = {}

    def read_all() -> None:
        for relative in (runlog.EVENTS, runlog.VALIDATION_INDEX, "seen/secret"):
            try:
                runlog.open_in(run, relative)
            except runlog.DamagedFile as exc:
                found[relative] = str(exc)
        try:
            runlog.read_json_lines(run / runlog.EVENTS)
        except runlog.DamagedFile as exc:
            found["lines"] = str(exc)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked on the FIFO: let it go, then fail
        with open(run / runlog.EVENTS, "w"):
            pass
        raise AssertionError("opening a FIFO blocked")
    assert found == {
        runlog.EVENTS: "events.jsonl: a FIFO, not a regular file",
        runlog.VALIDATION_INDEX: "validation/index.json: a link, not followed",
        "seen/secret": "seen/secret: seen is a link, not followed",
        "lines": "events.jsonl: a FIFO, not a regular file",
    }
