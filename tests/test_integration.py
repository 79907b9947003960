"""Prepare, train and evaluate on a subset of the real cats/dogs photos in ../shared/data."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path, PurePosixPath

import pytest

from pawlab import DataConfig, RuntimeConfig, TrainConfig, evaluate, load_model, prepare, train
from pawlab.data.pack import open_packed
from tests.conftest import CATS_DOGS, requires_cats_dogs


@pytest.mark.slow
@requires_cats_dogs
def test_cats_and_dogs_subset(tmp_path: Path) -> None:
    src = tmp_path / "subset"
    for split, n in (("train", 200), ("validation", 60)):
        for cls in ("cats", "dogs"):
            dest = src / split / cls
            dest.mkdir(parents=True)
            for f in sorted((CATS_DOGS / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(f, dest / f.name)
    report = prepare(src, tmp_path / "prepared", DataConfig(size=52), progress=False)
    assert report.counts == {"train": {"cats": 200, "dogs": 200}, "validation": {"cats": 60, "dogs": 60}}
    assert report.skipped == []
    # the source's own split is kept: validation files are the validation ids (2000-2499)
    packed = open_packed(tmp_path / "prepared")
    assert packed is not None
    val_ids = {int(PurePosixPath(n).stem.split(".")[1]) for n in packed.names("validation")}
    assert min(val_ids) >= 2000

    stream = io.StringIO()
    result = train(
        tmp_path / "prepared",
        tmp_path / "model.safetensors",
        "cortex-cnn",
        TrainConfig(epochs=6, optimizer="adam", lr=1e-3, batch_size=32),
        stream=stream,
        runtime=RuntimeConfig(progress=False),
    )
    assert len(result.history) == 6
    assert all(math.isfinite(m["val_loss"]) for m in result.history)
    ev = evaluate(
        tmp_path / "model.safetensors", tmp_path / "prepared", report_dir=tmp_path / "rep", progress=False
    )
    assert ev.count == 120
    assert ev.accuracy == pytest.approx(result.best["val_accuracy"])
    assert ev.accuracy > 0.55  # well above chance even on this small subset
    pred = load_model(tmp_path / "model.safetensors").predict(
        next((CATS_DOGS / "validation" / "cats").glob("*.jpg"))
    )
    assert pred.classification in ("cats", "dogs")
