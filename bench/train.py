"""Benchmark: pawlab's training loop against a minimal hand-written PyTorch loop, in one run.

    .venv/bin/python bench/train.py [--epochs 2] [--rounds 3] [--size 64]

Same network (a small CNN), same data (the 2,000 training photos of
../shared/data/cats_and_dogs_filtered, packed at SIZE x SIZE; random pixels if absent), same
batch size, optimizer and initial weights. Timed: training epochs only (no validation), after
one warm-up epoch each, the three loops interleaved over several rounds; medians reported.

* plain: the minimal loop, fp32, NCHW.
* pawlab, equal settings: `Trainer.train_epoch` with fp32 and NCHW (the loop's overhead:
  callbacks, events, scheduling).
* pawlab, fast defaults: bf16 autocast where the CPU supports it, channels_last.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pawlab.config import DataConfig, RuntimeConfig, TrainConfig
from pawlab.data import ImageSet, load_dataset
from pawlab.models import build
from pawlab.preprocessing import Preprocessing
from pawlab.training import Trainer
from pawlab.training.callbacks import MetricsLog, NaNGuard, ProgressPrinter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cats_and_dogs_filtered"


def spec(size: int) -> list[dict[str, object]]:
    return [
        {"type": "input", "size": size},
        {"type": "conv", "kernel": 3, "filters": 32, "pad": 1},
        {"type": "batch-norm"},
        {"type": "relu"},
        {"type": "max-pool"},
        {"type": "conv", "kernel": 3, "filters": 64, "pad": 1},
        {"type": "batch-norm"},
        {"type": "relu"},
        {"type": "max-pool"},
        {"type": "conv", "kernel": 3, "filters": 128, "pad": 1},
        {"type": "batch-norm"},
        {"type": "relu"},
        {"type": "max-pool"},
        {"type": "global-avg-pool"},
        {"type": "linear"},
    ]


def data(size: int) -> tuple[ImageSet, ImageSet]:
    if SHARED.is_dir():
        ds = load_dataset(SHARED, DataConfig(size=size), progress=False)
        return ds.train, ds.validation
    rng = np.random.default_rng(0)
    make = lambda n: ImageSet(  # noqa: E731
        rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 2, n), [""] * n, ["a", "b"]
    )
    return make(2000), make(200)


class PlainLoop:
    """What a user would write by hand: fp32, NCHW, no callbacks."""

    def __init__(self, net: torch.nn.Module, train: ImageSet, batch_size: int, lr: float) -> None:
        self.net, self.batch_size = net, batch_size
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.x = torch.from_numpy(train.images)
        self.y = torch.from_numpy(train.labels)
        self.gen = torch.Generator().manual_seed(0)

    def epoch(self) -> None:
        self.net.train()
        for idx in torch.randperm(len(self.y), generator=self.gen).split(self.batch_size):
            # (B, H, W, C) uint8 -> (B, C, H, W) float in [-1, 1], NCHW-contiguous
            x = self.x[idx].permute(0, 3, 1, 2).contiguous().float().div(255).sub(0.5).div(0.5)
            loss = F.cross_entropy(self.net(x), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def make_trainer(
    train: ImageSet, val: ImageSet, size: int, cfg: TrainConfig, rt: RuntimeConfig, tmp: Path
) -> Trainer:
    torch.manual_seed(0)
    net = build(spec(size), 2)
    callbacks = [NaNGuard(), MetricsLog(tmp / "metrics.jsonl"), ProgressPrinter(io.StringIO(), bar=False)]
    pre = Preprocessing.for_input((3, size, size))
    return Trainer(net, train, val, cfg, pre, callbacks, None, io.StringIO(), runtime=rt)


def timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loop and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    train, val = data(args.size)
    tmp = Path(__import__("tempfile").mkdtemp())
    base = TrainConfig(epochs=1, optimizer="adam", lr=1e-3, batch_size=args.batch_size)
    torch.manual_seed(0)
    plain = PlainLoop(build(spec(args.size), 2), train, args.batch_size, 1e-3)
    quiet = RuntimeConfig(progress=False)
    equal = make_trainer(train, val, args.size, base, quiet.with_(precision="fp32", channels_last=False), tmp)
    fast = make_trainer(train, val, args.size, base, quiet, tmp)
    loops = {
        "plain": plain.epoch,
        "pawlab (fp32, NCHW)": equal.train_epoch,
        "pawlab (fast defaults)": fast.train_epoch,
    }
    print(
        f"{len(train)} images at {args.size}x{args.size}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads; fast defaults: bf16={fast.bf16}, "
        f"channels_last={fast.runtime.channels_last}",
        flush=True,
    )
    for fn in loops.values():
        fn()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, fn in loops.items():
            seconds = sum(timed(fn) for _ in range(args.epochs))
            rates[name].append(len(train) * args.epochs / seconds)
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in med.items():
        print(f"  {name:<24} {rate:7.0f} img/s  (rounds: {', '.join(f'{r:.0f}' for r in rates[name])})")
    overhead = 1 - med["pawlab (fp32, NCHW)"] / med["plain"]
    speedup = med["pawlab (fast defaults)"] / med["plain"]
    print(f"overhead of pawlab's loop at equal settings: {overhead:+.1%} (target <= 5%)")
    print(f"pawlab fast defaults vs the plain loop: x{speedup:.2f} (target >= 1.4)")


if __name__ == "__main__":
    main()
