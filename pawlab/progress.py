"""Progress of long stages (decoding, training epochs, feature extraction, prediction): a bar on
a terminal; in a Jupyter notebook, a widget bar (a text bar when ipywidgets is missing); and
when stderr is a file or a pipe (a log), a plain line at most every `INTERVAL` seconds with
done/total, the rate and the time left, so that a long job is never silent. `progress_bar` is
the one place that decides."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
INTERVAL = 30.0  # seconds between two lines in a log
NOTEBOOK_TEXT_INTERVAL = 1.0  # seconds between two redraws of a text bar in a notebook (each is a message)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LineProgress(Generic[T]):
    """tqdm's ``update``/``close``/iteration, writing a line every ``interval`` seconds (and a
    last one when it wrote any)."""

    def __init__(
        self,
        iterable: Iterable[T] | None,
        total: int,
        desc: str,
        unit: str,
        stream: TextIO,
        interval: float = INTERVAL,
    ) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream, self.interval = stream, interval
        self.done, self.lines = 0, 0
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        left = f", {_duration((self.total - self.done) / rate)} left" if rate > 0 and self.total else ""
        return f"{self.desc}: {self.done}/{self.total} {self.unit}{share}, {rate:.0f} {self.unit}/s{left}"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.lines += 1
            print(self.line(), file=self.stream, flush=True)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """What a bar shows beside its count; a line has no room for it."""

    def close(self) -> None:
        if self.lines:
            print(
                f"{self.desc}: done, {self.done} {self.unit} in {_duration(time.monotonic() - self.start)}",
                file=self.stream,
                flush=True,
            )
            self.lines = 0


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


def _notebook_bar(iterable: Iterable[T] | None, total: int, desc: str, unit: str, leave: bool) -> Any:
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
    total: int,
    desc: str,
    unit: str = "img",
    enabled: bool = True,
    leave: bool = False,
    stream: TextIO | None = None,
) -> Any:
    """A bar on a terminal, a widget in a notebook, plain lines in a log (see the module), nothing
    when not ``enabled``. A ``stream`` other than stderr is a log or a terminal, never the
    notebook's output."""
    out = stream or sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if out is sys.stderr and in_notebook():
        return _notebook_bar(iterable, total, desc, unit, leave)
    if out.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=out)
    return LineProgress(iterable, total, desc, unit, out)
