"""Experiments made of several training runs: the Keras tutorial's optimizer comparison."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pawlab.config import DEFAULT_ARCH, MONITORS, DataConfig, RuntimeConfig, TrainConfig
from pawlab.data import load_dataset
from pawlab.figures import line_plot
from pawlab.models import LayerSpec, input_shape, with_input_size
from pawlab.training.runs import TrainResult, resolve_architecture, train


@dataclass
class Comparison:
    runs: dict[str, TrainResult]  # optimizer -> its run
    figure: Path
    monitor: str = "val_loss"  # what chose each run's saved epoch

    def table(self) -> str:
        """One row per optimizer, every figure from one epoch: the saved one, best by the
        monitored metric (a row mixing epochs would pair one epoch's accuracy with another's loss)."""
        lines = [f"{'optimizer':<10} {'val acc':>8} {'val loss':>9} {'epoch':>6} {'time':>8}"]
        for name, acc, loss, epoch, seconds in self._rows():
            lines.append(f"{name:<10} {acc:>8.4f} {loss:>9.4f} {epoch:>6} {seconds:>7.0f}s")
        lines.append(self._footnote())
        lines.append(f"validation accuracy per epoch: {self.figure}")
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, float, float, int, float]]:
        """(optimizer, val accuracy, val loss, epoch, seconds) of each run's saved epoch."""
        return [
            (name, r.best["val_accuracy"], r.best["val_loss"], int(r.best["epoch"]), r.seconds)
            for name, r in self.runs.items()
        ]

    def _footnote(self) -> str:
        return f"each row: the epoch with the best {self.monitor} (the saved model)"

    def __repr__(self) -> str:
        sign = 1.0 if MONITORS[self.monitor] == "min" else -1.0
        best = min(self.runs, key=lambda name: sign * self.runs[name].best.get(self.monitor, sign * math.inf))
        return f"Comparison({', '.join(self.runs)}; best by {self.monitor}: {best}; figure {self.figure})"

    def _repr_html_(self) -> str:
        from pawlab import display

        rows = [
            (name, display.number(acc), display.number(loss), epoch, f"{seconds:.0f}s")
            for name, acc, loss, epoch, seconds in self._rows()
        ]
        header = ["optimizer", "val accuracy", "val loss", "epoch", "time"]
        note = display.paragraph(self._footnote())
        return display.section(
            "optimizer comparison", display.table(rows, header), note, display.embedded_image(self.figure)
        )


def compare_optimizers(
    data: str | os.PathLike[str],
    optimizers: Sequence[str],
    config: TrainConfig,
    *,
    arch: str | Sequence[LayerSpec] = DEFAULT_ARCH,
    out_dir: str | os.PathLike[str] = "compare",
    size: int | None = None,
    val_fraction: float = 0.2,
    layout: str = "auto",
    workers: int = 0,
    runtime: RuntimeConfig = RuntimeConfig(),
) -> Comparison:
    """Train once per optimizer (each with its default learning rate unless ``config.lr`` is
    set) on the same data, split, seed and network; write ``accuracy.png``. ``layout``: how the
    source's top folders are read (`DataConfig.layout`)."""
    out = Path(out_dir)
    spec = resolve_architecture(arch)
    if size is not None:
        spec = with_input_size(spec, size)
    c, h, _ = input_shape(spec)
    # decoded once, shared by every run
    ds = load_dataset(
        data,
        DataConfig(size=h, val_fraction=val_fraction, seed=config.data_seed, workers=workers, layout=layout),
        channels=c,
        progress=runtime.progress,
    )
    runs = {}
    for name in optimizers:
        cfg = config.with_(optimizer=name)
        print(f"--- {name}", flush=True)
        runs[name] = train(
            ds,
            out / f"{name}.safetensors",
            spec,
            cfg,
            run_dir=out / name,
            val_fraction=val_fraction,
            runtime=runtime,
        )
    figure = line_plot(
        {name: [(m["epoch"], m["val_accuracy"]) for m in r.history] for name, r in runs.items()},
        out / "accuracy.png",
        title="validation accuracy per epoch",
        xlabel="epoch",
        ylabel="validation accuracy",
        integer_x=True,
    )
    return Comparison(runs, figure, config.monitor)
