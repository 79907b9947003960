from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from pawlab import checkpoint
from pawlab.atomic import atomic_write_text, check_output_file, check_output_folder, write_all
from pawlab.errors import OutputError


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask_model_files_too(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        checkpoint.save(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, {"classes": ["a", "b"]})
        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    for name in ("m.safetensors", "t.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_outputs_are_checked_in_one_line(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "new" / "m.safetensors") == tmp_path / "new" / "m.safetensors"
    assert not (tmp_path / "new").exists()  # checked, not made
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file: not a folder"):
        check_output_folder(tmp_path / "file" / "sub")
    with pytest.raises(OutputError, match="not a folder"):
        check_output_file(tmp_path / "file" / "m.safetensors")


def test_a_short_write_on_a_full_disk_leaves_no_half_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b"id,label\n1,0.5\n")
    real_write = os.write
    calls = []

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:3]))  # part of the first row fits
        raise OSError(errno.ENOSPC, "No space left on device")

    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    monkeypatch.setattr(os, "write", full_disk)
    try:
        with pytest.raises(OSError, match="No space") as error:
            write_all(fd, b"2,0.1\n3,0.9\n", path)
        assert error.value.filename == str(path)  # named, for the one-line message
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert path.read_bytes() == b"id,label\n1,0.5\n"
