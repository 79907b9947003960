"""Full and read-only disks under each writer: a small ``tmpfs`` mounted for the test (skipped,
with the reason, where this process cannot mount one). Each writer must end with one line
naming the file and the reason, exit 1, and leave nothing torn behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import TINY, make_image, write_tree
from tests.test_cli import assert_one_line_error, pawlab


@contextmanager
def small_disk(mount_point: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"200k"``) at ``mount_point`` for the block's duration."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A source folder, its prepared copy, a trained model and 600 test images."""
    root = tmp_path_factory.mktemp("disks")
    src = write_tree(root / "src", {"cat": 150, "dog": 150})
    arch = root / "tiny.json"
    arch.write_text(json.dumps(TINY))
    assert pawlab("prepare", src, root / "packed", "--size", 16, "-q").returncode == 0
    model = root / "m.safetensors"
    done = pawlab("train", root / "packed", "--arch-file", arch, "--epochs", 1, "--out", model, "-q")
    assert done.returncode == 0, done.stderr
    test = root / "test"
    test.mkdir()
    for i in range(1, 601):
        make_image("cat" if i % 2 else "dog", seed=i, size=16).save(test / f"{i}.jpg")
    return {"src": src, "packed": root / "packed", "arch": arch, "model": model, "test": test}


def test_prepare_on_a_full_disk_leaves_no_arrays(job: dict[str, Path], tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "200k") as disk:  # the arrays need 920 kB
        proc = pawlab("prepare", job["src"], disk / "p", "--size", 32, "--workers", 2, "-q")
        assert_one_line_error(proc, str(disk / "p"), "No space left on device")
        assert not list((disk / "p").glob("*.npy"))


def test_prepare_png_tree_on_a_full_disk_names_the_file(job: dict[str, Path], tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1100k") as disk:  # the arrays fit; their PNGs do not
        proc = pawlab("prepare", job["src"], disk / "p", "--size", 32, "--png", "--workers", 2, "-q")
        assert_one_line_error(proc, ".png", "No space left on device")
        assert not list((disk / "p").rglob("*.tmp"))  # no half-written PNG


def test_train_on_a_full_disk_ends_in_one_line_and_no_torn_model(
    job: dict[str, Path], tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "200k") as disk:
        out = disk / "m.safetensors"
        proc = pawlab("train", job["packed"], "--arch-file", job["arch"], "--epochs", 2, "--out", out, "-q")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]  # after the dashboard's "training goes on" notes
        assert last.startswith("pawlab train: error: ") and str(disk) in last and "No space" in last
        assert not out.exists()
        assert not list(disk.rglob("*.tmp"))


def test_submit_on_a_full_disk_writes_whole_rows_only(job: dict[str, Path], tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "8k") as disk:  # a page for the job file, one for ~290 rows
        out = disk / "s.csv"
        proc = pawlab("submit", job["model"], job["test"], "--out", out, "--batch-size", 16, "-q")
        assert_one_line_error(proc, str(out), "No space left on device")
        text = out.read_text()
        assert text.endswith("\n")
        rows = text.splitlines()[1:]
        assert 0 < len(rows) < 600 and all(0 <= float(r.split(",")[1]) <= 1 for r in rows)


@pytest.mark.parametrize("command", ["prepare", "train", "submit"])
def test_a_read_only_folder_is_refused_before_any_work(
    command: str, job: dict[str, Path], tmp_path: Path
) -> None:
    args = {
        "prepare": ["prepare", job["src"], "{ro}/p", "--size", 16],
        "train": [
            "train",
            job["packed"],
            "--arch-file",
            job["arch"],
            "--epochs",
            1,
            "--out",
            "{ro}/m.safetensors",
        ],
        "submit": ["submit", job["model"], job["test"], "--out", "{ro}/s.csv"],
    }[command]
    with small_disk(tmp_path / "ro", "1m", read_only=True) as ro:
        proc = pawlab(*[str(a).format(ro=ro) for a in args], "-q")
        assert_one_line_error(proc, str(ro), "read-only or no permission")
