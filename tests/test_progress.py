from __future__ import annotations

import gc
import io
import json
import re
import shutil
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm
from tqdm.notebook import tqdm as notebook_tqdm

from pawlab import progress
from pawlab.errors import ConfigError
from pawlab.progress import LineProgress, closing, progress_bar, stage
from tests.conftest import write_tree
from tests.test_cli import TINY_TOML, pawlab


def test_a_log_gets_plain_lines_with_the_count_the_rate_and_the_time_left() -> None:
    log = io.StringIO()  # not a terminal
    bar = progress_bar(range(4), total=4, desc="decoding", stream=log)
    assert isinstance(bar, LineProgress)
    bar.interval = 0.0  # a line for every step (30 s in use)
    assert list(bar) == [0, 1, 2, 3]
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("decoding: 1/4 img (25%), ") and "img/s" in lines[0] and "left" in lines[0]
    assert lines[-2].startswith("decoding: 4/4 img (100%)") and lines[-1].startswith(
        "decoding: done, 4 img in "
    )


def test_a_short_stage_in_a_log_stays_silent_and_a_disabled_one_too() -> None:
    log = io.StringIO()
    bar = progress_bar(total=10, desc="features", stream=log)
    bar.update(10)
    bar.close()
    assert log.getvalue() == ""  # under 30 s: nothing to report
    off = progress_bar(total=10, desc="x", enabled=False, stream=log)
    off.update(10)
    off.close()
    assert log.getvalue() == ""


def _in_a_notebook(monkeypatch: pytest.MonkeyPatch, widgets: bool) -> io.StringIO:
    """The notebook condition, faked: the kernel's stderr (not a terminal) and its detection."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress, "widgets_available", lambda: widgets)
    return stderr


def test_a_notebook_gets_a_widget_and_no_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ipywidgets")
    stderr = _in_a_notebook(monkeypatch, widgets=True)
    bar = progress_bar(range(3), total=3, desc="decoding")
    assert isinstance(bar, notebook_tqdm)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert stderr.getvalue() == ""  # the widget only: no text bar, no 30-s lines


def test_a_notebook_without_ipywidgets_gets_one_text_bar_on_its_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = _in_a_notebook(monkeypatch, widgets=False)
    bar = progress_bar(range(3), total=3, desc="decoding", leave=True)
    assert type(bar) is tqdm and not isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert "decoding: 100%" in stderr.getvalue() and "3/3" in stderr.getvalue()


def test_in_a_notebook_a_given_log_still_gets_lines_and_disabled_stays_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _in_a_notebook(monkeypatch, widgets=True)
    assert isinstance(progress_bar(total=3, desc="x", stream=io.StringIO()), LineProgress)
    off = progress_bar(total=3, desc="x", enabled=False)
    assert type(off) is tqdm and off.disable


def test_outside_a_kernel_there_is_no_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress.in_notebook()  # and IPython was not imported to find out
    assert "IPython" not in sys.modules


def test_a_kernels_shell_or_a_subclass_of_it_is_a_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZMQInteractiveShell:
        pass

    class ColabShell(ZMQInteractiveShell):
        pass

    class TerminalInteractiveShell:
        pass

    for shell, expected in [
        (ZMQInteractiveShell(), True),
        (ColabShell(), True),
        (TerminalInteractiveShell(), False),
    ]:
        fake = types.ModuleType("IPython")
        fake.get_ipython = lambda shell=shell: shell  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "IPython", fake)
        assert progress.in_notebook() is expected


def test_the_training_loops_epoch_bar_follows_the_same_rule(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ipywidgets")
    from pawlab.training.callbacks import ProgressPrinter

    trainer: Any = types.SimpleNamespace(
        is_main=True,
        batches_per_epoch=7,
        config=types.SimpleNamespace(epochs=3),
        state=types.SimpleNamespace(epoch=1),
    )
    stderr = _in_a_notebook(monkeypatch, widgets=True)
    printer = ProgressPrinter(io.StringIO())
    printer.before_epoch(trainer)
    assert isinstance(printer.bar, notebook_tqdm)
    assert (printer.bar.total, printer.bar.desc, printer.bar.unit) == (7, "epoch 1/3", "batch")
    printer._close()
    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    printer.before_epoch(trainer)
    assert isinstance(printer.bar, LineProgress)  # stderr is a log here
    printer._close()
    assert stderr.getvalue() == ""
    quiet = ProgressPrinter(io.StringIO(), bar=False)
    quiet.before_epoch(trainer)
    assert quiet.bar is None


def _wait_for(condition: Any, what: str) -> None:
    """Until ``condition()`` holds (a background timer's work), failing after a generous while."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def test_a_stage_stuck_in_one_long_step_still_gets_its_lines() -> None:
    log = io.StringIO()
    bar = LineProgress(None, 10, "features", "img", log, interval=0.05, first=0.05)
    bar.update(3)  # then nothing more for a while: the timer writes the lines
    _wait_for(lambda: log.getvalue().count("features: 3/10 img (30%), ") >= 2, "two lines from the timer")
    bar.close()
    lines = log.getvalue().splitlines()
    assert all(ln.startswith("features: ") and "/10 img" in ln for ln in lines[:-1])
    assert lines[-1].startswith("features: done, 3 img in ") and lines[-1].endswith(" img/s)")
    bar.close()  # once only
    assert log.getvalue().splitlines() == lines


def test_the_done_line_has_the_count_the_time_and_the_rate() -> None:
    log = io.StringIO()
    bar = LineProgress(range(5), 5, "decoding", "img", log, interval=0.0)
    assert list(bar) == [0, 1, 2, 3, 4]  # the end of the iteration closes it, as tqdm does
    lines = log.getvalue().splitlines()
    assert lines[0] == "decoding: 0/5 img (0%), 0s so far"  # at once with a zero interval
    assert re.fullmatch(r"decoding: done, 5 img in 0s \([0-9.]+ img/s\)", lines[-1]), lines[-1]


def test_a_stage_without_a_count_says_how_long_it_has_run_and_nothing_when_it_fails() -> None:
    log = io.StringIO()
    with stage("writing the model file", stream=log) as step:
        step.interval = step.first = 0.05
        _wait_for(lambda: log.getvalue(), "a line from the timer")
    lines = log.getvalue().splitlines()
    assert all(re.fullmatch(r"writing the model file: \d+s so far", ln) for ln in lines[:-1]), lines
    assert re.fullmatch(r"writing the model file: done in \d+s", lines[-1]), lines
    failing = io.StringIO()
    with pytest.raises(ValueError), stage("fitting", stream=failing) as step:
        step.interval = step.first = 0.05
        _wait_for(lambda: failing.getvalue(), "a line from the timer")
        raise ValueError
    assert "done" not in failing.getvalue()


def test_a_bar_closed_by_a_failing_block_ends_without_a_done_line() -> None:
    failing = io.StringIO()
    with (
        pytest.raises(KeyboardInterrupt),
        closing(progress_bar(total=4, desc="features", stream=failing)) as bar,
    ):
        bar.interval = bar.first = 0.0
        bar.update(2)
        raise KeyboardInterrupt
    assert "features: 2/4 img" in failing.getvalue() and "done" not in failing.getvalue()
    ok = io.StringIO()
    with closing(progress_bar(total=1, desc="features", stream=ok)) as bar:
        bar.interval = bar.first = 0.0
        bar.update(1)
    assert "features: done, 1 img" in ok.getvalue()


def test_a_log_only_stage_shows_nothing_on_a_terminal_and_nothing_when_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(terminal, "isatty", lambda: True)
    with stage("listing", total=3, stream=terminal) as step:
        assert type(step) is tqdm and step.disable
        step.update(3)
    with stage("listing", total=3, stream=io.StringIO(), enabled=False) as step:
        assert type(step) is tqdm and step.disable


def test_an_abandoned_bars_timer_ends() -> None:
    bar = LineProgress(None, 10, "abandoned", "img", io.StringIO(), interval=0.05, first=0.05)
    del bar  # an exception dropped it unclosed
    gc.collect()
    _wait_for(lambda: not any(t.name == "progress: abandoned" for t in threading.enumerate()), "the end")


def test_the_interval_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.INTERVAL_VARIABLE, raising=False)
    assert progress.log_interval() == progress.INTERVAL == 30
    monkeypatch.setenv(progress.INTERVAL_VARIABLE, "0.5")
    assert progress.log_interval() == 0.5
    assert progress_bar(total=1, desc="x", stream=io.StringIO()).interval == 0.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(progress.INTERVAL_VARIABLE, bad)
        with pytest.raises(ConfigError, match=progress.INTERVAL_VARIABLE):
            progress.log_interval()


# ----------------------------------------------------------------------------- logs of real commands


def _stages(log: str, expected: dict[str, str | None]) -> None:
    """Each stage of ``expected`` (its description -> what its done line counts, e.g. ``"27 img"``;
    ``""`` for a stage with no count, None for any) has a first line and a done line."""
    lines = log.splitlines()
    for desc, count in expected.items():
        started = [ln for ln in lines if ln.startswith(f"{desc}: ") and not ln.startswith(f"{desc}: done")]
        assert started, f"no first line for {desc!r} in:\n{log}"
        done = f"{desc}: done" + ("" if count is None else f", {count} in " if count else " in ")
        assert any(ln.startswith(done) for ln in lines), f"no {done!r} in:\n{log}"


EVERY_STEP = {progress.INTERVAL_VARIABLE: "0"}  # every stage writes a first line, a line a step, a last


def test_a_log_of_prepare_has_every_stage_and_q_none(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 12, "dog": 12}, flat=True)
    for i in range(2):  # duplicates, of which any in validation beside their twin are dropped
        shutil.copy(src / f"cat.{i}.jpg", src / f"cat.{100 + i}.jpg")
    (src / "dog.99.jpg").write_bytes(b"")  # decoded, then dropped
    out = tmp_path / "out"
    quiet = pawlab("prepare", src, out, "--size", 8, "--workers", 1, "--dedupe", "-q", env=EVERY_STEP)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    shutil.rmtree(out)
    proc = pawlab("prepare", src, out, "--size", 8, "--workers", 1, "--dedupe", "--json", env=EVERY_STEP)
    assert proc.returncode == 0, proc.stderr
    expected: dict[str, str | None] = {
        f"listing {src}": "27 files",
        f"comparing 27 files with {out}": "",
        "packing 27 images at 8x8: new arrays, unchanged images copied": "",
        "decoding": "27 img",
        "dropping the unreadable files": None,
    }
    if json.loads(proc.stdout)["duplicates"]:
        expected["dropping validation's duplicates of training images"] = None
    _stages(proc.stderr, expected)


@pytest.mark.slow
def test_a_log_of_train_has_every_stage_and_q_none(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 10, "dog": 10}, flat=True)
    arch = tmp_path / "tiny.toml"
    arch.write_text(TINY_TOML)
    args = ["train", src, "--arch-file", arch, "--epochs", 1, "--workers", 1]
    quiet_env = {**EVERY_STEP, "PAWLAB_CACHE_DIR": str(tmp_path / "quiet-cache")}
    quiet = pawlab(*args, "--run-dir", tmp_path / "quiet", "-q", env=quiet_env)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    run = tmp_path / "run"
    proc = pawlab(*args, "--run-dir", run, env={**EVERY_STEP, "PAWLAB_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    train_n, val_n = re.findall(r"training (\d+) images .*validating on (\d+)", proc.stdout)[0]
    expected: dict[str, str | None] = {
        f"listing {src}": "20 files",
        "decoding": "20 img",
        "epoch 1/1": None,
        "writing the dashboard's validation thumbnails": f"{val_n} img",
        f"fitting the in-distribution model ({train_n} training, {val_n} validation images)": "",
        f"writing the model file {run / 'model.safetensors'}": "",
    }
    if "guarded bf16 inference" in proc.stdout:  # where bf16 is fast: its check ran
        expected["checking bf16 inference against fp32: fp32"] = f"{val_n} img"
        expected["checking bf16 inference against fp32: bf16"] = f"{val_n} img"
    _stages(proc.stderr, expected)
