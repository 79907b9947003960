"""The decoding workers: a process pool that fails instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pawlab.atomic import atomic_write
from pawlab.data.workers import Workers
from pawlab.errors import WorkerError


def _square(x: int) -> int:
    return x * x


def _die(x: int) -> int:
    if x == 40:
        os._exit(3)  # as the kernel's OOM killer would end it: no exception, no cleanup
    return x


def test_workers_map_in_order_in_processes() -> None:
    with Workers(2) as pool:
        assert list(pool.map(_square, list(range(100)), chunksize=8)) == [x * x for x in range(100)]


def test_a_dead_worker_is_an_error_not_a_wait() -> None:
    with Workers(2) as pool, pytest.raises(WorkerError, match="exited unexpectedly"):
        list(pool.map(_die, list(range(100)), chunksize=8))


def test_a_script_without_a_main_guard_fails_instead_of_hanging(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for i in range(70):  # enough images for the decoding to start worker processes
            Image.new("RGB", (8, 8), (i, 0, 0)).save(src / cls / f"{i}.png")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import pawlab\n"
        f"pawlab.prepare({str(src)!r}, {str(tmp_path / 'out')!r}, pawlab.DataConfig(size=8, workers=2))\n"
    )
    env = {**os.environ, "PAWLAB_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert run.returncode != 0, run.stderr
    # the script ends with the error before any worker starts, naming the line to move
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("pawlab.errors.WorkerError: unguarded.py, line 2: "), run.stderr
    assert 'move the call under `if __name__ == "__main__":`' in last
    assert run.stderr.count("Traceback") == 1, run.stderr  # no worker ran the script again


def test_only_a_call_from_the_scripts_unguarded_top_level_is_refused(tmp_path: Path) -> None:
    code = (
        "from pawlab.data.workers import unguarded_script_line\n"
        "def where():\n"
        "    return unguarded_script_line()\n"
        "top = where()\n"
        'if __name__ == "__main__":\n'
        "    print(top, where())\n"
    )
    script = tmp_path / "script.py"
    script.write_text(code)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__main__.py").write_text(code)  # workers never run a package's __main__ again
    runs = {
        f"{(str(script), 4)} None": [sys.executable, str(script)],
        "None None": [sys.executable, "-m", "pkg"],
    }
    for printed, command in runs.items():
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.stdout.strip() == printed, run.stderr


def test_every_public_entry_refuses_in_a_starting_process_before_touching_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing as mp

    import pawlab
    from pawlab.serve import serve

    entries = [
        pawlab.prepare,
        pawlab.load_dataset,
        pawlab.train,
        pawlab.resume,
        pawlab.evaluate,
        pawlab.submit,
        pawlab.load_model,
        serve,
    ]
    monkeypatch.setattr(mp.current_process(), "_inheriting", True, raising=False)
    for entry in entries:
        with pytest.raises(WorkerError, match="while a worker process was starting"):
            entry(tmp_path / "in", tmp_path / "out")  # type: ignore[operator]
    assert list(tmp_path.iterdir()) == []


def _pid_or_wait(x: int) -> int:
    if x >= 4:
        time.sleep(600)  # a task that would hold a worker far longer than any test
    return os.getpid()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1].startswith("Z")  # exited, not yet reaped
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_closing_stops_workers_in_the_middle_of_a_task() -> None:
    pool = Workers(2)
    results = pool.map(_pid_or_wait, list(range(40)), chunksize=1)
    pids = {next(results), next(results)}  # the consumer stops early: the rest is still running
    pool.close()
    assert pids and all(_gone(p) for p in pids)


def _write_slowly(task: tuple[str, int]) -> int:
    """Task ``i`` of folder ``d``: from the fifth on, a write that holds its temporary file."""
    folder, i = task
    if i >= 4:
        atomic_write(Path(folder) / f"{i}.bin", lambda tmp: (tmp.write_bytes(b"x"), time.sleep(600)))
    return os.getpid()


def test_a_worker_stopped_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    pool = Workers(2)
    results = pool.map(_write_slowly, [(str(tmp_path), i) for i in range(40)], chunksize=1)
    pids = {next(results) for _ in range(4)}
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob(".*.tmp"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # both workers are writing
    assert len(list(tmp_path.glob(".*.tmp"))) == 2
    pool.close()
    assert all(_gone(p) for p in pids)
    assert not list(tmp_path.iterdir())  # neither a temporary file nor a half-written one
