from __future__ import annotations

import io
import sys
import types
from typing import Any

import pytest
from tqdm import tqdm
from tqdm.notebook import tqdm as notebook_tqdm

from pawlab import progress
from pawlab.progress import LineProgress, progress_bar


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
