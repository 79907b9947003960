"""Progress of long stages (listing and decoding a source, feature extraction, training epochs,
prediction, the records written at the end of training): a bar on a terminal; in a Jupyter
notebook, a widget bar (a text bar when ipywidgets is missing); and when stderr is a file or a
pipe (a log), plain lines, so that a long job is never silent: a first one `FIRST` seconds into
a stage (what it does, done/total), then one every `INTERVAL` seconds with the rate and the time
left, printed by a timer even while the stage is stuck in one long step, and a last
``DESC: done, N UNIT in DURATION (R UNIT/s)`` for any stage that printed a line. Shorter stages
stay silent. `progress_bar` is the one place that decides; `stage` wraps a step that has no
count of its own."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TextIO, TypeVar

from tqdm import tqdm

from pawlab.errors import ConfigError

T = TypeVar("T")
INTERVAL = 30.0  # seconds between two lines in a log
FIRST = 2.0  # seconds into a stage before its first line in a log: a shorter stage prints nothing
INTERVAL_VARIABLE = "PAWLAB_PROGRESS_INTERVAL"  # seconds, in place of INTERVAL (tests: a small one)
NOTEBOOK_TEXT_INTERVAL = 1.0  # seconds between two redraws of a text bar in a notebook (each is a message)
_MIN_WAIT = 0.05  # seconds: the timer never spins, whatever the interval


def log_interval() -> float:
    """Seconds between two lines in a log: `INTERVAL`, or ``$PAWLAB_PROGRESS_INTERVAL``."""
    raw = os.environ.get(INTERVAL_VARIABLE)
    if raw is None or not raw.strip():
        return INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigError(f"{INTERVAL_VARIABLE}: must be a number of seconds, got {raw!r}")
    return seconds


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _rate(per_second: float) -> str:
    """``1234``, ``4.5``, ``0.25``: a rate with the digits that matter."""
    if per_second >= 10:
        return f"{per_second:.0f}"
    return f"{per_second:.1f}" if per_second >= 1 else f"{per_second:.2f}"


class LineProgress(Generic[T]):
    """tqdm's ``update``/``close``/iteration (``total`` None: not known), as lines in a log (see
    the module). A daemon timer prints the lines that fall due between two updates; it ends with
    `close`, `stop`, or the bar's being dropped (an exception that abandons it)."""

    def __init__(
        self,
        iterable: Iterable[T] | None,
        total: int | None,
        desc: str,
        unit: str,
        stream: TextIO,
        interval: float | None = None,
        first: float = FIRST,
    ) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream = stream
        self.interval = log_interval() if interval is None else interval
        self.first = first
        self.done, self.lines = 0, 0
        self.start = self.last = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        ticker = threading.Thread(
            target=_tick, args=(weakref.ref(self), self._stopped), name=f"progress: {desc}", daemon=True
        )
        ticker.start()
        self.print_if_due()  # at once when the interval is 0 (a test's)

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update()
        self.close()  # as tqdm: the done line when the iteration ends

    def due_in(self) -> float:
        """Seconds until the next line is due (0 or less: now)."""
        wait = min(self.first, self.interval) if self.lines == 0 else self.interval
        return (self.start if self.lines == 0 else self.last) + wait - time.monotonic()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        so_far = f"{_duration(elapsed)} so far"
        if not self.total:
            counted = f"{self.done} {self.unit}, {_rate(rate)} {self.unit}/s, " if self.done else ""
            return f"{self.desc}: {counted}{so_far}"
        count = f"{self.desc}: {self.done}/{self.total} {self.unit} ({self.done / self.total:.0%})"
        if rate <= 0:
            return f"{count}, {so_far}"
        left = _duration(max(self.total - self.done, 0) / rate)
        return f"{count}, {_rate(rate)} {self.unit}/s, {left} left"

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")  # one write: a line whole, also beside the timer's
        self.stream.flush()

    def print_if_due(self) -> None:
        with self._lock:
            if not self._stopped.is_set() and self.due_in() <= 0:
                self.last = time.monotonic()
                self.lines += 1
                self._write(self.line())

    def update(self, n: int = 1) -> None:
        self.done += n
        self.print_if_due()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """What a bar shows beside its count; a line has no room for it."""

    def stop(self) -> None:
        """End the timer, with no last line (a stage that failed)."""
        self._stopped.set()

    def close(self) -> None:
        """The done line, when the stage printed any line or lasted until its first was due; then
        no more."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            elapsed = time.monotonic() - self.start
            if self.lines or elapsed >= min(self.first, self.interval):
                self._write(f"{self.desc}: done{self._summary(elapsed)}")

    def _summary(self, elapsed: float) -> str:
        """``, 3000 img in 12s (250 img/s)``, or `` in 12s`` when nothing was counted."""
        if not self.done:
            return f" in {_duration(elapsed)}"
        rate = _rate(self.done / max(elapsed, 1e-9))
        return f", {self.done} {self.unit} in {_duration(elapsed)} ({rate} {self.unit}/s)"


def _tick(bar: weakref.ref[LineProgress[Any]], stopped: threading.Event) -> None:
    """The timer of a `LineProgress`: wake when its next line is due, print it if no update did."""
    wait = 0.0
    while not stopped.wait(max(wait, _MIN_WAIT)):
        live = bar()
        if live is None:  # dropped unclosed: its stage is over
            return
        try:
            live.print_if_due()
        except (OSError, ValueError):  # the log is gone (closed, a reader that left): its writer says so
            return
        wait = live.due_in()
        del live


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's shell is a ``ZMQInteractiveShell``,
    or a subclass such as Colab's). Imports nothing: IPython is looked for in ``sys.modules``."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return shell is not None and any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__)


def widgets_available() -> bool:
    """Whether tqdm can draw its notebook bar: ipywidgets (and IPython) import."""
    if importlib.util.find_spec("ipywidgets") is None:
        return False
    try:
        from tqdm import notebook
    except ImportError:  # IPython missing or broken
        return False
    return getattr(notebook, "IProgress", None) is not None


def _notebook_bar(iterable: Iterable[T] | None, total: int | None, desc: str, unit: str, leave: bool) -> Any:
    """A widget bar, or (no ipywidgets) a text bar on the notebook's stderr: one or the other."""
    if widgets_available():
        from tqdm.notebook import tqdm as widget_tqdm

        return widget_tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        file=sys.stderr,
        mininterval=NOTEBOOK_TEXT_INTERVAL,
    )


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None,
    desc: str,
    unit: str = "img",
    enabled: bool = True,
    leave: bool = False,
    stream: TextIO | None = None,
    log_only: bool = False,
) -> Any:
    """A bar on a terminal, a widget in a notebook, plain lines in a log (see the module), nothing
    when not ``enabled``. A ``stream`` other than stderr is a log or a terminal, never the
    notebook's output. ``log_only``: lines in a log, and nothing on a terminal or in a notebook
    (a step their bars never showed)."""
    out = stream or sys.stderr
    notebook = enabled and out is sys.stderr and in_notebook()
    terminal = enabled and not notebook and out.isatty()
    if not enabled or (log_only and (notebook or terminal)):
        return tqdm(iterable, total=total, disable=True)
    if notebook:
        return _notebook_bar(iterable, total, desc, unit, leave)
    if terminal:
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=out)
    return LineProgress(iterable, total, desc, unit, out)


@contextmanager
def closing(bar: Any) -> Iterator[Any]:
    """``bar`` (a `progress_bar`) closed when the block ends; when the block fails, its lines in
    a log end without a done line."""
    try:
        yield bar
    except BaseException:
        if isinstance(bar, LineProgress):
            bar.stop()
        raise
    bar.close()


@contextmanager
def stage(
    desc: str, *, total: int | None = None, unit: str = "", enabled: bool = True, stream: TextIO | None = None
) -> Iterator[Any]:
    """A step with no bar of its own, in a log (`progress_bar` with ``log_only``): its lines while
    it lasts (done/total where it calls ``update``, else the time so far) and its done line; no
    done line when it fails."""
    with closing(
        progress_bar(total=total, desc=desc, unit=unit, enabled=enabled, stream=stream, log_only=True)
    ) as bar:
        yield bar
