"""`PrepareReport`: counts per split and class, classes with no training image, skipped files,
warnings, duplicates; as a summary and in a notebook."""

from __future__ import annotations

import re
from pathlib import Path

from pawlab.config import DataConfig
from pawlab.data import PrepareReport, prepare
from tests.conftest import write_tree
from tests.test_display import assert_self_contained


def test_a_prepared_tree_shows_its_counts_and_skipped_files(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 10, "dog": 10})
    (src / "cat" / "<broken>.jpg").write_bytes(b"not a jpeg")
    report = prepare(src, tmp_path / "prepared", DataConfig(size=16), progress=False)
    text = repr(report)
    assert "\n" not in text and text.startswith(f"PrepareReport({src} -> ")
    train, val = report.counts["train"], report.counts["validation"]
    assert sum(train.values()) + sum(val.values()) == 20
    assert f"at 16x16: train {sum(train.values())}, validation {sum(val.values())}; 1 skipped)" in text
    html = report._repr_html_()
    rows = re.findall(r"<tr><td[^>]*>(\w+)</td><td[^>]*>(\d+)</td><td[^>]*>(\d+)</td></tr>", html)
    expected = [(c, str(train[c]), str(val[c])) for c in ("cat", "dog")]
    assert rows == [*expected, ("total", str(sum(train.values())), str(sum(val.values())))]
    assert ">train<" in html and ">validation<" in html and "16x16" in html
    assert "skipped 1 files: 1 " in html and "&lt;broken&gt;.jpg" in html and "<broken>" not in html
    assert_self_contained(html)


def test_warnings_and_duplicates_are_listed() -> None:
    report = PrepareReport(
        out="prepared",
        source="src.zip",
        size=32,
        seed=0,
        val_fraction=0.2,
        classes=["cat", "dog"],
        counts={"train": {"cat": 3, "dog": 4}, "validation": {"cat": 1, "dog": 1}},
        skipped=[
            {"name": "a.txt", "reason": "not an image (.txt)"},
            {"name": "b.txt", "reason": "not an image (.txt)"},
            {"name": "c.jpg", "reason": "truncated"},
        ],
        notes=[{"name": "d.png", "note": "iCCP: known incorrect sRGB profile"}],
        duplicates=[{"validation": "cat/1.jpg", "train": "cat/9.jpg"}],
    )
    text = repr(report)
    assert text == (
        "PrepareReport(src.zip -> prepared at 32x32: train 7, validation 2; 3 skipped; 1 with warnings; "
        "1 duplicates)"
    )
    html = report._repr_html_()
    assert "skipped 3 files: 2 not an image; 1 truncated" in html
    assert "1 files used, with decoder warnings" in html and "iCCP: known incorrect sRGB profile" in html
    assert "1 validation images byte-identical to training images (kept; --dedupe removes them)" in html
    assert ">cat/1.jpg<" in html and ">cat/9.jpg<" in html
    assert "0.2 to validation, seed 0" in html


def test_classes_with_no_training_image_are_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src / "train", {"cat": 4, "dog": 4})
    write_tree(src / "validation", {"cat": 2, "dog": 2, "owl": 1, "yak": 2}, start=100)
    report = prepare(src, tmp_path / "prepared", DataConfig(size=8, workers=1), progress=False)
    assert report.untrained == ["owl", "yak"]
    warning = "warning: 2 classes have no training image, so a model cannot learn them: owl, yak"
    lines = report.summary().splitlines()
    assert lines[1:4] == [
        "  train           8 images (cat 4, dog 4, owl 0, yak 0)",
        "  validation      7 images (cat 2, dog 2, owl 1, yak 2)",
        f"  {warning}",
    ]
    assert repr(report).endswith("train 8, validation 7; 2 classes untrained)")
    assert f">{warning}<" in report._repr_html_()


def test_many_untrained_classes_are_named_first_few_and_counted() -> None:
    counts = {"train": {f"c{k:02d}": int(k < 3) for k in range(40)}, "validation": {}}
    report = PrepareReport("out", "src", 8, 0, 0.2, [f"c{k:02d}" for k in range(40)], counts)
    assert report.summary().splitlines()[3] == (
        "  warning: 37 classes have no training image, so a model cannot learn them: "
        "c03, c04, c05, c06, c07 and 32 more"
    )
    one = PrepareReport("out", "src", 8, 0, 0.2, ["a", "b"], {"train": {"a": 3, "b": 0}, "validation": {}})
    assert "warning: 1 class has no training image, so a model cannot learn it: b" in one.summary()
