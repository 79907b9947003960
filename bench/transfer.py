"""Benchmark: transfer learning on a CPU, backbones and their combinations.

    .venv/bin/python bench/transfer.py throughput [--n 256] [--repeat 3]
    .venv/bin/python bench/transfer.py cv [--folds 5] [--seeds 0,1,2] [--candidates lite0,lite2,lite0+lite2]
    .venv/bin/python bench/transfer.py final [--candidates lite0+lite2]

``throughput``: feature extraction images/s of each backbone on N photos already decoded at its
size (the frozen trunk with batch-norms folded, as training computes features), fp32 and bf16,
eager and compiled (the compile is done first and timed on its own line); medians of interleaved
repeats, with ratios to fp32 eager.

``cv``: the candidates (Lite0, Lite1, Lite2 and combinations) judged on the training folder of
``../shared/data/cats_and_dogs_filtered`` only: each candidate's features of the 2,000 training
photos (cached), then the default head recipe (`pawlab.training.presets.TRANSFER`) trained on
K-1 folds by pawlab's loop and scored on the K-th, for every fold and seed. The validation
folder is not read.

``final``: for each candidate, as a user runs it, from a cold cache (a fresh
``PAWLAB_CACHE_DIR``): ``pawlab train train/ --backbone ...`` then ``pawlab evaluate`` on
``validation/``, wall time of both (prepare included: ``train`` packs the folder) and the
validation accuracy and log loss.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pawlab.config import DataConfig, RuntimeConfig  # noqa: E402
from pawlab.data import load_dataset  # noqa: E402
from pawlab.inference.engine import Compiled, array_batches, folded, run_batches  # noqa: E402
from pawlab.inference.features import trunk_features  # noqa: E402
from pawlab.models import build, preprocessing_for, transfer_architecture  # noqa: E402
from pawlab.training.loop import FeatureSet, Trainer  # noqa: E402
from pawlab.training.presets import TRANSFER  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "cats_and_dogs_filtered"
NAMES = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1", "lite2": "efficientnet_lite2"}


def cpu() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return f"{model}, {torch.get_num_threads()} threads, fast bf16: {bf16}"


def backbones(candidate: str) -> list[str]:
    return [NAMES[part] for part in candidate.split("+")]


# ---------------------------------------------------------------- throughput


def throughput(args: argparse.Namespace) -> None:
    print(f"CPU: {cpu()}")
    print(f"feature extraction, {args.n} photos decoded at each backbone's size, batch {args.batch}")
    for short, name in NAMES.items():
        spec = transfer_architecture(name)
        pre = preprocessing_for(spec)
        ds = load_dataset(PHOTOS / "validation", DataConfig(size=pre.size[0], resize="crop"), progress=False)
        images = ds.validation.images[: args.n] if len(ds.validation) else ds.train.images[: args.n]
        trunk = folded(build(spec, 2).trunk)
        device = torch.device("cpu")
        ways: dict[str, dict[str, object]] = {
            "fp32 eager": {"bf16": False},
            "bf16 eager": {"bf16": True},
        }
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            fn = Compiled(trunk, args.batch)
            list(
                run_batches(
                    trunk,
                    array_batches(images[: args.batch * 2], args.batch),
                    pre,
                    device,
                    bf16=precision == "bf16",
                    forward=fn,
                )
            )
            print(
                f"  {short}: compiling ({precision}) took {time.perf_counter() - start:.1f}s"
                + (f" (failed: {fn.failed})" if fn.failed else "")
            )
            ways[f"{precision} compiled"] = {"bf16": precision == "bf16", "forward": fn}
        times: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(args.repeat):
            for way, kw in ways.items():
                start = time.perf_counter()
                for _out in run_batches(trunk, array_batches(images, args.batch), pre, device, **kw):  # type: ignore[arg-type]
                    pass
                times[way].append(time.perf_counter() - start)
        base = len(images) / statistics.median(times["fp32 eager"])
        for way, ts in times.items():
            rate = len(images) / statistics.median(ts)
            print(f"  {short} at {pre.size[0]} px  {way:<14} {rate:7.1f} img/s  x{rate / base:.2f}")


# ---------------------------------------------------------------- cross-validation


def _head_scores(
    spec: list, feats: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> tuple[float, float]:
    """(log loss, accuracy) of the recipe's head over ``folds`` folds of (N, views, F) features."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    fold_of = np.empty(len(labels), dtype=int)
    fold_of[order] = np.arange(len(labels)) % folds
    probs = np.zeros((len(labels), 2))
    pre = preprocessing_for(spec)
    config = TRANSFER.with_(seed=seed)
    for k in range(folds):
        tr, te = fold_of != k, fold_of == k
        net = build(spec, 2, pretrained=False)
        names = np.array([str(i) for i in range(len(labels))])
        train_set = FeatureSet(feats[tr], labels[tr], list(names[tr]), ["cats", "dogs"])
        val_set = FeatureSet(feats[te][:, :1], labels[te], list(names[te]), ["cats", "dogs"])
        Trainer(
            net,
            train_set,
            val_set,
            config,
            pre,
            stream=io.StringIO(),
            runtime=RuntimeConfig(progress=False, precision="fp32"),
        ).fit()
        with torch.inference_mode():
            logits = net.eval().forward_head(torch.from_numpy(feats[te][:, 0]))
        probs[te] = torch.softmax(logits.float(), dim=1).numpy()  # the network returns logits
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)
    return float(-np.log(p).mean()), float((probs.argmax(1) == labels).mean())


def cross_validate(args: argparse.Namespace) -> None:
    print(f"CPU: {cpu()}")
    print(
        f"{args.folds}-fold cross-validation on {PHOTOS / 'train'} only, seeds {args.seeds}, "
        f"recipe: TRANSFER ({TRANSFER.epochs} epochs, {TRANSFER.optimizer}, flip={TRANSFER.augment.flip})"
    )
    print(f"{'candidate':<18} {'log loss':>9} {'(sd)':>7} {'accuracy':>9} {'(sd)':>7}  features")
    for candidate in args.candidates.split(","):
        spec = transfer_architecture(backbones(candidate))
        pre = preprocessing_for(spec)
        start = time.perf_counter()
        ds = load_dataset(
            PHOTOS / "train", DataConfig(size=pre.size[0], resize="crop", val_fraction=0.5), progress=False
        )
        images = np.concatenate([ds.train.images, ds.validation.images])
        labels = np.concatenate([ds.train.labels, ds.validation.labels])
        net = build(spec, 2)
        views = ("plain", "flip") if TRANSFER.augment.flip else ("plain",)
        feats = trunk_features(net.trunk, images, pre, torch.device("cpu"), views=views, progress=False)
        took = time.perf_counter() - start
        scores = [_head_scores(spec, feats, labels, args.folds, int(s)) for s in args.seeds.split(",")]
        ll, acc = [s[0] for s in scores], [s[1] for s in scores]
        print(
            f"{candidate:<18} {statistics.mean(ll):9.4f} {statistics.pstdev(ll):7.4f} "
            f"{statistics.mean(acc):9.4f} {statistics.pstdev(acc):7.4f}  {took:.0f}s ({len(labels)} photos)",
            flush=True,
        )


# ---------------------------------------------------------------- final, cold cache


def final(args: argparse.Namespace) -> None:
    print(f"CPU: {cpu()}")
    print(f"train on {PHOTOS / 'train'}, evaluate on {PHOTOS / 'validation'}, each from a cold cache")
    print(f"{'candidate':<18} {'accuracy':>9} {'log loss':>9} {'train':>7} {'evaluate':>9} {'total':>7}")
    for candidate in args.candidates.split(","):
        with tempfile.TemporaryDirectory() as work:
            env = {**os.environ, "PAWLAB_CACHE_DIR": str(Path(work) / "cache")}
            model = Path(work) / "m.safetensors"
            cmd = [sys.executable, "-m", "pawlab"]
            start = time.perf_counter()
            subprocess.run(
                [
                    *cmd,
                    "train",
                    str(PHOTOS / "train"),
                    "--backbone",
                    ",".join(backbones(candidate)),
                    "--out",
                    str(model),
                    "-q",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            trained = time.perf_counter()
            done = subprocess.run(
                [*cmd, "evaluate", str(model), str(PHOTOS / "validation"), "--json", "-q"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            end = time.perf_counter()
            report = json.loads(done.stdout)
            print(
                f"{candidate:<18} {report['accuracy']:9.4f} {report['log_loss']:9.4f} "
                f"{trained - start:6.0f}s {end - trained:8.0f}s {end - start:6.0f}s",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--n", type=int, default=256)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--repeat", type=int, default=3)
    c = sub.add_parser("cv")
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--seeds", default="0,1,2")
    c.add_argument(
        "--candidates", default="lite0,lite1,lite2,lite0+lite1,lite0+lite2,lite1+lite2,lite0+lite1+lite2"
    )
    f = sub.add_parser("final")
    f.add_argument("--candidates", default="lite0,lite2,lite0+lite2")
    args = p.parse_args()
    {"throughput": throughput, "cv": cross_validate, "final": final}[args.what](args)


if __name__ == "__main__":
    main()
