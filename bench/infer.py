"""Benchmark: pawlab's inference path against a plain PyTorch loop, in the same run.

    .venv/bin/python bench/infer.py [--n 1000] [--submission 12500] [--work DIR]

1. Builds a Kaggle-style test folder of numbered JPEGs (``1.jpg`` ...) from
   ``../shared/data/cats_and_dogs_filtered`` by re-encoding, flipping and cropping copies
   (as bench/prepare.py does; kept in --work and reused).
2. Model: EfficientNet-Lite0 (pretrained, frozen) with a two-class head at 224x224, saved as
   a pawlab model file.
3. Times on the same N images, decoding included in both:
   * plain: one process, ``Image.open().convert("RGB")`` + centre crop and resize in Pillow,
     fp32, NCHW, ``torch.no_grad``, batches of 64;
   * pawlab: ``pawlab submit`` (worker processes decoding ahead of the network, scale-on-
     decode, channels-last, ``inference_mode``; precision "auto", which is fp32 unless training
     found bf16 agrees with fp32 for the model);
   * pawlab --precision bf16, for reference (bf16 autocast, not agreement-checked);
   and prints images/s and ratios. 4. With --submission K > 0: the wall time of a whole
   K-image submission with pawlab's defaults. 5. Agreement of bf16 with fp32 on 256 real
   validation photos (same class, largest probability difference); meaningful with --model, a
   trained model (a random head's probabilities all sit near 0.5).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare import SHARED, build_set  # noqa: E402  (bench/prepare.py)

from pawlab import checkpoint  # noqa: E402
from pawlab._infer import check_agreement  # noqa: E402
from pawlab.models import build, preprocessing_for, transfer_architecture  # noqa: E402

SIZE = 224


def make_model(path: Path) -> torch.nn.Module:
    spec = transfer_architecture("efficientnet_lite0", size=SIZE)
    torch.manual_seed(0)
    net = build(spec, num_classes=2)
    meta = {
        "architecture": spec,
        "classes": ["cat", "dog"],
        "preprocessing": preprocessing_for(spec).to_json(),
    }
    checkpoint.save(path, net.state_dict(), meta)
    return net.eval()


def plain_decode(f: Path) -> np.ndarray:
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box))


def plain_loop(net: torch.nn.Module, files: list[Path]) -> tuple[float, np.ndarray]:
    """(seconds, probabilities) for a minimal hand-written loop: decode, fp32, NCHW."""
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(files), 64):
            batch = np.stack([plain_decode(f) for f in files[start : start + 64]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
            x = (x - 0.5) / 0.5
            out.append(torch.softmax(net(x), 1))
    return time.perf_counter() - t0, torch.cat(out).numpy()


def pawlab_submit(model: Path, test: Path, out: Path, *extra: str) -> float:
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pawlab", "submit", str(model), str(test), "--out", str(out), "-q", *extra],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="images timed for both paths")
    ap.add_argument("--submission", type=int, default=12500, help="images of the full submission (0: skip)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pawlab-bench-infer")
    ap.add_argument(
        "--model", type=Path, default=None, help="a trained transfer model file (default: a random head)"
    )
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        from pawlab.inference import load_model

        model_path = args.model
        net = load_model(model_path, device="cpu", precision="fp32").network.to(
            memory_format=torch.contiguous_format
        )
    else:
        model_path = work / "model.safetensors"
        net = make_model(model_path)
    test = build_set(work / f"test-{args.n}", args.n, numbered=True)
    files = sorted(test.glob("*.jpg"), key=lambda p: int(p.stem))
    print(
        f"{len(files)} JPEGs, EfficientNet-Lite0 at {SIZE}x{SIZE}, {torch.get_num_threads()} threads",
        flush=True,
    )

    plain_s, plain_probs = plain_loop(net, files)
    csv = work / "submission.csv"
    fp32_s = pawlab_submit(model_path, test, csv)
    rows = np.loadtxt(csv, delimiter=",", skiprows=1)
    same = float(np.mean((rows[:, 1] >= 0.5) == (plain_probs[:, 1] >= 0.5)))
    diff = float(np.abs(np.clip(plain_probs[:, 1], 0.005, 0.995) - rows[:, 1]).max())
    bf16_s = pawlab_submit(model_path, test, work / "submission-bf16.csv", "--precision", "bf16")
    n = len(files)
    print(f"  plain loop (fp32, NCHW, decode inline) {n / plain_s:7.1f} img/s  ({plain_s:.1f}s)")
    print(
        f"  pawlab submit (defaults: fp32)         {n / fp32_s:7.1f} img/s  ({fp32_s:.1f}s)  "
        f"x{plain_s / fp32_s:.2f} the plain loop"
    )
    print(
        f"  pawlab submit --precision bf16         {n / bf16_s:7.1f} img/s  ({bf16_s:.1f}s)  "
        f"x{plain_s / bf16_s:.2f} the plain loop (not agreement-checked)"
    )
    print(f"  pawlab vs plain: same class {same:.2%}, largest probability difference {diff:.4f}")

    photos = sorted(SHARED.glob("validation/*/*.jpg"))[::4][:256]
    from pawlab._imageio import decode

    images = np.stack([decode(p.read_bytes(), (SIZE, SIZE), 3, "crop") for p in photos])
    pre = preprocessing_for(transfer_architecture("efficientnet_lite0"))
    agree = check_agreement(net, images, pre, torch.device("cpu"))
    print(
        f"  bf16 vs fp32 on {agree['images']} real photos: same class {agree['same_class']:.2%}, "
        f"largest probability difference {agree['max_prob_diff']:.4f} -> {'ok' if agree['ok'] else 'not ok'}"
    )

    if args.submission:
        big = build_set(work / f"test-{args.submission}", args.submission, numbered=True)
        seconds = pawlab_submit(model_path, big, work / "submission-full.csv")
        print(
            f"  a {args.submission}-image submission with pawlab's defaults: {seconds:.0f}s wall "
            f"({args.submission / seconds:.1f} img/s)"
        )


if __name__ == "__main__":
    main()
