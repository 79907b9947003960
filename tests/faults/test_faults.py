"""Fault injection: damaged inputs and concurrent runs, each bounded in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from pawlab import checkpoint, runlog
from pawlab.config import TrainConfig
from pawlab.data.decode import ImageDecodeError, decode
from pawlab.errors import ModelFileError
from pawlab.inference import load_model
from tests.conftest import CATS_DOGS, ROOT, TINY, make_image, requires_cats_dogs, train_tiny, write_tree


@requires_cats_dogs
def test_the_decoder_survives_seeded_mutants_of_real_jpegs() -> None:
    """300 mutants (flipped bytes, truncations, spliced headers) of real photos: each decodes
    to an image of the asked size or is refused with a reason, and none hangs."""
    originals = [p.read_bytes() for p in sorted((CATS_DOGS / "train" / "cats").glob("*.jpg"))[:6]]
    rng = np.random.default_rng(0)
    start, refused = time.monotonic(), 0
    for i in range(300):
        data = bytearray(originals[i % len(originals)])
        kind = i % 3
        if kind == 0:  # flip bytes anywhere, the header included
            for pos in rng.integers(0, len(data), int(rng.integers(1, 40))):
                data[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # truncated
            data = data[: int(rng.integers(0, len(data)))]
        else:  # another photo's header before this one's body
            other = originals[(i + 1) % len(originals)]
            cut = int(rng.integers(2, 600))
            data = bytearray(other[:cut]) + data[cut:]
        try:
            image = decode(bytes(data), (32, 32), 3)
        except ImageDecodeError as exc:
            refused += 1
            assert str(exc) and "\n" not in str(exc)
        else:
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert refused > 0
    assert time.monotonic() - start < 120


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("faults"), 6, TrainConfig(epochs=1, batch_size=8))[1]


def _damaged(good: Path, folder: Path) -> dict[str, Path]:
    """A catalogue of damaged copies of a good model file."""
    ck = checkpoint.load(good)
    tensors = {f"model.{k}": v for k, v in ck.model_state.items()}
    first = next(iter(tensors))
    raw = good.read_bytes()
    cases: dict[str, bytes | tuple[dict[str, torch.Tensor], object]] = {
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "garbage": os.urandom(4096),
        "a pickle": b"\x80\x04\x95" + os.urandom(200),
        "header not JSON": ({**tensors}, "{not json"),
        "no classes": ({**tensors}, {k: v for k, v in ck.meta.items() if k != "classes"}),
        "a missing weight": ({k: v for k, v in tensors.items() if k != first}, ck.meta),
        "a reshaped weight": ({**tensors, first: tensors[first].reshape(-1)[:1].clone()}, ck.meta),
        "an unknown layer": ({**tensors}, {**ck.meta, "architecture": [{"type": "warp-drive"}]}),
    }
    out = {}
    for name, case in cases.items():
        path = folder / f"{name.replace(' ', '-')}.safetensors"
        if isinstance(case, bytes):
            path.write_bytes(case)
        else:
            weights, meta = case
            text = meta if isinstance(meta, str) else json.dumps(meta)
            safetensors.torch.save_file(weights, str(path), metadata={"pawlab": text})
        out[name] = path
    return out


def test_a_catalogue_of_damaged_model_files_is_refused_in_one_line(model_file: Path, tmp_path: Path) -> None:
    for name, path in _damaged(model_file, tmp_path).items():
        with pytest.raises(ModelFileError) as error:
            load_model(path)
        message = str(error.value)
        assert "\n" not in message and str(path) in message, name


def test_two_trainings_on_one_out_the_second_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 12, "dog": 12})
    out, env = tmp_path / "m.safetensors", {**os.environ, "PYTHONPATH": str(ROOT)}
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY))
    cmd = [
        sys.executable,
        "-m",
        "pawlab",
        "train",
        str(src),
        "--arch-file",
        str(arch),
        "--out",
        str(out),
        "-q",
    ]
    first = subprocess.Popen([*cmd, "--forever", "--workers", "1"], env=env, stderr=subprocess.PIPE)
    try:
        lock, deadline = tmp_path / "m-run" / runlog.LOCK, time.monotonic() + 120
        holds_pid = lambda: lock.exists() and bool(lock.read_text().strip())  # noqa: E731
        _wait_for(holds_pid, first, "a lock holding its pid", deadline)
        second = subprocess.run([*cmd, "--epochs", "1"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and second.stderr.count("\n") == 1
        assert f"another training (pid {first.pid})" in second.stderr
        # stopped only once it has a model to keep (before its first epoch, SIGTERM saves nothing)
        saved = tmp_path / "m-run" / runlog.LAST_STATE
        _wait_for(lambda: out.is_file() and saved.is_file(), first, "a saved model and state", deadline)
    finally:
        first.terminate()
        first.wait(timeout=120)
    assert first.returncode == 0  # stopped cleanly by SIGTERM, its model whole
    assert load_model(out).classes == ["cat", "dog"]


def _pawlab(*args: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pawlab", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _killed_then_rerun(args: list[object], seed: int, kills: int = 3) -> None:
    """Start the command, SIGKILL it at seeded random moments (``kills`` times), then let it run
    to the end."""
    rng = np.random.default_rng(seed)
    for _ in range(kills):
        proc = _pawlab(*args)
        time.sleep(float(rng.uniform(0.3, 4.0)))
        proc.kill()
        proc.wait(timeout=60)
    last = _pawlab(*args)
    assert last.wait(timeout=300) == 0


@pytest.mark.slow
def test_a_killed_submit_run_again_writes_the_uninterrupted_file(model_file: Path, tmp_path: Path) -> None:
    test = tmp_path / "test"
    test.mkdir()
    for i in range(1, 401):
        make_image("cat" if i % 2 else "dog", seed=i).save(test / f"{i}.jpg")
    clean, killed = tmp_path / "clean.csv", tmp_path / "killed.csv"
    assert (
        _pawlab("submit", model_file, test, "--out", clean, "--batch-size", 8, "--workers", 1).wait(300) == 0
    )
    _killed_then_rerun(
        ["submit", model_file, test, "--out", killed, "--batch-size", 8, "--workers", 1], seed=1
    )
    assert killed.read_bytes() == clean.read_bytes()


@pytest.mark.slow
def test_a_killed_prepare_run_again_packs_what_an_uninterrupted_one_does(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 150, "dog": 150})
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert _pawlab("prepare", src, clean, "--size", 16, "--workers", 1).wait(300) == 0
    _killed_then_rerun(["prepare", src, killed, "--size", 16, "--workers", 1], seed=2)
    before, after = (json.loads((d / "manifest.json").read_text()) for d in (clean, killed))
    for split in ("train", "validation"):  # the same pixels, row for row
        assert np.array_equal(
            np.load(clean / before["arrays"][split]), np.load(killed / after["arrays"][split])
        )
    same = {k: v for k, v in before.items() if k not in ("arrays", "seconds")}
    assert same == {k: v for k, v in after.items() if k not in ("arrays", "seconds")}


@pytest.mark.slow
def test_a_killed_training_resumed_ends_with_the_uninterrupted_model(tmp_path: Path) -> None:
    """SIGKILL at seeded random moments (after a random number of epochs, then a random part
    of the next); each restart resumes from the last saved epoch; the final model and every
    epoch's figures are those of a run never interrupted."""
    src = write_tree(tmp_path / "src", {"cat": 120, "dog": 120})
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY))
    recipe = ["--arch-file", arch, "--epochs", 60, "--workers", 1, "-q"]
    clean, killed, run = (
        tmp_path / "clean.safetensors",
        tmp_path / "killed.safetensors",
        tmp_path / "killed-run",
    )
    assert _pawlab("train", src, *recipe, "--out", clean).wait(300) == 0
    rng = np.random.default_rng(3)
    proc = _pawlab("train", src, *recipe, "--out", killed)
    for kills, at in enumerate(sorted(rng.choice(np.arange(5, 55), 3, replace=False))):
        _wait_for_starts(run / runlog.EVENTS, kills + 1, proc)  # this process began, not only the last
        _wait_for_lines(run / runlog.METRICS, int(at), proc)
        time.sleep(float(rng.uniform(0.0, 0.05)))
        proc.kill()
        proc.wait(timeout=60)
        proc = _pawlab("train", "--resume", run, "--epochs", 60, "--workers", 1)
    assert proc.wait(timeout=300) == 0
    starts = [json.loads(line) for line in (run / runlog.EVENTS).read_text().splitlines()]
    assert len([e for e in starts if e["event"] == "start"]) == 4  # killed three times, mid-training
    a, b = safetensors.torch.load_file(str(clean)), safetensors.torch.load_file(str(killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def figures(run: Path) -> list[tuple[float, ...]]:
        rows = [json.loads(line) for line in (run / runlog.METRICS).read_text().splitlines()]
        return [(r["epoch"], r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in rows]

    assert figures(tmp_path / "killed-run") == figures(tmp_path / "clean-run")


def _wait_for(
    done: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, deadline: float | None = None
) -> None:
    """Until ``done()``; the process must be alive, and get there by ``deadline`` (monotonic;
    default: within 120 s)."""
    deadline = time.monotonic() + 120 if deadline is None else deadline
    while not done():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.005)


def _wait_for_starts(events: Path, starts: int, proc: subprocess.Popen[bytes]) -> None:
    """Until ``events`` holds ``starts`` "start" events."""

    def done() -> bool:
        return events.exists() and events.read_text().count('"event": "start"') >= starts

    _wait_for(done, proc, f"{starts} starts in {events}")


def _wait_for_lines(path: Path, lines: int, proc: subprocess.Popen[bytes]) -> None:
    """Until ``path`` has ``lines`` lines (a training's epochs so far)."""

    def done() -> bool:
        return path.exists() and path.read_bytes().count(b"\n") >= lines

    _wait_for(done, proc, f"{lines} lines in {path}")
