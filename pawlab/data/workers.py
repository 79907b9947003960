"""A process pool for decoding: one worker process per core, started on first use.

A worker that dies is a `WorkerError` at once (never a job that waits forever), and workers end
with the process that started them. Workers import no torch.
"""

from __future__ import annotations

import ast
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import wraps
from pathlib import Path
from types import FrameType
from typing import ParamSpec, TypeVar

from pawlab.errors import WorkerError

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


# A container's CPU limit: cgroup v2's "QUOTA PERIOD" (or "max PERIOD"), or cgroup v1's two files
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def usable_cores() -> int:
    """The cores this process may keep busy: those it may run on (its affinity, where the
    system says), at most its container's CPU limit rounded up (a limit of 2 CPUs on a 64-core
    machine is 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit is not None else cores)


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int | None:
    """This cgroup's CPU limit, rounded up to whole CPUs; None when it has none (or says
    nothing readable)."""
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = v1[0].read_text().strip(), v1[1].read_text().strip()
        except OSError:
            return None
    if not (quota.isdigit() and period.isdigit()) or int(period) == 0:
        return None  # "max" (v2) or "-1" (v1): no limit
    return max(1, math.ceil(int(quota) / int(period)))


def default_workers() -> int:
    return usable_cores()


_UNGUARDED = (
    "pawlab was called while a worker process was starting: a script that calls pawlab must do so"
    ' under `if __name__ == "__main__":` (worker processes run the script again as they start)'
)


def refuse_in_starting_process() -> None:
    """`WorkerError` in a process that is still starting. ``spawn`` and ``forkserver`` run the
    parent's script again there, and a script that calls pawlab outside ``if __name__ ==
    "__main__":`` would start its job again: wait for the parent's lock, or start workers of
    its own, and never finish starting."""
    # multiprocessing marks a process that is still running its parent's script with this flag;
    # its own refusal to start processes from there reads the same one
    if getattr(mp.current_process(), "_inheriting", False):
        raise WorkerError(_UNGUARDED)


def unguarded_script_line() -> tuple[str, int] | None:
    """(script, line) when this call comes from a line at the top level of the running script
    that no ``if`` block holds: worker processes, which run the script again as they start,
    would make the same call there. None otherwise (a guarded call, an interactive session, a
    script that cannot be read)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str):
        return None
    # what multiprocessing.spawn runs again in a starting worker: not a package's __main__
    # (``python -m pawlab``), nor IPython's
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None
    if name is None and Path(path).stem == "ipython":
        return None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None or os.path.abspath(frame.f_code.co_filename) != os.path.abspath(path):
        return None  # not the script's own code (a notebook cell, `python -c`)
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    line = frame.f_lineno
    for node in tree.body:  # the top-level statement that holds the line
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return None if isinstance(node, ast.If) else (path, line)
    return None


def refuse_unguarded_script() -> None:
    """`WorkerError`, before any worker starts, for a call that workers would make again as
    they run the script (`unguarded_script_line`)."""
    where = unguarded_script_line()
    if where is not None:
        raise WorkerError(
            f"{Path(where[0]).name}, line {where[1]}: pawlab is called at the script's top level, and"
            " the worker processes it starts would run it again: move the call under"
            ' `if __name__ == "__main__":`'
        )


def entry_point(fn: Callable[P, R]) -> Callable[P, R]:
    """A public function that refuses, first of all, to run in a process that is still starting
    (`refuse_in_starting_process`): before it reads or writes anything that its parent, running
    the same call, is writing."""

    @wraps(fn)
    def refusing(*args: P.args, **kwargs: P.kwargs) -> R:
        refuse_in_starting_process()
        return fn(*args, **kwargs)

    return refusing


# Chunks of tasks queued per worker ahead of the consumer: enough to keep the workers busy, few
# enough that results waiting for a slow consumer (decoded images waiting for the network) stay
# a few megabytes instead of the whole job.
AHEAD = 4
# Seconds a stopped worker has to clean up after itself (remove its temporary file) before it is
# killed outright.
STOP_SECONDS = 10.0


class _Stopped(BaseException):
    """SIGTERM in a worker's task: unwinds it, so that its ``finally`` blocks run (an
    `atomic_write` removes its temporary file) before the worker exits."""


_in_task = False  # whether this worker process is running a chunk


def _run_chunk(fn: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    global _in_task
    _in_task = True
    try:
        return [fn(t) for t in chunk]
    except _Stopped:
        os._exit(1)
    finally:
        _in_task = False


_stopping = False  # SIGTERM seen: later ones must not interrupt the clean-up


def _on_sigterm(signum: int, frame: object) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    if _in_task:
        raise _Stopped
    os._exit(1)


def _exit_with_parent() -> None:
    """Worker initializer: end the worker when the process that started it is gone (killed,
    even by SIGKILL), instead of waiting for work forever; on SIGTERM (`Workers.close`), end
    it once its task has cleaned up after itself.

    A process-wide SIGTERM may land on any thread that does not block it (the decoders' native
    threads too), and Python runs its handler only when the main thread next runs Python code:
    never, for a worker waiting in a semaphore for work. So every signal also wakes a watching
    thread (`signal.set_wakeup_fd`), which ends an idle worker itself and otherwise sends the
    signal to the main thread, where it interrupts whatever waits there."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    parent = mp.parent_process()
    watched = [wake_r] if parent is None else [wake_r, parent.sentinel]
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the watcher inherits it
    try:
        threading.Thread(target=_watch, args=(watched, wake_r), daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _watch(watched: list[int], wakeup: int) -> None:
    while True:
        ready = mp.connection.wait(watched)
        if wakeup not in ready:  # the parent is gone
            os._exit(1)
        if signal.SIGTERM in os.read(wakeup, 64):
            if not _in_task:
                os._exit(1)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)


class Workers:
    """A process pool for the stages of one job, started on first use (small jobs run
    in-process) and shared by the stages, so that a job pays for starting workers once.

    ``forkserver`` keeps workers clean of the parent's threads (torch, OpenMP), which makes
    starting them safe even after a model was built. A worker that dies (killed, out of memory,
    or a script that calls pawlab at import, which each worker runs again as it starts) is a
    `WorkerError` at once, not a job that waits forever.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], tasks: Sequence[T], chunksize: int = 16) -> Iterator[R]:
        """``map(fn, tasks)``, in order, with at most `AHEAD` chunks per worker in flight."""
        if self.workers <= 1 or len(tasks) < 2 * chunksize:
            return map(fn, tasks)
        if self._pool is None:
            refuse_in_starting_process()
            refuse_unguarded_script()
            methods = mp.get_all_start_methods()
            context = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_exit_with_parent)
        return self._ordered(self._pool, fn, tasks, chunksize)

    def _ordered(
        self, pool: ProcessPoolExecutor, fn: Callable[[T], R], tasks: Sequence[T], chunksize: int
    ) -> Iterator[R]:
        ahead: deque[Future[list[R]]] = deque()
        try:
            for start in range(0, len(tasks), chunksize):
                ahead.append(pool.submit(_run_chunk, fn, tasks[start : start + chunksize]))
                if len(ahead) >= AHEAD * self.workers:
                    yield from ahead.popleft().result()
            while ahead:
                yield from ahead.popleft().result()
        except BrokenProcessPool as exc:
            raise WorkerError(
                "a worker process exited unexpectedly (killed, out of memory, or a script that calls "
                'pawlab outside `if __name__ == "__main__":`, which workers run again as they start)'
            ) from exc
        finally:
            for f in ahead:
                f.cancel()

    def close(self) -> None:
        """Stop the workers now, even in the middle of a task (a job that stopped early, on an
        error or Ctrl-C, must not wait for them or leave them writing)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        # ProcessPoolExecutor can terminate its workers only from Python 3.14 on; before that,
        # through its process table, as multiprocessing.Pool.terminate() did
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.terminate()
        for p in processes:
            p.join(STOP_SECONDS)
            if p.is_alive():  # SIGTERM lost (seen: a worker idle on the task queue): end it for sure
                p.kill()
                p.join()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parallel_map(
    fn: Callable[[T], R], tasks: Sequence[T], *, workers: int, chunksize: int = 16
) -> Iterator[R]:
    """``map(fn, tasks)`` in order, in ``workers`` processes when the job is big enough."""
    with Workers(workers) as pool:
        yield from pool.map(fn, tasks, chunksize)
