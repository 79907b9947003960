"""Benchmark: transfer learning on a CPU, backbones and their combinations.

    .venv/bin/python bench/transfer.py throughput [--n 256] [--repeat 3]
    .venv/bin/python bench/transfer.py cv [--folds 5] [--seeds 0,1,2] [--candidates lite0,lite2,lite0+lite2]
    .venv/bin/python bench/transfer.py features [--data DIR,DIR] [--candidate lite2] [--seeds 0,1,2]
        [--routes "torch bf16,onnxruntime int8"]
    .venv/bin/python bench/transfer.py mirror [--data DIR,DIR] [--sizes 250,500,1000,2000] [--seeds 0,1,2]
    .venv/bin/python bench/transfer.py final [--candidates lite0+lite2]
    .venv/bin/python bench/transfer.py scale [--sizes 5000,25000,100000] [--work DIR] [--fp32-at 5000]
        [--fp32-seeds 0,1,2] [--mirrored-at 25000] [--keep] [--seed 27] [--quick]

``throughput``: feature extraction images/s of each backbone on N photos already decoded at its
size (the frozen trunk with batch-norms folded, as training computes features), fp32 and bf16,
eager and compiled (the compile is done first and timed on its own line); medians of interleaved
repeats, with ratios to fp32 eager.

``cv``: the candidates (Lite0, Lite1, Lite2 and combinations) judged on the training folder of
``../shared/data/cats_and_dogs_filtered`` only: each candidate's features of the 2,000 training
photos (cached), then the default head recipe (`pawlab.training.presets.TRANSFER`) trained on
K-1 folds by pawlab's loop and scored on the K-th, for every fold and seed. The validation
folder is not read.

``features`` (issues 25 and 27): training features by each of --routes (torch bf16, compiled,
as ``pawlab train`` computes them where the CPU has fast bf16; onnxruntime int8, calibrated on
300 of the photos) against torch fp32: on each training folder only (cats/dogs' and flowers5's
by default), the default head recipe trained on the K-1 folds' features of the route and on
their fp32 features, both scored on the K-th fold's fp32 features (exact inference), for every
fold and seed; the mean differences against issue 27's bounds (0.1 points, 0.002 log loss),
each route's images/s and its features' distance from fp32's.

``mirror``: what the mirrored views add to the default head, by the number of distinct training
photos: on each training folder only, the recipe's head trained on both views and on the plain
view alone, on the same seeded subsets (``--sizes``, capped at a fold's training part) of each
fold's training part, both scored on the held-out fold's plain view; mean differences and their
spread over seeds. (Why the mirrored views stop where the training split is large:
`pawlab.training.presets`.)

``final``: for each candidate, as a user runs it, from a cold cache (a fresh
``PAWLAB_CACHE_DIR``): ``pawlab train train/ --backbone ...`` then ``pawlab evaluate`` on
``validation/``, wall time of both (prepare included: ``train`` packs the folder) and the
validation accuracy and log loss.

``scale`` (issue 27, Kaggle scale on a laptop): Kaggle-like flat folders (``cat.K.jpg``,
``dog.K.jpg``) of each size, made from the 2,000 training photos (a random crop of 75-100% of the
area, mirrored half the time, 200x200, JPEG quality 70-95, under a new id; seeded). The largest
size is made once under --work (niced worker processes, reused by later runs) and every set is a
folder of hard links to its first N photos. For each size, ``pawlab train SET --backbone`` as a
user runs it, with fresh pawlab, inductor and Triton caches: the whole command's wall time, the
peak private memory of its process tree (the sum of ``RssAnon`` over it and its workers, sampled
every 0.2 s: mapped files' pages the kernel can drop do not count), each stage's images/s from
its ``DESC: done, N UNIT in DURATION`` progress line ("?" where it printed none), and accuracy
and log loss on the 1,000 ``validation/`` photos, never in a set. At --fp32-at, also
``--precision fp32``, both with each of --fp32-seeds (``--seed``: one seed moves the held-back
figures by a photo or two, so the difference is the mean over seeds); at --mirrored-at, also
``--augment flip`` (the mirrored views the recipe leaves out of large sets); and the
differences. Then the issue's goals, met or not, beside the CPU class. Logs stay in
--work/runs; caches and models only with --keep. The disk is checked first.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare import settle, tree_rss  # noqa: E402  (bench/prepare.py)

from pawlab import runlog  # noqa: E402
from pawlab.config import DataConfig, RuntimeConfig  # noqa: E402
from pawlab.data import load_dataset  # noqa: E402
from pawlab.inference.engine import Compiled, array_batches, folded, run_batches  # noqa: E402
from pawlab.inference.feature_routes import calibration_rows, feature_distances, feature_route  # noqa: E402
from pawlab.inference.features import TORCH_FP32, trunk_features  # noqa: E402
from pawlab.inference.routes import Route  # noqa: E402
from pawlab.models import build, preprocessing_for, transfer_architecture  # noqa: E402
from pawlab.runtime import cpu_class  # noqa: E402
from pawlab.training.loop import FeatureSet, Trainer  # noqa: E402
from pawlab.training.presets import TRANSFER  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "cats_and_dogs_filtered"
FLOWERS = ROOT.parent / "shared" / "data" / "flowers5"
CPU = torch.device("cpu")
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
    spec: list,
    feats: np.ndarray,
    labels: np.ndarray,
    folds: int,
    seed: int,
    judged_on: np.ndarray | None = None,
    train_size: int | None = None,
    epochs: int | None = None,
) -> tuple[float, float]:
    """(log loss, accuracy) of the recipe's head over ``folds`` folds of (N, views, F) features:
    trained on ``feats`` (on a seeded ``train_size`` of each fold's training part, where given),
    scored on the held-out fold of ``judged_on`` (default ``feats``); ``epochs``: the recipe's
    unless given."""
    judged = feats if judged_on is None else judged_on
    classes = int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    fold_of = np.empty(len(labels), dtype=int)
    fold_of[order] = np.arange(len(labels)) % folds
    probs = np.zeros((len(labels), classes))
    pre = preprocessing_for(spec)
    config = TRANSFER.with_(seed=seed, epochs=epochs or TRANSFER.epochs)
    names = [str(c) for c in range(classes)]
    for k in range(folds):
        tr, te = fold_of != k, fold_of == k
        if train_size is not None:  # (N,) bool: a seeded subset of the fold's training part
            keep = rng.permutation(np.flatnonzero(tr))[:train_size]
            tr = np.isin(np.arange(len(labels)), keep)
        net = build(spec, classes, pretrained=False)
        ids = np.array([str(i) for i in range(len(labels))])
        train_set = FeatureSet(feats[tr], labels[tr], list(ids[tr]), names)
        val_set = FeatureSet(feats[te][:, :1], labels[te], list(ids[te]), names)
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
            logits = net.eval().forward_head(torch.from_numpy(np.ascontiguousarray(judged[te][:, 0])))
        probs[te] = torch.softmax(logits.float(), dim=1).numpy()  # the network returns logits
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)
    return float(-np.log(p).mean()), float((probs.argmax(1) == labels).mean())


def _photos(spec: list, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) at the spec's size and labels (N,) of every photo in ``data``."""
    pre = preprocessing_for(spec)
    ds = load_dataset(data, DataConfig(size=pre.size[0], resize="crop", val_fraction=0.5), progress=False)
    return np.concatenate([ds.train.images, ds.validation.images]), np.concatenate(
        [ds.train.labels, ds.validation.labels]
    )


def cross_validate(args: argparse.Namespace) -> None:
    print(f"CPU: {cpu()}")
    data = Path(args.data)
    print(
        f"{args.folds}-fold cross-validation on {data} only, seeds {args.seeds}, "
        f"recipe: TRANSFER ({TRANSFER.epochs} epochs, {TRANSFER.optimizer}, flip={TRANSFER.augment.flip})"
    )
    print(f"{'candidate':<18} {'log loss':>9} {'(sd)':>7} {'accuracy':>9} {'(sd)':>7}  features")
    for candidate in args.candidates.split(","):
        spec = transfer_architecture(backbones(candidate))
        start = time.perf_counter()
        images, labels = _photos(spec, data)
        net = build(spec, int(labels.max()) + 1)
        views = ("plain", "flip") if TRANSFER.augment.flip else ("plain",)
        feats = trunk_features(net.trunk, images, preprocessing_for(spec), CPU, views=views, progress=False)
        took = time.perf_counter() - start
        scores = [_head_scores(spec, feats, labels, args.folds, int(s)) for s in args.seeds.split(",")]
        ll, acc = [s[0] for s in scores], [s[1] for s in scores]
        print(
            f"{candidate:<18} {statistics.mean(ll):9.4f} {statistics.pstdev(ll):7.4f} "
            f"{statistics.mean(acc):9.4f} {statistics.pstdev(acc):7.4f}  {took:.0f}s ({len(labels)} photos)",
            flush=True,
        )


# ---------------------------------------------------------------- training features: bf16 vs fp32

# what issue 27 allows a fast path to cost, on photos never trained on
FEATURES_MAX_ACCURACY_POINTS = 0.1
FEATURES_MAX_LOG_LOSS = 0.002


def features_precision(args: argparse.Namespace) -> None:
    """The head trained on each route's features (``--routes``: torch bf16, compiled, as training
    computes them where the CPU has fast bf16; onnxruntime int8, calibrated on 300 of the photos)
    against the head trained on fp32 ones, all judged on the held-out fold's fp32 features (what
    exact inference computes), fold by fold and seed by seed on a training folder only; with
    each route's images/s and how far its features are from fp32's."""
    print(f"CPU: {cpu()}")
    routes = [Route.parse(r) for r in args.routes.split(",")]
    for data in args.data.split(","):
        spec = transfer_architecture(backbones(args.candidate))
        images, labels = _photos(spec, Path(data))
        trunk, pre = build(spec, int(labels.max()) + 1).trunk, preprocessing_for(spec)
        views = ("plain", "flip") if TRANSFER.augment.flip else ("plain",)
        calibration = images[calibration_rows(len(images))]
        feats = {}
        for route in [TORCH_FP32, *routes]:
            start = time.perf_counter()
            feats[str(route)] = trunk_features(
                trunk, images, pre, CPU, views=views, route=route, calibration=calibration, compile=True,
                progress=False,
            )  # fmt: skip
            took = time.perf_counter() - start
            dist = feature_distances(feats[str(route)][:, 0], feats[str(TORCH_FP32)][:, 0])  # plain view
            print(
                f"  {data}: {route} features of {len(images)} photos x {len(views)} views, {took:.0f}s "
                f"({len(images) * len(views) / took:.0f} img/s, including making the graph); "
                f"distance from fp32's (relative L2 per image): median {np.median(dist):.4f}, "
                f"largest {dist.max():.4f}",
                flush=True,
            )
        seeds = [int(s) for s in args.seeds.split(",")]
        exact = {seed: _head_scores(spec, feats[str(TORCH_FP32)], labels, args.folds, seed) for seed in seeds}
        for route in routes:
            rows = []
            for seed in seeds:
                fp32 = exact[seed]
                fast = _head_scores(
                    spec, feats[str(route)], labels, args.folds, seed, judged_on=feats[str(TORCH_FP32)]
                )
                rows.append((fp32, fast))
            _print_precision_rows(data, args.candidate, len(labels), str(route), rows)


def _print_precision_rows(
    data: str, candidate: str, n: int, route: str, rows: list[tuple[tuple[float, float], tuple[float, float]]]
) -> None:
    print(f"{data} ({n} photos, {candidate}): head trained on fp32 / {route} features, judged on fp32 ones")
    print(f"  {'seed':>4} {'fp32 log loss':>14} {'fast log loss':>14} {'fp32 acc':>9} {'fast acc':>9}")
    for i, ((ll32, acc32), (ll16, acc16)) in enumerate(rows):
        print(f"  {i:>4} {ll32:14.4f} {ll16:14.4f} {acc32:9.2%} {acc16:9.2%}")
    d_ll = statistics.mean(b[0] - a[0] for a, b in rows)
    d_acc = 100 * statistics.mean(b[1] - a[1] for a, b in rows)
    ok = abs(d_ll) <= FEATURES_MAX_LOG_LOSS and abs(d_acc) <= FEATURES_MAX_ACCURACY_POINTS
    print(
        f"  {route} - fp32: log loss {d_ll:+.4f} (goal within {FEATURES_MAX_LOG_LOSS}), accuracy "
        f"{d_acc:+.2f} points (goal within {FEATURES_MAX_ACCURACY_POINTS}): {'met' if ok else 'NOT met'}",
        flush=True,
    )


# ---------------------------------------------------------------- mirrored views vs training size


def mirror_curve(args: argparse.Namespace) -> None:
    """What the mirrored views add to the head, by the number of distinct training photos: the
    recipe's head trained with both views and with the plain view only, on the same seeded
    subsets of each fold's training part, scored on the held-out fold's plain view; the features
    are the ones `pawlab train` computes on this CPU (bf16 where it is fast)."""
    print(f"CPU: {cpu()}")
    route = feature_route("torch", "auto", CPU)  # as `pawlab train` computes them here
    assert route is not None
    for data in args.data.split(","):
        spec = transfer_architecture(backbones(args.candidate))
        images, labels = _photos(spec, Path(data))
        trunk, pre = build(spec, int(labels.max()) + 1).trunk, preprocessing_for(spec)
        feats = trunk_features(
            trunk, images, pre, CPU, views=("plain", "flip"), route=route, compile=True, progress=False
        )
        whole = len(labels) + (-len(labels) // args.folds)  # the smallest fold's training part
        sizes = sorted({min(int(n), whole) for n in args.sizes.split(",")})
        seeds = [int(s) for s in args.seeds.split(",")]
        print(
            f"{data} ({len(labels)} photos, {args.candidate}, {route.precision} features), "
            f"{args.folds} folds x seeds {args.seeds}: mirrored minus plain, on held-out folds"
        )
        print(
            f"  {'train':>6} {'plain ll':>9} {'mirror ll':>9} {'d ll':>8} {'(sd)':>7} {'plain acc':>9} "
            f"{'mirror acc':>10} {'d pts':>6} {'(sd)':>5}   plain at 2x epochs: {'d ll':>8} {'d pts':>6}"
        )
        for n in sizes:
            _mirror_row(spec, feats, labels, args.folds, seeds, n)


def _mirror_row(
    spec: list, feats: np.ndarray, labels: np.ndarray, folds: int, seeds: list[int], n: int
) -> None:
    """One training size: the plain view, both views, and the plain view for twice the epochs
    (both views take as many steps as the plain one: a random view per image and epoch; the
    last column says what more steps alone would buy)."""
    plain = [_head_scores(spec, feats[:, :1], labels, folds, s, feats, n) for s in seeds]
    both = [_head_scores(spec, feats, labels, folds, s, feats, n) for s in seeds]
    longer = [
        _head_scores(spec, feats[:, :1], labels, folds, s, feats, n, 2 * (TRANSFER.epochs or 1))
        for s in seeds
    ]
    d_ll = [b[0] - a[0] for a, b in zip(plain, both, strict=True)]
    d_acc = [100 * (b[1] - a[1]) for a, b in zip(plain, both, strict=True)]
    l_ll = statistics.mean(b[0] - a[0] for a, b in zip(plain, longer, strict=True))
    l_acc = statistics.mean(100 * (b[1] - a[1]) for a, b in zip(plain, longer, strict=True))
    print(
        f"  {n:>6} {statistics.mean(p[0] for p in plain):9.4f} {statistics.mean(b[0] for b in both):9.4f} "
        f"{statistics.mean(d_ll):+8.4f} {statistics.pstdev(d_ll):7.4f} "
        f"{statistics.mean(p[1] for p in plain):9.2%} {statistics.mean(b[1] for b in both):10.2%} "
        f"{statistics.mean(d_acc):+6.2f} {statistics.pstdev(d_acc):5.2f}   "
        f"{'':>19}{l_ll:+8.4f} {l_acc:+6.2f}",
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


# ---------------------------------------------------------------- scale: issue 27

SET_SIDE = 200  # the user trained on Kaggle's 200x200 copy
SET_RECIPE = "crop 75-100% area, mirror 1/2, 200x200, JPEG 70-95"  # in the markers: a change rebuilds
SET_MARKER = ".pawlab-bench-set.json"  # hidden: pawlab skips it when it reads a set
LITE2_FEATURES = 1280  # channels at the end of Lite2's trunk
HELD_BACK = 1_000  # the validation photos, packed and featured in each run's cache by evaluate
RUN_BYTES = 100 * 1024**2  # a run's model file, run folder and evaluation figures
PHOTO_BYTES = 16_000  # a 200x200 JPEG at quality 70-95, with room to spare
GIB = 1024**3
GOAL_SIZE, GOAL_FAST, GOAL_AVX2, BEFORE = 25_000, 300.0, 720.0, "746 s for 23,000"
GOAL_MEMORY = 2 * GIB
GOAL_ACCURACY_POINTS, GOAL_LOG_LOSS = 0.1, 0.002
# the stages, each recognised in a progress line's description by these words
STAGES = {
    "prepare": re.compile(r"decod|prepar|pack", re.I),
    "features": re.compile(r"feature", re.I),
    "head": re.compile(r"^epoch|head", re.I),
    "agreement": re.compile(r"agree|bf16|fp32", re.I),
    "hashing": re.compile(r"^reading", re.I),  # the pixels' digest, the feature cache's key
    "thumbnails": re.compile(r"thumbnail", re.I),
}
DONE = re.compile(r"^(?P<desc>.+?): done, (?P<count>\d+) (?P<unit>\w+) in (?P<took>\S+)(?P<rest>.*)$")
RATE = re.compile(r"(\d+(?:\.\d+)?) (\w+)/s")
EPOCH = re.compile(r"^epoch\s+\d+/\d+\s.*\s(\d+(?:\.\d+)?) img/s")
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


def _nice() -> None:
    """A builder worker yields to whatever else the machine runs (niceness 15 at least)."""
    os.nice(max(0, 15 - os.nice(0)))


def _set_photo(job: tuple[str, str, int, int]) -> None:
    """One photo of a set: a random crop of 75-100% of the source's area (aspect 3:4 to 4:3, as
    the source allows), mirrored half the time, squashed to 200x200, JPEG quality 70-95, from a
    generator seeded by (seed, index); written whole (a ``.part`` renamed)."""
    src, dest, seed, index = job
    rng = np.random.default_rng((seed, index))
    with Image.open(src) as opened:
        im = opened.convert("RGB")
    w, h = im.size
    area, aspect = rng.uniform(0.75, 1.0), float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, round(w * np.sqrt(area * aspect))), min(h, round(h * np.sqrt(area / aspect)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    im = im.resize((SET_SIDE, SET_SIDE), Image.Resampling.BICUBIC, reducing_gap=3.0)
    im.save(dest + ".part", "JPEG", quality=int(rng.integers(70, 96)))
    os.replace(dest + ".part", dest)


def set_jobs(n: int, seed: int, out: Path) -> list[tuple[str, str, int, int]]:
    """The first ``n`` photos of every set, cat and dog in turn (so any first N are balanced):
    photo i is ``cat.K.jpg`` or ``dog.K.jpg`` (K = i // 2), made from the K-th training photo
    of its class (modulo 1,000)."""
    sources = {c: sorted((PHOTOS / "train" / f"{c}s").glob("*.jpg")) for c in ("cat", "dog")}
    if not all(sources.values()):
        sys.exit(f"no photos under {PHOTOS / 'train'}/{{cats,dogs}}")
    jobs = []
    for i in range(n):
        label, k = ("cat", "dog")[i % 2], i // 2
        src = sources[label][k % len(sources[label])]
        jobs.append((str(src), str(out / f"{label}.{k}.jpg"), seed, i))
    return jobs


def _marker(folder: Path) -> dict[str, object]:
    try:
        found = json.loads((folder / SET_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_marker(folder: Path, n: int, seed: int) -> None:
    record = json.dumps({"n": n, "seed": seed, "recipe": SET_RECIPE})
    (folder / (SET_MARKER + ".part")).write_text(record)
    os.replace(folder / (SET_MARKER + ".part"), folder / SET_MARKER)


def build_photos(pool: Path, n: int, seed: int) -> None:
    """At least ``n`` photos in ``pool``, made in niced worker processes. The photos are made
    one by one from (seed, index), so a larger pool extends a smaller one and an interrupted
    build keeps what it wrote; another seed or recipe starts afresh."""
    have = _pool_count(pool, seed)
    if have >= n:
        return
    if have < 0:
        shutil.rmtree(pool, ignore_errors=True)
        pool.mkdir(parents=True)
        _write_marker(pool, 0, seed)
    todo = [job for job in set_jobs(n, seed, pool) if not Path(job[1]).exists()]
    start = time.perf_counter()
    with ProcessPoolExecutor(initializer=_nice) as workers:
        list(workers.map(_set_photo, todo, chunksize=64))
    _write_marker(pool, n, seed)
    print(f"made {len(todo)} photos in {pool} ({time.perf_counter() - start:.0f}s)", flush=True)


def link_set(pool: Path, dest: Path, n: int, seed: int) -> Path:
    """A Kaggle-like flat folder of the pool's first ``n`` photos, as hard links (no disk)."""
    if _marker(dest) == {"n": n, "seed": seed, "recipe": SET_RECIPE}:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for _, path, _, _ in set_jobs(n, seed, pool):
        os.link(path, dest / Path(path).name)
    _write_marker(dest, n, seed)
    return dest


def _pool_count(pool: Path, seed: int) -> int:
    """How many photos the pool's marker vouches for; -1 without a marker of this seed and recipe."""
    have = _marker(pool)
    n = have.get("n")
    same = have.get("seed") == seed and have.get("recipe") == SET_RECIPE
    return n if same and isinstance(n, int) else -1


def check_disk(work: Path, runs: list[int], keep: bool, missing_photos: int) -> str:
    """Stop with one line when ``work``'s disk cannot hold the photos still to make and the
    runs' caches: packed Lite2 arrays (N x 260 x 260 x 3 bytes) and features (N x 2 views x
    1280 x 4 bytes) of the set and the held-back photos; every run's with --keep, else the
    largest (each is removed after it)."""
    side = preprocessing_for(transfer_architecture(NAMES["lite2"])).size[0]
    per_run = [(n + HELD_BACK) * (side * side * 3 + 2 * LITE2_FEATURES * 4) + RUN_BYTES for n in runs]
    need = missing_photos * PHOTO_BYTES + (sum(per_run) if keep else max(per_run)) + GIB  # 1 GiB spare
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < need:
        sys.exit(
            f"{work}: {free / GIB:.1f} GiB free, the bench needs about {need / GIB:.1f} GiB "
            f"({missing_photos} photos to make, caches of runs at {', '.join(map(str, runs))} images"
            f"{', all kept' if keep else ''}): free some or pass another --work"
        )
    return f"disk: {free / GIB:.1f} GiB free at {work}, about {need / GIB:.1f} GiB needed"


class PeakMemory:
    """The peak private memory of a process tree: the sum of ``RssAnon`` over the process and
    all its descendants (workers included), sampled every 0.2 s in a thread. Pages of mapped
    files, which the kernel can drop, are not counted."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid)[0])
            self.stop.wait(0.2)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


# how each run's command differs from `pawlab train SET --backbone`
VARIANTS = {
    "auto": ["--precision", "auto"],  # bf16 where fast: the default
    "fp32": ["--precision", "fp32"],
    # the mirrored views the recipe leaves out of large sets (`TRANSFER.mirror_below`)
    "mirrored": ["--precision", "auto", "--augment", "flip"],
}


@dataclass
class ScaleRun:
    """One ``pawlab train --backbone`` of a set and what came of it."""

    variant: str  # a name of VARIANTS
    n: int
    folder: Path
    seed: int = 0  # pawlab train --seed: the head's initialisation, shuffling and the split
    seconds: float = 0.0
    peak: int = 0
    failure: str = ""
    stages: dict[str, float | None] = field(default_factory=dict)
    held_back: tuple[float, float] | str = "not scored"

    @property
    def label(self) -> str:
        return f"{self.n:,} {self.variant}" + (f" seed {self.seed}" if self.seed else "")

    @property
    def log(self) -> Path:
        return self.folder / "train.log"

    @property
    def model(self) -> Path:
        return self.folder / "model.safetensors"

    def env(self) -> dict[str, str]:
        """Cold caches: pawlab's, inductor's and Triton's, fresh for this run."""
        return {
            **os.environ,
            "PAWLAB_CACHE_DIR": str(self.folder / "cache"),
            "TORCHINDUCTOR_CACHE_DIR": str(self.folder / "inductor"),
            "TRITON_CACHE_DIR": str(self.folder / "triton"),
        }


def timed_train(run: ScaleRun, photos: Path, extra: list[str]) -> None:
    """Runs the whole command (prepare, features, head, agreement), output to ``run.log``:
    wall time, peak private memory, the exit status's last log line on failure."""
    shutil.rmtree(run.folder, ignore_errors=True)
    run.folder.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pawlab", "train", str(photos), "--backbone"]
    cmd += ["--run-dir", str(run.folder / "run"), "--out", str(run.model), "--seed", str(run.seed), *extra]
    settle()
    with run.log.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run.env())
        memory = PeakMemory(proc.pid)
        code = proc.wait()
        run.seconds, run.peak = time.perf_counter() - start, memory.close()
    if code:
        lines = run.log.read_text(errors="replace").strip().splitlines()
        run.failure = f"exit {code}: {lines[-1] if lines else ''} (see {run.log})"


def duration_seconds(text: str) -> float | None:
    """``1h02m``, ``1m05s``, ``12s``, ``0.4s`` -> seconds; None for anything else."""
    found = DURATION.match(text.rstrip(",;.)"))
    if not found or not any(found.groups()):
        return None
    h, m, s = (float(g) if g else 0.0 for g in found.groups())
    return h * 3600 + m * 60 + s


def _batch_size(run_dir: Path) -> int | None:
    """``batch_size`` anywhere in the run's config.json (to count the head's images)."""
    stack: list[object] = [runlog.read_config(run_dir)]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("batch_size"), int):
                return int(item["batch_size"])
            stack.extend(item.values())
    return None


def _done_line(line: str, batch: int | None) -> tuple[str, float, float] | None:
    """(stage, images, seconds) of a ``DESC: done, N UNIT in DURATION`` line, else None; the
    stage is the issue's whose words the description holds, else the description itself."""
    found = DONE.match(line.strip())
    took = duration_seconds(found["took"]) if found else None
    if not found or took is None:
        return None
    unit, count = found["unit"].lower(), int(found["count"])
    per = 1 if unit.startswith(("img", "image", "photo")) else batch if unit.startswith("batch") else None
    if per is None:
        return None
    rate = RATE.search(found["rest"])  # more precise than a duration in whole seconds
    if rate and rate[2].lower() == unit and float(rate[1]) > 0:
        took = count / float(rate[1])
    stage = next((name for name, words in STAGES.items() if words.search(found["desc"])), found["desc"])
    return stage, float(count * per), took


def _epochs_rate(lines: list[str]) -> float | None:
    """The head's images/s over all epochs from the loop's own epoch lines (``epoch 3/20 ...
    0.4s 3767 img/s``): epochs of equal size, so the harmonic mean of their rates."""
    rates = [float(m[1]) for line in lines if (m := EPOCH.match(line.strip())) and float(m[1]) > 0]
    return len(rates) / sum(1 / r for r in rates) if rates else None


def stage_rates(log: Path, batch: int | None) -> dict[str, float | None]:
    """Images/s of each of the issue's stages from the log's ``done`` lines (images summed over
    a stage's lines over their seconds; a batch counted as ``batch`` images), the head's from its
    epoch lines when there are any; None for a stage that printed nothing. Stages the issue does
    not name are added by description."""
    lines = log.read_text(errors="replace").splitlines()
    done: dict[str, tuple[float, float]] = {}
    for stage, images, seconds in filter(None, (_done_line(line, batch) for line in lines)):
        before = done.get(stage, (0.0, 0.0))
        done[stage] = (before[0] + images, before[1] + seconds)
    rates: dict[str, float | None] = {name: None for name in STAGES}
    for name, (images, seconds) in done.items():
        rates[name] = images / seconds if seconds > 0 else None
    rates["head"] = _epochs_rate(lines) or rates["head"]
    return rates


def held_back(run: ScaleRun) -> tuple[float, float] | str:
    """(accuracy, log loss) on the 1,000 validation photos, or why not. They are not the
    set's source (its training folder) and their folders are plural: ``cats=cat,dogs=dog``."""
    cmd = [sys.executable, "-m", "pawlab", "evaluate", str(run.model), str(PHOTOS / "validation")]
    cmd += ["--json", "-q", "--class-map", "cats=cat,dogs=dog", "--report-dir", str(run.folder / "eval")]
    done = subprocess.run(cmd, env=run.env(), capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return f"evaluate failed: {lines[-1] if lines else done.returncode}"
    report = json.loads(done.stdout)
    (run.folder / "evaluate.json").write_text(done.stdout)
    return float(report["accuracy"]), float(report["log_loss"])


def scale_run(run: ScaleRun, photos: Path, extra: list[str], keep: bool) -> ScaleRun:
    """Train, read the stages' rates, score on the held-back photos; without ``keep``, only the
    log and the evaluation's JSON stay."""
    print(f"  {run.label}: training ({run.log})", flush=True)
    timed_train(run, photos, extra)
    run.stages = stage_rates(run.log, _batch_size(run.folder / "run"))
    if not run.failure:
        run.held_back = held_back(run)
    if not keep:
        for child in run.folder.iterdir():
            if child.name not in ("train.log", "evaluate.json"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    return run


def _rate(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def scale_table(runs: list[ScaleRun]) -> None:
    names = list(dict.fromkeys(name for run in runs for name in run.stages))
    head = f"{'images':>8} {'variant':<9} {'seed':>4} {'wall':>7} {'peak private':>12}"
    head += "".join(f" {name[:12] + ' img/s':>18}" for name in names)
    print(head + f" {'accuracy':>9} {'log loss':>9}")
    for run in runs:
        row = f"{run.n:>8,} {run.variant:<9} {run.seed:>4} {run.seconds:6.0f}s {run.peak / GIB:8.2f} GiB"
        row += "".join(f" {_rate(run.stages.get(name)):>18}" for name in names)
        scored = run.held_back
        row += f" {scored[0]:9.2%} {scored[1]:9.4f}" if isinstance(scored, tuple) else f"  {scored}"
        print(row + (f"  FAILED {run.failure}" if run.failure else ""), flush=True)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def scale_goals(runs: list[ScaleRun], fast: bool) -> None:
    """The issue's goals beside the figures: the time at 25,000 for this CPU class, memory at
    every size, fp32 against the default on the held-back photos."""
    print(f"goals, on {cpu_class()}:")
    limit = GOAL_FAST if fast else GOAL_AVX2
    kind = "fast bf16" if fast else "no fast bf16: AVX2-only"
    for run in [r for r in runs if r.n == GOAL_SIZE and r.variant == "auto"][:1]:
        took = "failed" if run.failure else f"{run.seconds:.0f} s"
        print(
            f"  {GOAL_SIZE:,} photos trained in at most {limit:.0f} s ({kind}): {took}, "
            f"{_met(run.seconds <= limit and not run.failure)} (before this work: {BEFORE})"
        )
    for run in runs:
        print(
            f"  peak private memory at most {GOAL_MEMORY / GIB:.0f} GiB, {run.label}: "
            f"{run.peak / GIB:.2f} GiB, {_met(run.peak <= GOAL_MEMORY and not run.failure)}"
        )
    _held_back_goals(runs)


def _held_back_goals(runs: list[ScaleRun]) -> None:
    """Each variant against the default at its size on the held-back photos: the mean over the
    seeds both were trained with (each seed's difference in brackets where there are several)."""
    by = {(run.n, run.variant, run.seed): run.held_back for run in runs}
    pairs: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for (n, label, seed), other in by.items():
        default = by.get((n, "auto", seed))
        if label == "auto" or not isinstance(other, tuple) or not isinstance(default, tuple):
            continue
        pairs.setdefault((n, label), []).append(((default[0] - other[0]) * 100, default[1] - other[1]))
    for (n, label), diffs in pairs.items():
        points, loss = statistics.mean(d[0] for d in diffs), statistics.mean(d[1] for d in diffs)
        each = ""
        if len(diffs) > 1:
            each = f" (seeds {', '.join(f'{p:+.2f} / {ll:+.4f}' for p, ll in diffs)})"
        print(
            f"  held-back accuracy at {n:,}, auto - {label}, mean of {len(diffs)} seed(s): {points:+.2f} "
            f"points (goal within {GOAL_ACCURACY_POINTS}): {_met(abs(points) <= GOAL_ACCURACY_POINTS)}; "
            f"log loss {loss:+.4f} (goal within {GOAL_LOG_LOSS}): {_met(abs(loss) <= GOAL_LOG_LOSS)}{each}"
        )


def _variants(n: int, extra: dict[str, int], seeds: list[int]) -> list[tuple[str, int]]:
    """(variant, seed) of each run at size ``n``: the default and fp32 with every one of
    ``seeds``, any other variant asked for there with the first only."""
    names = ["auto", *(name for name, at in extra.items() if at == n)]
    return [(name, seed) for seed in seeds for name in names if seed == seeds[0] or name in ("auto", "fp32")]


def scale(args: argparse.Namespace) -> None:
    extra = {"fp32": args.fp32_at, "mirrored": args.mirrored_at}
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {n for n in extra.values() if n})
    seeds = [int(x) for x in args.fp32_seeds.split(",")]
    variants = {n: _variants(n, extra, seeds if n == args.fp32_at else [0]) for n in sizes}
    runs = [n for n in sizes for _ in variants[n]]
    pool = args.work / "photos"
    disk = check_disk(args.work, runs, args.keep, max(0, sizes[-1] - max(0, _pool_count(pool, args.seed))))
    print(f"CPU: {cpu_class()}\n{disk}", flush=True)
    build_photos(pool, sizes[-1], args.seed)
    print(
        f"sets: Kaggle-like flat folders (cat.K.jpg, dog.K.jpg) of {', '.join(f'{n:,}' for n in sizes)} "
        f"photos,\n  made from the 2,000 of {PHOTOS / 'train'} ({SET_RECIPE}, seed {args.seed}),\n"
        f"  hard links into {pool}\n"
        f"held back: the 1,000 original photos of {PHOTOS / 'validation'}, never in a training set\n"
        "each run from cold caches (pawlab's, inductor's, Triton's), its JPEGs in the page cache",
        flush=True,
    )
    done = []
    for n in sizes:
        photos = link_set(pool, args.work / f"set-{n}", n, args.seed)
        for f in photos.glob("*.jpg"):  # every run finds its source in the page cache
            f.read_bytes()
        for variant, seed in variants[n]:
            name = f"{n}-{variant}" + (f"-seed{seed}" if seed else "")
            run = ScaleRun(variant, n, args.work / "runs" / name, seed)
            done.append(scale_run(run, photos, VARIANTS[variant], args.keep))
    print(f"\npawlab train SET --backbone, whole command, on {cpu_class()}:")
    scale_table(done)
    scale_goals(done, bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


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
    c.add_argument("--data", default=str(PHOTOS / "train"))
    fp = sub.add_parser("features")
    fp.add_argument("--data", default=f"{PHOTOS / 'train'},{FLOWERS / 'train'}")
    fp.add_argument("--candidate", default="lite2")
    fp.add_argument("--folds", type=int, default=5)
    fp.add_argument("--seeds", default="0,1,2")
    fp.add_argument(
        "--routes", default="torch bf16,onnxruntime int8", help="comma-separated, each against fp32"
    )
    m = sub.add_parser("mirror")
    m.add_argument("--data", default=f"{PHOTOS / 'train'},{FLOWERS / 'train'}")
    m.add_argument("--candidate", default="lite2")
    m.add_argument("--sizes", default="250,500,1000,2000,100000", help="training photos per fold")
    m.add_argument("--folds", type=int, default=5)
    m.add_argument("--seeds", default="0,1,2")
    f = sub.add_parser("final")
    f.add_argument("--candidates", default="lite0,lite2,lite0+lite2")
    s = sub.add_parser("scale")
    s.add_argument("--sizes", default="5000,25000,100000", help="images per set, comma-separated")
    s.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pawlab-bench-scale")
    s.add_argument("--fp32-at", type=int, default=5000, help="also train this size in fp32 (0: none)")
    s.add_argument(
        "--fp32-seeds",
        default="0,1,2",
        help="at --fp32-at, the default and fp32 with each of these --seed values (the held-back "
        "difference is their mean: one seed moves it by a photo or two)",
    )
    s.add_argument(
        "--mirrored-at",
        type=int,
        default=25_000,
        help="also train this size with mirrored views, which the recipe leaves out there (0: none)",
    )
    s.add_argument("--keep", action="store_true", help="keep every run's caches, run folder and model")
    s.add_argument("--seed", type=int, default=27, help="of the photos made for the sets")
    s.add_argument("--quick", action="store_true", help="to check the script: --sizes 200,400 --fp32-at 200")
    args = p.parse_args()
    if args.what == "scale" and args.quick:
        args.sizes, args.fp32_at, args.mirrored_at, args.fp32_seeds = "200,400", 200, 400, "0,1"
    modes = {
        "throughput": throughput,
        "cv": cross_validate,
        "features": features_precision,
        "mirror": mirror_curve,
        "final": final,
        "scale": scale,
    }
    modes[args.what](args)


if __name__ == "__main__":
    main()
