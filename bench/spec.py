"""Benchmark: the digit models behind the model specs, judged as issue 14 asks, in one run.

    .venv/bin/python bench/spec.py [--models DIR] [--judge-epochs 15] [--per-digit 500]

* the discriminator's accuracy on the MNIST test set (../shared/data/mnist, never trained on);
* a judge, trained here on the same 5,000 embedded digits with an architecture of its own
  (a small residual network: neither the discriminator's digit-cnn nor the guide's
  small-cnn), reads PER_DIGIT generated images of each digit (prior latents, seeded):
  the share recognised as the requested digit, overall and per digit;
* diversity: the mean pairwise pixel distance within each digit's generated images, against
  that of the real test digits of that digit (ratio; >= 0.6 asked), and the Fréchet distance
  in the judge's feature space between generated and real test digits, beside two references:
  the embedded training digits (real against real) and a one-image-per-digit generator (the
  latent 0 prototypes), which must fail the diversity bar;
* speed: batched generation (images/s) and one Hypothesis example (ms, with shrinking off).

``--models``: the digit models' folder (default: the pawlab cache's; trained there if missing).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pawlab.config import AugmentConfig, RuntimeConfig, TrainConfig
from pawlab.data.embedded import mnist_5k, mnist_test
from pawlab.inference import load_model
from pawlab.models.network import Network
from pawlab.spec import DigitRecipe, digit_models, use_digit_models
from pawlab.spec.training import digit_split
from pawlab.training import train

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"

JUDGE = [  # a small residual network: an architecture neither the discriminator nor the guide has
    {"type": "input", "size": 28, "channels": 1},
    {"type": "conv", "kernel": 3, "filters": 32, "pad": 1, "bias": False},
    {"type": "batch-norm"},
    {"type": "relu"},
    {"type": "res-block", "filters": 32},
    {"type": "res-block", "filters": 64, "stride": 2},
    {"type": "res-block", "filters": 128, "stride": 2},
    {"type": "global-avg-pool"},
    {"type": "linear"},
    {"type": "softmax"},
]


def cpu_class() -> str:
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), name)
    return f"{name}, {torch.get_num_threads()} threads, fast bf16: {bf16}"


def train_judge(folder: Path, epochs: int) -> Path:
    out = folder / "judge.safetensors"
    if not out.exists():
        ds = digit_split(DigitRecipe(seed=7))
        config = TrainConfig(
            epochs=epochs,
            lr=2e-3,
            schedule="one-cycle",
            augment=AugmentConfig(rotate=12, shift=0.1, scale=0.1),
            seed=7,
        )
        train(ds, out, JUDGE, config, run_dir=folder / "judge-run", runtime=RuntimeConfig(progress=False))
    return out


def features_and_probs(network: Network, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The judge's penultimate features (N, F) and probabilities (N, 10) of uint8 (N, 28, 28)."""
    network = network.float().eval()
    feats, probs = [], []
    with torch.inference_mode():
        for batch in np.array_split(images, max(1, len(images) // 1000)):
            x = (
                torch.from_numpy(batch).float().div(255).sub(0.5).div(0.5)[:, None]
            )  # the judge's [-1, 1] inputs
            f = network.body[:-1](x)
            feats.append(f.numpy())
            probs.append(network.body[-1](f).softmax(1).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(probs)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, F) and b (M, F)."""
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # trace of sqrt(ca cb) from the eigenvalues of sqrt(ca) cb sqrt(ca) (symmetric, PSD)
    w, v = np.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root @ cb @ root)
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def pairwise(images: np.ndarray, limit: int = 500) -> float:
    """Mean pixel distance (L2 over [0, 1] pixels) between distinct images of a set."""
    x = torch.from_numpy(images[:limit].reshape(min(len(images), limit), -1)).float().div(255)
    d = torch.cdist(x, x)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def recognised(
    judge: Network, labels: np.ndarray, images: np.ndarray
) -> tuple[float, list[float], np.ndarray]:
    feats, probs = features_and_probs(judge, images)
    ok = probs.argmax(1) == labels
    return float(ok.mean()), [float(ok[labels == d].mean()) for d in range(10)], feats


def diversity(
    labels: np.ndarray, images: np.ndarray, real: np.ndarray, real_labels: np.ndarray
) -> list[float]:
    return [pairwise(images[labels == d]) / pairwise(real[real_labels == d]) for d in range(10)]


def speed(spec_name: str, rounds: int = 3) -> tuple[float, float]:
    """(images/s generating batches of 1,024; ms per Hypothesis example of the spec's strategy)."""
    from hypothesis import Phase, given, settings

    from pawlab.spec import get

    spec = get(spec_name)
    rng = np.random.default_rng(0)
    labels, z = (
        rng.integers(0, 10, 10240),
        rng.standard_normal((10240, spec.generator.latent)).astype(np.float32),
    )
    spec.generate(labels[:1024], z[:1024])  # warm
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        spec.generate(labels, z)
        rates.append(len(labels) / (time.perf_counter() - t0))
    strategy, count = spec.strategy(), [0]

    @settings(max_examples=300, deadline=None, database=None, phases=[Phase.generate])
    @given(strategy)
    def prop(image: np.ndarray) -> None:
        count[0] += 1

    per = []
    for _ in range(rounds):
        count[0] = 0
        t0 = time.perf_counter()
        prop()
        per.append((time.perf_counter() - t0) / count[0] * 1000)
    return statistics.median(rates), statistics.median(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, help="the digit models (default: the pawlab cache's)")
    ap.add_argument("--judge-epochs", type=int, default=15)
    ap.add_argument("--per-digit", type=int, default=500)
    args = ap.parse_args()
    if not MNIST.is_dir():
        sys.exit(f"bench/spec.py needs the MNIST test set in {MNIST}")
    models = digit_models(args.models)
    use_digit_models(models.folder)
    print(f"CPU: {cpu_class()}; models: {models.folder}")
    xt, yt = mnist_test(MNIST)
    disc = load_model(models.discriminator, precision="fp32", compile="off")
    acc = float((disc.predict_proba(xt[..., None]).argmax(1) == yt).mean())
    print(f"discriminator (digit-cnn) accuracy on the 10,000 MNIST test digits: {acc:.4f}  (>= 0.990 asked)")
    t0 = time.perf_counter()
    judge = load_model(train_judge(models.folder, args.judge_epochs), precision="fp32", compile="off").network
    _, jp = features_and_probs(judge, xt)
    print(
        f"judge (residual net, ready in {time.perf_counter() - t0:.0f}s): "
        f"test accuracy {(jp.argmax(1) == yt).mean():.4f}"
    )
    report(models.folder, judge, xt, yt, args.per_digit)
    rate, ms = speed("mnist-image")
    print(
        f"speed: {rate:,.0f} images/s in batches of 1,024 (>= 1,000 asked); "
        f"{ms:.2f} ms per Hypothesis example (<= 50 asked)"
    )


def report(folder: Path, judge: Network, xt: np.ndarray, yt: np.ndarray, per_digit: int) -> None:
    from pawlab.spec import get

    spec = get("mnist-image")
    labels = np.repeat(np.arange(10), per_digit)
    z = np.random.default_rng(1).standard_normal((len(labels), spec.generator.latent)).astype(np.float32)
    images = spec.generate(labels, z)
    overall, per, gen_feats = recognised(judge, labels, images)
    print(f"recognised by the judge: {overall:.4f} overall (>= 0.97 asked); per digit (>= 0.95 asked):")
    print("  " + "  ".join(f"{d}: {v:.3f}" for d, v in enumerate(per)) + f"   min {min(per):.3f}")
    ratios = diversity(labels, images, xt, yt)
    print(
        "diversity, generated / real within-digit pixel distance (>= 0.6 asked): "
        f"min {min(ratios):.2f}, mean {np.mean(ratios):.2f}"
    )
    print("  " + "  ".join(f"{d}: {r:.2f}" for d, r in enumerate(ratios)))
    real_feats, _ = features_and_probs(judge, xt)
    x5, _ = mnist_5k()
    train_feats, _ = features_and_probs(judge, x5)
    protos = spec.generate(labels, np.zeros_like(z))
    proto_ratio = min(diversity(labels, protos, xt, yt))
    _, proto_per, proto_feats = recognised(judge, labels, protos)
    print("Fréchet distance in the judge's features, to the 10,000 real test digits (lower is better):")
    print(f"  generated ({len(labels)}):                   {frechet(gen_feats, real_feats):8.2f}")
    print(
        f"  real embedded training digits (5,000):  {frechet(train_feats, real_feats):8.2f}   (real digits)"
    )
    print(
        f"  one prototype per digit (latent 0):     {frechet(proto_feats, real_feats):8.2f}   "
        f"(reference: recognised {np.mean(proto_per):.3f}, diversity min {proto_ratio:.2f})"
    )
    grid = spec.write_grid(
        spec.sample(100, seed=2), spec.readings(spec.sample(100, seed=2).images), folder / "grid.png"
    )
    print(f"a grid of 100 generated digits: {grid}")


if __name__ == "__main__":
    main()
