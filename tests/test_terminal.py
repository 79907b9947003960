"""Names from data are shown, never obeyed by the terminal."""

from __future__ import annotations

import io
from pathlib import Path

from pawlab.terminal import PrintableStream, printable
from tests.conftest import write_tree
from tests.test_cli import pawlab

RETITLE = "\x1b]0;owned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen


def test_control_and_reordering_characters_are_written_as_escapes() -> None:
    assert printable(f"{RETITLE}cat") == "\\x1b]0;owned\\x07cat"
    assert printable(f"a{CLEAR}\u202egnp.exe\x9b\x7f") == "a\\x1b[2J\\u202egnp.exe\\x9b\\x7f"
    assert printable("chat\tnoir\r\nkočka 猫 🐱") == "chat\tnoir\r\nkočka 猫 🐱"  # text passes
    assert printable("dog\rcat\n", carriage_return=False) == "dog\\rcat\n"  # stdout: no overprinting
    out = io.StringIO()
    stream = PrintableStream(out)  # type: ignore[arg-type]
    assert stream.write(f"{CLEAR}x\n") == len(f"{CLEAR}x\n")
    assert out.getvalue() == "\\x1b[2Jx\n" and stream.getvalue() == out.getvalue()


def test_prepare_prints_hostile_class_and_file_names_escaped(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {f"{RETITLE}cat": 3, "dog": 3})
    out = pawlab("prepare", src, tmp_path / "p", "--size", 16, "--workers", 1)
    assert out.returncode == 0, out.stderr
    printed = out.stdout + out.stderr
    assert "\x1b" not in printed and "\x07" not in printed
    assert "\\x1b]0;owned\\x07cat 2" in printed
    from pawlab.config import DataConfig
    from pawlab.data import prepare

    report = prepare(src, tmp_path / "api", DataConfig(size=16, workers=1), progress=False)
    assert "\x1b" not in report.summary() and "\\x1b]0;owned\\x07cat" in report.summary()
    bad = pawlab("predict", tmp_path / f"{CLEAR}missing.safetensors", src / "dog" / "dog.0.jpg")
    assert bad.returncode == 1 and "\x1b" not in bad.stderr and "\\x1b[2Jmissing" in bad.stderr
