from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pawlab import checkpoint
from pawlab.atomic import atomic_write_text, check_output_file, check_output_folder
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
